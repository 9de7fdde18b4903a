//! Shared fixture of the ledger network tests and the throughput bench: a consortium of
//! validators and hospitals on the real application state, real Ed25519 keys and signed
//! transactions, and redb stores on disk.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ehr::ledger_net::{DriverConfig, Identity, ValidatorSet};
use ehr_ledger::crypto::Ed25519Signer;
use ehr_ledger::replica::{Replica, ReplicaConfig};
use ehr_ledger::state::{Genesis, GenesisParticipant, LedgerState};
use ehr_ledger::store::{RedbStore, Store};
use ehr_ledger::tx::{CapsuleId, Cid, ParticipantId, Role, TxBody, TxKind};
use sha3::{Digest, Sha3_256};

/// The chain id of every fixture.
pub const CHAIN: &str = "ehr-net-test";

/// A deterministic key from a label and an index.
pub fn key(label: &str, i: u64) -> SigningKey {
    let mut h = Sha3_256::new();
    h.update(label.as_bytes());
    h.update(i.to_le_bytes());
    SigningKey::from_bytes(&h.finalize().into())
}

/// Validators, hospitals and the genesis that registers them.
pub struct Consortium {
    /// Number of replicas.
    pub n: usize,
    /// Faults tolerated.
    pub f: usize,
    /// The validators' keys (index = replica id).
    pub validators: Vec<SigningKey>,
    /// The hospitals' keys (hospital i owns capsule i).
    pub hospitals: Vec<SigningKey>,
    /// The genesis state configuration.
    pub genesis: Genesis,
}

impl Consortium {
    /// `n` validators (n = 3f+1) and `hospitals` hospitals.
    pub fn new(n: usize, hospitals: usize) -> Self {
        let validators: Vec<SigningKey> = (0..n as u64).map(|i| key("validator", i)).collect();
        let hospitals: Vec<SigningKey> =
            (0..hospitals as u64).map(|i| key("hospital", i)).collect();
        let mut participants: Vec<GenesisParticipant> = validators
            .iter()
            .enumerate()
            .map(|(i, k)| GenesisParticipant {
                key: k.verifying_key().to_bytes(),
                role: Role::Validator,
                label: format!("node-{i}"),
                attributes: vec![],
            })
            .collect();
        participants.push(GenesisParticipant {
            key: key("authority", 0).verifying_key().to_bytes(),
            role: Role::AttributeAuthority,
            label: "authority".into(),
            attributes: vec![],
        });
        for (i, h) in hospitals.iter().enumerate() {
            participants.push(GenesisParticipant {
                key: h.verifying_key().to_bytes(),
                role: Role::Hospital,
                label: format!("hospital-{i}"),
                attributes: vec![],
            });
        }
        Self {
            n,
            f: (n - 1) / 3,
            validators,
            hospitals,
            genesis: Genesis {
                chain_id: CHAIN.into(),
                participants,
            },
        }
    }

    /// The validators' public keys in replica order.
    pub fn validator_keys(&self) -> Vec<[u8; 32]> {
        self.validators
            .iter()
            .map(|k| k.verifying_key().to_bytes())
            .collect()
    }

    /// The replica configuration of replica `id`, with a view-change timeout of `vc_ms`.
    pub fn replica_config(&self, id: u32, vc_ms: u64) -> ReplicaConfig {
        ReplicaConfig {
            chain_id: CHAIN.into(),
            id,
            validators: self.validator_keys(),
            f: self.f,
            view_change_timeout_ms: vc_ms,
            ..ReplicaConfig::default()
        }
    }

    /// The network's view of the validator set.
    pub fn validator_set(&self) -> Arc<ValidatorSet> {
        Arc::new(
            ValidatorSet::new(
                CHAIN,
                self.validators.iter().map(|k| k.verifying_key()).collect(),
            )
            .expect("validator set"),
        )
    }

    /// Replica `id`'s network identity.
    pub fn identity(&self, id: u32) -> Arc<Identity> {
        Arc::new(Identity::new(id, self.validators[id as usize].clone()))
    }

    /// Opens (or reopens) replica `id`'s redb store at `path` and builds the replica from it.
    pub fn open(&self, id: u32, path: &Path, vc_ms: u64) -> (Replica<LedgerState>, RedbStore) {
        let store = RedbStore::open(path).expect("open store");
        let restored = store.load().expect("load store");
        let app = LedgerState::from_genesis(&self.genesis).expect("genesis");
        let replica = Replica::new(
            self.replica_config(id, vc_ms),
            Box::new(Ed25519Signer::new(self.validators[id as usize].clone())),
            app,
            restored,
        )
        .expect("replica");
        (replica, store)
    }

    /// Hospital `h` publishes capsule `h` (its nonce 1).
    pub fn capsule_tx(&self, h: usize) -> Vec<u8> {
        let k = &self.hospitals[h];
        TxBody::new(
            CHAIN,
            ParticipantId(k.verifying_key().to_bytes()),
            1,
            TxKind::PublishCapsule {
                capsule: capsule_id(h),
                policy: "role:researcher and (irb:study-42 or dept:cardiology)".into(),
                epoch: 0,
                wrapped_search_key: vec![7; 200],
            },
        )
        .sign(k)
        .to_bytes()
    }

    /// Hospital `h` registers record number `serial` (its nonce `nonce`, from 2): a 36-byte
    /// CIDv1, a 96-byte wrapped key and two search labels, about 300 bytes signed.
    pub fn record_tx(&self, h: usize, nonce: u64, serial: u64) -> Vec<u8> {
        let k = &self.hospitals[h];
        let mut cid = vec![0x01, 0x55, 0x12, 0x20];
        cid.extend_from_slice(&Sha3_256::digest(
            [&(h as u64).to_le_bytes()[..], &serial.to_le_bytes()].concat(),
        ));
        TxBody::new(
            CHAIN,
            ParticipantId(k.verifying_key().to_bytes()),
            nonce,
            TxKind::RegisterRecord {
                cid: Cid(cid),
                capsule: capsule_id(h),
                epoch: 0,
                wrapped_key: vec![0x5A; 96],
                search_labels: vec![[1; 16], [2; 16]],
                size: 123_456,
                patient: None,
            },
        )
        .sign(k)
        .to_bytes()
    }
}

/// Capsule `i`'s id.
pub fn capsule_id(i: usize) -> CapsuleId {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&(i as u64).to_le_bytes());
    CapsuleId(id)
}

/// Driver limits for tests: quick reconnects.
pub fn driver_config() -> DriverConfig {
    let mut cfg = DriverConfig::default();
    cfg.transport.backoff_initial = Duration::from_millis(20);
    cfg.transport.backoff_max = Duration::from_millis(500);
    cfg
}
