//! Errors of the client side, and how each maps to the CLI's exit code.

use std::path::PathBuf;

use super::problem::Problem;

/// What went wrong on the client side of a request or a local file.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A secret file is readable by other users.
    #[error(
        "{path} is readable by other users (mode {mode:03o}); it holds secret keys: run `chmod 600 {path}`"
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A local file (identity, consortium) is malformed.
    #[error("{path}: field `{field}`: {reason}")]
    FileFormat {
        /// The file.
        path: PathBuf,
        /// The offending field (or `-` for the whole file).
        field: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A command-line argument or input value is invalid.
    #[error("{field}: {reason}")]
    Input {
        /// The argument or value.
        field: String,
        /// Why it is rejected.
        reason: String,
    },
    /// The node refused the request (HTTP 4xx).
    #[error("the node refused the request: {0}")]
    Refused(Box<Problem>),
    /// The node failed to answer the request (HTTP 5xx).
    #[error("the node failed: {0}")]
    Server(Box<Problem>),
    /// The node could not be reached or the connection broke.
    #[error("cannot reach the node at {url}: {reason}")]
    Network {
        /// The URL requested (without query).
        url: String,
        /// The transport's error.
        reason: String,
    },
    /// The node answered with something that does not parse or does not check out.
    #[error("the node's answer is invalid: {what}: {reason}")]
    BadResponse {
        /// What was being read.
        what: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A cryptographic check or decryption failed (wrong key, tampered data, invalid proof).
    #[error("{what}: {reason}")]
    Crypto {
        /// What was being checked or decrypted.
        what: String,
        /// Why it failed.
        reason: String,
    },
}

impl ClientError {
    /// The CLI exit code: 1 for usage or local input, 2 when the node refused the request (4xx),
    /// 3 for server or network failures and for answers that fail verification.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Io { .. }
            | ClientError::InsecurePermissions { .. }
            | ClientError::FileFormat { .. }
            | ClientError::Input { .. } => 1,
            ClientError::Refused(_) => 2,
            ClientError::Server(_)
            | ClientError::Network { .. }
            | ClientError::BadResponse { .. }
            | ClientError::Crypto { .. } => 3,
        }
    }

    /// An input error for `field`.
    pub fn input(field: impl Into<String>, reason: impl Into<String>) -> ClientError {
        ClientError::Input {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A malformed answer from the node.
    pub fn bad_response(what: impl Into<String>, reason: impl Into<String>) -> ClientError {
        ClientError::BadResponse {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// A failed cryptographic check.
    pub fn crypto(what: impl Into<String>, reason: impl Into<String>) -> ClientError {
        ClientError::Crypto {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> ClientError {
        ClientError::Io {
            path: path.into(),
            source,
        }
    }

    /// The client's form of an error from the shared file readers and checks
    /// ([`crate::config`], [`crate::consortium`]) about the file at `path`: a bad field keeps its
    /// name (without the `consortium.` prefix the node's configuration errors carry).
    pub fn from_file(path: &std::path::Path, e: crate::config::ConfigError) -> ClientError {
        use crate::config::ConfigError;
        let format = |field: &str, reason: String| ClientError::FileFormat {
            path: path.to_owned(),
            field: field.to_owned(),
            reason,
        };
        match e {
            ConfigError::Io { path, source } => ClientError::Io { path, source },
            ConfigError::Permissions { path, mode } => {
                ClientError::InsecurePermissions { path, mode }
            }
            ConfigError::Parse { reason, .. } | ConfigError::KeyFile { reason, .. } => {
                format("-", reason)
            }
            ConfigError::Invalid { key, reason } => {
                format(key.strip_prefix("consortium.").unwrap_or(&key), reason)
            }
        }
    }
}

/// The exit code for any error a command returned: the first [`ClientError`] in its chain
/// decides; anything else (argument parsing, local setup) is 1.
pub fn exit_code_of(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|e| e.downcast_ref::<ClientError>())
        .map_or(1, ClientError::exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_contract() {
        let p = || Box::new(Problem::from_status(404, "not found"));
        assert_eq!(
            ClientError::input("--limit", "must be 1..=1000").exit_code(),
            1
        );
        assert_eq!(ClientError::Refused(p()).exit_code(), 2);
        assert_eq!(ClientError::Server(p()).exit_code(), 3);
        assert_eq!(
            ClientError::Network {
                url: "http://127.0.0.1:1".into(),
                reason: "refused".into()
            }
            .exit_code(),
            3
        );
        let wrapped = anyhow::Error::new(ClientError::Refused(p())).context("uploading x.json");
        assert_eq!(exit_code_of(&wrapped), 2);
        assert_eq!(exit_code_of(&anyhow::anyhow!("plain")), 1);
    }

    #[test]
    fn permission_message_says_how_to_fix() {
        let e = ClientError::InsecurePermissions {
            path: "id.json".into(),
            mode: 0o644,
        };
        let s = e.to_string();
        assert!(s.contains("chmod 600 id.json"), "{s}");
        assert!(s.contains("644"), "{s}");
    }
}
