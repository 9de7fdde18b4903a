//! Verified, streaming reads of UnixFS files: a depth-first walk with bounded read-ahead.
//!
//! Each block is loaded from the local repository and re-hashed against its CID on a worker
//! task before any of its bytes are released; only the leaves that overlap the requested range
//! are loaded. At most `read_ahead` blocks (about `read_ahead x 256 KiB`) are in memory.

use std::collections::VecDeque;
use std::ops::Range;

use bytes::Bytes;
use cid::Cid;
use futures::stream::{self, BoxStream, StreamExt};
use rust_ipfs::Ipfs;
use rust_ipfs::unixfs::ll::file::visit::{Cache, FileVisit, IdleFileVisit};
use tokio::task::JoinHandle;

use super::dag::{RAW_CODEC, check_file_codec, verify_block};
use crate::error::StoreError;

/// Loads a block from the local repository and verifies its hash.
pub(crate) async fn fetch_verified(ipfs: &Ipfs, cid: Cid) -> Result<Bytes, StoreError> {
    let block = ipfs
        .repo()
        .get_block_now(cid)
        .await
        .map_err(|e| block_read_error(cid, e))?;
    let (_, data) = block
        .ok_or_else(|| StoreError::BlockMissing {
            cid: cid.to_string(),
        })?
        .into_inner();
    verify_block(&cid, &data)?;
    Ok(data)
}

/// rust-ipfs's fs store also re-hashes on read and fails with `InvalidData` on a mismatch.
fn block_read_error(cid: Cid, e: rust_ipfs::Error) -> StoreError {
    match e.downcast_ref::<std::io::Error>() {
        Some(io) if io.kind() == std::io::ErrorKind::InvalidData => StoreError::HashMismatch {
            cid: cid.to_string(),
        },
        _ => StoreError::Repo(format!("reading block {cid}: {e}")),
    }
}

struct Walk {
    ipfs: Ipfs,
    root: Cid,
    range: Option<Range<u64>>,
    read_ahead: usize,
    started: bool,
    visit: Option<FileVisit>,
    cache: Option<Cache>,
    ahead: VecDeque<(Cid, JoinHandle<Result<Bytes, StoreError>>)>,
}

impl Drop for Walk {
    fn drop(&mut self) {
        for (_, h) in self.ahead.drain(..) {
            h.abort();
        }
    }
}

impl Walk {
    fn spawn(&self, cid: Cid) -> JoinHandle<Result<Bytes, StoreError>> {
        let ipfs = self.ipfs.clone();
        tokio::spawn(async move { fetch_verified(&ipfs, cid).await })
    }

    /// Makes `ahead` hold exactly the fetches for `wanted`, reusing those already started.
    fn reconcile(&mut self, wanted: &[Cid]) {
        let keep = self
            .ahead
            .iter()
            .zip(wanted)
            .take_while(|((c, _), w)| c == *w)
            .count();
        for (_, h) in self.ahead.drain(keep..) {
            h.abort();
        }
        for cid in &wanted[keep..] {
            let h = self.spawn(*cid);
            self.ahead.push_back((*cid, h));
        }
    }

    async fn take(&mut self, cid: Cid) -> Result<Bytes, StoreError> {
        let handle = match self.ahead.front() {
            Some((c, _)) if *c == cid => self.ahead.pop_front().map(|(_, h)| h),
            _ => None,
        };
        let handle = match handle {
            Some(h) => h,
            None => {
                for (_, h) in self.ahead.drain(..) {
                    h.abort();
                }
                self.spawn(cid)
            }
        };
        handle
            .await
            .map_err(|e| StoreError::Repo(format!("block reader task failed: {e}")))?
    }

    fn check_range(&self, size: u64) -> Result<(), StoreError> {
        match &self.range {
            Some(r) if r.start > r.end || r.end > size => Err(StoreError::InvalidRange {
                start: r.start,
                end: r.end,
                size,
            }),
            _ => Ok(()),
        }
    }

    fn idle(&self) -> IdleFileVisit {
        match &self.range {
            Some(r) => IdleFileVisit::default().with_target_range(r.clone()),
            None => IdleFileVisit::default(),
        }
    }

    /// Produces the next non-empty piece of the file, or `None` at the end.
    async fn next(&mut self) -> Result<Option<Bytes>, StoreError> {
        loop {
            if !self.started {
                self.started = true;
                let root = self.root;
                check_file_codec(&root)?;
                let block = self.take(root).await?;
                if root.codec() == RAW_CODEC {
                    self.check_range(block.len() as u64)?;
                    let (content, _, _, _) = self.idle().start_from_raw(&block);
                    let out = block.slice_ref(content);
                    return Ok((!out.is_empty()).then_some(out));
                }
                let (content, size, _, next) =
                    self.idle()
                        .start(&block)
                        .map_err(|e| StoreError::MalformedNode {
                            cid: root.to_string(),
                            reason: e.to_string(),
                        })?;
                self.check_range(size)?;
                let out = block.slice_ref(content);
                self.visit = next;
                if !out.is_empty() {
                    return Ok(Some(out));
                }
                continue;
            }
            let Some(visit) = self.visit.take() else {
                return Ok(None);
            };
            let (next, wanted) = {
                let (first, rest) = visit.pending_links();
                (
                    *first,
                    rest.take(self.read_ahead).copied().collect::<Vec<_>>(),
                )
            };
            check_file_codec(&next)?;
            let block = self.take(next).await?;
            self.reconcile(&wanted);
            let (content, visit) = visit.continue_walk(&block, &mut self.cache).map_err(|e| {
                StoreError::MalformedNode {
                    cid: next.to_string(),
                    reason: e.to_string(),
                }
            })?;
            self.visit = visit;
            let out = block.slice_ref(content);
            if !out.is_empty() {
                return Ok(Some(out));
            }
        }
    }
}

/// Streams the file at `root` (or the byte `range` of it) from the local repository.
pub(crate) fn cat_stream(
    ipfs: Ipfs,
    root: Cid,
    range: Option<Range<u64>>,
    read_ahead: usize,
) -> BoxStream<'static, Result<Bytes, StoreError>> {
    let walk = Walk {
        ipfs,
        root,
        range,
        read_ahead,
        started: false,
        visit: None,
        cache: None,
        ahead: VecDeque::new(),
    };
    stream::try_unfold(walk, |mut w| async move {
        Ok(w.next().await?.map(|bytes| (bytes, w)))
    })
    .boxed()
}

/// Reads the root of a file and returns its size in bytes.
pub(crate) async fn file_size(ipfs: &Ipfs, root: Cid) -> Result<u64, StoreError> {
    check_file_codec(&root)?;
    let block = fetch_verified(ipfs, root).await?;
    if root.codec() == RAW_CODEC {
        return Ok(block.len() as u64);
    }
    // an empty target range makes the visitor read only this block
    let (_, size, _, _) = IdleFileVisit::default()
        .with_target_range(0..0)
        .start(&block)
        .map_err(|e| StoreError::MalformedNode {
            cid: root.to_string(),
            reason: e.to_string(),
        })?;
    Ok(size)
}
