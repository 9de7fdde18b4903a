//! The tantivy index of opaque labels, built only from ledger events.
//!
//! # What is stored
//! One tantivy document per registered record:
//! - `label`: the record's 16-byte labels as raw bytes terms, indexed with doc ids only (no
//!   positions, no frequencies, no field norms), not stored;
//! - `cid`: the record's CID (binary), indexed (to find a record by CID) and stored;
//! - `height` (ledger height), `epoch`, `cid_key` (see *Order*) as u64 fast fields, `capsule` as a
//!   bytes fast field;
//! - `digest`: SHA-256 of the event's contents, stored, to tell a replayed event from a conflicting
//!   one.
//!
//! A removal adds a second, label-less document (`removed_cid`, `height`). The record's own
//! document is kept, so its labels stay resolvable and a search keeps expanding a chain past the
//! removed entry (Π_bas-style chains break at the first missing counter); removed records are
//! filtered out of every result. The set of removed CIDs is small and kept in memory (rebuilt from
//! the `removed_cid` terms on open).
//!
//! # Events
//! The index changes only through [`Index::apply`] with an [`IndexEvent`], which the node derives
//! from committed ledger transactions, so the index is a view of the ledger and can be rebuilt
//! from it. `apply` is idempotent: an event already applied (same CID, same contents) is a no-op
//! ([`Applied::AlreadyApplied`]); an event that contradicts an applied one is
//! [`IndexError::Conflict`]; a new event older than the last applied height is
//! [`IndexError::OutOfOrder`]. Events at the last applied height are accepted, so replaying the
//! whole last block after a crash is safe. [`Index::commit`] makes the applied events durable and
//! searchable and records the last applied height in the commit's payload.
//!
//! # Search
//! [`Index::search`] evaluates a [`Query`]: for each trapdoor `K_{w,e}` it computes
//! `label_c = PRF(K_{w,e}, c)` for `c = 0, 1, ...`, looks each label up in the segments' term
//! dictionaries (the segment of the previous hit first) and stops after `max_gap + 1` consecutive
//! absent labels (`max_gap` tolerates counters reserved for uploads that never reached the
//! ledger; 0 is classic Π_bas). Keyword = union of its trapdoors' records, AND = intersection,
//! OR = union. Cost grows with the number of hits, not with the number of records.
//! Chains longer than 1,024 labels are looked up in parallel blocks (`search_threads`) with the
//! same stopping rule, so results never depend on the thread count.
//!
//! # Order and pagination
//! Results are sorted by (ledger height, `cid_key`, CID), `cid_key` being the first 8 bytes of
//! `SHA-256("ehr/index/v1/cid-order" || cid)`: a total order fixed at indexing time. A [`Cursor`]
//! names the last hit returned; the next page starts strictly after it. Records are only ever
//! appended at heights at or above the last applied height, so paging never returns a hit twice
//! and never skips one that existed when the first page was served, even while records are added.
//! The cursor reveals only the height and CID of a hit the caller already received.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tantivy::schema::{BytesOptions, Field as TField, NumericOptions, Schema, Value};
use tantivy::{
    DocAddress, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, index::SegmentReader,
    postings::BlockSegmentPostings,
};

use crate::error::IndexError;
use crate::sse::{CapsuleId, DEFAULT_CHAIN_EPOCHS, Label, Query, Trapdoor};

/// Longest CID accepted, in bytes.
pub const MAX_CID_BYTES: usize = 256;
/// Most labels one record may carry.
pub const MAX_LABELS_PER_RECORD: usize = 10_000;

const PAYLOAD_PREFIX: &str = "ehr-index-v1:";
const DS_CID_ORDER: &[u8] = b"ehr/index/v1/cid-order";
const CURSOR_VERSION: u8 = 1;

/// Configuration of an [`Index`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexConfig {
    /// Memory budget of the tantivy writer, in bytes (at least 15 MB per writer thread).
    pub writer_memory_bytes: usize,
    /// Number of tantivy indexing threads.
    pub writer_threads: usize,
    /// How many consecutive absent labels a chain expansion skips before it stops.
    pub max_gap: u32,
    /// Most trapdoors one query may carry.
    pub max_query_trapdoors: usize,
    /// Deepest nesting of AND/OR a query may have.
    pub max_query_depth: usize,
    /// Largest page a search may ask for.
    pub max_page_size: usize,
    /// Threads one long chain expansion may use (chains of up to 1,024 labels use one).
    /// Default 1: on a loaded two-core machine the parallel expansion measured slower; raise it
    /// on nodes with idle cores.
    pub search_threads: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            writer_memory_bytes: 64 << 20,
            writer_threads: 1,
            max_gap: 8,
            max_query_trapdoors: 4096,
            max_query_depth: 16,
            max_page_size: 1000,
            search_threads: 1,
        }
    }
}

impl IndexConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), IndexError> {
        let bad = |field, reason: &str| {
            Err(IndexError::Config {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.writer_threads == 0 || self.writer_threads > 64 {
            return bad("writer_threads", "must be between 1 and 64");
        }
        if self.writer_memory_bytes < self.writer_threads * (15 << 20) {
            return bad("writer_memory_bytes", "at least 15 MB per writer thread");
        }
        if self.max_gap > 1024 {
            return bad("max_gap", "at most 1024");
        }
        if self.max_query_trapdoors == 0 {
            return bad("max_query_trapdoors", "must be positive");
        }
        if self.max_query_depth == 0 {
            return bad("max_query_depth", "must be positive");
        }
        if self.search_threads == 0 || self.search_threads > 64 {
            return bad("search_threads", "must be between 1 and 64");
        }
        if self.max_page_size == 0 {
            return bad("max_page_size", "must be positive");
        }
        Ok(())
    }
}

/// A change to the index, derived from a committed ledger transaction.
#[derive(Clone, PartialEq, Eq)]
pub enum IndexEvent {
    /// A record was registered.
    RecordAdded {
        /// The record's CID (binary form).
        cid: Vec<u8>,
        /// The capsule (hospital, policy search key) its labels were made with.
        capsule_id: CapsuleId,
        /// The epoch of the search key its labels were made with.
        epoch: u32,
        /// The ledger height that committed it.
        height: u64,
        /// Its labels.
        labels: Vec<Label>,
    },
    /// A record was revoked or superseded; it must no longer be returned.
    RecordRemoved {
        /// The record's CID.
        cid: Vec<u8>,
        /// The ledger height that committed the removal.
        height: u64,
    },
    /// A ledger block was applied (with or without index events): advances the applied height.
    BlockApplied {
        /// The block's height.
        height: u64,
    },
}

impl fmt::Debug for IndexEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexEvent::RecordAdded {
                cid,
                capsule_id,
                epoch,
                height,
                labels,
            } => f
                .debug_struct("RecordAdded")
                .field("cid", &hex::encode(cid))
                .field("capsule_id", capsule_id)
                .field("epoch", epoch)
                .field("height", height)
                .field("labels", &labels.len())
                .finish(),
            IndexEvent::RecordRemoved { cid, height } => f
                .debug_struct("RecordRemoved")
                .field("cid", &hex::encode(cid))
                .field("height", height)
                .finish(),
            IndexEvent::BlockApplied { height } => f
                .debug_struct("BlockApplied")
                .field("height", height)
                .finish(),
        }
    }
}

impl IndexEvent {
    /// The ledger height of the event.
    pub fn height(&self) -> u64 {
        match self {
            IndexEvent::RecordAdded { height, .. }
            | IndexEvent::RecordRemoved { height, .. }
            | IndexEvent::BlockApplied { height } => *height,
        }
    }
}

/// What [`Index::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The event changed the index (visible after the next commit).
    Applied,
    /// The event had already been applied; nothing changed.
    AlreadyApplied,
}

/// A position in a result list: the last hit of a page. Opaque to callers.
#[derive(Clone, PartialEq, Eq)]
pub struct Cursor {
    height: u64,
    cid_key: u64,
    cid: Vec<u8>,
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cursor({})", hex::encode(self.to_bytes()))
    }
}

impl Cursor {
    /// Encodes the cursor (version, height, order key, CID).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(19 + self.cid.len());
        out.push(CURSOR_VERSION);
        out.extend_from_slice(&self.height.to_be_bytes());
        out.extend_from_slice(&self.cid_key.to_be_bytes());
        out.extend_from_slice(&(self.cid.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.cid);
        out
    }

    /// Decodes [`Cursor::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Cursor, IndexError> {
        if bytes.len() < 19 {
            return Err(IndexError::InvalidCursor("too short"));
        }
        if bytes[0] != CURSOR_VERSION {
            return Err(IndexError::InvalidCursor("unknown version"));
        }
        let height = u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
        let cid_key = u64::from_be_bytes(bytes[9..17].try_into().expect("8 bytes"));
        let len = u16::from_be_bytes(bytes[17..19].try_into().expect("2 bytes")) as usize;
        if len == 0 || len > MAX_CID_BYTES || bytes.len() != 19 + len {
            return Err(IndexError::InvalidCursor("bad CID length"));
        }
        let cid = bytes[19..].to_vec();
        if cid_order_key(&cid) != cid_key {
            return Err(IndexError::InvalidCursor(
                "order key does not match the CID",
            ));
        }
        Ok(Cursor {
            height,
            cid_key,
            cid,
        })
    }

    fn key(&self) -> (u64, u64, &[u8]) {
        (self.height, self.cid_key, &self.cid)
    }
}

/// One search result.
#[derive(Clone, PartialEq, Eq)]
pub struct Hit {
    /// The record's CID.
    pub cid: Vec<u8>,
    /// The ledger height that registered it.
    pub height: u64,
    /// The capsule its labels were made with.
    pub capsule_id: CapsuleId,
    /// The search-key epoch its labels were made with.
    pub epoch: u32,
}

impl fmt::Debug for Hit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hit")
            .field("cid", &hex::encode(&self.cid))
            .field("height", &self.height)
            .field("capsule_id", &self.capsule_id)
            .field("epoch", &self.epoch)
            .finish()
    }
}

/// One page of results.
#[derive(Clone, Debug)]
pub struct Page {
    /// The hits, in result order.
    pub hits: Vec<Hit>,
    /// Where the next page starts; `None` when this page is the last.
    pub next: Option<Cursor>,
    /// How many records match the query in total (all pages).
    pub total: usize,
}

/// Index statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexStats {
    /// Records indexed (committed), including removed ones.
    pub records: u64,
    /// Records removed (committed).
    pub removed: u64,
    /// Labels indexed (committed, distinct per segment).
    pub labels: u64,
    /// Number of tantivy segments.
    pub segments: usize,
}

#[derive(Clone, Copy, Debug)]
struct Fields {
    label: TField,
    cid: TField,
    removed_cid: TField,
    cid_key: TField,
    height: TField,
    epoch: TField,
    capsule: TField,
    digest: TField,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = Fields {
        label: b.add_bytes_field("label", BytesOptions::default().set_indexed()),
        cid: b.add_bytes_field("cid", BytesOptions::default().set_indexed().set_stored()),
        removed_cid: b.add_bytes_field(
            "removed_cid",
            BytesOptions::default().set_indexed().set_stored(),
        ),
        cid_key: b.add_u64_field("cid_key", NumericOptions::default().set_fast()),
        height: b.add_u64_field("height", NumericOptions::default().set_fast()),
        epoch: b.add_u64_field("epoch", NumericOptions::default().set_fast()),
        capsule: b.add_bytes_field("capsule", BytesOptions::default().set_fast()),
        digest: b.add_bytes_field("digest", BytesOptions::default().set_stored()),
    };
    (b.build(), fields)
}

fn cid_order_key(cid: &[u8]) -> u64 {
    let mut h = Sha256::new();
    h.update(DS_CID_ORDER);
    h.update(cid);
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

fn event_digest(
    cid: &[u8],
    capsule: &CapsuleId,
    epoch: u32,
    height: u64,
    labels: &[Label],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"ehr/index/v1/record-added");
    h.update((cid.len() as u32).to_be_bytes());
    h.update(cid);
    h.update(capsule.0);
    h.update(epoch.to_be_bytes());
    h.update(height.to_be_bytes());
    h.update((labels.len() as u32).to_be_bytes());
    let mut sorted = labels.to_vec();
    sorted.sort_unstable();
    for l in &sorted {
        h.update(l.0);
    }
    h.finalize().into()
}

fn check_cid(cid: &[u8]) -> Result<(), IndexError> {
    if cid.is_empty() || cid.len() > MAX_CID_BYTES {
        return Err(IndexError::InvalidEvent {
            field: "cid",
            reason: format!("length {} is not within 1..={MAX_CID_BYTES}", cid.len()),
        });
    }
    Ok(())
}

/// The searchable index of one node.
pub struct Index {
    index: tantivy::Index,
    writer: IndexWriter<TantivyDocument>,
    reader: IndexReader,
    fields: Fields,
    config: IndexConfig,
    /// Highest height applied (committed or not).
    applied_height: u64,
    /// Highest height committed.
    committed_height: u64,
    /// Records added since the last commit: CID -> event digest.
    pending_added: HashMap<Vec<u8>, [u8; 32]>,
    /// Records removed since the last commit.
    pending_removed: HashSet<Vec<u8>>,
    /// Committed removed CIDs, and their order keys for a fast pre-check.
    removed: Arc<RemovedSet>,
}

#[derive(Default, Clone)]
struct RemovedSet {
    cids: HashSet<Vec<u8>>,
    keys: HashSet<u64>,
}

impl fmt::Debug for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Index")
            .field("applied_height", &self.applied_height)
            .field("committed_height", &self.committed_height)
            .field("pending_added", &self.pending_added.len())
            .field("pending_removed", &self.pending_removed.len())
            .field("removed", &self.removed.cids.len())
            .field("config", &self.config)
            .finish()
    }
}

impl Index {
    /// Opens the index in `dir`, creating it if the directory holds none.
    pub fn open(dir: &Path, config: IndexConfig) -> Result<Index, IndexError> {
        config.validate()?;
        std::fs::create_dir_all(dir)?;
        let (schema, fields) = schema();
        let index = if dir.join("meta.json").exists() {
            let index = tantivy::Index::open_in_dir(dir)?;
            if index.schema() != schema {
                return Err(IndexError::Corrupt(
                    "the index directory has a different schema".into(),
                ));
            }
            index
        } else {
            tantivy::Index::create_in_dir(dir, schema)?
        };
        let committed_height = match index.load_metas()?.payload {
            None => 0,
            Some(p) => p
                .strip_prefix(PAYLOAD_PREFIX)
                .and_then(|h| h.parse::<u64>().ok())
                .ok_or_else(|| IndexError::Corrupt("unreadable commit payload".into()))?,
        };
        let writer =
            index.writer_with_num_threads(config.writer_threads, config.writer_memory_bytes)?;
        writer.set_merge_policy(merge_policy());
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let mut idx = Index {
            index,
            writer,
            reader,
            fields,
            config,
            applied_height: committed_height,
            committed_height,
            pending_added: HashMap::new(),
            pending_removed: HashSet::new(),
            removed: Arc::new(RemovedSet::default()),
        };
        idx.removed = Arc::new(idx.load_removed()?);
        tracing::info!(
            height = committed_height,
            removed = idx.removed.cids.len(),
            "index opened"
        );
        Ok(idx)
    }

    fn load_removed(&self) -> Result<RemovedSet, IndexError> {
        let searcher = self.reader.searcher();
        let mut set = RemovedSet::default();
        for seg in searcher.segment_readers() {
            let inv = seg.inverted_index(self.fields.removed_cid)?;
            let mut stream = inv.terms().stream()?;
            while stream.advance() {
                let cid = stream.key().to_vec();
                set.keys.insert(cid_order_key(&cid));
                set.cids.insert(cid);
            }
        }
        Ok(set)
    }

    /// The configuration.
    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    /// Changes how many threads one chain expansion may use (1 to 64).
    pub fn set_search_threads(&mut self, threads: usize) -> Result<(), IndexError> {
        let config = IndexConfig {
            search_threads: threads,
            ..self.config.clone()
        };
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// The highest ledger height applied (committed or not).
    pub fn applied_height(&self) -> u64 {
        self.applied_height
    }

    /// The highest ledger height committed (durable and searchable).
    pub fn committed_height(&self) -> u64 {
        self.committed_height
    }

    /// Finds the committed record document of `cid`.
    fn committed_record(&self, cid: &[u8]) -> Result<Option<DocAddress>, IndexError> {
        let searcher = self.reader.searcher();
        for (ord, seg) in searcher.segment_readers().iter().enumerate() {
            let inv = seg.inverted_index(self.fields.cid)?;
            if let Some(ti) = inv.terms().get(cid)? {
                let bp = inv.read_block_postings_from_terminfo(
                    &ti,
                    tantivy::schema::IndexRecordOption::Basic,
                )?;
                if let Some(&doc) = bp.docs().first() {
                    return Ok(Some(DocAddress::new(ord as u32, doc)));
                }
            }
        }
        Ok(None)
    }

    fn stored_digest(&self, addr: DocAddress) -> Result<Vec<u8>, IndexError> {
        let doc: TantivyDocument = self.reader.searcher().doc(addr)?;
        doc.get_first(self.fields.digest)
            .and_then(|v| v.as_bytes().map(<[u8]>::to_vec))
            .ok_or_else(|| IndexError::Corrupt("record document without digest".into()))
    }

    fn record_exists(&self, cid: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        if let Some(d) = self.pending_added.get(cid) {
            return Ok(Some(d.to_vec()));
        }
        match self.committed_record(cid)? {
            Some(addr) => Ok(Some(self.stored_digest(addr)?)),
            None => Ok(None),
        }
    }

    fn check_order(&self, height: u64) -> Result<(), IndexError> {
        if height < self.applied_height {
            return Err(IndexError::OutOfOrder {
                event_height: height,
                applied_height: self.applied_height,
            });
        }
        Ok(())
    }

    /// Applies one ledger event (see the module docs). Nothing changes on `Err`.
    pub fn apply(&mut self, event: &IndexEvent) -> Result<Applied, IndexError> {
        match event {
            IndexEvent::RecordAdded {
                cid,
                capsule_id,
                epoch,
                height,
                labels,
            } => {
                check_cid(cid)?;
                if *epoch >= DEFAULT_CHAIN_EPOCHS {
                    return Err(IndexError::InvalidEvent {
                        field: "epoch",
                        reason: format!("{epoch} is beyond the last epoch of a chain"),
                    });
                }
                if labels.len() > MAX_LABELS_PER_RECORD {
                    return Err(IndexError::InvalidEvent {
                        field: "labels",
                        reason: format!("{} labels; at most {MAX_LABELS_PER_RECORD}", labels.len()),
                    });
                }
                let mut sorted = labels.clone();
                sorted.sort_unstable();
                if sorted.windows(2).any(|w| w[0] == w[1]) {
                    return Err(IndexError::InvalidEvent {
                        field: "labels",
                        reason: "a label appears twice".into(),
                    });
                }
                let digest = event_digest(cid, capsule_id, *epoch, *height, labels);
                if let Some(existing) = self.record_exists(cid)? {
                    if existing[..] == digest[..] {
                        return Ok(Applied::AlreadyApplied);
                    }
                    return Err(IndexError::Conflict {
                        cid_hex: hex::encode(cid),
                    });
                }
                self.check_order(*height)?;
                let mut doc = TantivyDocument::default();
                for l in &sorted {
                    doc.add_bytes(self.fields.label, l.as_bytes().as_slice());
                }
                doc.add_bytes(self.fields.cid, cid.as_slice());
                doc.add_u64(self.fields.cid_key, cid_order_key(cid));
                doc.add_u64(self.fields.height, *height);
                doc.add_u64(self.fields.epoch, u64::from(*epoch));
                doc.add_bytes(self.fields.capsule, capsule_id.0.as_slice());
                doc.add_bytes(self.fields.digest, digest.as_slice());
                self.writer.add_document(doc)?;
                self.pending_added.insert(cid.clone(), digest);
                self.applied_height = *height;
                Ok(Applied::Applied)
            }
            IndexEvent::RecordRemoved { cid, height } => {
                check_cid(cid)?;
                if self.pending_removed.contains(cid) || self.removed.cids.contains(cid) {
                    return Ok(Applied::AlreadyApplied);
                }
                if self.record_exists(cid)?.is_none() {
                    return Err(IndexError::UnknownRecord {
                        cid_hex: hex::encode(cid),
                    });
                }
                self.check_order(*height)?;
                let mut doc = TantivyDocument::default();
                doc.add_bytes(self.fields.removed_cid, cid.as_slice());
                doc.add_u64(self.fields.height, *height);
                self.writer.add_document(doc)?;
                self.pending_removed.insert(cid.clone());
                self.applied_height = *height;
                Ok(Applied::Applied)
            }
            IndexEvent::BlockApplied { height } => {
                if *height <= self.applied_height {
                    return Ok(Applied::AlreadyApplied);
                }
                self.applied_height = *height;
                Ok(Applied::Applied)
            }
        }
    }

    /// Makes every applied event durable and searchable, recording the applied height.
    pub fn commit(&mut self) -> Result<(), IndexError> {
        let mut prepared = self.writer.prepare_commit()?;
        prepared.set_payload(&format!("{PAYLOAD_PREFIX}{}", self.applied_height));
        prepared.commit()?;
        self.reader.reload()?;
        if !self.pending_removed.is_empty() {
            let mut set = (*self.removed).clone();
            for cid in self.pending_removed.drain() {
                set.keys.insert(cid_order_key(&cid));
                set.cids.insert(cid);
            }
            self.removed = Arc::new(set);
        }
        self.pending_added.clear();
        self.committed_height = self.applied_height;
        tracing::debug!(height = self.committed_height, "index committed");
        Ok(())
    }

    /// Merges every segment into one (faster searches after a bulk build) and deletes unused
    /// files. Uncommitted events stay pending. Background merges are paused meanwhile; a merge
    /// that races one already running is retried with backoff.
    pub fn compact(&mut self) -> Result<(), IndexError> {
        self.writer
            .set_merge_policy(Box::new(tantivy::indexer::NoMergePolicy));
        let result = self.merge_all();
        self.writer.set_merge_policy(merge_policy());
        result?;
        self.reader.reload()?;
        self.writer.garbage_collect_files().wait()?;
        Ok(())
    }

    fn merge_all(&mut self) -> Result<(), IndexError> {
        let mut backoff = std::time::Duration::from_millis(50);
        for _ in 0..12 {
            let ids = self.index.searchable_segment_ids()?;
            if ids.len() <= 1 {
                return Ok(());
            }
            match self.writer.merge(&ids).wait() {
                Ok(_) => return Ok(()),
                // A background merge took some of these segments first: wait and retry.
                Err(tantivy::TantivyError::InvalidArgument(_)) => {
                    tracing::debug!("compaction raced a background merge; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(IndexError::Tantivy(
            "compaction kept racing background merges".into(),
        ))
    }

    /// Statistics of the committed index.
    pub fn stats(&self) -> Result<IndexStats, IndexError> {
        let searcher = self.reader.searcher();
        let mut records = 0u64;
        let mut labels = 0u64;
        for seg in searcher.segment_readers() {
            records += seg.inverted_index(self.fields.cid)?.terms().num_terms() as u64;
            labels += seg.inverted_index(self.fields.label)?.terms().num_terms() as u64;
        }
        Ok(IndexStats {
            records,
            removed: self.removed.cids.len() as u64,
            labels,
            segments: searcher.segment_readers().len(),
        })
    }

    fn check_query(&self, q: &Query, depth: usize, count: &mut usize) -> Result<(), IndexError> {
        if depth > self.config.max_query_depth {
            return Err(IndexError::InvalidQuery(format!(
                "nested deeper than {}",
                self.config.max_query_depth
            )));
        }
        match q {
            Query::Keyword(tds) => {
                if tds.is_empty() {
                    return Err(IndexError::InvalidQuery(
                        "a keyword with no trapdoor".into(),
                    ));
                }
                *count += tds.len();
            }
            Query::And(qs) | Query::Or(qs) => {
                if qs.is_empty() {
                    return Err(IndexError::InvalidQuery("an empty AND/OR".into()));
                }
                for s in qs {
                    self.check_query(s, depth + 1, count)?;
                }
            }
        }
        if *count > self.config.max_query_trapdoors {
            return Err(IndexError::InvalidQuery(format!(
                "more than {} trapdoors",
                self.config.max_query_trapdoors
            )));
        }
        Ok(())
    }

    /// Runs `query` on the committed index and returns the page after `cursor` (from the start
    /// if `None`) of at most `limit` hits. Removed records are never returned.
    pub fn search(
        &self,
        query: &Query,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page, IndexError> {
        if limit == 0 || limit > self.config.max_page_size {
            return Err(IndexError::InvalidQuery(format!(
                "page size {limit} is not within 1..={}",
                self.config.max_page_size
            )));
        }
        let mut count = 0;
        self.check_query(query, 1, &mut count)?;
        let searcher = self.reader.searcher();
        let ctx = SearchCtx::new(searcher.segment_readers(), &self.fields)?;
        let docs = ctx.eval(query, self.config.max_gap, self.config.search_threads)?;

        // Order keys; drop removed records.
        let mut keyed: Vec<(u64, u64, u64)> = Vec::with_capacity(docs.len());
        let mut cid_buf = HashMap::new();
        for d in docs {
            let (seg, doc) = split_ref(d);
            let s = &ctx.segments[seg as usize];
            let height = s.height.first(doc).ok_or_else(|| corrupt("height"))?;
            let key = s.cid_key.first(doc).ok_or_else(|| corrupt("cid_key"))?;
            if !self.removed.keys.is_empty() && self.removed.keys.contains(&key) {
                let cid = self.cid_of(&searcher, d)?;
                if self.removed.cids.contains(&cid) {
                    continue;
                }
                cid_buf.insert(d, cid);
            }
            keyed.push((height, key, d));
        }
        let total_before_cursor = keyed.len();
        keyed.sort_unstable();
        // Ties on (height, cid_key) (64-bit collisions) are ordered by CID.
        let mut i = 0;
        while i < keyed.len() {
            let mut j = i + 1;
            while j < keyed.len() && keyed[j].0 == keyed[i].0 && keyed[j].1 == keyed[i].1 {
                j += 1;
            }
            if j - i > 1 {
                for k in &keyed[i..j] {
                    if let std::collections::hash_map::Entry::Vacant(e) = cid_buf.entry(k.2) {
                        e.insert(self.cid_of(&searcher, k.2)?);
                    }
                }
                keyed[i..j].sort_by(|a, b| cid_buf[&a.2].cmp(&cid_buf[&b.2]));
            }
            i = j;
        }
        let start = match cursor {
            None => 0,
            Some(c) => {
                let (ch, ck, ccid) = c.key();
                let mut lo = keyed.partition_point(|k| (k.0, k.1) < (ch, ck));
                while lo < keyed.len() && (keyed[lo].0, keyed[lo].1) == (ch, ck) {
                    let cid = match cid_buf.get(&keyed[lo].2) {
                        Some(c) => c.clone(),
                        None => self.cid_of(&searcher, keyed[lo].2)?,
                    };
                    if cid.as_slice() > ccid {
                        break;
                    }
                    lo += 1;
                }
                lo
            }
        };
        let end = (start + limit).min(keyed.len());
        let mut hits = Vec::with_capacity(end - start);
        let mut capsule_buf = Vec::with_capacity(32);
        for &(height, _, d) in &keyed[start..end] {
            let (seg, doc) = split_ref(d);
            let s = &ctx.segments[seg as usize];
            let cid = match cid_buf.remove(&d) {
                Some(c) => c,
                None => self.cid_of(&searcher, d)?,
            };
            let epoch = s.epoch.first(doc).ok_or_else(|| corrupt("epoch"))?;
            let capsule_col = s.capsule.as_ref().ok_or_else(|| corrupt("capsule"))?;
            let ord = capsule_col
                .term_ords(doc)
                .next()
                .ok_or_else(|| corrupt("capsule"))?;
            capsule_buf.clear();
            capsule_col.ord_to_bytes(ord, &mut capsule_buf)?;
            let capsule: [u8; 32] = capsule_buf
                .as_slice()
                .try_into()
                .map_err(|_| corrupt("capsule"))?;
            hits.push(Hit {
                cid,
                height,
                capsule_id: CapsuleId(capsule),
                epoch: u32::try_from(epoch).map_err(|_| corrupt("epoch"))?,
            });
        }
        let next = if end < keyed.len() {
            hits.last().map(|h| Cursor {
                height: h.height,
                cid_key: cid_order_key(&h.cid),
                cid: h.cid.clone(),
            })
        } else {
            None
        };
        Ok(Page {
            hits,
            next,
            total: total_before_cursor,
        })
    }

    fn cid_of(&self, searcher: &tantivy::Searcher, d: u64) -> Result<Vec<u8>, IndexError> {
        let (seg, doc) = split_ref(d);
        let stored: TantivyDocument = searcher.doc(DocAddress::new(seg, doc))?;
        match stored.get_first(self.fields.cid) {
            Some(v) => v
                .as_bytes()
                .map(<[u8]>::to_vec)
                .ok_or_else(|| corrupt("cid")),
            None => Err(corrupt("cid")),
        }
    }
}

fn corrupt(field: &str) -> IndexError {
    IndexError::Corrupt(format!("a record document lacks a valid {field}"))
}

fn make_ref(seg: u32, doc: u32) -> u64 {
    (u64::from(seg) << 32) | u64::from(doc)
}

fn split_ref(d: u64) -> (u32, u32) {
    ((d >> 32) as u32, d as u32)
}

struct SegCtx {
    labels: Arc<tantivy::InvertedIndexReader>,
    height: tantivy::columnar::Column<u64>,
    cid_key: tantivy::columnar::Column<u64>,
    epoch: tantivy::columnar::Column<u64>,
    capsule: Option<tantivy::columnar::BytesColumn>,
}

struct SearchCtx {
    segments: Vec<SegCtx>,
}

impl SearchCtx {
    fn new(readers: &[SegmentReader], fields: &Fields) -> Result<SearchCtx, IndexError> {
        let mut segments = Vec::with_capacity(readers.len());
        for r in readers {
            let ff = r.fast_fields();
            segments.push(SegCtx {
                labels: r.inverted_index(fields.label)?,
                height: ff.u64("height")?,
                cid_key: ff.u64("cid_key")?,
                epoch: ff.u64("epoch")?,
                capsule: ff.bytes("capsule")?,
            });
        }
        Ok(SearchCtx { segments })
    }

    /// Sorted, deduplicated document references matching `q`.
    fn eval(&self, q: &Query, max_gap: u32, threads: usize) -> Result<Vec<u64>, IndexError> {
        match q {
            Query::Keyword(tds) => {
                let mut out = Vec::new();
                for td in tds {
                    self.expand(td, max_gap, threads, &mut out)?;
                }
                out.sort_unstable();
                out.dedup();
                Ok(out)
            }
            Query::And(qs) => {
                let mut acc: Option<Vec<u64>> = None;
                for s in qs {
                    let r = self.eval(s, max_gap, threads)?;
                    acc = Some(match acc {
                        None => r,
                        Some(a) => intersect(&a, &r),
                    });
                }
                Ok(acc.unwrap_or_default())
            }
            Query::Or(qs) => {
                let mut out = Vec::new();
                for s in qs {
                    out.extend(self.eval(s, max_gap, threads)?);
                }
                out.sort_unstable();
                out.dedup();
                Ok(out)
            }
        }
    }

    /// Looks one label up, the segment of the previous hit first; appends its documents.
    fn lookup(
        &self,
        label: &Label,
        last_seg: &mut usize,
        bp: &mut BlockSegmentPostings,
        out: &mut Vec<u64>,
    ) -> Result<bool, IndexError> {
        let n = self.segments.len();
        for i in 0..n {
            let seg = (*last_seg + i) % n;
            let inv = &self.segments[seg].labels;
            if let Some(ti) = inv.terms().get(label.as_bytes())? {
                inv.reset_block_postings_from_terminfo(&ti, bp)?;
                loop {
                    let docs = bp.docs();
                    if docs.is_empty() {
                        break;
                    }
                    out.extend(docs.iter().map(|&d| make_ref(seg as u32, d)));
                    bp.advance();
                }
                *last_seg = seg;
                // A label lives in one segment unless an uploader reused it (then the entry is
                // returned from the first segment holding it): looking further would cost one
                // lookup per segment per hit.
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Looks up the labels of counters `range`; returns `(counter, document)` pairs in counter
    /// order.
    fn lookup_range(
        &self,
        key: &crate::sse::KeywordKey,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<(u64, u64)>, IndexError> {
        let mut last_seg = self.segments.len() - 1;
        let mut bp = BlockSegmentPostings::empty();
        let mut docs = Vec::new();
        let mut out = Vec::new();
        for c in range {
            docs.clear();
            if self.lookup(&key.label(c), &mut last_seg, &mut bp, &mut docs)? {
                out.extend(docs.iter().map(|&d| (c, d)));
            }
        }
        Ok(out)
    }

    /// Expands one chain: labels `PRF(K, 0), PRF(K, 1), ...` until `max_gap + 1` consecutive
    /// labels are absent; appends the documents found.
    ///
    /// The first [`SEQUENTIAL_PREFIX`] counters are looked up one by one; a longer chain is
    /// looked up in blocks of doubling size split over `threads` threads, and the block's
    /// results are then walked in counter order with exactly the sequential stopping rule (hits
    /// after the end of the chain are discarded), so the result does not depend on `threads`.
    fn expand(
        &self,
        td: &Trapdoor,
        max_gap: u32,
        threads: usize,
        out: &mut Vec<u64>,
    ) -> Result<(), IndexError> {
        let key = td.key();
        if self.segments.is_empty() {
            return Ok(());
        }
        let mut last_seg = self.segments.len() - 1;
        let mut bp = BlockSegmentPostings::empty();
        let mut misses = 0u64;
        let max_gap = u64::from(max_gap);
        let mut counter = 0u64;
        while counter < SEQUENTIAL_PREFIX || threads <= 1 {
            if self.lookup(&key.label(counter), &mut last_seg, &mut bp, out)? {
                misses = 0;
            } else {
                misses += 1;
                if misses > max_gap {
                    return Ok(());
                }
            }
            counter = counter.checked_add(1).ok_or_else(|| {
                IndexError::InvalidQuery("a chain longer than 2^64 labels".into())
            })?;
        }
        let mut block = SEQUENTIAL_PREFIX;
        loop {
            let end = counter.checked_add(block).ok_or_else(|| {
                IndexError::InvalidQuery("a chain longer than 2^64 labels".into())
            })?;
            let per = block.div_ceil(threads as u64);
            let parts: Vec<Result<Vec<(u64, u64)>, IndexError>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads as u64)
                    .map(|t| {
                        let lo = (counter + t * per).min(end);
                        let hi = (lo + per).min(end);
                        s.spawn(move || self.lookup_range(key, lo..hi))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a search thread panicked"))
                    .collect()
            });
            let mut next_expected = counter;
            for part in parts {
                for (c, d) in part? {
                    if c >= next_expected {
                        // `c` is a new found counter: the misses since the last hit end here.
                        if misses + (c - next_expected) > max_gap {
                            return Ok(());
                        }
                        misses = 0;
                        next_expected = c + 1;
                    }
                    out.push(d);
                }
            }
            misses += end - next_expected;
            if misses > max_gap {
                return Ok(());
            }
            counter = end;
            block = (block * 2).min(MAX_PARALLEL_BLOCK);
        }
    }
}

/// Counters looked up one by one before a chain expansion goes parallel.
const SEQUENTIAL_PREFIX: u64 = 1024;
/// Largest block of counters looked up in parallel at once.
const MAX_PARALLEL_BLOCK: u64 = 1 << 16;

fn intersect(a: &[u64], b: &[u64]) -> Vec<u64> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// Background merges: tantivy's log merge policy with layers from 64 documents up, each 8
/// times larger than the one below (defaults: one layer for everything under 10,000
/// documents, and layers 2^0.75 apart). The node's follower commits a small segment every
/// 200 ms under load; with the default layers, merging (mostly rebuilding the term
/// dictionaries of random labels) took 45% of a node's CPU time in a 150 s upload run (perf),
/// and the upload rate fell as records accumulated. With layers a factor 8 apart, a document
/// is rewritten about once per layer, and there are at most 7 segments per layer to search.
fn merge_policy() -> Box<dyn tantivy::indexer::MergePolicy> {
    let mut p = tantivy::indexer::LogMergePolicy::default();
    p.set_min_layer_size(64);
    p.set_level_log_size(3.0);
    Box::new(p)
}
