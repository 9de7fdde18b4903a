//! The contract between consensus ([`crate::replica`]) and the replicated application
//! ([`crate::state`]).
//!
//! Consensus orders opaque transaction bytes into blocks; the application decides what a
//! transaction means. Both sides must be deterministic: the same blocks applied to the same
//! snapshot give the same outcomes and the same state root on every replica.

/// A 32-byte SHA3-256 digest.
pub type Hash = [u8; 32];

/// Why the application refused a transaction. The reason is for the submitter; it never
/// contains health data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxReject {
    /// A stable, machine-readable code such as `bad-signature` or `nonce-replayed`.
    pub code: &'static str,
    /// A human-readable explanation naming the offending field.
    pub reason: String,
}

/// The outcome of one transaction in a committed block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxOutcome {
    /// The transaction was applied.
    Applied,
    /// The transaction was ordered but invalid against the state at its position; it changed
    /// nothing.
    Rejected(TxReject),
}

/// The replicated application.
///
/// Consensus calls [`App::check_tx`] before it batches or votes for a transaction (so a
/// Byzantine primary cannot get badly signed transactions committed), and [`App::apply_block`]
/// exactly once per committed height, in height order.
pub trait App {
    /// The transaction's id (SHA3-256 of its canonical bytes) if it is well-formed, correctly
    /// signed and valid against the current committed state; otherwise why not. Must not change
    /// state.
    fn check_tx(&self, tx: &[u8]) -> Result<Hash, TxReject>;

    /// Whether a transaction that passed [`App::check_tx`] earlier is still acceptable against
    /// the current committed state (consensus drops it from its pending pool otherwise, e.g.
    /// when another transaction used its nonce). An implementation may skip the checks that do
    /// not depend on the state, such as the signature. Must not change state.
    fn recheck_tx(&self, tx: &[u8]) -> Result<(), TxReject> {
        self.check_tx(tx).map(|_| ())
    }

    /// Applies the transactions of the block at `height` in order. Returns one outcome per
    /// transaction and the state root after the block.
    fn apply_block(&mut self, height: u64, txs: &[Vec<u8>]) -> (Vec<TxOutcome>, Hash);

    /// The root of the current state (after the last applied block).
    fn state_root(&self) -> Hash;

    /// A self-contained encoding of the whole state, taken at a checkpoint.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the state with a snapshot produced by [`App::snapshot`]. A snapshot that does
    /// not decode or does not match `expected_root` is refused and changes nothing.
    fn restore(&mut self, snapshot: &[u8], expected_root: &Hash) -> Result<(), TxReject>;
}
