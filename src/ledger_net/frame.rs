//! Length-prefixed frames: a big-endian `u32` length, then that many bytes.
//!
//! [`read_frame`] and [`write_frame`] are the raw layer (used by the handshake). After the
//! handshake, [`read_typed`] and [`write_typed`] put a one-byte [`Kind`] first in the payload,
//! so a connection can carry keepalives next to messages.
//!
//! A frame that announces more than the configured maximum (or zero bytes) is refused before
//! anything is allocated for it; the caller drops the connection. The payload buffer grows with
//! the bytes that actually arrive, so a peer announcing a large frame and then stalling cannot
//! make this node reserve the whole announced size.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::NetError;

/// Bytes of the length prefix.
pub const PREFIX_LEN: usize = 4;

/// Largest chunk reserved at once while reading a payload.
const READ_CHUNK: usize = 64 * 1024;

/// Reads one frame of at most `max` bytes. `Ok(None)` means the stream ended cleanly between
/// frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: u32,
) -> Result<Option<Vec<u8>>, NetError> {
    let mut prefix = [0u8; PREFIX_LEN];
    let mut got = 0;
    while got < PREFIX_LEN {
        let n = reader.read(&mut prefix[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(NetError::Truncated {
                got,
                want: PREFIX_LEN,
            });
        }
        got += n;
    }
    let len = u32::from_be_bytes(prefix);
    if len == 0 {
        return Err(NetError::EmptyFrame);
    }
    if len > max {
        return Err(NetError::FrameTooLarge { len, max });
    }
    let want = len as usize;
    let mut buf = Vec::with_capacity(want.min(READ_CHUNK));
    while buf.len() < want {
        let start = buf.len();
        let step = (want - start).min(READ_CHUNK);
        buf.resize(start + step, 0);
        let mut filled = start;
        while filled < start + step {
            let n = reader.read(&mut buf[filled..start + step]).await?;
            if n == 0 {
                return Err(NetError::Truncated { got: filled, want });
            }
            filled += n;
        }
    }
    Ok(Some(buf))
}

/// Writes one frame (prefix and payload) without flushing. Refuses payloads over `max` or empty
/// ones, so this node never sends what its peers would refuse.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    payload: &[u8],
    max: u32,
) -> Result<(), NetError> {
    if payload.is_empty() {
        return Err(NetError::EmptyFrame);
    }
    let len =
        u32::try_from(payload.len()).map_err(|_| NetError::FrameTooLarge { len: u32::MAX, max })?;
    if len > max {
        return Err(NetError::FrameTooLarge { len, max });
    }
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(payload).await?;
    Ok(())
}

/// What a post-handshake frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An opaque message for the replica.
    Message = 1,
    /// Nothing: proves the sender and the path are alive.
    Keepalive = 2,
}

/// Reads one typed frame: the kind and the body (empty for a keepalive). The body of a
/// message is never empty. `max` bounds the body.
pub async fn read_typed<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: u32,
) -> Result<Option<(Kind, Vec<u8>)>, NetError> {
    let Some(mut payload) = read_frame(reader, max.saturating_add(1)).await? else {
        return Ok(None);
    };
    match payload.first() {
        Some(1) if payload.len() > 1 => {
            payload.remove(0);
            Ok(Some((Kind::Message, payload)))
        }
        Some(2) if payload.len() == 1 => Ok(Some((Kind::Keepalive, Vec::new()))),
        Some(1) => Err(NetError::EmptyFrame),
        Some(&k) => Err(NetError::BadFrameKind(k)),
        None => Err(NetError::EmptyFrame),
    }
}

/// Writes one typed frame without flushing (see [`read_typed`]).
pub async fn write_typed<W: AsyncWrite + Unpin>(
    writer: &mut W,
    kind: Kind,
    body: &[u8],
    max: u32,
) -> Result<(), NetError> {
    match kind {
        Kind::Message if body.is_empty() => return Err(NetError::EmptyFrame),
        Kind::Keepalive if !body.is_empty() => return Err(NetError::BadFrameKind(kind as u8)),
        _ => {}
    }
    let len =
        u32::try_from(body.len())
            .ok()
            .filter(|l| *l <= max)
            .ok_or(NetError::FrameTooLarge {
                len: u32::try_from(body.len()).unwrap_or(u32::MAX),
                max,
            })?;
    writer.write_all(&(len + 1).to_be_bytes()).await?;
    writer.write_all(&[kind as u8]).await?;
    writer.write_all(body).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn roundtrip(payloads: &[Vec<u8>], max: u32) -> Vec<Vec<u8>> {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let owned: Vec<Vec<u8>> = payloads.to_vec();
        let writer = tokio::spawn(async move {
            for p in &owned {
                write_frame(&mut a, p, max).await.unwrap();
            }
            a.flush().await.unwrap();
        });
        let mut out = Vec::new();
        while let Some(f) = read_frame(&mut b, max).await.unwrap() {
            out.push(f);
        }
        writer.await.unwrap();
        out
    }

    #[tokio::test]
    async fn frames_round_trip_in_order() {
        let payloads = vec![vec![1u8], vec![7u8; 100_000], b"hello".to_vec()];
        assert_eq!(roundtrip(&payloads, 200_000).await, payloads);
    }

    #[tokio::test]
    async fn oversized_announcement_is_refused_before_reading() {
        let mut bytes = (1_000_001u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 16]);
        let err = read_frame(&mut bytes.as_slice(), 1_000_000)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                NetError::FrameTooLarge {
                    len: 1_000_001,
                    max: 1_000_000
                }
            ),
            "{err}"
        );
        let huge = u32::MAX.to_be_bytes();
        let err = read_frame(&mut huge.as_slice(), 1_000_000)
            .await
            .unwrap_err();
        assert!(matches!(err, NetError::FrameTooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn empty_and_truncated_frames_are_errors() {
        let zero = 0u32.to_be_bytes();
        assert!(matches!(
            read_frame(&mut zero.as_slice(), 10).await,
            Err(NetError::EmptyFrame)
        ));
        let short_prefix = [0u8, 0];
        assert!(matches!(
            read_frame(&mut short_prefix.as_slice(), 10).await,
            Err(NetError::Truncated { got: 2, want: 4 })
        ));
        let mut short_body = 8u32.to_be_bytes().to_vec();
        short_body.extend_from_slice(b"abc");
        assert!(matches!(
            read_frame(&mut short_body.as_slice(), 10).await,
            Err(NetError::Truncated { got: 3, want: 8 })
        ));
        let clean: [u8; 0] = [];
        assert!(
            read_frame(&mut clean.as_slice(), 10)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn writer_refuses_what_readers_would_refuse() {
        let mut sink = Vec::new();
        assert!(matches!(
            write_frame(&mut sink, &[], 10).await,
            Err(NetError::EmptyFrame)
        ));
        assert!(matches!(
            write_frame(&mut sink, &[0u8; 11], 10).await,
            Err(NetError::FrameTooLarge { len: 11, max: 10 })
        ));
        assert!(sink.is_empty(), "nothing written for a refused frame");
    }

    #[tokio::test]
    async fn typed_frames_round_trip_and_refuse_unknown_kinds() {
        let mut buf = Vec::new();
        write_typed(&mut buf, Kind::Message, b"abc", 3)
            .await
            .unwrap();
        write_typed(&mut buf, Kind::Keepalive, b"", 3)
            .await
            .unwrap();
        assert!(
            write_typed(&mut buf, Kind::Message, b"abcd", 3)
                .await
                .is_err()
        );
        assert!(write_typed(&mut buf, Kind::Message, b"", 3).await.is_err());
        let mut r = buf.as_slice();
        assert_eq!(
            read_typed(&mut r, 3).await.unwrap(),
            Some((Kind::Message, b"abc".to_vec()))
        );
        assert_eq!(
            read_typed(&mut r, 3).await.unwrap(),
            Some((Kind::Keepalive, vec![]))
        );
        assert_eq!(read_typed(&mut r, 3).await.unwrap(), None);

        let mut bad = 2u32.to_be_bytes().to_vec();
        bad.extend_from_slice(&[9, 0]);
        assert!(matches!(
            read_typed(&mut bad.as_slice(), 3).await,
            Err(NetError::BadFrameKind(9))
        ));
        let mut empty_msg = 1u32.to_be_bytes().to_vec();
        empty_msg.push(1);
        assert!(matches!(
            read_typed(&mut empty_msg.as_slice(), 3).await,
            Err(NetError::EmptyFrame)
        ));
        let mut fat_keepalive = 2u32.to_be_bytes().to_vec();
        fat_keepalive.extend_from_slice(&[2, 0]);
        assert!(read_typed(&mut fat_keepalive.as_slice(), 3).await.is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let mut r = bytes.as_slice();
                // Whatever the bytes, reading ends in frames, a clean end or an error.
                for _ in 0..64 {
                    match read_frame(&mut r, 16).await {
                        Ok(Some(f)) => assert!(!f.is_empty() && f.len() <= 16),
                        Ok(None) | Err(_) => break,
                    }
                }
                let mut r = bytes.as_slice();
                for _ in 0..64 {
                    match read_typed(&mut r, 16).await {
                        Ok(Some((Kind::Message, f))) => assert!(!f.is_empty() && f.len() <= 16),
                        Ok(Some((Kind::Keepalive, f))) => assert!(f.is_empty()),
                        Ok(None) | Err(_) => break,
                    }
                }
            });
        }
    }
}
