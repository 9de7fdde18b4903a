//! The search index as a view of the ledger, and background replication of record blobs.
//!
//! The follower is a dedicated thread (tantivy's writes are blocking) that reads the
//! [`AppEvent`]s of [`super::app::SharedLedger`] in commit order, turns `RecordAdded` /
//! `RecordRemoved` into [`IndexEvent`]s, marks every block applied, and commits the index after
//! each batch of events, at most every [`COMMIT_INTERVAL`] (a tantivy commit writes a segment;
//! committing per block under upload load cost more CPU than the records). On
//! [`AppEvent::Restored`] (or at start) it catches up from the state itself: every record
//! registered, or removed, above the index's applied height. If the index
//! refuses an event (a conflict or an out-of-order event: the index and the ledger disagree),
//! it rebuilds the index from the state into a fresh directory and swaps it in.
//!
//! Every record the follower sees is handed to the replicator, which fetches and pins its DAG
//! from the consortium's IPFS peers (bounded concurrency, retries with backoff), so a record
//! survives the loss of the node that took it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ehr_ledger::state::{LedgerState, RecordStatus, StateEvent};
use ehr_search::index::{Index, IndexConfig, IndexEvent};
use ehr_search::sse::{CapsuleId as SseCapsuleId, Label};
use ehr_storage::blockstore::{Blockstore, Cid, PeerId};
use tokio::sync::{Semaphore, mpsc};

use super::app::AppEvent;
use super::metrics::Metrics;

/// The index directory in use: the highest `gen-<n>` under `root`, or `gen-0`.
pub fn current_index_dir(root: &Path) -> std::io::Result<(u64, PathBuf)> {
    std::fs::create_dir_all(root)?;
    let mut best = None;
    for e in std::fs::read_dir(root)? {
        let e = e?;
        if let Some(n) = e
            .file_name()
            .to_str()
            .and_then(|s| s.strip_prefix("gen-"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            best = best.max(Some(n));
        }
    }
    let n = best.unwrap_or(0);
    Ok((n, root.join(format!("gen-{n}"))))
}

fn add_event(
    cid: &[u8],
    capsule: [u8; 32],
    epoch: u64,
    labels: &[[u8; 16]],
    height: u64,
) -> IndexEvent {
    IndexEvent::RecordAdded {
        cid: cid.to_vec(),
        capsule_id: SseCapsuleId(capsule),
        epoch: u32::try_from(epoch).unwrap_or(u32::MAX),
        height,
        labels: labels.iter().map(|l| Label(*l)).collect(),
    }
}

/// The index events that bring an index at `applied` up to the state, in height order.
fn catch_up_events(state: &LedgerState, applied: u64) -> (Vec<IndexEvent>, Vec<Vec<u8>>, u64) {
    let mut evs: Vec<(u64, u8, IndexEvent)> = Vec::new();
    let mut cids = Vec::new();
    for r in state.records() {
        cids.push(r.cid.0.clone());
        if r.registered_at > applied {
            evs.push((
                r.registered_at,
                0,
                add_event(
                    &r.cid.0,
                    r.capsule.0,
                    r.epoch,
                    &r.search_labels,
                    r.registered_at,
                ),
            ));
        }
        if let RecordStatus::Superseded { at, .. } = &r.status
            && *at > applied
        {
            evs.push((
                *at,
                1,
                IndexEvent::RecordRemoved {
                    cid: r.cid.0.clone(),
                    height: *at,
                },
            ));
        }
    }
    evs.sort_by_key(|e| (e.0, e.1));
    (
        evs.into_iter().map(|(_, _, e)| e).collect(),
        cids,
        state.height(),
    )
}

/// The follower's shared pieces.
#[derive(Debug, Clone)]
pub struct Follower {
    /// The ledger state.
    pub state: Arc<RwLock<LedgerState>>,
    /// The index, read by searches.
    pub index: Arc<RwLock<Index>>,
    /// Where index generations live.
    pub index_root: PathBuf,
    /// The index configuration.
    pub index_config: IndexConfig,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Records to replicate.
    pub replicate: mpsc::UnboundedSender<Vec<u8>>,
}

impl Follower {
    /// Brings the index up to the state (at start, and after a restore). Returns the records
    /// the state holds (to be replicated).
    fn catch_up(&self) -> Result<(), String> {
        let applied = self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .applied_height();
        let (events, cids, height) = {
            let st = self.state.read().unwrap_or_else(|e| e.into_inner());
            catch_up_events(&st, applied)
        };
        for c in cids {
            let _ = self.replicate.send(c);
        }
        let mut idx = self.index.write().unwrap_or_else(|e| e.into_inner());
        for e in &events {
            idx.apply(e).map_err(|e| e.to_string())?;
        }
        idx.apply(&IndexEvent::BlockApplied { height })
            .map_err(|e| e.to_string())?;
        idx.commit().map_err(|e| e.to_string())?;
        self.metrics.index_height.set(idx.applied_height() as i64);
        Ok(())
    }

    /// Rebuilds the index from the state into a new generation and swaps it in.
    fn rebuild(&self) -> Result<(), String> {
        let (n, old) = current_index_dir(&self.index_root).map_err(|e| e.to_string())?;
        let new_dir = self.index_root.join(format!("gen-{}", n + 1));
        let _ = std::fs::remove_dir_all(&new_dir);
        std::fs::create_dir_all(&new_dir).map_err(|e| e.to_string())?;
        let mut fresh =
            Index::open(&new_dir, self.index_config.clone()).map_err(|e| e.to_string())?;
        let (events, _, height) = {
            let st = self.state.read().unwrap_or_else(|e| e.into_inner());
            catch_up_events(&st, 0)
        };
        for e in &events {
            fresh.apply(e).map_err(|e| e.to_string())?;
        }
        fresh
            .apply(&IndexEvent::BlockApplied { height })
            .map_err(|e| e.to_string())?;
        fresh.commit().map_err(|e| e.to_string())?;
        {
            let mut idx = self.index.write().unwrap_or_else(|e| e.into_inner());
            *idx = fresh;
            self.metrics.index_height.set(idx.applied_height() as i64);
        }
        let _ = std::fs::remove_dir_all(old);
        tracing::warn!(height, "search index rebuilt from the ledger state");
        Ok(())
    }

    fn apply_block(
        &self,
        idx: &mut Index,
        height: u64,
        events: &[StateEvent],
    ) -> Result<(), String> {
        for e in events {
            let ie = match e {
                StateEvent::RecordAdded {
                    cid,
                    capsule,
                    epoch,
                    labels,
                    height,
                } => {
                    let _ = self.replicate.send(cid.0.clone());
                    add_event(&cid.0, capsule.0, *epoch, labels, *height)
                }
                StateEvent::RecordRemoved { cid, height, .. } => IndexEvent::RecordRemoved {
                    cid: cid.0.clone(),
                    height: *height,
                },
                _ => continue,
            };
            idx.apply(&ie).map_err(|e| e.to_string())?;
        }
        idx.apply(&IndexEvent::BlockApplied { height })
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Runs until the event channel closes.
    pub fn run(self, mut rx: mpsc::UnboundedReceiver<AppEvent>) {
        if let Err(e) = self.catch_up() {
            tracing::error!(error = %e, "index catch-up at start failed; rebuilding");
            if let Err(e) = self.rebuild() {
                tracing::error!(error = %e, "index rebuild failed");
            }
        }
        let mut last_commit = std::time::Instant::now();
        while let Some(first) = rx.blocking_recv() {
            // Commit at most every COMMIT_INTERVAL: each tantivy commit writes a segment (files
            // and a term dictionary), so committing per block under load spent more CPU on
            // segments than on records. Events that arrive meanwhile join the batch.
            let wait = COMMIT_INTERVAL.saturating_sub(last_commit.elapsed());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            let mut broken = None;
            let mut restored = false;
            {
                let mut idx = self.index.write().unwrap_or_else(|e| e.into_inner());
                for ev in &batch {
                    match ev {
                        AppEvent::Block { height, events } => {
                            if broken.is_none()
                                && let Err(e) = self.apply_block(&mut idx, *height, events)
                            {
                                broken = Some(e);
                            }
                        }
                        AppEvent::Restored { .. } => restored = true,
                    }
                }
                if broken.is_none() {
                    if let Err(e) = idx.commit() {
                        broken = Some(e.to_string());
                    }
                    last_commit = std::time::Instant::now();
                    self.metrics.index_height.set(idx.applied_height() as i64);
                }
            }
            if restored
                && broken.is_none()
                && let Err(e) = self.catch_up()
            {
                broken = Some(e);
            }
            if let Some(e) = broken {
                tracing::error!(error = %e, "the index refused a ledger event; rebuilding it");
                if let Err(e) = self.rebuild() {
                    tracing::error!(error = %e, "index rebuild failed");
                }
            }
        }
    }
}

/// Shortest time between two index commits (also the longest a committed record waits to
/// become searchable beyond its own commit).
const COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);
/// Most ledger events applied in one index commit.
const MAX_BATCH: usize = 4096;

/// Fetches and pins every record's DAG that is not pinned here yet.
pub async fn replicate(
    store: Blockstore,
    providers: Vec<PeerId>,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    metrics: Arc<Metrics>,
    concurrency: usize,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    while let Some(bytes) = rx.recv().await {
        let Ok(cid) = Cid::try_from(bytes.as_slice()) else {
            tracing::warn!("a ledger record has a CID the blockstore cannot parse");
            continue;
        };
        if store.is_pinned(cid).await.unwrap_or(false) {
            continue;
        }
        metrics.replication_queue.inc();
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let store = store.clone();
        let providers = providers.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(500);
            for attempt in 1..=12u32 {
                match store
                    .fetch_and_pin(cid, &providers, Duration::from_secs(20))
                    .await
                {
                    Ok(()) => {
                        metrics.replication_done.inc();
                        break;
                    }
                    Err(e) => {
                        metrics.replication_failures.inc();
                        if attempt == 12 {
                            tracing::warn!(%cid, error = %e, "replication gave up (retried at the next start)");
                            break;
                        }
                        tracing::debug!(%cid, error = %e, "replication attempt failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(60));
                    }
                }
                if store.is_pinned(cid).await.unwrap_or(false) {
                    break;
                }
            }
            metrics.replication_queue.dec();
            drop(permit);
        });
    }
}
