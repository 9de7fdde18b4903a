//! [`SharedLedger`]: the replicated application as the replica sees it, and the node's window
//! on the committed state.
//!
//! The replica owns its `App`; the node's HTTP handlers need to read the committed state at the
//! same time. `SharedLedger` wraps the state in an `Arc<RwLock<_>>` and implements
//! [`App`] by delegating: the driver takes the write lock only inside `apply_block` and
//! `restore`, handlers take short read locks. It is also the **one place** that drains
//! [`LedgerState::take_events`]: right after each block (under the same write lock) the
//! events go, tagged with the block's height, into a channel the index follower reads, so the
//! follower sees every block's events exactly once and in order. A `restore` (state transfer, or
//! the checkpoint a restarting replica starts from) sends [`AppEvent::Restored`]: views built
//! from events must catch up from the state itself.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use ehr_ledger::app::{App, Hash, TxOutcome, TxReject};
use ehr_ledger::state::{LedgerState, StateEvent};
use tokio::sync::mpsc;

/// What the application tells the node's views, in commit order.
#[derive(Debug)]
pub enum AppEvent {
    /// A block was applied; these are its state events.
    Block {
        /// The block's height.
        height: u64,
        /// Its events.
        events: Vec<StateEvent>,
    },
    /// The state was replaced by a snapshot at `height`.
    Restored {
        /// The snapshot's height.
        height: u64,
    },
}

/// The ledger state shared between the replica (writer) and the node (readers).
#[derive(Debug, Clone)]
pub struct SharedLedger {
    state: Arc<RwLock<LedgerState>>,
    events: mpsc::UnboundedSender<AppEvent>,
}

impl SharedLedger {
    /// Wraps `state`; events go to the returned receiver.
    pub fn new(mut state: LedgerState) -> (Self, mpsc::UnboundedReceiver<AppEvent>) {
        // Genesis events (none expected) are not part of any block.
        let _ = state.take_events();
        let (tx, rx) = mpsc::unbounded_channel();
        (
            SharedLedger {
                state: Arc::new(RwLock::new(state)),
                events: tx,
            },
            rx,
        )
    }

    /// A read guard on the committed state. Keep it briefly: the replica waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, LedgerState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The shared state handle.
    pub fn handle(&self) -> Arc<RwLock<LedgerState>> {
        self.state.clone()
    }
}

impl App for SharedLedger {
    fn check_tx(&self, tx: &[u8]) -> Result<Hash, TxReject> {
        self.read().check_tx(tx)
    }

    fn recheck_tx(&self, tx: &[u8]) -> Result<(), TxReject> {
        self.read().recheck_tx(tx)
    }

    fn apply_block(&mut self, height: u64, txs: &[Vec<u8>]) -> (Vec<TxOutcome>, Hash) {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let out = st.apply_block(height, txs);
        let events = st.take_events();
        drop(st);
        // A closed receiver means the node is shutting down; the state itself is unaffected.
        let _ = self.events.send(AppEvent::Block { height, events });
        out
    }

    fn state_root(&self) -> Hash {
        self.read().state_root()
    }

    fn snapshot(&self) -> Vec<u8> {
        self.read().snapshot()
    }

    fn restore(&mut self, snapshot: &[u8], expected_root: &Hash) -> Result<(), TxReject> {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        st.restore(snapshot, expected_root)?;
        let _ = st.take_events();
        let height = st.height();
        drop(st);
        let _ = self.events.send(AppEvent::Restored { height });
        Ok(())
    }
}
