//! The node's configuration file (`ehr node --config FILE`, TOML) and its secret key files.
//!
//! ```toml
//! chain_id = "ehr-dev"
//! replica_id = 0
//! data_dir = "data"                 # ledger/, blockstore/, index/, node/ below it
//! consortium = "../consortium.json" # the public consortium file
//! secrets_dir = "secrets"           # validator.key, hospital.key, abe-share.key, ipfs.key, pnet.key
//! [http]
//! listen = "0.0.0.0:8080"
//! max_body_bytes = 33554432
//! request_timeout_secs = 60
//! [ledger]
//! listen = "0.0.0.0:7000"
//! peers = ["ehr-0.ehr-peers:7000", "ehr-1.ehr-peers:7000"]
//! view_change_timeout_ms = 2000
//! [ipfs]
//! listen = ["/ip4/0.0.0.0/tcp/4001"]
//! bootstrap = ["/dns4/ehr-1.ehr-peers/tcp/4001/p2p/12D3KooW..."]
//! [hospital]
//! label = "hospital-0"
//! default_policy = "role:researcher AND irb:study-42"
//! ```
//!
//! Relative paths are relative to the directory of the configuration file. Unknown keys are
//! refused (a typo must not silently fall back to a default).
//!
//! Key files hold one line `ehr-<kind>-key-v1:<hex>` and must not be readable by group or others
//! (mode 0600); the node refuses them otherwise, before reading a byte.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ehr_search::policy::Policy;
use ehr_storage::blockstore::Multiaddr;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Default largest request body: 32 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 << 20;
/// Default request timeout.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 60;
/// Default PBFT view-change timeout.
pub const DEFAULT_VIEW_CHANGE_TIMEOUT_MS: u64 = 2000;
/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest key file read (an ABE master-key share is well under this).
const MAX_KEY_FILE_BYTES: u64 = 64 << 10;

/// What went wrong with the configuration or a key file. Messages name the key or file and the
/// reason; they never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not have the expected shape.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (with the key and line).
        reason: String,
    },
    /// A key has a value that is not allowed.
    #[error("{key}: {reason}")]
    Invalid {
        /// The configuration key, such as `ledger.peers[2]`.
        key: String,
        /// Why.
        reason: String,
    },
    /// A key file is readable by group or others.
    #[error(
        "{path}: key file is readable by group or others (mode {mode:o}); fix with `chmod 600 {path}`"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file's content is not `ehr-<kind>-key-v1:<hex>`.
    #[error("{path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The `[http]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the API, `/healthz`, `/readyz`, `/metrics`, `/openapi.json`.
    pub listen: String,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Requests taking longer are answered 503 (or 504) and cancelled.
    #[serde(default = "default_timeout")]
    pub request_timeout_secs: u64,
}

/// The `[ledger]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// The PBFT peer port.
    pub listen: String,
    /// Every replica's `host:port`, in replica-id order (this node's own entry included).
    pub peers: Vec<String>,
    /// Base view-change timeout.
    #[serde(default = "default_vc")]
    pub view_change_timeout_ms: u64,
}

/// The `[ipfs]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpfsConfig {
    /// Swarm listen multiaddrs.
    #[serde(default)]
    pub listen: Vec<String>,
    /// Peers dialled at start (`.../p2p/<peer id>`).
    #[serde(default)]
    pub bootstrap: Vec<String>,
}

/// The `[hospital]` table: the hospital this node uploads for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HospitalConfig {
    /// The hospital's public label.
    pub label: String,
    /// The policy of the hospital's default capsule.
    pub default_policy: String,
}

/// A node's configuration, as read from its TOML file (paths already resolved).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The chain id (must match the consortium file).
    pub chain_id: String,
    /// This node's replica id (index into `ledger.peers` and the consortium's validators).
    pub replica_id: u32,
    /// Where the node keeps its state.
    pub data_dir: PathBuf,
    /// The public consortium file.
    pub consortium: PathBuf,
    /// The directory of the key files.
    pub secrets_dir: PathBuf,
    /// HTTP settings.
    pub http: HttpConfig,
    /// Ledger peer settings.
    pub ledger: LedgerConfig,
    /// IPFS swarm settings.
    #[serde(default)]
    pub ipfs: IpfsConfig,
    /// The node's hospital.
    pub hospital: HospitalConfig,
}

fn default_max_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_timeout() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_SECS
}
fn default_vc() -> u64 {
    DEFAULT_VIEW_CHANGE_TIMEOUT_MS
}

/// Checks a `host:port` address (a name or an IP, and a port number).
fn check_host_port(key: &str, addr: &str) -> Result<(), ConfigError> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(ConfigError::invalid(key, "must be host:port"));
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::invalid(key, "the host is empty or has spaces"));
    }
    port.parse::<u16>()
        .map_err(|_| ConfigError::invalid(key, "the port is not a number in 0..=65535"))?;
    Ok(())
}

impl NodeConfig {
    /// Reads, parses and validates the file; relative paths become relative to its directory.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        use std::io::Read as _;
        let io = |source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(io)?
            .take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                reason: format!("larger than {MAX_CONFIG_BYTES} bytes"),
            });
        }
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base).map_err(|e| match e {
            ConfigError::Parse { reason, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                reason,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text; relative paths are joined to `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<NodeConfig, ConfigError> {
        let mut cfg: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            reason: e.to_string(),
        })?;
        for p in [&mut cfg.data_dir, &mut cfg.consortium, &mut cfg.secrets_dir] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The TOML text of this configuration.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("invariant: a NodeConfig serialises to TOML")
    }

    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.chain_id.is_empty() || self.chain_id.len() > ehr_ledger::tx::MAX_CHAIN_ID {
            return Err(ConfigError::invalid(
                "chain_id",
                format!("must be 1 to {} bytes", ehr_ledger::tx::MAX_CHAIN_ID),
            ));
        }
        if self
            .chain_id
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(ConfigError::invalid(
                "chain_id",
                "must not contain spaces or control characters",
            ));
        }
        for (p, key) in [
            (&self.data_dir, "data_dir"),
            (&self.consortium, "consortium"),
            (&self.secrets_dir, "secrets_dir"),
        ] {
            if p.as_os_str().is_empty() {
                return Err(ConfigError::invalid(key, "must not be empty"));
            }
        }
        self.http
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| ConfigError::invalid("http.listen", "must be ip:port"))?;
        if self.http.max_body_bytes == 0 || self.http.max_body_bytes > (1 << 30) {
            return Err(ConfigError::invalid(
                "http.max_body_bytes",
                "must be between 1 and 1073741824",
            ));
        }
        if self.http.request_timeout_secs == 0 || self.http.request_timeout_secs > 3600 {
            return Err(ConfigError::invalid(
                "http.request_timeout_secs",
                "must be between 1 and 3600",
            ));
        }
        self.ledger
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| ConfigError::invalid("ledger.listen", "must be ip:port"))?;
        let n = self.ledger.peers.len();
        if n < 4 && n != 1 {
            return Err(ConfigError::invalid(
                "ledger.peers",
                format!("{n} replicas cannot tolerate a fault: use 1 or at least 4 (3f+1)"),
            ));
        }
        if self.replica_id as usize >= n {
            return Err(ConfigError::invalid(
                "replica_id",
                format!(
                    "{} is not an index of ledger.peers ({n} entries)",
                    self.replica_id
                ),
            ));
        }
        for (i, p) in self.ledger.peers.iter().enumerate() {
            check_host_port(&format!("ledger.peers[{i}]"), p)?;
        }
        if self.ledger.view_change_timeout_ms < 50 || self.ledger.view_change_timeout_ms > 600_000 {
            return Err(ConfigError::invalid(
                "ledger.view_change_timeout_ms",
                "must be between 50 and 600000",
            ));
        }
        for (i, a) in self.ipfs.listen.iter().enumerate() {
            a.parse::<Multiaddr>().map_err(|e| {
                ConfigError::invalid(format!("ipfs.listen[{i}]"), format!("not a multiaddr: {e}"))
            })?;
        }
        for (i, a) in self.ipfs.bootstrap.iter().enumerate() {
            let m = a.parse::<Multiaddr>().map_err(|e| {
                ConfigError::invalid(
                    format!("ipfs.bootstrap[{i}]"),
                    format!("not a multiaddr: {e}"),
                )
            })?;
            if !a.contains("/p2p/") {
                return Err(ConfigError::invalid(
                    format!("ipfs.bootstrap[{i}]"),
                    format!("{m} has no /p2p/<peer id> suffix"),
                ));
            }
        }
        if self.hospital.label.is_empty() || self.hospital.label.len() > ehr_ledger::tx::MAX_LABEL {
            return Err(ConfigError::invalid(
                "hospital.label",
                format!("must be 1 to {} bytes", ehr_ledger::tx::MAX_LABEL),
            ));
        }
        Policy::parse(&self.hospital.default_policy).map_err(|e| {
            ConfigError::invalid("hospital.default_policy", format!("not a policy: {e}"))
        })?;
        Ok(())
    }

    /// The path of a key file in `secrets_dir` (`validator`, `hospital`, `abe-share`, `ipfs`,
    /// `pnet`).
    pub fn key_path(&self, kind: &str) -> PathBuf {
        self.secrets_dir.join(format!("{kind}.key"))
    }
}

/// Writes a key file `ehr-<kind>-key-v1:<hex>` at `path` (mode 0600, created new, fsynced).
pub fn write_key_file(path: &Path, kind: &str, key: &[u8]) -> Result<(), ConfigError> {
    use std::io::Write as _;
    let io = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut line = Zeroizing::new(format!("ehr-{kind}-key-v1:"));
    line.push_str(&Zeroizing::new(hex::encode(key)));
    line.push('\n');
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(line.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(())
}

/// Reads a file that must not be readable by group or others (at most `max` bytes are read;
/// a larger file reads as `max + 1` bytes for the caller to refuse). Wiped when dropped.
pub fn read_private(path: &Path, max: u64) -> Result<Zeroizing<Vec<u8>>, ConfigError> {
    use std::io::Read as _;
    let io = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(ConfigError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let mut buf = Zeroizing::new(Vec::new());
    file.take(max + 1).read_to_end(&mut buf).map_err(io)?;
    Ok(buf)
}

/// Writes `bytes` to `path` with mode 0600 through a temporary file, a rename and a sync of the
/// directory, so a crash leaves the old file or the new one, never a torn one.
pub fn write_private_atomically(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    write_atomically(path, bytes, Some(0o600), true)
}

/// Like [`write_private_atomically`], but fails with `AlreadyExists` instead of replacing an
/// existing file (the check and the creation are one atomic link, so two writers cannot both
/// win).
pub fn write_private_new(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    write_atomically(path, bytes, Some(0o600), false)
}

/// Writes a public file (0644) the same way as [`write_private_atomically`].
pub fn write_public_atomically(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    write_atomically(path, bytes, None, true)
}

fn write_atomically(
    path: &Path,
    bytes: &[u8],
    mode: Option<u32>,
    replace: bool,
) -> Result<(), ConfigError> {
    use std::io::Write as _;
    let io = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if let Some(mode) = mode {
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    if replace {
        std::fs::rename(&tmp, path).map_err(io)?;
    } else {
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        linked.map_err(io)?;
    }
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

/// Reads a key file of `kind`; refuses files readable by group or others, and content that is
/// not exactly one `ehr-<kind>-key-v1:<hex>` line. The bytes are wiped when dropped.
pub fn read_key_file(path: &Path, kind: &str) -> Result<Zeroizing<Vec<u8>>, ConfigError> {
    let raw = read_private(path, MAX_KEY_FILE_BYTES)?;
    let bad = |reason: &str| ConfigError::KeyFile {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    if raw.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(bad("too large for a key file"));
    }
    let text = std::str::from_utf8(&raw).map_err(|_| bad("not UTF-8 text"))?;
    let prefix = format!("ehr-{kind}-key-v1:");
    let body = text
        .trim_end_matches(['\n', '\r'])
        .strip_prefix(&prefix)
        .ok_or_else(|| bad(&format!("must be one line `{prefix}<hex>`")))?;
    if body.is_empty() || body.contains(['\n', '\r']) {
        return Err(bad(&format!("must be one line `{prefix}<hex>`")));
    }
    let bytes = hex::decode(body).map_err(|_| bad("the key is not hex"))?;
    Ok(Zeroizing::new(bytes))
}

/// Reads a 32-byte key file.
pub fn read_key32(path: &Path, kind: &str) -> Result<Zeroizing<[u8; 32]>, ConfigError> {
    let bytes = read_key_file(path, kind)?;
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| ConfigError::KeyFile {
            path: path.to_path_buf(),
            reason: format!("a {kind} key is 32 bytes, this one is {}", bytes.len()),
        })?;
    Ok(Zeroizing::new(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
chain_id = "ehr-dev"
replica_id = 1
data_dir = "data"
consortium = "/etc/ehr/consortium.json"
secrets_dir = "secrets"
[http]
listen = "127.0.0.1:0"
[ledger]
listen = "127.0.0.1:7000"
peers = ["ehr-0.ehr-peers:7000", "ehr-1.ehr-peers:7000", "10.0.0.3:7000", "ehr-3:7000"]
[ipfs]
listen = ["/ip4/0.0.0.0/tcp/4001"]
bootstrap = ["/dns4/ehr-1.ehr-peers/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"]
[hospital]
label = "hospital-1"
default_policy = "role:researcher AND irb:study-42"
"#;

    #[test]
    fn good_config_parses_with_defaults_and_resolved_paths() {
        let cfg = NodeConfig::from_toml(GOOD, Path::new("/srv/node-1")).unwrap();
        assert_eq!(cfg.replica_id, 1);
        assert_eq!(cfg.data_dir, PathBuf::from("/srv/node-1/data"));
        assert_eq!(cfg.consortium, PathBuf::from("/etc/ehr/consortium.json"));
        assert_eq!(cfg.http.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(cfg.http.request_timeout_secs, 60);
        assert_eq!(cfg.ledger.view_change_timeout_ms, 2000);
        assert_eq!(
            cfg.key_path("hospital"),
            PathBuf::from("/srv/node-1/secrets/hospital.key")
        );
        let again = NodeConfig::from_toml(&cfg.to_toml(), Path::new("/x")).unwrap();
        assert_eq!(again, cfg);
    }

    #[test]
    fn errors_name_the_key_and_reason() {
        let cases: &[(&str, &str, &str)] = &[
            ("replica_id = 1", "replica_id = 4", "replica_id"),
            (
                "listen = \"127.0.0.1:0\"",
                "listen = \"nowhere\"",
                "http.listen",
            ),
            ("\"10.0.0.3:7000\"", "\"10.0.0.3\"", "ledger.peers[2]"),
            ("\"ehr-3:7000\"", "\"ehr-3:99999\"", "ledger.peers[3]"),
            ("/ip4/0.0.0.0/tcp/4001", "/ip9/x", "ipfs.listen[0]"),
            (
                "/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA",
                "",
                "ipfs.bootstrap[0]",
            ),
            ("AND irb:study-42", "AND AND", "hospital.default_policy"),
            ("chain_id = \"ehr-dev\"", "chain_id = \"\"", "chain_id"),
        ];
        for (from, to, key) in cases {
            assert!(GOOD.contains(from), "{from}");
            let text = GOOD.replacen(from, to, 1);
            let err = NodeConfig::from_toml(&text, Path::new("/")).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with(key), "{key}: {msg}");
        }
        // Unknown keys and wrong types are refused by the parser, naming the key.
        let err = NodeConfig::from_toml(
            &GOOD.replace("[hospital]", "[hospital]\nlabl = 1"),
            Path::new("/"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("labl"), "{err}");
        let err = NodeConfig::from_toml(
            &GOOD.replace("replica_id = 1", "replica_id = \"one\""),
            Path::new("/"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("replica_id"), "{err}");
        // Three replicas tolerate nothing.
        let three = GOOD.replace(", \"ehr-3:7000\"", "");
        assert!(
            NodeConfig::from_toml(&three, Path::new("/"))
                .unwrap_err()
                .to_string()
                .starts_with("ledger.peers")
        );
    }

    #[test]
    fn key_files_round_trip_and_are_refused_when_exposed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hospital.key");
        write_key_file(&p, "hospital", &[7u8; 32]).unwrap();
        assert_eq!(*read_key32(&p, "hospital").unwrap(), [7u8; 32]);
        // Wrong kind.
        assert!(
            read_key32(&p, "validator")
                .unwrap_err()
                .to_string()
                .contains("ehr-validator-key-v1")
        );
        // Not created twice.
        assert!(write_key_file(&p, "hospital", &[1u8; 32]).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = read_key32(&p, "hospital").unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{err}");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        // Garbage and wrong lengths.
        let q = dir.path().join("bad.key");
        for (content, needle) in [
            ("ehr-hospital-key-v1:zz\n", "not hex"),
            ("ehr-hospital-key-v1:0011\n", "32 bytes"),
            ("hospital 00\n", "one line"),
            (
                "ehr-hospital-key-v1:00\nehr-hospital-key-v1:00\n",
                "one line",
            ),
        ] {
            let _ = std::fs::remove_file(&q);
            {
                use std::io::Write as _;
                let mut o = std::fs::OpenOptions::new();
                o.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
                o.open(&q).unwrap().write_all(content.as_bytes()).unwrap();
            }
            let err = read_key32(&q, "hospital").unwrap_err().to_string();
            assert!(err.contains(needle), "{content:?}: {err}");
        }
    }
}
