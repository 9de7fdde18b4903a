//! Errors of the ledger crate.

/// Why the ledger (consensus core, blocks, store) refused an input or failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A message or transaction could not be decoded.
    #[error("malformed encoding: {0}")]
    Malformed(String),
    /// The replica configuration is invalid; the message names the field.
    #[error("invalid replica config: {0}")]
    Config(String),
    /// The message or block names another chain.
    #[error("message for another chain")]
    WrongChain,
    /// The message or block names another validator-set epoch.
    #[error("message for epoch {got}, this replica runs epoch {want}")]
    WrongEpoch {
        /// The epoch in the message.
        got: u64,
        /// This replica's epoch.
        want: u64,
    },
    /// The sender is not a validator of this epoch.
    #[error("unknown replica {0}")]
    UnknownReplica(u32),
    /// A signature on a message does not verify; the message says which.
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
    /// A message came from a replica that may not send it (e.g. a pre-prepare not from the
    /// primary).
    #[error("replica {from} may not send {what} in view {view}")]
    NotAllowed {
        /// The sender.
        from: u32,
        /// The message kind.
        what: &'static str,
        /// The view concerned.
        view: u64,
    },
    /// A replica signed two different digests for one (view, height).
    #[error("replica {from} equivocated at view {view}, height {height}")]
    Equivocation {
        /// The equivocating replica.
        from: u32,
        /// The view.
        view: u64,
        /// The height.
        height: u64,
    },
    /// A proposal is invalid (size, transactions); the message says why.
    #[error("invalid proposal: {0}")]
    InvalidProposal(String),
    /// A certificate (commit, checkpoint or prepared) does not verify; the message says why.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// A view-change or new-view message is invalid; the message says why.
    #[error("invalid view change: {0}")]
    InvalidViewChange(String),
    /// A state-transfer response is invalid; the message says why.
    #[error("invalid state transfer: {0}")]
    InvalidStateTransfer(String),
    /// The application refused a submitted transaction.
    #[error("transaction rejected ({code}): {reason}")]
    TxRejected {
        /// The application's stable reject code.
        code: &'static str,
        /// Why, naming the field.
        reason: String,
    },
    /// The durable store failed; the message says which operation.
    #[error("store: {0}")]
    Store(String),
    /// The persisted state is inconsistent; the message says how.
    #[error("persisted state is corrupt: {0}")]
    Corrupt(String),
}

/// Why the application state refused an input that is not a transaction (genesis, policies,
/// proofs, snapshots).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The genesis configuration is invalid; the message names the field.
    #[error("invalid genesis: {0}")]
    Genesis(String),
    /// An access policy does not parse; the message says where.
    #[error("invalid policy: {0}")]
    Policy(String),
    /// A state proof does not verify against the root, key and value.
    #[error("state proof does not verify: {0}")]
    Proof(&'static str),
    /// A proof or snapshot could not be decoded.
    #[error("malformed encoding: {0}")]
    Malformed(String),
}
