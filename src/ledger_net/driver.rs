//! The driver: one task that owns the replica and its store, fed by one `select!` over a
//! closed `Event` enum, and that executes the replica's actions in order.
//!
//! The driver has no protocol logic. Per turn it:
//! 1. waits for an event: a peer message, a client submission, the replica's next deadline,
//!    or shutdown; then takes whatever else is already queued (bounded per turn);
//! 2. feeds each to [`Replica::step`] (a monotonic clock becomes [`Input::Tick`]);
//! 3. drains [`Replica::drain_actions`] and executes them: the records of every `Persist` of
//!    the turn go to the store in one atomic, fsync'd write **before** any `Send`, `Commit` or
//!    `Reply` of the turn, and the rest run in the order the replica emitted them. (Persisting
//!    a record earlier, or sending a message later, than the replica allows is always safe;
//!    one fsync per turn instead of one per persist is what keeps the disk off the critical
//!    path.) If the store fails, the driver stops: a replica must never send a vote it has not
//!    made durable.
//!
//! `Commit`s go to a broadcast channel (subscribers that fall behind see `Lagged`, memory stays
//! bounded); `Reply`s complete the waiting [`super::client::Client::submit`] calls with the
//! block's inclusion proof and commit certificate.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ehr_ledger::app::{App, Hash};
use ehr_ledger::block::CommittedBlock;
use ehr_ledger::error::LedgerError;
use ehr_ledger::merkle::MerkleTree;
use ehr_ledger::replica::{Action, Dest, Input, Record, Replica, tx_id};
use ehr_ledger::store::Store;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::client::{Client, Committed, Submission};
use super::error::NetError;
use super::handshake::{Identity, ValidatorSet};
use super::transport::{Connector, Inbound, Listener, Transport, TransportConfig};

/// Limits of the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverConfig {
    /// The transport's limits and timings.
    pub transport: TransportConfig,
    /// Client submissions queued before [`Client::submit`] reports overload.
    pub submit_capacity: usize,
    /// Committed blocks buffered per subscriber before it lags.
    pub commit_capacity: usize,
    /// Submissions waiting for their commit, at most.
    pub max_waiting: usize,
    /// Inputs fed to the replica per turn before its actions are executed.
    pub max_inputs_per_turn: usize,
    /// Recent committed blocks kept in memory to answer replies (older ones come from the
    /// store).
    pub recent_blocks: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            transport: TransportConfig::default(),
            submit_capacity: 16_384,
            commit_capacity: 1024,
            max_waiting: 200_000,
            max_inputs_per_turn: 512,
            recent_blocks: 64,
        }
    }
}

impl DriverConfig {
    /// Checks the limits; the error names the field.
    pub fn validate(&self) -> Result<(), NetError> {
        self.transport.validate()?;
        for (v, name) in [
            (self.submit_capacity, "submit_capacity"),
            (self.commit_capacity, "commit_capacity"),
            (self.max_waiting, "max_waiting"),
            (self.max_inputs_per_turn, "max_inputs_per_turn"),
            (self.recent_blocks, "recent_blocks"),
        ] {
            if v == 0 {
                return Err(NetError::Config(format!("{name} must be positive")));
            }
        }
        Ok(())
    }
}

/// What the node reports about its replica after every turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    /// The last executed height.
    pub height: u64,
    /// The hash of the block at `height` (the genesis hash at 0).
    pub head: Hash,
    /// The current view.
    pub view: u64,
    /// Whether the replica is in normal operation (not changing view).
    pub view_active: bool,
}

/// What subscribers of [`LedgerNode::subscribe`] receive, in ledger order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerEvent {
    /// A block was committed and executed.
    Committed(Arc<CommittedBlock>),
    /// The application state jumped to a checkpoint received from peers (state transfer): the
    /// blocks up to `height` were not delivered, so views built from commits must be rebuilt
    /// from the application state.
    StateRestored {
        /// The checkpoint height now executed.
        height: u64,
        /// The state root at that height.
        state_root: Hash,
    },
}

/// The one input source of the driver's loop.
#[derive(Debug)]
enum Event {
    /// A message from an authenticated peer.
    Peer(Inbound),
    /// A client submission.
    Client(Submission),
    /// The replica's deadline passed.
    Timer,
    /// Stop.
    Shutdown,
}

/// A running ledger replica: transport, driver task, client entry point and commit feed.
/// Dropping it stops the node (prefer [`LedgerNode::shutdown`] to learn how it ended).
#[derive(Debug)]
pub struct LedgerNode {
    id: u32,
    submit: mpsc::Sender<Submission>,
    commits: broadcast::Sender<LedgerEvent>,
    status: watch::Receiver<Status>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), NetError>>>,
}

impl LedgerNode {
    /// Starts a replica: its transport on `listener` (dialling `addrs`, one per validator in
    /// replica-id order) and its driver task. `replica` must have been built from what `store`
    /// holds (see [`ehr_ledger::store::Store::load`]); `identity` and `validators` must agree
    /// with the replica's configuration.
    #[allow(clippy::too_many_arguments)]
    pub fn start<A, S, L, C>(
        cfg: DriverConfig,
        replica: Replica<A>,
        store: S,
        identity: Arc<Identity>,
        validators: Arc<ValidatorSet>,
        addrs: Vec<String>,
        listener: L,
        connector: C,
    ) -> Result<Self, NetError>
    where
        A: App + Send + 'static,
        S: Store + Send + 'static,
        L: Listener,
        C: Connector,
    {
        cfg.validate()?;
        let rc = replica.config();
        if rc.id != identity.id()
            || rc.validators.get(rc.id as usize) != Some(&identity.public().to_bytes())
        {
            return Err(NetError::Config(
                "identity: not the replica's id and key".into(),
            ));
        }
        let keys: Vec<[u8; 32]> = validators.keys().iter().map(|k| k.to_bytes()).collect();
        if keys != rc.validators || validators.chain_id() != rc.chain_id {
            return Err(NetError::Config(
                "validators: the network's chain id and keys differ from the replica's".into(),
            ));
        }
        let (transport, inbound) = Transport::start(
            cfg.transport.clone(),
            identity.clone(),
            validators,
            addrs,
            listener,
            connector,
        )?;
        let (submit, submissions) = mpsc::channel(cfg.submit_capacity);
        let (commits, _) = broadcast::channel(cfg.commit_capacity);
        let (status_tx, status) = watch::channel(status_of(&replica));
        let (stop, stop_rx) = oneshot::channel();
        let driver = Driver {
            cfg,
            replica,
            store,
            transport,
            commits: commits.clone(),
            status: status_tx,
            waiting: HashMap::new(),
            recent: VecDeque::new(),
            clock: Instant::now(),
            last_tick: 0,
            loopback: VecDeque::new(),
        };
        let id = identity.id();
        let task = tokio::spawn(driver.run(inbound, submissions, stop_rx));
        Ok(Self {
            id,
            submit,
            commits,
            status,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// This replica's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// A handle for submitting transactions to this replica, each waiting at most `timeout`.
    pub fn client(&self, timeout: Duration) -> Client {
        Client::new(self.submit.clone(), timeout)
    }

    /// A feed of committed blocks (and state-transfer jumps), in height order, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LedgerEvent> {
        self.commits.subscribe()
    }

    /// The replica's status after the driver's last turn.
    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// A watch of [`LedgerNode::status`] (e.g. to wait for a height).
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Whether the driver has stopped (by shutdown or failure).
    pub fn is_stopped(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the driver and the transport; returns how the driver ended.
    pub async fn shutdown(mut self) -> Result<(), NetError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(t) => t
                .await
                .unwrap_or_else(|e| Err(NetError::Store(format!("driver task failed: {e}")))),
            None => Ok(()),
        }
    }
}

impl Drop for LedgerNode {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

fn status_of<A: App>(r: &Replica<A>) -> Status {
    Status {
        height: r.last_executed(),
        head: r.last_block_hash(),
        view: r.view(),
        view_active: r.is_view_active(),
    }
}

type Waiter = oneshot::Sender<Result<Committed, NetError>>;

struct Driver<A: App, S: Store> {
    cfg: DriverConfig,
    replica: Replica<A>,
    store: S,
    transport: Transport,
    commits: broadcast::Sender<LedgerEvent>,
    status: watch::Sender<Status>,
    waiting: HashMap<Hash, Vec<Waiter>>,
    recent: VecDeque<Arc<CommittedBlock>>,
    clock: Instant,
    last_tick: u64,
    /// Messages the replica addressed to itself, fed back as peer input next turn.
    loopback: VecDeque<Vec<u8>>,
}

impl<A: App, S: Store> Driver<A, S> {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut submissions: mpsc::Receiver<Submission>,
        mut stop: oneshot::Receiver<()>,
    ) -> Result<(), NetError> {
        info!(
            replica = self.transport.me(),
            height = self.replica.last_executed(),
            "ledger driver started"
        );
        let now = self.now_ms();
        self.tick(now);
        // Actions produced while restoring (re-sent votes) go out first.
        self.execute()?;
        loop {
            let wake = self.replica.next_deadline_ms().map(|d| {
                // Never wake for a time already ticked: at least one millisecond later.
                self.clock + Duration::from_millis(d.max(self.last_tick + 1))
            });
            let event = tokio::select! {
                _ = &mut stop => Event::Shutdown,
                m = inbound.recv() => m.map_or(Event::Shutdown, Event::Peer),
                s = submissions.recv() => s.map_or(Event::Shutdown, Event::Client),
                _ = sleep_until(wake) => Event::Timer,
            };
            if matches!(event, Event::Shutdown) {
                break;
            }
            let now = self.now_ms();
            if now > self.last_tick {
                self.tick(now);
            }
            self.handle(event);
            // Take what is already queued, so one fsync covers many inputs.
            for _ in 1..self.cfg.max_inputs_per_turn {
                let ev = if let Ok(m) = inbound.try_recv() {
                    Event::Peer(m)
                } else if let Ok(s) = submissions.try_recv() {
                    Event::Client(s)
                } else {
                    break;
                };
                self.handle(ev);
            }
            while let Some(msg) = self.loopback.pop_front() {
                self.handle(Event::Peer(Inbound {
                    from: self.transport.me(),
                    msg,
                }));
            }
            self.execute()?;
        }
        info!(replica = self.transport.me(), "ledger driver stopped");
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn tick(&mut self, now_ms: u64) {
        self.last_tick = now_ms;
        if let Err(e) = self.replica.step(Input::Tick { now_ms }) {
            warn!(error = %e, "replica refused a tick");
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Peer(Inbound { from, msg }) => {
                if let Err(e) = self.replica.step(Input::Peer { from, msg }) {
                    debug!(peer = from, error = %e, "peer message refused");
                }
            }
            Event::Client(Submission { tx, reply }) => self.submit(tx, reply),
            // The wake-up time is after the last tick, so the turn's tick (in `run`) has
            // already given the replica the time it waited for.
            Event::Timer => {}
            Event::Shutdown => {}
        }
    }

    fn submit(&mut self, tx: Vec<u8>, reply: Waiter) {
        if self.waiting.len() >= self.cfg.max_waiting {
            self.waiting.retain(|_, ws| {
                ws.retain(|w| !w.is_closed());
                !ws.is_empty()
            });
            if self.waiting.len() >= self.cfg.max_waiting {
                let _ = reply.send(Err(NetError::Overloaded));
                return;
            }
        }
        let id = tx_id(&tx);
        match self.replica.step(Input::Request(tx)) {
            Ok(()) => self.waiting.entry(id).or_default().push(reply),
            Err(e) => {
                let _ = reply.send(Err(match e {
                    LedgerError::TxRejected {
                        code: ehr_ledger::replica::OVERLOADED,
                        ..
                    } => NetError::Overloaded,
                    e => NetError::Refused(e.to_string()),
                }));
            }
        }
    }

    /// Executes the replica's pending actions (see the module docs for the order).
    fn execute(&mut self) -> Result<(), NetError> {
        let actions: Vec<Action> = self.replica.drain_actions().collect();
        if actions.is_empty() {
            return Ok(());
        }
        let mut records: Vec<Record> = Vec::new();
        for a in &actions {
            if let Action::Persist(rs) = a {
                records.extend(rs.iter().cloned());
            }
        }
        if !records.is_empty() {
            persist(&mut self.store, &records).map_err(|e| {
                error!(error = %e, "cannot persist consensus records; stopping the driver");
                NetError::Store(e.to_string())
            })?;
        }
        // Replies come block by block: each block's Merkle tree is built once for all of them
        // (proving every transaction from scratch was quadratic in the block).
        let mut proofs: Option<(Arc<CommittedBlock>, MerkleTree)> = None;
        for a in actions {
            match a {
                Action::Persist(_) => {}
                Action::Send { to: Dest::All, msg } => self.transport.broadcast(Bytes::from(msg)),
                Action::Send {
                    to: Dest::One(id),
                    msg,
                } => {
                    if id == self.transport.me() {
                        self.loopback.push_back(msg);
                    } else {
                        self.transport.send(id, Bytes::from(msg));
                    }
                }
                Action::Commit(block) => {
                    let block: Arc<CommittedBlock> = Arc::new(*block);
                    self.recent.push_back(block.clone());
                    while self.recent.len() > self.cfg.recent_blocks {
                        self.recent.pop_front();
                    }
                    // No subscriber is not an error.
                    let _ = self.commits.send(LedgerEvent::Committed(block));
                }
                Action::StateRestored { height, state_root } => {
                    info!(height, "state restored from a checkpoint of the peers");
                    let _ = self
                        .commits
                        .send(LedgerEvent::StateRestored { height, state_root });
                }
                Action::Reply {
                    tx_id,
                    height,
                    index,
                    outcome,
                } => {
                    let Some(waiters) = self.waiting.remove(&tx_id) else {
                        continue;
                    };
                    if proofs
                        .as_ref()
                        .is_none_or(|(b, _)| b.header.height != height)
                    {
                        proofs = None;
                        match self.block_at(height) {
                            Ok(b) => {
                                let tree = MerkleTree::new(&b.txs);
                                proofs = Some((b, tree));
                            }
                            Err(e) => {
                                for w in waiters {
                                    let _ = w.send(Err(NetError::Store(e.to_string())));
                                }
                                continue;
                            }
                        }
                    }
                    let answer = proofs
                        .as_ref()
                        .and_then(|(b, tree)| b.inclusion_proof_in(tree, index as usize))
                        .map(|proof| Committed {
                            tx_id,
                            height,
                            index,
                            outcome,
                            proof,
                        })
                        .ok_or_else(|| {
                            NetError::Store(format!("block {height} has no transaction {index}"))
                        });
                    for w in waiters {
                        let _ = w.send(match &answer {
                            Ok(c) => Ok(c.clone()),
                            Err(e) => Err(NetError::Store(e.to_string())),
                        });
                    }
                }
            }
        }
        let status = status_of(&self.replica);
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
        Ok(())
    }

    fn block_at(&self, height: u64) -> Result<Arc<CommittedBlock>, NetError> {
        if let Some(b) = self.recent.iter().rev().find(|b| b.header.height == height) {
            return Ok(b.clone());
        }
        match self.store.block(height) {
            Ok(Some(b)) => Ok(Arc::new(b)),
            Ok(None) => Err(NetError::Store(format!("block {height} not found"))),
            Err(e) => Err(NetError::Store(e.to_string())),
        }
    }
}

/// Applies records durably, without stalling the runtime's other tasks ([`crate::blocking`]).
fn persist<S: Store>(store: &mut S, records: &[Record]) -> Result<(), LedgerError> {
    crate::blocking(|| store.apply(records))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
