//! Configuration of the blockstore: repository, identity, listeners, peers, private network.

use std::fmt;
use std::path::PathBuf;

use rust_ipfs::{Multiaddr, Protocol};

use crate::error::StoreError;

/// A libp2p private-network pre-shared key (the `swarm.key` of Kubo and go-libp2p).
///
/// With a key set, every TCP connection first runs the pnet handshake (XSalsa20 keyed with the
/// PSK) underneath noise, so only consortium members can even start a libp2p session. QUIC has
/// no pnet layer (libp2p applies pnet to stream transports only), so a private network is
/// TCP-only: `validate()` rejects QUIC listen addresses when a key is set, and QUIC is not
/// enabled. `Debug` prints only the key's public fingerprint.
#[derive(Clone)]
pub struct PrivateNetworkKey(libp2p_pnet::PreSharedKey);

impl PrivateNetworkKey {
    /// A key from 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(libp2p_pnet::PreSharedKey::new(bytes))
    }

    /// Parses the `swarm.key` text format (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex digits).
    pub fn from_swarm_key(text: &str) -> Result<Self, StoreError> {
        text.trim()
            .parse::<libp2p_pnet::PreSharedKey>()
            .map(Self)
            .map_err(|e| StoreError::InvalidConfig {
                field: "private_network",
                reason: format!("swarm key: {e}"),
            })
    }

    /// The key's public fingerprint (safe to log).
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint().to_string()
    }

    pub(crate) fn psk(&self) -> libp2p_pnet::PreSharedKey {
        self.0
    }
}

impl fmt::Debug for PrivateNetworkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PrivateNetworkKey")
            .field(&format_args!("fingerprint {}", self.fingerprint()))
            .finish()
    }
}

/// Where the node's libp2p identity (an Ed25519 keypair, hence its `PeerId`) comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum IdentitySource {
    /// `<repo>/identity.key`, created (mode 0600) on first open.
    #[default]
    InRepo,
    /// A protobuf-encoded libp2p keypair file, created (mode 0600) if absent.
    File(PathBuf),
    /// A fresh keypair for this process only (tests, `--only-hash` style tools).
    Ephemeral,
}

/// Configuration of a [`super::Blockstore`].
#[derive(Debug, Clone)]
pub struct BlockstoreConfig {
    /// Directory of the IPFS repository (`blockstore/`, `datastore/`, `repo_lock`), created if
    /// absent. Only one process can open a repository at a time.
    pub repo: PathBuf,
    /// The libp2p identity.
    pub identity: IdentitySource,
    /// Swarm listen addresses: `/ip4|ip6/../tcp/..` and `/ip4|ip6/../udp/../quic-v1`. Empty
    /// means the node dials out only. Default: loopback TCP and QUIC on ephemeral ports.
    pub listen: Vec<Multiaddr>,
    /// Peers to stay connected to (each with a `/p2p/<peer id>` suffix; `/dns4|dns6|dns` names
    /// are resolved with the system resolver at every dial): dialled at open, then redialled
    /// with backoff whenever they are not connected.
    pub bootstrap: Vec<Multiaddr>,
    /// Optional private-network key (consortium-only swarm, TCP only; see [`PrivateNetworkKey`]).
    pub private_network: Option<PrivateNetworkKey>,
    /// Enables the Kademlia DHT. Off by default: a hospital node does not join the public DHT.
    pub kademlia: bool,
    /// Blocks written concurrently during an add (each write is fsynced). Bounds memory at
    /// about `max_in_flight_blocks x 256 KiB`.
    pub max_in_flight_blocks: usize,
    /// Blocks read ahead during a cat (each verified on a worker).
    pub read_ahead_blocks: usize,
    /// On open, checks that every recursive pin's DAG is complete and reports leftovers of an
    /// interrupted pin write.
    pub check_on_open: bool,
}

impl Default for BlockstoreConfig {
    fn default() -> Self {
        Self {
            repo: PathBuf::from("data/ipfs"),
            identity: IdentitySource::InRepo,
            listen: vec![
                "/ip4/127.0.0.1/tcp/0".parse().expect("static multiaddr"),
                "/ip4/127.0.0.1/udp/0/quic-v1"
                    .parse()
                    .expect("static multiaddr"),
            ],
            bootstrap: Vec::new(),
            private_network: None,
            kademlia: false,
            max_in_flight_blocks: 32,
            read_ahead_blocks: 16,
            check_on_open: true,
        }
    }
}

/// The transport of a listen address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Tcp,
    Quic,
}

pub(crate) fn transport_of(addr: &Multiaddr) -> Option<Transport> {
    let mut it = addr.iter();
    match it.next()? {
        Protocol::Ip4(_) | Protocol::Ip6(_) => {}
        _ => return None,
    }
    match (it.next()?, it.next(), it.next()) {
        (Protocol::Tcp(_), None, None) => Some(Transport::Tcp),
        (Protocol::Udp(_), Some(Protocol::QuicV1), None) => Some(Transport::Quic),
        _ => None,
    }
}

impl BlockstoreConfig {
    /// Checks every field; returns the first problem found.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.repo.as_os_str().is_empty() {
            return Err(StoreError::InvalidConfig {
                field: "repo",
                reason: "empty path".into(),
            });
        }
        if let IdentitySource::File(p) = &self.identity
            && p.as_os_str().is_empty()
        {
            return Err(StoreError::InvalidConfig {
                field: "identity",
                reason: "empty path".into(),
            });
        }
        for addr in &self.listen {
            match transport_of(addr) {
                None => {
                    return Err(StoreError::InvalidConfig {
                        field: "listen",
                        reason: format!(
                            "{addr}: expected /ip4|ip6/<ip>/tcp/<port> or /ip4|ip6/<ip>/udp/<port>/quic-v1"
                        ),
                    });
                }
                Some(Transport::Quic) if self.private_network.is_some() => {
                    return Err(StoreError::InvalidConfig {
                        field: "listen",
                        reason: format!(
                            "{addr}: QUIC cannot carry a private network (no pnet layer); use TCP only"
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        for addr in &self.bootstrap {
            if !matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
                return Err(StoreError::InvalidConfig {
                    field: "bootstrap",
                    reason: format!("{addr}: must end with /p2p/<peer id>"),
                });
            }
        }
        if self.max_in_flight_blocks == 0 || self.max_in_flight_blocks > 1024 {
            return Err(StoreError::InvalidConfig {
                field: "max_in_flight_blocks",
                reason: format!("{} is outside 1..=1024", self.max_in_flight_blocks),
            });
        }
        if self.read_ahead_blocks == 0 || self.read_ahead_blocks > 1024 {
            return Err(StoreError::InvalidConfig {
                field: "read_ahead_blocks",
                reason: format!("{} is outside 1..=1024", self.read_ahead_blocks),
            });
        }
        Ok(())
    }

    /// The identity file path, if the identity is persistent.
    pub fn identity_path(&self) -> Option<PathBuf> {
        match &self.identity {
            IdentitySource::InRepo => Some(self.repo.join("identity.key")),
            IdentitySource::File(p) => Some(p.clone()),
            IdentitySource::Ephemeral => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        BlockstoreConfig::default()
            .validate()
            .expect("default config validates");
    }

    #[test]
    fn rejects_bad_fields() {
        let bad = |f: &dyn Fn(&mut BlockstoreConfig)| {
            let mut c = BlockstoreConfig::default();
            f(&mut c);
            match c.validate() {
                Err(StoreError::InvalidConfig { field, .. }) => field,
                other => panic!("expected InvalidConfig, got {other:?}"),
            }
        };
        assert_eq!(bad(&|c| c.repo = PathBuf::new()), "repo");
        assert_eq!(
            bad(&|c| c.listen = vec!["/ip4/127.0.0.1/udp/0".parse().unwrap()]),
            "listen"
        );
        assert_eq!(
            bad(&|c| c.bootstrap = vec!["/ip4/127.0.0.1/tcp/1".parse().unwrap()]),
            "bootstrap"
        );
        assert_eq!(bad(&|c| c.max_in_flight_blocks = 0), "max_in_flight_blocks");
        assert_eq!(bad(&|c| c.read_ahead_blocks = 5000), "read_ahead_blocks");
        // a private network with the default (QUIC) listener is refused
        assert_eq!(
            bad(&|c| c.private_network = Some(PrivateNetworkKey::from_bytes([7; 32]))),
            "listen"
        );
    }

    #[test]
    fn private_network_tcp_only_is_valid() {
        let c = BlockstoreConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            private_network: Some(PrivateNetworkKey::from_bytes([7; 32])),
            ..BlockstoreConfig::default()
        };
        c.validate().expect("TCP-only private network validates");
    }

    #[test]
    fn swarm_key_parses_and_debug_redacts() {
        let hex = "00".repeat(31) + "2a";
        let k =
            PrivateNetworkKey::from_swarm_key(&format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}\n"))
                .expect("valid swarm key");
        let dbg = format!("{k:?}");
        assert!(dbg.contains("fingerprint") && !dbg.contains(&hex), "{dbg}");
        assert!(PrivateNetworkKey::from_swarm_key("/key/swarm/psk/1.0.0/\n/base16/\nzz").is_err());
    }
}
