//! The node runtime: [`Node::start`] wires the ledger replica and its network driver, the IPFS
//! blockstore, the search index and its follower, background replication, the hospital's
//! capsule, label counters, nonce sequencers, the owner key store and the HTTP API.
//!
//! Layout under `data_dir`: `ledger/ledger.redb` (consensus store), `blockstore/` (the IPFS
//! repository), `index/gen-<n>/` (the tantivy index, a view of the ledger), `node/` (the
//! search-key owner state and record data keys, both encrypted under keys derived from the
//! hospital key; the label counter file, whose entries are keyed and encrypted by keyword
//! keys; the libp2p identity). Nothing plaintext about a record is ever written there.

pub mod app;
pub mod follower;
pub mod group_commit;
pub mod metrics;
pub mod secrets;
pub mod sequencer;
pub mod upload;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ehr_ledger::crypto::Ed25519Signer;
use ehr_ledger::replica::{Replica, ReplicaConfig};
use ehr_ledger::state::LedgerState;
use ehr_ledger::store::{RedbStore, Store as _};
use ehr_ledger::tx::{CapsuleId, ParticipantId, TxKind};
use ehr_search::abe::MasterKeyShare;
use ehr_search::index::{Index, IndexConfig};
use ehr_search::policy::Policy;
use ehr_search::sse::{self, EpochKey, FileCounters, SearchKeyOwner};
use ehr_storage::blockstore::{
    Blockstore, BlockstoreConfig, IdentitySource, Multiaddr, PeerId, PrivateNetworkKey,
};
use sha3::Digest as _;
use tokio::sync::watch;

use crate::config::{ConfigError, NodeConfig, read_key_file, read_key32};
use crate::consortium::{Consortium, libp2p_keypair_protobuf, libp2p_peer_id};
use crate::ledger_net::{
    Client, DriverConfig, Identity, LedgerNode, Status, TcpConnector, ValidatorSet,
};
use app::SharedLedger;
use metrics::Metrics;
use secrets::{OwnerKeyStore, SealedBox};
use sequencer::Sequencer;

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration, consortium or a key file is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A key file does not match the consortium.
    #[error("{0}")]
    Mismatch(String),
    /// A directory or file could not be prepared.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A component failed to start.
    #[error("{what}: {reason}")]
    Component {
        /// Which component.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

fn comp(what: &'static str) -> impl Fn(String) -> NodeError {
    move |reason| NodeError::Component { what, reason }
}

/// Overrides for embedding (tests, `ehr dev`): pre-bound listeners and addresses.
#[derive(Debug, Default)]
pub struct StartOptions {
    /// The HTTP listener (instead of binding `http.listen`).
    pub http_listener: Option<tokio::net::TcpListener>,
    /// The PBFT listener (instead of binding `ledger.listen`).
    pub ledger_listener: Option<tokio::net::TcpListener>,
    /// Peer addresses (instead of `ledger.peers`).
    pub peer_addrs: Option<Vec<String>>,
    /// IPFS listen addresses (instead of `ipfs.listen`).
    pub ipfs_listen: Option<Vec<Multiaddr>>,
    /// IPFS bootstrap peers (instead of `ipfs.bootstrap`).
    pub ipfs_bootstrap: Option<Vec<Multiaddr>>,
    /// Driver limits (default: [`DriverConfig::default`]).
    pub driver: Option<DriverConfig>,
    /// Replica settings applied over the defaults (batch delay etc.), if any.
    pub replica_tuning: Option<fn(&mut ReplicaConfig)>,
}

/// The hospital's default capsule as this node knows it.
pub struct CapsuleInfo {
    /// Its id.
    pub id: [u8; 32],
    /// Its policy.
    pub policy: Policy,
    /// The policy's text as published.
    pub policy_text: String,
    /// The epoch key labels are made with.
    pub epoch_key: EpochKey,
    /// The sealed capsule (published on the ledger).
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for CapsuleInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapsuleInfo")
            .field("id", &hex::encode(self.id))
            .field("epoch", &self.epoch_key.epoch())
            .finish_non_exhaustive()
    }
}

/// Everything request handlers need; shared by the HTTP server and the background tasks.
#[derive(Debug)]
pub struct NodeCtx {
    /// The configuration.
    pub config: NodeConfig,
    /// The consortium.
    pub consortium: Consortium,
    /// The committed ledger state.
    pub ledger: SharedLedger,
    /// The consensus store (committed blocks).
    pub store: RedbStore,
    /// The replica's status.
    pub status: watch::Receiver<Status>,
    /// Submits client-signed transactions.
    pub client: Client,
    /// The hospital's transactions.
    pub hospital: Sequencer,
    /// The validator's transactions (access audit).
    pub validator: Sequencer,
    /// The IPFS repository.
    pub blockstore: Blockstore,
    /// The search index.
    pub index: Arc<RwLock<Index>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// This validator's ABE master-key share.
    pub abe_share: MasterKeyShare,
    /// The hospital's default capsule.
    pub capsule: CapsuleInfo,
    /// Label counters (group commit).
    pub counters: group_commit::GroupCounters,
    /// Record data keys of this hospital (for grants).
    pub owner_keys: OwnerKeyStore,
    /// The key-encryption key that wraps new records' data keys ([`crate::recordkey`]).
    pub kek: tokio::sync::Mutex<Option<crate::recordkey::Kek>>,
    /// Whether the capsule is on the ledger.
    pub capsule_published: AtomicBool,
    /// The hospital's signing key (to rewrap for grants it issues).
    pub hospital_id: ParticipantId,
    /// Bearer-token verifier.
    pub auth: crate::http::auth::Authenticator,
}

impl NodeCtx {
    /// Whether the node is ready: the ledger in normal operation, the index at the ledger's
    /// head, the capsule published.
    pub fn readiness(&self) -> (bool, String) {
        let st = *self.status.borrow();
        let idx = self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .committed_height();
        let published = self.capsule_published.load(Ordering::Acquire);
        let ok = st.view_active && idx >= st.height && published;
        (
            ok,
            format!(
                "ledger height {} view {} active {}; index height {idx}; capsule published {published}",
                st.height, st.view, st.view_active
            ),
        )
    }
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    ctx: Arc<NodeCtx>,
    ledger: Option<LedgerNode>,
    http_addr: SocketAddr,
    ledger_addr: SocketAddr,
    http_stop: Option<tokio::sync::oneshot::Sender<()>>,
    http_task: Option<tokio::task::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    follower: Option<std::thread::JoinHandle<()>>,
}

fn mkdir_private(p: &Path) -> Result<(), NodeError> {
    let io = |source| NodeError::Io {
        path: p.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(p).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

/// The id of a hospital's capsule for a policy: SHA3-256 over a domain label, the hospital's
/// id and the policy's canonical text.
pub fn capsule_id_for(hospital: &ParticipantId, policy: &Policy) -> [u8; 32] {
    let mut h = sha3::Sha3_256::new();
    h.update(b"ehr/capsule/v1");
    h.update(hospital.0);
    h.update(policy.to_string().as_bytes());
    h.finalize().into()
}

/// Loads the search-key owner of `capsule` from `dir`, or creates and persists a new one.
fn load_or_create_owner(
    dir: &Path,
    sealer: &SealedBox,
    capsule: &[u8; 32],
) -> Result<(SearchKeyOwner, bool), NodeError> {
    let path = dir.join(format!("search-key-{}.sealed", hex::encode(capsule)));
    match std::fs::read(&path) {
        Ok(bytes) => {
            let plain = sealer
                .open("search key owner", capsule, &bytes)
                .map_err(|e| comp("search key")(e.to_string()))?;
            let owner = SearchKeyOwner::from_bytes(&plain)
                .map_err(|e| comp("search key")(e.to_string()))?;
            Ok((owner, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let owner = SearchKeyOwner::generate(&mut rand::rngs::OsRng);
            let sealed = sealer.seal(capsule, &owner.to_bytes());
            secrets::write_file_private(&path, &sealed)
                .map_err(|e| comp("search key")(e.to_string()))?;
            Ok((owner, true))
        }
        Err(e) => Err(NodeError::Io { path, source: e }),
    }
}

impl Node {
    /// Starts every part of the node. Returns once the HTTP server listens; readiness
    /// (`/readyz`) follows when the ledger runs, the index caught up and the capsule is
    /// published.
    pub async fn start(cfg: NodeConfig, opts: StartOptions) -> Result<Node, NodeError> {
        let consortium = Consortium::load(&cfg.consortium)?;
        let cf = &consortium.file;
        if cf.chain_id != cfg.chain_id {
            return Err(NodeError::Mismatch(format!(
                "chain_id: the configuration says {} but the consortium file {}",
                cfg.chain_id, cf.chain_id
            )));
        }
        let n = consortium.n();
        let me = cfg.replica_id as usize;
        let peers = opts
            .peer_addrs
            .clone()
            .unwrap_or_else(|| cfg.ledger.peers.clone());
        if peers.len() != n || me >= n {
            return Err(NodeError::Mismatch(format!(
                "ledger.peers: {} entries for {n} validators (replica_id {me})",
                peers.len()
            )));
        }

        // Keys.
        let vseed = read_key32(&cfg.key_path("validator"), "validator")?;
        let validator_key = SigningKey::from_bytes(&vseed);
        if validator_key.verifying_key().to_bytes() != consortium.validator_keys[me] {
            return Err(NodeError::Mismatch(format!(
                "{}: not validator {me}'s key in the consortium file",
                cfg.key_path("validator").display()
            )));
        }
        let hseed = read_key32(&cfg.key_path("hospital"), "hospital")?;
        let hospital_key = SigningKey::from_bytes(&hseed);
        let hospital_id = ParticipantId(hospital_key.verifying_key().to_bytes());
        let share_bytes = read_key_file(&cfg.key_path("abe-share"), "abe-share")?;
        let abe_share = MasterKeyShare::from_bytes(&share_bytes).map_err(|e| {
            NodeError::Mismatch(format!("{}: {e}", cfg.key_path("abe-share").display()))
        })?;
        if abe_share.index() as usize != me + 1 {
            return Err(NodeError::Mismatch(format!(
                "{}: share {} belongs to validator {}, not {me}",
                cfg.key_path("abe-share").display(),
                abe_share.index(),
                abe_share.index().saturating_sub(1)
            )));
        }
        let ipfs_seed = read_key32(&cfg.key_path("ipfs"), "ipfs")?;
        let pnet = match read_key32(&cfg.key_path("pnet"), "pnet") {
            Ok(k) => Some(PrivateNetworkKey::from_bytes(*k)),
            Err(ConfigError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                None
            }
            Err(e) => return Err(e.into()),
        };

        // Directories.
        let data = &cfg.data_dir;
        mkdir_private(data)?;
        for d in ["ledger", "blockstore", "index", "node"] {
            mkdir_private(&data.join(d))?;
        }
        let node_dir = data.join("node");

        // Ledger.
        let store = RedbStore::open(&data.join("ledger/ledger.redb"))
            .map_err(|e| comp("ledger store")(e.to_string()))?;
        let restored = store
            .load()
            .map_err(|e| comp("ledger store")(e.to_string()))?;
        let state =
            LedgerState::from_genesis(&cf.genesis).map_err(|e| comp("genesis")(e.to_string()))?;
        if state.participant(&hospital_id).map(|p| p.role) != Some(ehr_ledger::tx::Role::Hospital) {
            return Err(NodeError::Mismatch(format!(
                "{}: not a hospital registered at genesis",
                cfg.key_path("hospital").display()
            )));
        }
        let (shared, app_events) = SharedLedger::new(state);
        let mut rc = ReplicaConfig {
            chain_id: cf.chain_id.clone(),
            epoch: cf.epoch,
            id: cfg.replica_id,
            validators: consortium.validator_keys.clone(),
            f: cf.f,
            view_change_timeout_ms: cfg.ledger.view_change_timeout_ms,
            ..ReplicaConfig::default()
        };
        if let Some(tune) = opts.replica_tuning {
            tune(&mut rc);
        }
        let replica = Replica::new(
            rc,
            Box::new(Ed25519Signer::new(validator_key.clone())),
            shared.clone(),
            restored,
        )
        .map_err(|e| comp("replica")(e.to_string()))?;
        let identity = Arc::new(Identity::new(cfg.replica_id, validator_key.clone()));
        let vset = Arc::new(
            ValidatorSet::new(
                cf.chain_id.clone(),
                consortium
                    .validator_keys
                    .iter()
                    .map(|k| {
                        ed25519_dalek::VerifyingKey::from_bytes(k)
                            .expect("invariant: consortium keys were checked at load")
                    })
                    .collect(),
            )
            .map_err(|e| comp("validator set")(e.to_string()))?,
        );
        let ledger_listener = match opts.ledger_listener {
            Some(l) => l,
            None => tokio::net::TcpListener::bind(&cfg.ledger.listen)
                .await
                .map_err(|e| comp("ledger listener")(format!("{}: {e}", cfg.ledger.listen)))?,
        };
        let ledger_addr = ledger_listener
            .local_addr()
            .map_err(|e| comp("ledger listener")(e.to_string()))?;
        let ledger = LedgerNode::start(
            opts.driver.unwrap_or_default(),
            replica,
            store.clone(),
            identity,
            vset,
            peers,
            ledger_listener,
            TcpConnector,
        )
        .map_err(|e| comp("ledger driver")(e.to_string()))?;
        let client = ledger.client(Duration::from_secs(30));

        // IPFS.
        let id_path = node_dir.join("ipfs-identity.pb");
        secrets::write_file_private(&id_path, &libp2p_keypair_protobuf(&ipfs_seed))
            .map_err(|e| comp("ipfs identity")(e.to_string()))?;
        let parse_all = |v: &[String], key: &str| -> Result<Vec<Multiaddr>, NodeError> {
            v.iter()
                .map(|a| {
                    a.parse::<Multiaddr>()
                        .map_err(|e| NodeError::Mismatch(format!("{key}: {a}: {e}")))
                })
                .collect()
        };
        let listen = match opts.ipfs_listen {
            Some(l) => l,
            None => parse_all(&cfg.ipfs.listen, "ipfs.listen")?,
        };
        let bootstrap = match opts.ipfs_bootstrap {
            Some(b) => b,
            None => parse_all(&cfg.ipfs.bootstrap, "ipfs.bootstrap")?,
        };
        let blockstore = Blockstore::open(BlockstoreConfig {
            repo: data.join("blockstore"),
            identity: IdentitySource::File(id_path),
            listen,
            bootstrap,
            private_network: pnet,
            ..BlockstoreConfig::default()
        })
        .await
        .map_err(|e| comp("blockstore")(e.to_string()))?;
        let providers: Vec<PeerId> = cf
            .validators
            .iter()
            .filter(|v| v.id as usize != me)
            .filter_map(|v| v.ipfs_peer_id.parse().ok())
            .collect();
        debug_assert_eq!(blockstore.peer_id(), libp2p_peer_id(&ipfs_seed));

        // Index and follower.
        let index_config = IndexConfig::default();
        let (_, index_dir) =
            follower::current_index_dir(&data.join("index")).map_err(|e| NodeError::Io {
                path: data.join("index"),
                source: e,
            })?;
        let index = Index::open(&index_dir, index_config.clone())
            .map_err(|e| comp("search index")(e.to_string()))?;
        let index = Arc::new(RwLock::new(index));
        let metrics = Arc::new(Metrics::new());
        let (rep_tx, rep_rx) = tokio::sync::mpsc::unbounded_channel();
        let fol = follower::Follower {
            state: shared.handle(),
            index: index.clone(),
            index_root: data.join("index"),
            index_config,
            metrics: metrics.clone(),
            replicate: rep_tx,
        };
        let follower = std::thread::Builder::new()
            .name(format!("ehr-index-{me}"))
            .spawn(move || fol.run(app_events))
            .map_err(|e| comp("index follower")(e.to_string()))?;
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(follower::replicate(
            blockstore.clone(),
            providers,
            rep_rx,
            metrics.clone(),
            4,
        )));

        // Secrets: the capsule's search key, counters, owner keys.
        let policy = Policy::parse(&cfg.hospital.default_policy)
            .map_err(|e| NodeError::Mismatch(format!("hospital.default_policy: {e}")))?;
        let capsule_id = capsule_id_for(&hospital_id, &policy);
        let owner_box = SealedBox::derive(&hseed, b"search-key-owner");
        let (owner, created) = load_or_create_owner(&node_dir, &owner_box, &capsule_id)?;
        let on_ledger = shared
            .read()
            .capsule(&CapsuleId(capsule_id))
            .map(|c| c.epoch);
        if created && on_ledger.is_some() {
            return Err(NodeError::Mismatch(
                "the hospital's capsule is on the ledger but its search key is not in \
                 data_dir/node (restore the node directory from backup)"
                    .into(),
            ));
        }
        let state = owner.state();
        let sealed = sse::Capsule::seal(
            &consortium.abe_params,
            &policy,
            sse::CapsuleId(capsule_id),
            &state,
            &mut rand::rngs::OsRng,
        )
        .map_err(|e| comp("capsule")(e.to_string()))?
        .to_bytes();
        let capsule = CapsuleInfo {
            id: capsule_id,
            policy_text: policy.to_string(),
            policy,
            epoch_key: owner.epoch_key(),
            sealed,
        };
        drop(owner);
        let counters = FileCounters::open(&node_dir.join("label-counters.bin"))
            .map_err(|e| comp("label counters")(e.to_string()))?;
        let owner_keys = OwnerKeyStore::open(&node_dir.join("owner-keys.redb"), &hseed)
            .map_err(|e| comp("owner key store")(e.to_string()))?;

        let hospital = Sequencer::new(hospital_key, &cf.chain_id, client.clone(), shared.clone());
        let validator = Sequencer::new(validator_key, &cf.chain_id, client.clone(), shared.clone());
        let auth = crate::http::auth::Authenticator::new(&cf.chain_id);
        let ctx = Arc::new(NodeCtx {
            config: cfg.clone(),
            consortium: consortium.clone(),
            ledger: shared.clone(),
            store,
            status: ledger.watch_status(),
            client,
            hospital,
            validator,
            blockstore,
            index,
            metrics: metrics.clone(),
            abe_share,
            capsule_published: AtomicBool::new(on_ledger.is_some()),
            capsule,
            counters: group_commit::GroupCounters::new(counters)
                .map_err(|e| comp("label counters")(e.to_string()))?,
            owner_keys,
            kek: tokio::sync::Mutex::new(None),
            hospital_id,
            auth,
        });

        // Status metrics.
        {
            let mut w = ledger.watch_status();
            let m = metrics.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let s = *w.borrow_and_update();
                    m.ledger_height.set(s.height as i64);
                    m.ledger_view.set(s.view as i64);
                    if w.changed().await.is_err() {
                        break;
                    }
                }
            }));
        }
        // Capsule bootstrap.
        if on_ledger.is_none() {
            let c = ctx.clone();
            tasks.push(tokio::spawn(async move { publish_capsule(c).await }));
        }

        // HTTP.
        let http_listener = match opts.http_listener {
            Some(l) => l,
            None => tokio::net::TcpListener::bind(&cfg.http.listen)
                .await
                .map_err(|e| comp("http listener")(format!("{}: {e}", cfg.http.listen)))?,
        };
        let http_addr = http_listener
            .local_addr()
            .map_err(|e| comp("http listener")(e.to_string()))?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let http_task = tokio::spawn(crate::http::serve(ctx.clone(), http_listener, stop_rx));
        tracing::info!(replica = me, %http_addr, %ledger_addr, "node started");
        Ok(Node {
            ctx,
            ledger: Some(ledger),
            http_addr,
            ledger_addr,
            http_stop: Some(stop_tx),
            http_task: Some(http_task),
            tasks,
            follower: Some(follower),
        })
    }

    /// The HTTP API's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The PBFT listener's address.
    pub fn ledger_addr(&self) -> SocketAddr {
        self.ledger_addr
    }

    /// The shared context.
    pub fn ctx(&self) -> &Arc<NodeCtx> {
        &self.ctx
    }

    /// Waits until [`NodeCtx::readiness`] holds, at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.ctx.readiness().0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops the HTTP server (letting requests in flight finish), the ledger driver, the
    /// background tasks, the index follower and the blockstore.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.http_stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.http_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        if let Some(l) = self.ledger.take()
            && let Err(e) = l.shutdown().await
        {
            tracing::warn!(error = %e, "the ledger driver ended with an error");
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        // The replica (and its SharedLedger clone) is gone with the driver, so the follower's
        // channel closes once our context is dropped too.
        let follower = self.follower.take();
        let ctx = self.ctx.clone();
        drop(self);
        let store = ctx.blockstore.clone();
        drop(ctx);
        if let Some(f) = follower {
            // The follower ends when the last holder of the shared state is gone; uploads
            // still finishing in detached tasks may hold it a little longer.
            let joined = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::task::spawn_blocking(move || f.join()),
            )
            .await;
            if joined.is_err() {
                tracing::warn!("the index follower did not stop within 10 s; leaving it");
            }
        }
        store.shutdown().await;
    }
}

/// Publishes the hospital's capsule (retrying until it is on the ledger).
async fn publish_capsule(ctx: Arc<NodeCtx>) {
    let mut delay = Duration::from_millis(100);
    loop {
        let kind = TxKind::PublishCapsule {
            capsule: CapsuleId(ctx.capsule.id),
            policy: ctx.capsule.policy_text.clone(),
            epoch: u64::from(ctx.capsule.epoch_key.epoch()),
            wrapped_search_key: ctx.capsule.sealed.clone(),
        };
        let r = ctx.hospital.submit(kind).await;
        if ctx
            .ledger
            .read()
            .capsule(&CapsuleId(ctx.capsule.id))
            .is_some()
        {
            ctx.capsule_published.store(true, Ordering::Release);
            tracing::info!(capsule = %hex::encode(ctx.capsule.id), "capsule published");
            return;
        }
        match r {
            Ok(c) => tracing::warn!(outcome = ?c.outcome, "capsule not published; retrying"),
            Err(e) => tracing::debug!(error = %e, "capsule publication failed; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
