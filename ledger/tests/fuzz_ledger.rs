//! Fuzz harnesses (bounded property tests) for the ledger's decoders: replica wire messages
//! (`replica::msg::decode`, and a live replica fed hostile messages, including correctly signed
//! ones with mutated content), signed transactions (`SignedTx::decode`, `check_tx`,
//! `apply_block`), state snapshots (`App::restore`), inclusion proofs and state proofs.
//!
//! Seeds are real: messages harvested from a four-replica run that goes through checkpoints,
//! state transfer and a view change; transactions of every kind; a snapshot of a state with
//! every kind of entry. They are committed under `fuzz/corpus/ledger_*` (written by
//! [`corpus_is_committed_and_decodes`] under `EHR_FUZZ_REGEN=1`). `EHR_FUZZ_CASES=<n>`
//! multiplies the case counts.

#[path = "../../fuzz/mutate.rs"]
mod mutate;
mod state_support;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, OnceLock};

use ehr_ledger::app::{App, Hash};
use ehr_ledger::block::{CommittedBlock, InclusionProof};
use ehr_ledger::crypto::{
    InsecureTestSigner, InsecureTestVerifier, ReplicaId, insecure_test_public_key,
};
use ehr_ledger::replica::msg;
use ehr_ledger::replica::{Action, Dest, Input, Replica, ReplicaConfig};
use ehr_ledger::sim::{KvApp, KvAuth};
use ehr_ledger::state::{Authorisation, LedgerState, StateKey, StateProof};
use ehr_ledger::store::{MemStore, Store};
use ehr_ledger::tx::{CapsuleId, Cid, GrantId, Purpose, Role, Scope, SignedTx, TxKind, codes};
use proptest::prelude::*;
use state_support::{Net, cid, genesis, record_kind};

const CHAIN: &str = "fuzz-chain";
const EPOCH: u64 = 2;
const MAX_MSG: usize = 4 << 20;
const MAX_LEN: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// A four-replica network whose traffic is the message corpus
// ---------------------------------------------------------------------------------------------

fn keys() -> Vec<[u8; 32]> {
    (0..4).map(insecure_test_public_key).collect()
}

fn cfg(id: ReplicaId) -> ReplicaConfig {
    ReplicaConfig {
        chain_id: CHAIN.into(),
        epoch: EPOCH,
        id,
        validators: keys(),
        f: 1,
        checkpoint_interval: 4,
        watermark_window: 8,
        max_batch_txs: 2,
        max_batch_bytes: 64 * 1024,
        batch_delay_ms: 0,
        max_in_flight: 4,
        view_change_timeout_ms: 1000,
        retransmit_ms: 200,
        max_message_bytes: MAX_MSG,
        ..ReplicaConfig::default()
    }
}

fn replica(id: ReplicaId, store: &MemStore) -> Replica<KvApp> {
    Replica::with_verifier(
        cfg(id),
        Box::new(InsecureTestSigner::new(id)),
        Box::new(InsecureTestVerifier::new(&keys())),
        KvApp::new(KvAuth::Tag),
        store.load().unwrap(),
    )
    .unwrap()
}

fn kv_tx(i: u64) -> Vec<u8> {
    KvApp::make_tx(
        KvAuth::Tag,
        (i % 5) as u8,
        i,
        format!("k{i}").as_bytes(),
        b"v",
    )
}

struct Harvest {
    replicas: Vec<Replica<KvApp>>,
    stores: Vec<MemStore>,
    queue: VecDeque<(ReplicaId, ReplicaId, Vec<u8>)>,
    down: Vec<bool>,
    now: u64,
    /// Every message sent, by body name.
    sent: BTreeMap<&'static str, Vec<Vec<u8>>>,
    blocks: Vec<CommittedBlock>,
}

impl Harvest {
    fn drain(&mut self, id: ReplicaId) {
        let actions: Vec<Action> = self.replicas[id as usize].drain_actions().collect();
        for a in actions {
            match a {
                Action::Persist(r) => self.stores[id as usize].apply(&r).unwrap(),
                Action::Send { to, msg } => {
                    let env = msg::decode(&msg, MAX_MSG).expect("own messages decode");
                    self.sent
                        .entry(env.body.name())
                        .or_default()
                        .push(msg.clone());
                    let targets: Vec<ReplicaId> = match to {
                        Dest::One(t) => vec![t],
                        Dest::All => (0..4).filter(|t| *t != id).collect(),
                    };
                    for t in targets {
                        self.queue.push_back((id, t, msg.clone()));
                    }
                }
                Action::Commit(b) if id == 1 => self.blocks.push(*b),
                _ => {}
            }
        }
    }

    fn pump(&mut self) {
        while let Some((from, to, m)) = self.queue.pop_front() {
            if self.down[from as usize] || self.down[to as usize] {
                continue;
            }
            let _ = self.replicas[to as usize].step(Input::Peer { from, msg: m });
            self.drain(to);
        }
    }

    fn tick(&mut self, ms: u64) {
        self.now += ms;
        for id in 0..4 {
            if !self.down[id as usize] {
                self.replicas[id as usize]
                    .step(Input::Tick { now_ms: self.now })
                    .unwrap();
                self.drain(id);
            }
        }
        self.pump();
    }

    fn submit(&mut self, to: ReplicaId, t: Vec<u8>) {
        let _ = self.replicas[to as usize].step(Input::Request(t));
        self.drain(to);
        self.pump();
    }
}

/// Runs checkpoints, a state transfer to a replica beyond the watermarks, and a view change.
/// What the harvest run leaves: the replicas' stores, their messages and replica 1's blocks.
struct Harvested {
    stores: Vec<MemStore>,
    sent: BTreeMap<&'static str, Vec<Vec<u8>>>,
    blocks: Vec<CommittedBlock>,
}

fn harvest() -> &'static Harvested {
    static H: OnceLock<Harvested> = OnceLock::new();
    H.get_or_init(|| {
        let stores = vec![MemStore::new(); 4];
        let mut h = Harvest {
            replicas: (0..4).map(|i| replica(i, &stores[i as usize])).collect(),
            stores,
            queue: VecDeque::new(),
            down: vec![false; 4],
            now: 0,
            sent: BTreeMap::new(),
            blocks: Vec::new(),
        };
        h.down[3] = true;
        for i in 0..30 {
            h.submit((i % 3) as ReplicaId, kv_tx(i));
            h.tick(1);
        }
        h.down[3] = false;
        for _ in 0..20 {
            h.tick(100);
        }
        // The primary of view 0 falls silent with work pending: a view change to view 1.
        h.down[0] = true;
        for i in 30..34 {
            h.submit(1 + (i % 3) as ReplicaId, kv_tx(i));
        }
        for _ in 0..40 {
            h.tick(200);
        }
        h.down[0] = false;
        for _ in 0..20 {
            h.tick(200);
        }
        Harvested {
            stores: h.stores,
            sent: h.sent,
            blocks: h.blocks,
        }
    })
}

/// Up to four messages of every kind seen: the first, the largest, and two in between.
fn message_corpus() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, msgs) in &harvest().sent {
        let mut picks = vec![0, msgs.len() / 3, 2 * msgs.len() / 3];
        let largest = (0..msgs.len()).max_by_key(|i| msgs[*i].len()).unwrap();
        picks.push(largest);
        picks.sort_unstable();
        picks.dedup();
        for (k, i) in picks.into_iter().enumerate() {
            out.push((format!("{name}-{k}.bin"), msgs[i].clone()));
        }
    }
    // Kinds this run does not send: a new-view fetch, and a stable checkpoint certificate
    // (taken from a state-transfer answer), signed by replica 2.
    let signer = InsecureTestSigner::new(2);
    let fetch = msg::Body::FetchNewView { view: 1 };
    out.push((
        "fetch-new-view-0.bin".into(),
        msg::encode(CHAIN, EPOCH, 2, fetch, None, &signer).0,
    ));
    let cert = harvest().sent["state-response"].iter().find_map(|m| {
        match msg::decode(m, MAX_MSG).ok()?.body {
            msg::Body::StateResponse(r) => r.checkpoint.map(|(c, _, _)| c),
            _ => None,
        }
    });
    let cert = cert.expect("a state-transfer answer carries a checkpoint");
    out.push((
        "stable-checkpoint-0.bin".into(),
        msg::encode(
            CHAIN,
            EPOCH,
            2,
            msg::Body::StableCheckpoint(cert),
            None,
            &signer,
        )
        .0,
    ));
    out
}

// ---------------------------------------------------------------------------------------------
// The application state: transactions of every kind and a full snapshot
// ---------------------------------------------------------------------------------------------

struct StateWorld {
    net: Net,
    /// Transactions of every kind (signed; not all applicable).
    txs: Vec<(String, Vec<u8>)>,
    grant: GrantId,
    /// A record the researcher may not read by policy.
    other_record: Cid,
}

fn state_world() -> &'static StateWorld {
    static W: OnceLock<StateWorld> = OnceLock::new();
    W.get_or_init(|| {
        let mut net = Net::new();
        let researcher = net.id("researcher");
        let patient = net.id("patient");
        let capsule = net.capsule("hospital_a", 1, "dept:oncology and org:hospital-a");
        let rec = net.record("hospital_a", capsule, 1, Some(patient));
        let other_record = net.record("hospital_a", capsule, 2, None);
        let old = net.record("hospital_a", capsule, 3, None);
        let grant = GrantId(net.ok(
            "hospital_a",
            TxKind::Grant {
                cid: rec.clone(),
                grantee: researcher,
                scope: Scope::Read,
                expiry_height: 1_000_000,
                rewrapped_key: vec![0x33; 120],
            },
        ));
        let new = net.record("hospital_a", capsule, 4, None);
        net.ok(
            "hospital_a",
            TxKind::Supersede {
                old: old.clone(),
                new: new.clone(),
            },
        );
        net.ok(
            "validator",
            TxKind::RecordAccess {
                cid: rec.clone(),
                accessor: researcher,
                purpose: Purpose::Research,
            },
        );
        net.ok(
            "authority",
            TxKind::AssignAttributes {
                participant: researcher,
                attributes: vec!["dept:cardiology".into(), "site:north".into()],
                expiry_height: Some(500),
            },
        );
        let kinds: Vec<(&str, &str, TxKind)> = vec![
            (
                "register",
                "authority",
                TxKind::RegisterParticipant {
                    key: [9; 32],
                    role: Role::Researcher,
                    label: "r-9".into(),
                },
            ),
            (
                "rotate-key",
                "clinician",
                TxKind::RotateKey { new_key: [8; 32] },
            ),
            (
                "assign",
                "authority",
                TxKind::AssignAttributes {
                    participant: researcher,
                    attributes: vec!["a:1".into(), "b:\"x y\"".into()],
                    expiry_height: None,
                },
            ),
            (
                "revoke-attrs",
                "authority",
                TxKind::RevokeAttributes {
                    participant: researcher,
                    attributes: vec!["site:north".into()],
                },
            ),
            (
                "publish",
                "hospital_b",
                TxKind::PublishCapsule {
                    capsule: CapsuleId([2; 32]),
                    policy: "2 of (a:1, b:2, c:3)".into(),
                    epoch: 0,
                    wrapped_search_key: vec![1; 64],
                },
            ),
            (
                "rotate-epoch",
                "hospital_a",
                TxKind::RotateCapsuleEpoch {
                    capsule,
                    epoch: 1,
                    wrapped_search_key: vec![2; 64],
                },
            ),
            (
                "record",
                "hospital_a",
                record_kind(cid(9), capsule, 0, Some(patient)),
            ),
            (
                "grant",
                "patient",
                TxKind::Grant {
                    cid: rec.clone(),
                    grantee: net.id("clinician"),
                    scope: Scope::Read,
                    expiry_height: 99,
                    rewrapped_key: vec![4; 48],
                },
            ),
            ("revoke", "hospital_a", TxKind::Revoke { grant }),
            (
                "supersede",
                "hospital_a",
                TxKind::Supersede {
                    old: rec.clone(),
                    new: cid(9),
                },
            ),
            (
                "access",
                "validator",
                TxKind::RecordAccess {
                    cid: rec,
                    accessor: patient,
                    purpose: Purpose::PatientRequest,
                },
            ),
        ];
        let txs = kinds
            .into_iter()
            .map(|(name, who, kind)| {
                let b = net.tx(who, kind);
                net.unreserve(who);
                (format!("{name}.bin"), b)
            })
            .collect();
        StateWorld {
            net,
            txs,
            grant,
            other_record,
        }
    })
}

fn snapshot_and_root() -> (Vec<u8>, Hash) {
    let w = state_world();
    (w.net.state.snapshot(), w.net.state.state_root())
}

/// Inclusion proofs of real committed blocks, postcard-encoded (the form a client receives).
fn inclusion_corpus() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for b in harvest().blocks.iter().take(6) {
        for i in 0..b.txs.len() {
            let p = b.inclusion_proof(i).unwrap();
            out.push((
                format!("h{}-i{i}.bin", b.header.height),
                postcard::to_stdvec(&p).unwrap(),
            ));
        }
    }
    out
}

/// State proofs (present and absent keys) of the state world.
fn state_proof_corpus() -> Vec<(String, Vec<u8>)> {
    let w = state_world();
    let keys = state_keys(w);
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            (
                format!("proof-{i}.bin"),
                w.net.state.get_with_proof(k).1.to_bytes(),
            )
        })
        .collect()
}

fn state_keys(w: &StateWorld) -> Vec<StateKey> {
    vec![
        StateKey::Meta,
        StateKey::Participant(w.net.id("researcher")),
        StateKey::Nonce(w.net.id("hospital_a")),
        StateKey::Attributes(w.net.id("researcher")),
        StateKey::Grant(w.grant),
        StateKey::Record(w.other_record.clone()),
        StateKey::Record(cid(200)),
        StateKey::Audit(0),
        StateKey::Capsule(CapsuleId([77; 32])),
    ]
}

/// (file name, bytes) entries of one corpus target.
type Entries = Vec<(String, Vec<u8>)>;

fn generated() -> Vec<(&'static str, Entries)> {
    let (snap, _) = snapshot_and_root();
    let txs = state_world().txs.clone();
    vec![
        ("ledger_msg", message_corpus()),
        ("ledger_tx", txs),
        ("ledger_snapshot", vec![("state.bin".to_owned(), snap)]),
        ("ledger_inclusion_proof", inclusion_corpus()),
        ("ledger_state_proof", state_proof_corpus()),
    ]
}

/// Writes the corpus under `EHR_FUZZ_REGEN=1`; otherwise checks that every committed entry
/// still decodes and re-encodes identically (old bytes stay readable).
#[test]
fn corpus_is_committed_and_decodes() {
    for (target, entries) in generated() {
        let refs: Vec<(&str, Vec<u8>)> = entries
            .iter()
            .map(|(n, b)| (n.as_str(), b.clone()))
            .collect();
        let _ = mutate::sync_corpus(target, &refs);
    }
    for (name, b) in mutate::corpus("ledger_msg") {
        let env = msg::decode(&b, MAX_MSG).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(msg::encode_envelope(&env), b, "{name}");
    }
    for (name, b) in mutate::corpus("ledger_tx") {
        let tx = SignedTx::decode(&b).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(tx.to_bytes(), b, "{name}");
        tx.verify_signature().unwrap();
    }
    for (name, b) in mutate::corpus("ledger_inclusion_proof") {
        let p: InclusionProof = postcard::from_bytes(&b).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(postcard::to_stdvec(&p).unwrap(), b, "{name}");
    }
    for (name, b) in mutate::corpus("ledger_state_proof") {
        let p = StateProof::from_bytes(&b).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.to_bytes(), b, "{name}");
    }
    // The committed snapshot is the snapshot of the state this file builds.
    let (snap, root) = snapshot_and_root();
    let committed = mutate::corpus("ledger_snapshot");
    assert_eq!(
        committed[0].1, snap,
        "run with EHR_FUZZ_REGEN=1 after changing the state world"
    );
    let mut st = LedgerState::from_genesis(&genesis()).unwrap();
    st.restore(&snap, &root).unwrap();
    assert_eq!(st.snapshot(), snap);
}

/// The harvest saw the protocol's message kinds, so every body decoder is seeded.
#[test]
fn harvest_covers_the_message_kinds() {
    let kinds: Vec<&str> = harvest().sent.keys().copied().collect();
    for want in [
        "forward",
        "pre-prepare",
        "prepare",
        "commit",
        "checkpoint",
        "view-change",
        "new-view",
        "state-request",
        "state-response",
    ] {
        assert!(kinds.contains(&want), "no {want} message in {kinds:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

fn seeds(target: &str) -> Arc<Vec<Vec<u8>>> {
    mutate::seeds(target)
}

/// Mutates the body of a decoded envelope at the postcard level and signs the result as the
/// (Byzantine) sender would: the message passes the signature check and reaches the protocol
/// rules. `from` may be changed too (to any replica id, or an unknown one).
fn resigned() -> impl Strategy<Value = Vec<u8>> {
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        seeds("ledger_msg")
            .iter()
            .map(|b| {
                let env = msg::decode(b, MAX_MSG).unwrap();
                postcard::to_stdvec(&env.body).unwrap()
            })
            .collect(),
    );
    (mutate::mutated(bodies, 3, MAX_LEN), 0u32..5, any::<bool>()).prop_filter_map(
        "body must still parse",
        |(body, from, keep_from)| {
            let body: msg::Body = postcard::from_bytes(&body).ok()?;
            let from = if keep_from { 1 } else { from };
            let signer = InsecureTestSigner::new(from);
            Some(msg::encode(CHAIN, EPOCH, from, body, None, &signer).0)
        },
    )
}

/// A fresh replica restored from replica `id`'s store at the end of the harvest.
fn victim(id: ReplicaId) -> Replica<KvApp> {
    replica(id, &harvest().stores[id as usize])
}

proptest! {
    #![proptest_config(mutate::config(4096))]

    /// Wire messages: no panic; an accepted message re-encodes to a message that decodes to
    /// the same envelope.
    #[test]
    fn replica_message_decoder(input in mutate::inputs(seeds("ledger_msg"), MAX_LEN)) {
        if let Ok(env) = msg::decode(&input, MAX_MSG) {
            let again = msg::encode_envelope(&env);
            prop_assert_eq!(msg::decode(&again, MAX_MSG).unwrap(), env);
        }
    }

    /// Transactions: no panic; an accepted encoding is canonical (the format promises it);
    /// the application's check never panics on it.
    #[test]
    fn signed_tx_decoder(input in mutate::inputs(seeds("ledger_tx"), MAX_LEN)) {
        match SignedTx::decode(&input) {
            Ok(tx) => prop_assert_eq!(tx.to_bytes(), input.clone()),
            Err(r) => prop_assert!(!r.code.is_empty()),
        }
        let w = state_world();
        let _ = w.net.state.check_tx(&input);
    }

    /// State proofs: no panic; canonical when accepted; a mutated proof never proves another
    /// value (or absence) for any key of the state.
    #[test]
    fn state_proof_decoder(input in mutate::inputs(seeds("ledger_state_proof"), MAX_LEN)) {
        if let Ok(p) = StateProof::from_bytes(&input) {
            prop_assert_eq!(p.to_bytes(), input.clone());
            let w = state_world();
            let root = w.net.state.state_root();
            for k in state_keys(w) {
                let (value, _) = w.net.state.get_with_proof(&k);
                if p.verify(&root, &k, value.as_deref()).is_err() {
                    continue;
                }
                // It verified for the true value; it must not also verify for a false one.
                let wrong = match &value {
                    Some(_) => None,
                    None => Some(&b"forged"[..]),
                };
                prop_assert!(p.verify(&root, &k, wrong).is_err());
                if let Some(v) = &value {
                    let mut v2 = v.clone();
                    v2.push(0);
                    prop_assert!(p.verify(&root, &k, Some(&v2)).is_err());
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(mutate::config(768))]

    /// Inclusion proofs received as bytes: no panic; a mutated proof that verifies proves
    /// only what a genuine one does: the same transaction at the same position of a block with
    /// the same chain, epoch, height, tx root and tx count. (The commit certificate signs the
    /// proposal digest, which does not cover `prev_hash` or `state_root`: those header fields
    /// are not authenticated by an inclusion proof; see FUZZING.md, findings.)
    #[test]
    fn inclusion_proofs(input in mutate::mutated(seeds("ledger_inclusion_proof"), 3, MAX_LEN)) {
        if let Ok(p) = postcard::from_bytes::<InclusionProof>(&input) {
            let verifier = InsecureTestVerifier::new(&keys());
            for b in harvest().blocks.iter().take(6) {
                for (i, t) in b.txs.iter().enumerate() {
                    if p.verify(CHAIN, EPOCH, t, 4, 3, &verifier).is_ok() {
                        let bound = |h: &ehr_ledger::block::BlockHeader| {
                            (h.chain_id.clone(), h.epoch, h.height, h.tx_root, h.tx_count)
                        };
                        prop_assert_eq!(bound(&p.header), bound(&b.header));
                        prop_assert_eq!(p.merkle.index, i as u64);
                    }
                }
            }
        }
    }

    /// Snapshots from a state-transfer peer: no panic; one that restores under the certified
    /// root gives back exactly the snapshot (no duplicate or reordered entries slip in), and a
    /// refused one changes nothing.
    #[test]
    fn snapshot_restore(input in mutate::inputs(seeds("ledger_snapshot"), MAX_LEN)) {
        let (snap, root) = snapshot_and_root();
        let mut st = LedgerState::from_genesis(&genesis()).unwrap();
        let before = st.snapshot();
        match st.restore(&input, &root) {
            Ok(()) => {
                prop_assert_eq!(st.state_root(), root);
                prop_assert_eq!(st.snapshot(), input.clone(), "non-canonical snapshot restored");
                prop_assert_eq!(&input, &snap);
            }
            Err(r) => {
                prop_assert_eq!(r.code, codes::BAD_SNAPSHOT);
                prop_assert_eq!(st.snapshot(), before);
            }
        }
        // Under a root of the attacker's choosing too: no panic.
        let mut st = LedgerState::from_genesis(&genesis()).unwrap();
        let _ = st.restore(&input, &[7; 32]);
    }

    /// Blocks of mutated transactions: no panic, and two replicas agree on the outcome.
    #[test]
    fn apply_block_on_mutated_txs(
        txs in proptest::collection::vec(mutate::mutated(seeds("ledger_tx"), 2, 4096), 1..6)
    ) {
        let w = state_world();
        let mut a = w.net.twin();
        let mut b = w.net.twin();
        let h = w.net.state.height() + 1;
        let (oa, ra) = a.apply_block(h, &txs);
        let (ob, rb) = b.apply_block(h, &txs);
        prop_assert_eq!(oa, ob);
        prop_assert_eq!(ra, rb);
    }
}

proptest! {
    #![proptest_config(mutate::config(640))]

    /// A replica fed hostile messages (mutated bytes, or mutated content correctly signed by
    /// a Byzantine replica) never panics, and it keeps working: afterwards it still commits.
    #[test]
    fn replica_survives_hostile_messages(
        msgs in proptest::collection::vec(
            prop_oneof![
                1 => mutate::inputs(seeds("ledger_msg"), MAX_LEN),
                2 => resigned(),
            ],
            1..6,
        ),
        id in 1u32..4,
    ) {
        let mut r = victim(id);
        let executed = r.last_executed();
        for (i, m) in msgs.into_iter().enumerate() {
            let _ = r.step(Input::Peer { from: (i % 4) as u32, msg: m });
            let _ = r.drain_actions().count();
            let _ = r.step(Input::Tick { now_ms: 1_000_000 + 50 * i as u64 });
            let _ = r.drain_actions().count();
        }
        // Nothing a single Byzantine sender says can make it execute without a quorum.
        prop_assert!(r.last_executed() >= executed);
    }
}

// ---------------------------------------------------------------------------------------------
// Directed finding: a duplicated entry in a state-transfer snapshot
// ---------------------------------------------------------------------------------------------

/// A snapshot that lists the same grant twice, the first copy pointing at another record,
/// has the honest state root (the map keeps the last copy), so a Byzantine state-transfer peer
/// can send it with a genuine checkpoint certificate. It must be refused; if it were restored,
/// the grant index would authorise the grantee for the other record too.
#[test]
fn snapshot_with_a_duplicated_grant_is_refused() {
    let w = state_world();
    let snap = w.net.state.snapshot();
    let root = w.net.state.state_root();
    let grant_bytes = w
        .net
        .state
        .get_with_proof(&StateKey::Grant(w.grant))
        .0
        .unwrap();
    let researcher = w.net.id("researcher");
    let other = w.other_record.clone();
    assert_eq!(
        w.net.state.authorisation(&researcher, &other, 100),
        Authorisation::Denied
    );
    let at = snap
        .windows(grant_bytes.len())
        .position(|win| win == grant_bytes.as_slice())
        .expect("the grant's encoding is in the snapshot");
    assert_eq!(snap[at - 1], 1, "one grant, count just before it");
    let granted = w.net.state.grant(&w.grant).unwrap().cid.clone();
    let forged = replace(&grant_bytes, &granted.0, &other.0);
    let mut evil = snap[..at - 1].to_vec();
    evil.push(2);
    evil.extend_from_slice(&forged);
    evil.extend_from_slice(&snap[at..]);
    let mut st = LedgerState::from_genesis(&genesis()).unwrap();
    let restored = st.restore(&evil, &root);
    if restored.is_ok() {
        panic!(
            "a snapshot with a duplicated grant restored under the honest root; the researcher's \
             access to the other record is now {:?}",
            st.authorisation(&researcher, &other, 100)
        );
    }
}

fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = hay
        .windows(from.len())
        .position(|w| w == from)
        .expect("present");
    let mut out = hay.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

/// Committed inputs that once failed are replayed (`fuzz/regressions/ledger_*`).
#[test]
fn regressions_replay() {
    for (name, b) in mutate::regressions("ledger_msg") {
        let mut r = victim(1);
        let _ = r.step(Input::Peer { from: 0, msg: b });
        let _ = name;
    }
    for (_, b) in mutate::regressions("ledger_tx") {
        if let Ok(tx) = SignedTx::decode(&b) {
            assert_eq!(tx.to_bytes(), b);
        }
    }
    let (_, root) = snapshot_and_root();
    for (name, b) in mutate::regressions("ledger_snapshot") {
        let mut st = LedgerState::from_genesis(&genesis()).unwrap();
        if st.restore(&b, &root).is_ok() {
            assert_eq!(st.snapshot(), b, "{name}");
        }
    }
}

/// The harness reaches the protocol rules: some re-signed mutated messages are accepted by a
/// replica, some refused; some mutated transactions and snapshots decode far enough to be
/// judged on content. Also counts (and prints) how many accepted wire messages were not in
/// their canonical encoding (the wire format does not promise canonical bytes: signatures
/// cover the re-encoded body).
#[test]
fn mutations_reach_the_protocol_rules() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[9; 32]),
    );
    let strategy = resigned();
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..200 {
        let m = strategy.new_tree(&mut runner).unwrap().current();
        let mut r = victim(2);
        match r.step(Input::Peer { from: 1, msg: m }) {
            Ok(()) => ok += 1,
            Err(_) => refused += 1,
        }
    }
    eprintln!("re-signed mutated messages: {ok} accepted, {refused} refused");
    assert!(ok > 0 && refused > 0);

    let bytes = mutate::mutated(seeds("ledger_msg"), 2, MAX_LEN);
    let (mut decoded, mut non_canonical) = (0, 0);
    for _ in 0..2000 {
        let m = bytes.new_tree(&mut runner).unwrap().current();
        if let Ok(env) = msg::decode(&m, MAX_MSG) {
            decoded += 1;
            if msg::encode_envelope(&env) != m {
                non_canonical += 1;
            }
        }
    }
    eprintln!("mutated wire messages: {decoded} of 2000 decode, {non_canonical} non-canonical");
    assert!(decoded > 0);

    let txs = mutate::mutated(seeds("ledger_tx"), 2, MAX_LEN);
    let mut codes_seen = std::collections::BTreeSet::new();
    for _ in 0..500 {
        let t = txs.new_tree(&mut runner).unwrap().current();
        if let Err(r) = state_world().net.state.check_tx(&t) {
            codes_seen.insert(r.code);
        }
    }
    eprintln!("check_tx reject codes on mutated transactions: {codes_seen:?}");
    assert!(codes_seen.contains(codes::MALFORMED));
    assert!(codes_seen.contains(codes::BAD_SIGNATURE) || codes_seen.contains(codes::INVALID_FIELD));
}

/// Every over-long varint in a state proof is refused (postcard alone accepts them; found by
/// `state_proof_decoder`: a proof whose terminal tag was written `0x81 0x00`).
#[test]
fn state_proofs_with_over_long_varints_are_refused() {
    for (name, b) in mutate::corpus("ledger_state_proof") {
        for at in 0..b.len() {
            let mut m = b.clone();
            let pos = mutate::Pos(((at as u64) << 32).div_ceil(b.len() as u64) as u32);
            mutate::apply(&mut m, &mutate::Mutation::OverlongVarint(pos), &[], MAX_LEN);
            if m != b {
                assert!(
                    StateProof::from_bytes(&m).is_err(),
                    "{name}: over-long varint at {at} accepted"
                );
            }
        }
    }
}
