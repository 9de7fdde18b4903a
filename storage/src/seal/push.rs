//! Push-style (sans-IO) sealing and opening: feed input pieces of any size, collect output.

use zeroize::Zeroizing;

use super::envelope::{HEADER_LEN, SegmentCipher, TAG_LEN};
use super::key::{DataKey, SealContext};
use super::layout::SealConfig;
use crate::error::SealError;

/// Seals a record piece by piece into an envelope, holding at most one segment of plaintext.
///
/// ```
/// use ehr_storage::seal::{DataKey, SealConfig, SealContext, Sealer, Opener};
/// let key = DataKey::generate()?;
/// let ctx = SealContext::new(b"policy-1".to_vec());
/// let mut sealed = Vec::new();
/// let mut sealer = Sealer::new(&key, &ctx, SealConfig::default())?;
/// sealer.update(b"hello, ", &mut sealed);
/// sealer.update(b"world", &mut sealed);
/// sealer.finish(&mut sealed);
///
/// let mut plain = Vec::new();
/// let mut opener = Opener::new(&key, &ctx)?;
/// opener.update(&sealed, &mut plain)?;
/// opener.finish(&mut plain)?;
/// assert_eq!(plain, b"hello, world");
/// # Ok::<(), ehr_storage::SealError>(())
/// ```
#[derive(Debug)]
pub struct Sealer {
    cipher: SegmentCipher,
    header_written: bool,
    /// Plaintext of the current segment; a full segment waits here until more input shows
    /// it is not the final one.
    pending: Zeroizing<Vec<u8>>,
    index: u64,
}

impl Sealer {
    /// Starts an envelope for `ctx` under `key` (draws a fresh salt).
    pub fn new(key: &DataKey, ctx: &SealContext, config: SealConfig) -> Result<Self, SealError> {
        let cipher = SegmentCipher::for_sealing(key, &ctx.encode()?, config)?;
        let capacity = usize::try_from(config.segment_plain_len()).expect("segment fits memory");
        Ok(Self {
            cipher,
            header_written: false,
            pending: Zeroizing::new(Vec::with_capacity(capacity)),
            index: 0,
        })
    }

    /// The envelope header (the first [`HEADER_LEN`] bytes of the output).
    pub fn header(&self) -> &[u8; HEADER_LEN] {
        self.cipher.header()
    }

    fn capacity(&self) -> usize {
        usize::try_from(self.cipher.config().segment_capacity(self.index))
            .expect("segment fits memory")
    }

    fn write_header(&mut self, out: &mut Vec<u8>) {
        if !self.header_written {
            out.extend_from_slice(self.cipher.header());
            self.header_written = true;
        }
    }

    fn emit(&mut self, plain: &[u8], last: bool, out: &mut Vec<u8>) {
        let start = out.len();
        out.reserve(plain.len() + TAG_LEN);
        out.extend_from_slice(plain);
        let tag = self
            .cipher
            .seal_segment(self.index, last, &mut out[start..]);
        out.extend_from_slice(&tag);
        self.index = self
            .index
            .checked_add(1)
            .expect("segment counter overflow: more than 2^64 segments");
    }

    /// Seals `plaintext` (any length, including empty) and appends the sealed bytes that are
    /// ready to `out`. The last segment is held back until [`Sealer::finish`].
    pub fn update(&mut self, plaintext: &[u8], out: &mut Vec<u8>) {
        self.write_header(out);
        let mut input = plaintext;
        loop {
            let cap = self.capacity();
            if self.pending.len() == cap && !input.is_empty() {
                let pending = std::mem::take(&mut *self.pending);
                self.emit(&pending, false, out);
                *self.pending = pending;
                self.pending.clear();
                continue;
            }
            if self.pending.is_empty() && input.len() > cap {
                // Fast path: more than a segment of input, seal it straight into `out`.
                let (segment, rest) = input.split_at(cap);
                self.emit(segment, false, out);
                input = rest;
                continue;
            }
            if input.is_empty() {
                return;
            }
            let take = (cap - self.pending.len()).min(input.len());
            self.pending.extend_from_slice(&input[..take]);
            input = &input[take..];
        }
    }

    /// Seals the final segment (empty if the record is empty) and appends it to `out`.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        self.write_header(out);
        let pending = std::mem::take(&mut *self.pending);
        debug_assert!(self.index == 0 || !pending.is_empty());
        self.emit(&pending, true, out);
        *self.pending = pending;
    }
}

/// Opens an envelope piece by piece; it releases plaintext only of authenticated segments.
///
/// After an error the opener is poisoned: every later call fails with [`SealError::Poisoned`].
#[derive(Debug)]
pub struct Opener {
    key: DataKey,
    ctx: Vec<u8>,
    header: Vec<u8>,
    cipher: Option<SegmentCipher>,
    /// Sealed bytes of the current segment; a full one waits until more input shows that it
    /// is not the final one.
    inbuf: Vec<u8>,
    index: u64,
    /// Sealed offset where the current segment starts.
    offset: u64,
    poisoned: bool,
}

impl Opener {
    /// Prepares to open an envelope sealed for `ctx` under `key`.
    pub fn new(key: &DataKey, ctx: &SealContext) -> Result<Self, SealError> {
        Ok(Self {
            key: key.duplicate(),
            ctx: ctx.encode()?,
            header: Vec::with_capacity(HEADER_LEN),
            cipher: None,
            inbuf: Vec::new(),
            index: 0,
            offset: HEADER_LEN as u64,
            poisoned: false,
        })
    }

    /// The envelope's layout, once its header has been read and verified.
    pub fn config(&self) -> Option<SealConfig> {
        self.cipher.as_ref().map(SegmentCipher::config)
    }

    /// Consumes sealed bytes and appends the plaintext of every segment that authenticated.
    pub fn update(&mut self, sealed: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        if self.poisoned {
            return Err(SealError::Poisoned { what: "Opener" });
        }
        let result = self.update_inner(sealed, out);
        self.poisoned = result.is_err();
        result
    }

    fn update_inner(&mut self, sealed: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        let mut input = sealed;
        if self.cipher.is_none() {
            let take = (HEADER_LEN - self.header.len()).min(input.len());
            self.header.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.header.len() < HEADER_LEN {
                return Ok(());
            }
            let header: &[u8; HEADER_LEN] = self.header[..].try_into().expect("header is full");
            let cipher = SegmentCipher::for_opening(&self.key, &self.ctx, header)?;
            let wire = usize::try_from(cipher.config().segment_wire_len(1)).expect("fits");
            self.inbuf.reserve_exact(wire);
            self.cipher = Some(cipher);
        }
        loop {
            let wire = self.wire_len();
            if self.inbuf.len() == wire && !input.is_empty() {
                let inbuf = std::mem::take(&mut self.inbuf);
                let r = self.open_one(&inbuf, false, out);
                self.inbuf = inbuf;
                self.inbuf.clear();
                r?;
                continue;
            }
            if self.inbuf.is_empty() && input.len() > wire {
                // Fast path: more than a segment of input, open it straight into `out`.
                let (segment, rest) = input.split_at(wire);
                self.open_one(segment, false, out)?;
                input = rest;
                continue;
            }
            if input.is_empty() {
                return Ok(());
            }
            let take = (wire - self.inbuf.len()).min(input.len());
            self.inbuf.extend_from_slice(&input[..take]);
            input = &input[take..];
        }
    }

    fn cipher(&self) -> &SegmentCipher {
        self.cipher
            .as_ref()
            .expect("opener has a verified header here")
    }

    fn wire_len(&self) -> usize {
        usize::try_from(self.cipher().config().segment_wire_len(self.index)).expect("fits")
    }

    /// Opens `sealed` as the current segment and appends its plaintext.
    fn open_one(&mut self, sealed: &[u8], last: bool, out: &mut Vec<u8>) -> Result<(), SealError> {
        let start = out.len();
        out.extend_from_slice(sealed);
        let index = self.index;
        match self.cipher().open_segment(index, last, &mut out[start..]) {
            Some(n) => {
                out.truncate(start + n);
                self.index += 1;
                self.offset += sealed.len() as u64;
                Ok(())
            }
            None => {
                out.truncate(start);
                Err(self.diagnose(sealed, last))
            }
        }
    }

    /// Explains why segment `self.index` failed (error path only).
    fn diagnose(&self, sealed: &[u8], last: bool) -> SealError {
        let (segment, offset) = (self.index, self.offset);
        let end = offset + sealed.len() as u64;
        let full = sealed.len() == self.wire_len();
        if !last && self.cipher().authenticates(segment, true, sealed) {
            tracing::debug!(segment, "sealed data continues after the final segment");
            return SealError::TrailingData {
                segment,
                offset: end,
            };
        }
        if last && full && self.cipher().authenticates(segment, false, sealed) {
            tracing::debug!(segment, "envelope cut after a non-final segment");
            return SealError::Truncated {
                segments: segment + 1,
            };
        }
        tracing::debug!(segment, "segment failed authentication");
        SealError::SegmentAuth {
            segment,
            offset,
            end,
        }
    }

    /// Checks that the envelope ended with its final segment and appends that segment's plaintext.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), SealError> {
        if self.poisoned {
            return Err(SealError::Poisoned { what: "Opener" });
        }
        if self.cipher.is_none() {
            return Err(SealError::TruncatedHeader {
                len: self.header.len() as u64,
                expected: HEADER_LEN as u64,
            });
        }
        if self.inbuf.is_empty() {
            return Err(SealError::Truncated {
                segments: self.index,
            });
        }
        let inbuf = std::mem::take(&mut self.inbuf);
        self.open_one(&inbuf, true, out)
    }
}

/// Seals a whole in-memory record under the default layout.
pub fn seal(key: &DataKey, ctx: &SealContext, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    let config = SealConfig::default();
    let mut out = Vec::with_capacity(
        usize::try_from(config.sealed_len(plaintext.len() as u64)).expect("fits memory"),
    );
    let mut sealer = Sealer::new(key, ctx, config)?;
    sealer.update(plaintext, &mut out);
    sealer.finish(&mut out);
    Ok(out)
}

/// Opens a whole in-memory envelope; the plaintext is returned only if every segment verified.
pub fn open(
    key: &DataKey,
    ctx: &SealContext,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let mut out = Zeroizing::new(Vec::with_capacity(sealed.len()));
    let mut opener = Opener::new(key, ctx)?;
    opener.update(sealed, &mut out)?;
    opener.finish(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: SealConfig = SealConfig { segment_len: 256 };

    fn key() -> DataKey {
        DataKey::from_bytes([9; 32])
    }

    fn ctx() -> SealContext {
        SealContext::new(b"policy-1".to_vec()).with_record(b"rec".to_vec())
    }

    fn seal_small(plain: &[u8], piece: usize) -> Vec<u8> {
        let mut s = Sealer::new(&key(), &ctx(), SMALL).unwrap();
        let mut out = Vec::new();
        for p in plain.chunks(piece.max(1)) {
            s.update(p, &mut out);
        }
        s.finish(&mut out);
        out
    }

    fn open_small(sealed: &[u8], piece: usize) -> Result<Vec<u8>, SealError> {
        let mut o = Opener::new(&key(), &ctx())?;
        let mut out = Vec::new();
        for p in sealed.chunks(piece.max(1)) {
            o.update(p, &mut out)?;
        }
        o.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trip_at_boundaries_and_pieces() {
        let first = SMALL.first_segment_plain_len() as usize;
        let full = SMALL.segment_plain_len() as usize;
        for n in [
            0,
            1,
            first - 1,
            first,
            first + 1,
            first + full,
            first + 2 * full + 3,
        ] {
            let plain: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            for piece in [1, 7, first, full + 1, 10_000] {
                let sealed = seal_small(&plain, piece);
                assert_eq!(sealed.len() as u64, SMALL.sealed_len(n as u64), "n {n}");
                for opiece in [1, 255, 256, 257, 10_000] {
                    assert_eq!(open_small(&sealed, opiece).unwrap(), plain, "n {n}");
                }
            }
        }
    }

    #[test]
    fn empty_record_is_one_final_segment() {
        let sealed = seal_small(b"", 1);
        assert_eq!(sealed.len(), HEADER_LEN + TAG_LEN);
        assert!(open_small(&sealed, 5).unwrap().is_empty());
    }

    #[test]
    fn truncation_at_boundary_says_truncated() {
        let n = SMALL.first_segment_plain_len() as usize + 300;
        let sealed = seal_small(&vec![1; n], 1000);
        assert!(matches!(
            open_small(&sealed[..256], 1000),
            Err(SealError::Truncated { segments: 1 })
        ));
        assert!(matches!(
            open_small(&sealed[..HEADER_LEN], 1000),
            Err(SealError::Truncated { segments: 0 })
        ));
        assert!(matches!(
            open_small(&sealed[..HEADER_LEN - 1], 1000),
            Err(SealError::TruncatedHeader { len: 111, .. })
        ));
        assert!(matches!(
            open_small(&sealed[..300], 1000),
            Err(SealError::SegmentAuth { segment: 1, .. })
        ));
    }

    #[test]
    fn appended_data_says_trailing() {
        // A full final segment followed by junk.
        let n = SMALL.first_segment_plain_len() as usize;
        let mut sealed = seal_small(&vec![1; n], 1000);
        sealed.extend_from_slice(b"junk");
        let err = open_small(&sealed, 1000).unwrap_err();
        assert!(
            matches!(
                err,
                SealError::TrailingData {
                    segment: 0,
                    offset: 256
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn plaintext_of_a_bad_segment_is_never_released() {
        let n = SMALL.first_segment_plain_len() as usize + 50;
        let plain = vec![0xAB; n];
        let mut sealed = seal_small(&plain, 1000);
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        let mut o = Opener::new(&key(), &ctx()).unwrap();
        let mut out = Vec::new();
        o.update(&sealed, &mut out).unwrap();
        // Only segment 0 was released.
        assert_eq!(out, plain[..SMALL.first_segment_plain_len() as usize]);
        assert!(matches!(
            o.finish(&mut out),
            Err(SealError::SegmentAuth { segment: 1, .. })
        ));
        assert_eq!(out.len(), SMALL.first_segment_plain_len() as usize);
    }

    #[test]
    fn opener_is_poisoned_after_an_error() {
        let sealed = seal_small(b"abc", 1);
        let mut o = Opener::new(&DataKey::from_bytes([1; 32]), &ctx()).unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            o.update(&sealed, &mut out),
            Err(SealError::WrongKey)
        ));
        assert!(matches!(
            o.update(&sealed, &mut out),
            Err(SealError::Poisoned { .. })
        ));
    }

    #[test]
    fn whole_record_helpers() {
        let sealed = seal(&key(), &ctx(), b"record").unwrap();
        assert_eq!(&open(&key(), &ctx(), &sealed).unwrap()[..], b"record");
        assert!(matches!(
            open(&key(), &SealContext::new(b"policy-1".to_vec()), &sealed),
            Err(SealError::ContextMismatch)
        ));
    }
}
