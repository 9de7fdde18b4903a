//! `Read` adapters and random access to sealed bytes.

use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;

use zeroize::Zeroizing;

use super::envelope::{HEADER_LEN, SegmentCipher, TAG_LEN};
use super::key::{DataKey, SealContext};
use super::layout::SealConfig;
use super::push::Opener;
use crate::error::SealError;

impl From<SealError> for io::Error {
    /// An I/O error passes through unchanged; any other error becomes `InvalidData` wrapping it.
    fn from(err: SealError) -> Self {
        match err {
            SealError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// The [`SealError`] inside an `io::Error` returned by a [`SealReader`] or [`OpenReader`], if
/// the failure was the envelope's (not the underlying reader's).
pub fn seal_error(err: &io::Error) -> Option<&SealError> {
    err.get_ref()?.downcast_ref::<SealError>()
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Wraps a plaintext reader; reading it yields the sealed envelope. See [`seal_reader`].
#[derive(Debug)]
pub struct SealReader<R> {
    inner: R,
    cipher: SegmentCipher,
    /// One block: sealed bytes ready to hand out (plaintext only while a segment is sealed).
    buf: Zeroizing<Vec<u8>>,
    pos: usize,
    filled: usize,
    index: u64,
    lookahead: Option<u8>,
    done: bool,
}

/// Seals everything `inner` yields under the default layout, in constant memory (one segment).
///
/// Errors from `inner` pass through unchanged.
pub fn seal_reader<R: Read>(
    key: &DataKey,
    ctx: &SealContext,
    inner: R,
) -> Result<SealReader<R>, SealError> {
    seal_reader_with(key, ctx, SealConfig::default(), inner)
}

/// [`seal_reader`] with an explicit layout.
pub fn seal_reader_with<R: Read>(
    key: &DataKey,
    ctx: &SealContext,
    config: SealConfig,
    inner: R,
) -> Result<SealReader<R>, SealError> {
    let cipher = SegmentCipher::for_sealing(key, &ctx.encode()?, config)?;
    let block = usize::try_from(config.segment_len).expect("u32 fits usize");
    Ok(SealReader {
        inner,
        cipher,
        buf: Zeroizing::new(vec![0; block]),
        pos: 0,
        filled: 0,
        index: 0,
        lookahead: None,
        done: false,
    })
}

impl<R: Read> SealReader<R> {
    /// Seals the next segment (and, for segment 0, the header) into `buf`.
    fn refill(&mut self) -> io::Result<()> {
        let mut start = 0;
        if self.index == 0 {
            self.buf[..HEADER_LEN].copy_from_slice(self.cipher.header());
            start = HEADER_LEN;
        }
        let cap = usize::try_from(self.cipher.config().segment_capacity(self.index))
            .expect("segment fits memory");
        let mut len = 0;
        if let Some(b) = self.lookahead.take() {
            self.buf[start] = b;
            len = 1;
        }
        len += read_full(&mut self.inner, &mut self.buf[start + len..start + cap])?;
        let mut last = len < cap;
        if !last {
            let mut one = [0u8; 1];
            if read_full(&mut self.inner, &mut one)? == 1 {
                self.lookahead = Some(one[0]);
            } else {
                last = true;
            }
        }
        let tag = self
            .cipher
            .seal_segment(self.index, last, &mut self.buf[start..start + len]);
        self.buf[start + len..start + len + TAG_LEN].copy_from_slice(&tag);
        self.index += 1;
        self.pos = 0;
        self.filled = start + len + TAG_LEN;
        self.done = last;
        Ok(())
    }
}

impl<R: Read> Read for SealReader<R> {
    fn read(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.filled {
            if self.done || dst.is_empty() {
                return Ok(0);
            }
            self.refill()?;
        }
        let n = (self.filled - self.pos).min(dst.len());
        dst[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Wraps a sealed reader; reading it yields the verified plaintext. See [`open_reader`].
#[derive(Debug)]
pub struct OpenReader<R> {
    inner: R,
    opener: Option<Opener>,
    inbuf: Vec<u8>,
    /// Verified plaintext not yet handed out.
    out: Zeroizing<Vec<u8>>,
    pos: usize,
    failed: bool,
}

/// Opens the envelope `inner` yields, in constant memory (about two segments).
///
/// Plaintext is released only segment by segment after each one authenticated; the reader's
/// end (`Ok(0)`) is reported only after the final segment verified. Envelope errors are
/// `io::Error`s of kind `InvalidData` wrapping a [`SealError`] (see [`seal_error`]).
pub fn open_reader<R: Read>(
    key: &DataKey,
    ctx: &SealContext,
    inner: R,
) -> Result<OpenReader<R>, SealError> {
    Ok(OpenReader {
        inner,
        opener: Some(Opener::new(key, ctx)?),
        inbuf: vec![0; 64 * 1024],
        out: Zeroizing::new(Vec::new()),
        pos: 0,
        failed: false,
    })
}

impl<R: Read> OpenReader<R> {
    fn refill(&mut self) -> io::Result<()> {
        self.out.clear();
        self.pos = 0;
        while self.out.is_empty() {
            let Some(opener) = self.opener.as_mut() else {
                return Ok(());
            };
            let n = match self.inner.read(&mut self.inbuf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                let opener = self.opener.take().expect("checked above");
                opener.finish(&mut self.out)?;
            } else {
                opener.update(&self.inbuf[..n], &mut self.out)?;
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for OpenReader<R> {
    fn read(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(SealError::Poisoned { what: "OpenReader" }.into());
        }
        if self.pos == self.out.len() {
            if dst.is_empty() {
                return Ok(0);
            }
            if let Err(e) = self.refill() {
                self.failed = true;
                self.opener = None;
                return Err(e);
            }
        }
        let n = (self.out.len() - self.pos).min(dst.len());
        dst[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Random access to a sealed record: its header is verified once, then any segment or
/// plaintext range can be opened by reading only the segments that hold it.
#[derive(Debug)]
pub struct SealedFile<R> {
    inner: R,
    cipher: SegmentCipher,
    sealed_len: u64,
    plain_len: u64,
}

impl<R: Read + Seek> SealedFile<R> {
    /// Reads and verifies the header (key commitment, context) and checks the sealed length.
    pub fn open(key: &DataKey, ctx: &SealContext, mut inner: R) -> Result<Self, SealError> {
        let sealed_len = inner.seek(SeekFrom::End(0))?;
        inner.seek(SeekFrom::Start(0))?;
        let mut header = [0u8; HEADER_LEN];
        let got = read_full(&mut inner, &mut header)?;
        if got < HEADER_LEN {
            return Err(SealError::TruncatedHeader {
                len: got as u64,
                expected: HEADER_LEN as u64,
            });
        }
        let cipher = SegmentCipher::for_opening(key, &ctx.encode()?, &header)?;
        let plain_len = cipher.config().plain_len(sealed_len)?;
        Ok(Self {
            inner,
            cipher,
            sealed_len,
            plain_len,
        })
    }

    /// The record's plaintext length.
    pub fn plain_len(&self) -> u64 {
        self.plain_len
    }

    /// The envelope's layout.
    pub fn config(&self) -> SealConfig {
        self.cipher.config()
    }

    /// Number of segments in the envelope.
    pub fn segment_count(&self) -> u64 {
        self.config().segment_count(self.plain_len)
    }

    /// Opens segment `index` and appends its plaintext to `out`.
    pub fn read_segment(&mut self, index: u64, out: &mut Vec<u8>) -> Result<(), SealError> {
        let count = self.segment_count();
        if index >= count {
            return Err(SealError::InvalidRange {
                start: self.config().segment_plain_start(index),
                end: self.config().segment_plain_start(index),
                len: self.plain_len,
            });
        }
        let config = self.config();
        let start = config.segment_sealed_start(index);
        let end = config.segment_sealed_start(index + 1).min(self.sealed_len);
        let len = usize::try_from(end - start).expect("segment fits memory");
        let last = index + 1 == count;
        self.inner.seek(SeekFrom::Start(start))?;
        let at = out.len();
        out.resize(at + len, 0);
        let got = read_full(&mut self.inner, &mut out[at..])?;
        if got < len {
            // The source shrank since its length was taken.
            out.truncate(at);
            return Err(SealError::Truncated { segments: index });
        }
        // A full final segment may really be a non-final one whose successors were cut off:
        // keep a copy to tell truncation from tampering if it fails.
        let full = len as u64 == config.segment_wire_len(index);
        let copy = (last && full && index > 0).then(|| out[at..].to_vec());
        match self.cipher.open_segment(index, last, &mut out[at..]) {
            Some(n) => {
                out.truncate(at + n);
                Ok(())
            }
            None => {
                out.truncate(at);
                if copy.is_some_and(|c| self.cipher.authenticates(index, false, &c)) {
                    return Err(SealError::Truncated {
                        segments: index + 1,
                    });
                }
                tracing::debug!(segment = index, "segment failed authentication");
                Err(SealError::SegmentAuth {
                    segment: index,
                    offset: start,
                    end,
                })
            }
        }
    }

    /// Opens plaintext bytes `range`, reading only the segments that hold it.
    ///
    /// Memory: the range plus one segment.
    pub fn read_range(&mut self, range: Range<u64>) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let config = self.config();
        let sr = config.sealed_range(self.plain_len, range.clone())?;
        let want =
            usize::try_from(range.end - range.start).map_err(|_| SealError::InvalidRange {
                start: range.start,
                end: range.end,
                len: self.plain_len,
            })?;
        let mut out = Zeroizing::new(Vec::with_capacity(want));
        let mut seg = Zeroizing::new(Vec::with_capacity(
            usize::try_from(config.segment_len).expect("u32 fits usize"),
        ));
        // An empty record's only range is empty and holds no segment, so its (final) segment
        // would never be authenticated: any envelope cut to its header and one tag would read
        // as an empty record. Reading it checks that segment.
        if self.plain_len == 0 {
            self.read_segment(0, &mut seg)?;
        }
        for index in sr.segments {
            seg.clear();
            self.read_segment(index, &mut seg)?;
            let seg_start = config.segment_plain_start(index);
            let from = range.start.max(seg_start) - seg_start;
            let to = range.end.min(seg_start + seg.len() as u64) - seg_start;
            out.extend_from_slice(&seg[from as usize..to as usize]);
        }
        Ok(out)
    }

    /// Gives back the underlying reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Opens plaintext bytes `range` of the sealed record in `inner` (see [`SealedFile`]).
pub fn open_range<R: Read + Seek>(
    key: &DataKey,
    ctx: &SealContext,
    inner: R,
    range: Range<u64>,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    SealedFile::open(key, ctx, inner)?.read_range(range)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const SMALL: SealConfig = SealConfig { segment_len: 256 };

    fn key() -> DataKey {
        DataKey::from_bytes([5; 32])
    }

    fn ctx() -> SealContext {
        SealContext::new(b"capsule-9".to_vec())
    }

    fn sealed_of(plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        seal_reader_with(&key(), &ctx(), SMALL, plain)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn readers_round_trip_and_agree_with_lengths() {
        let first = SMALL.first_segment_plain_len() as usize;
        let full = SMALL.segment_plain_len() as usize;
        for n in [
            0,
            1,
            first,
            first + 1,
            first + 3 * full,
            first + 3 * full + 9,
        ] {
            let plain: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let sealed = sealed_of(&plain);
            assert_eq!(sealed.len() as u64, SMALL.sealed_len(n as u64));
            let mut back = Vec::new();
            open_reader(&key(), &ctx(), &sealed[..])
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, plain);
        }
    }

    #[test]
    fn open_reader_errors_downcast() {
        let sealed = sealed_of(b"some bytes");
        let mut r = open_reader(&DataKey::from_bytes([6; 32]), &ctx(), &sealed[..]).unwrap();
        let err = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(matches!(seal_error(&err), Some(SealError::WrongKey)));
        // Once failed, it stays failed.
        let err = r.read(&mut [0; 8]).unwrap_err();
        assert!(matches!(seal_error(&err), Some(SealError::Poisoned { .. })));
    }

    #[test]
    fn reader_errors_pass_through() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, "gone"))
            }
        }
        let err = seal_reader_with(&key(), &ctx(), SMALL, Broken)
            .unwrap()
            .read(&mut [0; 10])
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert!(seal_error(&err).is_none());
    }

    #[test]
    fn ranges_match_the_plaintext() {
        let first = SMALL.first_segment_plain_len();
        let full = SMALL.segment_plain_len();
        let n = first + 4 * full + 17;
        let plain: Vec<u8> = (0..n).map(|i| (i * 13 % 256) as u8).collect();
        let sealed = sealed_of(&plain);
        let mut f = SealedFile::open(&key(), &ctx(), Cursor::new(&sealed)).unwrap();
        assert_eq!(f.plain_len(), n);
        for (a, b) in [
            (0, 0),
            (0, n),
            (0, 1),
            (first - 1, first + 1),
            (n - 1, n),
            (5, 700),
        ] {
            let got = f.read_range(a..b).unwrap();
            assert_eq!(&got[..], &plain[a as usize..b as usize], "{a}..{b}");
        }
        assert!(matches!(
            f.read_range(0..n + 1),
            Err(SealError::InvalidRange { .. })
        ));
        assert!(f.read_segment(f.segment_count(), &mut Vec::new()).is_err());
    }

    #[test]
    fn range_reads_detect_cuts_and_tampering() {
        let first = SMALL.first_segment_plain_len();
        let full = SMALL.segment_plain_len();
        let n = first + 2 * full + 10;
        let plain = vec![3u8; n as usize];
        let sealed = sealed_of(&plain);
        // Cut the final segment off: the new last segment is a non-final one.
        let cut = &sealed[..3 * 256];
        let mut f = SealedFile::open(&key(), &ctx(), Cursor::new(cut)).unwrap();
        assert!(matches!(f.read_range(0..10).map(|v| v.len()), Ok(10)));
        assert!(matches!(
            f.read_range(f.plain_len() - 1..f.plain_len()),
            Err(SealError::Truncated { segments: 3 })
        ));
        // Cut inside a segment: the length is impossible or the segment fails.
        assert!(SealedFile::open(&key(), &ctx(), Cursor::new(&sealed[..3 * 256 + 5])).is_err());
        // Flip a bit in segment 1.
        let mut bad = sealed.clone();
        bad[300] ^= 4;
        let mut f = SealedFile::open(&key(), &ctx(), Cursor::new(&bad)).unwrap();
        assert!(f.read_range(0..10).is_ok());
        assert!(matches!(
            f.read_range(first..first + 1),
            Err(SealError::SegmentAuth {
                segment: 1,
                offset: 256,
                end: 512
            })
        ));
        assert!(matches!(
            open_range(
                &key(),
                &SealContext::new(b"x".to_vec()),
                Cursor::new(&sealed),
                0..1
            ),
            Err(SealError::ContextMismatch)
        ));
    }
}
