//! A seeded, deterministic simulator for the replica core, and a small test application.
//!
//! The simulator owns `n` replicas, a virtual clock and a network whose links drop, duplicate,
//! reorder and delay messages and can be partitioned. Replicas crash (their memory is discarded)
//! and restart from their store. One replica may be Byzantine (an equivocating primary, a
//! forger of certificates, a mutator of its own messages, or mute). After every action the
//! oracle checks:
//! - **agreement**: no two honest replicas commit different blocks at one height;
//! - **no double vote**: no honest replica signs two digests for one (view, height), even
//!   across restarts (every signed vote that leaves a replica is recorded);
//! - **certified**: every committed block carries a valid commit certificate;
//! - **validity**: every committed transaction is authentic;
//! - **honest messages are accepted**: no honest replica rejects an honest replica's message
//!   as forged, equivocating or invalid;
//!
//! and at the end, after the network heals and every crashed replica restarts:
//! - **liveness**: every submitted transaction is committed by every honest replica within a
//!   bound of virtual time;
//! - **durability**: a cold restart of every honest replica from its store reproduces its chain.
//!
//! Everything is driven by one small PRNG (SplitMix64) seeded from [`SimConfig::seed`], and
//! the replicas use only ordered maps, so a failing seed replays exactly.

use std::collections::{BTreeMap, BTreeSet};

use sha3::{Digest, Sha3_256};

use crate::app::{App, Hash, TxOutcome, TxReject};
use crate::block::{CommittedBlock, Sig, VoteKind, batch_digest, vote_bytes};
use crate::crypto::{
    InsecureTestSigner, InsecureTestVerifier, ReplicaId, Signer, insecure_test_public_key,
};
use crate::error::LedgerError;
use crate::replica::msg::{self, Body, Envelope, PreparedCert};
use crate::replica::{Action, Dest, Input, Replica, ReplicaConfig};
use crate::store::{MemStore, Store};

// ---------------------------------------------------------------------------------------------
// Test application
// ---------------------------------------------------------------------------------------------

/// How [`KvApp`] transactions are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvAuth {
    /// A keyed SHA3 tag (fast; for the simulator).
    Tag,
    /// A real Ed25519 signature by a per-client key (for benchmarks).
    Ed25519,
}

/// A small key-value application for tests and benchmarks: transactions
/// `client:u8 || nonce:u64 || key_len:u8 || key || value || auth` set `key = value`; each
/// (client, nonce) applies once. The state root is a SHA3 of an additive multiset hash of all
/// entries, so it is maintained incrementally.
#[derive(Debug, Clone)]
pub struct KvApp {
    auth: KvAuth,
    height: u64,
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
    nonces: BTreeSet<(u8, u64)>,
    acc: [u64; 4],
    client_keys: Vec<ed25519_dalek::VerifyingKey>,
}

fn kv_client_key(client: u8) -> ed25519_dalek::SigningKey {
    let seed: [u8; 32] = Sha3_256::digest([b"kv-client-key".as_slice(), &[client]].concat()).into();
    ed25519_dalek::SigningKey::from_bytes(&seed)
}

fn kv_tag(body: &[u8]) -> [u8; 32] {
    let mut h = Sha3_256::new();
    h.update(b"kv-test-tag\0");
    h.update(body);
    h.finalize().into()
}

fn lanes(h: &Hash) -> [u64; 4] {
    let mut out = [0u64; 4];
    for (i, c) in h.chunks(8).enumerate() {
        out[i] = u64::from_be_bytes(c.try_into().expect("8-byte chunk"));
    }
    out
}

fn entry_hash(key: &[u8], value: &[u8]) -> Hash {
    let mut h = Sha3_256::new();
    h.update(b"kv-entry\0");
    h.update((key.len() as u32).to_be_bytes());
    h.update(key);
    h.update(value);
    h.finalize().into()
}

fn nonce_hash(client: u8, nonce: u64) -> Hash {
    let mut h = Sha3_256::new();
    h.update(b"kv-nonce\0");
    h.update([client]);
    h.update(nonce.to_be_bytes());
    h.finalize().into()
}

fn reject(code: &'static str, reason: &str) -> TxReject {
    TxReject {
        code,
        reason: reason.to_owned(),
    }
}

struct KvTx<'a> {
    client: u8,
    nonce: u64,
    key: &'a [u8],
    value: &'a [u8],
}

impl KvApp {
    /// An empty application.
    pub fn new(auth: KvAuth) -> Self {
        let client_keys = match auth {
            KvAuth::Tag => Vec::new(),
            KvAuth::Ed25519 => (0..=255u8)
                .map(|c| kv_client_key(c).verifying_key())
                .collect(),
        };
        Self {
            auth,
            height: 0,
            entries: BTreeMap::new(),
            nonces: BTreeSet::new(),
            acc: [0; 4],
            client_keys,
        }
    }

    /// Builds a transaction.
    pub fn make_tx(auth: KvAuth, client: u8, nonce: u64, key: &[u8], value: &[u8]) -> Vec<u8> {
        assert!(key.len() <= 255, "test key too long");
        let mut body = vec![client];
        body.extend_from_slice(&nonce.to_be_bytes());
        body.push(key.len() as u8);
        body.extend_from_slice(key);
        body.extend_from_slice(value);
        match auth {
            KvAuth::Tag => body.extend_from_slice(&kv_tag(&body)),
            KvAuth::Ed25519 => {
                use ed25519_dalek::Signer as _;
                let sig = kv_client_key(client).sign(&body);
                body.extend_from_slice(&sig.to_bytes());
            }
        }
        body
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    /// The number of applied transactions.
    pub fn applied(&self) -> usize {
        self.nonces.len()
    }

    /// Whether (client, nonce) was applied.
    pub fn has_applied(&self, client: u8, nonce: u64) -> bool {
        self.nonces.contains(&(client, nonce))
    }

    fn parse<'a>(&self, tx: &'a [u8]) -> Result<KvTx<'a>, TxReject> {
        let auth_len = match self.auth {
            KvAuth::Tag => 32,
            KvAuth::Ed25519 => 64,
        };
        if tx.len() < 10 + auth_len || tx.len() > 64 * 1024 {
            return Err(reject("malformed", "transaction length"));
        }
        let (body, auth) = tx.split_at(tx.len() - auth_len);
        let klen = body[9] as usize;
        if body.len() < 10 + klen {
            return Err(reject("malformed", "key length"));
        }
        let ok = match self.auth {
            KvAuth::Tag => {
                use subtle::ConstantTimeEq;
                bool::from(kv_tag(body).ct_eq(auth))
            }
            KvAuth::Ed25519 => {
                let sig = ed25519_dalek::Signature::from_slice(auth)
                    .map_err(|_| reject("bad-signature", "signature encoding"))?;
                self.client_keys[body[0] as usize]
                    .verify_strict(body, &sig)
                    .is_ok()
            }
        };
        if !ok {
            return Err(reject("bad-signature", "authenticator does not verify"));
        }
        Ok(KvTx {
            client: body[0],
            nonce: u64::from_be_bytes(body[1..9].try_into().expect("8 bytes")),
            key: &body[10..10 + klen],
            value: &body[10 + klen..],
        })
    }

    fn add(&mut self, h: &Hash, sign: bool) {
        for (a, l) in self.acc.iter_mut().zip(lanes(h)) {
            *a = if sign {
                a.wrapping_add(l)
            } else {
                a.wrapping_sub(l)
            };
        }
    }

    fn recompute(&mut self) {
        self.acc = [0; 4];
        let entries: Vec<Hash> = self.entries.iter().map(|(k, v)| entry_hash(k, v)).collect();
        for h in entries {
            self.add(&h, true);
        }
        let nonces: Vec<Hash> = self
            .nonces
            .iter()
            .map(|(c, n)| nonce_hash(*c, *n))
            .collect();
        for h in nonces {
            self.add(&h, true);
        }
    }
}

impl App for KvApp {
    fn check_tx(&self, tx: &[u8]) -> Result<Hash, TxReject> {
        let t = self.parse(tx)?;
        if self.nonces.contains(&(t.client, t.nonce)) {
            return Err(reject("nonce-replayed", "nonce already used"));
        }
        Ok(Sha3_256::digest(tx).into())
    }

    fn apply_block(&mut self, height: u64, txs: &[Vec<u8>]) -> (Vec<TxOutcome>, Hash) {
        assert!(height > self.height, "invariant: heights increase");
        self.height = height;
        let mut out = Vec::with_capacity(txs.len());
        for tx in txs {
            let r = self.parse(tx).and_then(|t| {
                if self.nonces.contains(&(t.client, t.nonce)) {
                    Err(reject("nonce-replayed", "nonce already used"))
                } else {
                    Ok((t.client, t.nonce, t.key.to_vec(), t.value.to_vec()))
                }
            });
            match r {
                Ok((c, n, k, v)) => {
                    self.nonces.insert((c, n));
                    self.add(&nonce_hash(c, n), true);
                    if let Some(old) = self.entries.get(&k) {
                        let h = entry_hash(&k, old);
                        self.add(&h, false);
                    }
                    self.add(&entry_hash(&k, &v), true);
                    self.entries.insert(k, v);
                    out.push(TxOutcome::Applied);
                }
                Err(e) => out.push(TxOutcome::Rejected(e)),
            }
        }
        (out, self.state_root())
    }

    fn state_root(&self) -> Hash {
        let mut h = Sha3_256::new();
        h.update(b"kv-root\0");
        h.update(self.height.to_be_bytes());
        for a in self.acc {
            h.update(a.to_be_bytes());
        }
        h.finalize().into()
    }

    fn snapshot(&self) -> Vec<u8> {
        let s = (
            self.height,
            self.entries.iter().collect::<Vec<_>>(),
            self.nonces.iter().collect::<Vec<_>>(),
        );
        postcard::to_stdvec(&s).expect("invariant: snapshot encodes")
    }

    fn restore(&mut self, snapshot: &[u8], expected_root: &Hash) -> Result<(), TxReject> {
        type Snap = (u64, Vec<(Vec<u8>, Vec<u8>)>, Vec<(u8, u64)>);
        let (snap, rest) = postcard::take_from_bytes::<Snap>(snapshot)
            .map_err(|_| reject("bad-snapshot", "decode"))?;
        if !rest.is_empty() {
            return Err(reject("bad-snapshot", "trailing bytes"));
        }
        let (height, entries, nonces) = snap;
        let mut next = KvApp::new(self.auth);
        next.client_keys = std::mem::take(&mut self.client_keys);
        next.height = height;
        next.entries = entries.into_iter().collect();
        next.nonces = nonces.into_iter().collect();
        next.recompute();
        if next.state_root() != *expected_root {
            self.client_keys = next.client_keys;
            return Err(reject("bad-snapshot", "state root mismatch"));
        }
        *self = next;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Simulator
// ---------------------------------------------------------------------------------------------

/// SplitMix64: a tiny deterministic PRNG (the simulator must not depend on a global RNG).
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p_permille / 1000`.
    pub fn chance(&mut self, p_permille: u64) -> bool {
        self.below(1000) < p_permille
    }
}

/// What the Byzantine replica (if any) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Byzantine {
    /// Replica 0 (primary of view 0) sends different batches to different backups.
    EquivocatingPrimary,
    /// The last replica sends view changes with forged prepared certificates and, as primary,
    /// new views with forged re-proposals.
    ForgedCertificates,
    /// The last replica never sends anything.
    Mute,
    /// Replica 0 (primary of view 0) never sends anything, like a crashed primary.
    MutePrimary,
    /// The last replica mutates its messages (ByzzFuzz-style: other digests, neighbouring
    /// views and heights, dropped certificates, replays of its own earlier messages) and
    /// signs the result with its own key.
    Mutator,
}

/// How many base view-change timeouts the honest replicas get, once everything committed, to
/// come to work in one view (see `Sim::settle_views`).
pub const VIEW_SETTLE_TIMEOUTS: u64 = 40;

/// A simulation scenario.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The seed (everything else random is derived from it).
    pub seed: u64,
    /// Replicas (3f+1).
    pub n: usize,
    /// Faults tolerated.
    pub f: usize,
    /// Transactions submitted during the chaos phase.
    pub txs: usize,
    /// Length of the chaos phase (virtual ms).
    pub chaos_ms: u64,
    /// Per-mille probability that a message is dropped during chaos.
    pub drop_permille: u64,
    /// Per-mille probability that a message is duplicated.
    pub dup_permille: u64,
    /// Maximum one-way delay (virtual ms); delays are uniform in 1..=max, so links reorder.
    pub max_delay_ms: u64,
    /// Whether replicas crash and restart during chaos (at most f at a time, counting the
    /// Byzantine one).
    pub crashes: bool,
    /// Whether the network partitions during chaos.
    pub partitions: bool,
    /// One replica is cut off for the whole chaos phase while the others run far ahead (it
    /// must catch up by state transfer).
    pub lagger: bool,
    /// The Byzantine behaviour, if any.
    pub byzantine: Option<Byzantine>,
    /// Checkpoint interval K.
    pub checkpoint_interval: u64,
    /// Watermark window L.
    pub watermark_window: u64,
    /// Maximum transactions per batch.
    pub max_batch_txs: usize,
    /// Base view-change timeout (virtual ms).
    pub view_change_timeout_ms: u64,
    /// After healing, every transaction must commit within this much virtual time.
    pub liveness_bound_ms: u64,
}

impl SimConfig {
    /// A random scenario for `seed`: faults, Byzantine behaviour and parameters drawn from it.
    pub fn random(seed: u64) -> Self {
        let mut r = SimRng::new(seed);
        let byzantine = match r.below(9) {
            0 => Some(Byzantine::EquivocatingPrimary),
            1 => Some(Byzantine::ForgedCertificates),
            2 => Some(Byzantine::Mute),
            3 => Some(Byzantine::MutePrimary),
            4 => Some(Byzantine::Mutator),
            _ => None,
        };
        let crashes = byzantine.is_none() && r.chance(500);
        let lagger = byzantine.is_none() && !crashes && r.chance(250);
        Self {
            seed,
            n: 4,
            f: 1,
            txs: 6 + r.below(20) as usize,
            chaos_ms: 1_500 + r.below(3_000),
            drop_permille: [0, 20, 100, 250][r.below(4) as usize],
            dup_permille: [0, 50, 200][r.below(3) as usize],
            max_delay_ms: [1, 5, 40][r.below(3) as usize],
            crashes,
            partitions: r.chance(300),
            lagger,
            byzantine,
            checkpoint_interval: [2, 4, 8][r.below(3) as usize],
            watermark_window: 0,
            max_batch_txs: [1, 3, 16][r.below(3) as usize],
            view_change_timeout_ms: 300,
            liveness_bound_ms: 120_000,
        }
        .with_window()
    }

    fn with_window(mut self) -> Self {
        if self.watermark_window == 0 {
            self.watermark_window = 2 * self.checkpoint_interval;
        }
        self
    }
}

/// Statistics of one run.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    /// Highest height committed by every honest replica.
    pub committed_height: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Highest view reached.
    pub max_view: u64,
    /// Inputs rejected by honest replicas (from the Byzantine replica, or stale forwards).
    pub rejected: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Virtual time at which the run finished.
    pub end_ms: u64,
}

/// What [`Sim::run_isolated_replica`] measured.
#[derive(Debug, Clone, Default)]
pub struct IsolationReport {
    /// The isolated replica's view, and whether it was active, when the partition healed.
    pub isolated_view_at_heal: (u64, bool),
    /// The highest view of the other replicas when the partition healed.
    pub others_view_at_heal: u64,
    /// Virtual ms from the heal until the isolated replica had replied to its clients for
    /// every transaction submitted to it and every replica had applied every transaction.
    pub served_after_ms: u64,
    /// Transactions of the isolated replica's clients that it never replied for because their
    /// block was inside a checkpoint it restored from a peer's snapshot (a known gap: a
    /// snapshot carries no per-transaction outcomes; see the crate's design notes).
    pub folded_into_snapshot: usize,
    /// The last executed height of the isolated replica when it was served.
    pub isolated_height: u64,
    /// The run's general statistics.
    pub report: SimReport,
}

/// Opens a replica's store; called at start and, for on-disk stores, again after each crash.
pub type StoreFactory = Box<dyn FnMut(ReplicaId) -> Box<dyn Store>>;

#[derive(Debug)]
enum Event {
    Deliver {
        to: ReplicaId,
        from: ReplicaId,
        msg: Vec<u8>,
    },
    Submit {
        to: ReplicaId,
        tx: Vec<u8>,
    },
}

/// The simulator.
pub struct Sim {
    cfg: SimConfig,
    rng: SimRng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Event>,
    replicas: Vec<Option<Replica<KvApp>>>,
    stores: Vec<Option<Box<dyn Store>>>,
    factory: Option<StoreFactory>,
    rcfg: Vec<ReplicaConfig>,
    keys: Vec<[u8; 32]>,
    verifier: InsecureTestVerifier,
    byz: Option<ReplicaId>,
    healed: bool,
    side: Vec<u8>,
    committed: BTreeMap<u64, Hash>,
    replica_heads: Vec<u64>,
    clocks: Vec<u64>,
    votes: BTreeMap<(ReplicaId, u64, u64), Hash>,
    byz_history: Vec<Vec<u8>>,
    submitted: BTreeMap<Hash, Vec<u8>>,
    report: SimReport,
    /// (replica, transaction id) of every `Reply` a replica gave its client.
    replies: BTreeSet<(ReplicaId, Hash)>,
    /// The highest checkpoint each replica restored from a peer's snapshot.
    restored: BTreeMap<ReplicaId, u64>,
    /// The height at which each transaction was first committed (by any honest replica).
    tx_heights: BTreeMap<Hash, u64>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.cfg.seed)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// A failed property, with the seed to replay it.
#[derive(Debug, Clone)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// Virtual time of the failure.
    pub at_ms: u64,
    /// What went wrong.
    pub what: String,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "simulation failed at {} ms: {} (replay with EHR_SIM_SEED={})",
            self.at_ms, self.what, self.seed
        )
    }
}

impl Sim {
    /// A simulator with in-memory stores.
    pub fn new(cfg: SimConfig) -> Self {
        Self::with_stores(cfg, None)
    }

    /// A simulator whose stores come from `factory` (called again on restart after a crash,
    /// so an on-disk store is really reopened).
    pub fn with_stores(cfg: SimConfig, factory: Option<StoreFactory>) -> Self {
        let cfg = cfg.with_window();
        let keys: Vec<[u8; 32]> = (0..cfg.n as u32).map(insecure_test_public_key).collect();
        let rcfg: Vec<ReplicaConfig> = (0..cfg.n as u32)
            .map(|id| ReplicaConfig {
                chain_id: "sim-chain".into(),
                epoch: 1,
                id,
                validators: keys.clone(),
                f: cfg.f,
                checkpoint_interval: cfg.checkpoint_interval,
                watermark_window: cfg.watermark_window,
                max_batch_txs: cfg.max_batch_txs,
                max_batch_bytes: 64 * 1024,
                batch_delay_ms: 2,
                max_in_flight: 4,
                view_change_timeout_ms: cfg.view_change_timeout_ms,
                retransmit_ms: cfg.view_change_timeout_ms / 2,
                max_message_bytes: 4 << 20,
                max_pending_txs: 10_000,
                max_blocks_per_response: 64,
                fatal_reject_codes: crate::replica::DEFAULT_FATAL_REJECT_CODES.to_vec(),
            })
            .collect();
        let byz = cfg.byzantine.map(|b| match b {
            Byzantine::EquivocatingPrimary | Byzantine::MutePrimary => 0,
            Byzantine::ForgedCertificates | Byzantine::Mute | Byzantine::Mutator => {
                cfg.n as ReplicaId - 1
            }
        });
        let mut sim = Self {
            rng: SimRng::new(cfg.seed),
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            replicas: Vec::new(),
            stores: Vec::new(),
            factory,
            verifier: InsecureTestVerifier::new(&keys),
            keys,
            rcfg,
            byz,
            healed: false,
            side: vec![0; cfg.n],
            committed: BTreeMap::new(),
            replica_heads: vec![0; cfg.n],
            clocks: vec![0; cfg.n],
            votes: BTreeMap::new(),
            byz_history: Vec::new(),
            submitted: BTreeMap::new(),
            report: SimReport::default(),
            replies: BTreeSet::new(),
            restored: BTreeMap::new(),
            tx_heights: BTreeMap::new(),
            cfg,
        };
        for id in 0..sim.cfg.n as ReplicaId {
            let store: Box<dyn Store> = match sim.factory.as_mut() {
                Some(f) => f(id),
                None => Box::new(MemStore::new()),
            };
            sim.stores.push(Some(store));
            sim.replicas.push(None);
            sim.boot(id).expect("invariant: a fresh replica boots");
        }
        sim
    }

    fn fail<T>(&self, what: String) -> Result<T, SimFailure> {
        Err(SimFailure {
            seed: self.cfg.seed,
            at_ms: self.now,
            what,
        })
    }

    fn honest(&self, id: ReplicaId) -> bool {
        Some(id) != self.byz
    }

    fn boot(&mut self, id: ReplicaId) -> Result<(), SimFailure> {
        let i = id as usize;
        if self.stores[i].is_none() {
            let f = self
                .factory
                .as_mut()
                .expect("invariant: dropped stores have a factory");
            self.stores[i] = Some(f(id));
        }
        let state = match self.stores[i].as_ref().map(|s| s.load()) {
            Some(Ok(s)) => s,
            Some(Err(e)) => return self.fail(format!("replica {id}: store load: {e}")),
            None => None,
        };
        let r = Replica::with_verifier(
            self.rcfg[i].clone(),
            Box::new(InsecureTestSigner::new(id)),
            Box::new(InsecureTestVerifier::new(&self.keys)),
            KvApp::new(KvAuth::Tag),
            state,
        );
        match r {
            Ok(mut r) => {
                r.step(Input::Tick { now_ms: self.now }).ok();
                self.clocks[i] = self.now;
                self.replicas[i] = Some(r);
                self.replica_heads[i] = self.replicas[i].as_ref().map_or(0, |r| r.last_executed());
                self.process_actions(id)
            }
            Err(e) => self.fail(format!("replica {id}: restart failed: {e}")),
        }
    }

    fn crash(&mut self, id: ReplicaId) {
        self.replicas[id as usize] = None;
        self.report.crashes += 1;
        if self.factory.is_some() {
            // Close the database; it is reopened from disk on restart.
            self.stores[id as usize] = None;
        }
    }

    fn link_up(&self, from: ReplicaId, to: ReplicaId) -> bool {
        if self.healed {
            return true;
        }
        if self.cfg.lagger && (from == self.lagger_id() || to == self.lagger_id()) {
            return false;
        }
        self.side[from as usize] == self.side[to as usize]
    }

    fn lagger_id(&self) -> ReplicaId {
        self.cfg.n as ReplicaId - 1
    }

    fn enqueue(&mut self, at: u64, ev: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    fn transmit(&mut self, from: ReplicaId, to: ReplicaId, msg: Vec<u8>) {
        if !self.link_up(from, to) {
            return;
        }
        let chaos = !self.healed;
        if chaos && self.rng.chance(self.cfg.drop_permille) {
            return;
        }
        let copies = if chaos && self.rng.chance(self.cfg.dup_permille) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = 1 + self.rng.below(self.cfg.max_delay_ms.max(1));
            let at = self.now + delay;
            self.enqueue(
                at,
                Event::Deliver {
                    to,
                    from,
                    msg: msg.clone(),
                },
            );
        }
    }

    fn send(&mut self, from: ReplicaId, to: Dest, msg: Vec<u8>) {
        match to {
            Dest::One(t) => {
                if t != from && (t as usize) < self.cfg.n {
                    let m = self.byzantine_rewrite(from, t, &msg).unwrap_or(msg);
                    self.transmit(from, t, m);
                }
            }
            Dest::All => {
                for t in 0..self.cfg.n as ReplicaId {
                    if t != from {
                        let m = self
                            .byzantine_rewrite(from, t, &msg)
                            .unwrap_or_else(|| msg.clone());
                        self.transmit(from, t, m);
                    }
                }
            }
        }
    }

    /// The Byzantine replica's tampering with an outgoing broadcast to `to`.
    fn byzantine_rewrite(&mut self, from: ReplicaId, to: ReplicaId, msg: &[u8]) -> Option<Vec<u8>> {
        if Some(from) != self.byz {
            return None;
        }
        let env = msg::decode(msg, usize::MAX).ok()?;
        if self.cfg.byzantine == Some(Byzantine::Mutator) {
            return self.mutate(from, env);
        }
        let signer = InsecureTestSigner::new(from);
        let chain = env.chain_id.clone();
        let epoch = env.epoch;
        match (self.cfg.byzantine?, env.body) {
            (
                Byzantine::EquivocatingPrimary,
                Body::PrePrepare {
                    view,
                    height,
                    mut txs,
                },
            ) => {
                if to.is_multiple_of(2) {
                    return None;
                }
                // A different, still well-formed batch for odd replicas.
                if txs.len() > 1 {
                    txs.reverse();
                } else {
                    txs.clear();
                }
                let d = batch_digest(&chain, epoch, height, &txs);
                let sig = Sig(signer.sign(&vote_bytes(
                    &chain,
                    epoch,
                    VoteKind::PrePrepare,
                    view,
                    height,
                    &d,
                )));
                Some(msg::encode_envelope(&Envelope {
                    chain_id: chain,
                    epoch,
                    from,
                    body: Body::PrePrepare { view, height, txs },
                    sig,
                }))
            }
            (Byzantine::ForgedCertificates, Body::ViewChange(mut vc)) => {
                let h = vc.stable.height + 1;
                let fake_tx =
                    KvApp::make_tx(KvAuth::Tag, 250, self.rng.next_u64(), b"forged", b"x");
                let txs = vec![fake_tx];
                let view = vc.new_view.saturating_sub(1);
                let d = batch_digest(&chain, epoch, h, &txs);
                let mut prepares = vec![(
                    from,
                    Sig(signer.sign(&vote_bytes(&chain, epoch, VoteKind::Prepare, view, h, &d))),
                )];
                for r in 0..self.cfg.f.saturating_mul(2).saturating_sub(1) as ReplicaId {
                    prepares.push(((from + 1 + r) % self.cfg.n as ReplicaId, Sig([7; 64])));
                }
                let forged = PreparedCert {
                    view,
                    height: h,
                    digest: d,
                    txs: Some(txs),
                    primary_sig: Sig(signer.sign(&vote_bytes(
                        &chain,
                        epoch,
                        VoteKind::PrePrepare,
                        view,
                        h,
                        &d,
                    ))),
                    prepares,
                };
                vc.prepared.retain(|c| c.height != h);
                vc.prepared.insert(0, forged);
                let body = Body::ViewChange(vc);
                let sig = Sig(signer.sign(&msg::signing_bytes(&chain, epoch, from, &body, None)));
                Some(msg::encode_envelope(&Envelope {
                    chain_id: chain,
                    epoch,
                    from,
                    body,
                    sig,
                }))
            }
            (Byzantine::ForgedCertificates, Body::NewView(mut nv)) => {
                // Re-propose something other than what the view changes imply.
                let view = nv.view;
                let h = nv
                    .view_changes
                    .iter()
                    .map(|s| s.vc.stable.height)
                    .max()
                    .unwrap_or(0)
                    + 1;
                let txs = vec![KvApp::make_tx(
                    KvAuth::Tag,
                    251,
                    self.rng.next_u64(),
                    b"forged",
                    b"y",
                )];
                let d = batch_digest(&chain, epoch, h, &txs);
                let sig = Sig(signer.sign(&vote_bytes(
                    &chain,
                    epoch,
                    VoteKind::PrePrepare,
                    view,
                    h,
                    &d,
                )));
                if let Some(p) = nv.proposals.first_mut() {
                    p.txs = txs;
                    p.sig = sig;
                } else {
                    nv.proposals.push(crate::replica::msg::Reproposal {
                        height: h,
                        txs,
                        sig,
                    });
                }
                let body = Body::NewView(nv);
                let sig = Sig(signer.sign(&msg::signing_bytes(&chain, epoch, from, &body, None)));
                Some(msg::encode_envelope(&Envelope {
                    chain_id: chain,
                    epoch,
                    from,
                    body,
                    sig,
                }))
            }
            _ => None,
        }
    }

    /// The mutator's tampering: half of its broadcasts go out changed (and validly signed by
    /// it); sometimes an old message of its own is replayed instead.
    fn mutate(&mut self, from: ReplicaId, env: Envelope) -> Option<Vec<u8>> {
        if self.rng.chance(100) && !self.byz_history.is_empty() {
            let i = self.rng.below(self.byz_history.len() as u64) as usize;
            return Some(self.byz_history[i].clone());
        }
        let original = msg::encode_envelope(&env);
        if self.byz_history.len() < 64 {
            self.byz_history.push(original);
        }
        if !self.rng.chance(500) {
            return None;
        }
        let k = self.rng.below(3);
        let mut junk = [0u8; 32];
        junk[..8].copy_from_slice(&self.rng.next_u64().to_be_bytes());
        let body = match env.body {
            Body::Prepare {
                view,
                height,
                digest,
            } => match k {
                0 => Body::Prepare {
                    view,
                    height,
                    digest: junk,
                },
                1 => Body::Prepare {
                    view: view + 1,
                    height,
                    digest,
                },
                _ => Body::Prepare {
                    view,
                    height: height + 1,
                    digest,
                },
            },
            Body::Commit {
                view,
                height,
                digest,
            } => match k {
                0 => Body::Commit {
                    view,
                    height,
                    digest: junk,
                },
                1 => Body::Commit {
                    view: view.saturating_sub(1),
                    height,
                    digest,
                },
                _ => Body::Commit {
                    view,
                    height: height + 1,
                    digest,
                },
            },
            Body::PrePrepare {
                view,
                height,
                mut txs,
            } => {
                match k {
                    0 => {
                        txs.pop();
                    }
                    1 => {
                        if let Some(t) = txs.first().cloned() {
                            txs.push(t);
                        }
                    }
                    _ => txs.reverse(),
                }
                Body::PrePrepare { view, height, txs }
            }
            Body::Checkpoint {
                height, block_hash, ..
            } => Body::Checkpoint {
                height,
                block_hash,
                state_root: junk,
            },
            Body::ViewChange(mut vc) => {
                match k {
                    0 => vc.prepared.clear(),
                    1 => vc.new_view += 1,
                    _ => {
                        if let Some(c) = vc.prepared.first_mut() {
                            c.view += 1;
                        }
                    }
                }
                Body::ViewChange(vc)
            }
            Body::StateResponse(mut r) => {
                if let Some(b) = r.blocks.first_mut() {
                    b.txs.reverse();
                    b.header.state_root = junk;
                }
                Body::StateResponse(r)
            }
            other => other,
        };
        let chain = env.chain_id;
        let epoch = env.epoch;
        let signer = InsecureTestSigner::new(from);
        let sig = Sig(signer.sign(&msg::signing_bytes(&chain, epoch, from, &body, None)));
        Some(msg::encode_envelope(&Envelope {
            chain_id: chain,
            epoch,
            from,
            body,
            sig,
        }))
    }

    /// Records every vote an honest replica signs and checks it never signs two digests for
    /// one (view, height).
    fn check_votes(&mut self, from: ReplicaId, wire: &[u8]) -> Result<(), SimFailure> {
        if !self.honest(from) {
            return Ok(());
        }
        let Ok(env) = msg::decode(wire, usize::MAX) else {
            return self.fail(format!("replica {from} sent an undecodable message"));
        };
        let mut votes = Vec::new();
        match &env.body {
            Body::PrePrepare { view, height, txs } => {
                votes.push((
                    *view,
                    *height,
                    batch_digest(&env.chain_id, env.epoch, *height, txs),
                ));
            }
            Body::Prepare {
                view,
                height,
                digest,
            }
            | Body::Commit {
                view,
                height,
                digest,
            } => {
                votes.push((*view, *height, *digest));
            }
            Body::NewView(nv) => {
                for p in &nv.proposals {
                    votes.push((
                        nv.view,
                        p.height,
                        batch_digest(&env.chain_id, env.epoch, p.height, &p.txs),
                    ));
                }
            }
            _ => {}
        }
        for (v, h, d) in votes {
            match self.votes.get(&(env.from, v, h)) {
                Some(old) if *old != d => {
                    return self.fail(format!(
                        "double vote: replica {} signed two digests at view {v}, height {h}",
                        env.from
                    ));
                }
                Some(_) => {}
                None => {
                    self.votes.insert((env.from, v, h), d);
                }
            }
        }
        Ok(())
    }

    fn check_commit(&mut self, id: ReplicaId, b: &CommittedBlock) -> Result<(), SimFailure> {
        if !self.honest(id) {
            return Ok(());
        }
        let h = b.header.height;
        if h <= self.replica_heads[id as usize] {
            return self.fail(format!(
                "replica {id} committed height {h} twice or out of order"
            ));
        }
        self.replica_heads[id as usize] = h;
        if let Err(e) = b.verify(
            "sim-chain",
            1,
            self.cfg.n,
            self.rcfg[0].quorum(),
            &self.verifier,
        ) {
            return self.fail(format!(
                "replica {id} committed height {h} without a valid certificate: {e}"
            ));
        }
        // Validity: every committed transaction is authentic (a Byzantine primary cannot get a
        // forged one ordered). Replays are ordered at most as rejected outcomes.
        let blank = KvApp::new(KvAuth::Tag);
        if let Some(i) = b.txs.iter().position(|t| blank.check_tx(t).is_err()) {
            return self.fail(format!(
                "replica {id} committed an unauthenticated transaction at height {h}, index {i}"
            ));
        }
        for tx in &b.txs {
            let tx_id: Hash = Sha3_256::digest(tx).into();
            self.tx_heights.entry(tx_id).or_insert(h);
        }
        let hash = b.header.hash();
        match self.committed.get(&h) {
            Some(x) if *x != hash => self.fail(format!(
                "agreement violated at height {h}: replica {id} committed a different block"
            )),
            Some(_) => Ok(()),
            None => {
                self.committed.insert(h, hash);
                Ok(())
            }
        }
    }

    fn process_actions(&mut self, id: ReplicaId) -> Result<(), SimFailure> {
        let Some(r) = self.replicas[id as usize].as_mut() else {
            return Ok(());
        };
        let actions: Vec<Action> = r.drain_actions().collect();
        for a in actions {
            match a {
                Action::Persist(recs) => {
                    let store = self.stores[id as usize]
                        .as_mut()
                        .expect("invariant: live replica has a store");
                    if let Err(e) = store.apply(&recs) {
                        return self.fail(format!("replica {id}: store: {e}"));
                    }
                }
                Action::Send { to, msg } => {
                    self.check_votes(id, &msg)?;
                    if matches!(
                        self.cfg.byzantine,
                        Some(Byzantine::Mute | Byzantine::MutePrimary)
                    ) && Some(id) == self.byz
                    {
                        continue;
                    }
                    self.send(id, to, msg);
                }
                Action::Commit(b) => self.check_commit(id, &b)?,
                Action::Reply { tx_id, .. } => {
                    self.replies.insert((id, tx_id));
                }
                Action::StateRestored { height, .. } => {
                    let r = self.restored.entry(id).or_insert(0);
                    *r = (*r).max(height);
                }
            }
        }
        Ok(())
    }

    fn deliver(&mut self, to: ReplicaId, from: ReplicaId, msg: Vec<u8>) -> Result<(), SimFailure> {
        self.sync_clock(to)?;
        let Some(r) = self.replicas[to as usize].as_mut() else {
            return Ok(());
        };
        self.report.delivered += 1;
        if let Err(e) = r.step(Input::Peer { from, msg }) {
            self.report.rejected += 1;
            let sender_honest = self.honest(from);
            let benign = matches!(
                e,
                LedgerError::InvalidProposal(ref m) if m.starts_with("forward")
            );
            if sender_honest && self.honest(to) && !benign {
                return self.fail(format!(
                    "honest replica {to} rejected honest replica {from}'s message: {e}"
                ));
            }
        }
        self.process_actions(to)
    }

    /// Drivers feed the current time before other inputs whenever it advanced.
    fn sync_clock(&mut self, id: ReplicaId) -> Result<(), SimFailure> {
        if self.clocks[id as usize] < self.now {
            self.tick(id)?;
        }
        Ok(())
    }

    fn submit(&mut self, to: ReplicaId, tx: Vec<u8>) -> Result<(), SimFailure> {
        self.sync_clock(to)?;
        let Some(r) = self.replicas[to as usize].as_mut() else {
            return Ok(());
        };
        let _ = r.step(Input::Request(tx));
        self.process_actions(to)
    }

    fn tick(&mut self, id: ReplicaId) -> Result<(), SimFailure> {
        self.clocks[id as usize] = self.now;
        if let Some(r) = self.replicas[id as usize].as_mut() {
            r.step(Input::Tick { now_ms: self.now }).ok();
            self.report.max_view = self.report.max_view.max(r.view());
        }
        self.process_actions(id)
    }

    fn next_deadline(&self) -> Option<u64> {
        self.replicas
            .iter()
            .flatten()
            .filter_map(|r| r.next_deadline_ms())
            .min()
    }

    /// Runs the scenario: chaos, heal, liveness, then a cold restart. Returns statistics or
    /// the first violated property.
    pub fn run(mut self) -> Result<SimReport, SimFailure> {
        let n = self.cfg.n as ReplicaId;
        // Schedule the client load.
        for i in 0..self.cfg.txs {
            let at = self.rng.below(self.cfg.chaos_ms.max(1));
            let client = (i % 8) as u8;
            let tx = KvApp::make_tx(
                KvAuth::Tag,
                client,
                i as u64,
                format!("k{}", i % 13).as_bytes(),
                format!("v{i}").as_bytes(),
            );
            let id: Hash = Sha3_256::digest(&tx).into();
            self.submitted.insert(id, tx.clone());
            let to = if self.cfg.lagger {
                self.rng.below(n as u64 - 1)
            } else {
                self.rng.below(n as u64)
            } as ReplicaId;
            self.enqueue(at, Event::Submit { to, tx });
        }
        let mut next_fault = 200 + self.rng.below(500);
        let mut down: BTreeSet<ReplicaId> = BTreeSet::new();
        loop {
            let next_ev = self.queue.keys().next().map(|k| k.0);
            let next_dl = self.next_deadline();
            let chaos_end = if self.healed {
                None
            } else {
                Some(self.cfg.chaos_ms)
            };
            let fault_at = if self.healed { None } else { Some(next_fault) };
            let t = [next_ev, next_dl, chaos_end, fault_at]
                .into_iter()
                .flatten()
                .min();
            let Some(t) = t else { break };
            self.now = self.now.max(t);
            if !self.healed && self.now >= self.cfg.chaos_ms {
                // Heal: reconnect everything, restart crashed replicas, resubmit everything.
                self.healed = true;
                self.side = vec![0; self.cfg.n];
                for id in std::mem::take(&mut down) {
                    self.boot(id)?;
                }
                let txs: Vec<Vec<u8>> = self.submitted.values().cloned().collect();
                for tx in txs {
                    for to in 0..n {
                        self.submit(to, tx.clone())?;
                    }
                }
            }
            if !self.healed && self.now >= next_fault {
                next_fault = self.now + 200 + self.rng.below(800);
                if self.cfg.crashes && self.rng.chance(500) {
                    if let Some(&id) = down.iter().next() {
                        down.remove(&id);
                        self.boot(id)?;
                    } else {
                        let id = self.rng.below(n as u64) as ReplicaId;
                        down.insert(id);
                        self.crash(id);
                    }
                }
                if self.cfg.partitions && self.rng.chance(400) {
                    if self.side.iter().all(|s| *s == 0) {
                        for s in self.side.iter_mut() {
                            *s = (self.rng.below(2)) as u8;
                        }
                    } else {
                        self.side = vec![0; self.cfg.n];
                    }
                }
            }
            // Deliver everything due.
            while let Some((&(at, s), _)) = self.queue.first_key_value() {
                if at > self.now {
                    break;
                }
                let ev = self
                    .queue
                    .remove(&(at, s))
                    .expect("invariant: key just seen");
                match ev {
                    Event::Deliver { to, from, msg } => self.deliver(to, from, msg)?,
                    Event::Submit { to, tx } => self.submit(to, tx)?,
                }
            }
            for id in 0..n {
                let due = self.replicas[id as usize]
                    .as_ref()
                    .and_then(|r| r.next_deadline_ms())
                    .is_some_and(|d| d <= self.now);
                if due {
                    self.tick(id)?;
                }
            }
            if self.healed {
                if self.all_committed() {
                    break;
                }
                if self.now > self.cfg.chaos_ms + self.cfg.liveness_bound_ms {
                    let heads: Vec<u64> = self
                        .replicas
                        .iter()
                        .map(|r| r.as_ref().map_or(0, |r| r.last_executed()))
                        .collect();
                    let views: Vec<(u64, bool)> = self
                        .replicas
                        .iter()
                        .map(|r| {
                            r.as_ref()
                                .map_or((0, false), |r| (r.view(), r.is_view_active()))
                        })
                        .collect();
                    let pend: Vec<(usize, usize)> = self
                        .replicas
                        .iter()
                        .map(|r| {
                            r.as_ref()
                                .map_or((0, 0), |r| (r.app().applied(), r.pending_len()))
                        })
                        .collect();
                    return self.fail(format!(
                        "liveness: not every transaction committed {} ms after healing (heads {heads:?}, views {views:?}, applied/pending {pend:?} of {}); replicas: {:?}",
                        self.cfg.liveness_bound_ms,
                        self.submitted.len(),
                        self.replicas
                    ));
                }
            }
        }
        self.settle_views()?;
        self.report.end_ms = self.now;
        self.report.committed_height = (0..n)
            .filter(|i| self.honest(*i))
            .filter_map(|i| {
                self.replicas[i as usize]
                    .as_ref()
                    .map(|r| r.last_executed())
            })
            .min()
            .unwrap_or(0);
        self.cold_restart()?;
        Ok(self.report)
    }

    /// Processes everything due at the next event or replica deadline if that is at or before
    /// `limit`, and returns true; otherwise moves the clock to `limit` and returns false.
    fn step_until(&mut self, limit: u64) -> Result<bool, SimFailure> {
        let next_ev = self.queue.keys().next().map(|k| k.0);
        let t = [next_ev, self.next_deadline()].into_iter().flatten().min();
        let Some(t) = t.filter(|t| *t <= limit) else {
            self.now = self.now.max(limit);
            return Ok(false);
        };
        self.now = self.now.max(t);
        while let Some((&(at, s), _)) = self.queue.first_key_value() {
            if at > self.now {
                break;
            }
            let ev = self
                .queue
                .remove(&(at, s))
                .expect("invariant: key just seen");
            match ev {
                Event::Deliver { to, from, msg } => self.deliver(to, from, msg)?,
                Event::Submit { to, tx } => self.submit(to, tx)?,
            }
        }
        for id in 0..self.cfg.n as ReplicaId {
            let due = self.replicas[id as usize]
                .as_ref()
                .and_then(|r| r.next_deadline_ms())
                .is_some_and(|d| d <= self.now);
            if due {
                self.tick(id)?;
            }
        }
        Ok(true)
    }

    /// The isolated-replica scenario (a regression test for a liveness bug found with the
    /// tokio driver on a simulated network). The last replica is cut off from the others for
    /// `chaos_ms` while one of its clients' transactions is pending at it (so its view-change
    /// timer runs), and the others commit `txs` transactions (far enough to move their
    /// watermarks past it when `txs` is large). Then the partition heals and another client
    /// submits a transaction **to the isolated replica only**; nothing is resubmitted
    /// elsewhere. Within `liveness_bound_ms` of the heal, the isolated replica must have
    /// replied to both of its clients (or restored a checkpoint that covers the transaction,
    /// counted in [`IsolationReport::folded_into_snapshot`]) and every replica must have
    /// applied every transaction.
    /// The safety oracles run throughout, and a cold restart ends the run.
    ///
    /// Links drop and duplicate messages (`drop_permille`, `dup_permille`) during the
    /// isolation only; crashes, random partitions and Byzantine behaviour are not used.
    pub fn run_isolated_replica(mut self) -> Result<IsolationReport, SimFailure> {
        let n = self.cfg.n as ReplicaId;
        let iso = self.lagger_id();
        let iso_client = 200u8;
        let submit = |sim: &mut Self, at: u64, to: ReplicaId, client: u8, nonce: u64| {
            let tx = KvApp::make_tx(
                KvAuth::Tag,
                client,
                nonce,
                format!("k{}", nonce % 13).as_bytes(),
                format!("v{client}/{nonce}").as_bytes(),
            );
            let id: Hash = Sha3_256::digest(&tx).into();
            sim.submitted.insert(id, tx.clone());
            sim.enqueue(at, Event::Submit { to, tx });
            id
        };
        self.side[iso as usize] = 1;
        let mut iso_txs = vec![submit(&mut self, 1, iso, iso_client, 0)];
        for i in 0..self.cfg.txs {
            let at = 2 + self.rng.below((self.cfg.chaos_ms / 2).max(1));
            let to = self.rng.below(n as u64 - 1) as ReplicaId;
            submit(&mut self, at, to, (i % 8) as u8, i as u64);
        }
        while self.step_until(self.cfg.chaos_ms)? {}

        // Heal. The others' work must have gone on without the isolated replica.
        self.healed = true;
        self.side = vec![0; self.cfg.n];
        let others_view = (0..n)
            .filter(|i| *i != iso)
            .filter_map(|i| self.replicas[i as usize].as_ref().map(|r| r.view()))
            .max()
            .unwrap_or(0);
        let isolated_view = self.replicas[iso as usize]
            .as_ref()
            .map_or((0, false), |r| (r.view(), r.is_view_active()));
        let heal = self.now;
        iso_txs.push(submit(&mut self, heal, iso, iso_client, 1));
        let deadline = heal + self.cfg.liveness_bound_ms;
        loop {
            let served = iso_txs.iter().all(|id| self.served(iso, id));
            if served && self.all_committed() {
                break;
            }
            if !self.step_until(deadline)? {
                let heads: Vec<(u64, u64, bool)> = self
                    .replicas
                    .iter()
                    .map(|r| {
                        r.as_ref().map_or((0, 0, false), |r| {
                            (r.last_executed(), r.view(), r.is_view_active())
                        })
                    })
                    .collect();
                let replied = iso_txs.iter().filter(|id| self.served(iso, id)).count();
                return self.fail(format!(
                    "liveness: {} ms after healing, the isolated replica {iso} has replied for \
                     {replied} of its clients' {} transactions, or not every replica applied \
                     every transaction (height, view, active per replica: {heads:?}; at the \
                     heal it was in view {isolated_view:?}, the others in view {others_view})",
                    self.cfg.liveness_bound_ms,
                    iso_txs.len()
                ));
            }
        }
        let served_after_ms = self.now - heal;
        let folded = iso_txs
            .iter()
            .filter(|id| !self.replies.contains(&(iso, **id)))
            .count();
        self.settle_views()?;
        let isolated_height = self.replicas[iso as usize]
            .as_ref()
            .map_or(0, |r| r.last_executed());
        self.report.end_ms = self.now;
        self.report.committed_height = isolated_height;
        self.cold_restart()?;
        Ok(IsolationReport {
            isolated_view_at_heal: isolated_view,
            others_view_at_heal: others_view,
            served_after_ms,
            folded_into_snapshot: folded,
            isolated_height,
            report: self.report,
        })
    }

    /// Whether `replica` answered its client for `tx`: a reply, or the transaction's block is
    /// at or below a checkpoint the replica restored from a snapshot (see
    /// [`IsolationReport::folded_into_snapshot`]).
    fn served(&self, replica: ReplicaId, tx: &Hash) -> bool {
        self.replies.contains(&(replica, *tx))
            || self
                .tx_heights
                .get(tx)
                .zip(self.restored.get(&replica))
                .is_some_and(|(h, r)| h <= r)
    }

    /// (view, active) of every honest replica that is up.
    fn honest_views(&self) -> Vec<(ReplicaId, u64, bool)> {
        (0..self.cfg.n as ReplicaId)
            .filter(|i| self.honest(*i))
            .filter_map(|i| {
                self.replicas[i as usize]
                    .as_ref()
                    .map(|r| (i, r.view(), r.is_view_active()))
            })
            .collect()
    }

    /// After everything committed, with the network healed and no new load: within
    /// [`VIEW_SETTLE_TIMEOUTS`] base view-change timeouts every honest replica works, active,
    /// in one view. A replica left alone in a higher view takes no part in consensus, so the
    /// system would have no fault margin left although every replica is up.
    fn settle_views(&mut self) -> Result<(), SimFailure> {
        let limit = self.now + VIEW_SETTLE_TIMEOUTS * self.cfg.view_change_timeout_ms;
        loop {
            let views = self.honest_views();
            let settled = views
                .iter()
                .all(|(_, v, active)| *active && *v == views[0].1);
            if settled {
                return Ok(());
            }
            if !self.step_until(limit)? {
                return self.fail(format!(
                    "views: {} base view-change timeouts after every transaction committed, the \
                     honest replicas do not share one active view (replica, view, active: \
                     {views:?})",
                    VIEW_SETTLE_TIMEOUTS
                ));
            }
        }
    }

    fn all_committed(&self) -> bool {
        (0..self.cfg.n as ReplicaId)
            .filter(|i| self.honest(*i))
            .all(|i| {
                self.replicas[i as usize].as_ref().is_some_and(|r| {
                    r.app().applied() >= self.submitted.len() && r.pending_len() == 0
                })
            })
    }

    /// Every honest replica restarts from its store and must come back to the same head.
    fn cold_restart(&mut self) -> Result<(), SimFailure> {
        for id in 0..self.cfg.n as ReplicaId {
            if !self.honest(id) {
                continue;
            }
            let Some(before) = self.replicas[id as usize]
                .as_ref()
                .map(|r| (r.last_executed(), r.last_block_hash()))
            else {
                continue;
            };
            self.crash(id);
            self.boot(id)?;
            let after = self.replicas[id as usize]
                .as_ref()
                .map(|r| (r.last_executed(), r.last_block_hash()));
            if after != Some(before) {
                return self.fail(format!(
                    "replica {id}: cold restart gave {after:?}, expected {before:?}"
                ));
            }
            // Every transaction acknowledged before the restart is still applied after it.
            let applied = self.replicas[id as usize]
                .as_ref()
                .map_or(0, |r| r.app().applied());
            if applied < self.submitted.len() {
                return self.fail(format!(
                    "replica {id}: after a cold restart only {applied} of {} transactions are applied",
                    self.submitted.len()
                ));
            }
        }
        Ok(())
    }
}

/// The seeds a test should run: `EHR_SIM_SEED` replays one; `EHR_SIM_SEEDS` overrides the
/// count and `EHR_SIM_SEED_BASE` the first seed; otherwise `default_count` seeds starting at
/// `base`.
pub fn seeds_from_env(base: u64, default_count: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("EHR_SIM_SEED")
        && let Ok(seed) = s.trim().parse::<u64>()
    {
        return vec![seed];
    }
    let count = std::env::var("EHR_SIM_SEEDS")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(default_count);
    let base = std::env::var("EHR_SIM_SEED_BASE")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(base);
    (base..base.saturating_add(count)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_app_round_trip() {
        let mut a = KvApp::new(KvAuth::Tag);
        let tx = KvApp::make_tx(KvAuth::Tag, 1, 5, b"k", b"v");
        a.check_tx(&tx).unwrap();
        let mut bad = tx.clone();
        bad[12] ^= 1;
        assert_eq!(a.check_tx(&bad).unwrap_err().code, "bad-signature");
        let (o, root) = a.apply_block(1, &[tx.clone(), tx.clone()]);
        assert_eq!(o[0], TxOutcome::Applied);
        assert!(matches!(o[1], TxOutcome::Rejected(_)));
        assert_eq!(a.get(b"k"), Some(&b"v"[..]));
        let snap = a.snapshot();
        let mut b = KvApp::new(KvAuth::Tag);
        assert!(b.restore(&snap, &[0; 32]).is_err());
        b.restore(&snap, &root).unwrap();
        assert_eq!(b.state_root(), root);
        assert!(b.check_tx(&tx).is_err(), "replay refused after restore");
        let e = KvApp::make_tx(KvAuth::Ed25519, 3, 1, b"k", b"v");
        KvApp::new(KvAuth::Ed25519).check_tx(&e).unwrap();
    }

    #[test]
    fn a_seed_replays_exactly() {
        for seed in [3, 4, 5] {
            let a = Sim::new(SimConfig::random(seed)).run().unwrap();
            let b = Sim::new(SimConfig::random(seed)).run().unwrap();
            assert_eq!(
                (
                    a.delivered,
                    a.end_ms,
                    a.committed_height,
                    a.max_view,
                    a.rejected
                ),
                (
                    b.delivered,
                    b.end_ms,
                    b.committed_height,
                    b.max_view,
                    b.rejected
                ),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn quiet_run_commits_everything() {
        let cfg = SimConfig {
            seed: 1,
            n: 4,
            f: 1,
            txs: 20,
            chaos_ms: 1000,
            drop_permille: 0,
            dup_permille: 0,
            max_delay_ms: 3,
            crashes: false,
            partitions: false,
            lagger: false,
            byzantine: None,
            checkpoint_interval: 4,
            watermark_window: 8,
            max_batch_txs: 2,
            view_change_timeout_ms: 300,
            liveness_bound_ms: 30_000,
        };
        let r = Sim::new(cfg).run().unwrap_or_else(|e| panic!("{e}"));
        assert!(r.committed_height >= 10, "{r:?}");
        assert_eq!(r.max_view, 0, "{r:?}");
    }
}
