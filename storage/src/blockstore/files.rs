//! Durable block writes in rust-ipfs's file-system layout, without its store-wide lock.
//!
//! rust-ipfs 0.16's `FsBlockStore::put` holds a write lock on the whole block store while it
//! writes a block, fsyncs it, links it into place and fsyncs its directory, so the blocks of a
//! DAG (and of concurrent uploads) reach the disk strictly one after another. [`BlockWriter`]
//! writes the same files (`<repo>/blockstore/<shard>/<cidv1>.data`, which rust-ipfs's own get,
//! list, remove and bitswap read) with up to `limit` blocking writers at once, and fsyncs each
//! directory once per DAG instead of once per block.
//!
//! Invariants:
//! - A `.data` file only ever appears complete: each block is written to a unique temporary
//!   sibling, fsynced, then renamed over the final name (an existing file of the wrong length,
//!   which could only be damage, is replaced the same way).
//! - When [`BlockWriter::finish`] returns `Ok`, every block handed to it, whether written now or
//!   found present, is durable, directory entries included; a caller pins only after that.
//! - Temporary files end in [`TEMP_SUFFIX`] and carry the writer's pid; a crash can leave some
//!   behind, and [`remove_temp_blocks`] deletes those of other (hence dead: the repository lock
//!   is ours) processes, and rust-ipfs's own `.tmp` leftovers, when the store is checked.
//!
//! rust-ipfs is not told about these writes (no `NewBlock` event): blocks added locally are
//! not announced over bitswap anyway, and a peer asking for one later finds it on disk.

use std::collections::HashSet;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use cid::Cid;
use tokio::task::JoinSet;

use crate::error::StoreError;

/// Suffix of a block file being written.
pub(crate) const TEMP_SUFFIX: &str = ".ehr-tmp";

/// Directory fsyncs run on at most this many blocking threads at once.
const DIR_SYNC_THREADS: usize = 4;

/// Where rust-ipfs's file-system block store keeps `cid` under `root`: the CIDv1 string (a
/// CIDv0 is re-encoded as v1), in a shard directory named by its next-to-last two characters,
/// with the extension `data`.
pub(crate) fn block_path(root: &Path, cid: &Cid) -> PathBuf {
    let key = if cid.version() == cid::Version::V1 {
        cid.to_string()
    } else {
        Cid::new_v1(cid.codec(), cid.hash().to_owned()).to_string()
    };
    let mut path = root.to_path_buf();
    match key.len().checked_sub(3) {
        Some(start) => path.push(&key[start..start + 2]),
        None => path.push("_"),
    }
    path.push(format!("{key}.data"));
    path
}

/// Writes the blocks of one DAG concurrently and makes them durable together.
///
/// Dropping it before [`BlockWriter::finish`] abandons the writes that have not started; those
/// already running complete (or leave a temporary file), and nothing is pinned either way.
pub(crate) struct BlockWriter {
    root: PathBuf,
    limit: usize,
    tasks: JoinSet<io::Result<()>>,
    dirs: HashSet<PathBuf>,
}

impl BlockWriter {
    /// A writer into the block store at `root`, with at most `limit` writes in flight.
    pub(crate) fn new(root: PathBuf, limit: usize) -> Self {
        Self {
            root,
            limit: limit.max(1),
            tasks: JoinSet::new(),
            dirs: HashSet::new(),
        }
    }

    /// Queues `data` as the block `cid` (the caller computed `cid` from `data`); waits while
    /// `limit` writes are in flight, so at most that many blocks are held.
    pub(crate) async fn write(&mut self, cid: Cid, data: Bytes) -> Result<(), StoreError> {
        self.queue(cid, data, false).await
    }

    /// Like [`BlockWriter::write`], but replaces a file already there (a copy that failed
    /// verification is replaced by a verified one).
    pub(crate) async fn replace(&mut self, cid: Cid, data: Bytes) -> Result<(), StoreError> {
        self.queue(cid, data, true).await
    }

    async fn queue(&mut self, cid: Cid, data: Bytes, replace: bool) -> Result<(), StoreError> {
        while self.tasks.len() >= self.limit {
            self.join_one().await?;
        }
        let path = block_path(&self.root, &cid);
        if let Some(dir) = path.parent() {
            self.dirs.insert(dir.to_path_buf());
        }
        self.tasks.spawn_blocking(move || {
            write_block_file(&path, &data, replace).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("writing block {cid} to {}: {e}", path.display()),
                )
            })
        });
        Ok(())
    }

    async fn join_one(&mut self) -> Result<(), StoreError> {
        match self.tasks.join_next().await {
            Some(res) => res.map_err(|e| StoreError::Repo(format!("block writer task: {e}")))?,
            None => Ok(()),
        }
        .map_err(StoreError::from)
    }

    /// Waits for every write, then fsyncs every directory a block went into (and the store's
    /// root, which holds the shard directories).
    pub(crate) async fn finish(mut self) -> Result<(), StoreError> {
        while !self.tasks.is_empty() {
            self.join_one().await?;
        }
        let mut dirs: Vec<PathBuf> = self.dirs.into_iter().collect();
        dirs.push(self.root);
        let per_thread = dirs.len().div_ceil(DIR_SYNC_THREADS);
        let mut syncs = JoinSet::new();
        for group in dirs.chunks(per_thread.max(1)) {
            let group = group.to_vec();
            syncs.spawn_blocking(move || group.iter().try_for_each(|d| sync_dir(d)));
        }
        while let Some(res) = syncs.join_next().await {
            res.map_err(|e| StoreError::Repo(format!("directory sync task: {e}")))??;
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io::Error::new(e.kind(), format!("syncing {}: {e}", dir.display())))
}

/// Writes one block file unless (`replace` off) an intact-looking one (right length) is
/// already there.
fn write_block_file(path: &Path, data: &[u8], replace: bool) -> io::Result<()> {
    if !replace
        && std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == data.len() as u64)
    {
        return Ok(());
    }
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("block path without a directory"))?;
    std::fs::create_dir_all(dir)?;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(
        ".{}.{}{TEMP_SUFFIX}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let temp = PathBuf::from(temp);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// The process that wrote a temporary block file, from its name
/// (`<cid>.data.<pid>.<counter><suffix>`, the suffix being ours or rust-ipfs's `.tmp`).
fn temp_writer_pid(name: &str) -> Option<u32> {
    let stem = name
        .strip_suffix(TEMP_SUFFIX)
        .or_else(|| name.strip_suffix(".tmp"))?;
    let mut parts = stem.rsplit('.');
    parts.next()?.parse::<u64>().ok()?;
    parts.next()?.parse().ok()
}

/// Removes block files whose write was interrupted (ours end in [`TEMP_SUFFIX`], rust-ipfs's in
/// `.tmp`) from the shard directories under `root`; returns what it removed. Only files another
/// process wrote are removed: the repository lock makes that process a dead one, while this
/// process's own temporary files may belong to writes in flight.
pub(crate) fn remove_temp_blocks(root: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let me = std::process::id();
    remove_files_where(root, |name| {
        temp_writer_pid(name).is_some_and(|pid| pid != me)
    })
}

/// Removes every file under `dir` (recursively) whose name `stale` accepts; returns what it
/// removed. A missing `dir`, or a file gone meanwhile, is not an error.
pub(crate) fn remove_files_where(
    dir: &Path,
    stale: impl Fn(&str) -> bool,
) -> Result<Vec<PathBuf>, StoreError> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() && stale(&entry.file_name().to_string_lossy()) {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => found.push(entry.path()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockstore::dag::{hash_bytes, raw_cid};

    #[test]
    fn path_matches_the_layout_rust_ipfs_reads() {
        // The example of rust-ipfs's own path test: shard = next-to-last two characters.
        let cid: Cid = "bafybeicizfmyaovkw4pnrwpa4kcirzaveabyw4vsixt45mrrhr2xm2d5lm"
            .parse()
            .unwrap();
        assert_eq!(
            block_path(Path::new("root"), &cid),
            Path::new("root/5l/bafybeicizfmyaovkw4pnrwpa4kcirzaveabyw4vsixt45mrrhr2xm2d5lm.data")
        );
        // A CIDv0 is stored under its v1 form.
        let v0: Cid = "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n"
            .parse()
            .unwrap();
        let v1 = Cid::new_v1(v0.codec(), v0.hash().to_owned());
        assert_eq!(
            block_path(Path::new("r"), &v0),
            block_path(Path::new("r"), &v1)
        );
    }

    #[tokio::test]
    async fn writes_blocks_and_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("blockstore");
        let mut writer = BlockWriter::new(root.clone(), 3);
        let blocks: Vec<(Cid, Bytes)> = (0..20u8)
            .map(|i| {
                let data = Bytes::from(vec![i; 1000 + usize::from(i)]);
                (raw_cid(&data), data)
            })
            .collect();
        for (cid, data) in &blocks {
            writer.write(*cid, data.clone()).await.unwrap();
        }
        // the same block twice in one DAG is fine
        writer
            .write(blocks[0].0, blocks[0].1.clone())
            .await
            .unwrap();
        writer.finish().await.unwrap();
        for (cid, data) in &blocks {
            let on_disk = std::fs::read(block_path(&root, cid)).unwrap();
            assert_eq!(&on_disk[..], &data[..]);
            assert_eq!(hash_bytes(&on_disk).hash(), cid.hash());
        }
        assert!(remove_temp_blocks(&root).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_damaged_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let data = Bytes::from_static(b"block bytes");
        let cid = raw_cid(&data);
        let path = block_path(&root, &cid);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"block").unwrap();
        let mut writer = BlockWriter::new(root.clone(), 1);
        writer.write(cid, data.clone()).await.unwrap();
        writer.finish().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), &data[..]);

        // same length but damaged: `write` cannot tell, `replace` (a verified copy) repairs
        std::fs::write(&path, b"BLOCK BYTES").unwrap();
        let mut writer = BlockWriter::new(root.clone(), 1);
        writer.write(cid, data.clone()).await.unwrap();
        writer.finish().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"BLOCK BYTES");
        let mut writer = BlockWriter::new(root, 1);
        writer.replace(cid, data.clone()).await.unwrap();
        writer.finish().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), &data[..]);
    }

    #[test]
    fn leftovers_of_interrupted_writes_are_removed_and_blocks_kept() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let data = b"kept";
        let cid = raw_cid(data);
        let path = block_path(root, &cid);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        // written by a process that died (pid 0 is never a user process)
        let ours = PathBuf::from(format!("{}.0.0{TEMP_SUFFIX}", path.display()));
        let theirs = PathBuf::from(format!("{}.0.1.tmp", path.display()));
        // written by this process: a write that may be in flight
        let live = PathBuf::from(format!(
            "{}.{}.2{TEMP_SUFFIX}",
            path.display(),
            std::process::id()
        ));
        for p in [&ours, &theirs, &live] {
            std::fs::write(p, b"partial").unwrap();
        }
        let mut removed = remove_temp_blocks(root).unwrap();
        removed.sort();
        let mut expected = vec![ours, theirs];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(path.exists() && live.exists());
        assert_eq!(temp_writer_pid("x.data.12.3.tmp"), Some(12));
        assert_eq!(temp_writer_pid("x.data"), None);
        assert_eq!(temp_writer_pid("x.data.a.3.tmp"), None);
        assert!(
            remove_temp_blocks(&root.join("missing"))
                .unwrap()
                .is_empty()
        );
    }
}
