//! Submitting transactions and waiting for their commit.
//!
//! [`Client::submit`] hands a signed transaction to one replica's driver and waits (up to a
//! timeout) for the replica's reply: the height, index and outcome, and an
//! [`InclusionProof`] carrying the block's commit certificate (2f+1 validator signatures).
//! [`Committed::verify`] checks that proof with nothing but the validator keys, so a client
//! that does not trust the replica it talks to can still trust the answer. [`submit_quorum`]
//! is the classic PBFT alternative: the same transaction to several replicas, accepted when
//! f+1 of them give matching replies.

use std::time::Duration;

use ehr_ledger::app::{Hash, TxOutcome};
use ehr_ledger::block::InclusionProof;
use ehr_ledger::crypto::Ed25519Verifier;
use ehr_ledger::replica::tx_id;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

use super::error::NetError;

/// A transaction handed to the driver, with where to send its answer.
#[derive(Debug)]
pub(crate) struct Submission {
    pub(crate) tx: Vec<u8>,
    pub(crate) reply: oneshot::Sender<Result<Committed, NetError>>,
}

/// A committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The transaction id (SHA3-256 of its bytes).
    pub tx_id: Hash,
    /// The height of its block.
    pub height: u64,
    /// Its index in the block.
    pub index: u32,
    /// Whether the application applied it or rejected it (deterministically, on every replica).
    pub outcome: TxOutcome,
    /// The block header, the commit certificate and the Merkle path of the transaction.
    pub proof: InclusionProof,
}

impl Committed {
    /// Checks that `tx` is the committed transaction and that the proof and its commit
    /// certificate verify under `validators` (ordered public keys) for `chain_id`/`epoch`,
    /// with certificates of `quorum` signatures.
    pub fn verify(
        &self,
        tx: &[u8],
        chain_id: &str,
        epoch: u64,
        validators: &[[u8; 32]],
        quorum: usize,
    ) -> Result<(), NetError> {
        if tx_id(tx) != self.tx_id {
            return Err(NetError::Refused("reply is for another transaction".into()));
        }
        if self.proof.header.height != self.height
            || self.proof.merkle.index != u64::from(self.index)
        {
            return Err(NetError::Refused(
                "reply's height or index does not match its proof".into(),
            ));
        }
        let verifier = Ed25519Verifier::new(validators);
        self.proof
            .verify(chain_id, epoch, tx, validators.len(), quorum, &verifier)
            .map_err(|e| NetError::Refused(format!("inclusion proof: {e}")))
    }
}

/// Submits transactions to one replica. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    submit: mpsc::Sender<Submission>,
    timeout: Duration,
}

impl Client {
    pub(crate) fn new(submit: mpsc::Sender<Submission>, timeout: Duration) -> Self {
        Self { submit, timeout }
    }

    /// The same client with another timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Submits `tx` and waits for its commit. Errors: [`NetError::Refused`] (the replica's
    /// application refused it up front), [`NetError::Overloaded`], [`NetError::Timeout`] (it
    /// may still commit later: resubmitting the same bytes is safe, they have one id and the
    /// ledger's nonces make a second copy a rejected no-op), [`NetError::DriverStopped`].
    pub async fn submit(&self, tx: Vec<u8>) -> Result<Committed, NetError> {
        self.enqueue(tx)?.wait().await
    }

    /// Hands `tx` to the replica now, without waiting: transactions enqueued one after the other
    /// reach the replica in that order (what a sender pipelining its nonces needs). Wait for
    /// the outcome with [`PendingCommit::wait`].
    pub fn enqueue(&self, tx: Vec<u8>) -> Result<PendingCommit, NetError> {
        let (reply, answer) = oneshot::channel();
        match self.submit.try_send(Submission { tx, reply }) {
            Ok(()) => Ok(PendingCommit {
                answer,
                timeout: self.timeout,
            }),
            Err(mpsc::error::TrySendError::Full(_)) => Err(NetError::Overloaded),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(NetError::DriverStopped),
        }
    }
}

/// A transaction handed to a replica, waiting for its commit.
#[derive(Debug)]
pub struct PendingCommit {
    answer: oneshot::Receiver<Result<Committed, NetError>>,
    timeout: Duration,
}

impl PendingCommit {
    /// Waits for the commit (see [`Client::submit`] for the errors). The timeout counts from
    /// this call.
    pub async fn wait(self) -> Result<Committed, NetError> {
        match tokio::time::timeout(self.timeout, self.answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(NetError::DriverStopped),
            Err(_) => Err(NetError::Timeout(self.timeout)),
        }
    }
}

/// Submits `tx` to every client's replica and returns once `f + 1` replies agree on the
/// height, index, block hash and outcome (so at least one honest replica vouches for it).
/// Fails when so many replicas have answered differently or failed that `f + 1` matching
/// replies are no longer possible.
pub async fn submit_quorum(clients: &[Client], tx: &[u8], f: usize) -> Result<Committed, NetError> {
    let need = f + 1;
    if clients.len() < need {
        return Err(NetError::Config(format!(
            "clients: {} replicas cannot give {need} matching replies",
            clients.len()
        )));
    }
    let mut pending: FuturesUnordered<_> = clients.iter().map(|c| c.submit(tx.to_vec())).collect();
    let mut votes: Vec<(Committed, usize)> = Vec::new();
    let mut last_err = None;
    let mut remaining = clients.len();
    while let Some(r) = pending.next().await {
        remaining -= 1;
        match r {
            Ok(c) => {
                let key =
                    |x: &Committed| (x.height, x.index, x.proof.header.hash(), x.outcome.clone());
                match votes.iter_mut().find(|(v, _)| key(v) == key(&c)) {
                    Some((v, n)) => {
                        *n += 1;
                        if *n >= need {
                            return Ok(v.clone());
                        }
                    }
                    None if need == 1 => return Ok(c),
                    None => votes.push((c, 1)),
                }
            }
            Err(e) => last_err = Some(e),
        }
        let best = votes.iter().map(|(_, n)| *n).max().unwrap_or(0);
        if best + remaining < need {
            break;
        }
    }
    Err(last_err.unwrap_or_else(|| NetError::Refused("replicas gave conflicting replies".into())))
}
