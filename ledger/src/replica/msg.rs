//! Wire messages between replicas: a versioned, bounded envelope.
//!
//! ```text
//! wire     = version:u8 (= 1) || postcard(Envelope)
//! Envelope = { chain_id, epoch, from, body, sig }
//! ```
//! The signature covers, for votes, [`vote_bytes`]; for checkpoints, [`checkpoint_bytes`]; for
//! every other body, `"ehr-ledger/msg/v1" || chain || epoch || from || H(postcard(body))`,
//! where a view change is hashed with its batches stripped (they are checked against the
//! digests its prepared certificates sign).
//! Decoding refuses inputs over the configured size before parsing, refuses trailing bytes,
//! and cannot allocate more than a small multiple of the input's length.

use serde::{Deserialize, Serialize};
use sha3::{Digest, Sha3_256};

use crate::app::Hash;
use crate::block::{
    CheckpointCert, CommittedBlock, Sig, VoteKind, batch_digest, checkpoint_bytes, vote_bytes,
};
use crate::crypto::{ReplicaId, Signer};
use crate::error::LedgerError;

/// The wire version this crate reads and writes.
pub const WIRE_VERSION: u8 = 1;

/// A pre-prepare together with 2f matching prepares: proof that a digest was prepared at
/// (view, height). In a view change it carries the batch so the new primary can re-propose it;
/// inside a new-view the batch is stripped (the re-proposals carry it once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedCert {
    /// The view the digest was prepared in.
    pub view: u64,
    /// The height.
    pub height: u64,
    /// The proposal digest the signatures cover.
    pub digest: Hash,
    /// The batch, if carried (its digest must equal `digest`).
    #[serde(with = "crate::bytes_serde::opt_txs")]
    pub txs: Option<Vec<Vec<u8>>>,
    /// The primary's pre-prepare signature.
    pub primary_sig: Sig,
    /// 2f prepare signatures from distinct backups.
    pub prepares: Vec<(ReplicaId, Sig)>,
}

/// A replica's request to move to `new_view`, with its stable checkpoint and prepared set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewChange {
    /// The view being requested.
    pub new_view: u64,
    /// The sender's latest stable checkpoint.
    pub stable: CheckpointCert,
    /// The highest-view prepared certificate for every height above the checkpoint.
    pub prepared: Vec<PreparedCert>,
}

impl PreparedCert {
    /// The certificate without its batch.
    pub fn stripped(&self) -> PreparedCert {
        PreparedCert {
            view: self.view,
            height: self.height,
            digest: self.digest,
            txs: None,
            primary_sig: self.primary_sig,
            prepares: self.prepares.clone(),
        }
    }
}

impl ViewChange {
    /// The view change with every batch stripped: this is what its signature covers, so a
    /// new-view can carry it without the batches.
    pub fn stripped(&self) -> ViewChange {
        ViewChange {
            new_view: self.new_view,
            stable: self.stable.clone(),
            prepared: self.prepared.iter().map(PreparedCert::stripped).collect(),
        }
    }
}

/// A view change as signed by its sender (so a new-view can carry it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedViewChange {
    /// The sender.
    pub from: ReplicaId,
    /// The view change.
    pub vc: ViewChange,
    /// The sender's envelope signature over `Body::ViewChange(vc)`.
    pub sig: Sig,
}

/// One re-proposal in a new-view: the batch and the new primary's pre-prepare signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reproposal {
    /// The height.
    pub height: u64,
    /// The batch (empty for a null block).
    #[serde(with = "crate::bytes_serde::txs")]
    pub txs: Vec<Vec<u8>>,
    /// The new primary's pre-prepare signature for (view, height, digest).
    pub sig: Sig,
}

/// The new primary's announcement of a view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewView {
    /// The view.
    pub view: u64,
    /// 2f+1 signed view changes for `view`.
    pub view_changes: Vec<SignedViewChange>,
    /// The re-proposals every backup recomputes from `view_changes` and checks.
    pub proposals: Vec<Reproposal>,
}

/// A state-transfer answer: optionally a stable checkpoint with its snapshot, then certified
/// blocks after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateResponse {
    /// A stable checkpoint (certificate, header at its height, application snapshot).
    pub checkpoint: Option<(CheckpointCert, crate::block::BlockHeader, Vec<u8>)>,
    /// Consecutive committed blocks after the checkpoint (or after the requester's height).
    pub blocks: Vec<CommittedBlock>,
}

/// The body of a replica message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Client transactions forwarded to the primary.
    Forward {
        /// The transactions.
        #[serde(with = "crate::bytes_serde::txs")]
        txs: Vec<Vec<u8>>,
    },
    /// The primary's proposal of a batch at (view, height).
    PrePrepare {
        /// The view.
        view: u64,
        /// The height.
        height: u64,
        /// The batch.
        #[serde(with = "crate::bytes_serde::txs")]
        txs: Vec<Vec<u8>>,
    },
    /// A backup's prepare vote.
    Prepare {
        /// The view.
        view: u64,
        /// The height.
        height: u64,
        /// The proposal digest.
        digest: Hash,
    },
    /// A commit vote.
    Commit {
        /// The view.
        view: u64,
        /// The height.
        height: u64,
        /// The proposal digest.
        digest: Hash,
    },
    /// A checkpoint vote.
    Checkpoint {
        /// The checkpoint height.
        height: u64,
        /// The block hash at that height.
        block_hash: Hash,
        /// The state root after that height.
        state_root: Hash,
    },
    /// A view change.
    ViewChange(ViewChange),
    /// A new view.
    NewView(NewView),
    /// A request for the new-view message of a view.
    FetchNewView {
        /// The view.
        view: u64,
    },
    /// A request for state after height `have`.
    StateRequest {
        /// The requester's last executed height.
        have: u64,
        /// The requester's last stable checkpoint.
        low: u64,
        /// The requester's view.
        view: u64,
        /// Whether the requester works in that view (false while it changes view).
        active: bool,
    },
    /// A stable checkpoint certificate, for a replica that executed that height but missed
    /// the votes (certificates are transferable).
    StableCheckpoint(CheckpointCert),
    /// A state-transfer answer.
    StateResponse(StateResponse),
}

impl Body {
    /// A short name for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Body::Forward { .. } => "forward",
            Body::PrePrepare { .. } => "pre-prepare",
            Body::Prepare { .. } => "prepare",
            Body::Commit { .. } => "commit",
            Body::Checkpoint { .. } => "checkpoint",
            Body::ViewChange(_) => "view-change",
            Body::NewView(_) => "new-view",
            Body::FetchNewView { .. } => "fetch-new-view",
            Body::StateRequest { .. } => "state-request",
            Body::StableCheckpoint(_) => "stable-checkpoint",
            Body::StateResponse(_) => "state-response",
        }
    }
}

/// A signed message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The chain id.
    pub chain_id: String,
    /// The validator-set epoch.
    pub epoch: u64,
    /// The signer.
    pub from: ReplicaId,
    /// The content.
    pub body: Body,
    /// The signer's signature (see the module docs for what it covers).
    pub sig: Sig,
}

/// The bytes a body's signature covers (the digest of a pre-prepare is computed here, from its
/// transactions, if `digest` is `None`).
pub fn signing_bytes(
    chain_id: &str,
    epoch: u64,
    from: ReplicaId,
    body: &Body,
    digest: Option<Hash>,
) -> Vec<u8> {
    match body {
        Body::PrePrepare { view, height, txs } => {
            let d = digest.unwrap_or_else(|| batch_digest(chain_id, epoch, *height, txs));
            vote_bytes(chain_id, epoch, VoteKind::PrePrepare, *view, *height, &d)
        }
        Body::Prepare {
            view,
            height,
            digest,
        } => vote_bytes(chain_id, epoch, VoteKind::Prepare, *view, *height, digest),
        Body::Commit {
            view,
            height,
            digest,
        } => vote_bytes(chain_id, epoch, VoteKind::Commit, *view, *height, digest),
        Body::Checkpoint {
            height,
            block_hash,
            state_root,
        } => checkpoint_bytes(chain_id, epoch, *height, block_hash, state_root),
        other => {
            let stripped;
            let other = match other {
                Body::ViewChange(vc) if vc.prepared.iter().any(|c| c.txs.is_some()) => {
                    stripped = Body::ViewChange(vc.stripped());
                    &stripped
                }
                o => o,
            };
            let encoded = postcard::to_stdvec(other).expect("invariant: message body encodes");
            let mut out = Vec::with_capacity(96 + chain_id.len());
            out.extend_from_slice(b"ehr-ledger/msg/v1\0");
            out.extend_from_slice(&(chain_id.len() as u32).to_be_bytes());
            out.extend_from_slice(chain_id.as_bytes());
            out.extend_from_slice(&epoch.to_be_bytes());
            out.extend_from_slice(&from.to_be_bytes());
            out.extend_from_slice(&Sha3_256::digest(&encoded));
            out
        }
    }
}

/// Signs and encodes a message.
pub fn encode(
    chain_id: &str,
    epoch: u64,
    from: ReplicaId,
    body: Body,
    digest: Option<Hash>,
    signer: &dyn Signer,
) -> (Vec<u8>, Sig) {
    let sig = Sig(signer.sign(&signing_bytes(chain_id, epoch, from, &body, digest)));
    let env = Envelope {
        chain_id: chain_id.to_owned(),
        epoch,
        from,
        body,
        sig,
    };
    (encode_envelope(&env), sig)
}

/// Encodes an already signed envelope.
pub fn encode_envelope(env: &Envelope) -> Vec<u8> {
    let mut out = vec![WIRE_VERSION];
    out.extend_from_slice(&postcard::to_stdvec(env).expect("invariant: envelope encodes"));
    out
}

/// Decodes a message without checking its signature. Hostile bytes give an `Err`.
pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<Envelope, LedgerError> {
    if bytes.len() > max_bytes {
        return Err(LedgerError::Malformed(format!(
            "message of {} bytes exceeds the {max_bytes}-byte limit",
            bytes.len()
        )));
    }
    let (&version, rest) = bytes
        .split_first()
        .ok_or_else(|| LedgerError::Malformed("empty message".into()))?;
    if version != WIRE_VERSION {
        return Err(LedgerError::Malformed(format!(
            "unsupported wire version {version}"
        )));
    }
    let (env, tail) = postcard::take_from_bytes::<Envelope>(rest)
        .map_err(|e| LedgerError::Malformed(format!("envelope: {e}")))?;
    if !tail.is_empty() {
        return Err(LedgerError::Malformed(format!(
            "{} trailing bytes after the envelope",
            tail.len()
        )));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::InsecureTestSigner;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_truncation() {
        let s = InsecureTestSigner::new(2);
        let body = Body::PrePrepare {
            view: 1,
            height: 2,
            txs: vec![vec![1, 2, 3], vec![]],
        };
        let (bytes, _) = encode("c", 0, 2, body.clone(), None, &s);
        let env = decode(&bytes, 1 << 20).unwrap();
        assert_eq!(env.body, body);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], 1 << 20).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode(&long, 1 << 20).is_err());
        assert!(decode(&bytes, 4).is_err());
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert!(decode(&v2, 1 << 20).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, 1 << 16);
            let mut v = vec![WIRE_VERSION];
            v.extend_from_slice(&bytes);
            let _ = decode(&v, 1 << 16);
        }

        #[test]
        fn huge_length_prefixes_do_not_allocate(n in 1u64..u64::MAX) {
            // A vector-of-transactions length claiming billions of entries must fail on the
            // short input, not try to reserve them.
            let mut v = vec![WIRE_VERSION, 1, b'c', 0, 0, 1];
            let mut x = n;
            loop {
                let b = (x & 0x7f) as u8;
                x >>= 7;
                if x == 0 { v.push(b); break; }
                v.push(b | 0x80);
            }
            prop_assert!(decode(&v, 1 << 16).is_err());
        }
    }
}
