//! Direct tests of the replica core: the normal case end to end (certificates, inclusion
//! proofs), hostile input, no double vote across a restart, the view-change rules (highest-view
//! prepared certificate wins; forged certificates and re-proposals are refused) and state
//! transfer for a replica beyond the watermark window.

use std::collections::VecDeque;

use ehr_ledger::app::App;
use ehr_ledger::block::{CommittedBlock, Sig, VoteKind, batch_digest, vote_bytes};
use ehr_ledger::crypto::{
    InsecureTestSigner, InsecureTestVerifier, ReplicaId, Signer, insecure_test_public_key,
};
use ehr_ledger::error::LedgerError;
use ehr_ledger::replica::msg::{
    self, Body, NewView, PreparedCert, Reproposal, SignedViewChange, ViewChange,
};
use ehr_ledger::replica::{Action, Dest, Input, Replica, ReplicaConfig};
use ehr_ledger::sim::{KvApp, KvAuth};
use ehr_ledger::store::{MemStore, Store};
use proptest::prelude::*;

const CHAIN: &str = "core-test";
const EPOCH: u64 = 3;

fn keys(n: usize) -> Vec<[u8; 32]> {
    (0..n as u32).map(insecure_test_public_key).collect()
}

fn cfg(id: ReplicaId) -> ReplicaConfig {
    ReplicaConfig {
        chain_id: CHAIN.into(),
        epoch: EPOCH,
        id,
        validators: keys(4),
        f: 1,
        checkpoint_interval: 4,
        watermark_window: 8,
        max_batch_txs: 2,
        max_batch_bytes: 64 * 1024,
        batch_delay_ms: 0,
        max_in_flight: 4,
        view_change_timeout_ms: 1000,
        retransmit_ms: 200,
        max_message_bytes: 4 << 20,
        ..ReplicaConfig::default()
    }
}

fn replica(id: ReplicaId, store: &MemStore) -> Replica<KvApp> {
    Replica::with_verifier(
        cfg(id),
        Box::new(InsecureTestSigner::new(id)),
        Box::new(InsecureTestVerifier::new(&keys(4))),
        KvApp::new(KvAuth::Tag),
        store.load().unwrap(),
    )
    .unwrap()
}

fn tx(i: u64) -> Vec<u8> {
    KvApp::make_tx(
        KvAuth::Tag,
        (i % 5) as u8,
        i,
        format!("k{i}").as_bytes(),
        b"v",
    )
}

/// A lossless in-process network of four replicas.
struct Net {
    replicas: Vec<Replica<KvApp>>,
    stores: Vec<MemStore>,
    queue: VecDeque<(ReplicaId, ReplicaId, Vec<u8>)>,
    commits: Vec<Vec<CommittedBlock>>,
    sent: Vec<Vec<Vec<u8>>>,
    down: Vec<bool>,
    /// Cut off: messages to and from it are lost, but it keeps running.
    cut: Vec<bool>,
    /// Whether a primary may refuse a relayed transaction (one the application refuses).
    refused_forwards_ok: bool,
    now: u64,
}

impl Net {
    fn new() -> Self {
        let stores = vec![MemStore::new(); 4];
        Self {
            replicas: (0..4).map(|i| replica(i, &stores[i as usize])).collect(),
            stores,
            queue: VecDeque::new(),
            commits: vec![Vec::new(); 4],
            sent: vec![Vec::new(); 4],
            down: vec![false; 4],
            cut: vec![false; 4],
            refused_forwards_ok: false,
            now: 0,
        }
    }

    fn drain(&mut self, id: ReplicaId) {
        let actions: Vec<Action> = self.replicas[id as usize].drain_actions().collect();
        for a in actions {
            match a {
                Action::Persist(r) => self.stores[id as usize].apply(&r).unwrap(),
                Action::Send { to, msg } => {
                    self.sent[id as usize].push(msg.clone());
                    match to {
                        Dest::One(t) => self.queue.push_back((id, t, msg)),
                        Dest::All => {
                            for t in 0..4 {
                                if t != id {
                                    self.queue.push_back((id, t, msg.clone()));
                                }
                            }
                        }
                    }
                }
                Action::Commit(b) => self.commits[id as usize].push(*b),
                Action::Reply { .. } | Action::StateRestored { .. } => {}
            }
        }
    }

    fn pump(&mut self) {
        while let Some((from, to, msg)) = self.queue.pop_front() {
            self.deliver(from, to, msg);
        }
    }

    fn deliver(&mut self, from: ReplicaId, to: ReplicaId, msg: Vec<u8>) {
        let lost = |i: ReplicaId| self.down[i as usize] || self.cut[i as usize];
        if lost(from) || lost(to) {
            return;
        }
        let r = self.replicas[to as usize].step(Input::Peer { from, msg });
        let refused_forward =
            matches!(&r, Err(LedgerError::InvalidProposal(m)) if m.starts_with("forward from"));
        if !(refused_forward && self.refused_forwards_ok) {
            assert!(r.is_ok(), "replica {to} refused {from}'s message: {r:?}");
        }
        self.drain(to);
    }

    /// (view, active) of every replica.
    fn views(&self) -> Vec<(u64, bool)> {
        self.replicas
            .iter()
            .map(|r| (r.view(), r.is_view_active()))
            .collect()
    }

    fn tick_until(&mut self, t: u64) {
        while self.now < t {
            self.tick(100);
        }
    }

    fn tick(&mut self, ms: u64) {
        self.now += ms;
        for id in 0..4 {
            if !self.down[id as usize] {
                self.replicas[id as usize]
                    .step(Input::Tick { now_ms: self.now })
                    .unwrap();
                self.drain(id);
            }
        }
        self.pump();
    }

    fn submit(&mut self, to: ReplicaId, t: Vec<u8>) {
        self.replicas[to as usize].step(Input::Request(t)).unwrap();
        self.drain(to);
        self.pump();
    }
}

#[test]
fn normal_case_commits_certified_blocks_with_inclusion_proofs() {
    let mut net = Net::new();
    for i in 0..10 {
        net.submit((i % 4) as ReplicaId, tx(i));
        net.tick(1);
    }
    for _ in 0..5 {
        net.tick(1);
    }
    let verifier = InsecureTestVerifier::new(&keys(4));
    let reference = net.commits[0].clone();
    assert!(!reference.is_empty());
    let total: usize = reference.iter().map(|b| b.txs.len()).sum();
    assert_eq!(total, 10, "every submitted transaction is committed once");
    for r in 0..4 {
        let same: Vec<_> = net.commits[r].iter().map(|b| (&b.header, &b.txs)).collect();
        let want: Vec<_> = reference.iter().map(|b| (&b.header, &b.txs)).collect();
        assert_eq!(same, want, "replica {r} committed the same chain");
        assert_eq!(net.replicas[r].app().applied(), 10);
    }
    let mut prev = None;
    for b in &reference {
        b.verify(CHAIN, EPOCH, 4, 3, &verifier).unwrap();
        if let Some(p) = prev {
            assert_eq!(b.header.prev_hash, p, "hash chain");
        }
        prev = Some(b.header.hash());
        for (i, t) in b.txs.iter().enumerate() {
            let proof = b.inclusion_proof(i).unwrap();
            proof.verify(CHAIN, EPOCH, t, 4, 3, &verifier).unwrap();
            assert!(
                proof
                    .verify("other-chain", EPOCH, t, 4, 3, &verifier)
                    .is_err()
            );
            assert!(proof.verify(CHAIN, EPOCH + 1, t, 4, 3, &verifier).is_err());
            assert!(
                proof
                    .verify(CHAIN, EPOCH, b"not it", 4, 3, &verifier)
                    .is_err()
            );
        }
    }
    // Checkpoints became stable and garbage-collected the log.
    assert!(net.replicas[0].stable_checkpoint().height >= 4);

    // Restart from the store reproduces the head; a corrupted store is refused, not trusted.
    let persisted = net.stores[1].load().unwrap().unwrap();
    assert!(!persisted.blocks.is_empty());
    let restart = |p| {
        Replica::with_verifier(
            cfg(1),
            Box::new(InsecureTestSigner::new(1)),
            Box::new(InsecureTestVerifier::new(&keys(4))),
            KvApp::new(KvAuth::Tag),
            Some(p),
        )
    };
    let again = restart(persisted.clone()).unwrap();
    assert_eq!(again.last_block_hash(), net.replicas[1].last_block_hash());
    let mut gap = persisted.clone();
    gap.blocks.remove(0);
    assert!(matches!(restart(gap), Err(LedgerError::Corrupt(_))));
    let mut tampered = persisted.clone();
    tampered.blocks[0].txs[0] = tx(99);
    assert!(matches!(restart(tampered), Err(LedgerError::Corrupt(_))));
    let mut bad_cp = persisted;
    if let Some(cp) = bad_cp.checkpoint.as_mut() {
        cp.snapshot.push(0);
        assert!(matches!(restart(bad_cp), Err(LedgerError::Corrupt(_))));
    }
}

fn signed(from: ReplicaId, body: Body, chain: &str, epoch: u64) -> Vec<u8> {
    msg::encode(
        chain,
        epoch,
        from,
        body,
        None,
        &InsecureTestSigner::new(from),
    )
    .0
}

#[test]
fn hostile_messages_are_errors_and_change_nothing() {
    let store = MemStore::new();
    let mut r = replica(1, &store);
    let d = [9u8; 32];
    let prep = |_from: ReplicaId| Body::Prepare {
        view: 0,
        height: 1,
        digest: d,
    };
    let step = |r: &mut Replica<KvApp>, m: Vec<u8>| r.step(Input::Peer { from: 2, msg: m });
    assert!(matches!(
        step(&mut r, vec![]),
        Err(LedgerError::Malformed(_))
    ));
    assert!(matches!(
        step(&mut r, signed(2, prep(2), "other", EPOCH)),
        Err(LedgerError::WrongChain)
    ));
    assert!(matches!(
        step(&mut r, signed(2, prep(2), CHAIN, EPOCH + 1)),
        Err(LedgerError::WrongEpoch { .. })
    ));
    // Signed by replica 3's key but claiming to be from 2.
    let forged = msg::encode(CHAIN, EPOCH, 2, prep(2), None, &InsecureTestSigner::new(3)).0;
    assert!(matches!(
        step(&mut r, forged),
        Err(LedgerError::BadSignature("prepare"))
    ));
    let unknown = msg::encode(CHAIN, EPOCH, 9, prep(9), None, &InsecureTestSigner::new(9)).0;
    assert!(matches!(
        step(&mut r, unknown),
        Err(LedgerError::UnknownReplica(9))
    ));
    // A pre-prepare from a backup, and a prepare from the primary.
    let pp = Body::PrePrepare {
        view: 0,
        height: 1,
        txs: vec![tx(1)],
    };
    assert!(matches!(
        step(&mut r, signed(2, pp, CHAIN, EPOCH)),
        Err(LedgerError::NotAllowed { .. })
    ));
    assert!(matches!(
        step(&mut r, signed(0, prep(0), CHAIN, EPOCH)),
        Err(LedgerError::NotAllowed { .. })
    ));
    // A proposal with a badly authenticated transaction is refused without a vote.
    let mut bad = tx(2);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let pp = Body::PrePrepare {
        view: 0,
        height: 1,
        txs: vec![bad],
    };
    assert!(matches!(
        step(&mut r, signed(0, pp, CHAIN, EPOCH)),
        Err(LedgerError::InvalidProposal(_))
    ));
    let actions: Vec<Action> = r.drain_actions().collect();
    assert!(
        actions.iter().all(|a| !matches!(a, Action::Send { .. })),
        "no vote was sent: {actions:?}"
    );
    assert_eq!(r.last_executed(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn mutated_messages_never_panic(pos in any::<usize>(), byte in any::<u8>(), cut in any::<usize>(), which in 0usize..4) {
        let store = MemStore::new();
        let mut r = replica(1, &store);
        let bodies = [
            Body::PrePrepare { view: 0, height: 1, txs: vec![tx(1), tx(2)] },
            Body::Commit { view: 0, height: 1, digest: [1; 32] },
            Body::ViewChange(ViewChange {
                new_view: 1,
                stable: r.stable_checkpoint().clone(),
                prepared: vec![],
            }),
            Body::StateRequest {
                have: 0,
                low: 0,
                view: 0,
                active: true,
            },
        ];
        let mut m = signed(0, bodies[which].clone(), CHAIN, EPOCH);
        let i = pos % m.len();
        m[i] = byte;
        let _ = r.step(Input::Peer { from: 0, msg: m.clone() });
        m.truncate(cut % (m.len() + 1));
        let _ = r.step(Input::Peer { from: 0, msg: m });
    }
}

#[test]
fn a_restarted_replica_never_signs_a_second_digest() {
    let mut store = MemStore::new();
    let mut r = replica(1, &store);
    let a = vec![tx(1)];
    let b = vec![tx(2)];
    r.step(Input::Peer {
        from: 0,
        msg: signed(
            0,
            Body::PrePrepare {
                view: 0,
                height: 1,
                txs: a.clone(),
            },
            CHAIN,
            EPOCH,
        ),
    })
    .unwrap();
    let mut sent_prepare = false;
    for act in r.drain_actions() {
        match act {
            Action::Persist(recs) => {
                assert!(!sent_prepare, "the vote is persisted before it is sent");
                store.apply(&recs).unwrap();
            }
            Action::Send { msg, .. } => {
                let env = msg::decode(&msg, 1 << 20).unwrap();
                if matches!(env.body, Body::Prepare { .. }) {
                    sent_prepare = true;
                }
            }
            _ => {}
        }
    }
    assert!(sent_prepare);
    // Crash: memory is gone; the store survives. The primary equivocates.
    drop(r);
    let mut r = replica(1, &store);
    let _ = r.drain_actions().count();
    let res = r.step(Input::Peer {
        from: 0,
        msg: signed(
            0,
            Body::PrePrepare {
                view: 0,
                height: 1,
                txs: b.clone(),
            },
            CHAIN,
            EPOCH,
        ),
    });
    assert!(
        matches!(res, Err(LedgerError::Equivocation { .. })),
        "{res:?}"
    );
    let digest_b = batch_digest(CHAIN, EPOCH, 1, &b);
    for act in r.drain_actions() {
        if let Action::Send { msg, .. } = act {
            let env = msg::decode(&msg, 1 << 20).unwrap();
            if let Body::Prepare { digest, .. } | Body::Commit { digest, .. } = env.body {
                assert_ne!(digest, digest_b, "signed a second digest after restart");
            }
        }
    }
}

fn prepared_cert(view: u64, height: u64, txs: Vec<Vec<u8>>) -> PreparedCert {
    let d = batch_digest(CHAIN, EPOCH, height, &txs);
    let primary = (view % 4) as ReplicaId;
    let pp = vote_bytes(CHAIN, EPOCH, VoteKind::PrePrepare, view, height, &d);
    let pr = vote_bytes(CHAIN, EPOCH, VoteKind::Prepare, view, height, &d);
    let prepares = (0..4)
        .filter(|r| *r != primary)
        .take(2)
        .map(|r| (r, Sig(InsecureTestSigner::new(r).sign(&pr))))
        .collect();
    PreparedCert {
        view,
        height,
        digest: d,
        txs: Some(txs),
        primary_sig: Sig(InsecureTestSigner::new(primary).sign(&pp)),
        prepares,
    }
}

fn view_change(
    from: ReplicaId,
    new_view: u64,
    prepared: Vec<PreparedCert>,
    genesis: &Replica<KvApp>,
) -> (Vec<u8>, SignedViewChange) {
    let vc = ViewChange {
        new_view,
        stable: genesis.stable_checkpoint().clone(),
        prepared,
    };
    let (m, sig) = msg::encode(
        CHAIN,
        EPOCH,
        from,
        Body::ViewChange(vc.clone()),
        None,
        &InsecureTestSigner::new(from),
    );
    (m, SignedViewChange { from, vc, sig })
}

fn new_views(actions: Vec<Action>) -> Vec<NewView> {
    actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Send { msg, .. } => match msg::decode(&msg, 1 << 20).unwrap().body {
                Body::NewView(nv) => Some(nv),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[test]
fn new_view_reproposes_the_highest_view_prepared_batch() {
    // Replica 2 is the primary of view 2. Replica 0 prepared batch A at height 1 in view 0;
    // replica 1 prepared batch B at height 1 in view 1. B (the higher view) must win; height 2
    // (prepared nowhere) ... is not re-proposed, and a gap becomes a null block.
    let store = MemStore::new();
    let mut p = replica(2, &store);
    let a = vec![tx(10)];
    let b = vec![tx(11)];
    let c = vec![tx(12)];
    let (m0, _) = view_change(0, 2, vec![prepared_cert(0, 1, a.clone())], &p);
    let (m1, _) = view_change(
        1,
        2,
        vec![
            prepared_cert(1, 1, b.clone()),
            prepared_cert(1, 3, c.clone()),
        ],
        &p,
    );
    p.step(Input::Peer { from: 0, msg: m0 }).unwrap();
    p.step(Input::Peer { from: 1, msg: m1 }).unwrap();
    // Two requests for higher views (f+1) make replica 2 join; with its own it has 2f+1.
    let nvs = new_views(p.drain_actions().collect());
    assert_eq!(nvs.len(), 1, "exactly one new view");
    let nv = &nvs[0];
    assert_eq!(nv.view, 2);
    let props: Vec<(u64, Vec<Vec<u8>>)> = nv
        .proposals
        .iter()
        .map(|r| (r.height, r.txs.clone()))
        .collect();
    assert_eq!(props, vec![(1, b.clone()), (2, vec![]), (3, c.clone())]);
    assert!(
        nv.view_changes
            .iter()
            .all(|s| s.vc.prepared.iter().all(|c| c.txs.is_none())),
        "the new view carries the view changes without their batches"
    );
    assert!(p.is_view_active());
    assert_eq!(p.view(), 2);
}

#[test]
fn backups_refuse_a_new_view_that_drops_a_prepared_batch() {
    let store = MemStore::new();
    let mut backup = replica(3, &store);
    let a = vec![tx(10)];
    let b = vec![tx(11)];
    let (_, s0) = view_change(0, 2, vec![prepared_cert(0, 1, a.clone())], &backup);
    let (_, s1) = view_change(1, 2, vec![prepared_cert(1, 1, b.clone())], &backup);
    let (_, s2) = view_change(2, 2, vec![], &backup);
    let signer = InsecureTestSigner::new(2);
    let repro = |txs: Vec<Vec<u8>>| {
        let d = batch_digest(CHAIN, EPOCH, 1, &txs);
        Reproposal {
            height: 1,
            sig: Sig(signer.sign(&vote_bytes(CHAIN, EPOCH, VoteKind::PrePrepare, 2, 1, &d))),
            txs,
        }
    };
    // Re-proposing the lower-view batch A is the classic bug; it must be refused.
    let bad = NewView {
        view: 2,
        view_changes: vec![s0.clone(), s1.clone(), s2.clone()],
        proposals: vec![repro(a.clone())],
    };
    let m = signed(2, Body::NewView(bad), CHAIN, EPOCH);
    assert!(matches!(
        backup.step(Input::Peer { from: 2, msg: m }),
        Err(LedgerError::InvalidViewChange(_))
    ));
    assert!(!backup.is_view_active() || backup.view() == 0);
    // A view change with a forged prepared certificate (a prepare signature by the wrong key)
    // is refused on its own and inside a new view.
    let mut forged = prepared_cert(1, 1, a.clone());
    forged.prepares[1].1 = forged.prepares[0].1;
    let (fm, fs) = view_change(1, 2, vec![forged], &backup);
    assert!(matches!(
        backup.step(Input::Peer { from: 1, msg: fm }),
        Err(LedgerError::InvalidCertificate(_))
    ));
    let nv = NewView {
        view: 2,
        view_changes: vec![s0.clone(), fs, s2.clone()],
        proposals: vec![repro(a.clone())],
    };
    assert!(
        backup
            .step(Input::Peer {
                from: 2,
                msg: signed(2, Body::NewView(nv), CHAIN, EPOCH)
            })
            .is_err()
    );
    // The correct new view is accepted and the backup prepares B in view 2.
    let good = NewView {
        view: 2,
        view_changes: vec![s0, s1, s2],
        proposals: vec![repro(b.clone())],
    };
    backup
        .step(Input::Peer {
            from: 2,
            msg: signed(2, Body::NewView(good), CHAIN, EPOCH),
        })
        .unwrap();
    assert!(backup.is_view_active());
    assert_eq!(backup.view(), 2);
    let db = batch_digest(CHAIN, EPOCH, 1, &b);
    let prepared_b = backup.drain_actions().any(|a| match a {
        Action::Send { msg, .. } => matches!(
            msg::decode(&msg, 1 << 20).unwrap().body,
            Body::Prepare { view: 2, height: 1, digest } if digest == db
        ),
        _ => false,
    });
    assert!(prepared_b);
}

#[test]
fn a_replica_beyond_the_watermark_catches_up_by_state_transfer() {
    let mut net = Net::new();
    net.down[3] = true;
    // 40 transactions, 2 per block: 20 blocks, far beyond L = 8 above replica 3's checkpoint.
    for i in 0..40 {
        net.submit((i % 3) as ReplicaId, tx(i));
        net.tick(1);
    }
    for _ in 0..5 {
        net.tick(1);
    }
    let head = net.replicas[0].last_executed();
    assert!(head >= 20, "head {head}");
    assert_eq!(net.replicas[3].last_executed(), 0);
    net.down[3] = false;
    for _ in 0..20 {
        net.tick(100);
    }
    assert_eq!(net.replicas[3].last_executed(), head);
    assert_eq!(
        net.replicas[3].last_block_hash(),
        net.replicas[0].last_block_hash()
    );
    assert_eq!(
        net.replicas[3].app().state_root(),
        net.replicas[0].app().state_root()
    );
    // It participates again: new transactions commit everywhere.
    net.submit(3, tx(100));
    for _ in 0..5 {
        net.tick(1);
    }
    for r in 0..4 {
        assert_eq!(net.replicas[r].app().applied(), 41, "replica {r}");
    }
}

#[test]
fn a_single_replica_with_f_zero_commits_alone() {
    let single = ReplicaConfig {
        validators: keys(1),
        f: 0,
        ..cfg(0)
    };
    let mut r = Replica::with_verifier(
        single,
        Box::new(InsecureTestSigner::new(0)),
        Box::new(InsecureTestVerifier::new(&keys(1))),
        KvApp::new(KvAuth::Tag),
        None,
    )
    .unwrap();
    r.step(Input::Request(tx(1))).unwrap();
    r.step(Input::Tick { now_ms: 10 }).unwrap();
    let commits = r
        .drain_actions()
        .filter(|a| matches!(a, Action::Commit(_)))
        .count();
    assert_eq!(commits, 1);
    assert_eq!(r.app().applied(), 1);
    // A signer whose key is not validators[id] is refused.
    let bad = Replica::with_verifier(
        cfg(0),
        Box::new(InsecureTestSigner::new(1)),
        Box::new(InsecureTestVerifier::new(&keys(4))),
        KvApp::new(KvAuth::Tag),
        None,
    );
    assert!(matches!(bad, Err(LedgerError::Config(_))));
}

/// Every message the replica sent since the last call, decoded, with its destination.
fn sent_bodies(r: &mut Replica<KvApp>) -> Vec<(Dest, Body)> {
    r.drain_actions()
        .filter_map(|a| match a {
            Action::Send { to, msg } => Some((to, msg::decode(&msg, 4 << 20).unwrap().body)),
            _ => None,
        })
        .collect()
}

fn forwards_of(sent: &[(Dest, Body)], to: Dest, t: &[u8]) -> usize {
    sent.iter()
        .filter(|(d, b)| {
            *d == to && matches!(b, Body::Forward { txs } if txs.iter().any(|x| x == t))
        })
        .count()
}

#[test]
fn a_lone_view_change_waits_for_a_quorum_and_keeps_relaying_client_transactions() {
    // Replica 3 hears nobody (cut off) while one of its clients' transactions is pending.
    let store = MemStore::new();
    let mut r = replica(3, &store);
    r.step(Input::Tick { now_ms: 0 }).unwrap();
    r.step(Input::Request(tx(1))).unwrap();
    let sent = sent_bodies(&mut r);
    assert_eq!(
        forwards_of(&sent, Dest::One(0), &tx(1)),
        1,
        "to the primary"
    );
    // Its timer fires: it asks for view 1...
    r.step(Input::Tick { now_ms: 1000 }).unwrap();
    assert_eq!((r.view(), r.is_view_active()), (1, false));
    let mut sent = sent_bodies(&mut r);
    // ...and goes no further, however long it waits: fewer than 2f+1 replicas asked for view
    // 1, so the others may be working in view 0 and will come to view 1 at their next view
    // change. Meanwhile it relays its client's transaction to every replica, repeatedly.
    for t in (1100..=600_000).step_by(100) {
        r.step(Input::Tick { now_ms: t }).unwrap();
        sent.extend(sent_bodies(&mut r));
    }
    assert_eq!((r.view(), r.is_view_active()), (1, false));
    assert!(
        forwards_of(&sent, Dest::All, &tx(1)) >= 100,
        "relayed {} times",
        forwards_of(&sent, Dest::All, &tx(1))
    );
    // A client transaction submitted now goes to every replica at once.
    r.step(Input::Request(tx(2))).unwrap();
    assert_eq!(forwards_of(&sent_bodies(&mut r), Dest::All, &tx(2)), 1);
    // Two more replicas ask for view 1 (its primary, replica 1, stays silent): now the timer
    // runs, and without a new view the replica moves on to view 2.
    for from in [0, 2] {
        let (m, _) = view_change(from, 1, vec![], &r);
        r.step(Input::Peer { from, msg: m }).unwrap();
    }
    assert_eq!(r.view(), 1);
    // The second view change's timeout: twice the base.
    r.step(Input::Tick {
        now_ms: 600_000 + 2 * 1000,
    })
    .unwrap();
    assert_eq!((r.view(), r.is_view_active()), (2, false));
}

#[test]
fn a_pending_transaction_whose_nonce_another_one_used_does_not_start_a_lone_view_change() {
    let mut net = Net::new();
    net.refused_forwards_ok = true;
    net.tick(1);
    let first = KvApp::make_tx(KvAuth::Tag, 7, 1, b"k", b"first");
    let second = KvApp::make_tx(KvAuth::Tag, 7, 1, b"k", b"second");
    // The primary orders `first`; replica 2 prepares it but gets no commit votes yet.
    net.replicas[0].step(Input::Request(first)).unwrap();
    net.drain(0);
    let mut held = Vec::new();
    while let Some((from, to, m)) = net.queue.pop_front() {
        let commit = matches!(msg::decode(&m, 4 << 20).unwrap().body, Body::Commit { .. });
        if to == 2 && commit {
            held.push((from, to, m));
        } else {
            net.deliver(from, to, m);
        }
    }
    assert_eq!(net.replicas[0].last_executed(), 1);
    assert_eq!(net.replicas[2].last_executed(), 0);
    // The same sender's `second`, with the same nonce, reaches replica 2, which has not
    // executed `first` yet: it accepts it and relays it to the primary, which refuses it.
    net.replicas[2].step(Input::Request(second)).unwrap();
    net.drain(2);
    net.pump();
    // Replica 2 executes `first` in the normal case; `second` can never be ordered now.
    net.queue.extend(held);
    net.pump();
    assert_eq!(net.replicas[2].last_executed(), 1);
    assert_eq!(net.replicas[2].pending_len(), 1);
    // Its view-change timer expires; it drops `second` instead of leaving view 0 alone.
    net.tick_until(10_000);
    assert_eq!(net.views(), vec![(0, true); 4]);
    assert_eq!(net.replicas[2].pending_len(), 0);
}

#[test]
fn replicas_join_a_peer_left_alone_in_the_next_view_but_not_at_will() {
    let mut net = Net::new();
    // Replica 3 relays its transaction until it learns that it committed.
    net.refused_forwards_ok = true;
    net.tick(1);
    // Replica 3 is cut off while its client's transaction is pending: its timer expires and
    // it asks, alone, for view 1.
    net.cut[3] = true;
    net.submit(3, tx(1));
    net.tick_until(1_200);
    assert_eq!(net.views()[3], (1, false));
    // The cut heals. Replica 3 relays its transaction to everyone; the others order it in
    // view 0 and replica 3 follows by state transfer, but takes no part in consensus.
    net.cut[3] = false;
    let healed = net.now;
    net.tick_until(healed + 1_500);
    assert_eq!(
        net.views(),
        vec![(0, true), (0, true), (0, true), (1, false)],
        "one request for view 1 is not enough at first"
    );
    assert!((0..4).all(|r| net.replicas[r].app().has_applied(1, 1)));
    // Two base timeouts after they first saw its request, the others join it.
    net.tick_until(healed + 4_000);
    assert_eq!(net.views(), vec![(1, true); 4]);

    // Again, soon after: replica 3 is cut off with a pending transaction and asks for view 2.
    net.cut[3] = true;
    net.submit(3, tx(2));
    // (Twice the base timeout: nothing has committed in view 1 yet, so the back-off stands.)
    net.tick_until(net.now + 2_200);
    assert_eq!(net.views()[3], (2, false));
    net.cut[3] = false;
    let healed = net.now;
    // Within ten base timeouts of the first join the others do not join again (a Byzantine
    // replica cannot make them change view at will)...
    net.tick_until(healed + 3_000);
    assert_eq!(net.views()[..3], vec![(1, true); 3]);
    assert!((0..4).all(|r| net.replicas[r].app().has_applied(2, 2)));
    // ...and after that they do.
    net.tick_until(healed + 12_000);
    assert_eq!(net.views(), vec![(2, true); 4]);
}

#[test]
fn a_backup_relays_a_turns_client_transactions_in_one_message() {
    let store = MemStore::new();
    let mut r = replica(3, &store);
    r.step(Input::Tick { now_ms: 0 }).unwrap();
    let txs: Vec<Vec<u8>> = (1..=5).map(tx).collect();
    for t in &txs {
        r.step(Input::Request(t.clone())).unwrap();
    }
    let sent = sent_bodies(&mut r);
    let forwards: Vec<&Vec<Vec<u8>>> = sent
        .iter()
        .filter_map(|(d, b)| match b {
            Body::Forward { txs } if *d == Dest::One(0) => Some(txs),
            _ => None,
        })
        .collect();
    // max_batch_txs is 2: three messages, in submission order, instead of five.
    assert_eq!(forwards.len(), 3);
    let relayed: Vec<Vec<u8>> = forwards.into_iter().flatten().cloned().collect();
    assert_eq!(relayed, txs);
}
