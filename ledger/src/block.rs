//! Blocks, the bytes votes sign, commit and checkpoint certificates, and light-client inclusion
//! proofs.
//!
//! Two hashes identify a height (see `ledger/DESIGN.md` for why):
//! - the **proposal digest** `D = H("ehr-ledger/proposal/v1" || chain || epoch || height ||
//!   tx_root || tx_count)` is what PBFT agrees on and what commit votes sign;
//! - the **block hash** `H("ehr-ledger/header/v1" || header)` of the executed header, which
//!   adds the previous block hash and the state root after the block, and which checkpoint votes
//!   sign every K heights.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha3::{Digest, Sha3_256};

use crate::app::Hash;
use crate::crypto::{ReplicaId, Verifier};
use crate::error::LedgerError;
use crate::merkle::{self, MerkleProof};

/// A 64-byte signature, encoded as a length-prefixed byte string.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sig(pub [u8; 64]);

impl fmt::Debug for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sig({}..)", hex::encode(&self.0[..6]))
    }
}

impl Serialize for Sig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Sig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Sig, E> {
                let a: [u8; 64] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(Sig(a))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// What a consensus vote is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum VoteKind {
    /// The primary's proposal of a digest at (view, height).
    PrePrepare,
    /// A backup's acceptance of the proposal.
    Prepare,
    /// A replica's statement that the digest is prepared (2f+1 of them commit it).
    Commit,
}

impl VoteKind {
    fn tag(self) -> u8 {
        match self {
            VoteKind::PrePrepare => 1,
            VoteKind::Prepare => 2,
            VoteKind::Commit => 3,
        }
    }
}

fn put_chain(out: &mut Vec<u8>, chain_id: &str, epoch: u64) {
    out.extend_from_slice(&(chain_id.len() as u32).to_be_bytes());
    out.extend_from_slice(chain_id.as_bytes());
    out.extend_from_slice(&epoch.to_be_bytes());
}

/// The exact bytes a vote signature covers: chain id, epoch, kind, view, height and digest.
pub fn vote_bytes(
    chain_id: &str,
    epoch: u64,
    kind: VoteKind,
    view: u64,
    height: u64,
    digest: &Hash,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + chain_id.len());
    out.extend_from_slice(b"ehr-ledger/vote/v1\0");
    put_chain(&mut out, chain_id, epoch);
    out.push(kind.tag());
    out.extend_from_slice(&view.to_be_bytes());
    out.extend_from_slice(&height.to_be_bytes());
    out.extend_from_slice(digest);
    out
}

/// The exact bytes a checkpoint signature covers.
pub fn checkpoint_bytes(
    chain_id: &str,
    epoch: u64,
    height: u64,
    block_hash: &Hash,
    state_root: &Hash,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + chain_id.len());
    out.extend_from_slice(b"ehr-ledger/checkpoint/v1\0");
    put_chain(&mut out, chain_id, epoch);
    out.extend_from_slice(&height.to_be_bytes());
    out.extend_from_slice(block_hash);
    out.extend_from_slice(state_root);
    out
}

/// The proposal digest of a batch at `height` (see the module docs).
pub fn proposal_digest(
    chain_id: &str,
    epoch: u64,
    height: u64,
    tx_root: &Hash,
    tx_count: u64,
) -> Hash {
    let mut h = Sha3_256::new();
    h.update(b"ehr-ledger/proposal/v1\0");
    let mut buf = Vec::with_capacity(64);
    put_chain(&mut buf, chain_id, epoch);
    h.update(&buf);
    h.update(height.to_be_bytes());
    h.update(tx_root);
    h.update(tx_count.to_be_bytes());
    h.finalize().into()
}

/// The proposal digest of the transactions `txs` at `height`.
pub fn batch_digest(chain_id: &str, epoch: u64, height: u64, txs: &[Vec<u8>]) -> Hash {
    proposal_digest(
        chain_id,
        epoch,
        height,
        &merkle::root(txs),
        txs.len() as u64,
    )
}

/// The hash that stands in for "the block before height 1".
pub fn genesis_hash(chain_id: &str, epoch: u64, genesis_state_root: &Hash) -> Hash {
    let mut h = Sha3_256::new();
    h.update(b"ehr-ledger/genesis/v1\0");
    let mut buf = Vec::new();
    put_chain(&mut buf, chain_id, epoch);
    h.update(&buf);
    h.update(genesis_state_root);
    h.finalize().into()
}

/// The header of an executed block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    /// The chain this block belongs to.
    pub chain_id: String,
    /// The validator-set epoch.
    pub epoch: u64,
    /// The height (= PBFT sequence number), from 1.
    pub height: u64,
    /// Hash of the previous block's header (the genesis hash at height 1).
    pub prev_hash: Hash,
    /// Merkle root of the transactions (see [`crate::merkle`]).
    pub tx_root: Hash,
    /// Number of transactions.
    pub tx_count: u64,
    /// The application's state root after executing this block.
    pub state_root: Hash,
}

impl BlockHeader {
    /// The block hash.
    pub fn hash(&self) -> Hash {
        let mut h = Sha3_256::new();
        h.update(b"ehr-ledger/header/v1\0");
        h.update(postcard::to_stdvec(self).expect("invariant: header encodes"));
        h.finalize().into()
    }

    /// The proposal digest this header's transactions were agreed under.
    pub fn proposal_digest(&self) -> Hash {
        proposal_digest(
            &self.chain_id,
            self.epoch,
            self.height,
            &self.tx_root,
            self.tx_count,
        )
    }
}

/// Checks that `sigs` holds at least `quorum` valid signatures over `msg` from distinct known
/// validators. Duplicate or unknown signers and bad signatures are errors (a certificate is
/// produced by honest code and must be clean).
pub fn check_quorum(
    what: &'static str,
    sigs: &[(ReplicaId, Sig)],
    msg: &[u8],
    n: usize,
    quorum: usize,
    verifier: &dyn Verifier,
) -> Result<(), LedgerError> {
    if sigs.len() < quorum {
        return Err(LedgerError::InvalidCertificate(format!(
            "{what}: {} signatures, {quorum} required",
            sigs.len()
        )));
    }
    if sigs.len() > n {
        return Err(LedgerError::InvalidCertificate(format!(
            "{what}: more signatures than validators"
        )));
    }
    let mut seen = BTreeSet::new();
    for (who, sig) in sigs {
        if *who as usize >= n {
            return Err(LedgerError::InvalidCertificate(format!(
                "{what}: unknown signer {who}"
            )));
        }
        if !seen.insert(*who) {
            return Err(LedgerError::InvalidCertificate(format!(
                "{what}: duplicate signer {who}"
            )));
        }
        if !verifier.verify(*who, msg, &sig.0) {
            return Err(LedgerError::InvalidCertificate(format!(
                "{what}: bad signature from {who}"
            )));
        }
    }
    Ok(())
}

/// 2f+1 commit votes for one (view, height, digest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitCert {
    /// The view the commit votes were cast in.
    pub view: u64,
    /// (signer, signature) over [`vote_bytes`] with [`VoteKind::Commit`].
    pub sigs: Vec<(ReplicaId, Sig)>,
}

impl CommitCert {
    /// Verifies the certificate for `header`'s proposal digest.
    pub fn verify(
        &self,
        header: &BlockHeader,
        n: usize,
        quorum: usize,
        verifier: &dyn Verifier,
    ) -> Result<(), LedgerError> {
        let msg = vote_bytes(
            &header.chain_id,
            header.epoch,
            VoteKind::Commit,
            self.view,
            header.height,
            &header.proposal_digest(),
        );
        check_quorum("commit certificate", &self.sigs, &msg, n, quorum, verifier)
    }
}

/// 2f+1 matching checkpoint votes: the state root and block hash at `height` are stable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointCert {
    /// The checkpoint height (0 for genesis, which needs no signatures).
    pub height: u64,
    /// The block hash at `height`.
    pub block_hash: Hash,
    /// The state root after `height`.
    pub state_root: Hash,
    /// (signer, signature) over [`checkpoint_bytes`].
    pub sigs: Vec<(ReplicaId, Sig)>,
}

impl CheckpointCert {
    /// The genesis checkpoint (height 0).
    pub fn genesis(genesis_hash: Hash, genesis_root: Hash) -> Self {
        Self {
            height: 0,
            block_hash: genesis_hash,
            state_root: genesis_root,
            sigs: Vec::new(),
        }
    }

    /// Verifies the signatures (height 0 is the genesis checkpoint and carries none).
    pub fn verify(
        &self,
        chain_id: &str,
        epoch: u64,
        n: usize,
        quorum: usize,
        verifier: &dyn Verifier,
    ) -> Result<(), LedgerError> {
        if self.height == 0 {
            return if self.sigs.is_empty() {
                Ok(())
            } else {
                Err(LedgerError::InvalidCertificate(
                    "genesis checkpoint carries signatures".into(),
                ))
            };
        }
        let msg = checkpoint_bytes(
            chain_id,
            epoch,
            self.height,
            &self.block_hash,
            &self.state_root,
        );
        check_quorum(
            "checkpoint certificate",
            &self.sigs,
            &msg,
            n,
            quorum,
            verifier,
        )
    }
}

/// An executed block with its transactions and commit certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedBlock {
    /// The executed header.
    pub header: BlockHeader,
    /// The transactions, in order.
    #[serde(with = "crate::bytes_serde::txs")]
    pub txs: Vec<Vec<u8>>,
    /// 2f+1 commit signatures over the header's proposal digest.
    pub cert: CommitCert,
}

impl CommittedBlock {
    /// Checks that the transactions match the header and the certificate is valid. (The
    /// `prev_hash` and `state_root` are certified by checkpoints, not by this certificate.)
    pub fn verify(
        &self,
        chain_id: &str,
        epoch: u64,
        n: usize,
        quorum: usize,
        verifier: &dyn Verifier,
    ) -> Result<(), LedgerError> {
        let h = &self.header;
        if h.chain_id != chain_id {
            return Err(LedgerError::WrongChain);
        }
        if h.epoch != epoch {
            return Err(LedgerError::WrongEpoch {
                got: h.epoch,
                want: epoch,
            });
        }
        if h.tx_count != self.txs.len() as u64 || h.tx_root != merkle::root(&self.txs) {
            return Err(LedgerError::InvalidCertificate(format!(
                "block {}: transactions do not match the header",
                h.height
            )));
        }
        self.cert.verify(h, n, quorum, verifier)
    }

    /// An inclusion proof for transaction `index`, or `None` if out of range.
    pub fn inclusion_proof(&self, index: usize) -> Option<InclusionProof> {
        self.inclusion_proof_in(&merkle::MerkleTree::new(&self.txs), index)
    }

    /// As [`Self::inclusion_proof`], with the block's tree built once by the caller
    /// (`MerkleTree::new(&block.txs)`) for proving many of its transactions.
    pub fn inclusion_proof_in(
        &self,
        tree: &merkle::MerkleTree,
        index: usize,
    ) -> Option<InclusionProof> {
        debug_assert_eq!(tree.len(), self.txs.len(), "the tree of this block");
        Some(InclusionProof {
            header: self.header.clone(),
            cert: self.cert.clone(),
            merkle: tree.prove(index)?,
        })
    }
}

/// Proof, checkable by a light client that holds only the validator keys, that a transaction
/// was committed at a height of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// The block header (its `tx_root`, height, chain and epoch are what the certificate binds).
    pub header: BlockHeader,
    /// The block's commit certificate.
    pub cert: CommitCert,
    /// The Merkle path from the transaction to `header.tx_root`.
    pub merkle: MerkleProof,
}

impl InclusionProof {
    /// Verifies that `tx` is committed at `self.header.height` of `chain_id`/`epoch` under the
    /// validator set behind `verifier` (`n` validators, certificates need `quorum`).
    pub fn verify(
        &self,
        chain_id: &str,
        epoch: u64,
        tx: &[u8],
        n: usize,
        quorum: usize,
        verifier: &dyn Verifier,
    ) -> Result<(), LedgerError> {
        if self.header.chain_id != chain_id {
            return Err(LedgerError::WrongChain);
        }
        if self.header.epoch != epoch {
            return Err(LedgerError::WrongEpoch {
                got: self.header.epoch,
                want: epoch,
            });
        }
        if self.merkle.leaf_count != self.header.tx_count
            || !self.merkle.verify(&self.header.tx_root, tx)
        {
            return Err(LedgerError::InvalidCertificate(
                "inclusion proof: Merkle path does not lead to the header's tx root".into(),
            ));
        }
        self.cert.verify(&self.header, n, quorum, verifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Ed25519Signer, Ed25519Verifier, Signer};

    fn keys() -> (Vec<Ed25519Signer>, Ed25519Verifier) {
        let s: Vec<_> = (0..4u8)
            .map(|i| Ed25519Signer::from_bytes(&[i + 1; 32]))
            .collect();
        let pks: Vec<_> = s.iter().map(|k| k.public_key()).collect();
        (s, Ed25519Verifier::new(&pks))
    }

    fn block(signers: &[Ed25519Signer], who: &[u32]) -> CommittedBlock {
        let txs = vec![b"a".to_vec(), b"bb".to_vec(), b"ccc".to_vec()];
        let header = BlockHeader {
            chain_id: "test-chain".into(),
            epoch: 1,
            height: 7,
            prev_hash: [1; 32],
            tx_root: merkle::root(&txs),
            tx_count: 3,
            state_root: [2; 32],
        };
        let msg = vote_bytes(
            "test-chain",
            1,
            VoteKind::Commit,
            3,
            7,
            &header.proposal_digest(),
        );
        let sigs = who
            .iter()
            .map(|&i| (i, Sig(signers[i as usize].sign(&msg))))
            .collect();
        CommittedBlock {
            header,
            txs,
            cert: CommitCert { view: 3, sigs },
        }
    }

    #[test]
    fn certificates_accept_quorum_and_reject_forgeries() {
        let (s, v) = keys();
        let b = block(&s, &[0, 2, 3]);
        b.verify("test-chain", 1, 4, 3, &v).unwrap();
        assert!(
            block(&s, &[0, 2])
                .verify("test-chain", 1, 4, 3, &v)
                .is_err(),
            "too few"
        );
        let mut dup = block(&s, &[0, 2, 3]);
        dup.cert.sigs[2] = dup.cert.sigs[0];
        let e = dup.verify("test-chain", 1, 4, 3, &v).unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
        let mut bad = block(&s, &[0, 2, 3]);
        bad.cert.sigs[1].1.0[0] ^= 1;
        assert!(
            bad.verify("test-chain", 1, 4, 3, &v)
                .unwrap_err()
                .to_string()
                .contains("bad signature")
        );
        let mut unknown = block(&s, &[0, 2, 3]);
        unknown.cert.sigs[1].0 = 9;
        assert!(unknown.verify("test-chain", 1, 4, 3, &v).is_err());
        // Wrong chain id, height, epoch or view: the signatures no longer match.
        let mut other = block(&s, &[0, 1, 2]);
        other.header.chain_id = "other".into();
        assert!(matches!(
            other.verify("other", 1, 4, 3, &v),
            Err(LedgerError::InvalidCertificate(_))
        ));
        let mut h = block(&s, &[0, 1, 2]);
        h.header.height = 8;
        assert!(h.verify("test-chain", 1, 4, 3, &v).is_err());
        let mut vw = block(&s, &[0, 1, 2]);
        vw.cert.view = 4;
        assert!(vw.verify("test-chain", 1, 4, 3, &v).is_err());
        let mut e = block(&s, &[0, 1, 2]);
        e.header.epoch = 2;
        assert!(e.verify("test-chain", 2, 4, 3, &v).is_err());
        let mut txs = block(&s, &[0, 1, 2]);
        txs.txs[0] = b"x".to_vec();
        assert!(txs.verify("test-chain", 1, 4, 3, &v).is_err());
    }

    #[test]
    fn inclusion_proofs_for_light_clients() {
        let (s, v) = keys();
        let b = block(&s, &[1, 2, 3]);
        for i in 0..3 {
            let p = b.inclusion_proof(i).unwrap();
            p.verify("test-chain", 1, &b.txs[i], 4, 3, &v).unwrap();
            assert!(p.verify("test-chain", 1, b"zz", 4, 3, &v).is_err());
            assert!(p.verify("other-chain", 1, &b.txs[i], 4, 3, &v).is_err());
            // A round trip through the wire keeps it valid.
            let bytes = postcard::to_stdvec(&p).unwrap();
            let q: InclusionProof = postcard::from_bytes(&bytes).unwrap();
            q.verify("test-chain", 1, &b.txs[i], 4, 3, &v).unwrap();
        }
        let mut p = b.inclusion_proof(0).unwrap();
        p.header.tx_root = [0; 32];
        assert!(p.verify("test-chain", 1, &b.txs[0], 4, 3, &v).is_err());
        assert!(b.inclusion_proof(3).is_none());
    }

    #[test]
    fn checkpoint_certificates() {
        let (s, v) = keys();
        let msg = checkpoint_bytes("c", 0, 128, &[3; 32], &[4; 32]);
        let sigs: Vec<_> = (0..3u32)
            .map(|i| (i, Sig(s[i as usize].sign(&msg))))
            .collect();
        let cert = CheckpointCert {
            height: 128,
            block_hash: [3; 32],
            state_root: [4; 32],
            sigs,
        };
        cert.verify("c", 0, 4, 3, &v).unwrap();
        assert!(cert.verify("d", 0, 4, 3, &v).is_err());
        let mut wrong = cert.clone();
        wrong.state_root = [5; 32];
        assert!(wrong.verify("c", 0, 4, 3, &v).is_err());
        let mut g = CheckpointCert::genesis([0; 32], [0; 32]);
        g.verify("c", 0, 4, 3, &v).unwrap();
        g.sigs.push((0, Sig([0; 64])));
        assert!(g.verify("c", 0, 4, 3, &v).is_err());
    }
}
