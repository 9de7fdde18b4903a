//! UnixFS file DAGs with Kubo's `ipfs add --cid-version=1` parameters, and block verification.
//!
//! The builder wraps rust-unixfs's low-level `FileAdder` with a fixed-size chunker and a
//! balanced collector, which produce DAGs byte-identical to Kubo's (CIDv1, raw leaves, 256 KiB
//! chunks, 174 links per node). It is fed whole chunks only, so it never buffers internally and
//! never hits rust-ipfs 0.16's `add_unixfs` bug for inputs exactly one chunk long: the root is
//! simply the last block produced, whether `push` or `finish` produced it.

use bytes::Bytes;
use cid::Cid;
use multihash_codetable::{Code, MultihashDigest};
use rust_ipfs::unixfs::ll::file::adder::{BalancedCollector, Chunker, FileAdder};

use crate::error::StoreError;

/// Chunk size of Kubo's default fixed-size chunker (`size-262144`).
pub const CHUNK_SIZE: usize = 256 * 1024;
/// Links per node of Kubo's balanced layout.
pub const MAX_LINKS: usize = 174;
/// Codec of raw leaves.
pub const RAW_CODEC: u64 = 0x55;
/// Codec of dag-pb nodes.
pub const DAG_PB_CODEC: u64 = 0x70;

/// Streaming UnixFS file builder with Kubo's CIDv1 parameters.
///
/// Feed it with [`DagBuilder::push_chunk`] (every chunk exactly [`CHUNK_SIZE`] bytes except the
/// last), then [`DagBuilder::finish`]. Blocks come out leaves first, parents after their
/// children, the root last. Memory is one link record per block of the open subtrees.
#[derive(Debug)]
pub struct DagBuilder {
    adder: FileAdder,
    last: Option<Cid>,
    size: u64,
    blocks: u64,
}

/// A block produced by the builder.
#[derive(Debug, Clone)]
pub struct DagBlock {
    /// Its CID (computed from `data`).
    pub cid: Cid,
    /// Its bytes.
    pub data: Bytes,
}

impl Default for DagBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl DagBuilder {
    /// A builder for one file.
    pub fn new() -> Self {
        let adder = FileAdder::builder()
            .with_chunker(Chunker::Size(CHUNK_SIZE))
            .with_collector(BalancedCollector::with_branching_factor(MAX_LINKS))
            .with_cid_version(cid::Version::V1)
            .with_raw_leaves(true)
            .with_hasher(Code::Sha2_256)
            .build();
        Self {
            adder,
            last: None,
            size: 0,
            blocks: 0,
        }
    }

    /// Adds one chunk: exactly [`CHUNK_SIZE`] bytes unless it is the file's last. Returns the
    /// blocks that became complete (the leaf, and any parents it completed).
    ///
    /// # Panics
    /// If `chunk` is longer than [`CHUNK_SIZE`] or empty (a caller bug: the chunker is ours).
    pub fn push_chunk(&mut self, chunk: &[u8]) -> Vec<DagBlock> {
        assert!(
            !chunk.is_empty() && chunk.len() <= CHUNK_SIZE,
            "DagBuilder::push_chunk: chunk of {} bytes, expected 1..={CHUNK_SIZE}",
            chunk.len()
        );
        let mut out = Vec::with_capacity(2);
        let mut rest = chunk;
        while !rest.is_empty() {
            let (blocks, used) = self.adder.push(rest);
            out.extend(blocks.map(|(cid, data)| DagBlock {
                cid,
                data: Bytes::from(data),
            }));
            rest = &rest[used..];
        }
        self.size += chunk.len() as u64;
        self.record(&out);
        out
    }

    /// Completes the DAG: returns the remaining blocks (the root last) and the root CID.
    pub fn finish(mut self) -> (Vec<DagBlock>, Cid) {
        let adder = std::mem::take(&mut self.adder);
        let out: Vec<DagBlock> = adder
            .finish()
            .map(|(cid, data)| DagBlock {
                cid,
                data: Bytes::from(data),
            })
            .collect();
        self.record(&out);
        let root = self
            .last
            .expect("DagBuilder::finish: FileAdder produced no block (it always emits a root)");
        (out, root)
    }

    /// File bytes pushed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Blocks produced so far.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    fn record(&mut self, out: &[DagBlock]) {
        if let Some(b) = out.last() {
            self.last = Some(b.cid);
        }
        self.blocks += out.len() as u64;
    }
}

/// Checks that `data` hashes to `cid`'s multihash. Only sha2-256/512 and sha3 CIDs are supported
/// (Kubo, Helia and this store produce sha2-256).
pub fn verify_block(cid: &Cid, data: &[u8]) -> Result<(), StoreError> {
    let mh = cid.hash();
    let code = mh.code();
    let hasher = Code::try_from(code).map_err(|_| StoreError::UnsupportedHash {
        cid: cid.to_string(),
        code,
    })?;
    let digest = hasher.digest(data);
    if digest.digest() == mh.digest() && digest.size() == mh.size() {
        Ok(())
    } else {
        Err(StoreError::HashMismatch {
            cid: cid.to_string(),
        })
    }
}

/// Rejects codecs other than raw and dag-pb (a UnixFS file is made of nothing else).
pub fn check_file_codec(cid: &Cid) -> Result<(), StoreError> {
    match cid.codec() {
        RAW_CODEC | DAG_PB_CODEC => Ok(()),
        codec => Err(StoreError::UnsupportedCodec {
            cid: cid.to_string(),
            codec,
        }),
    }
}

/// The CID of `data` as a raw leaf (what a file shorter than a chunk gets).
pub fn raw_cid(data: &[u8]) -> Cid {
    Cid::new_v1(RAW_CODEC, Code::Sha2_256.digest(data))
}

/// Hashes a whole in-memory input with the builder (tests and `only_hash` of small inputs).
pub fn hash_bytes(data: &[u8]) -> Cid {
    let mut b = DagBuilder::new();
    for chunk in data.chunks(CHUNK_SIZE) {
        b.push_chunk(chunk);
    }
    b.finish().1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(len: usize, seed: u64) -> Vec<u8> {
        // xorshift64*: deterministic, fast, not all zeros (so chunks differ)
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

    #[test]
    fn known_kubo_cids() {
        assert_eq!(
            hash_bytes(b"").to_string(),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        );
        assert_eq!(
            hash_bytes(b"hello world").to_string(),
            "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
        );
    }

    #[test]
    fn exactly_one_chunk_is_a_raw_leaf() {
        let data = seeded(CHUNK_SIZE, 3);
        let cid = hash_bytes(&data);
        assert_eq!(cid, raw_cid(&data));
    }

    #[test]
    fn root_is_last_block_and_blocks_verify() {
        let data = seeded(3 * CHUNK_SIZE + 5, 9);
        let mut b = DagBuilder::new();
        let mut all = Vec::new();
        for chunk in data.chunks(CHUNK_SIZE) {
            all.extend(b.push_chunk(chunk));
        }
        let (rest, root) = b.finish();
        all.extend(rest);
        assert_eq!(all.len(), 5, "4 leaves and one parent");
        assert_eq!(all.last().map(|b| b.cid), Some(root));
        assert_eq!(root.codec(), DAG_PB_CODEC);
        for blk in &all {
            verify_block(&blk.cid, &blk.data).expect("builder blocks hash to their CIDs");
        }
    }

    #[test]
    fn verify_detects_tampering() {
        let cid = raw_cid(b"abc");
        assert!(verify_block(&cid, b"abc").is_ok());
        assert!(matches!(
            verify_block(&cid, b"abd"),
            Err(StoreError::HashMismatch { .. })
        ));
    }

    #[test]
    fn rejects_foreign_codecs() {
        let cbor = Cid::new_v1(0x71, Code::Sha2_256.digest(b"x"));
        assert!(matches!(
            check_file_codec(&cbor),
            Err(StoreError::UnsupportedCodec { .. })
        ));
    }

    #[test]
    #[should_panic(expected = "push_chunk")]
    fn oversize_chunk_is_a_caller_bug() {
        DagBuilder::new().push_chunk(&vec![0; CHUNK_SIZE + 1]);
    }
}
