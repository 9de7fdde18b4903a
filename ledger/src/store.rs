//! Durable consensus state: applies the replica's [`Record`]s atomically and loads a
//! [`PersistedState`] back on restart.
//!
//! - [`RedbStore`]: redb on disk (each [`Store::apply`] is one write transaction, fsync'd on
//!   commit), or on redb's in-memory backend.
//! - [`MemStore`]: plain maps, for the simulator (it survives a simulated crash because the
//!   simulator keeps it while discarding the replica).
//!
//! Blocks are never pruned (they are the ledger's history); votes and prepared certificates
//! at or below a stable checkpoint are.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::app::Hash;
use crate::block::CommittedBlock;
use crate::error::LedgerError;
use crate::replica::msg::PreparedCert;
use crate::replica::{PersistedState, Record, StableCheckpoint};

/// Where a replica's records go.
pub trait Store {
    /// Makes `records` durable, all or nothing.
    fn apply(&mut self, records: &[Record]) -> Result<(), LedgerError>;
    /// The state to restart from, or `None` if nothing was ever persisted.
    fn load(&self) -> Result<Option<PersistedState>, LedgerError>;
    /// The committed block at `height`, if stored.
    fn block(&self, height: u64) -> Result<Option<CommittedBlock>, LedgerError>;
}

/// An in-memory store (simulator and tests).
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    touched: bool,
    view: Option<(u64, bool)>,
    votes: BTreeMap<(u64, u64), Hash>,
    prepared: BTreeMap<u64, PreparedCert>,
    checkpoint: Option<StableCheckpoint>,
    blocks: BTreeMap<u64, CommittedBlock>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest stored block height (0 if none).
    pub fn last_height(&self) -> u64 {
        self.blocks.keys().next_back().copied().unwrap_or(0)
    }
}

impl Store for MemStore {
    fn apply(&mut self, records: &[Record]) -> Result<(), LedgerError> {
        self.touched = true;
        for r in records {
            match r {
                Record::View { view, active } => {
                    self.view = Some((*view, *active));
                }
                Record::Vote {
                    view,
                    height,
                    digest,
                } => {
                    self.votes.insert((*view, *height), *digest);
                }
                Record::Prepared(c) => {
                    self.prepared.insert(c.height, c.clone());
                }
                Record::Block(b) => {
                    self.blocks.insert(b.header.height, b.clone());
                }
                Record::Checkpoint(cp) => {
                    if self
                        .checkpoint
                        .as_ref()
                        .is_none_or(|c| c.cert.height < cp.cert.height)
                    {
                        self.checkpoint = Some(cp.clone());
                    }
                }
                Record::Prune { through } => {
                    self.votes.retain(|(_, h), _| h > through);
                    self.prepared.retain(|h, _| h > through);
                }
            }
        }
        Ok(())
    }

    fn load(&self) -> Result<Option<PersistedState>, LedgerError> {
        if !self.touched {
            return Ok(None);
        }
        let from = self.checkpoint.as_ref().map_or(0, |c| c.cert.height);
        let (view, view_active) = self.view.unwrap_or((0, true));
        Ok(Some(PersistedState {
            view,
            view_active,
            votes: self.votes.clone(),
            prepared: self.prepared.clone(),
            checkpoint: self.checkpoint.clone(),
            blocks: self
                .blocks
                .range(from + 1..)
                .map(|(_, b)| b.clone())
                .collect(),
        }))
    }

    fn block(&self, height: u64) -> Result<Option<CommittedBlock>, LedgerError> {
        Ok(self.blocks.get(&height).cloned())
    }
}

const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("consensus_meta");
const VOTES: TableDefinition<'static, (u64, u64), [u8; 32]> =
    TableDefinition::new("consensus_votes");
const PREPARED: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("consensus_prepared");
const BLOCKS: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("blocks");

const KEY_VIEW: &str = "view";
const KEY_CHECKPOINT: &str = "checkpoint";
const KEY_CHECKPOINT_HEIGHT: &str = "checkpoint_height";

fn store_err(what: &'static str) -> impl Fn(String) -> LedgerError {
    move |e| LedgerError::Store(format!("{what}: {e}"))
}

macro_rules! st {
    ($e:expr, $what:literal) => {
        $e.map_err(|e| store_err($what)(e.to_string()))
    };
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("invariant: persisted records encode")
}

fn dec<'a, T: serde::Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, LedgerError> {
    postcard::from_bytes(bytes).map_err(|e| LedgerError::Corrupt(format!("{what}: {e}")))
}

/// The ledger store's page cache: recent blocks, votes and the latest snapshot stay hot; older
/// history is read from disk (state transfer, proofs), which the OS page cache also serves.
pub const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// The redb-backed store. Cheap to clone: clones share one database, so a reader (the node
/// serving committed blocks) can hold a clone while the driver writes through another.
#[derive(Clone)]
pub struct RedbStore {
    db: std::sync::Arc<Database>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates) the database file at `path`, with a [`CACHE_BYTES`] page cache
    /// (redb's default, 1 GiB, let a node's memory grow with the chain under load).
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let db = st!(
            redb::Builder::new()
                .set_cache_size(CACHE_BYTES)
                .create(path),
            "open"
        )?;
        Self::init(db)
    }

    /// A redb database on the in-memory backend (tests).
    pub fn in_memory() -> Result<Self, LedgerError> {
        let db = st!(
            Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()),
            "open in memory"
        )?;
        Self::init(db)
    }

    fn init(db: Database) -> Result<Self, LedgerError> {
        let tx = st!(db.begin_write(), "begin")?;
        {
            st!(tx.open_table(META), "open meta")?;
            st!(tx.open_table(VOTES), "open votes")?;
            st!(tx.open_table(PREPARED), "open prepared")?;
            st!(tx.open_table(BLOCKS), "open blocks")?;
        }
        st!(tx.commit(), "commit")?;
        Ok(Self {
            db: std::sync::Arc::new(db),
        })
    }
}

impl Store for RedbStore {
    fn apply(&mut self, records: &[Record]) -> Result<(), LedgerError> {
        let tx = st!(self.db.begin_write(), "begin")?;
        {
            let mut meta = st!(tx.open_table(META), "open meta")?;
            let mut votes = st!(tx.open_table(VOTES), "open votes")?;
            let mut prepared = st!(tx.open_table(PREPARED), "open prepared")?;
            let mut blocks = st!(tx.open_table(BLOCKS), "open blocks")?;
            for r in records {
                match r {
                    Record::View { view, active } => {
                        st!(
                            meta.insert(KEY_VIEW, enc(&(*view, *active)).as_slice()),
                            "view"
                        )?;
                    }
                    Record::Vote {
                        view,
                        height,
                        digest,
                    } => {
                        st!(votes.insert((*view, *height), *digest), "vote")?;
                    }
                    Record::Prepared(c) => {
                        st!(prepared.insert(c.height, enc(c).as_slice()), "prepared")?;
                    }
                    Record::Block(b) => {
                        st!(blocks.insert(b.header.height, enc(b).as_slice()), "block")?;
                    }
                    Record::Checkpoint(cp) => {
                        let newer = match st!(meta.get(KEY_CHECKPOINT_HEIGHT), "checkpoint")? {
                            Some(old) => {
                                dec::<u64>("checkpoint height", old.value())? < cp.cert.height
                            }
                            None => true,
                        };
                        if newer {
                            st!(
                                meta.insert(KEY_CHECKPOINT, enc(cp).as_slice()),
                                "checkpoint"
                            )?;
                            st!(
                                meta.insert(KEY_CHECKPOINT_HEIGHT, enc(&cp.cert.height).as_slice()),
                                "checkpoint"
                            )?;
                        }
                    }
                    Record::Prune { through } => {
                        let t = *through;
                        st!(votes.retain(|(_, h), _| h > t), "prune votes")?;
                        st!(prepared.retain(|h, _| h > t), "prune prepared")?;
                    }
                }
            }
        }
        st!(tx.commit(), "commit")?;
        Ok(())
    }

    fn load(&self) -> Result<Option<PersistedState>, LedgerError> {
        let tx = st!(self.db.begin_read(), "begin read")?;
        let meta = st!(tx.open_table(META), "open meta")?;
        let votes_t = st!(tx.open_table(VOTES), "open votes")?;
        let prepared_t = st!(tx.open_table(PREPARED), "open prepared")?;
        let blocks_t = st!(tx.open_table(BLOCKS), "open blocks")?;
        let view = st!(meta.get(KEY_VIEW), "view")?;
        let any_votes = st!(votes_t.len(), "votes")? > 0;
        let any_blocks = st!(blocks_t.len(), "blocks")? > 0;
        if view.is_none() && !any_votes && !any_blocks {
            return Ok(None);
        }
        let (view, view_active) = match view {
            Some(v) => dec::<(u64, bool)>("view", v.value())?,
            None => (0, true),
        };
        let checkpoint: Option<StableCheckpoint> =
            match st!(meta.get(KEY_CHECKPOINT), "checkpoint")? {
                Some(c) => Some(dec("checkpoint", c.value())?),
                None => None,
            };
        let mut votes = BTreeMap::new();
        for e in st!(votes_t.iter(), "votes")? {
            let (k, v) = st!(e, "votes")?;
            votes.insert(k.value(), v.value());
        }
        let mut prepared = BTreeMap::new();
        for e in st!(prepared_t.iter(), "prepared")? {
            let (k, v) = st!(e, "prepared")?;
            prepared.insert(k.value(), dec::<PreparedCert>("prepared", v.value())?);
        }
        let from = checkpoint.as_ref().map_or(0, |c| c.cert.height);
        let mut blocks = Vec::new();
        for e in st!(blocks_t.range(from + 1..), "blocks")? {
            let (_, v) = st!(e, "blocks")?;
            blocks.push(dec::<CommittedBlock>("block", v.value())?);
        }
        Ok(Some(PersistedState {
            view,
            view_active,
            votes,
            prepared,
            checkpoint,
            blocks,
        }))
    }

    fn block(&self, height: u64) -> Result<Option<CommittedBlock>, LedgerError> {
        let tx = st!(self.db.begin_read(), "begin read")?;
        let t = st!(tx.open_table(BLOCKS), "open blocks")?;
        match st!(t.get(height), "block")? {
            Some(v) => Ok(Some(dec("block", v.value())?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockHeader, CheckpointCert, CommitCert, Sig};

    fn block(h: u64) -> CommittedBlock {
        CommittedBlock {
            header: BlockHeader {
                chain_id: "c".into(),
                epoch: 0,
                height: h,
                prev_hash: [0; 32],
                tx_root: [1; 32],
                tx_count: 0,
                state_root: [2; 32],
            },
            txs: vec![],
            cert: CommitCert {
                view: 0,
                sigs: vec![(0, Sig([9; 64]))],
            },
        }
    }

    fn records() -> Vec<Vec<Record>> {
        let cp = StableCheckpoint {
            cert: CheckpointCert {
                height: 2,
                block_hash: [3; 32],
                state_root: [4; 32],
                sigs: vec![],
            },
            header: block(2).header,
            snapshot: vec![1, 2, 3],
        };
        vec![
            vec![
                Record::View {
                    view: 1,
                    active: false,
                },
                Record::Vote {
                    view: 1,
                    height: 1,
                    digest: [5; 32],
                },
            ],
            vec![
                Record::Vote {
                    view: 1,
                    height: 3,
                    digest: [6; 32],
                },
                Record::Block(block(1)),
            ],
            vec![
                Record::Block(block(2)),
                Record::Block(block(3)),
                Record::Checkpoint(cp),
                Record::Prune { through: 2 },
            ],
            vec![Record::View {
                view: 2,
                active: true,
            }],
        ]
    }

    fn check(store: &mut dyn Store) {
        assert!(store.load().unwrap().is_none());
        for r in records() {
            store.apply(&r).unwrap();
        }
        let s = store.load().unwrap().unwrap();
        assert_eq!((s.view, s.view_active), (2, true));
        assert_eq!(
            s.votes.len(),
            1,
            "votes at or below the checkpoint are pruned"
        );
        assert_eq!(s.votes[&(1, 3)], [6; 32]);
        assert_eq!(s.checkpoint.as_ref().unwrap().cert.height, 2);
        assert_eq!(
            s.blocks.iter().map(|b| b.header.height).collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(
            store.block(1).unwrap().unwrap(),
            block(1),
            "history is kept"
        );
    }

    #[test]
    fn corrupt_records_are_errors() {
        let store = RedbStore::in_memory().unwrap();
        {
            let tx = store.db.begin_write().unwrap();
            {
                let mut t = tx.open_table(BLOCKS).unwrap();
                t.insert(1u64, [0xFFu8, 0xFF, 0xFF].as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        assert!(matches!(store.load(), Err(LedgerError::Corrupt(_))));
        assert!(matches!(store.block(1), Err(LedgerError::Corrupt(_))));
    }

    #[test]
    fn both_stores_agree() {
        check(&mut MemStore::new());
        check(&mut RedbStore::in_memory().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        {
            let mut s = RedbStore::open(&path).unwrap();
            check(&mut s);
        }
        // Reopening the file gives the same state.
        let s = RedbStore::open(&path).unwrap();
        let st = s.load().unwrap().unwrap();
        assert_eq!(st.view, 2);
        assert_eq!(st.blocks.len(), 1);
    }
}
