//! The consortium file (`consortium.json`): the client's trust anchor. It names the chain, the
//! validators (their Ed25519 keys, which alone decide whether a commit certificate is valid)
//! and the CP-ABE public parameters (which alone decide whether a partial key is valid).
//!
//! The file format and its checks are the node's ([`crate::consortium::ConsortiumFile`],
//! [`crate::consortium::Consortium::check`]): one definition, so the node and its clients cannot
//! disagree on what a valid consortium is. This is the client's view of a checked file.

use std::path::Path;

use ehr_ledger::crypto::Ed25519Verifier;
use ehr_search::abe::PublicParams;

use super::error::ClientError;
use crate::consortium as checked;

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

impl Consortium {
    /// Loads and checks a consortium file.
    pub fn load(path: &Path) -> Result<Consortium, ClientError> {
        checked::Consortium::load(path)
            .map(Consortium::from_checked)
            .map_err(|e| ClientError::from_file(path, e))
    }

    /// Parses and checks a consortium file's JSON (`path` only names it in errors).
    pub fn from_json(path: &Path, json: &[u8]) -> Result<Consortium, ClientError> {
        checked::Consortium::from_json(path, json)
            .map(Consortium::from_checked)
            .map_err(|e| ClientError::from_file(path, e))
    }

    /// The client's view of a consortium the node's checks accepted.
    fn from_checked(c: checked::Consortium) -> Consortium {
        let validators = c
            .file
            .validators
            .iter()
            .zip(&c.validator_keys)
            .map(|(v, key)| Validator {
                id: v.id,
                key: *key,
                peer_addr: v.peer_addr.clone(),
                http_url: v.http_url.clone(),
            })
            .collect();
        Consortium {
            chain_id: c.file.chain_id,
            epoch: c.file.epoch,
            f: c.file.f,
            threshold: c.file.threshold,
            validators,
            abe_params: c.abe_params,
        }
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
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
            "genesis": ehr_ledger::state::Genesis {
                chain_id: "ehr-test".into(),
                participants: keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| ehr_ledger::state::GenesisParticipant {
                        key: k.verifying_key().to_bytes(),
                        role: ehr_ledger::tx::Role::Validator,
                        label: format!("validator-{i}"),
                        attributes: vec![],
                    })
                    .collect(),
            }
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
            (
                "genesis.chain_id",
                Box::new(|v| v["genesis"]["chain_id"] = "other".into()),
            ),
            (
                "genesis.participants",
                Box::new(|v| v["genesis"]["participants"] = serde_json::json!([])),
            ),
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
