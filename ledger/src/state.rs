//! The replicated application state: participants, attributes, capsules, records, grants and
//! the access audit log, behind the [`App`] contract.
//!
//! # Rules (each rejection has a stable code from [`crate::tx::codes`])
//!
//! Every transaction names this chain, comes from a registered sender, is signed by the
//! sender's *current* key (strict Ed25519) and carries the sender's next nonce: the first
//! transaction of a participant has nonce 1, then 2, 3 ... (`nonce-replayed` for a used nonce,
//! `nonce-gap` for a skipped one). A rejected transaction changes nothing, including the nonce.
//!
//! | Transaction | Who may send it | Main checks |
//! |---|---|---|
//! | `RegisterParticipant` | an attribute authority (any role but validator); a hospital (patients) | key valid and never used; validators only at genesis |
//! | `RotateKey` | anyone, for itself | new key valid and never used |
//! | `AssignAttributes` / `RevokeAttributes` | an attribute authority | participant exists; expiry in the future; at most [`MAX_ATTRIBUTES_PER_PARTICIPANT`] |
//! | `PublishCapsule` | a hospital | new id; policy parses |
//! | `RotateCapsuleEpoch` | the capsule's owner | epoch = current + 1 |
//! | `RegisterRecord` | the capsule's owner (a hospital) | new CID; epoch = capsule's current epoch; patient is a registered patient |
//! | `RegisterRecords` | the capsule's owner (a hospital) | as `RegisterRecord` for every record (all or none; distinct CIDs) |
//! | `Grant` | the record's owner or patient | record active; grantee registered; expiry in the future |
//! | `Revoke` | the grantor, the record's owner or patient | grant active |
//! | `Supersede` | the owner of both records | both active |
//! | `RecordAccess` | a validator or hospital node | record and accessor exist; the ledger records on what basis (or none) the access was authorised |
//! | `RegisterAuthKey` | anyone, for itself | DER structure of the named key type; not registered by anyone; at most [`MAX_AUTH_KEYS_PER_PARTICIPANT`] |
//! | `RevokeAuthKey` | anyone, for itself | the key is registered to the sender |
//!
//! # Time
//!
//! The state has no clock: time is the block height. Expiries are heights; something that
//! expires at height `e` holds at heights `< e`. Transactions of the block at height `h` are
//! judged at `h`.
//!
//! # State root
//!
//! Every entity is a leaf of a sparse Merkle tree ([`crate::smt`]) under the key
//! `SHA3-256("ehr-ledger/state-key/v1\0" || postcard(StateKey))` with the entity's postcard
//! encoding as value. A `Meta` leaf holds the chain id, the height of the last applied block and
//! the audit counter, so the root changes with every block and a snapshot's height is
//! authenticated too. Derived indexes (grants by record or grantee, the audit log by record,
//! parsed policies, the key index) are rebuilt from the leaves on restore.
//!
//! # Check versus apply
//!
//! [`App::check_tx`] judges a transaction against the committed state; for a nonce ahead of the
//! sender's next one (up to [`CHECK_NONCE_WINDOW`]) it checks only the signature and the
//! fields, since earlier pending transactions may change what the rest depends on.
//! [`App::apply_block`] is authoritative and always uses `verify_strict`; it skips the
//! signature check only for transaction ids that `check_tx` already verified strictly (a
//! bounded cache of ids, which are hashes of the exact bytes).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha3::{Digest, Sha3_256};

use crate::app::{App, Hash, TxOutcome, TxReject};
use crate::error::StateError;
use crate::policy::Policy;
use crate::smt::{Smt, SmtProof, value_hash};
use crate::tx::{
    AuthAlg, CapsuleId, Cid, GrantId, ParticipantId, Purpose, Role, Scope, SignedTx, TxKind,
    auth_key_hash, codes, reject, tx_id,
};

/// How far ahead of a sender's next nonce `check_tx` accepts a transaction (so a client can
/// pipeline several transactions into the mempool).
pub const CHECK_NONCE_WINDOW: u64 = 64;
/// The most attributes (including expired, not yet revoked ones) one participant may hold.
pub const MAX_ATTRIBUTES_PER_PARTICIPANT: usize = 256;
/// The most authentication keys (ES384/RS384) one participant may have registered at once.
pub const MAX_AUTH_KEYS_PER_PARTICIPANT: usize = 4;
/// How many strictly verified transaction ids `check_tx` remembers for `apply_block`.
const SIG_CACHE_CAPACITY: usize = 1 << 16;
/// Decompressed signer keys kept (cleared when full).
const KEY_CACHE_CAPACITY: usize = 4096;
/// Snapshot format magic and version.
const SNAPSHOT_MAGIC: &[u8] = b"EHRSNAP\x02";
/// The previous snapshot format (no authentication keys), still read.
const SNAPSHOT_MAGIC_V1: &[u8] = b"EHRSNAP\x01";
/// Domain separator of state keys.
const STATE_KEY_DOMAIN: &[u8] = b"ehr-ledger/state-key/v1\0";

/// A registered participant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// Permanent id (the key it was registered with).
    pub id: ParticipantId,
    /// Its current Ed25519 public key.
    pub key: [u8; 32],
    /// Its role.
    pub role: Role,
    /// Its public label (empty for patients).
    pub label: String,
    /// The height it was registered at (0 = genesis).
    pub registered_at: u64,
    /// Who registered it (`None` at genesis).
    pub registered_by: Option<ParticipantId>,
}

/// One attribute held by a participant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributeEntry {
    /// The first height at which it no longer holds, if any.
    pub expiry_height: Option<u64>,
    /// When it was (last) assigned.
    pub assigned_at: u64,
    /// The authority that assigned it (`None` at genesis).
    pub assigned_by: Option<ParticipantId>,
}

impl AttributeEntry {
    /// Whether it holds at `height`.
    pub fn holds_at(&self, height: u64) -> bool {
        self.expiry_height.is_none_or(|e| height < e)
    }
}

/// Which participant a public key belongs or belonged to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUse {
    /// The participant.
    pub participant: ParticipantId,
    /// Whether it is the participant's current key (false once rotated away).
    pub current: bool,
}

/// An authentication key a participant registered for API client assertions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthKey {
    /// Its algorithm.
    pub alg: AuthAlg,
    /// The public key as DER SubjectPublicKeyInfo.
    pub public_key_der: Vec<u8>,
    /// Its hash ([`crate::tx::auth_key_hash`]), which names it in `RevokeAuthKey`.
    pub key_hash: Hash,
    /// When it was registered.
    pub registered_at: u64,
}

/// A published capsule: a policy and its search key wrapped under it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capsule {
    /// Its id.
    pub id: CapsuleId,
    /// The hospital that published it.
    pub owner: ParticipantId,
    /// The policy text.
    pub policy: String,
    /// The current search-key epoch.
    pub epoch: u64,
    /// The current epoch's search key wrapped under the policy.
    pub wrapped_search_key: Vec<u8>,
    /// When it was published.
    pub published_at: u64,
    /// When its epoch last changed (= `published_at` if never).
    pub epoch_since: u64,
}

/// Whether a record is current.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordStatus {
    /// Current: searchable and readable.
    Active,
    /// Replaced by a newer record.
    Superseded {
        /// The replacement.
        by: Cid,
        /// When.
        at: u64,
    },
}

/// A registered record (no health data: a CID, a wrapped key and opaque labels).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Its content identifier.
    pub cid: Cid,
    /// The hospital that registered it.
    pub owner: ParticipantId,
    /// Its capsule.
    pub capsule: CapsuleId,
    /// The capsule epoch of its search labels.
    pub epoch: u64,
    /// Its data key wrapped under the capsule's policy.
    pub wrapped_key: Vec<u8>,
    /// Opaque search labels.
    pub search_labels: Vec<[u8; 16]>,
    /// Ciphertext size in bytes.
    pub size: u64,
    /// Its patient, if registered.
    pub patient: Option<ParticipantId>,
    /// When it was registered.
    pub registered_at: u64,
    /// The registering transaction.
    pub tx: Hash,
    /// Whether it is current.
    pub status: RecordStatus,
}

/// A revocation of a grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Who revoked it.
    pub by: ParticipantId,
    /// When.
    pub at: u64,
}

/// A grant of access to one record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Its id (the granting transaction's id).
    pub id: GrantId,
    /// The record.
    pub cid: Cid,
    /// Who granted it (the record's owner or patient).
    pub grantor: ParticipantId,
    /// Who may read.
    pub grantee: ParticipantId,
    /// What it allows.
    pub scope: Scope,
    /// The first height at which it no longer holds.
    pub expiry_height: u64,
    /// The data key rewrapped for the grantee.
    pub rewrapped_key: Vec<u8>,
    /// When it was granted.
    pub granted_at: u64,
    /// Its revocation, if revoked.
    pub revoked: Option<Revocation>,
}

impl Grant {
    /// Whether it holds at `height` (not revoked, not expired).
    pub fn is_active_at(&self, height: u64) -> bool {
        self.revoked.is_none() && height < self.expiry_height
    }
}

/// On what basis a participant may read a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Authorisation {
    /// It owns the record.
    Owner,
    /// It is the record's patient.
    Patient,
    /// It holds this active grant.
    Grant(GrantId),
    /// Its attributes satisfy the capsule's policy.
    Policy,
    /// None of the above (or the record is unknown or superseded).
    Denied,
}

impl Authorisation {
    /// Whether access is allowed.
    pub fn is_allowed(&self) -> bool {
        !matches!(self, Authorisation::Denied)
    }
}

/// One entry of the access audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the global log.
    pub seq: u64,
    /// The record released.
    pub cid: Cid,
    /// Who received it.
    pub accessor: ParticipantId,
    /// The node that released it (the sender).
    pub node: ParticipantId,
    /// Why.
    pub purpose: Purpose,
    /// When (block height).
    pub height: u64,
    /// On what basis the ledger allowed it at that height (`Denied` is recorded too, e.g. for
    /// break-glass access).
    pub basis: Authorisation,
    /// The recording transaction.
    pub tx: Hash,
}

/// Chain-wide values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The chain id every transaction must name.
    pub chain_id: String,
    /// The height of the last applied block (0 = genesis).
    pub height: u64,
    /// The next audit sequence number.
    pub audit_next: u64,
}

/// The key of one leaf of the state tree.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum StateKey {
    /// The [`Meta`] leaf.
    Meta,
    /// A [`Participant`].
    Participant(ParticipantId),
    /// A participant's last used nonce (`u64`).
    Nonce(ParticipantId),
    /// A participant's attributes (`BTreeMap<String, AttributeEntry>`).
    Attributes(ParticipantId),
    /// A public key's [`KeyUse`].
    Key([u8; 32]),
    /// A [`Capsule`].
    Capsule(CapsuleId),
    /// A [`Record`].
    Record(Cid),
    /// A [`Grant`].
    Grant(GrantId),
    /// An [`AuditEntry`] by sequence number.
    Audit(u64),
    /// A participant's registered authentication keys (`Vec<AuthKey>`, oldest first; absent
    /// when none).
    AuthKeys(ParticipantId),
}

impl StateKey {
    /// The 256-bit tree key of this state key.
    pub fn tree_key(&self) -> Hash {
        let mut h = Sha3_256::new();
        h.update(STATE_KEY_DOMAIN);
        h.update(postcard::to_stdvec(self).expect("invariant: postcard serialises a StateKey"));
        h.finalize().into()
    }
}

/// A proof that a state key has a given value (or none) under a state root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateProof(pub SmtProof);

impl StateProof {
    /// Checks that under `root`, `key` has the leaf value `value` (its canonical encoding, as
    /// returned by [`LedgerState::get_with_proof`]), or is absent (`None`).
    pub fn verify(
        &self,
        root: &Hash,
        key: &StateKey,
        value: Option<&[u8]>,
    ) -> Result<(), StateError> {
        let vh = value.map(value_hash);
        self.0.verify(root, &key.tree_key(), vh.as_ref())
    }

    /// The canonical encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes()
    }

    /// Decodes a proof.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        SmtProof::from_bytes(bytes).map(StateProof)
    }
}

/// What the search index and other views need to hear about, in commit order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateEvent {
    /// A record was registered: index its labels.
    RecordAdded {
        /// The record.
        cid: Cid,
        /// Its capsule.
        capsule: CapsuleId,
        /// The capsule epoch of its labels.
        epoch: u64,
        /// Its search labels.
        labels: Vec<[u8; 16]>,
        /// The block height.
        height: u64,
    },
    /// A record stopped being current: remove it from the index.
    RecordRemoved {
        /// The record.
        cid: Cid,
        /// Its capsule.
        capsule: CapsuleId,
        /// Its replacement.
        superseded_by: Cid,
        /// The block height.
        height: u64,
    },
    /// A capsule moved to a new epoch.
    CapsuleEpoch {
        /// The capsule.
        capsule: CapsuleId,
        /// The new epoch.
        epoch: u64,
        /// The block height.
        height: u64,
    },
    /// A grant was created.
    GrantAdded {
        /// The grant.
        grant: GrantId,
        /// Its record.
        cid: Cid,
        /// The block height.
        height: u64,
    },
    /// A grant was revoked.
    GrantRevoked {
        /// The grant.
        grant: GrantId,
        /// Its record.
        cid: Cid,
        /// The block height.
        height: u64,
    },
}

/// One participant in a genesis configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisParticipant {
    /// Its Ed25519 public key (and id).
    pub key: [u8; 32],
    /// Its role.
    pub role: Role,
    /// Its label.
    pub label: String,
    /// Attributes it holds from the start (no expiry).
    pub attributes: Vec<String>,
}

/// The initial state: chain id and participants (at least one validator and one attribute
/// authority).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    /// The chain id.
    pub chain_id: String,
    /// The initial participants, in any order.
    pub participants: Vec<GenesisParticipant>,
}

/// How far ahead of the sender's next nonce a transaction may be.
#[derive(Clone, Copy, Debug)]
enum NonceRule {
    /// Exactly the next nonce (apply).
    Exact,
    /// Up to [`CHECK_NONCE_WINDOW`] ahead (check).
    Window,
}

#[derive(Debug, Default)]
struct SigCache {
    ids: BTreeSet<Hash>,
    order: VecDeque<Hash>,
}

impl SigCache {
    fn insert(&mut self, id: Hash) {
        if self.ids.insert(id) {
            self.order.push_back(id);
            while self.order.len() > SIG_CACHE_CAPACITY {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }
}

/// Everything a snapshot holds (all leaves, grouped by kind).
#[derive(Serialize, Deserialize)]
struct SnapshotV1 {
    meta: Meta,
    participants: Vec<Participant>,
    nonces: Vec<(ParticipantId, u64)>,
    attributes: Vec<(ParticipantId, BTreeMap<String, AttributeEntry>)>,
    keys: Vec<([u8; 32], KeyUse)>,
    capsules: Vec<Capsule>,
    records: Vec<Record>,
    grants: Vec<Grant>,
    audit: Vec<AuditEntry>,
}

/// Snapshot format 2: format 1 plus the authentication keys.
#[derive(Serialize, Deserialize)]
struct SnapshotV2 {
    v1: SnapshotV1,
    auth_keys: Vec<(ParticipantId, Vec<AuthKey>)>,
}

/// The ledger's application state. Deterministic: ordered maps only, no clock, no randomness.
pub struct LedgerState {
    meta: Meta,
    participants: BTreeMap<ParticipantId, Participant>,
    nonces: BTreeMap<ParticipantId, u64>,
    attributes: BTreeMap<ParticipantId, BTreeMap<String, AttributeEntry>>,
    keys: BTreeMap<[u8; 32], KeyUse>,
    capsules: BTreeMap<CapsuleId, Capsule>,
    records: BTreeMap<Cid, Record>,
    grants: BTreeMap<GrantId, Grant>,
    audit: BTreeMap<u64, AuditEntry>,
    auth_keys: BTreeMap<ParticipantId, Vec<AuthKey>>,
    // Derived (rebuilt on restore).
    auth_key_owner: BTreeMap<Hash, ParticipantId>,
    policies: BTreeMap<CapsuleId, Policy>,
    grants_by_record: BTreeMap<Cid, BTreeSet<GrantId>>,
    grants_by_grantee: BTreeMap<ParticipantId, BTreeSet<GrantId>>,
    audit_by_record: BTreeMap<Cid, Vec<u64>>,
    smt: Smt,
    dirty: BTreeSet<StateKey>,
    events: Vec<StateEvent>,
    sig_cache: Mutex<SigCache>,
    /// Decompressed public keys of recent signers (decompressing costs about a quarter of a
    /// verification). Bounded; not part of the state.
    key_cache: Mutex<BTreeMap<[u8; 32], VerifyingKey>>,
}

impl std::fmt::Debug for LedgerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerState")
            .field("chain_id", &self.meta.chain_id)
            .field("height", &self.meta.height)
            .field("root", &hex::encode(self.smt.root()))
            .field("participants", &self.participants.len())
            .field("capsules", &self.capsules.len())
            .field("records", &self.records.len())
            .field("grants", &self.grants.len())
            .field("audit", &self.audit.len())
            .finish()
    }
}

fn valid_public_key(key: &[u8; 32]) -> bool {
    VerifyingKey::from_bytes(key).is_ok_and(|k| !k.is_weak())
}

impl LedgerState {
    fn empty(chain_id: String) -> Self {
        LedgerState {
            meta: Meta {
                chain_id,
                height: 0,
                audit_next: 0,
            },
            participants: BTreeMap::new(),
            nonces: BTreeMap::new(),
            attributes: BTreeMap::new(),
            keys: BTreeMap::new(),
            capsules: BTreeMap::new(),
            records: BTreeMap::new(),
            grants: BTreeMap::new(),
            audit: BTreeMap::new(),
            auth_keys: BTreeMap::new(),
            auth_key_owner: BTreeMap::new(),
            policies: BTreeMap::new(),
            grants_by_record: BTreeMap::new(),
            grants_by_grantee: BTreeMap::new(),
            audit_by_record: BTreeMap::new(),
            smt: Smt::new(),
            dirty: BTreeSet::new(),
            events: Vec::new(),
            sig_cache: Mutex::new(SigCache::default()),
            key_cache: Mutex::new(BTreeMap::new()),
        }
    }

    /// Builds the state at height 0 from a genesis configuration.
    pub fn from_genesis(genesis: &Genesis) -> Result<Self, StateError> {
        let g = |m: String| StateError::Genesis(m);
        let probe = crate::tx::TxBody::new(
            &genesis.chain_id,
            ParticipantId([0; 32]),
            1,
            TxKind::RotateKey { new_key: [0; 32] },
        );
        probe
            .validate_fields()
            .map_err(|r| g(format!("chain_id: {}", r.reason)))?;
        let mut state = LedgerState::empty(genesis.chain_id.clone());
        for (i, p) in genesis.participants.iter().enumerate() {
            if !valid_public_key(&p.key) {
                return Err(g(format!("participants[{i}].key: not a valid Ed25519 key")));
            }
            if state.keys.contains_key(&p.key) {
                return Err(g(format!("participants[{i}].key: duplicate")));
            }
            let probe = crate::tx::TxBody::new(
                &genesis.chain_id,
                ParticipantId(p.key),
                1,
                TxKind::RegisterParticipant {
                    key: p.key,
                    role: p.role,
                    label: p.label.clone(),
                },
            );
            probe
                .validate_fields()
                .map_err(|r| g(format!("participants[{i}]: {}", r.reason)))?;
            let mut attrs = BTreeMap::new();
            for a in &p.attributes {
                crate::tx::check_attribute(a)
                    .map_err(|r| g(format!("participants[{i}]: {}", r.reason)))?;
                attrs.insert(
                    a.clone(),
                    AttributeEntry {
                        expiry_height: None,
                        assigned_at: 0,
                        assigned_by: None,
                    },
                );
            }
            if attrs.len() > MAX_ATTRIBUTES_PER_PARTICIPANT {
                return Err(g(format!("participants[{i}].attributes: too many")));
            }
            let id = ParticipantId(p.key);
            state.insert_participant(
                Participant {
                    id,
                    key: p.key,
                    role: p.role,
                    label: p.label.clone(),
                    registered_at: 0,
                    registered_by: None,
                },
                attrs,
            );
        }
        for (role, name) in [
            (Role::Validator, "validator"),
            (Role::AttributeAuthority, "attribute authority"),
        ] {
            if !state.participants.values().any(|p| p.role == role) {
                return Err(g(format!("participants: no {name}")));
            }
        }
        state.dirty.insert(StateKey::Meta);
        state.flush();
        Ok(state)
    }

    // ----- queries -----

    /// The chain id.
    pub fn chain_id(&self) -> &str {
        &self.meta.chain_id
    }

    /// The height of the last applied block (0 = genesis).
    pub fn height(&self) -> u64 {
        self.meta.height
    }

    /// A participant by id.
    pub fn participant(&self, id: &ParticipantId) -> Option<&Participant> {
        self.participants.get(id)
    }

    /// The participant whose *current* key is `key`.
    pub fn participant_by_key(&self, key: &[u8; 32]) -> Option<&Participant> {
        match self.keys.get(key) {
            Some(KeyUse {
                participant,
                current: true,
            }) => self.participants.get(participant),
            _ => None,
        }
    }

    /// All participants, by id.
    pub fn participants(&self) -> impl Iterator<Item = &Participant> {
        self.participants.values()
    }

    /// A participant's last used nonce (0 if none); `None` if not registered.
    pub fn nonce(&self, id: &ParticipantId) -> Option<u64> {
        self.nonces.get(id).copied()
    }

    /// All attribute entries of a participant (including expired ones).
    pub fn attribute_entries(
        &self,
        id: &ParticipantId,
    ) -> Option<&BTreeMap<String, AttributeEntry>> {
        self.attributes.get(id)
    }

    /// The attributes a participant holds at `height`.
    pub fn attributes_at(&self, id: &ParticipantId, height: u64) -> Vec<&str> {
        self.attributes
            .get(id)
            .map(|m| {
                m.iter()
                    .filter(|(_, e)| e.holds_at(height))
                    .map(|(a, _)| a.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A capsule by id.
    pub fn capsule(&self, id: &CapsuleId) -> Option<&Capsule> {
        self.capsules.get(id)
    }

    /// A capsule's parsed policy.
    pub fn policy(&self, id: &CapsuleId) -> Option<&Policy> {
        self.policies.get(id)
    }

    /// All capsules, by id.
    pub fn capsules(&self) -> impl Iterator<Item = &Capsule> {
        self.capsules.values()
    }

    /// A record by CID.
    pub fn record(&self, cid: &Cid) -> Option<&Record> {
        self.records.get(cid)
    }

    /// All records, by CID.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    /// A grant by id.
    pub fn grant(&self, id: &GrantId) -> Option<&Grant> {
        self.grants.get(id)
    }

    /// All grants (active or not) of a record.
    pub fn grants_for_record(&self, cid: &Cid) -> Vec<&Grant> {
        self.grants_by_record
            .get(cid)
            .map(|ids| ids.iter().filter_map(|g| self.grants.get(g)).collect())
            .unwrap_or_default()
    }

    /// All grants (active or not) to a grantee.
    pub fn grants_for_grantee(&self, grantee: &ParticipantId) -> Vec<&Grant> {
        self.grants_by_grantee
            .get(grantee)
            .map(|ids| ids.iter().filter_map(|g| self.grants.get(g)).collect())
            .unwrap_or_default()
    }

    /// A participant's registered authentication keys (algorithm and DER
    /// SubjectPublicKeyInfo), oldest first.
    pub fn auth_keys(&self, id: &ParticipantId) -> Vec<(AuthAlg, Vec<u8>)> {
        self.auth_key_entries(id)
            .iter()
            .map(|k| (k.alg, k.public_key_der.clone()))
            .collect()
    }

    /// A participant's registered authentication keys with their metadata, oldest first.
    pub fn auth_key_entries(&self, id: &ParticipantId) -> &[AuthKey] {
        self.auth_keys.get(id).map_or(&[], Vec::as_slice)
    }

    /// The participant an authentication key (by hash) is registered to, if any.
    pub fn auth_key_owner(&self, key_hash: &Hash) -> Option<ParticipantId> {
        self.auth_key_owner.get(key_hash).copied()
    }

    /// The audit log of a record, oldest first.
    pub fn audit_for_record(&self, cid: &Cid) -> Vec<&AuditEntry> {
        self.audit_by_record
            .get(cid)
            .map(|seqs| seqs.iter().filter_map(|s| self.audit.get(s)).collect())
            .unwrap_or_default()
    }

    /// On what basis `reader` may read `cid` at `height`: owner, patient, an active grant, or
    /// the capsule's policy satisfied by the attributes `reader` holds at `height`. Unknown
    /// and superseded records, and unknown readers, are `Denied`.
    pub fn authorisation(&self, reader: &ParticipantId, cid: &Cid, height: u64) -> Authorisation {
        let Some(record) = self.records.get(cid) else {
            return Authorisation::Denied;
        };
        if record.status != RecordStatus::Active || !self.participants.contains_key(reader) {
            return Authorisation::Denied;
        }
        if record.owner == *reader {
            return Authorisation::Owner;
        }
        if record.patient.as_ref() == Some(reader) {
            return Authorisation::Patient;
        }
        if let Some(ids) = self.grants_by_record.get(cid) {
            for id in ids {
                let g = &self.grants[id];
                if g.grantee == *reader && g.is_active_at(height) {
                    return Authorisation::Grant(*id);
                }
            }
        }
        if let (Some(policy), Some(attrs)) = (
            self.policies.get(&record.capsule),
            self.attributes.get(reader),
        ) {
            let has = |a: &str| attrs.get(a).is_some_and(|e| e.holds_at(height));
            if policy.is_satisfied(&has) {
                return Authorisation::Policy;
            }
        }
        Authorisation::Denied
    }

    /// Whether `reader` may read `cid` at `height` (see [`LedgerState::authorisation`]).
    pub fn is_authorised(&self, reader: &ParticipantId, cid: &Cid, height: u64) -> bool {
        self.authorisation(reader, cid, height).is_allowed()
    }

    /// Drains the events produced by the blocks applied since the last call.
    pub fn take_events(&mut self) -> Vec<StateEvent> {
        std::mem::take(&mut self.events)
    }

    /// The canonical leaf value of `key` and a proof of it (or of its absence) against
    /// [`App::state_root`].
    pub fn get_with_proof(&self, key: &StateKey) -> (Option<Vec<u8>>, StateProof) {
        (
            self.leaf_value(key),
            StateProof(self.smt.prove(&key.tree_key())),
        )
    }

    // ----- batch checking -----

    /// Checks many transactions like [`App::check_tx`], verifying their signatures with one
    /// Ed25519 batch verification (falling back to one-by-one strict verification if the
    /// batch fails). Batch verification is slightly more permissive than `verify_strict` on
    /// adversarial signatures with torsion components; such a transaction would then be
    /// rejected by [`App::apply_block`], which is authoritative.
    pub fn check_txs(&self, txs: &[&[u8]]) -> Vec<Result<Hash, TxReject>> {
        let mut out: Vec<Result<Hash, TxReject>> = Vec::with_capacity(txs.len());
        let mut pending: Vec<(usize, SignedTx, Hash, VerifyingKey, Vec<u8>)> = Vec::new();
        for (i, bytes) in txs.iter().enumerate() {
            let id = tx_id(bytes);
            match SignedTx::decode(bytes).and_then(|tx| {
                self.check_sender(&tx, NonceRule::Window)?;
                let key = VerifyingKey::from_bytes(&tx.signer).map_err(|_| {
                    reject(codes::BAD_SIGNATURE, "signer: not a valid Ed25519 point")
                })?;
                if key.is_weak() {
                    return Err(reject(codes::BAD_SIGNATURE, "signer: small-order key"));
                }
                Ok((tx, key))
            }) {
                Ok((tx, key)) => {
                    let msg = tx.signing_message();
                    pending.push((i, tx, id, key, msg));
                    out.push(Ok(id));
                }
                Err(r) => out.push(Err(r)),
            }
        }
        let msgs: Vec<&[u8]> = pending.iter().map(|p| p.4.as_slice()).collect();
        let sigs: Vec<Signature> = pending
            .iter()
            .map(|p| Signature::from_bytes(&p.1.signature))
            .collect();
        let keys: Vec<VerifyingKey> = pending.iter().map(|p| p.3).collect();
        let batch_ok =
            pending.is_empty() || ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok();
        for (i, tx, id, _, _) in &pending {
            let result = if batch_ok {
                Ok(())
            } else {
                tx.verify_signature()
            }
            .and_then(|()| self.check_kind_if_next(tx, id));
            if let Err(r) = result {
                out[*i] = Err(r);
            }
        }
        out
    }

    // ----- validation -----

    /// Chain, sender, signer and nonce (exact for apply, a window for check).
    fn check_sender(&self, tx: &SignedTx, rule: NonceRule) -> Result<&Participant, TxReject> {
        if tx.body.chain_id != self.meta.chain_id {
            return Err(reject(
                codes::WRONG_CHAIN,
                "chain_id: transaction is for another chain",
            ));
        }
        let sender = self.participants.get(&tx.body.sender).ok_or_else(|| {
            reject(
                codes::UNKNOWN_SENDER,
                "sender: not a registered participant",
            )
        })?;
        if sender.key != tx.signer {
            return Err(reject(
                codes::WRONG_SIGNER,
                "signer: not the sender's current key",
            ));
        }
        let last = self.nonces.get(&sender.id).copied().unwrap_or(0);
        let nonce = tx.body.nonce;
        if nonce <= last {
            return Err(reject(
                codes::NONCE_REPLAYED,
                format!("nonce: {nonce} already used (last {last})"),
            ));
        }
        let ahead = match rule {
            NonceRule::Exact => 1,
            NonceRule::Window => CHECK_NONCE_WINDOW,
        };
        if nonce - last > ahead {
            return Err(reject(
                codes::NONCE_GAP,
                format!("nonce: {nonce} skips ahead of the next nonce {}", last + 1),
            ));
        }
        Ok(sender)
    }

    /// For `check_tx`: the kind's rules at the next height, if the nonce is the next one
    /// (otherwise earlier pending transactions may change the outcome).
    fn check_kind_if_next(&self, tx: &SignedTx, id: &Hash) -> Result<(), TxReject> {
        let sender = self.check_sender(tx, NonceRule::Window)?;
        if self.nonces.get(&sender.id).copied().unwrap_or(0) + 1 == tx.body.nonce {
            self.validate_kind(sender, tx, id, self.meta.height + 1)?;
        }
        Ok(())
    }

    fn require_role(sender: &Participant, roles: &[Role], what: &str) -> Result<(), TxReject> {
        if roles.contains(&sender.role) {
            Ok(())
        } else {
            Err(reject(
                codes::NOT_PERMITTED,
                format!("sender: a {:?} may not {what}", sender.role),
            ))
        }
    }

    fn existing_participant(
        &self,
        id: &ParticipantId,
        field: &str,
    ) -> Result<&Participant, TxReject> {
        self.participants.get(id).ok_or_else(|| {
            reject(
                codes::UNKNOWN_PARTICIPANT,
                format!("{field}: not a registered participant"),
            )
        })
    }

    fn active_record(&self, cid: &Cid, field: &str) -> Result<&Record, TxReject> {
        let r = self
            .records
            .get(cid)
            .ok_or_else(|| reject(codes::UNKNOWN_RECORD, format!("{field}: no such record")))?;
        if r.status != RecordStatus::Active {
            return Err(reject(
                codes::RECORD_INACTIVE,
                format!("{field}: record has been superseded"),
            ));
        }
        Ok(r)
    }

    fn new_key(&self, key: &[u8; 32], field: &str) -> Result<(), TxReject> {
        if !valid_public_key(key) {
            return Err(reject(
                codes::INVALID_FIELD,
                format!("{field}: not a valid Ed25519 public key"),
            ));
        }
        if self.keys.contains_key(key) {
            return Err(reject(
                codes::KEY_IN_USE,
                format!("{field}: already used by a participant"),
            ));
        }
        Ok(())
    }

    /// Whether `sender` may register records under `capsule` at `epoch`.
    fn check_record_capsule(
        &self,
        sender: &Participant,
        capsule: &CapsuleId,
        epoch: u64,
    ) -> Result<(), TxReject> {
        Self::require_role(sender, &[Role::Hospital], "register a record")?;
        let c = self
            .capsules
            .get(capsule)
            .ok_or_else(|| reject(codes::UNKNOWN_CAPSULE, "capsule: not published"))?;
        if c.owner != sender.id {
            return Err(reject(
                codes::NOT_PERMITTED,
                "capsule: owned by another hospital",
            ));
        }
        if c.epoch != epoch {
            return Err(reject(
                codes::WRONG_EPOCH,
                format!("epoch: {epoch}, the capsule is at epoch {}", c.epoch),
            ));
        }
        Ok(())
    }

    /// Whether a record `cid` (of `patient`) may be registered; `at` prefixes field names.
    fn check_new_record(
        &self,
        cid: &Cid,
        patient: Option<&ParticipantId>,
        at: &str,
    ) -> Result<(), TxReject> {
        if self.records.contains_key(cid) {
            return Err(reject(
                codes::DUPLICATE,
                format!("{at}cid: already registered"),
            ));
        }
        if let Some(p) = patient {
            let p = self.existing_participant(p, &format!("{at}patient"))?;
            if p.role != Role::Patient {
                return Err(reject(
                    codes::INVALID_FIELD,
                    format!("{at}patient: participant is not a patient"),
                ));
            }
        }
        Ok(())
    }

    fn validate_kind(
        &self,
        sender: &Participant,
        tx: &SignedTx,
        id: &Hash,
        height: u64,
    ) -> Result<(), TxReject> {
        match &tx.body.kind {
            TxKind::RegisterParticipant { key, role, .. } => {
                match (sender.role, role) {
                    (_, Role::Validator) => {
                        return Err(reject(
                            codes::NOT_PERMITTED,
                            "role: the validator set is fixed at genesis",
                        ));
                    }
                    (Role::AttributeAuthority, _) | (Role::Hospital, Role::Patient) => {}
                    (r, _) => {
                        return Err(reject(
                            codes::NOT_PERMITTED,
                            format!("sender: a {r:?} may not register a {role:?}"),
                        ));
                    }
                }
                self.new_key(key, "key")
            }
            TxKind::RotateKey { new_key } => self.new_key(new_key, "new_key"),
            TxKind::AssignAttributes {
                participant,
                attributes,
                expiry_height,
            } => {
                Self::require_role(sender, &[Role::AttributeAuthority], "assign attributes")?;
                self.existing_participant(participant, "participant")?;
                if let Some(e) = expiry_height
                    && *e <= height
                {
                    return Err(reject(
                        codes::EXPIRED,
                        format!("expiry_height: {e} is not after height {height}"),
                    ));
                }
                let held = self.attributes.get(participant);
                let new = attributes
                    .iter()
                    .filter(|a| !held.is_some_and(|h| h.contains_key(*a)))
                    .count();
                let total = held.map_or(0, |h| h.len()) + new;
                if total > MAX_ATTRIBUTES_PER_PARTICIPANT {
                    return Err(reject(
                        codes::LIMIT_EXCEEDED,
                        format!(
                            "attributes: participant would hold {total} > {MAX_ATTRIBUTES_PER_PARTICIPANT}"
                        ),
                    ));
                }
                Ok(())
            }
            TxKind::RevokeAttributes {
                participant,
                attributes,
            } => {
                Self::require_role(sender, &[Role::AttributeAuthority], "revoke attributes")?;
                self.existing_participant(participant, "participant")?;
                let held = self.attributes.get(participant);
                for (i, a) in attributes.iter().enumerate() {
                    if !held.is_some_and(|h| h.contains_key(a)) {
                        return Err(reject(
                            codes::NOT_ASSIGNED,
                            format!("attributes[{i}]: not assigned to the participant"),
                        ));
                    }
                }
                Ok(())
            }
            TxKind::PublishCapsule {
                capsule, policy, ..
            } => {
                Self::require_role(sender, &[Role::Hospital], "publish a capsule")?;
                if self.capsules.contains_key(capsule) {
                    return Err(reject(codes::DUPLICATE, "capsule: already published"));
                }
                Policy::parse(policy)
                    .map_err(|e| reject(codes::BAD_POLICY, format!("policy: {e}")))?;
                Ok(())
            }
            TxKind::RotateCapsuleEpoch { capsule, epoch, .. } => {
                let c = self
                    .capsules
                    .get(capsule)
                    .ok_or_else(|| reject(codes::UNKNOWN_CAPSULE, "capsule: not published"))?;
                if c.owner != sender.id {
                    return Err(reject(
                        codes::NOT_PERMITTED,
                        "sender: not the capsule's owner",
                    ));
                }
                if c.epoch.checked_add(1) != Some(*epoch) {
                    return Err(reject(
                        codes::WRONG_EPOCH,
                        format!(
                            "epoch: {epoch}, expected the current epoch {} plus one",
                            c.epoch
                        ),
                    ));
                }
                Ok(())
            }
            TxKind::RegisterRecord {
                cid,
                capsule,
                epoch,
                patient,
                ..
            } => {
                self.check_record_capsule(sender, capsule, *epoch)?;
                self.check_new_record(cid, patient.as_ref(), "")
            }
            TxKind::RegisterRecords {
                capsule,
                epoch,
                records,
            } => {
                self.check_record_capsule(sender, capsule, *epoch)?;
                for (i, r) in records.iter().enumerate() {
                    self.check_new_record(&r.cid, r.patient.as_ref(), &format!("records[{i}]."))?;
                }
                Ok(())
            }
            TxKind::Grant {
                cid,
                grantee,
                expiry_height,
                ..
            } => {
                let r = self.active_record(cid, "cid")?;
                if r.owner != sender.id && r.patient != Some(sender.id) {
                    return Err(reject(
                        codes::NOT_PERMITTED,
                        "sender: neither the record's owner nor its patient",
                    ));
                }
                self.existing_participant(grantee, "grantee")?;
                if *expiry_height <= height {
                    return Err(reject(
                        codes::EXPIRED,
                        format!("expiry_height: {expiry_height} is not after height {height}"),
                    ));
                }
                if self.grants.contains_key(&GrantId(*id)) {
                    return Err(reject(codes::DUPLICATE, "grant: already exists"));
                }
                Ok(())
            }
            TxKind::Revoke { grant } => {
                let g = self
                    .grants
                    .get(grant)
                    .ok_or_else(|| reject(codes::UNKNOWN_GRANT, "grant: no such grant"))?;
                let r = self
                    .records
                    .get(&g.cid)
                    .expect("invariant: every grant's record exists");
                if g.grantor != sender.id && r.owner != sender.id && r.patient != Some(sender.id) {
                    return Err(reject(
                        codes::NOT_PERMITTED,
                        "sender: neither the grantor nor the record's owner or patient",
                    ));
                }
                if !g.is_active_at(height) {
                    return Err(reject(
                        codes::GRANT_INACTIVE,
                        "grant: already revoked or expired",
                    ));
                }
                Ok(())
            }
            TxKind::Supersede { old, new } => {
                let o = self.active_record(old, "old")?;
                let n = self.active_record(new, "new")?;
                if o.owner != sender.id || n.owner != sender.id {
                    return Err(reject(
                        codes::NOT_PERMITTED,
                        "sender: must own both records",
                    ));
                }
                Ok(())
            }
            TxKind::RecordAccess { cid, accessor, .. } => {
                Self::require_role(
                    sender,
                    &[Role::Validator, Role::Hospital],
                    "record an access",
                )?;
                if !self.records.contains_key(cid) {
                    return Err(reject(codes::UNKNOWN_RECORD, "cid: no such record"));
                }
                self.existing_participant(accessor, "accessor")?;
                Ok(())
            }
            TxKind::RegisterAuthKey { public_key_der, .. } => {
                let hash = auth_key_hash(public_key_der);
                match self.auth_key_owner.get(&hash) {
                    Some(owner) if *owner == sender.id => {
                        return Err(reject(
                            codes::DUPLICATE,
                            "public_key_der: already registered to the sender",
                        ));
                    }
                    Some(_) => {
                        return Err(reject(
                            codes::KEY_IN_USE,
                            "public_key_der: registered to another participant",
                        ));
                    }
                    None => {}
                }
                let held = self.auth_key_entries(&sender.id).len();
                if held >= MAX_AUTH_KEYS_PER_PARTICIPANT {
                    return Err(reject(
                        codes::LIMIT_EXCEEDED,
                        format!(
                            "public_key_der: the sender already has {held} authentication keys \
                             (at most {MAX_AUTH_KEYS_PER_PARTICIPANT}); revoke one first"
                        ),
                    ));
                }
                Ok(())
            }
            TxKind::RevokeAuthKey { key_hash } => {
                if self.auth_key_owner.get(key_hash) != Some(&sender.id) {
                    return Err(reject(
                        codes::UNKNOWN_AUTH_KEY,
                        "key_hash: no such authentication key of the sender",
                    ));
                }
                Ok(())
            }
        }
    }

    fn verify_signature_cached(&self, tx: &SignedTx, id: &Hash) -> Result<(), TxReject> {
        let hit = self
            .sig_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .remove(id);
        if hit { Ok(()) } else { self.verify_strict(tx) }
    }

    /// [`SignedTx::verify_signature`] with the signer's key decompressed once.
    fn verify_strict(&self, tx: &SignedTx) -> Result<(), TxReject> {
        let cached = self
            .key_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&tx.signer)
            .copied();
        let key = match cached {
            Some(k) => k,
            None => {
                let k = VerifyingKey::from_bytes(&tx.signer).map_err(|_| {
                    reject(codes::BAD_SIGNATURE, "signer: not a valid Ed25519 point")
                })?;
                let mut cache = self.key_cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= KEY_CACHE_CAPACITY {
                    cache.clear();
                }
                cache.insert(tx.signer, k);
                k
            }
        };
        key.verify_strict(&tx.signing_message(), &Signature::from_bytes(&tx.signature))
            .map_err(|_| reject(codes::BAD_SIGNATURE, "signature: does not verify"))
    }

    // ----- execution (infallible: runs only after validation) -----

    fn insert_participant(&mut self, p: Participant, attrs: BTreeMap<String, AttributeEntry>) {
        let id = p.id;
        self.keys.insert(
            p.key,
            KeyUse {
                participant: id,
                current: true,
            },
        );
        self.dirty.insert(StateKey::Key(p.key));
        self.participants.insert(id, p);
        self.dirty.insert(StateKey::Participant(id));
        self.nonces.insert(id, 0);
        self.dirty.insert(StateKey::Nonce(id));
        self.attributes.insert(id, attrs);
        self.dirty.insert(StateKey::Attributes(id));
    }

    /// Adds a validated new record (and its event).
    fn insert_record(&mut self, record: Record) {
        self.events.push(StateEvent::RecordAdded {
            cid: record.cid.clone(),
            capsule: record.capsule,
            epoch: record.epoch,
            labels: record.search_labels.clone(),
            height: record.registered_at,
        });
        self.dirty.insert(StateKey::Record(record.cid.clone()));
        self.records.insert(record.cid.clone(), record);
    }

    fn execute(&mut self, tx: SignedTx, id: Hash, height: u64) {
        let sender = tx.body.sender;
        self.nonces.insert(sender, tx.body.nonce);
        self.dirty.insert(StateKey::Nonce(sender));
        match tx.body.kind {
            TxKind::RegisterParticipant { key, role, label } => {
                self.insert_participant(
                    Participant {
                        id: ParticipantId(key),
                        key,
                        role,
                        label,
                        registered_at: height,
                        registered_by: Some(sender),
                    },
                    BTreeMap::new(),
                );
            }
            TxKind::RotateKey { new_key } => {
                let p = self
                    .participants
                    .get_mut(&sender)
                    .expect("invariant: validated sender exists");
                let old = std::mem::replace(&mut p.key, new_key);
                self.keys.insert(
                    old,
                    KeyUse {
                        participant: sender,
                        current: false,
                    },
                );
                self.keys.insert(
                    new_key,
                    KeyUse {
                        participant: sender,
                        current: true,
                    },
                );
                self.dirty.insert(StateKey::Key(old));
                self.dirty.insert(StateKey::Key(new_key));
                self.dirty.insert(StateKey::Participant(sender));
            }
            TxKind::AssignAttributes {
                participant,
                attributes,
                expiry_height,
            } => {
                let held = self.attributes.entry(participant).or_default();
                for a in attributes {
                    held.insert(
                        a,
                        AttributeEntry {
                            expiry_height,
                            assigned_at: height,
                            assigned_by: Some(sender),
                        },
                    );
                }
                self.dirty.insert(StateKey::Attributes(participant));
            }
            TxKind::RevokeAttributes {
                participant,
                attributes,
            } => {
                let held = self.attributes.entry(participant).or_default();
                for a in &attributes {
                    held.remove(a);
                }
                self.dirty.insert(StateKey::Attributes(participant));
            }
            TxKind::PublishCapsule {
                capsule,
                policy,
                epoch,
                wrapped_search_key,
            } => {
                let parsed = Policy::parse(&policy).expect("invariant: validated policy parses");
                self.policies.insert(capsule, parsed);
                self.capsules.insert(
                    capsule,
                    Capsule {
                        id: capsule,
                        owner: sender,
                        policy,
                        epoch,
                        wrapped_search_key,
                        published_at: height,
                        epoch_since: height,
                    },
                );
                self.dirty.insert(StateKey::Capsule(capsule));
            }
            TxKind::RotateCapsuleEpoch {
                capsule,
                epoch,
                wrapped_search_key,
            } => {
                let c = self
                    .capsules
                    .get_mut(&capsule)
                    .expect("invariant: validated capsule exists");
                c.epoch = epoch;
                c.wrapped_search_key = wrapped_search_key;
                c.epoch_since = height;
                self.dirty.insert(StateKey::Capsule(capsule));
                self.events.push(StateEvent::CapsuleEpoch {
                    capsule,
                    epoch,
                    height,
                });
            }
            TxKind::RegisterRecord {
                cid,
                capsule,
                epoch,
                wrapped_key,
                search_labels,
                size,
                patient,
            } => self.insert_record(Record {
                cid,
                owner: sender,
                capsule,
                epoch,
                wrapped_key,
                search_labels,
                size,
                patient,
                registered_at: height,
                tx: id,
                status: RecordStatus::Active,
            }),
            TxKind::RegisterRecords {
                capsule,
                epoch,
                records,
            } => {
                for r in records {
                    self.insert_record(Record {
                        cid: r.cid,
                        owner: sender,
                        capsule,
                        epoch,
                        wrapped_key: r.wrapped_key,
                        search_labels: r.search_labels,
                        size: r.size,
                        patient: r.patient,
                        registered_at: height,
                        tx: id,
                        status: RecordStatus::Active,
                    });
                }
            }
            TxKind::Grant {
                cid,
                grantee,
                scope,
                expiry_height,
                rewrapped_key,
            } => {
                let gid = GrantId(id);
                self.grants_by_record
                    .entry(cid.clone())
                    .or_default()
                    .insert(gid);
                self.grants_by_grantee
                    .entry(grantee)
                    .or_default()
                    .insert(gid);
                self.events.push(StateEvent::GrantAdded {
                    grant: gid,
                    cid: cid.clone(),
                    height,
                });
                self.grants.insert(
                    gid,
                    Grant {
                        id: gid,
                        cid,
                        grantor: sender,
                        grantee,
                        scope,
                        expiry_height,
                        rewrapped_key,
                        granted_at: height,
                        revoked: None,
                    },
                );
                self.dirty.insert(StateKey::Grant(gid));
            }
            TxKind::Revoke { grant } => {
                let g = self
                    .grants
                    .get_mut(&grant)
                    .expect("invariant: validated grant exists");
                g.revoked = Some(Revocation {
                    by: sender,
                    at: height,
                });
                self.events.push(StateEvent::GrantRevoked {
                    grant,
                    cid: g.cid.clone(),
                    height,
                });
                self.dirty.insert(StateKey::Grant(grant));
            }
            TxKind::Supersede { old, new } => {
                let o = self
                    .records
                    .get_mut(&old)
                    .expect("invariant: validated record exists");
                o.status = RecordStatus::Superseded {
                    by: new.clone(),
                    at: height,
                };
                self.events.push(StateEvent::RecordRemoved {
                    cid: old.clone(),
                    capsule: o.capsule,
                    superseded_by: new,
                    height,
                });
                self.dirty.insert(StateKey::Record(old));
            }
            TxKind::RecordAccess {
                cid,
                accessor,
                purpose,
            } => {
                let basis = self.authorisation(&accessor, &cid, height);
                let seq = self.meta.audit_next;
                self.meta.audit_next += 1;
                self.dirty.insert(StateKey::Meta);
                self.audit_by_record
                    .entry(cid.clone())
                    .or_default()
                    .push(seq);
                self.audit.insert(
                    seq,
                    AuditEntry {
                        seq,
                        cid,
                        accessor,
                        node: sender,
                        purpose,
                        height,
                        basis,
                        tx: id,
                    },
                );
                self.dirty.insert(StateKey::Audit(seq));
            }
            TxKind::RegisterAuthKey {
                alg,
                public_key_der,
            } => {
                let key_hash = auth_key_hash(&public_key_der);
                self.auth_key_owner.insert(key_hash, sender);
                self.auth_keys.entry(sender).or_default().push(AuthKey {
                    alg,
                    public_key_der,
                    key_hash,
                    registered_at: height,
                });
                self.dirty.insert(StateKey::AuthKeys(sender));
            }
            TxKind::RevokeAuthKey { key_hash } => {
                self.auth_key_owner.remove(&key_hash);
                let keys = self
                    .auth_keys
                    .get_mut(&sender)
                    .expect("invariant: a validated revoked auth key's owner has keys");
                keys.retain(|k| k.key_hash != key_hash);
                if keys.is_empty() {
                    self.auth_keys.remove(&sender);
                }
                self.dirty.insert(StateKey::AuthKeys(sender));
            }
        }
    }

    fn apply_tx(&mut self, bytes: &[u8], height: u64) -> Result<(), TxReject> {
        let tx = SignedTx::decode(bytes)?;
        let id = tx_id(bytes);
        let sender = self.check_sender(&tx, NonceRule::Exact)?;
        self.verify_signature_cached(&tx, &id)?;
        self.validate_kind(sender, &tx, &id, height)?;
        self.execute(tx, id, height);
        Ok(())
    }

    // ----- the tree -----

    fn encode<T: Serialize>(v: &T) -> Vec<u8> {
        postcard::to_stdvec(v).expect("invariant: postcard serialises state entities")
    }

    fn leaf_value(&self, key: &StateKey) -> Option<Vec<u8>> {
        match key {
            StateKey::Meta => Some(Self::encode(&self.meta)),
            StateKey::Participant(id) => self.participants.get(id).map(Self::encode),
            StateKey::Nonce(id) => self.nonces.get(id).map(Self::encode),
            StateKey::Attributes(id) => self.attributes.get(id).map(Self::encode),
            StateKey::Key(k) => self.keys.get(k).map(Self::encode),
            StateKey::Capsule(id) => self.capsules.get(id).map(Self::encode),
            StateKey::Record(cid) => self.records.get(cid).map(Self::encode),
            StateKey::Grant(id) => self.grants.get(id).map(Self::encode),
            StateKey::Audit(seq) => self.audit.get(seq).map(Self::encode),
            StateKey::AuthKeys(id) => self.auth_keys.get(id).map(Self::encode),
        }
    }

    /// Writes the dirty leaves into the tree and rehashes it.
    fn flush(&mut self) {
        for key in std::mem::take(&mut self.dirty) {
            match self.leaf_value(&key) {
                Some(v) => self.smt.insert(key.tree_key(), value_hash(&v)),
                None => self.smt.remove(&key.tree_key()),
            }
        }
        self.smt.commit();
    }

    fn from_snapshot(snapshot: &[u8]) -> Result<Self, StateError> {
        fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, StateError> {
            let (s, rest): (T, _) = postcard::take_from_bytes(body)
                .map_err(|e| StateError::Malformed(format!("snapshot: {e}")))?;
            if !rest.is_empty() {
                return Err(StateError::Malformed("snapshot: trailing bytes".into()));
            }
            Ok(s)
        }
        let s2: SnapshotV2 = if let Some(body) = snapshot.strip_prefix(SNAPSHOT_MAGIC) {
            decode(body)?
        } else if let Some(body) = snapshot.strip_prefix(SNAPSHOT_MAGIC_V1) {
            SnapshotV2 {
                v1: decode(body)?,
                auth_keys: Vec::new(),
            }
        } else {
            return Err(StateError::Malformed(
                "snapshot: unknown magic or version".into(),
            ));
        };
        let SnapshotV2 { v1: s, auth_keys } = s2;
        let mut st = LedgerState::empty(s.meta.chain_id.clone());
        st.meta = s.meta;
        st.dirty.insert(StateKey::Meta);
        for p in s.participants {
            st.dirty.insert(StateKey::Participant(p.id));
            st.participants.insert(p.id, p);
        }
        for (id, n) in s.nonces {
            st.dirty.insert(StateKey::Nonce(id));
            st.nonces.insert(id, n);
        }
        for (id, a) in s.attributes {
            st.dirty.insert(StateKey::Attributes(id));
            st.attributes.insert(id, a);
        }
        for (k, u) in s.keys {
            st.dirty.insert(StateKey::Key(k));
            st.keys.insert(k, u);
        }
        for c in s.capsules {
            let parsed = Policy::parse(&c.policy)?;
            st.policies.insert(c.id, parsed);
            st.dirty.insert(StateKey::Capsule(c.id));
            st.capsules.insert(c.id, c);
        }
        for r in s.records {
            st.dirty.insert(StateKey::Record(r.cid.clone()));
            st.records.insert(r.cid.clone(), r);
        }
        for g in s.grants {
            st.grants_by_record
                .entry(g.cid.clone())
                .or_default()
                .insert(g.id);
            st.grants_by_grantee
                .entry(g.grantee)
                .or_default()
                .insert(g.id);
            st.dirty.insert(StateKey::Grant(g.id));
            st.grants.insert(g.id, g);
        }
        for a in s.audit {
            st.audit_by_record
                .entry(a.cid.clone())
                .or_default()
                .push(a.seq);
            st.dirty.insert(StateKey::Audit(a.seq));
            st.audit.insert(a.seq, a);
        }
        for (id, keys) in auth_keys {
            if keys.is_empty() || !st.participants.contains_key(&id) {
                return Err(StateError::Malformed(
                    "snapshot: empty authentication key list".into(),
                ));
            }
            for k in &keys {
                if auth_key_hash(&k.public_key_der) != k.key_hash
                    || st.auth_key_owner.insert(k.key_hash, id).is_some()
                {
                    return Err(StateError::Malformed(
                        "snapshot: inconsistent authentication key".into(),
                    ));
                }
            }
            st.dirty.insert(StateKey::AuthKeys(id));
            st.auth_keys.insert(id, keys);
        }
        st.flush();
        // Canonical encoding only: every list sorted by key, each entry once. A repeated entry
        // keeps the state root (the maps keep the last copy) but would leave stale entries in
        // the secondary indexes (`grants_by_record` authorises reads).
        // A version-1 snapshot's canonical form is its version-2 encoding: the same body
        // followed by an empty list of authentication keys.
        let canonical: std::borrow::Cow<'_, [u8]> = match snapshot.strip_prefix(SNAPSHOT_MAGIC_V1) {
            Some(body) => {
                let mut v2 = Vec::with_capacity(snapshot.len() + 1);
                v2.extend_from_slice(SNAPSHOT_MAGIC);
                v2.extend_from_slice(body);
                v2.push(0);
                v2.into()
            }
            None => snapshot.into(),
        };
        if st.snapshot() != *canonical {
            return Err(StateError::Malformed(
                "snapshot: not the canonical encoding (entries repeated or out of order)".into(),
            ));
        }
        Ok(st)
    }
}

impl App for LedgerState {
    fn check_tx(&self, tx: &[u8]) -> Result<Hash, TxReject> {
        let decoded = SignedTx::decode(tx)?;
        let id = tx_id(tx);
        self.check_sender(&decoded, NonceRule::Window)?;
        // The same bytes were verified strictly before (a backup checks its own client's
        // transaction again when the primary proposes it): the signature is still good.
        let verified = self
            .sig_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .contains(&id);
        if !verified {
            self.verify_strict(&decoded)?;
            self.sig_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id);
        }
        self.check_kind_if_next(&decoded, &id)?;
        Ok(id)
    }

    /// Applies a block. Heights must strictly increase (consensus applies each committed height
    /// once, in order); a non-increasing height is a broken invariant of the caller and panics.
    /// As [`App::check_tx`] without the signature check, which depends on the bytes only.
    fn recheck_tx(&self, tx: &[u8]) -> Result<(), TxReject> {
        let decoded = SignedTx::decode(tx)?;
        self.check_sender(&decoded, NonceRule::Window)?;
        self.check_kind_if_next(&decoded, &tx_id(tx))
    }

    fn apply_block(&mut self, height: u64, txs: &[Vec<u8>]) -> (Vec<TxOutcome>, Hash) {
        assert!(
            height > self.meta.height,
            "invariant: apply_block heights strictly increase (got {height} after {})",
            self.meta.height
        );
        self.meta.height = height;
        self.dirty.insert(StateKey::Meta);
        let mut outcomes = Vec::with_capacity(txs.len());
        for bytes in txs {
            match self.apply_tx(bytes, height) {
                Ok(()) => outcomes.push(TxOutcome::Applied),
                Err(r) => {
                    tracing::debug!(height, code = r.code, "transaction rejected");
                    outcomes.push(TxOutcome::Rejected(r));
                }
            }
        }
        self.flush();
        (outcomes, self.smt.root())
    }

    fn state_root(&self) -> Hash {
        self.smt.root()
    }

    fn snapshot(&self) -> Vec<u8> {
        let v1 = SnapshotV1 {
            meta: self.meta.clone(),
            participants: self.participants.values().cloned().collect(),
            nonces: self.nonces.iter().map(|(k, v)| (*k, *v)).collect(),
            attributes: self
                .attributes
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            keys: self.keys.iter().map(|(k, v)| (*k, v.clone())).collect(),
            capsules: self.capsules.values().cloned().collect(),
            records: self.records.values().cloned().collect(),
            grants: self.grants.values().cloned().collect(),
            audit: self.audit.values().cloned().collect(),
        };
        let s = SnapshotV2 {
            v1,
            auth_keys: self
                .auth_keys
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
        };
        let mut out = SNAPSHOT_MAGIC.to_vec();
        out.extend_from_slice(&Self::encode(&s));
        out
    }

    fn restore(&mut self, snapshot: &[u8], expected_root: &Hash) -> Result<(), TxReject> {
        let st = LedgerState::from_snapshot(snapshot)
            .map_err(|e| reject(codes::BAD_SNAPSHOT, e.to_string()))?;
        if st.smt.root() != *expected_root {
            return Err(reject(
                codes::BAD_SNAPSHOT,
                "snapshot: state root does not match the expected root",
            ));
        }
        *self = st;
        Ok(())
    }
}
