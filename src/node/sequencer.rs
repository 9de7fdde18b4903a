//! Nonce sequencing for a key the node signs with (the hospital's, the validator's).
//!
//! Transactions of one sender must carry consecutive nonces and the ledger accepts at most
//! [`CHECK_NONCE_WINDOW`] of them ahead of the committed nonce. The sequencer signs each
//! transaction with the next nonce and hands it to the replica with [`Client::enqueue`] under
//! one lock, so they reach the replica in nonce order (pipelined, no waiting between them), and
//! a semaphore keeps the number in flight inside the window. When a transaction is refused or
//! rejected for its nonce, or times out, the next nonce is resynchronised from the committed
//! state (the transactions after it fail with a nonce error and are retried once).

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use ehr_ledger::app::TxOutcome;
use ehr_ledger::state::CHECK_NONCE_WINDOW;
use ehr_ledger::tx::{ParticipantId, TxBody, TxKind, codes};
use tokio::sync::{Mutex, Semaphore};

use super::app::SharedLedger;
use crate::ledger_net::{Client, Committed, NetError};

/// Signs and submits a participant's transactions in nonce order.
pub struct Sequencer {
    key: SigningKey,
    id: ParticipantId,
    chain_id: String,
    client: Client,
    ledger: SharedLedger,
    next: Mutex<Option<u64>>,
    window: Arc<Semaphore>,
}

impl std::fmt::Debug for Sequencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequencer")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn nonce_trouble(code: &str) -> bool {
    code == codes::NONCE_GAP || code == codes::NONCE_REPLAYED
}

impl Sequencer {
    /// A sequencer for `key`, submitting through `client`.
    pub fn new(key: SigningKey, chain_id: &str, client: Client, ledger: SharedLedger) -> Self {
        let id = ParticipantId(key.verifying_key().to_bytes());
        Sequencer {
            key,
            id,
            chain_id: chain_id.to_owned(),
            client,
            ledger,
            next: Mutex::new(None),
            // Leave room for a few transactions the participant submits elsewhere.
            window: Arc::new(Semaphore::new(CHECK_NONCE_WINDOW as usize - 8)),
        }
    }

    /// The participant id.
    pub fn id(&self) -> ParticipantId {
        self.id
    }

    fn committed_next(&self) -> u64 {
        self.ledger.read().nonce(&self.id).unwrap_or(0) + 1
    }

    /// Signs `kind` with the next nonce, submits it and waits for its commit. A nonce
    /// conflict (another submitter, a lost transaction) resynchronises and retries once.
    pub async fn submit(&self, kind: TxKind) -> Result<Committed, NetError> {
        let first = self.submit_once(kind.clone()).await;
        match &first {
            Ok(c) => match &c.outcome {
                TxOutcome::Rejected(r) if nonce_trouble(r.code) => {}
                _ => return first,
            },
            Err(NetError::Refused(reason)) if reason.contains("nonce") => {}
            Err(_) => return first,
        }
        tracing::debug!("nonce conflict: resynchronising and retrying once");
        self.submit_once(kind).await
    }

    async fn submit_once(&self, kind: TxKind) -> Result<Committed, NetError> {
        let _permit = self
            .window
            .acquire()
            .await
            .map_err(|_| NetError::DriverStopped)?;
        let pending = {
            let mut next = self.next.lock().await;
            let nonce = match *next {
                Some(n) => n,
                None => self.committed_next(),
            };
            let tx = TxBody::new(&self.chain_id, self.id, nonce, kind)
                .sign(&self.key)
                .to_bytes();
            match self.client.enqueue(tx) {
                Ok(p) => {
                    *next = Some(nonce + 1);
                    p
                }
                Err(e) => {
                    *next = None;
                    return Err(e);
                }
            }
        };
        let result = pending.wait().await;
        let resync = match &result {
            Ok(c) => matches!(&c.outcome, TxOutcome::Rejected(r) if nonce_trouble(r.code)),
            Err(_) => true,
        };
        if resync {
            *self.next.lock().await = None;
        }
        result
    }
}
