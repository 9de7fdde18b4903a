//! The consortium file (`consortium.json`): the client's trust anchor. It names the chain, the
//! validators (their Ed25519 keys, which alone decide whether a commit certificate is valid)
//! and the CP-ABE public parameters (which alone decide whether a partial key is valid).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ehr_ledger::crypto::Ed25519Verifier;
use ehr_search::abe::PublicParams;
use serde::Deserialize;

use super::error::ClientError;

/// Largest consortium file read.
const MAX_CONSORTIUM_FILE: u64 = 16 << 20;

/// One validator of the consortium.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validator {
    /// Replica id (0-based, its position in the list).
    pub id: u32,
    /// Its Ed25519 public key.
    pub key: [u8; 32],
    /// Its PBFT peer address.
    pub peer_addr: String,
    /// Its HTTP API base URL.
    pub http_url: String,
}

/// A parsed, checked consortium file.
#[derive(Debug, Clone)]
pub struct Consortium {
    /// The chain id (token audience, transaction chain).
    pub chain_id: String,
    /// The validator-set epoch.
    pub epoch: u64,
    /// How many validators may be Byzantine.
    pub f: usize,
    /// How many partial keys make an attribute key.
    pub threshold: usize,
    /// The validators, in id order.
    pub validators: Vec<Validator>,
    /// The CP-ABE public parameters.
    pub abe_params: PublicParams,
}

#[derive(Deserialize)]
struct ValidatorFile {
    id: u32,
    key: String,
    #[serde(default)]
    peer_addr: String,
    #[serde(default)]
    http_url: String,
}

#[derive(Deserialize)]
struct ConsortiumFile {
    version: u32,
    chain_id: String,
    #[serde(default)]
    epoch: u64,
    f: usize,
    threshold: usize,
    validators: Vec<ValidatorFile>,
    abe_public_params: String,
}

impl Consortium {
    /// Loads and checks a consortium file.
    pub fn load(path: &Path) -> Result<Consortium, ClientError> {
        use std::io::Read as _;
        let file = std::fs::File::open(path).map_err(|e| ClientError::io(path, e))?;
        let mut buf = Vec::new();
        file.take(MAX_CONSORTIUM_FILE + 1)
            .read_to_end(&mut buf)
            .map_err(|e| ClientError::io(path, e))?;
        if buf.len() as u64 > MAX_CONSORTIUM_FILE {
            return Err(format_err(
                path,
                "-",
                format!("larger than {MAX_CONSORTIUM_FILE} bytes"),
            ));
        }
        Consortium::from_json(path, &buf)
    }

    /// Parses and checks a consortium file's JSON (`path` only names it in errors).
    pub fn from_json(path: &Path, json: &[u8]) -> Result<Consortium, ClientError> {
        let file: ConsortiumFile = serde_json::from_slice(json)
            .map_err(|e| format_err(path, "-", format!("not a consortium file: {e}")))?;
        if file.version != 1 {
            return Err(format_err(
                path,
                "version",
                format!("version {} is not supported", file.version),
            ));
        }
        if file.chain_id.is_empty() {
            return Err(format_err(path, "chain_id", "must not be empty".into()));
        }
        let n = file.validators.len();
        if n == 0 || n < 3 * file.f + 1 {
            return Err(format_err(
                path,
                "validators",
                format!(
                    "{n} validators cannot tolerate f = {} faults (need 3f+1)",
                    file.f
                ),
            ));
        }
        let mut validators = Vec::with_capacity(n);
        for (i, v) in file.validators.into_iter().enumerate() {
            let field = format!("validators[{i}]");
            if v.id as usize != i {
                return Err(format_err(
                    path,
                    &format!("{field}.id"),
                    format!("is {} but must be {i} (ids in order)", v.id),
                ));
            }
            let mut key = [0u8; 32];
            hex::decode_to_slice(v.key.trim(), &mut key).map_err(|_| {
                format_err(
                    path,
                    &format!("{field}.key"),
                    "must be 64 hex digits".into(),
                )
            })?;
            if ed25519_dalek::VerifyingKey::from_bytes(&key).is_err() {
                return Err(format_err(
                    path,
                    &format!("{field}.key"),
                    "not an Ed25519 public key".into(),
                ));
            }
            validators.push(Validator {
                id: v.id,
                key,
                peer_addr: v.peer_addr,
                http_url: v.http_url,
            });
        }
        let pp_bytes = B64.decode(file.abe_public_params.trim()).map_err(|_| {
            format_err(
                path,
                "abe_public_params",
                "must be base64url without padding".into(),
            )
        })?;
        let abe_params = PublicParams::from_bytes(&pp_bytes)
            .map_err(|e| format_err(path, "abe_public_params", e.to_string()))?;
        if abe_params.threshold() != file.threshold || abe_params.validators() != n {
            return Err(format_err(
                path,
                "abe_public_params",
                format!(
                    "are {}-of-{} but the file says {}-of-{n}",
                    abe_params.threshold(),
                    abe_params.validators(),
                    file.threshold
                ),
            ));
        }
        abe_params
            .verify_consistency()
            .map_err(|e| format_err(path, "abe_public_params", e.to_string()))?;
        Ok(Consortium {
            chain_id: file.chain_id,
            epoch: file.epoch,
            f: file.f,
            threshold: file.threshold,
            validators,
            abe_params,
        })
    }

    /// Number of validators.
    pub fn n(&self) -> usize {
        self.validators.len()
    }

    /// Signatures a commit certificate needs: `n - f` (2f+1 when n = 3f+1).
    pub fn quorum(&self) -> usize {
        self.n() - self.f
    }

    /// A signature verifier over the validators' keys (in id order).
    pub fn verifier(&self) -> Ed25519Verifier {
        let keys: Vec<[u8; 32]> = self.validators.iter().map(|v| v.key).collect();
        Ed25519Verifier::new(&keys)
    }
}

fn format_err(path: &Path, field: &str, reason: String) -> ClientError {
    ClientError::FileFormat {
        path: PathBuf::from(path),
        field: field.to_owned(),
        reason,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::SeedableRng as _;

    /// A consortium file of 4 validators (keys from seeds 1..=4) with 2-of-4 ABE parameters,
    /// and the ABE shares and validator keys behind it.
    pub(crate) fn sample() -> (
        serde_json::Value,
        Vec<ed25519_dalek::SigningKey>,
        Vec<ehr_search::abe::MasterKeyShare>,
    ) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let (pp, shares) = ehr_search::abe::setup_dealer(4, 2, &mut rng).unwrap();
        let keys: Vec<_> = (1..=4u8)
            .map(|i| ed25519_dalek::SigningKey::from_bytes(&[i; 32]))
            .collect();
        let json = serde_json::json!({
            "version": 1, "chain_id": "ehr-test", "epoch": 0, "f": 1, "threshold": 2,
            "validators": keys.iter().enumerate().map(|(i, k)| serde_json::json!({
                "id": i, "key": hex::encode(k.verifying_key().to_bytes()),
                "peer_addr": format!("127.0.0.1:{}", 7000 + i),
                "http_url": format!("http://127.0.0.1:{}", 8000 + i),
                "ipfs_peer_id": "x", "ipfs_addrs": []
            })).collect::<Vec<_>>(),
            "abe_public_params": B64.encode(pp.to_bytes()),
            "genesis": {"chain_id": "ehr-test", "participants": []}
        });
        (json, keys, shares)
    }

    #[test]
    fn parses_a_well_formed_file() {
        let (json, keys, _) = sample();
        let c = Consortium::from_json(Path::new("c.json"), &serde_json::to_vec(&json).unwrap())
            .unwrap();
        assert_eq!(c.n(), 4);
        assert_eq!(c.quorum(), 3);
        assert_eq!(c.threshold, 2);
        assert_eq!(c.validators[2].key, keys[2].verifying_key().to_bytes());
    }

    #[test]
    fn rejects_inconsistent_files_naming_the_field() {
        let (json, _, _) = sample();
        type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "validators[1].id",
                Box::new(|v| v["validators"][1]["id"] = 5.into()),
            ),
            (
                "validators[0].key",
                Box::new(|v| v["validators"][0]["key"] = "00".into()),
            ),
            ("validators", Box::new(|v| v["f"] = 2.into())),
            ("abe_public_params", Box::new(|v| v["threshold"] = 3.into())),
            (
                "abe_public_params",
                Box::new(|v| v["abe_public_params"] = "AAAA".into()),
            ),
            ("version", Box::new(|v| v["version"] = 9.into())),
            ("chain_id", Box::new(|v| v["chain_id"] = "".into())),
        ];
        for (field, mutate) in cases {
            let mut v = json.clone();
            mutate(&mut v);
            match Consortium::from_json(Path::new("c.json"), &serde_json::to_vec(&v).unwrap()) {
                Err(ClientError::FileFormat { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
