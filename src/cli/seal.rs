//! `ehr seal` and `ehr open`: seal a local file into an envelope under a data key, or open one.
//!
//! # Key file format
//! One line of ASCII: `ehr-data-key-v1:` followed by the 32-byte data key as 64 hexadecimal
//! digits, and a newline. `ehr seal` creates it with mode 0600 and never overwrites an existing
//! file. Keys are zeroized after use and never printed.
//!
//! # Output
//! Output is written to a temporary file beside the destination and renamed into place only
//! once everything verified, so a failure never leaves a half-written output file.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ehr_storage::seal::{DATA_KEY_LEN, DataKey, SealContext, open_reader, seal_reader};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use zeroize::Zeroizing;

/// First bytes of a key file; the version suffix allows other encodings later.
const KEY_FILE_PREFIX: &str = "ehr-data-key-v1:";

/// Files at least this large get a progress bar (when stderr is a terminal).
const PROGRESS_MIN_LEN: u64 = 16 << 20;

/// Arguments of `ehr seal`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Examples:
  ehr seal --key-out record.key --context policy-7 record.json -o record.sealed
  ehr open --key record.key --context policy-7 record.sealed -o record.json

The envelope is AES-256-GCM in 256 KiB segments (aligned with IPFS blocks), committed to its key
and bound to the context; opening with another key or context fails and writes nothing.
Key file format: one line `ehr-data-key-v1:` followed by 64 hex digits.")]
pub struct SealArgs {
    /// Data key file to seal under (`ehr-data-key-v1:` + 64 hex digits).
    /// Without it a fresh random key is generated and written to --key-out.
    #[arg(long, value_name = "FILE", conflicts_with = "key_out")]
    pub key: Option<PathBuf>,
    /// Where to write a newly generated key (created with mode 0600; never overwrites a file).
    /// Required when --key is not given.
    #[arg(long, value_name = "FILE", required_unless_present = "key")]
    pub key_out: Option<PathBuf>,
    /// Policy or capsule id to bind the envelope to; `ehr open` must be given the same one.
    #[arg(long, value_name = "ID", default_value = "")]
    pub context: String,
    /// The file to seal (`-` for standard input).
    #[arg(value_name = "INPUT")]
    pub input: PathBuf,
    /// Where to write the envelope (`-` for standard output). Default: INPUT with `.sealed`
    /// appended (standard output when INPUT is `-`).
    #[arg(short, long, value_name = "OUTPUT")]
    pub output: Option<PathBuf>,
}

/// Arguments of `ehr open`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
The plaintext is released only segment by segment after each one authenticated. With an output
file, nothing is written unless the whole envelope verified; on standard output, a failure
after some segments leaves only verified bytes and a non-zero exit status.")]
pub struct OpenArgs {
    /// Data key file (`ehr-data-key-v1:` + 64 hex digits).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Policy or capsule id the envelope was sealed for.
    #[arg(long, value_name = "ID", default_value = "")]
    pub context: String,
    /// The sealed file to open (`-` for standard input).
    #[arg(value_name = "INPUT")]
    pub input: PathBuf,
    /// Where to write the plaintext (created with mode 0600). Default or `-`: standard output.
    #[arg(short, long, value_name = "OUTPUT")]
    pub output: Option<PathBuf>,
}

/// Runs `ehr seal`.
pub fn run_seal(args: SealArgs) -> anyhow::Result<()> {
    let (input, len) = open_input(&args.input)?;
    let output = match &args.output {
        Some(path) => Destination::from_arg(path),
        None if is_dash(&args.input) => Destination::Stdout,
        None => {
            let mut name = args.input.clone().into_os_string();
            name.push(".sealed");
            Destination::File(PathBuf::from(name))
        }
    };
    let ctx = SealContext::new(args.context.into_bytes());

    let (key, key_guard) = match (&args.key, &args.key_out) {
        (Some(path), _) => (read_key_file(path)?, None),
        (None, Some(out)) => {
            let key = DataKey::generate().context("generating a data key")?;
            let guard = write_key_file(out, &key)?;
            (key, Some(guard))
        }
        (None, None) => bail!("either --key FILE or --key-out FILE is required"),
    };

    let progress = progress_bar(len, "sealing");
    let reader =
        seal_reader(&key, &ctx, progress.wrap_read(input)).context("starting the envelope")?;
    let written = output
        .write_from(reader)
        .with_context(|| format!("sealing {}", args.input.display()))?;
    progress.finish_and_clear();
    if let Some(guard) = key_guard {
        guard.keep();
    }
    eprintln!(
        "sealed {} into {} ({written} bytes)",
        args.input.display(),
        output.describe()
    );
    if let Some(out) = &args.key_out {
        eprintln!("data key written to {}", out.display());
    }
    Ok(())
}

/// Runs `ehr open`.
pub fn run_open(args: OpenArgs) -> anyhow::Result<()> {
    let key = read_key_file(&args.key)?;
    let (input, len) = open_input(&args.input)?;
    let ctx = SealContext::new(args.context.into_bytes());
    let output = match &args.output {
        Some(path) => Destination::from_arg(path),
        None => Destination::Stdout,
    };
    let progress = progress_bar(len, "opening");
    let reader = open_reader(&key, &ctx, progress.wrap_read(input)).context("starting to open")?;
    let written = output
        .write_from(reader)
        .with_context(|| format!("opening {}", args.input.display()))?;
    progress.finish_and_clear();
    if let Destination::File(path) = &output {
        eprintln!(
            "opened {} into {} ({written} bytes)",
            args.input.display(),
            path.display()
        );
    }
    Ok(())
}

fn is_dash(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// The input as a reader, with its length when it is a regular file.
fn open_input(path: &Path) -> anyhow::Result<(Box<dyn Read>, Option<u64>)> {
    if is_dash(path) {
        return Ok((Box::new(io::stdin().lock()), None));
    }
    let file = File::open(path).with_context(|| format!("opening input {}", path.display()))?;
    let len = file
        .metadata()
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    Ok((Box::new(file), len))
}

fn progress_bar(len: Option<u64>, what: &'static str) -> ProgressBar {
    match len {
        Some(len) if len >= PROGRESS_MIN_LEN && io::stderr().is_terminal() => {
            let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            )
            .expect("the progress template is valid")
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(what);
            bar
        }
        _ => ProgressBar::hidden(),
    }
}

/// Where output goes.
#[derive(Debug)]
enum Destination {
    Stdout,
    File(PathBuf),
}

impl Destination {
    fn from_arg(path: &Path) -> Self {
        if is_dash(path) {
            Self::Stdout
        } else {
            Self::File(path.to_path_buf())
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Stdout => "standard output".into(),
            Self::File(path) => path.display().to_string(),
        }
    }

    /// Copies `reader` to the destination; a file appears only if the copy succeeded.
    fn write_from(&self, reader: impl Read) -> anyhow::Result<u64> {
        match self {
            Self::Stdout => {
                let mut out = io::stdout().lock();
                let n = copy(reader, &mut out)?;
                out.flush().context("flushing standard output")?;
                Ok(n)
            }
            Self::File(path) => {
                let dir = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                // Created with mode 0600; deleted on drop unless persisted.
                let mut tmp = tempfile::Builder::new()
                    .prefix(".ehr-partial-")
                    .tempfile_in(dir)
                    .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
                let n = copy(reader, tmp.as_file_mut())?;
                tmp.as_file()
                    .sync_all()
                    .with_context(|| format!("syncing output for {}", path.display()))?;
                tmp.persist(path)
                    .with_context(|| format!("moving output into place at {}", path.display()))?;
                Ok(n)
            }
        }
    }
}

/// Copies in 256 KiB steps (one segment), zeroizing the buffer afterwards.
fn copy(mut reader: impl Read, out: &mut impl Write) -> anyhow::Result<u64> {
    let mut buf = Zeroizing::new(vec![0u8; 256 * 1024]);
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The envelope's error (wrong key, tampering, ...) is in `e` and shown by `{:#}`.
            Err(e) => return Err(e.into()),
        };
        out.write_all(&buf[..n]).context("writing output")?;
        total += n as u64;
    }
}

/// Reads and parses a key file; the text is zeroized after parsing.
fn read_key_file(path: &Path) -> anyhow::Result<DataKey> {
    let mut file =
        File::open(path).with_context(|| format!("opening key file {}", path.display()))?;
    warn_if_shared(path, &file);
    let mut text = Zeroizing::new(String::new());
    // A valid key file is under 100 bytes; do not read arbitrarily large files.
    (&mut file)
        .take(1024)
        .read_to_string(&mut text)
        .with_context(|| format!("reading key file {}", path.display()))?;
    parse_key(&text).with_context(|| format!("key file {}", path.display()))
}

fn parse_key(text: &str) -> anyhow::Result<DataKey> {
    let Some(hex_part) = text.trim_end().strip_prefix(KEY_FILE_PREFIX) else {
        bail!("not a data key file: expected a line starting with `{KEY_FILE_PREFIX}`");
    };
    if hex_part.len() != 2 * DATA_KEY_LEN {
        bail!(
            "expected {} hex digits after `{KEY_FILE_PREFIX}`, found {}",
            2 * DATA_KEY_LEN,
            hex_part.len()
        );
    }
    let mut bytes = Zeroizing::new([0u8; DATA_KEY_LEN]);
    hex::decode_to_slice(hex_part, bytes.as_mut())
        .map_err(|_| anyhow::anyhow!("the key is not valid hexadecimal"))?;
    Ok(DataKey::from_bytes(*bytes))
}

fn format_key(key: &DataKey) -> Zeroizing<String> {
    let mut text = Zeroizing::new(String::with_capacity(KEY_FILE_PREFIX.len() + 65));
    text.push_str(KEY_FILE_PREFIX);
    let hex = Zeroizing::new(hex::encode(key.expose_secret()));
    text.push_str(&hex);
    text.push('\n');
    text
}

/// Removes a newly written key file unless [`KeyFileGuard::keep`] is called.
#[derive(Debug)]
struct KeyFileGuard {
    path: PathBuf,
    keep: bool,
}

impl KeyFileGuard {
    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for KeyFileGuard {
    fn drop(&mut self) {
        if !self.keep {
            // Sealing failed: a key for an envelope that was never written is useless.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Creates `path` with mode 0600 (failing if it exists) and writes the key to it.
fn write_key_file(path: &Path, key: &DataKey) -> anyhow::Result<KeyFileGuard> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| {
        format!(
            "creating key file {} (an existing file is never overwritten)",
            path.display()
        )
    })?;
    let guard = KeyFileGuard {
        path: path.to_path_buf(),
        keep: false,
    };
    file.write_all(format_key(key).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing key file {}", path.display()))?;
    Ok(guard)
}

#[cfg(unix)]
fn warn_if_shared(path: &Path, file: &File) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = file.metadata()
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "warning: key file {} is accessible to other users (chmod 600 it)",
            path.display()
        );
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_path: &Path, _file: &File) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_round_trips() {
        let key = DataKey::from_bytes([0xA5; 32]);
        let text = format_key(&key);
        assert!(text.starts_with("ehr-data-key-v1:a5a5"));
        assert_eq!(text.len(), KEY_FILE_PREFIX.len() + 64 + 1);
        assert_eq!(parse_key(&text).unwrap().expose_secret(), &[0xA5; 32]);
    }

    #[test]
    fn bad_key_text_is_explained_without_echoing_it() {
        let cases = [
            ("", "not a data key file"),
            ("ehr-data-key-v2:00", "not a data key file"),
            ("ehr-data-key-v1:abcd", "expected 64 hex digits"),
        ];
        for (text, want) in cases {
            let err = parse_key(text).expect_err("rejected").to_string();
            assert!(err.contains(want), "{text:?} -> {err}");
        }
        let not_hex = format!("{KEY_FILE_PREFIX}{}", "zz".repeat(32));
        let err = parse_key(&not_hex).expect_err("rejected").to_string();
        assert!(err.contains("hexadecimal") && !err.contains("zz"), "{err}");
    }

    #[test]
    fn key_file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = DataKey::from_bytes([1; 32]);
        write_key_file(&path, &key).unwrap().keep();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(write_key_file(&path, &DataKey::from_bytes([2; 32])).is_err());
        assert_eq!(read_key_file(&path).unwrap().expose_secret(), &[1; 32]);
        // A dropped guard removes the file.
        let other = dir.path().join("k2");
        drop(write_key_file(&other, &key).unwrap());
        assert!(!other.exists());
    }
}
