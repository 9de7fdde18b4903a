//! The sans-IO PBFT replica core (Castro & Liskov), with batching, watermarks, checkpoints, view
//! change with prepared certificates, and state transfer.
//!
//! The replica never reads a clock, draws randomness or touches a socket or a disk. Inputs are
//! client transactions, peer messages and ticks ([`Input`]); effects leave as [`Action`]s,
//! which the driver executes **in order**: a [`Action::Send`] that follows an
//! [`Action::Persist`] may only go out once the persisted records are durable (fsync). That is
//! how "a vote is persisted before it is sent" holds.
//!
//! Submodules: [`msg`] (wire encoding), `view_change` (view change and new view), `transfer`
//! (state transfer). The height of a block is its PBFT sequence number; one batch is one block.

pub mod msg;
mod transfer;
mod view_change;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha3::{Digest, Sha3_256};

use crate::app::{App, Hash, TxOutcome};
use crate::block::{
    BlockHeader, CheckpointCert, CommitCert, CommittedBlock, Sig, VoteKind, genesis_hash,
    proposal_digest, vote_bytes,
};
use crate::crypto::{Ed25519Verifier, ReplicaId, Signer, Verifier};
use crate::error::LedgerError;
use crate::merkle;
use msg::{Body, Envelope, PreparedCert, SignedViewChange};

/// The default [`ReplicaConfig::fatal_reject_codes`]: the state-independent reject codes of
/// the ledger's application (and of the simulator's test application).
pub const DEFAULT_FATAL_REJECT_CODES: &[&str] = &[
    "malformed",
    "too-large",
    "unsupported-version",
    "non-canonical",
    "invalid-field",
    "bad-signature",
    "wrong-chain",
];

/// The view-change timeout doubles at most this many times (64 x the base).
const MAX_BACKOFF_EXP: u32 = 6;

/// View changes further than this above the current view are ignored (a Byzantine replica
/// must not be able to push views towards overflow).
const MAX_VIEW_JUMP: u64 = 1 << 20;

/// A peer that has asked, alone, for the view after the current one for this many base
/// view-change timeouts is joined (see `Replica::join_lone_view_change`).
const LONE_VIEW_WAIT_TIMEOUTS: u64 = 2;

/// At most one such join per this many base view-change timeouts, so a Byzantine replica can
/// force a view change only that often.
const LONE_VIEW_GAP_TIMEOUTS: u64 = 10;

/// Stable reject code for a transaction refused because the pending pool is full.
pub const OVERLOADED: &str = "overloaded";

/// Configuration of one replica. Every replica of an epoch must use the same values except `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// The chain id (bound into every signature).
    pub chain_id: String,
    /// The validator-set epoch (bound into every signature).
    pub epoch: u64,
    /// This replica's index in `validators`.
    pub id: ReplicaId,
    /// The validators' Ed25519 public keys, in order (index = replica id).
    pub validators: Vec<[u8; 32]>,
    /// The number of Byzantine replicas tolerated (`validators.len() >= 3f + 1`).
    pub f: usize,
    /// K: a checkpoint every K heights.
    pub checkpoint_interval: u64,
    /// L: heights accepted above the last stable checkpoint (the high watermark is low + L).
    pub watermark_window: u64,
    /// Most transactions in one batch (block).
    pub max_batch_txs: usize,
    /// Most transaction bytes in one batch.
    pub max_batch_bytes: usize,
    /// How long the primary waits for a batch to fill before proposing it.
    pub batch_delay_ms: u64,
    /// Most proposals in flight beyond the last executed height.
    pub max_in_flight: u64,
    /// Base view-change timeout; doubled after each view change that does not make progress.
    pub view_change_timeout_ms: u64,
    /// After this long without progress, resend own votes and ask peers for missing blocks.
    pub retransmit_ms: u64,
    /// Largest accepted wire message.
    pub max_message_bytes: usize,
    /// Most transactions waiting to be proposed.
    pub max_pending_txs: usize,
    /// Most blocks in one state-transfer answer.
    pub max_blocks_per_response: usize,
    /// [`crate::app::TxReject`] codes that make a whole proposal invalid: failures that do not
    /// depend on state (bad encoding or signature). A transaction refused for any other reason
    /// (a replayed nonce, an unknown sender) may be valid at the primary's position in the
    /// pipeline; it is ordered and `apply_block` rejects it deterministically.
    pub fatal_reject_codes: Vec<&'static str>,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            chain_id: "ehr-ledger".into(),
            epoch: 0,
            id: 0,
            validators: Vec::new(),
            f: 1,
            checkpoint_interval: 64,
            watermark_window: 128,
            max_batch_txs: 2000,
            max_batch_bytes: 512 << 10,
            batch_delay_ms: 2,
            max_in_flight: 8,
            view_change_timeout_ms: 2000,
            retransmit_ms: 500,
            max_message_bytes: 80 << 20,
            max_pending_txs: 200_000,
            max_blocks_per_response: 256,
            fatal_reject_codes: DEFAULT_FATAL_REJECT_CODES.to_vec(),
        }
    }
}

impl ReplicaConfig {
    /// The number of validators.
    pub fn n(&self) -> usize {
        self.validators.len()
    }

    /// Votes needed for a certificate: 2f+1 when n = 3f+1 (in general ceil((n+f+1)/2)).
    pub fn quorum(&self) -> usize {
        (self.n() + self.f + 2) / 2
    }

    /// The primary of `view`.
    pub fn primary(&self, view: u64) -> ReplicaId {
        (view % self.n() as u64) as ReplicaId
    }

    /// Checks the configuration; the error names the offending field.
    pub fn validate(&self) -> Result<(), LedgerError> {
        let bad = |m: &str| Err(LedgerError::Config(m.to_owned()));
        if self.chain_id.is_empty() || self.chain_id.len() > 64 {
            return bad("chain_id: must be 1..=64 bytes");
        }
        if self.validators.is_empty() || self.validators.len() < 3 * self.f + 1 {
            return bad("validators: need at least 3f+1 validators");
        }
        if self.validators.len() > 1024 {
            return bad("validators: at most 1024");
        }
        let distinct: BTreeSet<_> = self.validators.iter().collect();
        if distinct.len() != self.validators.len() {
            return bad("validators: duplicate public key");
        }
        if self.id as usize >= self.validators.len() {
            return bad("id: not an index into validators");
        }
        if self.checkpoint_interval == 0 {
            return bad("checkpoint_interval: must be at least 1");
        }
        if self.watermark_window < self.checkpoint_interval
            || !self
                .watermark_window
                .is_multiple_of(self.checkpoint_interval)
        {
            return bad("watermark_window: must be a positive multiple of checkpoint_interval");
        }
        if self.max_batch_txs == 0 || self.max_batch_bytes == 0 {
            return bad("max_batch_txs/max_batch_bytes: must be positive");
        }
        if self.max_in_flight == 0 || self.max_in_flight > self.watermark_window {
            return bad("max_in_flight: must be in 1..=watermark_window");
        }
        if self.view_change_timeout_ms == 0 || self.retransmit_ms == 0 {
            return bad("view_change_timeout_ms/retransmit_ms: must be positive");
        }
        // A view change or new view carries up to one batch per height of the window.
        let per_batch = self.max_batch_bytes + 8 * self.max_batch_txs + 1024;
        let needed = (self.watermark_window as usize)
            .saturating_mul(per_batch)
            .saturating_add(1 << 20);
        if self.max_message_bytes < needed {
            return bad(
                "max_message_bytes: must hold watermark_window batches (a view change carries \
                 one per height)",
            );
        }
        if self.max_pending_txs == 0 || self.max_blocks_per_response == 0 {
            return bad("max_pending_txs/max_blocks_per_response: must be positive");
        }
        Ok(())
    }
}

/// An input to the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A client transaction submitted to this replica.
    Request(Vec<u8>),
    /// A message from a peer. `from` is the transport's idea of the sender and is used only
    /// for logging; authenticity comes from the message's signature.
    Peer {
        /// The transport-level sender.
        from: ReplicaId,
        /// The encoded message.
        msg: Vec<u8>,
    },
    /// The current time in milliseconds (monotone; any epoch).
    Tick {
        /// Milliseconds.
        now_ms: u64,
    },
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// One replica.
    One(ReplicaId),
    /// Every other replica.
    All,
}

/// A record the driver must make durable (atomically, with the others of the same action).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// The current view and whether it is active (false while changing view).
    View {
        /// The view.
        view: u64,
        /// False while a view change to `view` is in progress.
        active: bool,
    },
    /// This replica signed `digest` at (view, height) (pre-prepare, prepare or commit).
    Vote {
        /// The view.
        view: u64,
        /// The height.
        height: u64,
        /// The digest.
        digest: Hash,
    },
    /// A prepared certificate (kept for view changes).
    Prepared(PreparedCert),
    /// An executed block.
    Block(CommittedBlock),
    /// A new stable checkpoint with the application snapshot at its height.
    Checkpoint(StableCheckpoint),
    /// Votes and prepared certificates at or below this height may be forgotten.
    Prune {
        /// The stable checkpoint height.
        through: u64,
    },
}

/// A stable checkpoint: the certificate, the block header at its height, and the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StableCheckpoint {
    /// 2f+1 checkpoint signatures.
    pub cert: CheckpointCert,
    /// The header of the block at the checkpoint height.
    pub header: BlockHeader,
    /// The application snapshot after that block.
    pub snapshot: Vec<u8>,
}

/// What a replica needs to restart: loaded by a store from the records it persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersistedState {
    /// The last persisted view.
    pub view: u64,
    /// Whether that view was active.
    pub view_active: bool,
    /// Every vote above the stable checkpoint: (view, height) → digest.
    pub votes: BTreeMap<(u64, u64), Hash>,
    /// Prepared certificates above the stable checkpoint, by height.
    pub prepared: BTreeMap<u64, PreparedCert>,
    /// The latest stable checkpoint, if any.
    pub checkpoint: Option<StableCheckpoint>,
    /// The executed blocks after the checkpoint, in height order.
    pub blocks: Vec<CommittedBlock>,
}

/// An effect for the driver, to be executed in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Make these records durable before executing any later action.
    Persist(Vec<Record>),
    /// Send a message.
    Send {
        /// The destination.
        to: Dest,
        /// The encoded, signed message.
        msg: Vec<u8>,
    },
    /// A block was committed and executed (emitted once per height, in order).
    Commit(Box<CommittedBlock>),
    /// The application state was replaced by a checkpoint snapshot from peers (state transfer):
    /// heights up to `height` were skipped and no `Commit` is emitted for them, so views
    /// derived from commits (indexes) must be rebuilt from the application state.
    StateRestored {
        /// The checkpoint height now executed.
        height: u64,
        /// The state root at that height.
        state_root: Hash,
    },
    /// A transaction submitted to this replica was committed (after its block's `Commit`).
    Reply {
        /// The transaction id (SHA3-256 of its bytes).
        tx_id: Hash,
        /// The height of its block.
        height: u64,
        /// Its index in the block.
        index: u32,
        /// Whether the application applied or rejected it.
        outcome: TxOutcome,
    },
}

/// The proposal accepted at a height in some view.
#[derive(Debug, Clone)]
struct Proposal {
    view: u64,
    digest: Hash,
    tx_root: Hash,
    txs: Vec<Vec<u8>>,
    primary_sig: Sig,
}

/// Everything known about one height above the stable checkpoint.
#[derive(Debug, Default)]
struct Slot {
    pp: Option<Proposal>,
    prepares: BTreeMap<(u64, Hash), BTreeMap<ReplicaId, Sig>>,
    commits: BTreeMap<(u64, Hash), BTreeMap<ReplicaId, Sig>>,
    prepare_voters: BTreeMap<(u64, ReplicaId), Hash>,
    commit_voters: BTreeMap<(u64, ReplicaId), Hash>,
    prepared_view: Option<u64>,
    /// Own signed messages about this height (for retransmission).
    out: Vec<Vec<u8>>,
}

/// A transaction waiting to be committed.
#[derive(Debug, Clone)]
struct PendingTx {
    seq: u64,
    bytes: Vec<u8>,
}

/// The SHA3-256 transaction id.
pub fn tx_id(tx: &[u8]) -> Hash {
    Sha3_256::digest(tx).into()
}

/// One PBFT replica. See the module docs.
pub struct Replica<A: App> {
    cfg: ReplicaConfig,
    signer: Box<dyn Signer>,
    verifier: Box<dyn Verifier>,
    app: A,
    now: u64,

    view: u64,
    active: bool,
    vc_attempts: u32,
    vc_deadline: Option<u64>,
    arm_vc_on_tick: bool,
    latest_vc: BTreeMap<ReplicaId, SignedViewChange>,
    /// When each peer's entry in `latest_vc` arrived.
    vc_seen_at: BTreeMap<ReplicaId, u64>,
    last_lone_join: Option<u64>,
    my_vc_msg: Option<Vec<u8>>,
    new_view_msg: Option<(u64, Vec<u8>)>,
    fetched_new_view: u64,

    low: u64,
    stable: CheckpointCert,
    stable_header: Option<BlockHeader>,
    stable_snapshot: Option<Vec<u8>>,
    last_exec: u64,
    last_hash: Hash,
    blocks: BTreeMap<u64, CommittedBlock>,
    own_checkpoints: BTreeMap<u64, (BlockHeader, Vec<u8>)>,
    my_checkpoint_msg: Option<Vec<u8>>,
    checkpoint_votes: BTreeMap<u64, BTreeMap<ReplicaId, (Hash, Hash, Sig)>>,
    ahead: BTreeMap<ReplicaId, u64>,

    log: BTreeMap<u64, Slot>,
    prepared: BTreeMap<u64, PreparedCert>,
    my_votes: BTreeMap<(u64, u64), Hash>,
    next_height: u64,

    pending: BTreeMap<u64, Hash>,
    pending_by_id: BTreeMap<Hash, PendingTx>,
    in_flight: BTreeMap<Hash, PendingTx>,
    local: BTreeSet<Hash>,
    next_seq: u64,
    batch_since: Option<u64>,

    last_progress: u64,
    last_retransmit: u64,
    last_heartbeat: u64,
    served: BTreeMap<ReplicaId, u64>,
    state_deadline: Option<u64>,

    persist_buf: Vec<Record>,
    /// Client transactions to relay, sent as few `Forward` messages when the actions are
    /// drained (one signed message per driver turn instead of one per transaction).
    forward_buf: Vec<Vec<u8>>,
    actions: Vec<Action>,
}

impl<A: App> std::fmt::Debug for Replica<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.cfg.id)
            .field("view", &self.view)
            .field("active", &self.active)
            .field("low", &self.low)
            .field("last_exec", &self.last_exec)
            .field("pending", &self.pending_by_id.len())
            .field("in_flight", &self.in_flight.len())
            .field("next_height", &self.next_height)
            .field("vc_deadline", &self.vc_deadline)
            .field("now", &self.now)
            .field(
                "slots",
                &self
                    .log
                    .range(self.last_exec + 1..)
                    .map(|(h, s)| {
                        (
                            *h,
                            s.pp.as_ref().map(|p| p.view),
                            s.prepares.values().map(|m| m.len()).sum::<usize>(),
                            s.commits.values().map(|m| m.len()).sum::<usize>(),
                        )
                    })
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<A: App> Replica<A> {
    /// A replica verifying votes with Ed25519 under `cfg.validators`.
    ///
    /// `app` must be in its genesis state; with `restored`, the replica restores the persisted
    /// checkpoint snapshot into it and replays the persisted blocks. Actions produced while
    /// restarting (re-sent checkpoint or view-change votes) are waiting in
    /// [`Replica::drain_actions`].
    pub fn new(
        cfg: ReplicaConfig,
        signer: Box<dyn Signer>,
        app: A,
        restored: Option<PersistedState>,
    ) -> Result<Self, LedgerError> {
        let verifier = Box::new(Ed25519Verifier::new(&cfg.validators));
        Self::with_verifier(cfg, signer, verifier, app, restored)
    }

    /// Like [`Replica::new`] with an explicit verifier (the simulator's test scheme).
    pub fn with_verifier(
        cfg: ReplicaConfig,
        signer: Box<dyn Signer>,
        verifier: Box<dyn Verifier>,
        app: A,
        restored: Option<PersistedState>,
    ) -> Result<Self, LedgerError> {
        cfg.validate()?;
        if signer.public_key() != cfg.validators[cfg.id as usize] {
            return Err(LedgerError::Config(
                "id: the signer's public key is not validators[id]".into(),
            ));
        }
        let genesis_root = app.state_root();
        let genesis = genesis_hash(&cfg.chain_id, cfg.epoch, &genesis_root);
        let mut r = Self {
            signer,
            verifier,
            app,
            now: 0,
            view: 0,
            active: true,
            vc_attempts: 0,
            vc_deadline: None,
            arm_vc_on_tick: false,
            latest_vc: BTreeMap::new(),
            vc_seen_at: BTreeMap::new(),
            last_lone_join: None,
            my_vc_msg: None,
            new_view_msg: None,
            fetched_new_view: 0,
            low: 0,
            stable: CheckpointCert::genesis(genesis, genesis_root),
            stable_header: None,
            stable_snapshot: None,
            last_exec: 0,
            last_hash: genesis,
            blocks: BTreeMap::new(),
            own_checkpoints: BTreeMap::new(),
            my_checkpoint_msg: None,
            checkpoint_votes: BTreeMap::new(),
            ahead: BTreeMap::new(),
            log: BTreeMap::new(),
            prepared: BTreeMap::new(),
            my_votes: BTreeMap::new(),
            next_height: 1,
            pending: BTreeMap::new(),
            pending_by_id: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            local: BTreeSet::new(),
            next_seq: 0,
            batch_since: None,
            last_progress: 0,
            last_retransmit: 0,
            last_heartbeat: 0,
            served: BTreeMap::new(),
            state_deadline: None,
            persist_buf: Vec::new(),
            forward_buf: Vec::new(),
            actions: Vec::new(),
            cfg,
        };
        if let Some(p) = restored {
            r.restore(p)?;
        }
        r.flush_persist();
        Ok(r)
    }

    /// Feeds one input. A malformed, forged or protocol-violating peer message is an `Err`
    /// and leaves the replica as it was; so is a transaction the application refuses.
    pub fn step(&mut self, input: Input) -> Result<(), LedgerError> {
        let r = match input {
            Input::Request(tx) => self.on_request(tx),
            Input::Peer { from, msg } => self.on_peer(from, &msg),
            Input::Tick { now_ms } => {
                self.on_tick(now_ms);
                Ok(())
            }
        };
        self.flush_persist();
        r
    }

    /// The actions produced so far, in the order they must be executed.
    pub fn drain_actions(&mut self) -> impl Iterator<Item = Action> + '_ {
        self.flush_forwards();
        self.flush_persist();
        self.actions.drain(..)
    }

    /// When the replica next needs a [`Input::Tick`], if it is waiting for anything.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let mut d = self.vc_deadline;
        let mut consider = |t: u64| d = Some(d.map_or(t, |x| x.min(t)));
        if self.arm_vc_on_tick {
            consider(self.now);
        }
        if self.is_primary()
            && self.active
            && self.can_propose_now_or_later()
            && let Some(since) = self.batch_since
        {
            consider(since.saturating_add(self.cfg.batch_delay_ms));
        }
        if self.has_work() {
            consider(self.last_progress.max(self.last_retransmit) + self.cfg.retransmit_ms);
        } else {
            consider(self.last_heartbeat + self.cfg.view_change_timeout_ms);
        }
        d
    }

    /// The current view.
    pub fn view(&self) -> u64 {
        self.view
    }

    /// Whether the replica is in normal operation (not changing view).
    pub fn is_view_active(&self) -> bool {
        self.active
    }

    /// The last executed height.
    pub fn last_executed(&self) -> u64 {
        self.last_exec
    }

    /// The hash of the last executed block (the genesis hash before height 1).
    pub fn last_block_hash(&self) -> Hash {
        self.last_hash
    }

    /// The height of the last stable checkpoint (the low watermark).
    pub fn stable_checkpoint(&self) -> &CheckpointCert {
        &self.stable
    }

    /// The replicated application.
    pub fn app(&self) -> &A {
        &self.app
    }

    /// The configuration.
    pub fn config(&self) -> &ReplicaConfig {
        &self.cfg
    }

    /// Transactions waiting to be committed (including those proposed but not yet committed).
    pub fn pending_len(&self) -> usize {
        self.pending_by_id.len() + self.in_flight.len()
    }

    // ----- helpers -----

    fn me(&self) -> ReplicaId {
        self.cfg.id
    }

    fn is_primary(&self) -> bool {
        self.cfg.primary(self.view) == self.me()
    }

    fn persist(&mut self, r: Record) {
        self.persist_buf.push(r);
    }

    fn flush_persist(&mut self) {
        if !self.persist_buf.is_empty() {
            let recs = std::mem::take(&mut self.persist_buf);
            self.actions.push(Action::Persist(recs));
        }
    }

    fn emit(&mut self, a: Action) {
        self.flush_persist();
        self.actions.push(a);
    }

    fn send(&mut self, to: Dest, msg: Vec<u8>) {
        self.emit(Action::Send { to, msg });
    }

    fn sign(&self, body: Body, digest: Option<Hash>) -> (Vec<u8>, Sig) {
        msg::encode(
            &self.cfg.chain_id,
            self.cfg.epoch,
            self.me(),
            body,
            digest,
            self.signer.as_ref(),
        )
    }

    fn digest_of(&self, height: u64, tx_root: &Hash, count: usize) -> Hash {
        proposal_digest(
            &self.cfg.chain_id,
            self.cfg.epoch,
            height,
            tx_root,
            count as u64,
        )
    }

    fn vote_msg(&self, kind: VoteKind, view: u64, height: u64, digest: &Hash) -> Vec<u8> {
        vote_bytes(
            &self.cfg.chain_id,
            self.cfg.epoch,
            kind,
            view,
            height,
            digest,
        )
    }

    /// Records (and persists) that this replica signs `digest` at (view, height). Returns
    /// false, and signs nothing, if it already signed another digest there.
    fn record_vote(&mut self, view: u64, height: u64, digest: Hash) -> bool {
        match self.my_votes.get(&(view, height)) {
            Some(d) if *d != digest => {
                tracing::error!(view, height, "refusing to sign a second digest");
                false
            }
            Some(_) => true,
            None => {
                self.my_votes.insert((view, height), digest);
                self.persist(Record::Vote {
                    view,
                    height,
                    digest,
                });
                true
            }
        }
    }

    fn vc_timeout(&self) -> u64 {
        self.cfg
            .view_change_timeout_ms
            .saturating_mul(1u64 << self.vc_attempts.min(MAX_BACKOFF_EXP))
    }

    fn has_work(&self) -> bool {
        !self.pending_by_id.is_empty() || self.has_work_besides_pending()
    }

    fn has_work_besides_pending(&self) -> bool {
        !self.active
            || !self.in_flight.is_empty()
            || self.log.range(self.last_exec + 1..).any(|(_, s)| {
                s.pp.as_ref().is_some_and(|p| p.view == self.view) || !s.commits.is_empty()
            })
            || self.ahead_count() > self.cfg.f
    }

    fn ahead_count(&self) -> usize {
        self.ahead.values().filter(|h| **h > self.last_exec).count()
    }

    /// Starts the view-change timer if there is outstanding work and it is not running.
    fn arm_timer(&mut self) {
        if self.active && self.vc_deadline.is_none() && self.has_work() {
            self.vc_deadline = Some(self.now + self.vc_timeout());
        }
    }

    fn can_propose_now_or_later(&self) -> bool {
        !self.pending_by_id.is_empty()
            && self.next_height <= self.low + self.cfg.watermark_window
            && self.next_height <= self.last_exec + self.cfg.max_in_flight
    }

    fn in_window(&self, height: u64) -> bool {
        height > self.low && height <= self.low + self.cfg.watermark_window
    }

    // ----- client requests -----

    fn on_request(&mut self, tx: Vec<u8>) -> Result<(), LedgerError> {
        if tx.len() > self.cfg.max_batch_bytes {
            return Err(LedgerError::TxRejected {
                code: "too-large",
                reason: "transaction exceeds max_batch_bytes".into(),
            });
        }
        let id = self
            .app
            .check_tx(&tx)
            .map_err(|r| LedgerError::TxRejected {
                code: r.code,
                reason: r.reason,
            })?;
        if self.pending_by_id.contains_key(&id) || self.in_flight.contains_key(&id) {
            self.local.insert(id);
            return Ok(());
        }
        if self.pending_len() >= self.cfg.max_pending_txs {
            return Err(LedgerError::TxRejected {
                code: OVERLOADED,
                reason: "the pending pool is full; retry later".into(),
            });
        }
        self.local.insert(id);
        self.add_pending(id, tx.clone());
        if self.is_primary() && self.active {
            self.try_propose();
        } else {
            self.forward_buf.push(tx);
        }
        self.arm_timer();
        Ok(())
    }

    /// Relays the buffered client transactions, in submission order, in as few messages as
    /// the batch limits allow.
    fn flush_forwards(&mut self) {
        if self.forward_buf.is_empty() {
            return;
        }
        let txs = std::mem::take(&mut self.forward_buf);
        if self.is_primary() && self.active {
            // Became the primary within the turn: the transactions are pending here already.
            self.try_propose();
            return;
        }
        let to = self.forward_dest();
        for chunk in self.forward_chunks(txs) {
            let (m, _) = self.sign(Body::Forward { txs: chunk }, None);
            self.send(to, m);
        }
    }

    /// Splits transactions into `Forward` bodies within `max_batch_txs` and `max_batch_bytes`
    /// (a single transaction is at most `max_batch_bytes`, checked on admission).
    fn forward_chunks(&self, txs: Vec<Vec<u8>>) -> Vec<Vec<Vec<u8>>> {
        let mut out: Vec<Vec<Vec<u8>>> = Vec::new();
        let mut bytes = 0usize;
        for tx in txs {
            let full = out.last().is_none_or(|c| {
                c.len() >= self.cfg.max_batch_txs || bytes + tx.len() > self.cfg.max_batch_bytes
            });
            if full {
                out.push(Vec::new());
                bytes = 0;
            }
            bytes += tx.len();
            out.last_mut()
                .expect("invariant: a chunk was just pushed")
                .push(tx);
        }
        out
    }

    fn add_pending(&mut self, id: Hash, bytes: Vec<u8>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.insert(seq, id);
        self.pending_by_id.insert(id, PendingTx { seq, bytes });
        if self.batch_since.is_none() {
            self.batch_since = Some(self.now);
        }
    }

    fn on_forward(&mut self, from: ReplicaId, txs: Vec<Vec<u8>>) -> Result<(), LedgerError> {
        if txs.len() > self.cfg.max_batch_txs {
            return Err(LedgerError::InvalidProposal(
                "forward: more transactions than max_batch_txs".into(),
            ));
        }
        let mut bad = 0usize;
        for tx in txs {
            if self.pending_len() >= self.cfg.max_pending_txs {
                break;
            }
            match self.app.check_tx(&tx) {
                Ok(id) => {
                    if !self.pending_by_id.contains_key(&id) && !self.in_flight.contains_key(&id) {
                        self.add_pending(id, tx);
                    }
                }
                Err(_) => bad += 1,
            }
        }
        if self.is_primary() && self.active {
            self.try_propose();
        }
        // A backup holding a relayed transaction starts its timer, as for a client's own
        // (Castro–Liskov): if the primary does not order it, the primary is replaced.
        self.arm_timer();
        if bad > 0 {
            return Err(LedgerError::InvalidProposal(format!(
                "forward from {from}: {bad} transactions refused by the application"
            )));
        }
        Ok(())
    }

    /// Moves transactions the application now refuses (committed through another path, or
    /// their nonce used by another transaction) out of the pending pool.
    fn recheck_pending(&mut self) {
        let ids: Vec<Hash> = self.pending_by_id.keys().copied().collect();
        for id in ids {
            let ok = self
                .pending_by_id
                .get(&id)
                .map(|p| self.app.recheck_tx(&p.bytes).is_ok())
                .unwrap_or(true);
            if !ok && let Some(p) = self.pending_by_id.remove(&id) {
                self.pending.remove(&p.seq);
            }
        }
    }

    /// Returns proposed-but-uncommitted transactions to the pending pool (after a view change
    /// or a checkpoint restore).
    fn requeue_in_flight(&mut self) {
        for (id, p) in std::mem::take(&mut self.in_flight) {
            self.pending.insert(p.seq, id);
            self.pending_by_id.insert(id, p);
        }
        if !self.pending_by_id.is_empty() && self.batch_since.is_none() {
            self.batch_since = Some(self.now);
        }
    }

    fn take_in_flight(&mut self, txs: &[Vec<u8>]) {
        for tx in txs {
            let id = tx_id(tx);
            if let Some(p) = self.pending_by_id.remove(&id) {
                self.pending.remove(&p.seq);
                self.in_flight.insert(id, p);
            }
        }
    }

    // ----- normal case -----

    fn try_propose(&mut self) {
        if !(self.is_primary() && self.active) {
            return;
        }
        while self.can_propose_now_or_later() {
            let full = self.pending_by_id.len() >= self.cfg.max_batch_txs;
            let since = self.batch_since.unwrap_or(self.now);
            if !full && self.now < since.saturating_add(self.cfg.batch_delay_ms) {
                return;
            }
            let mut txs = Vec::new();
            let mut bytes = 0usize;
            while let Some((&seq, &id)) = self.pending.first_key_value() {
                let len = self.pending_by_id.get(&id).map_or(0, |p| p.bytes.len());
                if txs.len() >= self.cfg.max_batch_txs
                    || (bytes + len > self.cfg.max_batch_bytes && !txs.is_empty())
                {
                    break;
                }
                self.pending.remove(&seq);
                if let Some(p) = self.pending_by_id.remove(&id) {
                    bytes += p.bytes.len();
                    txs.push(p.bytes.clone());
                    self.in_flight.insert(id, p);
                }
            }
            if txs.is_empty() {
                break;
            }
            let height = self.next_height;
            let view = self.view;
            let tx_root = merkle::root(&txs);
            let digest = self.digest_of(height, &tx_root, txs.len());
            if !self.record_vote(view, height, digest) {
                // Cannot happen: next_height is above every height voted in this view.
                self.next_height += 1;
                continue;
            }
            let body = Body::PrePrepare { view, height, txs };
            let sig =
                Sig(self
                    .signer
                    .sign(&self.vote_msg(VoteKind::PrePrepare, view, height, &digest)));
            let env = Envelope {
                chain_id: self.cfg.chain_id.clone(),
                epoch: self.cfg.epoch,
                from: self.me(),
                body,
                sig,
            };
            let wire = msg::encode_envelope(&env);
            let Body::PrePrepare { txs, .. } = env.body else {
                unreachable!("invariant: the body was built as a pre-prepare")
            };
            tracing::debug!(view, height, txs = txs.len(), "proposing");
            let slot = self.log.entry(height).or_default();
            slot.pp = Some(Proposal {
                view,
                digest,
                tx_root,
                txs,
                primary_sig: sig,
            });
            slot.out.push(wire.clone());
            self.send(Dest::All, wire);
            self.next_height += 1;
            self.check_progress(height);
        }
        self.batch_since = if self.pending_by_id.is_empty() {
            None
        } else {
            Some(self.batch_since.unwrap_or(self.now))
        };
        self.arm_timer();
    }

    fn on_peer(&mut self, _transport_from: ReplicaId, bytes: &[u8]) -> Result<(), LedgerError> {
        let env = msg::decode(bytes, self.cfg.max_message_bytes)?;
        if env.chain_id != self.cfg.chain_id {
            return Err(LedgerError::WrongChain);
        }
        if env.epoch != self.cfg.epoch {
            return Err(LedgerError::WrongEpoch {
                got: env.epoch,
                want: self.cfg.epoch,
            });
        }
        if env.from as usize >= self.cfg.n() {
            return Err(LedgerError::UnknownReplica(env.from));
        }
        if env.from == self.me() {
            return Ok(());
        }
        let from = env.from;
        let sig = env.sig;
        // Pre-prepares are checked inside their handler (the digest needs the Merkle root).
        if !matches!(env.body, Body::PrePrepare { .. }) {
            let m = msg::signing_bytes(&self.cfg.chain_id, self.cfg.epoch, from, &env.body, None);
            if !self.verifier.verify(from, &m, &sig.0) {
                return Err(LedgerError::BadSignature(env.body.name()));
            }
        }
        match env.body {
            Body::Forward { txs } => self.on_forward(from, txs),
            Body::PrePrepare { view, height, txs } => {
                self.on_pre_prepare(from, view, height, txs, sig)
            }
            Body::Prepare {
                view,
                height,
                digest,
            } => self.on_prepare(from, view, height, digest, sig),
            Body::Commit {
                view,
                height,
                digest,
            } => self.on_commit(from, view, height, digest, sig),
            Body::Checkpoint {
                height,
                block_hash,
                state_root,
            } => self.on_checkpoint(from, height, block_hash, state_root, sig),
            Body::ViewChange(vc) => self.on_view_change(from, vc, sig),
            Body::NewView(nv) => self.on_new_view(from, nv, bytes),
            Body::FetchNewView { view } => {
                self.on_fetch_new_view(from, view);
                Ok(())
            }
            Body::StateRequest {
                have,
                low,
                view,
                active,
            } => {
                self.on_state_request(from, have, low, view, active);
                Ok(())
            }
            Body::StableCheckpoint(cert) => self.on_stable_checkpoint(cert),
            Body::StateResponse(resp) => self.on_state_response(resp),
        }
    }

    /// A normal-case message for a view this replica has not entered: ask its sender for the
    /// new-view message (once per view until the next retransmission round).
    fn note_future_view(&mut self, from: ReplicaId, view: u64) {
        if (view > self.view || (view == self.view && !self.active)) && view > self.fetched_new_view
        {
            self.fetched_new_view = view;
            let (m, _) = self.sign(Body::FetchNewView { view }, None);
            self.send(Dest::One(from), m);
        }
    }

    fn on_pre_prepare(
        &mut self,
        from: ReplicaId,
        view: u64,
        height: u64,
        txs: Vec<Vec<u8>>,
        sig: Sig,
    ) -> Result<(), LedgerError> {
        if from != self.cfg.primary(view) {
            return Err(LedgerError::NotAllowed {
                from,
                what: "pre-prepare",
                view,
            });
        }
        if view != self.view || !self.active {
            self.note_future_view(from, view);
            return Ok(());
        }
        if !self.in_window(height) {
            self.note_ahead(from, height);
            return Ok(());
        }
        let bytes: usize = txs.iter().map(Vec::len).sum();
        if txs.len() > self.cfg.max_batch_txs || bytes > self.cfg.max_batch_bytes {
            return Err(LedgerError::InvalidProposal(format!(
                "height {height}: batch exceeds the configured limits"
            )));
        }
        let tx_root = merkle::root(&txs);
        let digest = self.digest_of(height, &tx_root, txs.len());
        let m = self.vote_msg(VoteKind::PrePrepare, view, height, &digest);
        if !self.verifier.verify(from, &m, &sig.0) {
            return Err(LedgerError::BadSignature("pre-prepare"));
        }
        if let Some(pp) = self.log.get(&height).and_then(|s| s.pp.as_ref())
            && pp.view == view
        {
            return if pp.digest == digest {
                Ok(())
            } else {
                Err(LedgerError::Equivocation { from, view, height })
            };
        }
        if height <= self.last_exec {
            return Ok(());
        }
        if let Some(d) = self.my_votes.get(&(view, height))
            && *d != digest
        {
            return Err(LedgerError::Equivocation { from, view, height });
        }
        let mut ids = BTreeSet::new();
        for (i, tx) in txs.iter().enumerate() {
            match self.app.check_tx(tx) {
                Ok(id) => {
                    if !ids.insert(id) {
                        self.suspect_primary();
                        return Err(LedgerError::InvalidProposal(format!(
                            "height {height}: transaction {i} appears twice"
                        )));
                    }
                }
                Err(r) if self.cfg.fatal_reject_codes.contains(&r.code) => {
                    self.suspect_primary();
                    return Err(LedgerError::InvalidProposal(format!(
                        "height {height}: transaction {i} refused ({})",
                        r.code
                    )));
                }
                // Valid-looking but refused against this replica's state, which may lag or
                // lead the primary's (pipelining): ordering it is harmless, apply_block will
                // reject it deterministically on every replica.
                Err(_) => {}
            }
        }
        self.accept_proposal(
            height,
            Proposal {
                view,
                digest,
                tx_root,
                txs,
                primary_sig: sig,
            },
        );
        Ok(())
    }

    /// The primary proposed something invalid: start the view-change timer now.
    fn suspect_primary(&mut self) {
        if self.active && self.vc_deadline.is_none() {
            self.vc_deadline = Some(self.now + self.vc_timeout());
        }
    }

    /// Accepts a (verified) proposal as a backup and sends a prepare.
    fn accept_proposal(&mut self, height: u64, p: Proposal) {
        let (view, digest) = (p.view, p.digest);
        if !self.record_vote(view, height, digest) {
            return;
        }
        self.take_in_flight(&p.txs);
        let slot = self.log.entry(height).or_default();
        slot.pp = Some(p);
        let (m, sig) = self.sign(
            Body::Prepare {
                view,
                height,
                digest,
            },
            None,
        );
        let me = self.me();
        let slot = self.log.entry(height).or_default();
        slot.prepares
            .entry((view, digest))
            .or_default()
            .insert(me, sig);
        slot.prepare_voters.insert((view, me), digest);
        slot.out.push(m.clone());
        self.send(Dest::All, m);
        self.arm_timer();
        self.check_progress(height);
    }

    fn on_prepare(
        &mut self,
        from: ReplicaId,
        view: u64,
        height: u64,
        digest: Hash,
        sig: Sig,
    ) -> Result<(), LedgerError> {
        if from == self.cfg.primary(view) {
            return Err(LedgerError::NotAllowed {
                from,
                what: "prepare",
                view,
            });
        }
        if view != self.view || !self.active {
            self.note_future_view(from, view);
            return Ok(());
        }
        if !self.in_window(height) {
            self.note_ahead(from, height);
            return Ok(());
        }
        let slot = self.log.entry(height).or_default();
        match slot.prepare_voters.get(&(view, from)) {
            Some(d) if *d != digest => {
                return Err(LedgerError::Equivocation { from, view, height });
            }
            Some(_) => return Ok(()),
            None => {}
        }
        slot.prepare_voters.insert((view, from), digest);
        slot.prepares
            .entry((view, digest))
            .or_default()
            .insert(from, sig);
        self.check_progress(height);
        Ok(())
    }

    fn on_commit(
        &mut self,
        from: ReplicaId,
        view: u64,
        height: u64,
        digest: Hash,
        sig: Sig,
    ) -> Result<(), LedgerError> {
        if view > self.view || (view == self.view && !self.active) {
            self.note_future_view(from, view);
        }
        if view > self.view {
            return Ok(());
        }
        if !self.in_window(height) {
            self.note_ahead(from, height);
            return Ok(());
        }
        let slot = self.log.entry(height).or_default();
        match slot.commit_voters.get(&(view, from)) {
            Some(d) if *d != digest => {
                return Err(LedgerError::Equivocation { from, view, height });
            }
            Some(_) => return Ok(()),
            None => {}
        }
        slot.commit_voters.insert((view, from), digest);
        slot.commits
            .entry((view, digest))
            .or_default()
            .insert(from, sig);
        self.check_progress(height);
        Ok(())
    }

    /// A peer is working at `height`, beyond this replica's window.
    fn note_ahead(&mut self, from: ReplicaId, height: u64) {
        if height > self.low + self.cfg.watermark_window {
            let e = self.ahead.entry(from).or_insert(0);
            *e = (*e).max(height);
            if self.ahead_count() > self.cfg.f {
                self.request_state();
            }
        }
    }

    fn check_progress(&mut self, height: u64) {
        let quorum = self.cfg.quorum();
        let need_prepares = 2 * self.cfg.f;
        let primary = self.cfg.primary(self.view);
        let me = self.me();
        let mut send_commit = None;
        if let Some(slot) = self.log.get_mut(&height)
            && let Some(pp) = &slot.pp
        {
            let prepared = pp.view == self.view
                && self.active
                && slot.prepared_view != Some(pp.view)
                && slot
                    .prepares
                    .get(&(pp.view, pp.digest))
                    .map_or(0, |m| m.keys().filter(|r| **r != primary).count())
                    >= need_prepares;
            if prepared {
                slot.prepared_view = Some(pp.view);
                let prepares: Vec<(ReplicaId, Sig)> = slot
                    .prepares
                    .get(&(pp.view, pp.digest))
                    .into_iter()
                    .flatten()
                    .filter(|(r, _)| **r != primary)
                    .take(need_prepares)
                    .map(|(r, s)| (*r, *s))
                    .collect();
                let cert = PreparedCert {
                    view: pp.view,
                    height,
                    digest: pp.digest,
                    txs: Some(pp.txs.clone()),
                    primary_sig: pp.primary_sig,
                    prepares,
                };
                send_commit = Some((pp.view, pp.digest, cert));
            }
        }
        if let Some((view, digest, cert)) = send_commit {
            self.prepared.insert(height, cert.clone());
            self.persist(Record::Prepared(cert));
            if self.record_vote(view, height, digest) {
                let (m, sig) = self.sign(
                    Body::Commit {
                        view,
                        height,
                        digest,
                    },
                    None,
                );
                let slot = self.log.entry(height).or_default();
                slot.commit_voters.insert((view, me), digest);
                slot.commits
                    .entry((view, digest))
                    .or_default()
                    .insert(me, sig);
                slot.out.push(m.clone());
                self.send(Dest::All, m);
            }
        }
        let _ = quorum;
        self.try_execute();
    }

    /// Executes every consecutive committed height.
    fn try_execute(&mut self) {
        let quorum = self.cfg.quorum();
        let mut progressed = false;
        loop {
            let h = self.last_exec + 1;
            let Some(slot) = self.log.get(&h) else { break };
            let Some(((view, digest), sigs)) = slot
                .commits
                .iter()
                .find(|(_, m)| m.len() >= quorum)
                .map(|(k, m)| (*k, m))
            else {
                break;
            };
            let cert = CommitCert {
                view,
                sigs: sigs.iter().take(quorum).map(|(r, s)| (*r, *s)).collect(),
            };
            let batch = match &slot.pp {
                Some(pp) if pp.digest == digest => Some((pp.txs.clone(), pp.tx_root)),
                _ => self
                    .prepared
                    .get(&h)
                    .filter(|c| c.digest == digest)
                    .and_then(|c| c.txs.as_ref())
                    .map(|txs| (txs.clone(), merkle::root(txs))),
            };
            let Some((txs, tx_root)) = batch else {
                // Committed by a quorum but this replica never saw the batch: fetch it.
                self.request_state();
                break;
            };
            self.execute(txs, tx_root, cert, true);
            progressed = true;
        }
        if progressed {
            self.on_progress();
        }
    }

    fn on_progress(&mut self) {
        self.last_progress = self.now;
        if self.active {
            // Progress in the current view: the back-off restarts and the timer re-arms only
            // if work remains. (While changing view the view-change timer keeps running.)
            self.vc_attempts = 0;
            self.vc_deadline = None;
            self.arm_timer();
            self.try_propose();
        }
    }

    /// Applies the block at `last_exec + 1` and emits its effects. `emit` is false while
    /// replaying persisted blocks on restart.
    fn execute(&mut self, txs: Vec<Vec<u8>>, tx_root: Hash, cert: CommitCert, emit: bool) {
        let height = self.last_exec + 1;
        let (outcomes, state_root) = self.app.apply_block(height, &txs);
        assert_eq!(
            outcomes.len(),
            txs.len(),
            "invariant: App::apply_block returns one outcome per transaction"
        );
        let header = BlockHeader {
            chain_id: self.cfg.chain_id.clone(),
            epoch: self.cfg.epoch,
            height,
            prev_hash: self.last_hash,
            tx_root,
            tx_count: txs.len() as u64,
            state_root,
        };
        let block_hash = header.hash();
        let block = CommittedBlock { header, txs, cert };
        self.last_exec = height;
        self.last_hash = block_hash;
        let mut replies = Vec::new();
        for (i, (tx, outcome)) in block.txs.iter().zip(outcomes).enumerate() {
            let id = tx_id(tx);
            if let Some(p) = self.pending_by_id.remove(&id) {
                self.pending.remove(&p.seq);
            }
            self.in_flight.remove(&id);
            if self.local.remove(&id) && emit {
                replies.push((id, i as u32, outcome));
            }
        }
        if emit {
            self.persist(Record::Block(block.clone()));
            // The block first, then its replies (a driver answers them from the block).
            self.emit(Action::Commit(Box::new(block.clone())));
            for (id, i, outcome) in replies {
                self.actions_reply(id, height, i, outcome);
            }
        }
        let header = block.header.clone();
        self.blocks.insert(height, block);
        if height.is_multiple_of(self.cfg.checkpoint_interval) {
            let snapshot = self.app.snapshot();
            self.own_checkpoints.insert(height, (header, snapshot));
            self.send_checkpoint(height, block_hash, state_root);
        }
    }

    fn actions_reply(&mut self, tx_id: Hash, height: u64, index: u32, outcome: TxOutcome) {
        self.emit(Action::Reply {
            tx_id,
            height,
            index,
            outcome,
        });
    }

    // ----- checkpoints -----

    fn send_checkpoint(&mut self, height: u64, block_hash: Hash, state_root: Hash) {
        let (m, sig) = self.sign(
            Body::Checkpoint {
                height,
                block_hash,
                state_root,
            },
            None,
        );
        self.my_checkpoint_msg = Some(m.clone());
        self.send(Dest::All, m);
        let me = self.me();
        self.checkpoint_votes
            .entry(height)
            .or_default()
            .insert(me, (block_hash, state_root, sig));
        self.check_stable(height);
    }

    fn on_checkpoint(
        &mut self,
        from: ReplicaId,
        height: u64,
        block_hash: Hash,
        state_root: Hash,
        sig: Sig,
    ) -> Result<(), LedgerError> {
        if height == 0 || !height.is_multiple_of(self.cfg.checkpoint_interval) {
            return Err(LedgerError::InvalidCertificate(format!(
                "checkpoint at height {height} is not a multiple of the interval"
            )));
        }
        if height <= self.low {
            return Ok(());
        }
        if height > self.low + self.cfg.watermark_window {
            self.note_ahead(from, height);
            return Ok(());
        }
        let votes = self.checkpoint_votes.entry(height).or_default();
        if let Some((h, r, _)) = votes.get(&from) {
            if (*h, *r) != (block_hash, state_root) {
                return Err(LedgerError::Equivocation {
                    from,
                    view: 0,
                    height,
                });
            }
            return Ok(());
        }
        votes.insert(from, (block_hash, state_root, sig));
        if height > self.last_exec {
            let e = self.ahead.entry(from).or_insert(0);
            *e = (*e).max(height);
        }
        self.check_stable(height);
        Ok(())
    }

    fn check_stable(&mut self, height: u64) {
        if height <= self.low {
            return;
        }
        let quorum = self.cfg.quorum();
        let Some(votes) = self.checkpoint_votes.get(&height) else {
            return;
        };
        let mut groups: BTreeMap<(Hash, Hash), Vec<(ReplicaId, Sig)>> = BTreeMap::new();
        for (r, (h, s, sig)) in votes {
            groups.entry((*h, *s)).or_default().push((*r, *sig));
        }
        let Some(((block_hash, state_root), sigs)) =
            groups.into_iter().find(|(_, v)| v.len() >= quorum)
        else {
            return;
        };
        if height > self.last_exec {
            // A quorum is ahead of this replica: fetch the checkpoint and blocks.
            self.request_state();
            return;
        }
        let own = self.own_checkpoints.get(&height).cloned();
        let header = own
            .as_ref()
            .map(|(h, _)| h.clone())
            .or_else(|| self.blocks.get(&height).map(|b| b.header.clone()));
        let Some(header) = header else {
            return;
        };
        assert_eq!(
            header.hash(),
            block_hash,
            "invariant: this replica's block at checkpoint height {height} differs from a \
             quorum's (non-deterministic application or consensus bug)"
        );
        let cert = CheckpointCert {
            height,
            block_hash,
            state_root,
            sigs: sigs.into_iter().take(quorum).collect(),
        };
        let snapshot = own.map(|(_, s)| s);
        self.make_stable(cert, header, snapshot);
    }

    /// Adopts a stable checkpoint and garbage-collects everything at or below it.
    fn make_stable(
        &mut self,
        cert: CheckpointCert,
        header: BlockHeader,
        snapshot: Option<Vec<u8>>,
    ) {
        let h = cert.height;
        tracing::debug!(height = h, "stable checkpoint");
        if let Some(s) = &snapshot {
            self.persist(Record::Checkpoint(StableCheckpoint {
                cert: cert.clone(),
                header: header.clone(),
                snapshot: s.clone(),
            }));
        }
        self.persist(Record::Prune { through: h });
        let previous_low = self.low;
        self.low = h;
        self.stable = cert;
        self.stable_header = Some(header);
        self.stable_snapshot = snapshot;
        self.log = self.log.split_off(&(h + 1));
        self.prepared = self.prepared.split_off(&(h + 1));
        self.my_votes.retain(|(_, height), _| *height > h);
        // Executed blocks of the last checkpoint interval stay in memory, so a peer that is a
        // little behind the new checkpoint is sent blocks (and replies to its clients for the
        // transactions in them) rather than a snapshot (which skips those replies).
        self.blocks = self.blocks.split_off(&(previous_low.min(h) + 1));
        self.own_checkpoints = self.own_checkpoints.split_off(&(h + 1));
        self.checkpoint_votes = self.checkpoint_votes.split_off(&(h + 1));
        self.next_height = self.next_height.max(h + 1);
        self.try_propose();
    }

    // ----- time -----

    fn on_tick(&mut self, now: u64) {
        self.now = self.now.max(now);
        if self.arm_vc_on_tick {
            self.arm_vc_on_tick = false;
            self.last_progress = self.now;
            self.arm_view_change_timer();
        }
        if let Some(d) = self.vc_deadline
            && self.now >= d
            && self.active
            && !self.has_work_besides_pending()
        {
            // Only pending transactions keep the timer running. One the application now
            // refuses (another transaction used its nonce, e.g. one its sender submitted
            // through another replica) will never be ordered; it must not make this replica
            // leave the view alone, while the primary and the others have nothing to do.
            self.recheck_pending();
            if self.pending_by_id.is_empty() {
                self.vc_deadline = None;
            }
        }
        if let Some(d) = self.vc_deadline
            && self.now >= d
        {
            // Move to the next view, or straight to the highest view another replica has
            // asked for: joining it is always safe, and it lets replicas that fell behind in
            // a cascade of view changes meet the others again.
            let seen = self
                .latest_vc
                .values()
                .map(|s| s.vc.new_view)
                .max()
                .unwrap_or(0);
            let target = self.view.saturating_add(1).max(seen);
            tracing::info!(view = target, "view-change timer expired");
            self.start_view_change(target);
        }
        if self.active {
            self.join_lone_view_change();
        }
        if self.is_primary() && self.active {
            self.try_propose();
        }
        if !self.has_work() && self.now >= self.last_heartbeat + self.cfg.view_change_timeout_ms {
            // Idle heartbeat: ask whether anyone is ahead (peers answer only if they are), so
            // a replica that was cut off or restarted catches up without new traffic.
            self.last_heartbeat = self.now;
            self.state_deadline = None;
            self.request_state();
        }
        if self.has_work()
            && self.now >= self.last_progress.max(self.last_retransmit) + self.cfg.retransmit_ms
        {
            self.last_retransmit = self.now;
            self.retransmit();
        }
    }

    /// Joins the view after this one if a peer has asked for it alone for a while.
    ///
    /// The view-change timer of a replica that was cut off, or that alone held a transaction
    /// the primary never ordered, expires alone; it asks for the next view and, by
    /// `arm_view_change_timer`'s rule, stops there. Textbook PBFT leaves it there until the
    /// others change view for their own reasons, and it cannot come back: its view change may
    /// still be used in a new view, so it must not vote in a lower view again. Meanwhile it
    /// takes no part in consensus (it follows by state transfer), and the consortium has no
    /// fault margin left although every replica is up.
    ///
    /// So a replica working in view v that has seen a peer's view change for v+1 standing,
    /// without f others, for [`LONE_VIEW_WAIT_TIMEOUTS`] base timeouts starts a view change
    /// to v+1 itself; f+1 requests then bring the rest. Moving to a higher view is always
    /// safe; the cost is one view change, at most once per [`LONE_VIEW_GAP_TIMEOUTS`] base
    /// timeouts, which bounds how often a Byzantine peer can force one.
    fn join_lone_view_change(&mut self) {
        let base = self.cfg.view_change_timeout_ms;
        if self
            .last_lone_join
            .is_some_and(|t| self.now < t.saturating_add(LONE_VIEW_GAP_TIMEOUTS * base))
        {
            return;
        }
        let next = self.view.saturating_add(1);
        let me = self.me();
        let wait = LONE_VIEW_WAIT_TIMEOUTS * base;
        let lone = self
            .latest_vc
            .iter()
            .filter(|(r, s)| **r != me && s.vc.new_view == next)
            .find(|(r, _)| {
                self.vc_seen_at
                    .get(r)
                    .is_some_and(|t| self.now >= t.saturating_add(wait))
            })
            .map(|(r, _)| *r);
        if let Some(peer) = lone {
            tracing::info!(
                peer,
                view = next,
                "a peer has asked alone for the next view for a while; joining it so that it \
                 takes part in consensus again"
            );
            self.last_lone_join = Some(self.now);
            self.start_view_change(next);
        }
    }

    /// Re-sends this replica's own recent messages and asks peers for missing blocks.
    fn retransmit(&mut self) {
        self.fetched_new_view = 0;
        self.state_deadline = None;
        if !self.active {
            if let Some(m) = self.my_vc_msg.clone() {
                self.send(Dest::All, m);
            }
            // Keep relaying this replica's clients' transactions while it cannot order them
            // (the others may be working in a lower view it cannot return to).
            self.forward_local();
        } else {
            let msgs: Vec<Vec<u8>> = self
                .log
                .range(self.last_exec + 1..)
                .flat_map(|(_, s)| s.out.iter().cloned())
                .collect();
            for m in msgs {
                self.send(Dest::All, m);
            }
            if let Some((v, m)) = self.new_view_msg.clone()
                && v == self.view
                && self.is_primary()
            {
                self.send(Dest::All, m);
            }
            if !self.is_primary() {
                self.forward_local();
            }
        }
        if let Some(m) = self.my_checkpoint_msg.clone() {
            self.send(Dest::All, m);
        }
        self.request_state();
    }

    /// Where a client transaction submitted here goes: the primary in normal operation; every
    /// replica while this one is changing view. A replica changing view does not know which
    /// view (if any) the others work in: they may be in a lower view it can no longer enter
    /// (it has asked for a higher one), so it relays like a PBFT client whose request timed
    /// out, which broadcasts it to every replica. The primary orders it; backups hold it as
    /// pending and start their timers, so a primary that ignores it is replaced. The replica
    /// learns of the commit through commit votes and state transfer (certified blocks, valid
    /// in any view) and replies to its client.
    fn forward_dest(&self) -> Dest {
        if self.active {
            Dest::One(self.cfg.primary(self.view))
        } else {
            Dest::All
        }
    }

    /// Forwards this replica's own pending transactions (see [`Self::forward_dest`]).
    fn forward_local(&mut self) {
        let to = self.forward_dest();
        // In submission order: a client's transactions may depend on each other's order
        // (nonces), and the receiving primary proposes in the order it receives them.
        let txs: Vec<Vec<u8>> = self
            .pending
            .values()
            .filter(|id| self.local.contains(*id))
            .filter_map(|id| self.pending_by_id.get(id).map(|p| p.bytes.clone()))
            .collect();
        // Everything buffered is among them.
        self.forward_buf.clear();
        for chunk in self.forward_chunks(txs) {
            let (m, _) = self.sign(Body::Forward { txs: chunk }, None);
            self.send(to, m);
        }
    }

    // ----- restart -----

    fn restore(&mut self, p: PersistedState) -> Result<(), LedgerError> {
        let n = self.cfg.n();
        let quorum = self.cfg.quorum();
        self.view = p.view;
        self.active = p.view_active;
        if let Some(cp) = p.checkpoint {
            let h = cp.cert.height;
            if cp.header.height != h
                || cp.header.hash() != cp.cert.block_hash
                || cp.header.state_root != cp.cert.state_root
            {
                return Err(LedgerError::Corrupt(
                    "checkpoint header does not match its certificate".into(),
                ));
            }
            cp.cert
                .verify(
                    &self.cfg.chain_id,
                    self.cfg.epoch,
                    n,
                    quorum,
                    self.verifier.as_ref(),
                )
                .map_err(|e| LedgerError::Corrupt(format!("checkpoint: {e}")))?;
            self.app
                .restore(&cp.snapshot, &cp.cert.state_root)
                .map_err(|e| LedgerError::Corrupt(format!("snapshot: {}", e.reason)))?;
            self.low = h;
            self.last_exec = h;
            self.last_hash = cp.cert.block_hash;
            self.stable = cp.cert;
            self.stable_header = Some(cp.header);
            self.stable_snapshot = Some(cp.snapshot);
        }
        self.my_votes = p.votes;
        let low = self.low;
        self.my_votes.retain(|(_, h), _| *h > low);
        self.prepared = p.prepared.into_iter().filter(|(h, _)| *h > low).collect();
        for b in p.blocks {
            let h = b.header.height;
            if h <= self.last_exec {
                continue;
            }
            if h != self.last_exec + 1 || b.header.prev_hash != self.last_hash {
                return Err(LedgerError::Corrupt(format!(
                    "block {h} does not extend the persisted chain"
                )));
            }
            b.verify(
                &self.cfg.chain_id,
                self.cfg.epoch,
                n,
                quorum,
                self.verifier.as_ref(),
            )
            .map_err(|e| LedgerError::Corrupt(format!("block {h}: {e}")))?;
            let want = b.header.hash();
            self.execute(b.txs, b.header.tx_root, b.cert, false);
            if self.last_hash != want {
                return Err(LedgerError::Corrupt(format!(
                    "replaying block {h} gave a different header (state root)"
                )));
            }
        }
        let view = self.view;
        let max_voted = self
            .my_votes
            .keys()
            .filter(|(v, _)| *v == view)
            .map(|(_, h)| *h)
            .max()
            .unwrap_or(0);
        self.next_height = max_voted.max(self.last_exec).max(self.low) + 1;
        self.last_progress = 0;
        if !self.active {
            self.resend_view_change();
        }
        self.arm_vc_on_tick = !self.active;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(n: usize) -> ReplicaConfig {
        ReplicaConfig {
            validators: (0..n as u32)
                .map(crate::crypto::insecure_test_public_key)
                .collect(),
            ..ReplicaConfig::default()
        }
    }

    #[test]
    fn config_validation_names_fields() {
        cfg(4).validate().unwrap();
        let e = cfg(3).validate().unwrap_err().to_string();
        assert!(e.contains("validators"), "{e}");
        let mut c = cfg(4);
        c.id = 4;
        assert!(c.validate().unwrap_err().to_string().contains("id"));
        let mut c = cfg(4);
        c.watermark_window = 100;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("watermark_window")
        );
        let mut c = cfg(4);
        c.validators[1] = c.validators[0];
        assert!(c.validate().unwrap_err().to_string().contains("duplicate"));
        let mut c = cfg(4);
        c.chain_id.clear();
        assert!(c.validate().unwrap_err().to_string().contains("chain_id"));
    }

    #[test]
    fn quorum_sizes() {
        assert_eq!(cfg(4).quorum(), 3);
        let mut c = cfg(7);
        c.f = 2;
        assert_eq!(c.quorum(), 5);
        let mut c = cfg(1);
        c.f = 0;
        assert_eq!(c.quorum(), 1);
        assert_eq!(cfg(4).primary(5), 1);
    }
}
