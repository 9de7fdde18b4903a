//! The consortium file (`consortium.json`, public: the clients' trust anchor), identity files,
//! and the genesis ceremony behind `ehr init-consortium`.
//!
//! # The ceremony
//! [`init_consortium`] plays the trusted dealer once: it draws every validator's, hospital's and
//! the attribute authority's Ed25519 key, the libp2p identity of every node (so IPFS peer ids are
//! known up front and go into `consortium.json` and each node's bootstrap list), and the CP-ABE
//! master secret, which it splits t-of-n among the validators (`setup_dealer`) and erases. It
//! writes:
//! - `consortium.json`: chain id, f, t, validators (keys, addresses, IPFS peer ids), the ABE
//!   public parameters and the genesis state;
//! - `node-<i>/node.toml` and `node-<i>/secrets/{validator,hospital,abe-share,ipfs}.key` (0600);
//! - `authority.json`, `hospital-<i>.json` and `researcher-<k>.json` identity files (0600).
//!
//! The dealer sees the master secret and every share: run it on a trusted, offline machine, copy
//! each `node-<i>/secrets` to its node only, and delete the output's secrets afterwards.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::SigningKey;
use ehr_ledger::state::{Genesis, GenesisParticipant};
use ehr_ledger::tx::{ParticipantId, Role};
use ehr_search::abe::{self, PublicParams, UserKey};
use ehr_storage::blockstore::PeerId;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize as _, Zeroizing};

use crate::client::identity::IdentityRole;
use crate::config::{
    ConfigError, HospitalConfig, HttpConfig, IpfsConfig, LedgerConfig, NodeConfig, read_private,
    write_key_file,
};

/// The only consortium and identity file version.
pub const FILE_VERSION: u32 = 1;
/// The default policy of every hospital's default capsule written by the ceremony.
pub const DEFAULT_POLICY: &str = "role:researcher AND irb:study-42";
/// The attributes of demo researcher 0 (they satisfy [`DEFAULT_POLICY`]).
pub const DEMO_RESEARCHER_ATTRIBUTES: &[&str] = &["role:researcher", "irb:study-42"];
/// Largest consortium file read.
const MAX_CONSORTIUM_FILE: u64 = 16 << 20;

/// One validator in `consortium.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidatorEntry {
    /// Replica id (its position).
    pub id: u32,
    /// Ed25519 public key, 64 hex digits.
    pub key: String,
    /// PBFT peer address `host:port`.
    pub peer_addr: String,
    /// HTTP API base URL.
    pub http_url: String,
    /// libp2p peer id of its IPFS node.
    pub ipfs_peer_id: String,
    /// Its IPFS swarm multiaddrs.
    pub ipfs_addrs: Vec<String>,
}

/// The consortium file as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsortiumFile {
    /// [`FILE_VERSION`].
    pub version: u32,
    /// The chain id.
    pub chain_id: String,
    /// The validator-set epoch.
    pub epoch: u64,
    /// Byzantine validators tolerated.
    pub f: usize,
    /// Partial keys needed for an attribute key.
    pub threshold: usize,
    /// The validators in id order.
    pub validators: Vec<ValidatorEntry>,
    /// The CP-ABE public parameters, base64url.
    pub abe_public_params: String,
    /// The genesis state.
    pub genesis: Genesis,
}

/// A loaded and checked consortium.
#[derive(Debug, Clone)]
pub struct Consortium {
    /// The file.
    pub file: ConsortiumFile,
    /// The validators' public keys in id order.
    pub validator_keys: Vec<[u8; 32]>,
    /// The ABE public parameters.
    pub abe_params: PublicParams,
}

fn bad(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: format!("consortium.{}", key.into()),
        reason: reason.into(),
    }
}

fn parse_key_hex(key: &str, text: &str) -> Result<[u8; 32], ConfigError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).map_err(|_| bad(key, "must be 64 hex digits"))?;
    ed25519_dalek::VerifyingKey::from_bytes(&out)
        .map_err(|_| bad(key, "not an Ed25519 public key"))?;
    Ok(out)
}

impl Consortium {
    /// Reads and checks `consortium.json`.
    pub fn load(path: &Path) -> Result<Consortium, ConfigError> {
        use std::io::Read as _;
        let io = |source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut buf = Vec::new();
        std::fs::File::open(path)
            .map_err(io)?
            .take(MAX_CONSORTIUM_FILE + 1)
            .read_to_end(&mut buf)
            .map_err(io)?;
        Self::from_json(path, &buf)
    }

    /// Parses and checks a consortium file's JSON (`path` only names it in errors).
    pub fn from_json(path: &Path, json: &[u8]) -> Result<Consortium, ConfigError> {
        let parse = |reason: String| ConfigError::Parse {
            path: path.to_path_buf(),
            reason,
        };
        if json.len() as u64 > MAX_CONSORTIUM_FILE {
            return Err(parse(format!("larger than {MAX_CONSORTIUM_FILE} bytes")));
        }
        let file: ConsortiumFile = serde_json::from_slice(json)
            .map_err(|e| parse(format!("not a consortium file: {e}")))?;
        Self::check(file)
    }

    /// Checks a parsed file: the one set of checks the node and the client both apply. Errors
    /// name the field (`consortium.<field>`) and the reason.
    pub fn check(file: ConsortiumFile) -> Result<Consortium, ConfigError> {
        if file.version != FILE_VERSION {
            return Err(bad(
                "version",
                format!(
                    "version {} is not supported (expected {FILE_VERSION})",
                    file.version
                ),
            ));
        }
        if file.chain_id.is_empty() {
            return Err(bad("chain_id", "must not be empty"));
        }
        let n = file.validators.len();
        if n == 0 || n < 3 * file.f + 1 {
            return Err(bad(
                "validators",
                format!(
                    "{n} validators cannot tolerate f = {} faults (need 3f+1)",
                    file.f
                ),
            ));
        }
        let mut keys = Vec::with_capacity(n);
        for (i, v) in file.validators.iter().enumerate() {
            if v.id as usize != i {
                return Err(bad(
                    format!("validators[{i}].id"),
                    format!("is {} but must be {i} (ids in order)", v.id),
                ));
            }
            keys.push(parse_key_hex(&format!("validators[{i}].key"), &v.key)?);
        }
        let pp_bytes = B64
            .decode(file.abe_public_params.trim())
            .map_err(|_| bad("abe_public_params", "must be base64url without padding"))?;
        let abe_params = PublicParams::from_bytes(&pp_bytes)
            .map_err(|e| bad("abe_public_params", e.to_string()))?;
        if abe_params.validators() != n || abe_params.threshold() != file.threshold {
            return Err(bad(
                "abe_public_params",
                format!(
                    "are {}-of-{} but the file says {}-of-{n}",
                    abe_params.threshold(),
                    abe_params.validators(),
                    file.threshold
                ),
            ));
        }
        if file.threshold == 0 || file.threshold > n {
            return Err(bad("threshold", format!("must be within 1..={n}")));
        }
        abe_params
            .verify_consistency()
            .map_err(|e| bad("abe_public_params", e.to_string()))?;
        if file.genesis.chain_id != file.chain_id {
            return Err(bad("genesis.chain_id", "differs from chain_id"));
        }
        let genesis_validators: Vec<[u8; 32]> = file
            .genesis
            .participants
            .iter()
            .filter(|p| p.role == Role::Validator)
            .map(|p| p.key)
            .collect();
        if keys.iter().any(|k| !genesis_validators.contains(k)) {
            return Err(bad(
                "genesis.participants",
                "every validator must be registered at genesis",
            ));
        }
        Ok(Consortium {
            file,
            validator_keys: keys,
            abe_params,
        })
    }

    /// The number of validators.
    pub fn n(&self) -> usize {
        self.validator_keys.len()
    }

    /// The quorum (2f+1).
    pub fn quorum(&self) -> usize {
        2 * self.file.f + 1
    }
}

/// An identity file: the one on-disk form, written by the ceremony and by `ehr keygen`, read by
/// the node's tests and by the client ([`crate::client::Identity`] checks every field of it).
/// Its secret strings are wiped on drop.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    /// [`FILE_VERSION`].
    pub version: u32,
    /// Participant id (hex public key).
    pub participant: String,
    /// The participant's role.
    pub role: IdentityRole,
    /// Public label.
    pub label: String,
    /// Hex Ed25519 seed (secret).
    pub signing_key: String,
    /// base64url attribute key (secret), if any.
    pub abe_key: Option<String>,
    /// The chain id.
    pub chain_id: String,
    /// The node the holder talks to.
    #[serde(default)]
    pub node: Option<String>,
}

impl std::fmt::Debug for IdentityFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityFile")
            .field("participant", &self.participant)
            .field("role", &self.role)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl Drop for IdentityFile {
    fn drop(&mut self) {
        self.signing_key.zeroize();
        if let Some(k) = self.abe_key.as_mut() {
            k.zeroize();
        }
    }
}

impl IdentityFile {
    /// An identity file for `key`.
    pub fn new(
        key: &SigningKey,
        role: IdentityRole,
        label: &str,
        abe_key: Option<&UserKey>,
        chain_id: &str,
        node: Option<String>,
    ) -> Self {
        IdentityFile {
            version: FILE_VERSION,
            participant: hex::encode(key.verifying_key().to_bytes()),
            role,
            label: label.to_owned(),
            signing_key: hex::encode(key.to_bytes()),
            abe_key: abe_key.map(|k| B64.encode(&*k.to_bytes())),
            chain_id: chain_id.to_owned(),
            node,
        }
    }

    /// Reads an identity file (refused when group or world readable).
    pub fn load(path: &Path) -> Result<IdentityFile, ConfigError> {
        let text = read_private(path, 1 << 20)?;
        serde_json::from_slice(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            reason: format!("not an identity file: {e}"),
        })
    }

    /// The signing key.
    pub fn signing_key(&self) -> Result<SigningKey, ConfigError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(&self.signing_key, &mut *seed)
            .map_err(|_| bad("signing_key", "must be 64 hex digits"))?;
        Ok(SigningKey::from_bytes(&seed))
    }

    /// The attribute key, if present.
    pub fn abe_key(&self) -> Result<Option<UserKey>, ConfigError> {
        let Some(text) = &self.abe_key else {
            return Ok(None);
        };
        let bytes = Zeroizing::new(
            B64.decode(text)
                .map_err(|_| bad("abe_key", "not base64url"))?,
        );
        UserKey::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| bad("abe_key", e.to_string()))
    }

    /// Writes the file (0600), replacing an existing one atomically.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let json = Zeroizing::new(
            serde_json::to_vec_pretty(self).expect("invariant: an identity file serialises"),
        );
        write_private_atomically(path, &json)
    }
}

pub use crate::config::{write_private_atomically, write_public_atomically};

/// The libp2p protobuf encoding of the Ed25519 keypair with this seed (what the blockstore's
/// identity file holds): `PrivateKey { Type = Ed25519, Data = secret || public }`.
pub fn libp2p_keypair_protobuf(seed: &[u8; 32]) -> Zeroizing<Vec<u8>> {
    let public = SigningKey::from_bytes(seed).verifying_key().to_bytes();
    let mut out = Zeroizing::new(Vec::with_capacity(68));
    out.extend_from_slice(&[0x08, 0x01, 0x12, 0x40]);
    out.extend_from_slice(seed);
    out.extend_from_slice(&public);
    out
}

/// The libp2p peer id of the Ed25519 key with this seed: the identity multihash of the
/// protobuf-encoded public key.
pub fn libp2p_peer_id(seed: &[u8; 32]) -> PeerId {
    let public = SigningKey::from_bytes(seed).verifying_key().to_bytes();
    let mut mh = vec![0x00, 36, 0x08, 0x01, 0x12, 0x20];
    mh.extend_from_slice(&public);
    PeerId::from_bytes(&mh).expect("invariant: an identity multihash of an Ed25519 key")
}

/// Options of [`init_consortium`].
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Number of nodes (3f+1).
    pub nodes: usize,
    /// Output directory (must be empty or absent).
    pub out: PathBuf,
    /// The chain id.
    pub chain_id: String,
    /// ABE threshold t (default f+1).
    pub threshold: Option<usize>,
    /// Host name of node `i`, with `{i}` replaced by its id.
    pub host_pattern: String,
    /// HTTP port of every node.
    pub http_port: u16,
    /// PBFT peer port of every node.
    pub peer_port: u16,
    /// IPFS swarm port of every node.
    pub ipfs_port: u16,
    /// Demo researchers registered at genesis.
    pub researchers: usize,
    /// Also write a private-network key (`pnet.key`) for a consortium-only swarm.
    pub private_network: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            nodes: 4,
            out: PathBuf::from("consortium"),
            chain_id: "ehr-dev".into(),
            threshold: None,
            host_pattern: "ehr-{i}.ehr-peers".into(),
            http_port: 8080,
            peer_port: 7000,
            ipfs_port: 4001,
            researchers: 1,
            private_network: false,
        }
    }
}

/// What [`init_consortium`] wrote.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// `consortium.json`.
    pub consortium: PathBuf,
    /// Each node's `node.toml`.
    pub node_configs: Vec<PathBuf>,
    /// `authority.json`.
    pub authority: PathBuf,
    /// `hospital-<i>.json`.
    pub hospitals: Vec<PathBuf>,
    /// `researcher-<k>.json`.
    pub researchers: Vec<PathBuf>,
}

fn fresh_key(rng: &mut (impl rand::CryptoRng + rand::RngCore)) -> SigningKey {
    let mut seed = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut *seed);
    SigningKey::from_bytes(&seed)
}

fn multiaddr_host(host: &str) -> String {
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        format!("/ip4/{host}")
    } else if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("/ip6/{host}")
    } else {
        format!("/dns4/{host}")
    }
}

/// Runs the genesis ceremony (see the module docs) into `opts.out`.
pub fn init_consortium(opts: &InitOptions) -> Result<InitReport, ConfigError> {
    let n = opts.nodes;
    if n != 1 && n < 4 {
        return Err(ConfigError::Invalid {
            key: "--nodes".into(),
            reason: "use 1 or at least 4 nodes (3f+1)".into(),
        });
    }
    if n > abe::MAX_VALIDATORS {
        return Err(ConfigError::Invalid {
            key: "--nodes".into(),
            reason: format!("at most {}", abe::MAX_VALIDATORS),
        });
    }
    let f = (n - 1) / 3;
    let t = opts.threshold.unwrap_or(f + 1);
    if t == 0 || t > n {
        return Err(ConfigError::Invalid {
            key: "--threshold".into(),
            reason: format!("must be within 1..={n}"),
        });
    }
    let loopback = opts
        .host_pattern
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback());
    if !opts.host_pattern.contains("{i}") && n > 1 && !loopback {
        return Err(ConfigError::Invalid {
            key: "--host-pattern".into(),
            reason: "must contain {i} (each node needs its own host)".into(),
        });
    }
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| ConfigError::Io { path: p, source }
    };
    std::fs::create_dir_all(&opts.out).map_err(io(&opts.out))?;
    if std::fs::read_dir(&opts.out)
        .map_err(io(&opts.out))?
        .next()
        .is_some()
    {
        return Err(ConfigError::Invalid {
            key: "--out".into(),
            reason: format!("{} is not empty", opts.out.display()),
        });
    }

    let mut rng = rand::rngs::OsRng;
    let validators: Vec<SigningKey> = (0..n).map(|_| fresh_key(&mut rng)).collect();
    let hospitals: Vec<SigningKey> = (0..n).map(|_| fresh_key(&mut rng)).collect();
    let authority = fresh_key(&mut rng);
    let researchers: Vec<SigningKey> = (0..opts.researchers).map(|_| fresh_key(&mut rng)).collect();
    let ipfs_seeds: Vec<Zeroizing<[u8; 32]>> = (0..n)
        .map(|_| {
            let mut s = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(&mut *s);
            s
        })
        .collect();
    let (pp, shares) = abe::setup_dealer(n, t, &mut rng).map_err(|e| ConfigError::Invalid {
        key: "--threshold".into(),
        reason: e.to_string(),
    })?;

    let host = |i: usize| opts.host_pattern.replace("{i}", &i.to_string());
    let peer_ids: Vec<PeerId> = ipfs_seeds.iter().map(|s| libp2p_peer_id(s)).collect();

    // Genesis.
    let mut participants = Vec::new();
    for (i, k) in validators.iter().enumerate() {
        participants.push(GenesisParticipant {
            key: k.verifying_key().to_bytes(),
            role: Role::Validator,
            label: format!("node-{i}"),
            attributes: vec![],
        });
    }
    participants.push(GenesisParticipant {
        key: authority.verifying_key().to_bytes(),
        role: Role::AttributeAuthority,
        label: "authority".into(),
        attributes: vec![],
    });
    for (i, k) in hospitals.iter().enumerate() {
        participants.push(GenesisParticipant {
            key: k.verifying_key().to_bytes(),
            role: Role::Hospital,
            label: format!("hospital-{i}"),
            attributes: vec![],
        });
    }
    let researcher_attrs = |k: usize| -> Vec<String> {
        if k == 0 {
            DEMO_RESEARCHER_ATTRIBUTES
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            vec!["role:researcher".to_string()]
        }
    };
    for (k, key) in researchers.iter().enumerate() {
        participants.push(GenesisParticipant {
            key: key.verifying_key().to_bytes(),
            role: Role::Researcher,
            label: format!("researcher-{k}"),
            attributes: researcher_attrs(k),
        });
    }
    let genesis = Genesis {
        chain_id: opts.chain_id.clone(),
        participants,
    };
    // Check it is a valid genesis before writing anything.
    ehr_ledger::state::LedgerState::from_genesis(&genesis).map_err(|e| ConfigError::Invalid {
        key: "genesis".into(),
        reason: e.to_string(),
    })?;

    let http_url = |i: usize| format!("http://{}:{}", host(i), opts.http_port);
    let entries: Vec<ValidatorEntry> = (0..n)
        .map(|i| ValidatorEntry {
            id: i as u32,
            key: hex::encode(validators[i].verifying_key().to_bytes()),
            peer_addr: format!("{}:{}", host(i), opts.peer_port),
            http_url: http_url(i),
            ipfs_peer_id: peer_ids[i].to_string(),
            ipfs_addrs: vec![format!(
                "{}/tcp/{}",
                multiaddr_host(&host(i)),
                opts.ipfs_port
            )],
        })
        .collect();
    let file = ConsortiumFile {
        version: FILE_VERSION,
        chain_id: opts.chain_id.clone(),
        epoch: 0,
        f,
        threshold: t,
        validators: entries.clone(),
        abe_public_params: B64.encode(pp.to_bytes()),
        genesis,
    };
    let consortium_path = opts.out.join("consortium.json");
    write_public_atomically(
        &consortium_path,
        &serde_json::to_vec_pretty(&file).expect("invariant: the consortium file serialises"),
    )?;

    let mut node_configs = Vec::with_capacity(n);
    for i in 0..n {
        let dir = opts.out.join(format!("node-{i}"));
        let secrets = dir.join("secrets");
        std::fs::create_dir_all(&secrets).map_err(io(&secrets))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o700))
                .map_err(io(&secrets))?;
        }
        write_key_file(
            &secrets.join("validator.key"),
            "validator",
            &Zeroizing::new(validators[i].to_bytes())[..],
        )?;
        write_key_file(
            &secrets.join("hospital.key"),
            "hospital",
            &Zeroizing::new(hospitals[i].to_bytes())[..],
        )?;
        write_key_file(
            &secrets.join("abe-share.key"),
            "abe-share",
            &shares[i].to_bytes(),
        )?;
        write_key_file(&secrets.join("ipfs.key"), "ipfs", &ipfs_seeds[i][..])?;
        let cfg = NodeConfig {
            chain_id: opts.chain_id.clone(),
            replica_id: i as u32,
            data_dir: PathBuf::from("data"),
            consortium: PathBuf::from("../consortium.json"),
            secrets_dir: PathBuf::from("secrets"),
            http: HttpConfig {
                listen: format!("0.0.0.0:{}", opts.http_port),
                max_body_bytes: crate::config::DEFAULT_MAX_BODY_BYTES,
                request_timeout_secs: crate::config::DEFAULT_REQUEST_TIMEOUT_SECS,
            },
            ledger: LedgerConfig {
                listen: format!("0.0.0.0:{}", opts.peer_port),
                peers: entries.iter().map(|e| e.peer_addr.clone()).collect(),
                view_change_timeout_ms: crate::config::DEFAULT_VIEW_CHANGE_TIMEOUT_MS,
            },
            ipfs: IpfsConfig {
                listen: vec![format!("/ip4/0.0.0.0/tcp/{}", opts.ipfs_port)],
                bootstrap: (0..n)
                    .filter(|&j| j != i)
                    .map(|j| format!("{}/p2p/{}", entries[j].ipfs_addrs[0], peer_ids[j]))
                    .collect(),
            },
            hospital: HospitalConfig {
                label: format!("hospital-{i}"),
                default_policy: DEFAULT_POLICY.into(),
            },
        };
        let path = dir.join("node.toml");
        write_public_atomically(&path, cfg.to_toml().as_bytes())?;
        node_configs.push(path);
    }
    if opts.private_network {
        let mut psk = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut *psk);
        for i in 0..n {
            let p = opts.out.join(format!("node-{i}/secrets/pnet.key"));
            write_key_file(&p, "pnet", &psk[..])?;
        }
    }

    let authority_path = opts.out.join("authority.json");
    IdentityFile::new(
        &authority,
        IdentityRole::Authority,
        "authority",
        None,
        &opts.chain_id,
        Some(http_url(0)),
    )
    .save(&authority_path)?;
    let mut hospital_paths = Vec::with_capacity(n);
    for (i, k) in hospitals.iter().enumerate() {
        let p = opts.out.join(format!("hospital-{i}.json"));
        IdentityFile::new(
            k,
            IdentityRole::Hospital,
            &format!("hospital-{i}"),
            None,
            &opts.chain_id,
            Some(http_url(i)),
        )
        .save(&p)?;
        hospital_paths.push(p);
    }
    let mut researcher_paths = Vec::with_capacity(researchers.len());
    for (k, key) in researchers.iter().enumerate() {
        let attrs = researcher_attrs(k);
        let user_id = key.verifying_key().to_bytes();
        let partials: Vec<_> = shares[..t]
            .iter()
            .map(|s| s.issue_partial(&pp, &user_id, &attrs, &mut rng))
            .collect::<Result<_, _>>()
            .map_err(|e| ConfigError::Invalid {
                key: "researcher key".into(),
                reason: e.to_string(),
            })?;
        let uk =
            abe::combine(&pp, &user_id, &attrs, &partials).map_err(|e| ConfigError::Invalid {
                key: "researcher key".into(),
                reason: e.to_string(),
            })?;
        let p = opts.out.join(format!("researcher-{k}.json"));
        IdentityFile::new(
            key,
            IdentityRole::Researcher,
            &format!("researcher-{k}"),
            Some(&uk),
            &opts.chain_id,
            Some(http_url(k % n)),
        )
        .save(&p)?;
        researcher_paths.push(p);
    }
    drop(shares);
    Ok(InitReport {
        consortium: consortium_path,
        node_configs,
        authority: authority_path,
        hospitals: hospital_paths,
        researchers: researcher_paths,
    })
}

/// The participant id of a key.
pub fn participant_of(key: &SigningKey) -> ParticipantId {
    ParticipantId(key.verifying_key().to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{read_key_file, read_key32};

    #[test]
    fn ceremony_writes_consistent_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("c");
        let opts = InitOptions {
            out: out.clone(),
            researchers: 2,
            ..InitOptions::default()
        };
        let report = init_consortium(&opts).unwrap();
        let c = Consortium::load(&report.consortium).unwrap();
        assert_eq!(c.n(), 4);
        assert_eq!(c.file.f, 1);
        assert_eq!(c.file.threshold, 2);
        assert_eq!(report.node_configs.len(), 4);
        for (i, path) in report.node_configs.iter().enumerate() {
            let cfg = NodeConfig::load(path).unwrap();
            assert_eq!(cfg.replica_id as usize, i);
            assert_eq!(cfg.ipfs.bootstrap.len(), 3);
            let vk = read_key32(&cfg.key_path("validator"), "validator").unwrap();
            assert_eq!(
                hex::encode(SigningKey::from_bytes(&vk).verifying_key().to_bytes()),
                c.file.validators[i].key
            );
            let seed = read_key32(&cfg.key_path("ipfs"), "ipfs").unwrap();
            assert_eq!(
                libp2p_peer_id(&seed).to_string(),
                c.file.validators[i].ipfs_peer_id
            );
            let share = read_key_file(&cfg.key_path("abe-share"), "abe-share").unwrap();
            let share = abe::MasterKeyShare::from_bytes(&share).unwrap();
            assert_eq!(share.index() as usize, i + 1);
        }
        // The demo researcher's key opens what the default policy protects; researcher-1's not.
        let policy = ehr_search::policy::Policy::parse(DEFAULT_POLICY).unwrap();
        let wk = abe::wrap(
            &c.abe_params,
            &policy,
            b"secret",
            b"aad",
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        let r0 = IdentityFile::load(&report.researchers[0]).unwrap();
        let k0 = r0.abe_key().unwrap().unwrap();
        assert_eq!(&*abe::unwrap(&k0, &wk, b"aad").unwrap(), b"secret");
        let r1 = IdentityFile::load(&report.researchers[1]).unwrap();
        assert!(abe::unwrap(&r1.abe_key().unwrap().unwrap(), &wk, b"aad").is_err());
        // A second run into the same directory is refused.
        assert!(init_consortium(&opts).is_err());
    }

    #[tokio::test]
    async fn peer_id_matches_what_the_blockstore_derives() {
        let dir = tempfile::tempdir().unwrap();
        let seed = [42u8; 32];
        let id_path = dir.path().join("id.pb");
        std::fs::write(&id_path, &*libp2p_keypair_protobuf(&seed)).unwrap();
        let cfg = ehr_storage::blockstore::BlockstoreConfig {
            repo: dir.path().join("repo"),
            identity: ehr_storage::blockstore::IdentitySource::File(id_path),
            listen: vec![],
            ..Default::default()
        };
        let store = ehr_storage::blockstore::Blockstore::open(cfg)
            .await
            .unwrap();
        assert_eq!(store.peer_id(), libp2p_peer_id(&seed));
        store.shutdown().await;
    }
}
