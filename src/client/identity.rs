//! Identities: a participant's Ed25519 signing key, its CP-ABE attribute key and where its
//! node is. The file format is [`crate::consortium::IdentityFile`] (the ceremony writes the same
//! struct); this module checks every field of it. JSON, mode 0600:
//!
//! ```json
//! {"version":1, "participant":"<64 hex>", "role":"researcher", "label":"alice",
//!  "signing_key":"<64 hex: the 32-byte seed>", "abe_key":"<base64url UserKey>"|null,
//!  "chain_id":"ehr-dev", "node":"http://127.0.0.1:8080"}
//! ```
//!
//! Files readable by group or others are refused. Secrets are zeroized after use and never
//! printed: [`Identity`]'s `Debug` shows only public fields. Writes go through
//! [`crate::config`]'s atomic writers (temporary file, sync, rename or link, directory sync).

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::SigningKey;
use ehr_ledger::tx::{ParticipantId, Role};
use ehr_search::abe::UserKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::error::ClientError;
use crate::config::{ConfigError, read_private, write_private_atomically, write_private_new};
use crate::consortium::{FILE_VERSION, IdentityFile};

/// Largest identity file read (an ABE key with many attributes is a few tens of KiB).
const MAX_IDENTITY_FILE: u64 = 1 << 20;

/// A participant's role, as written in identity files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IdentityRole {
    /// Searches and reads records its attributes or grants allow.
    Researcher,
    /// Owns records and runs a node.
    Hospital,
    /// Registers participants and assigns attributes.
    Authority,
    /// A data subject.
    Patient,
    /// Operates a consensus node.
    Validator,
}

impl IdentityRole {
    /// The ledger's role.
    pub fn ledger_role(self) -> Role {
        match self {
            IdentityRole::Researcher => Role::Researcher,
            IdentityRole::Hospital => Role::Hospital,
            IdentityRole::Authority => Role::AttributeAuthority,
            IdentityRole::Patient => Role::Patient,
            IdentityRole::Validator => Role::Validator,
        }
    }

    /// The name used in identity files.
    pub fn name(self) -> &'static str {
        match self {
            IdentityRole::Researcher => "researcher",
            IdentityRole::Hospital => "hospital",
            IdentityRole::Authority => "authority",
            IdentityRole::Patient => "patient",
            IdentityRole::Validator => "validator",
        }
    }
}

/// A loaded identity. The signing key and the ABE key are zeroized on drop (both types do so
/// themselves); `Debug` shows only the public id, role and label.
pub struct Identity {
    participant: ParticipantId,
    role: IdentityRole,
    label: String,
    signing_key: SigningKey,
    abe_key: Option<UserKey>,
    chain_id: String,
    node: Option<String>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("participant", &self.participant.to_string())
            .field("role", &self.role)
            .field("label", &self.label)
            .field("signing_key", &"<redacted>")
            .field("abe_key", &self.abe_key.as_ref().map(|_| "<redacted>"))
            .field("chain_id", &self.chain_id)
            .field("node", &self.node)
            .finish()
    }
}

impl Identity {
    /// A fresh identity with a random Ed25519 key.
    pub fn generate(
        role: IdentityRole,
        label: &str,
        chain_id: &str,
        node: Option<String>,
    ) -> Result<Identity, ClientError> {
        check_label(label)?;
        let signing_key = SigningKey::generate(&mut rand::rngs::OsRng);
        Ok(Identity::from_parts(
            signing_key,
            role,
            label,
            chain_id,
            node,
        ))
    }

    /// An identity around an existing key (its participant id is the key's public key).
    pub fn from_parts(
        signing_key: SigningKey,
        role: IdentityRole,
        label: &str,
        chain_id: &str,
        node: Option<String>,
    ) -> Identity {
        Identity {
            participant: ParticipantId(signing_key.verifying_key().to_bytes()),
            role,
            label: label.to_owned(),
            signing_key,
            abe_key: None,
            chain_id: chain_id.to_owned(),
            node,
        }
    }

    /// The participant id (the public key it was registered with).
    pub fn participant(&self) -> ParticipantId {
        self.participant
    }

    /// The role.
    pub fn role(&self) -> IdentityRole {
        self.role
    }

    /// The public label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The signing key (secret).
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    /// The CP-ABE attribute key, if one was combined (`ehr keygen --abe`).
    pub fn abe_key(&self) -> Option<&UserKey> {
        self.abe_key.as_ref()
    }

    /// Stores an attribute key (replacing any previous one).
    pub fn set_abe_key(&mut self, key: UserKey) {
        self.abe_key = Some(key);
    }

    /// The chain the identity belongs to (the token audience).
    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }

    /// The node's base URL, if the file names one.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// Parses an identity from JSON. `path` is only used in error messages.
    pub fn from_json(path: &Path, json: &[u8]) -> Result<Identity, ClientError> {
        let bad = |field: &str, reason: String| ClientError::FileFormat {
            path: path.to_owned(),
            field: field.to_owned(),
            reason,
        };
        let file: IdentityFile = serde_json::from_slice(json)
            .map_err(|e| bad("-", format!("not an identity file: {e}")))?;
        if file.version != FILE_VERSION {
            return Err(bad(
                "version",
                format!(
                    "version {} is not supported (expected {FILE_VERSION})",
                    file.version
                ),
            ));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(file.signing_key.trim(), &mut seed[..]).map_err(|_| {
            bad(
                "signing_key",
                "must be 64 hex digits (a 32-byte seed)".into(),
            )
        })?;
        let signing_key = SigningKey::from_bytes(&seed);
        let participant =
            parse_participant(&file.participant).map_err(|reason| bad("participant", reason))?;
        // The id is the key the participant was registered with; after a key rotation the
        // two differ, which the ledger knows and this file cannot check.
        if participant.0 != signing_key.verifying_key().to_bytes() {
            tracing::debug!("identity's signing key differs from its participant id (rotated key)");
        }
        check_label(&file.label).map_err(|e| bad("label", e.to_string()))?;
        let abe_key = match file.abe_key.as_deref() {
            None | Some("") => None,
            Some(text) => {
                let bytes = Zeroizing::new(
                    B64.decode(text.trim())
                        .map_err(|_| bad("abe_key", "must be base64url without padding".into()))?,
                );
                Some(
                    UserKey::from_bytes(&bytes)
                        .map_err(|e| bad("abe_key", format!("not a CP-ABE user key: {e}")))?,
                )
            }
        };
        if file.chain_id.is_empty() {
            return Err(bad("chain_id", "must not be empty".into()));
        }
        Ok(Identity {
            participant,
            role: file.role,
            label: file.label.clone(),
            signing_key,
            abe_key,
            chain_id: file.chain_id.clone(),
            node: file.node.clone().filter(|n| !n.is_empty()),
        })
    }

    /// The JSON encoding (holds secrets: the caller must wipe it).
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let mut file = IdentityFile::new(
            &self.signing_key,
            self.role,
            &self.label,
            self.abe_key.as_ref(),
            &self.chain_id,
            self.node.clone(),
        );
        // After a key rotation the participant id is the registered key, not the signing key.
        file.participant = self.participant.to_string();
        let mut out = Zeroizing::new(
            serde_json::to_vec_pretty(&file).expect("invariant: identity serialises"),
        );
        out.push(b'\n');
        out
    }

    /// Loads an identity file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<Identity, ClientError> {
        let buf =
            read_private(path, MAX_IDENTITY_FILE).map_err(|e| ClientError::from_file(path, e))?;
        if buf.len() as u64 > MAX_IDENTITY_FILE {
            return Err(ClientError::FileFormat {
                path: path.to_owned(),
                field: "-".into(),
                reason: format!("larger than {MAX_IDENTITY_FILE} bytes"),
            });
        }
        Identity::from_json(path, &buf)
    }

    /// Writes a new identity file (mode 0600); refuses to overwrite an existing file.
    pub fn save_new(&self, path: &Path) -> Result<(), ClientError> {
        let refuse = || {
            ClientError::input(
                path.display().to_string(),
                "already exists; refusing to overwrite an identity (choose another --out)",
            )
        };
        if path.exists() {
            return Err(refuse());
        }
        match write_private_new(path, &self.to_json()) {
            Err(ConfigError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Err(refuse())
            }
            other => other.map_err(|e| ClientError::from_file(path, e)),
        }
    }

    /// Rewrites the identity file in place (mode 0600, atomically).
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        write_private_atomically(path, &self.to_json()).map_err(|e| ClientError::from_file(path, e))
    }
}

/// Parses a participant id: 64 lowercase hex digits.
pub fn parse_participant(text: &str) -> Result<ParticipantId, String> {
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("must be 64 lowercase hex digits (a participant id)".into());
    }
    let mut id = [0u8; 32];
    hex::decode_to_slice(text, &mut id).expect("invariant: checked hex");
    Ok(ParticipantId(id))
}

/// Checks a label the way the ledger does (`[a-z0-9._:@-]`, at most 64 bytes).
fn check_label(label: &str) -> Result<(), ClientError> {
    if label.len() > ehr_ledger::tx::MAX_LABEL
        || !label
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b':' | b'@' | b'-'))
    {
        return Err(ClientError::input(
            "label",
            format!(
                "use at most {} characters from a-z 0-9 . _ : @ -",
                ehr_ledger::tx::MAX_LABEL
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ehr_search::abe;
    use rand::SeedableRng as _;

    fn researcher() -> Identity {
        let mut id = Identity::generate(
            IdentityRole::Researcher,
            "alice",
            "ehr-test",
            Some("http://127.0.0.1:9".into()),
        )
        .unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let (pp, msk) = abe::setup(&mut rng);
        let key = abe::keygen(
            &pp,
            &msk,
            &id.participant().0,
            ["role:researcher"],
            &mut rng,
        )
        .unwrap();
        id.set_abe_key(key);
        id
    }

    #[test]
    fn round_trips_through_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alice.json");
        let id = researcher();
        id.save_new(&path).unwrap();
        let back = Identity::load(&path).unwrap();
        assert_eq!(back.participant(), id.participant());
        assert_eq!(back.signing_key().to_bytes(), id.signing_key().to_bytes());
        assert_eq!(back.abe_key(), id.abe_key());
        assert_eq!(back.role(), IdentityRole::Researcher);
        assert_eq!(back.node(), Some("http://127.0.0.1:9"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        // save_new never overwrites; save does.
        assert!(matches!(id.save_new(&path), Err(ClientError::Input { .. })));
        id.save(&path).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn refuses_files_others_can_read() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.json");
        researcher().save_new(&path).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = Identity::load(&path).unwrap_err();
            assert!(
                matches!(err, ClientError::InsecurePermissions { mode: m, .. } if m == mode),
                "{err}"
            );
            assert!(err.to_string().contains("chmod 600"));
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        Identity::load(&path).unwrap();
    }

    #[test]
    fn debug_never_shows_secrets() {
        let id = researcher();
        let dbg = format!("{id:?}");
        let seed = hex::encode(id.signing_key().to_bytes());
        assert!(!dbg.contains(&seed));
        assert!(dbg.contains("<redacted>"));
        assert!(dbg.contains(&id.participant().to_string()));
        let json = String::from_utf8(id.to_json().to_vec()).unwrap();
        assert!(json.contains(&seed), "the file itself holds the seed");
    }

    #[test]
    fn malformed_files_name_the_field() {
        let id = researcher();
        let good: serde_json::Value = serde_json::from_slice(&id.to_json()).unwrap();
        let cases: [(&str, serde_json::Value, &str); 6] = [
            ("signing_key", "zz".into(), "signing_key"),
            ("participant", "ABC".into(), "participant"),
            ("abe_key", "%%%".into(), "abe_key"),
            ("abe_key", "AAAA".into(), "abe_key"),
            ("version", 2.into(), "version"),
            ("label", "Bad Label".into(), "label"),
        ];
        for (field, value, expect) in cases {
            let mut v = good.clone();
            v[field] = value;
            let bytes = serde_json::to_vec(&v).unwrap();
            match Identity::from_json(Path::new("x.json"), &bytes) {
                Err(ClientError::FileFormat { field: f, .. }) => assert_eq!(f, expect),
                other => panic!("{field}: {other:?}"),
            }
        }
        let mut v = good.clone();
        v["role"] = "king".into();
        assert!(Identity::from_json(Path::new("x"), &serde_json::to_vec(&v).unwrap()).is_err());
        assert!(Identity::from_json(Path::new("x"), b"{").is_err());
        // A null ABE key is a valid identity without attributes.
        let mut v = good;
        v["abe_key"] = serde_json::Value::Null;
        let id = Identity::from_json(Path::new("x"), &serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(id.abe_key().is_none());
    }

    #[test]
    fn participant_ids_are_strict_hex() {
        assert!(parse_participant(&"ab".repeat(32)).is_ok());
        assert!(parse_participant(&"AB".repeat(32)).is_err());
        assert!(parse_participant(&"ab".repeat(31)).is_err());
        assert!(parse_participant("").is_err());
    }
}
