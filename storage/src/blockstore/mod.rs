//! The on-disk IPFS blockstore: a concrete facade over rust-ipfs.
//!
//! [`Blockstore`] owns a `rust_ipfs::Ipfs` with a file-system repository and a libp2p swarm
//! (TCP + QUIC, noise, yamux, bitswap, identify, ping; no DHT unless asked). Its methods take
//! and return plain types ([`Cid`], [`Bytes`], tokio readers and writers, [`Multiaddr`],
//! [`PeerId`]) so rust-ipfs's generics are monomorphised once, here, and not in every crate
//! that stores a record.
//!
//! Invariants:
//! - CIDs are Kubo's `ipfs add --cid-version=1` CIDs (see [`dag`]).
//! - `add` streams: at most `max_in_flight_blocks` blocks are in memory; a root is pinned
//!   (recursively) only after every block of its DAG has been written and fsynced, so a crash
//!   leaves at most unpinned blocks, which [`Blockstore::gc`] removes. The pin is written with
//!   the references the build produced (one CID per block is kept until then), the same pin
//!   rust-ipfs's `insert_pin` writes after re-reading and re-hashing the whole DAG.
//! - Every block read is re-hashed against its CID before its bytes are released.
//! - `gc` never runs while an add or a pin is between "first block written" and "root pinned".
//!
//! Design notes (trade-offs):
//! - The DAG is built with rust-unixfs's low-level `FileAdder` (fixed 256 KiB chunker,
//!   `BalancedCollector` of 174) instead of `Ipfs::add_unixfs`, which in 0.16 fails on an
//!   input exactly one chunk long. We feed it whole chunks and take the last block produced
//!   as the root. Parity with the JS reference importer is tested at every DAG-shape boundary.
//! - Blocks are written by [`files::BlockWriter`], up to `max_in_flight_blocks` at once, in
//!   rust-ipfs's file layout but around its `put`, which holds a store-wide lock while it
//!   fsyncs each block and its directory (one block at a time, for every upload of the node);
//!   ours fsyncs each block file in parallel and each directory once per DAG, before the pin.
//!   Blocks fetched with the exchange protocol are written the same way; blocks received over
//!   bitswap or imported from CARs go through rust-ipfs.
//! - Reads are re-hashed here although the fs store also re-hashes: the check must not depend
//!   on a storage backend's internals, and SHA-256 with SHA-NI costs little next to the I/O.
//! - rust-ipfs's own GC lock is not held across an add (its `RwLock` is fair, so holding a read
//!   guard while `put_block` takes another would deadlock against a queued GC); the facade has
//!   its own lock instead, so GC must go through [`Blockstore::gc`] (auto-GC stays off).
//! - Private networks: libp2p pnet wraps stream transports only, so with a pre-shared key QUIC
//!   is not started and QUIC listen addresses are rejected (what Kubo does as well).
//! - Known limits: GC walks every pin and scans every block file (cost grows with the repo);
//!   one process per repository (`repo_lock`); a byte-range read whose end falls exactly on a
//!   leaf boundary also loads (and verifies) the next leaf, because the UnixFS visitor treats
//!   touching ranges as overlapping.

pub mod config;
pub mod dag;
mod exchange;
mod files;
mod peers;
mod read;

use std::collections::BTreeSet;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use rust_ipfs::builder::DefaultIpfsBuilder;
use rust_ipfs::p2p::IdentifyConfiguration;
use rust_ipfs::repo::PinStore as _;
use rust_ipfs::{Block, Ipfs, Keypair, PinMode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::RwLock;
use tracing::{debug, info, instrument, warn};

pub use cid::Cid;
pub use config::{BlockstoreConfig, IdentitySource, PrivateNetworkKey};
pub use dag::{CHUNK_SIZE, DagBuilder, MAX_LINKS};
pub use rust_ipfs::{Multiaddr, PeerId};

use crate::error::StoreError;
use dag::RAW_CODEC;

/// What [`Blockstore::add`] stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddResult {
    /// The root CID (CIDv1 base32 when displayed), pinned recursively.
    pub cid: Cid,
    /// File size in bytes.
    pub size: u64,
    /// Blocks in the DAG (leaves and branch nodes).
    pub blocks: u64,
}

/// What [`Blockstore::check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsistencyReport {
    /// Recursive pins examined.
    pub pins_checked: usize,
    /// Recursive pins whose DAG is not complete locally: `(root, first missing block)`.
    pub incomplete_pins: Vec<(Cid, Cid)>,
    /// Temporary files of a pin write interrupted by a crash (the pin was never made); they
    /// are removed by the check.
    pub interrupted_pin_writes: Vec<PathBuf>,
    /// Temporary files of block writes interrupted by a crash (never part of a pinned DAG);
    /// they are removed by the check.
    pub interrupted_block_writes: Vec<PathBuf>,
}

impl ConsistencyReport {
    /// True when nothing inconsistent was found.
    pub fn is_clean(&self) -> bool {
        self.incomplete_pins.is_empty()
            && self.interrupted_pin_writes.is_empty()
            && self.interrupted_block_writes.is_empty()
    }
}

/// A running IPFS node over an on-disk repository. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct Blockstore {
    inner: Arc<Inner>,
}

struct Inner {
    ipfs: Ipfs,
    peer_id: PeerId,
    config: BlockstoreConfig,
    /// Adds and pins hold it shared; `gc` holds it exclusively.
    gc_lock: RwLock<()>,
    open_report: ConsistencyReport,
}

impl std::fmt::Debug for Blockstore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blockstore")
            .field("repo", &self.inner.config.repo)
            .field("peer_id", &self.inner.peer_id)
            .finish_non_exhaustive()
    }
}

/// How long [`Blockstore::open`] waits for a repository another instance holds.
const REPO_IN_USE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Whether a start failed because another instance holds the repository lock.
fn repo_in_use(e: &rust_ipfs::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<rust_ipfs::repo::LockError>(),
            Some(rust_ipfs::repo::LockError::RepoInUse)
        )
    })
}

fn repo_err(what: &str) -> impl FnOnce(rust_ipfs::Error) -> StoreError + '_ {
    move |e| StoreError::Repo(format!("{what}: {e:#}"))
}

/// Reads the identity file, or creates it (mode 0600, fsynced) with a fresh Ed25519 keypair.
fn load_identity(path: Option<&Path>) -> Result<Keypair, StoreError> {
    let Some(path) = path else {
        return Ok(Keypair::generate_ed25519());
    };
    let id_err = |reason: String| StoreError::Identity {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| id_err(format!("not a protobuf-encoded libp2p keypair: {e}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let kp = Keypair::generate_ed25519();
            let bytes = kp
                .to_protobuf_encoding()
                .map_err(|e| id_err(e.to_string()))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| id_err(e.to_string()))?;
            }
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(path).map_err(|e| id_err(e.to_string()))?;
            io::Write::write_all(&mut f, &bytes).map_err(|e| id_err(e.to_string()))?;
            f.sync_all().map_err(|e| id_err(e.to_string()))?;
            Ok(kp)
        }
        Err(e) => Err(id_err(e.to_string())),
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
async fn read_chunk<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl Blockstore {
    /// Opens (creating if needed) the repository and starts the swarm.
    ///
    /// With `check_on_open`, every recursive pin's DAG is checked for completeness and leftovers
    /// of an interrupted pin write are removed; the findings are logged and kept in
    /// [`Blockstore::open_report`].
    #[instrument(skip_all, fields(repo = %cfg.repo.display()))]
    pub async fn open(cfg: BlockstoreConfig) -> Result<Self, StoreError> {
        cfg.validate()?;
        tokio::fs::create_dir_all(&cfg.repo).await?;
        let keypair = {
            let path = cfg.identity_path();
            tokio::task::spawn_blocking(move || load_identity(path.as_deref()))
                .await
                .map_err(|e| StoreError::Repo(format!("identity task: {e}")))??
        };
        let peer_id = keypair.public().to_peer_id();

        // A store shut down in this process releases the repository lock only when rust-ipfs's
        // background tasks have dropped their handles, a moment after `shutdown` returns; an
        // open right after (a restart) waits for that rather than failing.
        let deadline = tokio::time::Instant::now() + REPO_IN_USE_WAIT;
        let ipfs = loop {
            match Self::builder(&cfg, &keypair)?.start().await {
                Ok(ipfs) => break ipfs,
                Err(e) if repo_in_use(&e) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(StoreError::Repo(format!(
                            "{} is in use by another IPFS instance (another ehr process?): stop \
                             it, or give this one its own data directory",
                            cfg.repo.display()
                        )));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(repo_err("starting the node")(e)),
            }
        };

        let mut store = Self {
            inner: Arc::new(Inner {
                ipfs,
                peer_id,
                config: cfg,
                gc_lock: RwLock::new(()),
                open_report: ConsistencyReport::default(),
            }),
        };
        if store.inner.config.check_on_open {
            let report = store.check().await?;
            for (root, missing) in &report.incomplete_pins {
                warn!(%root, %missing, "pinned DAG is incomplete");
            }
            for path in &report.interrupted_pin_writes {
                warn!(path = %path.display(), "removed leftover of an interrupted pin write");
            }
            for path in &report.interrupted_block_writes {
                warn!(path = %path.display(), "removed leftover of an interrupted block write");
            }
            if let Some(inner) = Arc::get_mut(&mut store.inner) {
                inner.open_report = report;
            }
        }
        let requests = store
            .inner
            .ipfs
            .requests_subscribe(exchange::PROTOCOL)
            .await
            .map_err(|e| StoreError::Network(format!("serving block requests: {e}")))?;
        tokio::spawn(exchange::serve(Arc::downgrade(&store.inner), requests));
        // Dial the configured peers once now, then keep them connected in the background
        // (they start in any order, restart and may change address).
        for addr in &store.inner.config.bootstrap {
            if let Err(e) = peers::dial(&store.inner, addr).await {
                warn!(%addr, error = %e, "bootstrap peer unreachable; will keep redialling");
            }
        }
        tokio::spawn(peers::keep_connected(
            Arc::downgrade(&store.inner),
            store.inner.config.bootstrap.clone(),
        ));
        info!(peer_id = %store.inner.peer_id, "blockstore open");
        Ok(store)
    }

    /// The rust-ipfs builder for `cfg` (one per start attempt: starting consumes it).
    fn builder(
        cfg: &BlockstoreConfig,
        keypair: &Keypair,
    ) -> Result<DefaultIpfsBuilder, StoreError> {
        let mut builder = DefaultIpfsBuilder::with_keypair(keypair)
            .map_err(|e| StoreError::Identity {
                path: cfg.identity_path().unwrap_or_default(),
                reason: e.to_string(),
            })?
            .set_path(&cfg.repo)
            .with_identify(IdentifyConfiguration {
                agent_version: format!("ehr/{}", env!("CARGO_PKG_VERSION")),
                ..Default::default()
            })
            .with_bitswap()
            .with_request_response(vec![exchange::config()])
            .with_ping(Default::default())
            .enable_tcp()
            .set_listening_addrs(cfg.listen.clone());
        match &cfg.private_network {
            // pnet wraps stream transports only; QUIC would bypass it, so it stays off.
            Some(key) => {
                info!(fingerprint = %key.fingerprint(), "private network enabled (TCP only)");
                builder = builder.enable_pnet(key.psk());
            }
            None => builder = builder.enable_quic(),
        }
        if cfg.kademlia {
            builder = builder.with_kademlia();
        }
        Ok(builder)
    }

    /// What the consistency check at open found (empty if `check_on_open` was off).
    pub fn open_report(&self) -> &ConsistencyReport {
        &self.inner.open_report
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &BlockstoreConfig {
        &self.inner.config
    }

    /// This node's libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }

    /// The addresses the swarm listens on (with ephemeral ports resolved).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, StoreError> {
        self.inner
            .ipfs
            .listening_addresses()
            .await
            .map_err(|e| StoreError::Network(e.to_string()))
    }

    /// Dials a peer (`.../p2p/<peer id>`) and waits for the connection.
    pub async fn connect(&self, addr: Multiaddr) -> Result<(), StoreError> {
        self.inner
            .ipfs
            .connect(addr.clone())
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Network(format!("dialing {addr}: {e}")))
    }

    /// Peers currently connected.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, StoreError> {
        self.inner
            .ipfs
            .connected()
            .await
            .map_err(|e| StoreError::Network(e.to_string()))
    }

    /// Adds a file read from `reader` as a UnixFS DAG with Kubo's CIDv1 parameters, writes every
    /// block durably, then pins the root recursively.
    ///
    /// Streams: the reader is consumed in 256 KiB chunks and at most `max_in_flight_blocks`
    /// blocks are held. If this fails or is cancelled, nothing is pinned.
    #[instrument(skip_all)]
    pub async fn add<R: AsyncRead + Unpin + Send>(
        &self,
        reader: R,
    ) -> Result<AddResult, StoreError> {
        let _gc = self.inner.gc_lock.read().await;
        let (result, refs) = self.write_dag(reader).await?;
        // Known from the build: finding them again would re-read the DAG (a third of the time
        // of a 1 GiB add).
        self.pin_with_refs(result.cid, refs)
            .await
            .map_err(repo_err("pinning the root"))?;
        debug!(cid = %result.cid, size = result.size, blocks = result.blocks, "added");
        Ok(result)
    }

    /// Adds `data` (convenience for small in-memory inputs).
    pub async fn add_bytes(&self, data: &[u8]) -> Result<AddResult, StoreError> {
        self.add(data).await
    }

    /// Builds the DAG and writes its blocks (durably, see [`files`]), without pinning; returns
    /// what was added and the CIDs of every block below the root (each once).
    async fn write_dag<R: AsyncRead + Unpin + Send>(
        &self,
        mut reader: R,
    ) -> Result<(AddResult, BTreeSet<Cid>), StoreError> {
        let mut writer =
            files::BlockWriter::new(self.blocks_dir(), self.inner.config.max_in_flight_blocks);
        let mut builder = DagBuilder::new();
        let mut refs = BTreeSet::new();
        let mut buf = vec![0u8; CHUNK_SIZE];
        loop {
            let n = read_chunk(&mut reader, &mut buf).await?;
            if n == 0 {
                break;
            }
            for block in builder.push_chunk(&buf[..n]) {
                refs.insert(block.cid);
                writer.write(block.cid, block.data).await?;
            }
            if n < CHUNK_SIZE {
                break;
            }
        }
        let size = builder.size();
        let pushed = builder.blocks();
        let (rest, root) = builder.finish();
        let blocks = pushed + rest.len() as u64;
        for block in rest {
            refs.insert(block.cid);
            writer.write(block.cid, block.data).await?;
        }
        writer.finish().await?;
        refs.remove(&root);
        let added = AddResult {
            cid: root,
            size,
            blocks,
        };
        Ok((added, refs))
    }

    /// rust-ipfs's file-system block store inside the repository.
    fn blocks_dir(&self) -> PathBuf {
        self.inner.config.repo.join("blockstore")
    }

    /// The CID `add` would give, without storing anything.
    pub async fn only_hash<R: AsyncRead + Unpin + Send>(mut reader: R) -> Result<Cid, StoreError> {
        let mut builder = DagBuilder::new();
        let mut buf = vec![0u8; CHUNK_SIZE];
        loop {
            let n = read_chunk(&mut reader, &mut buf).await?;
            if n == 0 {
                break;
            }
            builder.push_chunk(&buf[..n]);
            if n < CHUNK_SIZE {
                break;
            }
        }
        Ok(builder.finish().1)
    }

    /// Streams the file `cid` from the local repository, verifying every block.
    pub fn cat(&self, cid: Cid) -> BoxStream<'static, Result<Bytes, StoreError>> {
        read::cat_stream(
            self.inner.ipfs.clone(),
            cid,
            None,
            self.inner.config.read_ahead_blocks,
        )
    }

    /// Streams bytes `range` of the file `cid`, loading only the blocks that overlap it.
    /// A range outside the file is [`StoreError::InvalidRange`].
    pub fn cat_range(
        &self,
        cid: Cid,
        range: Range<u64>,
    ) -> BoxStream<'static, Result<Bytes, StoreError>> {
        read::cat_stream(
            self.inner.ipfs.clone(),
            cid,
            Some(range),
            self.inner.config.read_ahead_blocks,
        )
    }

    /// The file `cid` as an `AsyncRead` (errors surface as `io::Error` wrapping [`StoreError`]).
    pub fn cat_reader(&self, cid: Cid) -> impl AsyncRead + Send + Unpin + 'static {
        tokio_util::io::StreamReader::new(self.cat(cid).map_err(io::Error::other))
    }

    /// The size in bytes of the file `cid` (reads only its root block).
    pub async fn file_size(&self, cid: Cid) -> Result<u64, StoreError> {
        read::file_size(&self.inner.ipfs, cid).await
    }

    /// One block's bytes, verified (for the trustless gateway's raw responses).
    pub async fn get_block(&self, cid: Cid) -> Result<Bytes, StoreError> {
        read::fetch_verified(&self.inner.ipfs, cid).await
    }

    /// Whether the block is in the local repository.
    pub async fn has_block(&self, cid: Cid) -> Result<bool, StoreError> {
        self.inner
            .ipfs
            .repo()
            .contains(&cid)
            .await
            .map_err(repo_err("checking a block"))
    }

    /// Checks that the DAG under `root` is entirely local (branch nodes are read and verified,
    /// raw leaves are checked for presence); a missing block is [`StoreError::IncompleteDag`].
    pub async fn check_dag(&self, root: Cid) -> Result<(), StoreError> {
        match self.first_missing(root).await? {
            None => Ok(()),
            Some(missing) => Err(StoreError::IncompleteDag {
                root: root.to_string(),
                missing: missing.to_string(),
            }),
        }
    }

    /// The first block of the DAG under `root` (depth-first) that is not local, if any.
    async fn first_missing(&self, root: Cid) -> Result<Option<Cid>, StoreError> {
        let repo = self.inner.ipfs.repo();
        let mut stack = vec![root];
        while let Some(cid) = stack.pop() {
            if cid.codec() == RAW_CODEC {
                if !repo
                    .contains(&cid)
                    .await
                    .map_err(repo_err("checking a block"))?
                {
                    return Ok(Some(cid));
                }
                continue;
            }
            let data = match read::fetch_verified(&self.inner.ipfs, cid).await {
                Ok(d) => d,
                Err(StoreError::BlockMissing { .. }) => return Ok(Some(cid)),
                Err(e) => return Err(e),
            };
            let block = Block::new_unchecked(cid, data);
            let mut refs = Vec::new();
            block
                .references(&mut refs)
                .map_err(|e| StoreError::MalformedNode {
                    cid: cid.to_string(),
                    reason: e.to_string(),
                })?;
            stack.extend(refs.into_iter().rev());
        }
        Ok(None)
    }

    /// Fetches the whole DAG under `cid` from connected peers (every received block is
    /// hash-checked and written durably), then pins it. Each missing block is asked of the
    /// providers with the [`exchange`] protocol first and over bitswap if none serves it there.
    /// `providers` are the peers to ask (empty: every connected peer); `timeout` bounds each
    /// bitswap block request.
    #[instrument(skip_all, fields(cid = %cid))]
    pub async fn fetch_and_pin(
        &self,
        cid: Cid,
        providers: &[PeerId],
        timeout: std::time::Duration,
    ) -> Result<(), StoreError> {
        dag::check_file_codec(&cid)?;
        let _gc = self.inner.gc_lock.read().await;
        let connected = self.connected_peers().await?;
        let asked: Vec<PeerId> = if providers.is_empty() {
            connected
        } else {
            providers
                .iter()
                .filter(|p| connected.contains(p))
                .copied()
                .collect()
        };
        let ipfs = &self.inner.ipfs;
        let mut writer =
            files::BlockWriter::new(self.blocks_dir(), self.inner.config.max_in_flight_blocks);
        let mut stack = vec![cid];
        // every block below the root, for the pin (rust-ipfs's `insert_pin` would walk again)
        let mut below = BTreeSet::new();
        while let Some(c) = stack.pop() {
            let block = match ipfs.repo().get_block_now(c).await {
                Ok(Some(b)) => b,
                _ => match exchange::fetch(ipfs, &c, &asked).await {
                    Ok(data) => {
                        // Hash-checked by the exchange; stored here (bitswap stores its own).
                        // A local copy that failed verification is replaced.
                        writer.replace(c, data.clone()).await?;
                        Block::new_unchecked(c, data)
                    }
                    Err(e) => {
                        debug!(cid = %c, error = %e, "block exchange failed; trying bitswap");
                        self.fetch_over_bitswap(c, providers, timeout).await?
                    }
                },
            };
            let mut refs = Vec::new();
            block
                .references(&mut refs)
                .map_err(|e| StoreError::MalformedNode {
                    cid: c.to_string(),
                    reason: e.to_string(),
                })?;
            below.extend(refs.iter().copied());
            stack.extend(refs.into_iter().rev());
        }
        writer.finish().await?;
        // The walk saw every block verified; this confirms each is in place on disk (a stat
        // per leaf) before the pin claims the DAG complete.
        self.check_dag(cid).await?;
        below.remove(&cid);
        self.pin_with_refs(cid, below)
            .await
            .map_err(repo_err("pinning a fetched DAG"))
    }

    /// Pins `root` recursively with its references already known (every block below it);
    /// rust-ipfs's `insert_pin` would find them by re-reading and re-hashing the whole DAG.
    /// The pin is the one `insert_pin` writes (tested).
    async fn pin_with_refs(&self, root: Cid, refs: BTreeSet<Cid>) -> Result<(), rust_ipfs::Error> {
        let refs = futures::stream::iter(refs.into_iter().map(Ok)).boxed();
        self.inner
            .ipfs
            .repo()
            .data_store()
            .insert_recursive_pin(&root, refs)
            .await
    }

    /// One block over bitswap (hash-checked; rust-ipfs stores it), for peers that do not speak
    /// the exchange protocol.
    async fn fetch_over_bitswap(
        &self,
        cid: Cid,
        providers: &[PeerId],
        timeout: std::time::Duration,
    ) -> Result<Block, StoreError> {
        let block = self
            .inner
            .ipfs
            .get_block(cid)
            .providers(providers)
            .timeout(timeout)
            .await
            .map_err(|e| StoreError::Network(format!("fetching {cid}: {e:#}")))?;
        dag::verify_block(&cid, block.data())?;
        Ok(block)
    }

    /// Pins `cid` recursively after checking its DAG is complete locally.
    pub async fn pin(&self, cid: Cid) -> Result<(), StoreError> {
        let _gc = self.inner.gc_lock.read().await;
        self.check_dag(cid).await?;
        self.inner
            .ipfs
            .insert_pin(cid)
            .recursive()
            .local()
            .await
            .map_err(repo_err("pinning"))
    }

    /// Removes the recursive pin of `cid` (its blocks become garbage unless pinned otherwise).
    pub async fn unpin(&self, cid: Cid) -> Result<(), StoreError> {
        self.inner
            .ipfs
            .remove_pin(cid)
            .recursive()
            .await
            .map_err(repo_err("unpinning"))
    }

    /// Whether `cid` is pinned (directly, recursively, or as part of a pinned DAG).
    pub async fn is_pinned(&self, cid: Cid) -> Result<bool, StoreError> {
        self.inner
            .ipfs
            .is_pinned(cid)
            .await
            .map_err(repo_err("reading pins"))
    }

    /// The recursively pinned roots.
    pub async fn list_pins(&self) -> Result<Vec<Cid>, StoreError> {
        self.inner
            .ipfs
            .list_pins(Some(PinMode::Recursive))
            .await
            .map_ok(|(cid, _)| cid)
            .try_collect()
            .await
            .map_err(repo_err("listing pins"))
    }

    /// Removes every block not reachable from a pin; returns the removed CIDs. Waits for
    /// running adds and pins to finish, and blocks new ones meanwhile.
    #[instrument(skip_all)]
    pub async fn gc(&self) -> Result<Vec<Cid>, StoreError> {
        let _gc = self.inner.gc_lock.write().await;
        let removed = self
            .inner
            .ipfs
            .gc()
            .await
            .map_err(repo_err("garbage collection"))?;
        info!(removed = removed.len(), "gc done");
        Ok(removed)
    }

    /// Checks every recursive pin's DAG for completeness and removes the temporary files left
    /// by a pin or block write interrupted by a crash.
    pub async fn check(&self) -> Result<ConsistencyReport, StoreError> {
        let mut report = ConsistencyReport::default();
        let pins_dir = self.inner.config.repo.join("datastore").join("pins");
        report.interrupted_pin_writes =
            tokio::task::spawn_blocking(move || remove_temp_pins(&pins_dir))
                .await
                .map_err(|e| StoreError::Repo(format!("pin scan task: {e}")))??;
        let blocks_dir = self.blocks_dir();
        report.interrupted_block_writes =
            tokio::task::spawn_blocking(move || files::remove_temp_blocks(&blocks_dir))
                .await
                .map_err(|e| StoreError::Repo(format!("block scan task: {e}")))??;
        for root in self.list_pins().await? {
            report.pins_checked += 1;
            if let Some(missing) = self.first_missing(root).await? {
                report.incomplete_pins.push((root, missing));
            }
        }
        Ok(report)
    }

    /// Writes the DAG under `root` as a CARv1 archive (DFS pre-order, no duplicates) to
    /// `writer`; returns the bytes written. Fails before writing if the DAG is incomplete.
    pub async fn export_car<W: AsyncWrite + Unpin>(
        &self,
        root: Cid,
        mut writer: W,
    ) -> Result<u64, StoreError> {
        self.check_dag(root).await?;
        let mut stream = self.inner.ipfs.dag().export(root);
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| StoreError::Car(format!("exporting {root}: {e:#}")))?;
            writer.write_all(&chunk).await?;
            written += chunk.len() as u64;
        }
        writer.flush().await?;
        Ok(written)
    }

    /// Imports a CARv1/v2 archive (every block hash-checked), then pins each root recursively
    /// once its DAG is complete; returns the roots. A root whose DAG is incomplete is an error
    /// and stays unpinned (its blocks are garbage).
    pub async fn import_car<R: AsyncRead + Unpin + Send + 'static>(
        &self,
        reader: R,
    ) -> Result<Vec<Cid>, StoreError> {
        let _gc = self.inner.gc_lock.read().await;
        let reader = tokio_util::compat::TokioAsyncReadCompatExt::compat(reader);
        let roots = self
            .inner
            .ipfs
            .dag()
            .import(reader)
            .await
            .map_err(|e| StoreError::Car(format!("{e:#}")))?;
        for root in &roots {
            self.check_dag(*root).await?;
        }
        for root in &roots {
            self.inner
                .ipfs
                .insert_pin(*root)
                .recursive()
                .local()
                .await
                .map_err(repo_err("pinning an imported root"))?;
        }
        Ok(roots)
    }

    /// Stops the swarm and releases the repository lock.
    pub async fn shutdown(self) {
        let ipfs = self.inner.ipfs.clone();
        drop(self);
        ipfs.exit_daemon().await;
    }
}

/// Removes `*.recursive_temp` files (an interrupted pin write) under the pins directory.
fn remove_temp_pins(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    files::remove_files_where(dir, |name| name.ends_with(".recursive_temp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn offline(dir: &Path) -> BlockstoreConfig {
        BlockstoreConfig {
            repo: dir.to_path_buf(),
            listen: Vec::new(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_restart_in_the_same_process_waits_for_the_repository_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = Blockstore::open(offline(dir.path())).await.expect("open");
        let cid = store.add_bytes(b"kept").await.expect("add").cid;
        // Shut down and reopen at once, concurrently: the second open must not fail because
        // the first instance's tasks still hold the lock for a moment.
        let (_, reopened) = tokio::join!(store.shutdown(), Blockstore::open(offline(dir.path())));
        let store = reopened.expect("reopen waits for the lock");
        assert!(store.is_pinned(cid).await.expect("pins"));

        let held = tokio::time::timeout(
            REPO_IN_USE_WAIT + std::time::Duration::from_secs(10),
            Blockstore::open(offline(dir.path())),
        )
        .await
        .expect("a held repository is reported, not waited on forever");
        let err = held
            .expect_err("the repository is held by the open store")
            .to_string();
        assert!(err.contains("in use by another IPFS instance"), "{err}");
        store.shutdown().await;
    }

    async fn collect(
        s: BoxStream<'static, Result<Bytes, StoreError>>,
    ) -> Result<Vec<u8>, StoreError> {
        let parts: Vec<Bytes> = s.try_collect().await?;
        Ok(parts.concat())
    }

    /// Finds the file holding `cid`'s block in the repository.
    fn block_file(repo: &Path, cid: &Cid) -> PathBuf {
        let name = cid.to_string();
        let mut stack = vec![repo.join("blockstore")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("blockstore dir readable") {
                let p = e.expect("dir entry").path();
                if p.is_dir() {
                    stack.push(p);
                } else if p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().contains(&name))
                {
                    return p;
                }
            }
        }
        panic!("no block file for {cid}");
    }

    /// The facade's block writer and rust-ipfs's store must agree on where a block lives: a
    /// block rust-ipfs wrote is where `files` looks, and one `files` wrote rust-ipfs reads,
    /// lists and removes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn block_files_are_where_rust_ipfs_keeps_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Blockstore::open(offline(dir.path())).await.expect("open");
        let ipfs = &store.inner.ipfs;
        let theirs = Bytes::from_static(b"written by rust-ipfs");
        let theirs_cid = dag::raw_cid(&theirs);
        ipfs.put_block(&Block::new_unchecked(theirs_cid, theirs.clone()))
            .await
            .expect("put");
        let path = files::block_path(&store.blocks_dir(), &theirs_cid);
        assert_eq!(std::fs::read(&path).expect("rust-ipfs's file"), &theirs[..]);

        let ours = Bytes::from_static(b"written by the facade");
        let ours_cid = dag::raw_cid(&ours);
        let mut writer = files::BlockWriter::new(store.blocks_dir(), 4);
        writer.write(ours_cid, ours.clone()).await.expect("write");
        writer.finish().await.expect("finish");
        let read = ipfs.repo().get_block_now(ours_cid).await.expect("get");
        assert_eq!(read.expect("present").data(), &ours[..]);
        let listed: Vec<Cid> = ipfs.repo().list_blocks().await.collect().await;
        assert!(listed.contains(&ours_cid) && listed.contains(&theirs_cid));
        // unpinned: garbage to rust-ipfs as well
        let removed = store.gc().await.expect("gc");
        assert!(removed.contains(&ours_cid), "{removed:?}");
        assert!(!ipfs.repo().contains(ours_cid).await.expect("contains"));
        store.shutdown().await;
    }

    /// Leftovers of a pin write and of a block write that a crash interrupted are removed when
    /// the store opens, and reported; real pins and blocks are kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_removes_leftovers_of_interrupted_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Blockstore::open(offline(dir.path())).await.expect("open");
        let kept = store.add_bytes(b"kept record").await.expect("add").cid;
        let blocks_dir = store.blocks_dir();
        store.shutdown().await;

        let pin_temp = dir.path().join("datastore/pins/xy/somepin.recursive_temp");
        std::fs::create_dir_all(pin_temp.parent().unwrap()).unwrap();
        std::fs::write(&pin_temp, b"half a pin").unwrap();
        // a block temp file of a dead writer (pid 0 is never a user process)
        let block = files::block_path(&blocks_dir, &kept);
        let block_temp = PathBuf::from(format!("{}.0.7{}", block.display(), files::TEMP_SUFFIX));
        std::fs::write(&block_temp, b"half a block").unwrap();

        let store = Blockstore::open(offline(dir.path())).await.expect("reopen");
        let report = store.open_report().clone();
        assert_eq!(report.interrupted_pin_writes, vec![pin_temp.clone()]);
        assert_eq!(report.interrupted_block_writes, vec![block_temp.clone()]);
        assert!(!pin_temp.exists() && !block_temp.exists());
        assert_eq!(store.list_pins().await.expect("pins"), vec![kept]);
        assert_eq!(collect(store.cat(kept)).await.expect("cat"), b"kept record");
        assert!(store.check().await.expect("check").is_clean());
        store.shutdown().await;
    }

    /// `add` pins with the references it built; the pin must be the one rust-ipfs's own
    /// recursive pin (which walks the DAG) writes, and its reverse index must know every block.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_added_dag_is_pinned_as_rust_ipfs_pins_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Blockstore::open(offline(dir.path())).await.expect("open");
        let pins = dir.path().join("datastore").join("pins");
        let pin_file = |root: Cid| {
            // rust-ipfs names a pin by the base32 of the CID's bytes, without multibase prefix
            let name = format!("{}.recursive", &root.to_string()[1..]);
            let mut stack = vec![pins.clone()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).expect("pins dir").flatten() {
                    if e.path().is_dir() {
                        stack.push(e.path());
                    } else if e.file_name().to_string_lossy() == name {
                        return std::fs::read(e.path()).expect("pin file");
                    }
                }
            }
            panic!("no pin file for {root}");
        };
        let added = store
            .add_bytes(&seeded(3 * CHUNK_SIZE + 7, 9))
            .await
            .expect("add");
        assert_eq!(added.blocks, 5);
        let ours = pin_file(added.cid);
        let blocks: Vec<Cid> = store.inner.ipfs.repo().list_blocks().await.collect().await;
        assert_eq!(blocks.len(), 5);
        for b in &blocks {
            assert!(store.is_pinned(*b).await.expect("is_pinned"), "{b}");
        }
        assert!(store.gc().await.expect("gc").is_empty());

        store.unpin(added.cid).await.expect("unpin");
        store.pin(added.cid).await.expect("rust-ipfs's pin");
        assert_eq!(pin_file(added.cid), ours);

        store.unpin(added.cid).await.expect("unpin");
        assert_eq!(store.gc().await.expect("gc").len(), 5);
        store.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn add_cat_round_trip_and_only_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Blockstore::open(offline(dir.path())).await.expect("open");
        for (i, len) in [
            0,
            1,
            CHUNK_SIZE - 1,
            CHUNK_SIZE,
            CHUNK_SIZE + 1,
            3 * CHUNK_SIZE + 7,
        ]
        .into_iter()
        .enumerate()
        {
            let data = seeded(len, i as u64);
            let added = store.add_bytes(&data).await.expect("add");
            assert_eq!(added.size, len as u64);
            assert_eq!(added.cid, dag::hash_bytes(&data), "len {len}");
            assert_eq!(
                Blockstore::only_hash(&data[..]).await.expect("only_hash"),
                added.cid
            );
            assert_eq!(
                collect(store.cat(added.cid)).await.expect("cat"),
                data,
                "len {len}"
            );
            assert_eq!(store.file_size(added.cid).await.expect("size"), len as u64);
            assert!(store.is_pinned(added.cid).await.expect("is_pinned"));
            let mut via_reader = Vec::new();
            store
                .cat_reader(added.cid)
                .read_to_end(&mut via_reader)
                .await
                .expect("reader");
            assert_eq!(via_reader, data);
        }
        assert_eq!(
            store
                .add_bytes(&seeded(3 * CHUNK_SIZE + 7, 5))
                .await
                .expect("add")
                .blocks,
            5
        );
        store.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cat_range_matches_slices() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Blockstore::open(offline(dir.path())).await.expect("open");
        let len = 5 * CHUNK_SIZE + 123;
        let data = seeded(len, 42);
        let cid = store.add_bytes(&data).await.expect("add").cid;
        let c = CHUNK_SIZE as u64;
        for r in [
            0..0,
            0..1,
            5..c,
            c - 1..c + 1,
            c..2 * c,
            3..len as u64,
            len as u64 - 1..len as u64,
            2 * c + 9..4 * c + 1,
        ] {
            let got = collect(store.cat_range(cid, r.clone()))
                .await
                .expect("range");
            assert_eq!(got, &data[r.start as usize..r.end as usize], "range {r:?}");
        }
        for bad in [0..len as u64 + 1, Range { start: 7, end: 3 }] {
            assert!(
                matches!(
                    collect(store.cat_range(cid, bad.clone())).await,
                    Err(StoreError::InvalidRange { .. })
                ),
                "{bad:?}"
            );
        }
        // a single raw leaf
        let small = store.add_bytes(b"0123456789").await.expect("add").cid;
        assert_eq!(
            collect(store.cat_range(small, 2..5)).await.expect("range"),
            b"234"
        );
        store.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tampered_or_missing_blocks_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Blockstore::open(offline(dir.path())).await.expect("open");
        let data = seeded(3 * CHUNK_SIZE, 7);
        let cid = store.add_bytes(&data).await.expect("add").cid;
        let leaf = dag::raw_cid(&data[CHUNK_SIZE..2 * CHUNK_SIZE]);
        let path = block_file(dir.path(), &leaf);
        let mut bytes = std::fs::read(&path).expect("read block");
        bytes[100] ^= 1;
        std::fs::write(&path, &bytes).expect("tamper");
        let err = collect(store.cat(cid))
            .await
            .expect_err("tampered block must fail");
        assert!(matches!(err, StoreError::HashMismatch { .. }), "{err}");
        // bytes before the tampered leaf may be released, never the tampered bytes themselves
        let first = collect(store.cat_range(cid, 0..CHUNK_SIZE as u64 - 1))
            .await
            .expect("first leaf intact");
        assert_eq!(first, &data[..CHUNK_SIZE - 1]);
        std::fs::remove_file(&path).expect("remove block");
        assert!(matches!(
            collect(store.cat(cid)).await,
            Err(StoreError::BlockMissing { .. })
        ));
        assert!(matches!(
            store.check_dag(cid).await,
            Err(StoreError::IncompleteDag { .. })
        ));
        let report = store.check().await.expect("check");
        assert_eq!(report.incomplete_pins, vec![(cid, leaf)]);
        // a CID that is not a file
        let cbor = Cid::new_v1(
            0x71,
            multihash_codetable::MultihashDigest::digest(
                &multihash_codetable::Code::Sha2_256,
                b"x",
            ),
        );
        assert!(matches!(
            collect(store.cat(cbor)).await,
            Err(StoreError::UnsupportedCodec { .. })
        ));
        store.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unpin_then_gc_removes_only_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Blockstore::open(offline(dir.path())).await.expect("open");
        let keep = store
            .add_bytes(&seeded(2 * CHUNK_SIZE + 1, 1))
            .await
            .expect("add");
        let drop_ = store
            .add_bytes(&seeded(2 * CHUNK_SIZE + 1, 2))
            .await
            .expect("add");
        assert!(
            store.gc().await.expect("gc").is_empty(),
            "everything is pinned"
        );
        let mut pins = store.list_pins().await.expect("pins");
        pins.sort();
        let mut want = vec![keep.cid, drop_.cid];
        want.sort();
        assert_eq!(pins, want);
        store.unpin(drop_.cid).await.expect("unpin");
        assert!(!store.is_pinned(drop_.cid).await.expect("is_pinned"));
        let removed = store.gc().await.expect("gc");
        assert_eq!(removed.len() as u64, drop_.blocks);
        assert!(!store.has_block(drop_.cid).await.expect("has"));
        assert!(collect(store.cat(keep.cid)).await.is_ok());
        assert!(
            store.pin(drop_.cid).await.is_err(),
            "cannot pin a DAG that is gone"
        );
        store.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn car_export_import_round_trip_and_identity_persists() {
        let a_dir = tempfile::tempdir().expect("tempdir");
        let b_dir = tempfile::tempdir().expect("tempdir");
        let a = Blockstore::open(offline(a_dir.path()))
            .await
            .expect("open a");
        let peer_a = a.peer_id();
        let data = seeded(4 * CHUNK_SIZE + 3, 11);
        let cid = a.add_bytes(&data).await.expect("add").cid;
        let mut car = Vec::new();
        let n = a.export_car(cid, &mut car).await.expect("export");
        assert_eq!(n as usize, car.len());
        a.shutdown().await;

        let b = Blockstore::open(offline(b_dir.path()))
            .await
            .expect("open b");
        assert_ne!(b.peer_id(), peer_a);
        let roots = b
            .import_car(std::io::Cursor::new(car.clone()))
            .await
            .expect("import");
        assert_eq!(roots, vec![cid]);
        assert!(b.is_pinned(cid).await.expect("pinned"));
        assert_eq!(collect(b.cat(cid)).await.expect("cat"), data);
        // a truncated archive is an error and pins nothing new
        let c_dir = tempfile::tempdir().expect("tempdir");
        let c = Blockstore::open(offline(c_dir.path()))
            .await
            .expect("open c");
        assert!(
            c.import_car(std::io::Cursor::new(car[..car.len() / 2].to_vec()))
                .await
                .is_err()
        );
        assert!(c.list_pins().await.expect("pins").is_empty());
        b.shutdown().await;
        c.shutdown().await;

        let again = Blockstore::open(offline(a_dir.path()))
            .await
            .expect("reopen a");
        assert_eq!(again.peer_id(), peer_a, "identity persists in the repo");
        assert!(again.open_report().is_clean());
        assert_eq!(
            collect(again.cat(cid)).await.expect("cat after reopen"),
            data
        );
        again.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_identity_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("identity.key"), b"not a key").expect("write");
        let err = Blockstore::open(offline(dir.path()))
            .await
            .expect_err("corrupt identity");
        assert!(matches!(err, StoreError::Identity { .. }), "{err}");
    }
}
