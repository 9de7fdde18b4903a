//! Properties of the state machine: determinism, "rejected changes nothing", snapshots and
//! state proofs.

mod state_support;

use ehr_ledger::app::{App, Hash, TxOutcome};
use ehr_ledger::state::{LedgerState, StateKey, StateProof};
use ehr_ledger::tx::{
    CapsuleId, GrantId, NewRecord, Purpose, Role, Scope, SignedTx, TxKind, codes,
};
use proptest::prelude::*;
use state_support::*;

/// One step of a random workload: an actor, an action and a way to spoil it.
#[derive(Clone, Debug)]
struct Step {
    actor: usize,
    action: u8,
    a: u8,
    b: u8,
    spoil: u8,
}

fn step() -> impl Strategy<Value = Step> {
    (0usize..7, 0u8..10, 0u8..6, 0u8..6, 0u8..12).prop_map(|(actor, action, a, b, spoil)| Step {
        actor,
        action,
        a,
        b,
        spoil,
    })
}

/// An expiry height that is judged the same by the shadow (one block per transaction) and by
/// the real run (several transactions per block): already past (1), or far in the future.
fn expiry(now: u64, x: u8) -> u64 {
    if x == 0 {
        1
    } else {
        now + 10_000 + u64::from(x)
    }
}

/// The actor name of a participant id (a genesis actor), if any.
fn name_of(net: &Net, id: &ehr_ledger::tx::ParticipantId) -> Option<&'static str> {
    ACTORS.iter().map(|a| a.0).find(|name| net.id(name) == *id)
}

/// Turns steps into blocks of signed transaction bytes. The sender is usually the one the
/// rules expect (looked up in a shadow replica that applies each transaction alone), but
/// `spoil == 3` picks an arbitrary actor; parameters are random, so many transactions are
/// still invalid (unknown ids, wrong epochs, past expiries), and some are spoiled on purpose
/// (replayed, bad signature, truncated). After each transaction the senders' nonces follow
/// the shadow, so rejections do not leave nonce gaps behind.
fn build(net: &mut Net, steps: &[Step], cuts: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let mut shadow = LedgerState::from_genesis(&genesis()).unwrap();
    let mut blocks: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut cur: Vec<Vec<u8>> = Vec::new();
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut grants: Vec<GrantId> = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let hospital = ["hospital_a", "hospital_b"][s.a as usize % 2];
        let other = net.id(ACTORS[s.b as usize % ACTORS.len()].0);
        let now = shadow.height() + 1;
        let record_cid = cid(s.a * 6 + s.b);
        let (expected, kind): (&str, TxKind) = match s.action {
            0 => (
                hospital,
                TxKind::PublishCapsule {
                    capsule: CapsuleId([s.a; 32]),
                    policy: [
                        "role:researcher",
                        "dept:cardiology or org:hospital-a",
                        "2 of (a, b, c)",
                    ][s.b as usize % 3]
                        .into(),
                    epoch: 0,
                    wrapped_search_key: vec![s.b; 40],
                },
            ),
            1 => {
                let epoch = shadow.capsule(&CapsuleId([s.a; 32])).map_or(0, |c| c.epoch);
                (
                    hospital,
                    TxKind::RotateCapsuleEpoch {
                        capsule: CapsuleId([s.a; 32]),
                        epoch: epoch + u64::from(s.b % 3 != 0),
                        wrapped_search_key: vec![s.b; 40],
                    },
                )
            }
            3 if s.b % 2 == 1 => {
                let epoch = shadow.capsule(&CapsuleId([s.a; 32])).map_or(0, |c| c.epoch);
                let records = [record_cid.clone(), cid(s.a * 6 + (s.b + 1) % 6)]
                    .into_iter()
                    .map(|cid| NewRecord {
                        cid,
                        wrapped_key: vec![s.b; 60],
                        search_labels: vec![[s.a; 16]],
                        size: 700,
                        patient: (s.b % 3 == 0).then(|| net.id("patient")),
                    })
                    .collect();
                (
                    hospital,
                    TxKind::RegisterRecords {
                        capsule: CapsuleId([s.a; 32]),
                        epoch: epoch + u64::from(s.b == 5),
                        records,
                    },
                )
            }
            2 | 3 => {
                let epoch = shadow.capsule(&CapsuleId([s.a; 32])).map_or(0, |c| c.epoch);
                (
                    hospital,
                    record_kind(
                        record_cid.clone(),
                        CapsuleId([s.a; 32]),
                        epoch + u64::from(s.b == 5),
                        (s.b % 3 == 0).then(|| net.id("patient")),
                    ),
                )
            }
            4 => {
                let granter = shadow
                    .record(&record_cid)
                    .and_then(|r| {
                        if s.b % 2 == 0 {
                            r.patient
                        } else {
                            Some(r.owner)
                        }
                    })
                    .and_then(|id| name_of(net, &id))
                    .unwrap_or(hospital);
                (
                    granter,
                    TxKind::Grant {
                        cid: record_cid.clone(),
                        grantee: other,
                        scope: Scope::Read,
                        expiry_height: expiry(now, s.b),
                        rewrapped_key: vec![1; 50],
                    },
                )
            }
            5 => (
                "authority",
                TxKind::AssignAttributes {
                    participant: other,
                    attributes: vec![format!("dept:d{}", s.a), "org:hospital-a".into()],
                    expiry_height: (s.a % 2 == 0).then(|| expiry(now, s.a)),
                },
            ),
            6 => (
                "authority",
                TxKind::RevokeAttributes {
                    participant: other,
                    attributes: vec![format!("dept:d{}", s.a)],
                },
            ),
            7 => {
                let owner = shadow
                    .record(&record_cid)
                    .and_then(|r| name_of(net, &r.owner))
                    .unwrap_or(hospital);
                (
                    owner,
                    TxKind::Supersede {
                        old: record_cid.clone(),
                        new: cid(s.b * 6 + s.a),
                    },
                )
            }
            8 => (
                ["validator", "hospital_a"][s.b as usize % 2],
                TxKind::RecordAccess {
                    cid: record_cid.clone(),
                    accessor: other,
                    purpose: Purpose::Research,
                },
            ),
            _ => match grants.iter().rev().nth(s.a as usize % 3) {
                Some(g) => {
                    let grantor = shadow
                        .grant(g)
                        .and_then(|g| name_of(net, &g.grantor))
                        .unwrap_or("patient");
                    (grantor, TxKind::Revoke { grant: *g })
                }
                None => (
                    "patient",
                    TxKind::Revoke {
                        grant: GrantId([s.a; 32]),
                    },
                ),
            },
        };
        let name = if s.spoil == 3 {
            ACTORS[s.actor].0
        } else {
            expected
        };
        let is_grant = matches!(kind, TxKind::Grant { .. });
        let mut bytes = net.tx(name, kind);
        if is_grant {
            grants.push(GrantId(ehr_ledger::tx::tx_id(&bytes)));
        }
        match s.spoil {
            0 => {
                let n = bytes.len();
                bytes[n - 3] ^= 0x04;
            }
            1 => {
                bytes.truncate(bytes.len() / 2);
            }
            2 if !out.is_empty() => {
                // Replay an earlier transaction instead.
                bytes = out[s.a as usize % out.len()].clone();
            }
            _ => {}
        }
        let h = shadow.height() + 1;
        shadow.apply_block(h, std::slice::from_ref(&bytes));
        for (name, ..) in ACTORS {
            let id = net.id(name);
            net.nonces.insert(id, shadow.nonce(&id).unwrap());
        }
        out.push(bytes.clone());
        cur.push(bytes);
        if cuts[i % cuts.len()].is_multiple_of(4) || i + 1 == steps.len() {
            blocks.push(std::mem::take(&mut cur));
        }
    }
    blocks
}

fn run(state: &mut LedgerState, blocks: &[Vec<Vec<u8>>]) -> (Vec<Vec<TxOutcome>>, Vec<Hash>) {
    let mut outs = Vec::new();
    let mut roots = Vec::new();
    for b in blocks {
        let h = state.height() + 1;
        let (o, r) = state.apply_block(h, b);
        assert_eq!(r, state.state_root());
        outs.push(o);
        roots.push(r);
    }
    (outs, roots)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Two replicas applying the same blocks agree on every outcome and root; a replica that
    /// applies only the transactions that were applied reaches the same roots (rejected
    /// transactions change nothing); a replica restored from a mid-way snapshot continues to
    /// the same roots.
    #[test]
    fn deterministic_and_rejections_change_nothing(
        steps in proptest::collection::vec(step(), 1..60),
        cuts in proptest::collection::vec(any::<u8>(), 1..8),
    ) {
        let mut net = Net::new();
        let blocks = build(&mut net, &steps, &cuts);

        let mut a = LedgerState::from_genesis(&genesis()).unwrap();
        let mut b = LedgerState::from_genesis(&genesis()).unwrap();
        let (outs_a, roots_a) = run(&mut a, &blocks);
        let (outs_b, roots_b) = run(&mut b, &blocks);
        prop_assert_eq!(&outs_a, &outs_b);
        prop_assert_eq!(&roots_a, &roots_b);
        prop_assert_eq!(a.snapshot(), b.snapshot());
        prop_assert_eq!(a.take_events(), b.take_events());

        let applied_only: Vec<Vec<Vec<u8>>> = blocks
            .iter()
            .zip(&outs_a)
            .map(|(blk, outs)| {
                blk.iter()
                    .zip(outs)
                    .filter(|(_, o)| **o == TxOutcome::Applied)
                    .map(|(t, _)| t.clone())
                    .collect()
            })
            .collect();
        let mut c = LedgerState::from_genesis(&genesis()).unwrap();
        let (outs_c, roots_c) = run(&mut c, &applied_only);
        prop_assert!(outs_c.iter().flatten().all(|o| *o == TxOutcome::Applied));
        prop_assert_eq!(&roots_c, &roots_a);

        let mid = blocks.len() / 2;
        let mut d = LedgerState::from_genesis(&genesis()).unwrap();
        run(&mut d, &blocks[..mid]);
        let snap = d.snapshot();
        let mut e = LedgerState::from_genesis(&genesis()).unwrap();
        e.restore(&snap, &d.state_root()).unwrap();
        prop_assert_eq!(e.state_root(), d.state_root());
        let (outs_e, roots_e) = run(&mut e, &blocks[mid..]);
        prop_assert_eq!(&outs_e[..], &outs_a[mid..]);
        prop_assert_eq!(&roots_e[..], &roots_a[mid..]);
    }

    /// Flipping any byte of a snapshot makes restore refuse it (does not decode or does not
    /// match the root) and leaves the state untouched; it never panics.
    #[test]
    fn tampered_snapshots_are_refused(pos in any::<prop::sample::Index>(), bit in 0u8..8, cut in any::<prop::sample::Index>()) {
        let net = populated();
        let snap = net.state.snapshot();
        let root = net.state.state_root();
        let mut bad = snap.clone();
        let i = pos.index(bad.len());
        bad[i] ^= 1 << bit;
        let mut target = LedgerState::from_genesis(&genesis()).unwrap();
        let before = target.state_root();
        let err = target.restore(&bad, &root).unwrap_err();
        prop_assert_eq!(err.code, codes::BAD_SNAPSHOT);
        prop_assert_eq!(target.state_root(), before);
        let truncated = &snap[..cut.index(snap.len())];
        prop_assert!(target.restore(truncated, &root).is_err());
        prop_assert_eq!(target.state_root(), before);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary bytes behind a valid snapshot header never panic restore nor change the state.
    #[test]
    fn arbitrary_snapshot_bytes_are_refused(body in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut bytes = b"EHRSNAP\x01".to_vec();
        bytes.extend_from_slice(&body);
        let mut target = LedgerState::from_genesis(&genesis()).unwrap();
        let before = target.state_root();
        prop_assert!(target.restore(&bytes, &before).is_err());
        prop_assert_eq!(target.state_root(), before);
    }
}

/// A state with some of everything.
fn populated() -> Net {
    let mut net = Net::new();
    let cap = net.capsule("hospital_a", 1, "role:researcher or dept:cardiology");
    let patient = net.id("patient");
    let c1 = net.record("hospital_a", cap, 1, Some(patient));
    let c2 = net.record("hospital_a", cap, 2, None);
    let clinician = net.id("clinician");
    let h = net.state.height();
    net.ok(
        "patient",
        TxKind::Grant {
            cid: c1.clone(),
            grantee: clinician,
            scope: Scope::Read,
            expiry_height: h + 50,
            rewrapped_key: vec![4; 90],
        },
    );
    net.ok(
        "validator",
        TxKind::RecordAccess {
            cid: c1.clone(),
            accessor: clinician,
            purpose: Purpose::Treatment,
        },
    );
    net.ok("hospital_a", TxKind::Supersede { old: c2, new: c1 });
    let newcomer = signing_key(90);
    net.ok(
        "authority",
        TxKind::RegisterParticipant {
            key: pid(&newcomer).0,
            role: Role::Researcher,
            label: "r-90".into(),
        },
    );
    net
}

#[test]
fn snapshot_round_trip() {
    let net = populated();
    let snap = net.state.snapshot();
    let root = net.state.state_root();
    let mut other = LedgerState::from_genesis(&genesis()).unwrap();
    other.restore(&snap, &root).unwrap();
    assert_eq!(other.state_root(), root);
    assert_eq!(other.snapshot(), snap);
    assert_eq!(other.height(), net.state.height());
    // Queries served from derived indexes survive the round trip.
    assert_eq!(other.audit_for_record(&cid(1)).len(), 1);
    assert_eq!(other.grants_for_record(&cid(1)).len(), 1);
    assert_eq!(other.grants_for_grantee(&net.id("clinician")).len(), 1);
    assert!(other.policy(&CapsuleId([1; 32])).is_some());
    // The right snapshot against the wrong root is refused.
    let mut wrong = root;
    wrong[0] ^= 1;
    let mut target = LedgerState::from_genesis(&genesis()).unwrap();
    let before = target.state_root();
    assert_eq!(
        target.restore(&snap, &wrong).unwrap_err().code,
        codes::BAD_SNAPSHOT
    );
    assert_eq!(target.state_root(), before);
    assert!(target.restore(b"not a snapshot", &root).is_err());
}

#[test]
fn state_proofs() {
    let net = populated();
    let root = net.state.state_root();
    let keys = [
        StateKey::Meta,
        StateKey::Record(cid(1)),
        StateKey::Record(cid(2)),
        StateKey::Participant(net.id("patient")),
        StateKey::Nonce(net.id("hospital_a")),
        StateKey::Attributes(net.id("researcher")),
        StateKey::Key(net.id("researcher").0),
        StateKey::Capsule(CapsuleId([1; 32])),
        StateKey::Audit(0),
    ];
    for key in &keys {
        let (value, proof) = net.state.get_with_proof(key);
        let value = value.unwrap_or_else(|| panic!("{key:?} present"));
        proof.verify(&root, key, Some(&value)).unwrap();
        let proof = StateProof::from_bytes(&proof.to_bytes()).unwrap();
        proof.verify(&root, key, Some(&value)).unwrap();
        let mut wrong = value.clone();
        let last = wrong.len() - 1;
        wrong[last] ^= 1;
        assert!(proof.verify(&root, key, Some(&wrong)).is_err(), "{key:?}");
        assert!(proof.verify(&root, key, None).is_err(), "{key:?}");
        let mut other_root = root;
        other_root[31] ^= 1;
        assert!(proof.verify(&other_root, key, Some(&value)).is_err());
    }
    // The record's leaf decodes to the record.
    let (value, _) = net.state.get_with_proof(&StateKey::Record(cid(1)));
    let rec: ehr_ledger::state::Record = postcard::from_bytes(&value.unwrap()).unwrap();
    assert_eq!(&rec, net.state.record(&cid(1)).unwrap());
    // Non-inclusion.
    for key in [
        StateKey::Record(cid(200)),
        StateKey::Grant(GrantId([7; 32])),
        StateKey::Audit(99),
    ] {
        let (value, proof) = net.state.get_with_proof(&key);
        assert!(value.is_none());
        proof.verify(&root, &key, None).unwrap();
        assert!(proof.verify(&root, &key, Some(b"anything")).is_err());
    }
    // A proof for one key does not prove another.
    let (v1, p1) = net.state.get_with_proof(&StateKey::Record(cid(1)));
    assert!(
        p1.verify(&root, &StateKey::Record(cid(2)), v1.as_deref())
            .is_err()
    );
}

/// The random workload above is not vacuous: a fixed pseudo-random run of it applies a good
/// share of every kind of transaction and rejects others.
#[test]
fn workload_mixes_applied_and_rejected() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % m) as u8
    };
    let steps: Vec<Step> = (0..2000)
        .map(|_| {
            // Bias towards hospitals so that capsules and records exist.
            let actor = [2, 3, 2, 3, 1, 5, 0][next(7) as usize];
            Step {
                actor,
                action: next(10),
                a: next(6),
                b: next(6),
                spoil: next(12),
            }
        })
        .collect();
    let mut net = Net::new();
    let blocks = build(&mut net, &steps, &[1, 2, 3, 4, 5]);
    let txs: Vec<Vec<u8>> = blocks.iter().flatten().cloned().collect();
    let mut s = LedgerState::from_genesis(&genesis()).unwrap();
    let (outs, _) = run(&mut s, &blocks);
    let applied: Vec<&Vec<u8>> = txs
        .iter()
        .zip(outs.iter().flatten())
        .filter(|(_, o)| **o == TxOutcome::Applied)
        .map(|(t, _)| t)
        .collect();
    let mut kinds = std::collections::BTreeMap::new();
    for t in &applied {
        *kinds
            .entry(SignedTx::decode(t).unwrap().body.kind.name())
            .or_insert(0) += 1;
    }
    let mut rejected = std::collections::BTreeMap::new();
    for o in outs.iter().flatten() {
        if let TxOutcome::Rejected(r) = o {
            *rejected.entry(r.code).or_insert(0) += 1;
        }
    }
    assert!(
        applied.len() > 200,
        "only {} applied: {kinds:?}; rejected {rejected:?}",
        applied.len()
    );
    assert!(applied.len() < 1800, "{} applied", applied.len());
    for k in [
        "PublishCapsule",
        "RotateCapsuleEpoch",
        "RegisterRecord",
        "RegisterRecords",
        "Grant",
        "Revoke",
        "AssignAttributes",
        "Supersede",
        "RecordAccess",
    ] {
        assert!(
            kinds.get(k).copied().unwrap_or(0) > 0,
            "no {k} applied: {kinds:?}"
        );
    }
}
