//! Envelope layout: segment length, and the arithmetic between plaintext and sealed offsets.

use std::ops::Range;

use super::envelope::{HEADER_LEN, TAG_LEN};
use crate::error::SealError;

/// Default sealed segment length: 256 KiB, the IPFS (Kubo) chunk size, so segment `i` is block `i`.
pub const DEFAULT_SEGMENT_LEN: u32 = 262_144;
/// Smallest accepted segment length (small segments are for tests; they cost a tag each).
pub const MIN_SEGMENT_LEN: u32 = 256;
/// Largest accepted segment length; it bounds the memory an opener allocates from a header.
pub const MAX_SEGMENT_LEN: u32 = 16 << 20;

const H: u64 = HEADER_LEN as u64;
const T: u64 = TAG_LEN as u64;

/// How records are cut into segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealConfig {
    /// Sealed length of every segment on the wire (header + segment 0 has this length too).
    /// Set it to the blockstore's chunk size so segments align with blocks.
    pub segment_len: u32,
}

impl Default for SealConfig {
    fn default() -> Self {
        Self {
            segment_len: DEFAULT_SEGMENT_LEN,
        }
    }
}

/// The sealed bytes that hold a plaintext range (see [`SealConfig::sealed_range`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRange {
    /// Indices of the segments that hold the range.
    pub segments: Range<u64>,
    /// Sealed byte offsets of those segments (the header, bytes `0..HEADER_LEN`, is also needed).
    pub sealed: Range<u64>,
    /// Indices of the `segment_len`-byte blocks that hold those segments (equal to `segments`).
    pub blocks: Range<u64>,
}

/// Sealed length of a `plain_len`-byte record under the default [`SealConfig`].
pub fn sealed_len(plain_len: u64) -> u64 {
    SealConfig::default().sealed_len(plain_len)
}

impl SealConfig {
    /// Checks the fields; a config that passes can seal and open.
    pub fn validate(&self) -> Result<(), SealError> {
        if !(MIN_SEGMENT_LEN..=MAX_SEGMENT_LEN).contains(&self.segment_len) {
            return Err(SealError::InvalidConfig {
                field: "segment_len",
                reason: format!(
                    "{} is outside {MIN_SEGMENT_LEN}..={MAX_SEGMENT_LEN}",
                    self.segment_len
                ),
            });
        }
        Ok(())
    }

    fn seg(&self) -> u64 {
        u64::from(self.segment_len)
    }

    /// Plaintext capacity of segment 0 (it shares its block with the header).
    pub fn first_segment_plain_len(&self) -> u64 {
        self.seg() - H - T
    }

    /// Plaintext capacity of every segment after the first.
    pub fn segment_plain_len(&self) -> u64 {
        self.seg() - T
    }

    /// Plaintext capacity of segment `index`.
    pub fn segment_capacity(&self, index: u64) -> u64 {
        if index == 0 {
            self.first_segment_plain_len()
        } else {
            self.segment_plain_len()
        }
    }

    /// Sealed (wire) length of a full segment `index`, tag included, header excluded.
    pub fn segment_wire_len(&self, index: u64) -> u64 {
        self.segment_capacity(index) + T
    }

    /// Number of segments a `plain_len`-byte record seals into (at least one).
    pub fn segment_count(&self, plain_len: u64) -> u64 {
        let first = self.first_segment_plain_len();
        if plain_len <= first {
            1
        } else {
            1 + (plain_len - first).div_ceil(self.segment_plain_len())
        }
    }

    /// Sealed length of a `plain_len`-byte record: header, plaintext and one tag per segment.
    ///
    /// Saturates at `u64::MAX` for lengths no real record reaches (beyond 2^63 bytes).
    pub fn sealed_len(&self, plain_len: u64) -> u64 {
        H.saturating_add(plain_len)
            .saturating_add(T.saturating_mul(self.segment_count(plain_len)))
    }

    /// Plaintext length of a `sealed_len`-byte envelope, or why no record seals to that length.
    pub fn plain_len(&self, sealed_len: u64) -> Result<u64, SealError> {
        if sealed_len < H {
            return Err(SealError::TruncatedHeader {
                len: sealed_len,
                expected: H,
            });
        }
        let invalid = || SealError::InvalidSealedLen {
            len: sealed_len,
            segment_len: self.segment_len,
        };
        let body = sealed_len - H;
        if body < T {
            return Err(invalid());
        }
        let first_wire = self.seg() - H;
        if body <= first_wire {
            return Ok(body - T);
        }
        let rest = body - first_wire;
        let (full, partial) = (rest / self.seg(), rest % self.seg());
        let segments = match partial {
            0 => 1 + full,
            // Only segment 0 may be empty; a later final segment holds at least one byte.
            p if p <= T => return Err(invalid()),
            _ => 2 + full,
        };
        Ok(body - T * segments)
    }

    /// Index of the segment holding plaintext byte `plain_offset`.
    pub fn segment_for_offset(&self, plain_offset: u64) -> u64 {
        let first = self.first_segment_plain_len();
        if plain_offset < first {
            0
        } else {
            1 + (plain_offset - first) / self.segment_plain_len()
        }
    }

    /// Plaintext offset where segment `index` starts.
    pub fn segment_plain_start(&self, index: u64) -> u64 {
        if index == 0 {
            0
        } else {
            self.first_segment_plain_len()
                .saturating_add((index - 1).saturating_mul(self.segment_plain_len()))
        }
    }

    /// Sealed offset where segment `index` starts (segment 0 starts after the header).
    pub fn segment_sealed_start(&self, index: u64) -> u64 {
        if index == 0 {
            H
        } else {
            index.saturating_mul(self.seg())
        }
    }

    /// The segments, sealed bytes and blocks holding plaintext `range` of a `plain_len`-byte
    /// record. An empty range maps to no segments.
    pub fn sealed_range(
        &self,
        plain_len: u64,
        range: Range<u64>,
    ) -> Result<SealedRange, SealError> {
        if range.start > range.end || range.end > plain_len {
            return Err(SealError::InvalidRange {
                start: range.start,
                end: range.end,
                len: plain_len,
            });
        }
        if range.is_empty() {
            let at = self.segment_for_offset(range.start);
            let offset = self.segment_sealed_start(at);
            return Ok(SealedRange {
                segments: at..at,
                sealed: offset..offset,
                blocks: at..at,
            });
        }
        let first = self.segment_for_offset(range.start);
        let last = self.segment_for_offset(range.end - 1);
        let total = self.sealed_len(plain_len);
        let end = self.segment_sealed_start(last + 1).min(total);
        Ok(SealedRange {
            segments: first..last + 1,
            sealed: self.segment_sealed_start(first)..end,
            blocks: first..last + 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> SealConfig {
        SealConfig { segment_len: 256 }
    }

    #[test]
    fn default_is_valid_and_aligned_to_ipfs_chunks() {
        let cfg = SealConfig::default();
        cfg.validate().unwrap();
        assert_eq!(cfg.segment_len, 262_144);
        assert_eq!(H + cfg.first_segment_plain_len() + T, 262_144);
        assert_eq!(cfg.segment_plain_len() + T, 262_144);
        assert_eq!(sealed_len(0), H + T);
    }

    #[test]
    fn validate_names_the_field() {
        for bad in [0, MIN_SEGMENT_LEN - 1, MAX_SEGMENT_LEN + 1] {
            let err = SealConfig { segment_len: bad }.validate().unwrap_err();
            assert!(err.to_string().contains("segment_len"), "{err}");
        }
        SealConfig {
            segment_len: MIN_SEGMENT_LEN,
        }
        .validate()
        .unwrap();
        SealConfig {
            segment_len: MAX_SEGMENT_LEN,
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn sealed_len_and_plain_len_are_inverse_around_boundaries() {
        let cfg = small();
        let first = cfg.first_segment_plain_len();
        let full = cfg.segment_plain_len();
        let mut lens = vec![0, 1, 2];
        for k in 0..4 {
            let b = first + k * full;
            lens.extend([b - 1, b, b + 1]);
        }
        for n in lens {
            let s = cfg.sealed_len(n);
            assert_eq!(cfg.plain_len(s).unwrap(), n, "plain {n} sealed {s}");
        }
    }

    #[test]
    fn plain_len_rejects_impossible_lengths() {
        let cfg = small();
        assert!(matches!(
            cfg.plain_len(H - 1),
            Err(SealError::TruncatedHeader { .. })
        ));
        assert!(matches!(
            cfg.plain_len(H + T - 1),
            Err(SealError::InvalidSealedLen { .. })
        ));
        // A second segment with only a tag (or less) is never produced.
        for extra in 1..=T {
            assert!(cfg.plain_len(256 + extra).is_err(), "extra {extra}");
        }
        assert!(cfg.plain_len(256 + T + 1).is_ok());
        // Every sealed length is hit by exactly one plaintext length.
        let mut hits = std::collections::BTreeMap::new();
        for n in 0..2000 {
            assert!(hits.insert(cfg.sealed_len(n), n).is_none());
        }
        for s in 0..cfg.sealed_len(1999) {
            assert_eq!(cfg.plain_len(s).ok(), hits.get(&s).copied(), "sealed {s}");
        }
    }

    #[test]
    fn offsets_map_to_segments_and_blocks() {
        let cfg = small();
        let first = cfg.first_segment_plain_len();
        let full = cfg.segment_plain_len();
        assert_eq!(cfg.segment_for_offset(0), 0);
        assert_eq!(cfg.segment_for_offset(first - 1), 0);
        assert_eq!(cfg.segment_for_offset(first), 1);
        assert_eq!(cfg.segment_for_offset(first + full), 2);
        for i in 0..5 {
            assert_eq!(cfg.segment_for_offset(cfg.segment_plain_start(i)), i);
            if i > 0 {
                assert_eq!(cfg.segment_sealed_start(i) % 256, 0);
            }
        }
        let n = first + 3 * full + 5;
        let r = cfg.sealed_range(n, first - 1..first + 1).unwrap();
        assert_eq!(r.segments, 0..2);
        assert_eq!(r.blocks, 0..2);
        assert_eq!(r.sealed, H..512);
        let r = cfg.sealed_range(n, n - 1..n).unwrap();
        assert_eq!(r.segments, 4..5);
        assert_eq!(r.sealed, 1024..cfg.sealed_len(n));
        assert!(cfg.sealed_range(n, 0..n + 1).is_err());
        assert!(cfg.sealed_range(n, 0..n).is_ok());
    }
}
