//! View change: VIEW-CHANGE carrying the stable checkpoint and prepared certificates, and a
//! NEW-VIEW that re-proposes the highest-view prepared batch for every height between the
//! highest stable checkpoint and the highest prepared height (a null block elsewhere). Backups
//! recompute the re-proposals from the carried view changes and refuse a new-view that differs.

use std::collections::BTreeSet;

use crate::app::App;
use crate::block::{CheckpointCert, Sig, VoteKind, batch_digest, check_quorum};
use crate::crypto::ReplicaId;
use crate::error::LedgerError;
use crate::merkle;

use super::msg::{self, Body, NewView, PreparedCert, Reproposal, SignedViewChange, ViewChange};
use super::{Dest, Proposal, Record, Replica};

/// (height, digest, batch if known).
type PlannedProposal = (u64, crate::app::Hash, Option<Vec<Vec<u8>>>);

/// The re-proposals computed from a set of view changes.
struct Plan {
    /// The highest stable checkpoint among the view changes.
    min_s: CheckpointCert,
    /// (height, digest, batch if known) for every height in (min_s, max_s].
    proposals: Vec<PlannedProposal>,
}

impl<A: App> Replica<A> {
    /// Moves to `view` and broadcasts a view change.
    pub(super) fn start_view_change(&mut self, view: u64) {
        debug_assert!(view > self.view || !self.active);
        self.view = view;
        self.active = false;
        self.vc_attempts = self.vc_attempts.saturating_add(1);
        // The timer for the *next* view change starts only once a quorum has joined this one
        // (see `arm_view_change_timer`).
        self.vc_deadline = None;
        self.batch_since = None;
        self.requeue_in_flight();
        self.persist(Record::View {
            view,
            active: false,
        });
        self.resend_view_change();
        self.arm_view_change_timer();
        self.check_new_view_quorum();
    }

    /// While changing view, starts the timer that moves on to the next view, but only once
    /// 2f+1 replicas (this one included) have asked for this view or a higher one
    /// (Castro–Liskov, OSDI'99 §4.5.2: "a replica that multicasts a view-change message for
    /// view v+1 waits for 2f+1 view-change messages for view v+1 and then starts its timer").
    ///
    /// Without this rule a replica cut off from the others runs up views alone, each with a
    /// doubled timeout, and when the partition heals it sits far above the view the others
    /// work in: they never join it (fewer than f+1 replicas ask for it) and it cannot go back
    /// (its view change for the higher view may still be used in a new view). With the rule it
    /// stops at the view after the one the others work in, which is exactly where they go at
    /// their next view change, so it rejoins at the first one.
    pub(super) fn arm_view_change_timer(&mut self) {
        if self.active || self.vc_deadline.is_some() || self.arm_vc_on_tick {
            return;
        }
        let view = self.view;
        let joined = self
            .latest_vc
            .values()
            .filter(|s| s.vc.new_view >= view)
            .count();
        if joined >= self.cfg.quorum() {
            self.vc_deadline = Some(self.now + self.vc_timeout());
        }
    }

    /// Builds, signs and sends this replica's view change for the current (inactive) view.
    pub(super) fn resend_view_change(&mut self) {
        let view = self.view;
        let vc = ViewChange {
            new_view: view,
            stable: self.stable.clone(),
            prepared: self
                .prepared
                .range(self.low + 1..)
                .map(|(_, c)| c.clone())
                .collect(),
        };
        tracing::info!(view, prepared = vc.prepared.len(), "sending view change");
        let (m, sig) = self.sign(Body::ViewChange(vc.clone()), None);
        let me = self.me();
        self.latest_vc
            .insert(me, SignedViewChange { from: me, vc, sig });
        self.my_vc_msg = Some(m.clone());
        self.send(Dest::All, m);
    }

    pub(super) fn on_view_change(
        &mut self,
        from: ReplicaId,
        vc: ViewChange,
        sig: Sig,
    ) -> Result<(), LedgerError> {
        if vc.new_view < self.view
            || (vc.new_view == self.view && self.active)
            || vc.new_view > self.view.saturating_add(super::MAX_VIEW_JUMP)
        {
            return Ok(());
        }
        if let Some(old) = self.latest_vc.get(&from)
            && old.vc.new_view >= vc.new_view
        {
            return Ok(());
        }
        self.validate_vc(&vc, true)?;
        self.latest_vc
            .insert(from, SignedViewChange { from, vc, sig });
        self.vc_seen_at.insert(from, self.now);
        // Join a view change that f+1 replicas ask for (at least one of them is honest).
        let mut higher: Vec<u64> = self
            .latest_vc
            .values()
            .map(|s| s.vc.new_view)
            .filter(|v| *v > self.view)
            .collect();
        if higher.len() > self.cfg.f {
            higher.sort_unstable();
            // The smallest view such that f+1 replicas ask for it or more.
            let target = higher[higher.len() - (self.cfg.f + 1)];
            if target > self.view {
                self.start_view_change(target);
            }
        }
        self.arm_view_change_timer();
        self.check_new_view_quorum();
        Ok(())
    }

    /// Checks a view change's checkpoint and prepared certificates (with their batches when
    /// `need_txs`; a new-view carries them stripped).
    fn validate_vc(&self, vc: &ViewChange, need_txs: bool) -> Result<(), LedgerError> {
        let n = self.cfg.n();
        let quorum = self.cfg.quorum();
        let k = self.cfg.checkpoint_interval;
        let s = vc.stable.height;
        if !s.is_multiple_of(k) {
            return Err(LedgerError::InvalidViewChange(format!(
                "stable checkpoint height {s} is not a multiple of {k}"
            )));
        }
        vc.stable.verify(
            &self.cfg.chain_id,
            self.cfg.epoch,
            n,
            quorum,
            self.verifier.as_ref(),
        )?;
        if vc.prepared.len() as u64 > self.cfg.watermark_window {
            return Err(LedgerError::InvalidViewChange(
                "more prepared certificates than the watermark window".into(),
            ));
        }
        let mut last = s;
        for c in &vc.prepared {
            if c.height <= last || c.height > s + self.cfg.watermark_window {
                return Err(LedgerError::InvalidViewChange(format!(
                    "prepared certificate at height {} is out of order or outside the window",
                    c.height
                )));
            }
            last = c.height;
            if c.view >= vc.new_view {
                return Err(LedgerError::InvalidViewChange(format!(
                    "prepared certificate of view {} in a view change to {}",
                    c.view, vc.new_view
                )));
            }
            self.validate_prepared(c, need_txs)?;
        }
        Ok(())
    }

    /// Checks a prepared certificate: the primary's pre-prepare and 2f prepares from distinct
    /// backups, all over its digest, and the carried batch (if any, or if `need_txs`) against
    /// that digest.
    fn validate_prepared(&self, c: &PreparedCert, need_txs: bool) -> Result<(), LedgerError> {
        match &c.txs {
            Some(txs) => {
                let bytes: usize = txs.iter().map(Vec::len).sum();
                if txs.len() > self.cfg.max_batch_txs || bytes > self.cfg.max_batch_bytes {
                    return Err(LedgerError::InvalidCertificate(format!(
                        "prepared batch at height {} exceeds the limits",
                        c.height
                    )));
                }
                if batch_digest(&self.cfg.chain_id, self.cfg.epoch, c.height, txs) != c.digest {
                    return Err(LedgerError::InvalidCertificate(format!(
                        "prepared certificate at height {}: the batch does not match the digest",
                        c.height
                    )));
                }
            }
            None if need_txs => {
                return Err(LedgerError::InvalidViewChange(format!(
                    "prepared certificate at height {} carries no batch",
                    c.height
                )));
            }
            None => {}
        }
        let digest = c.digest;
        let primary = self.cfg.primary(c.view);
        let pp = self.vote_msg(VoteKind::PrePrepare, c.view, c.height, &digest);
        if !self.verifier.verify(primary, &pp, &c.primary_sig.0) {
            return Err(LedgerError::InvalidCertificate(format!(
                "prepared certificate at height {}: bad pre-prepare signature",
                c.height
            )));
        }
        if c.prepares.iter().any(|(r, _)| *r == primary) {
            return Err(LedgerError::InvalidCertificate(format!(
                "prepared certificate at height {}: the primary cannot prepare",
                c.height
            )));
        }
        let pm = self.vote_msg(VoteKind::Prepare, c.view, c.height, &digest);
        check_quorum(
            "prepared certificate",
            &c.prepares,
            &pm,
            self.cfg.n(),
            2 * self.cfg.f,
            self.verifier.as_ref(),
        )
    }

    /// The re-proposals implied by a quorum of view changes: for every height, the digest of
    /// the highest-view prepared certificate (and its batch, if carried) or the null batch.
    fn plan(&self, vcs: &[&ViewChange]) -> Plan {
        let min_s = vcs
            .iter()
            .map(|v| &v.stable)
            .max_by_key(|c| c.height)
            .cloned()
            .unwrap_or_else(|| self.stable.clone());
        let lo = min_s.height;
        let max_s = vcs
            .iter()
            .flat_map(|v| v.prepared.iter().map(|c| c.height))
            .filter(|h| *h > lo)
            .max()
            .unwrap_or(lo);
        let mut proposals = Vec::new();
        for h in lo + 1..=max_s {
            let best = vcs
                .iter()
                .flat_map(|v| v.prepared.iter())
                .filter(|c| c.height == h)
                .max_by_key(|c| c.view);
            proposals.push(match best {
                Some(c) => (h, c.digest, c.txs.clone()),
                None => (
                    h,
                    batch_digest(&self.cfg.chain_id, self.cfg.epoch, h, &[]),
                    Some(Vec::new()),
                ),
            });
        }
        Plan { min_s, proposals }
    }

    /// As the new primary with a quorum of view changes, sends the new view.
    pub(super) fn check_new_view_quorum(&mut self) {
        let view = self.view;
        if self.active || self.cfg.primary(view) != self.me() {
            return;
        }
        let me = self.me();
        let mut chosen: Vec<SignedViewChange> = Vec::new();
        if let Some(own) = self.latest_vc.get(&me).filter(|s| s.vc.new_view == view) {
            chosen.push(own.clone());
        }
        for (r, s) in &self.latest_vc {
            if *r != me && s.vc.new_view == view && chosen.len() < self.cfg.quorum() {
                chosen.push(s.clone());
            }
        }
        if chosen.len() < self.cfg.quorum() {
            return;
        }
        let plan = self.plan(&chosen.iter().map(|s| &s.vc).collect::<Vec<_>>());
        let mut proposals = Vec::with_capacity(plan.proposals.len());
        let mut accepted = Vec::new();
        for (h, planned, txs) in plan.proposals {
            let Some(txs) = txs else {
                // Cannot happen: view changes are accepted only with their batches.
                tracing::error!(
                    view,
                    h,
                    "a prepared batch is missing; cannot send the new view"
                );
                return;
            };
            let tx_root = merkle::root(&txs);
            let digest = self.digest_of(h, &tx_root, txs.len());
            debug_assert_eq!(
                digest, planned,
                "a validated certificate's batch matches its digest"
            );
            if !self.record_vote(view, h, digest) {
                tracing::error!(view, h, "new view would sign a second digest; abandoning");
                return;
            }
            let sig = Sig(self
                .signer
                .sign(&self.vote_msg(VoteKind::PrePrepare, view, h, &digest)));
            accepted.push((
                h,
                Proposal {
                    view,
                    digest,
                    tx_root,
                    txs: txs.clone(),
                    primary_sig: sig,
                },
            ));
            proposals.push(Reproposal {
                height: h,
                txs,
                sig,
            });
        }
        // The view changes travel without their batches (their signatures cover the stripped
        // form); the re-proposals carry each batch once.
        let view_changes = chosen
            .into_iter()
            .map(|s| SignedViewChange {
                from: s.from,
                vc: s.vc.stripped(),
                sig: s.sig,
            })
            .collect();
        let nv = NewView {
            view,
            view_changes,
            proposals,
        };
        tracing::info!(view, reproposals = nv.proposals.len(), "sending new view");
        let (m, _) = self.sign(Body::NewView(nv), None);
        self.new_view_msg = Some((view, m.clone()));
        self.send(Dest::All, m);
        self.enter_view(view, plan.min_s, accepted);
    }

    pub(super) fn on_new_view(
        &mut self,
        from: ReplicaId,
        nv: NewView,
        wire: &[u8],
    ) -> Result<(), LedgerError> {
        let view = nv.view;
        if view < self.view || (view == self.view && self.active) {
            return Ok(());
        }
        if from != self.cfg.primary(view) {
            return Err(LedgerError::NotAllowed {
                from,
                what: "new-view",
                view,
            });
        }
        if nv.view_changes.len() < self.cfg.quorum() || nv.view_changes.len() > self.cfg.n() {
            return Err(LedgerError::InvalidViewChange(
                "new view does not carry a quorum of view changes".into(),
            ));
        }
        let mut senders = BTreeSet::new();
        for s in &nv.view_changes {
            if s.from as usize >= self.cfg.n() || !senders.insert(s.from) {
                return Err(LedgerError::InvalidViewChange(
                    "new view carries duplicate or unknown senders".into(),
                ));
            }
            if s.vc.new_view != view {
                return Err(LedgerError::InvalidViewChange(
                    "new view carries a view change for another view".into(),
                ));
            }
            let m = msg::signing_bytes(
                &self.cfg.chain_id,
                self.cfg.epoch,
                s.from,
                &Body::ViewChange(s.vc.clone()),
                None,
            );
            if !self.verifier.verify(s.from, &m, &s.sig.0) {
                return Err(LedgerError::BadSignature("view change inside a new view"));
            }
            self.validate_vc(&s.vc, false)?;
        }
        let plan = self.plan(&nv.view_changes.iter().map(|s| &s.vc).collect::<Vec<_>>());
        if plan.proposals.len() != nv.proposals.len() {
            return Err(LedgerError::InvalidViewChange(
                "new view re-proposals differ from those its view changes imply".into(),
            ));
        }
        let mut accepted = Vec::with_capacity(nv.proposals.len());
        for ((h, planned, _), p) in plan.proposals.into_iter().zip(nv.proposals) {
            let bytes: usize = p.txs.iter().map(Vec::len).sum();
            if p.txs.len() > self.cfg.max_batch_txs || bytes > self.cfg.max_batch_bytes {
                return Err(LedgerError::InvalidViewChange(format!(
                    "new view re-proposal at height {} exceeds the batch limits",
                    p.height
                )));
            }
            let tx_root = merkle::root(&p.txs);
            let digest = self.digest_of(p.height, &tx_root, p.txs.len());
            if h != p.height || digest != planned {
                return Err(LedgerError::InvalidViewChange(format!(
                    "new view re-proposal at height {} differs from the computed one",
                    p.height
                )));
            }
            let m = self.vote_msg(VoteKind::PrePrepare, view, h, &digest);
            if !self.verifier.verify(from, &m, &p.sig.0) {
                return Err(LedgerError::BadSignature("new-view re-proposal"));
            }
            accepted.push((
                h,
                Proposal {
                    view,
                    digest,
                    tx_root,
                    txs: p.txs,
                    primary_sig: p.sig,
                },
            ));
        }
        tracing::info!(view, "entering view");
        self.new_view_msg = Some((view, wire.to_vec()));
        self.enter_view(view, plan.min_s, accepted);
        Ok(())
    }

    /// Enters `view` with the given re-proposals.
    fn enter_view(&mut self, view: u64, min_s: CheckpointCert, accepted: Vec<(u64, Proposal)>) {
        self.view = view;
        self.active = true;
        self.vc_deadline = None;
        self.arm_vc_on_tick = false;
        self.last_progress = self.now;
        self.my_vc_msg = None;
        self.persist(Record::View { view, active: true });
        self.latest_vc.retain(|_, s| s.vc.new_view > view);
        self.requeue_in_flight();
        let max_h = accepted.last().map_or(0, |(h, _)| *h);
        // Proposals of earlier views above the re-proposed range can never commit (a commit
        // quorum would have put a prepared certificate into the view-change quorum): drop them.
        let keep = max_h.max(self.last_exec);
        self.log.retain(|h, _| *h <= keep);
        self.next_height = max_h.max(min_s.height).max(self.last_exec).max(self.low) + 1;
        if min_s.height > self.last_exec {
            self.request_state();
        }
        let primary = self.cfg.primary(view);
        let me = self.me();
        for (h, p) in accepted {
            if h <= self.low {
                continue;
            }
            if let Some(b) = self.blocks.get(&h)
                && b.header.proposal_digest() != p.digest
            {
                tracing::error!(
                    view,
                    h,
                    "new view re-proposes a digest other than the executed one"
                );
                continue;
            }
            if me == primary {
                self.take_in_flight(&p.txs);
                let slot = self.log.entry(h).or_default();
                slot.pp = Some(p);
                self.check_progress(h);
            } else {
                self.accept_proposal(h, p);
            }
        }
        self.recheck_pending();
        if me == primary {
            self.try_propose();
        } else {
            self.forward_local();
        }
        self.arm_timer();
    }

    pub(super) fn on_fetch_new_view(&mut self, from: ReplicaId, view: u64) {
        if let Some((v, m)) = &self.new_view_msg
            && *v == view
        {
            let m = m.clone();
            self.send(Dest::One(from), m);
        }
    }
}
