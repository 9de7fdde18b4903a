//! State transfer: a replica that is behind (a quorum's checkpoint or commits above what it
//! executed, or a stall) asks its peers for state after its last executed height. A peer
//! answers with its latest stable checkpoint (certificate, header, application snapshot) if the
//! requester is below it, then the certified blocks it holds after that. Everything in an
//! answer is self-certifying (checkpoint and commit certificates), so any single peer will do
//! and a Byzantine one can only waste bandwidth.

use crate::app::App;
use crate::block::CheckpointCert;
use crate::crypto::ReplicaId;
use crate::error::LedgerError;

use super::msg::{Body, StateResponse};
use super::{Action, Dest, Replica};

impl<A: App> Replica<A> {
    /// Asks every peer for state after the last executed height (at most once per
    /// retransmission interval).
    pub(super) fn request_state(&mut self) {
        if self.state_deadline.is_some_and(|d| self.now < d) {
            return;
        }
        self.state_deadline = Some(self.now + self.cfg.retransmit_ms);
        let (m, _) = self.sign(
            Body::StateRequest {
                have: self.last_exec,
                low: self.low,
                view: self.view,
                active: self.active,
            },
            None,
        );
        self.send(Dest::All, m);
    }

    pub(super) fn on_state_request(
        &mut self,
        from: ReplicaId,
        have: u64,
        low: u64,
        view: u64,
        active: bool,
    ) {
        // Serve each peer at most twice per retransmission interval: an answer may carry a
        // whole snapshot, and a Byzantine peer must not be able to make us copy it at will.
        let gap = (self.cfg.retransmit_ms / 2).max(1);
        if let Some(last) = self.served.get(&from)
            && self.now < last.saturating_add(gap)
        {
            return;
        }
        // A peer still working in an earlier view (it missed the view change), or waiting to
        // enter this one (it missed the new view), hears nothing else from an idle consortium:
        // send it this view's new-view message, which it checks like any other.
        if self.active
            && (view < self.view || (view == self.view && !active))
            && let Some((v, m)) = self.new_view_msg.clone()
            && v == self.view
        {
            self.served.insert(from, self.now);
            self.send(Dest::One(from), m);
        }
        if have >= self.last_exec {
            if low < self.low && have >= self.low {
                // Same height, but the requester never saw this checkpoint become stable.
                let (m, _) = self.sign(Body::StableCheckpoint(self.stable.clone()), None);
                self.send(Dest::One(from), m);
            }
            return;
        }
        let mut resp = StateResponse {
            checkpoint: None,
            blocks: Vec::new(),
        };
        let mut start = have + 1;
        // Blocks when this replica still holds every one after `have` (the last checkpoint
        // interval is kept; held blocks are consecutive up to the last executed one), a
        // checkpoint and snapshot otherwise.
        let have_blocks = self
            .blocks
            .first_key_value()
            .is_some_and(|(first, _)| *first <= have + 1);
        if have < self.low && !have_blocks {
            match (&self.stable_header, &self.stable_snapshot) {
                (Some(h), Some(s)) => {
                    resp.checkpoint = Some((self.stable.clone(), h.clone(), s.clone()));
                    start = self.low + 1;
                }
                _ => return,
            }
        }
        let budget = self.cfg.max_message_bytes / 2;
        let mut used = resp.checkpoint.as_ref().map_or(0, |(_, _, s)| s.len());
        for (_, b) in self.blocks.range(start..) {
            if resp.blocks.len() >= self.cfg.max_blocks_per_response {
                break;
            }
            let size: usize = b.txs.iter().map(|t| t.len() + 4).sum::<usize>() + 512;
            if used + size > budget && !resp.blocks.is_empty() {
                break;
            }
            used += size;
            resp.blocks.push(b.clone());
        }
        if resp.checkpoint.is_none() && resp.blocks.is_empty() {
            return;
        }
        self.served.insert(from, self.now);
        let (m, _) = self.sign(Body::StateResponse(resp), None);
        self.send(Dest::One(from), m);
    }

    /// A peer's stable checkpoint certificate: adopt it if this replica executed that height
    /// (with the same block), fetch state if it did not.
    pub(super) fn on_stable_checkpoint(&mut self, cert: CheckpointCert) -> Result<(), LedgerError> {
        if cert.height <= self.low {
            return Ok(());
        }
        if !cert.height.is_multiple_of(self.cfg.checkpoint_interval) {
            return Err(LedgerError::InvalidCertificate(
                "checkpoint height is not a multiple of the interval".into(),
            ));
        }
        cert.verify(
            &self.cfg.chain_id,
            self.cfg.epoch,
            self.cfg.n(),
            self.cfg.quorum(),
            self.verifier.as_ref(),
        )?;
        if cert.height > self.last_exec {
            self.request_state();
            return Ok(());
        }
        let own = self.own_checkpoints.get(&cert.height).cloned();
        let header = own
            .as_ref()
            .map(|(h, _)| h.clone())
            .or_else(|| self.blocks.get(&cert.height).map(|b| b.header.clone()));
        let Some(header) = header else {
            return Ok(());
        };
        assert_eq!(
            header.hash(),
            cert.block_hash,
            "invariant: this replica's block at checkpoint height {} differs from a certified \
             checkpoint (non-deterministic application or consensus bug)",
            cert.height
        );
        self.make_stable(cert, header, own.map(|(_, s)| s));
        Ok(())
    }

    pub(super) fn on_state_response(&mut self, resp: StateResponse) -> Result<(), LedgerError> {
        let n = self.cfg.n();
        let quorum = self.cfg.quorum();
        let mut progressed = false;
        if let Some((cert, header, snapshot)) = resp.checkpoint
            && cert.height > self.last_exec
        {
            if cert.height % self.cfg.checkpoint_interval != 0 {
                return Err(LedgerError::InvalidStateTransfer(
                    "checkpoint height is not a multiple of the interval".into(),
                ));
            }
            cert.verify(
                &self.cfg.chain_id,
                self.cfg.epoch,
                n,
                quorum,
                self.verifier.as_ref(),
            )?;
            if header.chain_id != self.cfg.chain_id
                || header.epoch != self.cfg.epoch
                || header.height != cert.height
                || header.hash() != cert.block_hash
                || header.state_root != cert.state_root
            {
                return Err(LedgerError::InvalidStateTransfer(
                    "checkpoint header does not match its certificate".into(),
                ));
            }
            self.app.restore(&snapshot, &cert.state_root).map_err(|r| {
                LedgerError::InvalidStateTransfer(format!(
                    "snapshot refused by the application ({})",
                    r.code
                ))
            })?;
            tracing::info!(
                height = cert.height,
                "restored a checkpoint by state transfer"
            );
            let h = cert.height;
            self.emit(Action::StateRestored {
                height: h,
                state_root: cert.state_root,
            });
            self.last_exec = h;
            self.last_hash = cert.block_hash;
            self.blocks.clear();
            self.own_checkpoints.clear();
            let (hash, root) = (cert.block_hash, cert.state_root);
            self.make_stable(cert, header, Some(snapshot));
            // Vote for the restored checkpoint too: it is certified, and peers that missed the
            // votes may need this one.
            self.send_checkpoint(h, hash, root);
            progressed = true;
        }
        for b in resp.blocks {
            let h = b.header.height;
            if h <= self.last_exec {
                continue;
            }
            if h != self.last_exec + 1 {
                break;
            }
            b.verify(
                &self.cfg.chain_id,
                self.cfg.epoch,
                n,
                quorum,
                self.verifier.as_ref(),
            )
            .map_err(|e| LedgerError::InvalidStateTransfer(format!("block {h}: {e}")))?;
            let claimed = b.header.hash();
            self.execute(b.txs, b.header.tx_root, b.cert, true);
            if self.last_hash != claimed {
                tracing::warn!(
                    height = h,
                    "a peer sent a block whose header (prev hash or state root) differs from ours"
                );
            }
            progressed = true;
        }
        if progressed {
            self.state_deadline = None;
            self.requeue_in_flight();
            self.recheck_pending();
            self.next_height = self.next_height.max(self.last_exec + 1);
            self.on_progress();
            self.try_execute();
        }
        Ok(())
    }
}
