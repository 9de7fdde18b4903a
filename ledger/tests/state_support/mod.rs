//! A small consortium fixture shared by the state tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use ehr_ledger::app::{App, Hash, TxOutcome};
use ehr_ledger::state::{Genesis, GenesisParticipant, LedgerState};
use ehr_ledger::tx::{CapsuleId, Cid, ParticipantId, Role, TxBody, TxKind};

pub const CHAIN: &str = "ehr-test";

/// The genesis actors: name, key seed, role, label, attributes.
pub const ACTORS: &[(&str, u8, Role, &str, &[&str])] = &[
    ("validator", 1, Role::Validator, "node-a", &[]),
    (
        "authority",
        2,
        Role::AttributeAuthority,
        "consortium-aa",
        &[],
    ),
    (
        "hospital_a",
        3,
        Role::Hospital,
        "hospital-a",
        &["org:hospital-a"],
    ),
    (
        "hospital_b",
        4,
        Role::Hospital,
        "hospital-b",
        &["org:hospital-b"],
    ),
    (
        "researcher",
        5,
        Role::Researcher,
        "researcher-1",
        &["role:researcher", "irb:study-42"],
    ),
    ("patient", 6, Role::Patient, "", &[]),
    (
        "clinician",
        7,
        Role::Researcher,
        "clinician-1",
        &["dept:cardiology"],
    ),
];

pub fn signing_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn pid(key: &SigningKey) -> ParticipantId {
    ParticipantId(key.verifying_key().to_bytes())
}

pub fn genesis() -> Genesis {
    Genesis {
        chain_id: CHAIN.into(),
        participants: ACTORS
            .iter()
            .map(|(_, seed, role, label, attrs)| GenesisParticipant {
                key: signing_key(*seed).verifying_key().to_bytes(),
                role: *role,
                label: (*label).into(),
                attributes: attrs.iter().map(|a| (*a).to_string()).collect(),
            })
            .collect(),
    }
}

/// The state plus the actors' keys and their next nonces.
pub struct Net {
    pub state: LedgerState,
    pub keys: BTreeMap<String, SigningKey>,
    pub ids: BTreeMap<String, ParticipantId>,
    pub nonces: BTreeMap<ParticipantId, u64>,
}

impl Net {
    pub fn new() -> Self {
        let state = LedgerState::from_genesis(&genesis()).expect("genesis is valid");
        let mut net = Net {
            state,
            keys: BTreeMap::new(),
            ids: BTreeMap::new(),
            nonces: BTreeMap::new(),
        };
        for (name, seed, ..) in ACTORS {
            net.add_key(name, signing_key(*seed));
        }
        net
    }

    pub fn add_key(&mut self, name: &str, key: SigningKey) {
        self.ids.insert(name.to_owned(), pid(&key));
        self.keys.insert(name.to_owned(), key);
    }

    pub fn id(&self, name: &str) -> ParticipantId {
        self.ids[name]
    }

    /// Signs a transaction from `who` with its next nonce (and reserves the nonce).
    pub fn tx(&mut self, who: &str, kind: TxKind) -> Vec<u8> {
        let id = self.id(who);
        let n = self.nonces.entry(id).or_insert(0);
        *n += 1;
        TxBody::new(CHAIN, id, *n, kind)
            .sign(&self.keys[who])
            .to_bytes()
    }

    /// Un-reserves `who`'s last nonce (after a rejection).
    pub fn unreserve(&mut self, who: &str) {
        let id = self.id(who);
        *self.nonces.get_mut(&id).expect("reserved") -= 1;
    }

    pub fn apply(&mut self, txs: Vec<Vec<u8>>) -> Vec<TxOutcome> {
        let h = self.state.height() + 1;
        self.state.apply_block(h, &txs).0
    }

    /// Applies one transaction from `who` in its own block and expects it applied.
    pub fn ok(&mut self, who: &str, kind: TxKind) -> Hash {
        let bytes = self.tx(who, kind);
        let id = self.state.check_tx(&bytes).expect("check_tx accepts");
        let out = self.apply(vec![bytes]);
        assert_eq!(out, vec![TxOutcome::Applied]);
        id
    }

    /// Expects the transaction from `who` to be rejected with `code` by both `check_tx` and
    /// `apply_block`, and the state to be exactly as after an empty block.
    pub fn rejects(&mut self, who: &str, kind: TxKind, code: &str) {
        let bytes = self.tx(who, kind);
        self.unreserve(who);
        self.rejects_bytes(&bytes, code);
    }

    pub fn rejects_bytes(&mut self, bytes: &[u8], code: &str) {
        let err = self.state.check_tx(bytes).expect_err("check_tx rejects");
        assert_eq!(err.code, code, "check_tx: {err:?}");
        let mut twin = self.twin();
        let h = self.state.height() + 1;
        let (out, root) = self.state.apply_block(h, &[bytes.to_vec()]);
        match &out[..] {
            [TxOutcome::Rejected(r)] => assert_eq!(r.code, code, "apply: {r:?}"),
            other => panic!("expected a rejection, got {other:?}"),
        }
        let (_, twin_root) = twin.apply_block(h, &[]);
        assert_eq!(root, twin_root, "a rejected transaction changed the state");
        assert_eq!(self.state.snapshot(), twin.snapshot());
        self.state.take_events();
    }

    /// An independent copy of the state, through snapshot and restore.
    pub fn twin(&self) -> LedgerState {
        let mut twin = LedgerState::from_genesis(&genesis()).expect("genesis");
        twin.restore(&self.state.snapshot(), &self.state.state_root())
            .expect("own snapshot restores");
        twin
    }

    /// Publishes a capsule of `hospital` with `policy` at epoch 0.
    pub fn capsule(&mut self, hospital: &str, tag: u8, policy: &str) -> CapsuleId {
        let capsule = CapsuleId([tag; 32]);
        self.ok(
            hospital,
            TxKind::PublishCapsule {
                capsule,
                policy: policy.into(),
                epoch: 0,
                wrapped_search_key: vec![0xAB; 180],
            },
        );
        capsule
    }

    /// Registers a record `cid_tag` in `capsule` (epoch 0) by `hospital`.
    pub fn record(
        &mut self,
        hospital: &str,
        capsule: CapsuleId,
        cid_tag: u8,
        patient: Option<ParticipantId>,
    ) -> Cid {
        let cid = cid(cid_tag);
        let epoch = self.state.capsule(&capsule).map_or(0, |c| c.epoch);
        self.ok(hospital, record_kind(cid.clone(), capsule, epoch, patient));
        cid
    }
}

impl Default for Net {
    fn default() -> Self {
        Net::new()
    }
}

pub fn cid(tag: u8) -> Cid {
    let mut v = vec![0x01, 0x55, 0x12, 0x20];
    v.extend_from_slice(&[tag; 32]);
    Cid(v)
}

pub fn record_kind(
    cid: Cid,
    capsule: CapsuleId,
    epoch: u64,
    patient: Option<ParticipantId>,
) -> TxKind {
    TxKind::RegisterRecord {
        cid,
        capsule,
        epoch,
        wrapped_key: vec![0x5A; 160],
        search_labels: (0..6u8).map(|i| [i; 16]).collect(),
        size: 10_000,
        patient,
    }
}
