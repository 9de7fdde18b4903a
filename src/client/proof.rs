//! Checking a record's ledger proof as a light client: with the validator keys of the
//! consortium file only, never trusting the node that served the proof.
//!
//! What is verified: the transaction decodes, is signed by its sender and registers exactly
//! the requested CID on this chain; its Merkle path leads to the block header's transaction
//! root; and the header's proposal digest carries a commit certificate of at least `n - f`
//! distinct validators' valid signatures.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ehr_ledger::block::InclusionProof;
use ehr_ledger::tx::{SignedTx, TxKind};
use serde::Deserialize;

use super::consortium::Consortium;
use super::error::ClientError;

/// The node's answer to `GET /v1/records/{cid}/proof`.
#[derive(Debug, Clone, Deserialize)]
pub struct ProofAnswer {
    /// The record's CID (text).
    pub cid: String,
    /// The height of the block holding the registering transaction.
    pub height: u64,
    /// The transaction's position in the block.
    pub index: u64,
    /// The `SignedTx` bytes, base64url.
    pub tx: String,
    /// The postcard-encoded [`InclusionProof`], base64url.
    pub proof: String,
}

/// What a verified proof establishes (only what the commit certificate and the transaction's
/// signature cover: not the header's previous hash or state root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedInclusion {
    /// The chain.
    pub chain_id: String,
    /// The block height.
    pub height: u64,
    /// The transaction's position in the block, and the block's transaction count.
    pub index: u64,
    /// Transactions in the block.
    pub tx_count: u64,
    /// The transaction id (SHA3-256 of its bytes), hex.
    pub tx_id: String,
    /// The registering participant (the record's owner), hex.
    pub owner: String,
    /// The capsule the record was registered under, hex.
    pub capsule: String,
    /// The ciphertext size registered.
    pub size: u64,
    /// The view of the commit certificate.
    pub view: u64,
    /// The validators whose commit signatures verified.
    pub signers: Vec<u32>,
    /// Signatures required.
    pub quorum: usize,
}

/// Verifies `answer` for the record whose binary CID is `cid`.
pub fn verify_record_proof(
    consortium: &Consortium,
    cid: &[u8],
    answer: &ProofAnswer,
) -> Result<VerifiedInclusion, ClientError> {
    let bad =
        |what: &str, reason: String| ClientError::crypto(format!("ledger proof: {what}"), reason);
    let tx_bytes = B64
        .decode(answer.tx.trim())
        .map_err(|_| ClientError::bad_response("proof.tx", "not base64url"))?;
    let proof_bytes = B64
        .decode(answer.proof.trim())
        .map_err(|_| ClientError::bad_response("proof.proof", "not base64url"))?;
    let tx = SignedTx::decode(&tx_bytes)
        .map_err(|e| bad("transaction", format!("does not decode: {}", e.reason)))?;
    tx.verify_signature()
        .map_err(|e| bad("transaction signature", e.reason))?;
    if tx.body.chain_id != consortium.chain_id {
        return Err(bad(
            "transaction",
            format!(
                "is for chain `{}`, not `{}`",
                tx.body.chain_id, consortium.chain_id
            ),
        ));
    }
    let (capsule, size) = match &tx.body.kind {
        TxKind::RegisterRecord {
            cid: tx_cid,
            capsule,
            size,
            ..
        } if tx_cid.0 == cid => (capsule, size),
        TxKind::RegisterRecords {
            capsule, records, ..
        } => match records.iter().find(|r| r.cid.0 == cid) {
            Some(r) => (capsule, &r.size),
            None => return Err(bad("transaction", "registers other CIDs".into())),
        },
        TxKind::RegisterRecord { .. } => {
            return Err(bad("transaction", "registers another CID".into()));
        }
        other => {
            return Err(bad(
                "transaction",
                format!("is a {}, not a RegisterRecord(s) transaction", other.name()),
            ));
        }
    };
    let (proof, rest): (InclusionProof, &[u8]) = postcard::take_from_bytes(&proof_bytes)
        .map_err(|e| ClientError::bad_response("proof.proof", format!("does not decode: {e}")))?;
    if !rest.is_empty() {
        return Err(ClientError::bad_response(
            "proof.proof",
            "trailing bytes after the proof",
        ));
    }
    let verifier = consortium.verifier();
    proof
        .verify(
            &consortium.chain_id,
            consortium.epoch,
            &tx_bytes,
            consortium.n(),
            consortium.quorum(),
            &verifier,
        )
        .map_err(|e| bad("certificate or Merkle path", e.to_string()))?;
    if proof.header.height != answer.height || proof.merkle.index != answer.index {
        return Err(bad(
            "position",
            format!(
                "the node says height {} index {}, the proof says height {} index {}",
                answer.height, answer.index, proof.header.height, proof.merkle.index
            ),
        ));
    }
    let mut signers: Vec<u32> = proof.cert.sigs.iter().map(|(id, _)| *id).collect();
    signers.sort_unstable();
    Ok(VerifiedInclusion {
        chain_id: proof.header.chain_id.clone(),
        height: proof.header.height,
        index: proof.merkle.index,
        tx_count: proof.header.tx_count,
        tx_id: hex::encode(tx.id()),
        owner: tx.body.sender.to_string(),
        capsule: capsule.to_string(),
        size: *size,
        view: proof.cert.view,
        signers,
        quorum: consortium.quorum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer as _, SigningKey};
    use ehr_ledger::block::{BlockHeader, CommitCert, CommittedBlock, Sig, VoteKind, vote_bytes};
    use ehr_ledger::tx::{CapsuleId, Cid, ParticipantId, TxBody};
    use std::path::Path;

    fn register(hospital: &SigningKey, cid: &[u8], nonce: u64) -> Vec<u8> {
        TxBody::new(
            "ehr-test",
            ParticipantId(hospital.verifying_key().to_bytes()),
            nonce,
            TxKind::RegisterRecord {
                cid: Cid(cid.to_vec()),
                capsule: CapsuleId([9; 32]),
                epoch: 0,
                wrapped_key: vec![1; 40],
                search_labels: vec![[2; 16]],
                size: 1234,
                patient: None,
            },
        )
        .sign(hospital)
        .to_bytes()
    }

    /// A committed block of three registrations signed by validators `signers`.
    fn block(validators: &[SigningKey], signers: &[usize]) -> CommittedBlock {
        let hospital = SigningKey::from_bytes(&[42; 32]);
        let txs: Vec<Vec<u8>> = (0..3u8)
            .map(|i| register(&hospital, &[b'c', i], u64::from(i) + 1))
            .collect();
        block_of(validators, signers, txs)
    }

    fn block_of(validators: &[SigningKey], signers: &[usize], txs: Vec<Vec<u8>>) -> CommittedBlock {
        let header = BlockHeader {
            chain_id: "ehr-test".into(),
            epoch: 0,
            height: 17,
            prev_hash: [0; 32],
            tx_root: ehr_ledger::merkle::root(&txs),
            tx_count: txs.len() as u64,
            state_root: [5; 32],
        };
        let msg = vote_bytes(
            "ehr-test",
            0,
            VoteKind::Commit,
            2,
            17,
            &header.proposal_digest(),
        );
        let sigs = signers
            .iter()
            .map(|&i| (i as u32, Sig(validators[i].sign(&msg).to_bytes())))
            .collect();
        CommittedBlock {
            header,
            txs,
            cert: CommitCert { view: 2, sigs },
        }
    }

    fn answer(b: &CommittedBlock, index: usize) -> ProofAnswer {
        let p = b.inclusion_proof(index).unwrap();
        ProofAnswer {
            cid: "x".into(),
            height: b.header.height,
            index: index as u64,
            tx: B64.encode(&b.txs[index]),
            proof: B64.encode(postcard::to_stdvec(&p).unwrap()),
        }
    }

    fn consortium() -> (Consortium, Vec<SigningKey>) {
        let (json, keys, _) = super::super::consortium::tests::sample();
        let c = Consortium::from_json(Path::new("c"), &serde_json::to_vec(&json).unwrap()).unwrap();
        (c, keys)
    }

    #[test]
    fn a_certified_registration_verifies() {
        let (c, keys) = consortium();
        let b = block(&keys, &[0, 2, 3]);
        let v = verify_record_proof(&c, b"c\x01", &answer(&b, 1)).unwrap();
        assert_eq!(v.height, 17);
        assert_eq!(v.index, 1);
        assert_eq!(v.signers, vec![0, 2, 3]);
        assert_eq!(v.size, 1234);
        assert_eq!(v.capsule, hex::encode([9; 32]));
    }

    #[test]
    fn a_record_of_an_atomic_registration_verifies() {
        let (c, keys) = consortium();
        let hospital = SigningKey::from_bytes(&[42; 32]);
        let records = (0..3u8)
            .map(|i| ehr_ledger::tx::NewRecord {
                cid: Cid(vec![b'd', i]),
                wrapped_key: vec![1; 40],
                search_labels: vec![[i; 16]],
                size: 100 + u64::from(i),
                patient: None,
            })
            .collect();
        let many = TxBody::new(
            "ehr-test",
            ParticipantId(hospital.verifying_key().to_bytes()),
            2,
            TxKind::RegisterRecords {
                capsule: CapsuleId([9; 32]),
                epoch: 0,
                records,
            },
        )
        .sign(&hospital)
        .to_bytes();
        let b = block_of(&keys, &[0, 1, 3], vec![register(&hospital, b"c0", 1), many]);
        let v = verify_record_proof(&c, b"d\x02", &answer(&b, 1)).unwrap();
        assert_eq!((v.height, v.index, v.size), (17, 1, 102));
        let e = verify_record_proof(&c, b"d\x07", &answer(&b, 1)).unwrap_err();
        assert!(e.to_string().contains("other CIDs"), "{e}");
    }

    #[test]
    fn forged_or_mismatched_proofs_fail() {
        let (c, keys) = consortium();
        // Too few signatures.
        let b = block(&keys, &[0, 1]);
        assert!(verify_record_proof(&c, b"c\x01", &answer(&b, 1)).is_err());
        // Signed by keys that are not the consortium's.
        let strangers: Vec<SigningKey> = (10..14u8)
            .map(|i| SigningKey::from_bytes(&[i; 32]))
            .collect();
        let b = block(&strangers, &[0, 1, 2]);
        let e = verify_record_proof(&c, b"c\x01", &answer(&b, 1)).unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert!(e.to_string().contains("bad signature"), "{e}");

        let b = block(&keys, &[0, 1, 2]);
        // Another CID than asked for.
        assert!(verify_record_proof(&c, b"c\x02", &answer(&b, 1)).is_err());
        // The transaction swapped for another one of the block (Merkle path mismatch).
        let mut a = answer(&b, 1);
        a.tx = B64.encode(&b.txs[2]);
        assert!(verify_record_proof(&c, b"c\x02", &a).is_err());
        // A position that is not the proof's.
        let mut a = answer(&b, 1);
        a.height = 18;
        assert!(verify_record_proof(&c, b"c\x01", &a).is_err());
        // A flipped byte of the proof either fails or changes nothing that is reported as
        // verified (the header's previous hash and state root are certified by checkpoints,
        // not by the commit certificate, so they are not reported).
        let good = answer(&b, 1);
        let verified = verify_record_proof(&c, b"c\x01", &good).unwrap();
        let proof = B64.decode(&good.proof).unwrap();
        let mut failures = 0;
        for i in 0..proof.len() {
            let mut p = proof.clone();
            p[i] ^= 0x01;
            let mut a = good.clone();
            a.proof = B64.encode(&p);
            match verify_record_proof(&c, b"c\x01", &a) {
                Err(_) => failures += 1,
                Ok(v) => assert_eq!(v, verified, "proof byte {i}"),
            }
        }
        assert!(failures > proof.len() / 2, "{failures} of {}", proof.len());
        let tx = B64.decode(&good.tx).unwrap();
        for i in (0..tx.len()).step_by(5) {
            let mut t = tx.clone();
            t[i] ^= 0x80;
            let mut a = good.clone();
            a.tx = B64.encode(&t);
            assert!(
                verify_record_proof(&c, b"c\x01", &a).is_err(),
                "tx byte {i}"
            );
        }
        // Garbage.
        let mut a = good;
        a.proof = "!!".into();
        assert!(matches!(
            verify_record_proof(&c, b"c\x01", &a),
            Err(ClientError::BadResponse { .. })
        ));
    }
}
