//! Opening a sealed record as it streams from the node, into a file written atomically (a
//! temporary file beside the destination, mode 0600, renamed into place only after the whole
//! envelope verified) or, only when asked, to standard output.

use std::io::Write;
use std::path::{Path, PathBuf};

use ehr_storage::seal::{DataKey, Opener, SealContext};
use zeroize::Zeroizing;

use super::error::ClientError;

/// Where a decrypted record goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A file, replaced atomically once the record verified.
    File(PathBuf),
    /// Standard output (`-o -`): verified segments are written as they arrive.
    Stdout,
}

impl Output {
    /// `-` is standard output, anything else a file.
    pub fn from_arg(arg: &Path) -> Output {
        if arg.as_os_str() == "-" {
            Output::Stdout
        } else {
            Output::File(arg.to_owned())
        }
    }
}

enum Sink {
    File(tempfile::NamedTempFile, PathBuf),
    Stdout(std::io::Stdout),
}

impl Sink {
    fn open(out: &Output) -> Result<Sink, ClientError> {
        match out {
            Output::Stdout => Ok(Sink::Stdout(std::io::stdout())),
            Output::File(path) => {
                let dir = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                    _ => PathBuf::from("."),
                };
                let mut b = tempfile::Builder::new();
                b.prefix(".ehr-get-");
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt as _;
                    b.permissions(std::fs::Permissions::from_mode(0o600));
                }
                let tmp = b.tempfile_in(&dir).map_err(|e| ClientError::io(&dir, e))?;
                Ok(Sink::File(tmp, path.clone()))
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match self {
            Sink::File(f, _) => f.write_all(bytes).map_err(|e| ClientError::io(f.path(), e)),
            Sink::Stdout(s) => s
                .lock()
                .write_all(bytes)
                .map_err(|e| ClientError::io("<stdout>", e)),
        }
    }

    fn commit(self) -> Result<(), ClientError> {
        match self {
            Sink::File(f, path) => {
                f.as_file()
                    .sync_all()
                    .map_err(|e| ClientError::io(f.path(), e))?;
                f.persist(&path)
                    .map_err(|e| ClientError::io(&path, e.error))?;
                Ok(())
            }
            Sink::Stdout(s) => s.lock().flush().map_err(|e| ClientError::io("<stdout>", e)),
        }
    }
}

/// Opens the sealed bytes `chunks` yields with `key` and `ctx` into `out`, calling `progress`
/// with the sealed bytes consumed so far. Returns the plaintext length. On any failure a file
/// destination is left untouched (the temporary file is removed).
pub async fn open_stream<S, E>(
    mut chunks: S,
    key: &DataKey,
    ctx: &SealContext,
    out: &Output,
    mut progress: impl FnMut(u64),
) -> Result<u64, ClientError>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    use futures::StreamExt as _;
    let mut opener = Opener::new(key, ctx)
        .map_err(|e| ClientError::crypto("opening the record", e.to_string()))?;
    let mut sink = Sink::open(out)?;
    let mut plain = Zeroizing::new(Vec::with_capacity(512 * 1024));
    let (mut sealed_len, mut plain_len) = (0u64, 0u64);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ClientError::Network {
            url: "record stream".into(),
            reason: e.to_string(),
        })?;
        sealed_len += chunk.len() as u64;
        plain.clear();
        opener
            .update(&chunk, &mut plain)
            .map_err(|e| ClientError::crypto("opening the record", e.to_string()))?;
        sink.write(&plain)?;
        plain_len += plain.len() as u64;
        progress(sealed_len);
    }
    plain.clear();
    opener
        .finish(&mut plain)
        .map_err(|e| ClientError::crypto("opening the record", e.to_string()))?;
    sink.write(&plain)?;
    plain_len += plain.len() as u64;
    sink.commit()?;
    Ok(plain_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    fn chunks(data: &[u8], size: usize) -> Vec<Result<bytes::Bytes, String>> {
        data.chunks(size)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect()
    }

    #[tokio::test]
    async fn writes_the_plaintext_atomically_and_only_when_it_verified() {
        let dir = tempfile::tempdir().unwrap();
        let key = DataKey::generate().unwrap();
        let ctx = SealContext::new(vec![1; 32]);
        let plain: Vec<u8> = (0..600_000u32).map(|i| (i * 7) as u8).collect();
        let sealed = ehr_storage::seal::seal(&key, &ctx, &plain).unwrap();
        let dest = dir.path().join("out.bin");

        let mut seen = 0;
        let n = open_stream(
            stream::iter(chunks(&sealed, 10_000)),
            &key,
            &ctx,
            &Output::File(dest.clone()),
            |s| seen = s,
        )
        .await
        .unwrap();
        assert_eq!(n, plain.len() as u64);
        assert_eq!(seen, sealed.len() as u64);
        assert_eq!(std::fs::read(&dest).unwrap(), plain);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }

        // Truncated, tampered, wrong context: an error and the earlier file stays as it was.
        let mut tampered = sealed.clone();
        tampered[400_000] ^= 1;
        let cases: Vec<(Vec<u8>, SealContext)> = vec![
            (sealed[..sealed.len() - 10].to_vec(), ctx.clone()),
            (sealed[..300_000].to_vec(), ctx.clone()),
            (tampered, ctx.clone()),
            (sealed.clone(), SealContext::new(vec![2; 32])),
        ];
        for (bytes, c) in cases {
            let err = open_stream(
                stream::iter(chunks(&bytes, 65_536)),
                &key,
                &c,
                &Output::File(dest.clone()),
                |_| {},
            )
            .await
            .unwrap_err();
            assert_eq!(err.exit_code(), 3, "{err}");
            assert_eq!(std::fs::read(&dest).unwrap(), plain);
        }
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);

        // A broken stream is a network error.
        let broken: Vec<Result<bytes::Bytes, String>> = vec![
            Ok(bytes::Bytes::copy_from_slice(&sealed[..1000])),
            Err("connection reset".into()),
        ];
        let err = open_stream(
            stream::iter(broken),
            &key,
            &ctx,
            &Output::File(dir.path().join("x")),
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ClientError::Network { .. }));
        assert!(!dir.path().join("x").exists());
    }
}
