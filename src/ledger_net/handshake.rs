//! The peer handshake: both ends prove possession of their validator Ed25519 key.
//!
//! ```text
//! hello = "EHRL" || version:u16 || chain_len:u8 || chain_id || replica:u32 || nonce:[u8; 32]
//! auth  = signature:[u8; 64]
//! signed = "ehr-ledger-net/handshake/v1\0" || role:u8 || dialer_hello || listener_hello
//! ```
//!
//! Each side sends its hello (a fresh random nonce), checks the other's (version, chain id,
//! a replica id inside the validator set and not its own; the dialer also checks that the
//! address answered as the replica configured there), then signs the transcript of both hellos
//! with its role (0 = dialer, 1 = listener) and checks the peer's signature with
//! `verify_strict` under the key the validator set holds for the claimed id. Because each
//! signature covers the *other* side's fresh nonce, a recorded handshake cannot be replayed,
//! and the role byte stops a signature from being reflected back to its signer.
//!
//! The handshake authenticates the peer at connection time; it does not encrypt the stream.
//! The ledger carries no health data, and every consensus message is itself signed by its
//! sender, so a tampered frame is rejected by the replica.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::{OsRng, RngCore};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::error::NetError;
use super::frame::{read_frame, write_frame};

/// The version of the replica protocol this node speaks (handshake and consensus messages);
/// peers of another version are refused at the handshake, with a clear error, instead of
/// failing on messages they cannot decode.
/// - 1: the first.
/// - 2: state requests carry the requester's view (so a peer in a later view can tell it).
pub const HANDSHAKE_VERSION: u16 = 2;
/// Magic bytes opening every hello.
const MAGIC: &[u8; 4] = b"EHRL";
/// Domain separator of the signed transcript.
const DOMAIN: &[u8] = b"ehr-ledger-net/handshake/v1\0";
/// Longest chain id accepted in a hello.
pub const MAX_CHAIN_ID: usize = 64;
/// Largest handshake frame (a hello or a signature).
const MAX_HANDSHAKE_FRAME: u32 = 256;
const ROLE_DIALER: u8 = 0;
const ROLE_LISTENER: u8 = 1;

/// This replica's network identity: its index in the validator set and its signing key.
pub struct Identity {
    id: u32,
    key: SigningKey,
}

impl Identity {
    /// An identity for replica `id` holding `key` (zeroized on drop by `ed25519-dalek`).
    pub fn new(id: u32, key: SigningKey) -> Self {
        Self { id, key }
    }

    /// The replica id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The public validator key.
    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The signing key (for giving the replica core its signer).
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id)
            .field("public", &hex::encode(self.key.verifying_key().as_bytes()))
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The chain id and the ordered validator keys (index = replica id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatorSet {
    chain_id: String,
    keys: Vec<VerifyingKey>,
}

impl ValidatorSet {
    /// A validator set; the chain id must be 1..=64 bytes and there must be at least one key.
    pub fn new(chain_id: impl Into<String>, keys: Vec<VerifyingKey>) -> Result<Self, NetError> {
        let chain_id = chain_id.into();
        if chain_id.is_empty() || chain_id.len() > MAX_CHAIN_ID {
            return Err(NetError::Config(format!(
                "chain_id must be 1..={MAX_CHAIN_ID} bytes, got {}",
                chain_id.len()
            )));
        }
        if keys.is_empty() || u32::try_from(keys.len()).is_err() {
            return Err(NetError::Config("validator keys: need at least one".into()));
        }
        Ok(Self { chain_id, keys })
    }

    /// The chain id.
    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }

    /// Number of validators.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty (never, once constructed).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key of replica `id`, if it is in the set.
    pub fn key(&self, id: u32) -> Option<&VerifyingKey> {
        self.keys.get(id as usize)
    }

    /// All keys in replica-id order.
    pub fn keys(&self) -> &[VerifyingKey] {
        &self.keys
    }
}

struct Hello {
    version: u16,
    chain_id: Vec<u8>,
    replica: u32,
}

fn encode_hello(chain_id: &str, replica: u32, nonce: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 2 + 1 + chain_id.len() + 4 + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&HANDSHAKE_VERSION.to_be_bytes());
    // The chain id length was checked by `ValidatorSet::new`.
    out.push(chain_id.len() as u8);
    out.extend_from_slice(chain_id.as_bytes());
    out.extend_from_slice(&replica.to_be_bytes());
    out.extend_from_slice(nonce);
    out
}

fn decode_hello(bytes: &[u8]) -> Result<Hello, NetError> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or(NetError::MalformedHandshake("magic"))?;
    let (version, rest) = rest
        .split_first_chunk::<2>()
        .ok_or(NetError::MalformedHandshake("version"))?;
    let version = u16::from_be_bytes(*version);
    if version != HANDSHAKE_VERSION {
        return Err(NetError::UnsupportedVersion(version));
    }
    let (&chain_len, rest) = rest
        .split_first()
        .ok_or(NetError::MalformedHandshake("chain_id length"))?;
    let chain_len = chain_len as usize;
    if chain_len == 0 || chain_len > MAX_CHAIN_ID || rest.len() < chain_len {
        return Err(NetError::MalformedHandshake("chain_id"));
    }
    let (chain_id, rest) = rest.split_at(chain_len);
    let (replica, rest) = rest
        .split_first_chunk::<4>()
        .ok_or(NetError::MalformedHandshake("replica id"))?;
    if rest.len() != 32 {
        return Err(NetError::MalformedHandshake("nonce"));
    }
    Ok(Hello {
        version,
        chain_id: chain_id.to_vec(),
        replica: u32::from_be_bytes(*replica),
    })
}

fn transcript(role: u8, dialer_hello: &[u8], listener_hello: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 1 + dialer_hello.len() + listener_hello.len());
    m.extend_from_slice(DOMAIN);
    m.push(role);
    m.extend_from_slice(dialer_hello);
    m.extend_from_slice(listener_hello);
    m
}

/// Checks a peer's hello against the validator set and returns the peer's replica id.
fn check_hello(bytes: &[u8], me: &Identity, set: &ValidatorSet) -> Result<u32, NetError> {
    let hello = decode_hello(bytes)?;
    debug_assert_eq!(hello.version, HANDSHAKE_VERSION);
    if hello.chain_id != set.chain_id.as_bytes() {
        return Err(NetError::WrongChain);
    }
    if hello.replica == me.id || set.key(hello.replica).is_none() {
        return Err(NetError::UnknownReplica(hello.replica));
    }
    Ok(hello.replica)
}

async fn read_handshake_frame<S: AsyncRead + Unpin>(s: &mut S) -> Result<Vec<u8>, NetError> {
    read_frame(s, MAX_HANDSHAKE_FRAME)
        .await?
        .ok_or(NetError::MalformedHandshake(
            "connection closed during handshake",
        ))
}

async fn send_handshake_frame<S: AsyncWrite + Unpin>(s: &mut S, b: &[u8]) -> Result<(), NetError> {
    write_frame(s, b, MAX_HANDSHAKE_FRAME).await?;
    s.flush().await?;
    Ok(())
}

fn verify_peer(set: &ValidatorSet, peer: u32, msg: &[u8], sig: &[u8]) -> Result<(), NetError> {
    let sig = Signature::from_slice(sig).map_err(|_| NetError::MalformedHandshake("signature"))?;
    let key = set.key(peer).ok_or(NetError::UnknownReplica(peer))?;
    key.verify_strict(msg, &sig)
        .map_err(|_| NetError::BadSignature(peer))
}

/// Runs the dialer's side on a fresh connection to the address of replica `expected`.
pub async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    me: &Identity,
    set: &ValidatorSet,
    expected: u32,
) -> Result<(), NetError> {
    let mut nonce = [0u8; 32];
    OsRng.fill_bytes(&mut nonce);
    let mine = encode_hello(&set.chain_id, me.id, &nonce);
    send_handshake_frame(stream, &mine).await?;
    let theirs = read_handshake_frame(stream).await?;
    let peer = check_hello(&theirs, me, set)?;
    if peer != expected {
        return Err(NetError::UnexpectedReplica {
            expected,
            got: peer,
        });
    }
    let sig = me.key.sign(&transcript(ROLE_DIALER, &mine, &theirs));
    send_handshake_frame(stream, &sig.to_bytes()).await?;
    let peer_sig = read_handshake_frame(stream).await?;
    verify_peer(
        set,
        peer,
        &transcript(ROLE_LISTENER, &mine, &theirs),
        &peer_sig,
    )
}

/// Runs the listener's side on an accepted connection; returns the authenticated peer's id.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    me: &Identity,
    set: &ValidatorSet,
) -> Result<u32, NetError> {
    let mut nonce = [0u8; 32];
    OsRng.fill_bytes(&mut nonce);
    let mine = encode_hello(&set.chain_id, me.id, &nonce);
    send_handshake_frame(stream, &mine).await?;
    let theirs = read_handshake_frame(stream).await?;
    let peer = check_hello(&theirs, me, set)?;
    let peer_sig = read_handshake_frame(stream).await?;
    verify_peer(
        set,
        peer,
        &transcript(ROLE_DIALER, &theirs, &mine),
        &peer_sig,
    )?;
    let sig = me.key.sign(&transcript(ROLE_LISTENER, &theirs, &mine));
    send_handshake_frame(stream, &sig.to_bytes()).await?;
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> SigningKey {
        SigningKey::from_bytes(&[i + 1; 32])
    }

    fn set(n: u8, chain: &str) -> ValidatorSet {
        ValidatorSet::new(chain, (0..n).map(|i| key(i).verifying_key()).collect()).unwrap()
    }

    async fn run(
        dialer: Identity,
        dset: ValidatorSet,
        expected: u32,
        listener: Identity,
        lset: ValidatorSet,
    ) -> (Result<(), NetError>, Result<u32, NetError>) {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let d = tokio::spawn(async move { dial(&mut a, &dialer, &dset, expected).await });
        let l = accept(&mut b, &listener, &lset).await;
        drop(b);
        (d.await.unwrap(), l)
    }

    #[tokio::test]
    async fn honest_peers_authenticate_each_other() {
        let (d, l) = run(
            Identity::new(0, key(0)),
            set(4, "c"),
            2,
            Identity::new(2, key(2)),
            set(4, "c"),
        )
        .await;
        d.unwrap();
        assert_eq!(l.unwrap(), 0);
    }

    #[tokio::test]
    async fn wrong_key_is_refused() {
        // Replica 1's slot, but signed with a key the set does not hold for it.
        let (d, l) = run(
            Identity::new(1, key(9)),
            set(4, "c"),
            3,
            Identity::new(3, key(3)),
            set(4, "c"),
        )
        .await;
        assert!(matches!(l, Err(NetError::BadSignature(1))), "{l:?}");
        assert!(d.is_err());
        // And a listener with the wrong key is refused by the dialer.
        let (d, _l) = run(
            Identity::new(0, key(0)),
            set(4, "c"),
            3,
            Identity::new(3, key(8)),
            set(4, "c"),
        )
        .await;
        assert!(matches!(d, Err(NetError::BadSignature(3))), "{d:?}");
    }

    #[tokio::test]
    async fn wrong_chain_unknown_id_and_unexpected_peer_are_refused() {
        let (_d, l) = run(
            Identity::new(0, key(0)),
            set(4, "other"),
            1,
            Identity::new(1, key(1)),
            set(4, "c"),
        )
        .await;
        assert!(matches!(l, Err(NetError::WrongChain)), "{l:?}");
        let (_d, l) = run(
            Identity::new(7, key(7)),
            set(8, "c"),
            1,
            Identity::new(1, key(1)),
            set(4, "c"),
        )
        .await;
        assert!(matches!(l, Err(NetError::UnknownReplica(7))), "{l:?}");
        let (d, _l) = run(
            Identity::new(0, key(0)),
            set(4, "c"),
            2,
            Identity::new(1, key(1)),
            set(4, "c"),
        )
        .await;
        assert!(
            matches!(
                d,
                Err(NetError::UnexpectedReplica {
                    expected: 2,
                    got: 1
                })
            ),
            "{d:?}"
        );
        // A peer claiming this node's own id is refused too.
        let (_d, l) = run(
            Identity::new(1, key(1)),
            set(4, "c"),
            1,
            Identity::new(1, key(1)),
            set(4, "c"),
        )
        .await;
        assert!(matches!(l, Err(NetError::UnknownReplica(1))), "{l:?}");
    }

    #[tokio::test]
    async fn a_recorded_signature_does_not_replay() {
        // Record an honest dialer's hello and signature, then replay them to a new listener:
        // the listener's fresh nonce is not in the recorded transcript.
        let dset = set(4, "c");
        let dialer = Identity::new(0, key(0));
        let (mut a, mut b) = tokio::io::duplex(4096);
        let l = tokio::spawn(async move {
            let me = Identity::new(1, key(1));
            accept(&mut b, &me, &set(4, "c")).await
        });
        dial(&mut a, &dialer, &dset, 1).await.unwrap();
        l.await.unwrap().unwrap();
        // Capture: re-run the dialer by hand to get its hello and signature for a known listener hello.
        let listener_hello = encode_hello("c", 1, &[5u8; 32]);
        let dialer_hello = encode_hello("c", 0, &[6u8; 32]);
        let sig = dialer
            .key
            .sign(&transcript(ROLE_DIALER, &dialer_hello, &listener_hello));

        let (mut a, mut b) = tokio::io::duplex(4096);
        let l = tokio::spawn(async move {
            let me = Identity::new(1, key(1));
            accept(&mut b, &me, &set(4, "c")).await
        });
        let _their_hello = read_handshake_frame(&mut a).await.unwrap();
        send_handshake_frame(&mut a, &dialer_hello).await.unwrap();
        send_handshake_frame(&mut a, &sig.to_bytes()).await.unwrap();
        assert!(matches!(l.await.unwrap(), Err(NetError::BadSignature(0))));
    }

    #[test]
    fn hello_decoding_refuses_garbage() {
        assert!(matches!(
            decode_hello(b"nope"),
            Err(NetError::MalformedHandshake("magic"))
        ));
        let mut h = encode_hello("c", 1, &[0; 32]);
        h[5] = 9;
        assert!(matches!(
            decode_hello(&h),
            Err(NetError::UnsupportedVersion(9))
        ));
        let h = encode_hello("c", 1, &[0; 32]);
        for cut in 0..h.len() {
            assert!(decode_hello(&h[..cut]).is_err(), "truncated at {cut}");
        }
        let mut long = h.clone();
        long.push(0);
        assert!(decode_hello(&long).is_err());
    }

    #[test]
    fn identity_debug_redacts_the_key() {
        let s = format!("{:?}", Identity::new(0, key(0)));
        assert!(s.contains("redacted") && !s.contains(&hex::encode([1u8; 32])));
    }
}
