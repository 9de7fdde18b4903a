//! One test per validation rule: who may do what, and each reject code.

mod state_support;

use ehr_ledger::app::{App, TxOutcome};
use ehr_ledger::error::StateError;
use ehr_ledger::state::{Authorisation, GenesisParticipant, LedgerState, RecordStatus, StateEvent};
use ehr_ledger::tx::{
    CapsuleId, GrantId, NewRecord, ParticipantId, Purpose, Role, Scope, SignedTx, TxBody, TxKind,
    codes,
};
use state_support::*;

fn register(key: [u8; 32], role: Role, label: &str) -> TxKind {
    TxKind::RegisterParticipant {
        key,
        role,
        label: label.into(),
    }
}

fn grant(cid: ehr_ledger::tx::Cid, grantee: ParticipantId, expiry: u64) -> TxKind {
    TxKind::Grant {
        cid,
        grantee,
        scope: Scope::Read,
        expiry_height: expiry,
        rewrapped_key: vec![7; 120],
    }
}

#[test]
fn genesis_is_validated() {
    let mut g = genesis();
    g.participants.retain(|p| p.role != Role::Validator);
    assert!(matches!(
        LedgerState::from_genesis(&g),
        Err(StateError::Genesis(m)) if m.contains("validator")
    ));
    let mut g = genesis();
    g.participants
        .retain(|p| p.role != Role::AttributeAuthority);
    assert!(LedgerState::from_genesis(&g).is_err());
    let mut g = genesis();
    let dup = g.participants[0].clone();
    g.participants.push(dup);
    assert!(LedgerState::from_genesis(&g).is_err());
    let mut g = genesis();
    g.participants.push(GenesisParticipant {
        key: signing_key(40).verifying_key().to_bytes(),
        role: Role::Patient,
        label: "jane-doe".into(),
        attributes: vec![],
    });
    assert!(
        LedgerState::from_genesis(&g).is_err(),
        "patient label refused"
    );
    let mut g = genesis();
    g.chain_id = "Bad Chain".into();
    assert!(LedgerState::from_genesis(&g).is_err());
    // Same genesis, same root, regardless of the state it is built into.
    let a = LedgerState::from_genesis(&genesis()).unwrap();
    let b = LedgerState::from_genesis(&genesis()).unwrap();
    assert_eq!(a.state_root(), b.state_root());
    assert_eq!(a.height(), 0);
}

#[test]
fn registering_participants() {
    let mut net = Net::new();
    let new = signing_key(50);
    net.rejects(
        "researcher",
        register(pid(&new).0, Role::Researcher, "r2"),
        codes::NOT_PERMITTED,
    );
    net.rejects(
        "hospital_a",
        register(pid(&new).0, Role::Researcher, "r2"),
        codes::NOT_PERMITTED,
    );
    net.rejects(
        "authority",
        register(pid(&new).0, Role::Validator, "node-x"),
        codes::NOT_PERMITTED,
    );
    let taken = net.id("researcher").0;
    net.rejects(
        "authority",
        register(taken, Role::Researcher, "r2"),
        codes::KEY_IN_USE,
    );
    // The identity point has small order: not a usable key.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    net.rejects(
        "authority",
        register(identity, Role::Researcher, "r2"),
        codes::INVALID_FIELD,
    );
    net.ok("authority", register(pid(&new).0, Role::Researcher, "r2"));
    let p = net.state.participant(&pid(&new)).unwrap();
    assert_eq!(p.role, Role::Researcher);
    assert_eq!(p.registered_by, Some(net.id("authority")));
    assert_eq!(net.state.nonce(&pid(&new)), Some(0));
    // A hospital registers its patients.
    let patient = signing_key(51);
    net.ok("hospital_a", register(pid(&patient).0, Role::Patient, ""));
    assert_eq!(
        net.state.participant_by_key(&pid(&patient).0).unwrap().role,
        Role::Patient
    );
    // The newly registered participant can send with nonce 1.
    net.add_key("r2", new);
    net.ok(
        "r2",
        TxKind::RotateKey {
            new_key: pid(&signing_key(52)).0,
        },
    );
}

#[test]
fn rotating_keys() {
    let mut net = Net::new();
    let researcher = net.id("researcher");
    let old_key = net.keys["researcher"].clone();
    let new_key = signing_key(60);
    net.rejects(
        "researcher",
        TxKind::RotateKey {
            new_key: net.id("hospital_a").0,
        },
        codes::KEY_IN_USE,
    );
    net.ok(
        "researcher",
        TxKind::RotateKey {
            new_key: pid(&new_key).0,
        },
    );
    assert!(
        net.state
            .participant_by_key(&old_key.verifying_key().to_bytes())
            .is_none()
    );
    assert_eq!(
        net.state.participant_by_key(&pid(&new_key).0).unwrap().id,
        researcher
    );
    // The old key no longer signs for the participant...
    net.rejects(
        "researcher",
        TxKind::RotateKey {
            new_key: pid(&signing_key(61)).0,
        },
        codes::WRONG_SIGNER,
    );
    // ...and can never be registered again.
    net.rejects(
        "authority",
        register(
            old_key.verifying_key().to_bytes(),
            Role::Researcher,
            "again",
        ),
        codes::KEY_IN_USE,
    );
    net.keys.insert("researcher".into(), new_key);
    net.ok(
        "researcher",
        TxKind::RotateKey {
            new_key: pid(&signing_key(61)).0,
        },
    );
}

#[test]
fn nonces_replay_and_gap() {
    let mut net = Net::new();
    let cap = CapsuleId([1; 32]);
    let kind = |e: u64| TxKind::PublishCapsule {
        capsule: CapsuleId([e as u8; 32]),
        policy: "role:researcher".into(),
        epoch: 0,
        wrapped_search_key: vec![1; 10],
    };
    let first = net.tx("hospital_a", kind(1));
    assert_eq!(net.apply(vec![first.clone()]), vec![TxOutcome::Applied]);
    assert!(net.state.capsule(&cap).is_some());
    // Replaying the same bytes.
    net.rejects_bytes(&first, codes::NONCE_REPLAYED);
    // A fresh transaction reusing nonce 1.
    let me = net.id("hospital_a");
    let reuse = TxBody::new(CHAIN, me, 1, kind(2))
        .sign(&net.keys["hospital_a"])
        .to_bytes();
    net.rejects_bytes(&reuse, codes::NONCE_REPLAYED);
    // Nonce 3 skips 2: check_tx admits it into the window, apply refuses the gap.
    let ahead = TxBody::new(CHAIN, me, 3, kind(3))
        .sign(&net.keys["hospital_a"])
        .to_bytes();
    assert!(net.state.check_tx(&ahead).is_ok());
    let out = net.apply(vec![ahead.clone()]);
    assert!(matches!(&out[..], [TxOutcome::Rejected(r)] if r.code == codes::NONCE_GAP));
    // Far ahead is refused by check_tx too.
    let far = TxBody::new(CHAIN, me, 500, kind(4))
        .sign(&net.keys["hospital_a"])
        .to_bytes();
    assert_eq!(net.state.check_tx(&far).unwrap_err().code, codes::NONCE_GAP);
    // 2 then 3 in one block both apply.
    let two = TxBody::new(CHAIN, me, 2, kind(2))
        .sign(&net.keys["hospital_a"])
        .to_bytes();
    assert_eq!(
        net.apply(vec![two, ahead]),
        vec![TxOutcome::Applied, TxOutcome::Applied]
    );
    assert_eq!(net.state.nonce(&me), Some(3));
}

#[test]
fn recheck_follows_the_state_and_agrees_with_check() {
    let mut net = Net::new();
    let me = net.id("hospital_a");
    let kind = |e: u8| TxKind::PublishCapsule {
        capsule: CapsuleId([e; 32]),
        policy: "role:researcher".into(),
        epoch: 0,
        wrapped_search_key: vec![1; 10],
    };
    let sign = |net: &Net, nonce: u64, e: u8| {
        TxBody::new(CHAIN, me, nonce, kind(e))
            .sign(&net.keys["hospital_a"])
            .to_bytes()
    };
    // Two transactions with nonce 1 pass both checks; one of them commits.
    let (first, second) = (sign(&net, 1, 1), sign(&net, 1, 2));
    for t in [&first, &second] {
        assert!(net.state.check_tx(t).is_ok());
        assert!(net.state.recheck_tx(t).is_ok());
    }
    assert_eq!(net.apply(vec![first]), vec![TxOutcome::Applied]);
    // Now the other one can never apply: the recheck says so, as check_tx does.
    assert_eq!(
        net.state.recheck_tx(&second).unwrap_err().code,
        codes::NONCE_REPLAYED
    );
    assert_eq!(
        net.state.check_tx(&second).unwrap_err().code,
        codes::NONCE_REPLAYED
    );
    // The next nonce is still fine; garbage is refused, not a panic.
    assert!(net.state.recheck_tx(&sign(&net, 2, 3)).is_ok());
    assert!(net.state.recheck_tx(b"not a transaction").is_err());
}

#[test]
fn envelope_chain_sender_signer_signature() {
    let mut net = Net::new();
    let me = net.id("hospital_a");
    let kind = TxKind::RotateKey {
        new_key: pid(&signing_key(70)).0,
    };
    // Signed for another chain.
    let other = TxBody::new("other-chain", me, 1, kind.clone())
        .sign(&net.keys["hospital_a"])
        .to_bytes();
    net.rejects_bytes(&other, codes::WRONG_CHAIN);
    // Signed for another chain, chain id then rewritten to ours: the signature fails.
    let mut tx = TxBody::new("other-chain", me, 1, kind.clone()).sign(&net.keys["hospital_a"]);
    tx.body.chain_id = CHAIN.into();
    net.rejects_bytes(&tx.to_bytes(), codes::BAD_SIGNATURE);
    // A corrupted signature.
    let mut tx = TxBody::new(CHAIN, me, 1, kind.clone()).sign(&net.keys["hospital_a"]);
    tx.signature[5] ^= 1;
    net.rejects_bytes(&tx.to_bytes(), codes::BAD_SIGNATURE);
    // Someone else's key signing in the hospital's name.
    let forged = TxBody::new(CHAIN, me, 1, kind.clone())
        .sign(&net.keys["researcher"])
        .to_bytes();
    net.rejects_bytes(&forged, codes::WRONG_SIGNER);
    // An unregistered sender.
    let stranger = signing_key(71);
    let unknown = TxBody::new(CHAIN, pid(&stranger), 1, kind)
        .sign(&stranger)
        .to_bytes();
    net.rejects_bytes(&unknown, codes::UNKNOWN_SENDER);
    // Garbage.
    net.rejects_bytes(&[1, 2, 3], codes::MALFORMED);
    net.rejects_bytes(&[], codes::MALFORMED);
    net.rejects_bytes(&[9; 40], codes::UNSUPPORTED_VERSION);
}

#[test]
fn attributes_only_by_the_authority() {
    let mut net = Net::new();
    let r = net.id("researcher");
    let assign = |attrs: &[&str], expiry: Option<u64>| TxKind::AssignAttributes {
        participant: r,
        attributes: attrs.iter().map(|a| (*a).to_string()).collect(),
        expiry_height: expiry,
    };
    net.rejects(
        "hospital_a",
        assign(&["dept:x"], None),
        codes::NOT_PERMITTED,
    );
    net.rejects(
        "researcher",
        assign(&["dept:x"], None),
        codes::NOT_PERMITTED,
    );
    let h = net.state.height();
    net.rejects(
        "authority",
        assign(&["dept:x"], Some(h + 1)),
        codes::EXPIRED,
    );
    net.rejects(
        "authority",
        TxKind::AssignAttributes {
            participant: ParticipantId([9; 32]),
            attributes: vec!["dept:x".into()],
            expiry_height: None,
        },
        codes::UNKNOWN_PARTICIPANT,
    );
    let h = net.state.height();
    net.ok("authority", assign(&["dept:x"], Some(h + 3)));
    assert!(net.state.attributes_at(&r, h + 2).contains(&"dept:x"));
    assert!(!net.state.attributes_at(&r, h + 3).contains(&"dept:x"));
    net.rejects(
        "authority",
        TxKind::RevokeAttributes {
            participant: r,
            attributes: vec!["dept:y".into()],
        },
        codes::NOT_ASSIGNED,
    );
    net.rejects(
        "hospital_a",
        TxKind::RevokeAttributes {
            participant: r,
            attributes: vec!["dept:x".into()],
        },
        codes::NOT_PERMITTED,
    );
    net.ok(
        "authority",
        TxKind::RevokeAttributes {
            participant: r,
            attributes: vec!["dept:x".into(), "irb:study-42".into()],
        },
    );
    assert_eq!(net.state.attributes_at(&r, 0), vec!["role:researcher"]);
    // The per-participant limit.
    for chunk in 0..4 {
        let attrs: Vec<String> = (0..64).map(|i| format!("a:{chunk}-{i}")).collect();
        let refs: Vec<&str> = attrs.iter().map(String::as_str).collect();
        if chunk < 3 {
            net.ok("authority", assign(&refs, None));
        } else {
            net.rejects("authority", assign(&refs, None), codes::LIMIT_EXCEEDED);
        }
    }
}

#[test]
fn capsules() {
    let mut net = Net::new();
    let publish = |tag: u8, policy: &str| TxKind::PublishCapsule {
        capsule: CapsuleId([tag; 32]),
        policy: policy.into(),
        epoch: 0,
        wrapped_search_key: vec![1; 64],
    };
    net.rejects(
        "researcher",
        publish(1, "role:researcher"),
        codes::NOT_PERMITTED,
    );
    net.rejects(
        "authority",
        publish(1, "role:researcher"),
        codes::NOT_PERMITTED,
    );
    net.rejects(
        "hospital_a",
        publish(1, "role:researcher and"),
        codes::BAD_POLICY,
    );
    let cap = net.capsule("hospital_a", 1, "role:researcher and irb:study-42");
    assert_eq!(net.state.capsule(&cap).unwrap().owner, net.id("hospital_a"));
    assert!(net.state.policy(&cap).is_some());
    net.rejects("hospital_b", publish(1, "x:y"), codes::DUPLICATE);
    let rotate = |epoch: u64| TxKind::RotateCapsuleEpoch {
        capsule: cap,
        epoch,
        wrapped_search_key: vec![2; 64],
    };
    net.rejects("hospital_b", rotate(1), codes::NOT_PERMITTED);
    net.rejects("hospital_a", rotate(2), codes::WRONG_EPOCH);
    net.rejects("hospital_a", rotate(0), codes::WRONG_EPOCH);
    net.rejects(
        "hospital_a",
        TxKind::RotateCapsuleEpoch {
            capsule: CapsuleId([9; 32]),
            epoch: 1,
            wrapped_search_key: vec![2; 64],
        },
        codes::UNKNOWN_CAPSULE,
    );
    net.state.take_events();
    net.ok("hospital_a", rotate(1));
    assert_eq!(net.state.capsule(&cap).unwrap().epoch, 1);
    assert!(matches!(
        &net.state.take_events()[..],
        [StateEvent::CapsuleEpoch { epoch: 1, .. }]
    ));
}

#[test]
fn records() {
    let mut net = Net::new();
    let cap = net.capsule("hospital_a", 1, "role:researcher");
    let patient = net.id("patient");
    net.rejects(
        "hospital_b",
        record_kind(cid(1), cap, 0, None),
        codes::NOT_PERMITTED,
    );
    net.rejects(
        "researcher",
        record_kind(cid(1), cap, 0, None),
        codes::NOT_PERMITTED,
    );
    net.rejects(
        "hospital_a",
        record_kind(cid(1), CapsuleId([8; 32]), 0, None),
        codes::UNKNOWN_CAPSULE,
    );
    net.rejects(
        "hospital_a",
        record_kind(cid(1), cap, 1, None),
        codes::WRONG_EPOCH,
    );
    net.rejects(
        "hospital_a",
        record_kind(cid(1), cap, 0, Some(net.id("researcher"))),
        codes::INVALID_FIELD,
    );
    net.rejects(
        "hospital_a",
        record_kind(cid(1), cap, 0, Some(ParticipantId([3; 32]))),
        codes::UNKNOWN_PARTICIPANT,
    );
    net.state.take_events();
    let c = net.record("hospital_a", cap, 1, Some(patient));
    let events = net.state.take_events();
    match &events[..] {
        [
            StateEvent::RecordAdded {
                cid,
                epoch,
                labels,
                height,
                ..
            },
        ] => {
            assert_eq!(cid, &c);
            assert_eq!(*epoch, 0);
            assert_eq!(labels.len(), 6);
            assert_eq!(*height, net.state.height());
        }
        other => panic!("unexpected events {other:?}"),
    }
    let rec = net.state.record(&c).unwrap();
    assert_eq!(rec.owner, net.id("hospital_a"));
    assert_eq!(rec.patient, Some(patient));
    assert_eq!(rec.status, RecordStatus::Active);
    net.rejects(
        "hospital_a",
        record_kind(c.clone(), cap, 0, None),
        codes::DUPLICATE,
    );
}

fn new_record(tag: u8, patient: Option<ParticipantId>) -> NewRecord {
    NewRecord {
        cid: cid(tag),
        wrapped_key: vec![0x5A; 160],
        search_labels: (0..3u8).map(|i| [i ^ tag; 16]).collect(),
        size: 5_000,
        patient,
    }
}

fn records_kind(capsule: CapsuleId, records: Vec<NewRecord>) -> TxKind {
    TxKind::RegisterRecords {
        capsule,
        epoch: 0,
        records,
    }
}

#[test]
fn records_in_one_transaction_are_all_or_none() {
    let mut net = Net::new();
    let cap = net.capsule("hospital_a", 1, "role:researcher");
    let patient = net.id("patient");
    let existing = net.record("hospital_a", cap, 9, None);
    net.state.take_events();
    // One bad record refuses the whole transaction (and changes nothing: `rejects` compares
    // the state with a twin that applied an empty block).
    net.rejects(
        "hospital_a",
        records_kind(cap, vec![new_record(1, None), new_record(9, None)]),
        codes::DUPLICATE,
    );
    net.rejects(
        "hospital_a",
        records_kind(
            cap,
            vec![
                new_record(1, None),
                new_record(2, Some(net.id("researcher"))),
            ],
        ),
        codes::INVALID_FIELD,
    );
    net.rejects(
        "hospital_b",
        records_kind(cap, vec![new_record(1, None)]),
        codes::NOT_PERMITTED,
    );
    net.rejects(
        "hospital_a",
        records_kind(cap, vec![]),
        codes::INVALID_FIELD,
    );
    net.rejects(
        "hospital_a",
        records_kind(cap, vec![new_record(1, None), new_record(1, None)]),
        codes::INVALID_FIELD,
    );
    assert!(net.state.record(&cid(1)).is_none());
    assert!(net.state.record(&existing).is_some());

    let id = net.ok(
        "hospital_a",
        records_kind(
            cap,
            vec![
                new_record(1, Some(patient)),
                new_record(2, None),
                new_record(3, None),
            ],
        ),
    );
    let events = net.state.take_events();
    let added: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            StateEvent::RecordAdded { cid, labels, .. } => Some((cid.clone(), labels.len())),
            _ => None,
        })
        .collect();
    assert_eq!(added, vec![(cid(1), 3), (cid(2), 3), (cid(3), 3)]);
    for tag in 1..=3 {
        let rec = net.state.record(&cid(tag)).unwrap();
        assert_eq!(rec.owner, net.id("hospital_a"));
        assert_eq!(rec.tx, id, "every record points at the one transaction");
        assert_eq!(rec.status, RecordStatus::Active);
    }
    assert_eq!(net.state.record(&cid(1)).unwrap().patient, Some(patient));
    net.rejects(
        "hospital_a",
        records_kind(cap, vec![new_record(3, None)]),
        codes::DUPLICATE,
    );
}

#[test]
fn grants_and_revocations() {
    let mut net = Net::new();
    let cap = net.capsule("hospital_a", 1, "dept:oncology");
    let patient = net.id("patient");
    let clinician = net.id("clinician");
    let researcher = net.id("researcher");
    let c = net.record("hospital_a", cap, 1, Some(patient));
    let h = net.state.height();
    assert_eq!(
        net.state.authorisation(&clinician, &c, h),
        Authorisation::Denied
    );
    net.rejects(
        "researcher",
        grant(c.clone(), clinician, h + 10),
        codes::NOT_PERMITTED,
    );
    net.rejects(
        "hospital_b",
        grant(c.clone(), clinician, h + 10),
        codes::NOT_PERMITTED,
    );
    net.rejects(
        "hospital_a",
        grant(c.clone(), clinician, h + 1),
        codes::EXPIRED,
    );
    net.rejects(
        "hospital_a",
        grant(c.clone(), ParticipantId([4; 32]), h + 10),
        codes::UNKNOWN_PARTICIPANT,
    );
    net.rejects(
        "hospital_a",
        grant(cid(99), clinician, h + 10),
        codes::UNKNOWN_RECORD,
    );
    // The owner grants; the grant holds until its expiry height.
    let h = net.state.height();
    let g1 = GrantId(net.ok("hospital_a", grant(c.clone(), clinician, h + 20)));
    assert_eq!(
        net.state.authorisation(&clinician, &c, h + 19),
        Authorisation::Grant(g1)
    );
    assert_eq!(
        net.state.authorisation(&clinician, &c, h + 20),
        Authorisation::Denied
    );
    // The patient grants too, and may revoke the hospital's grant.
    let g2 = GrantId(net.ok("patient", grant(c.clone(), researcher, h + 100)));
    assert_eq!(net.state.grants_for_record(&c).len(), 2);
    assert_eq!(net.state.grants_for_grantee(&researcher)[0].id, g2);
    net.rejects(
        "researcher",
        TxKind::Revoke { grant: g2 },
        codes::NOT_PERMITTED,
    );
    net.rejects(
        "patient",
        TxKind::Revoke {
            grant: GrantId([1; 32]),
        },
        codes::UNKNOWN_GRANT,
    );
    net.ok("patient", TxKind::Revoke { grant: g1 });
    assert_eq!(
        net.state.authorisation(&clinician, &c, net.state.height()),
        Authorisation::Denied
    );
    net.rejects(
        "hospital_a",
        TxKind::Revoke { grant: g1 },
        codes::GRANT_INACTIVE,
    );
    let g = net.state.grant(&g1).unwrap();
    assert_eq!(g.revoked.as_ref().unwrap().by, patient);
    // Owner and patient are always authorised.
    let h = net.state.height();
    assert_eq!(
        net.state.authorisation(&net.id("hospital_a"), &c, h),
        Authorisation::Owner
    );
    assert_eq!(
        net.state.authorisation(&patient, &c, h),
        Authorisation::Patient
    );
}

#[test]
fn policy_authorisation_follows_attributes() {
    let mut net = Net::new();
    let cap = net.capsule("hospital_a", 1, "role:researcher and irb:study-42");
    let c = net.record("hospital_a", cap, 1, None);
    let researcher = net.id("researcher");
    let clinician = net.id("clinician");
    let h = net.state.height();
    assert_eq!(
        net.state.authorisation(&researcher, &c, h),
        Authorisation::Policy
    );
    assert!(!net.state.is_authorised(&clinician, &c, h));
    net.ok(
        "authority",
        TxKind::RevokeAttributes {
            participant: researcher,
            attributes: vec!["irb:study-42".into()],
        },
    );
    assert!(!net.state.is_authorised(&researcher, &c, net.state.height()));
    assert!(
        !net.state
            .is_authorised(&researcher, &cid(77), net.state.height())
    );
}

#[test]
fn supersession() {
    let mut net = Net::new();
    let cap = net.capsule("hospital_a", 1, "role:researcher");
    let cap_b = net.capsule("hospital_b", 2, "role:researcher");
    let old = net.record("hospital_a", cap, 1, None);
    let new = net.record("hospital_a", cap, 2, None);
    let other = net.record("hospital_b", cap_b, 3, None);
    let sup = |o: &ehr_ledger::tx::Cid, n: &ehr_ledger::tx::Cid| TxKind::Supersede {
        old: o.clone(),
        new: n.clone(),
    };
    net.rejects("hospital_b", sup(&old, &new), codes::NOT_PERMITTED);
    net.rejects("hospital_a", sup(&old, &other), codes::NOT_PERMITTED);
    net.rejects("hospital_a", sup(&old, &cid(50)), codes::UNKNOWN_RECORD);
    net.state.take_events();
    net.ok("hospital_a", sup(&old, &new));
    assert!(matches!(
        &net.state.take_events()[..],
        [StateEvent::RecordRemoved { cid, superseded_by, .. }] if cid == &old && superseded_by == &new
    ));
    assert!(matches!(
        net.state.record(&old).unwrap().status,
        RecordStatus::Superseded { .. }
    ));
    let h = net.state.height();
    assert_eq!(
        net.state.authorisation(&net.id("researcher"), &old, h),
        Authorisation::Denied
    );
    assert_eq!(
        net.state.authorisation(&net.id("researcher"), &new, h),
        Authorisation::Policy
    );
    net.rejects("hospital_a", sup(&old, &new), codes::RECORD_INACTIVE);
    net.rejects(
        "hospital_a",
        grant(old.clone(), net.id("clinician"), h + 10),
        codes::RECORD_INACTIVE,
    );
}

#[test]
fn access_audit() {
    let mut net = Net::new();
    let cap = net.capsule("hospital_a", 1, "role:researcher");
    let c = net.record("hospital_a", cap, 1, None);
    let access = |who: ParticipantId, purpose| TxKind::RecordAccess {
        cid: c.clone(),
        accessor: who,
        purpose,
    };
    let researcher = net.id("researcher");
    let clinician = net.id("clinician");
    net.rejects(
        "researcher",
        access(researcher, Purpose::Research),
        codes::NOT_PERMITTED,
    );
    net.rejects(
        "patient",
        access(researcher, Purpose::Research),
        codes::NOT_PERMITTED,
    );
    net.rejects(
        "validator",
        access(ParticipantId([2; 32]), Purpose::Research),
        codes::UNKNOWN_PARTICIPANT,
    );
    net.rejects(
        "validator",
        TxKind::RecordAccess {
            cid: cid(9),
            accessor: researcher,
            purpose: Purpose::Research,
        },
        codes::UNKNOWN_RECORD,
    );
    net.ok("validator", access(researcher, Purpose::Research));
    // Break-glass access by someone not authorised is recorded, with basis Denied.
    net.ok("hospital_a", access(clinician, Purpose::Emergency));
    let log = net.state.audit_for_record(&c);
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].seq, 0);
    assert_eq!(log[0].basis, Authorisation::Policy);
    assert_eq!(log[0].node, net.id("validator"));
    assert_eq!(log[1].accessor, clinician);
    assert_eq!(log[1].basis, Authorisation::Denied);
    assert_eq!(log[1].purpose, Purpose::Emergency);
}

#[test]
fn invalid_transactions_in_a_block_change_nothing() {
    let mut a = Net::new();
    let mut b = Net::new();
    let cap_kind = TxKind::PublishCapsule {
        capsule: CapsuleId([1; 32]),
        policy: "role:researcher".into(),
        epoch: 0,
        wrapped_search_key: vec![3; 30],
    };
    let t1 = a.tx("hospital_a", cap_kind);
    let bad1 = a.tx(
        "researcher",
        record_kind(cid(1), CapsuleId([1; 32]), 0, None),
    );
    let bad2 = {
        let mut tx = SignedTx::decode(&a.tx(
            "hospital_b",
            TxKind::Revoke {
                grant: GrantId([0; 32]),
            },
        ))
        .unwrap();
        tx.signature[0] ^= 0x80;
        tx.to_bytes()
    };
    let t2 = a.tx(
        "hospital_a",
        record_kind(cid(1), CapsuleId([1; 32]), 0, None),
    );
    let (out, root_a) = a
        .state
        .apply_block(1, &[t1.clone(), bad1, vec![0xFF; 7], bad2, t2.clone()]);
    assert_eq!(out[0], TxOutcome::Applied);
    assert!(matches!(&out[1], TxOutcome::Rejected(r) if r.code == codes::NOT_PERMITTED));
    assert!(matches!(&out[2], TxOutcome::Rejected(r) if r.code == codes::UNSUPPORTED_VERSION));
    assert!(matches!(&out[3], TxOutcome::Rejected(r) if r.code == codes::BAD_SIGNATURE));
    assert_eq!(out[4], TxOutcome::Applied);
    let (_, root_b) = b.state.apply_block(1, &[t1, t2]);
    assert_eq!(root_a, root_b);
    assert_eq!(a.state.snapshot(), b.state.snapshot());
    // The rejected senders' nonces did not move.
    assert_eq!(a.state.nonce(&a.id("researcher")), Some(0));
    assert_eq!(a.state.nonce(&a.id("hospital_b")), Some(0));
}

#[test]
fn batch_check_matches_single_check() {
    let mut net = Net::new();
    let mut txs = Vec::new();
    for i in 0..20u8 {
        let who = ["hospital_a", "hospital_b", "researcher"][i as usize % 3];
        let mut bytes = net.tx(
            who,
            TxKind::RotateKey {
                new_key: pid(&signing_key(100 + i)).0,
            },
        );
        if i % 7 == 3 {
            let n = bytes.len();
            bytes[n - 1] ^= 0x10; // corrupt the signature
        }
        if i % 9 == 4 {
            bytes.truncate(10);
        }
        txs.push(bytes);
    }
    let refs: Vec<&[u8]> = txs.iter().map(Vec::as_slice).collect();
    let batch = net.state.check_txs(&refs);
    let single: Vec<_> = txs.iter().map(|t| net.state.check_tx(t)).collect();
    assert_eq!(batch, single);
    assert!(batch.iter().filter(|r| r.is_ok()).count() >= 10);
    assert!(
        batch
            .iter()
            .any(|r| matches!(r, Err(e) if e.code == codes::BAD_SIGNATURE))
    );
}

#[test]
#[should_panic(expected = "heights strictly increase")]
fn non_increasing_height_is_a_broken_invariant() {
    let mut net = Net::new();
    net.state.apply_block(1, &[]);
    net.state.apply_block(1, &[]);
}

#[test]
fn quoted_policy_values_match_assigned_attributes() {
    let mut net = Net::new();
    let cap = net.capsule("hospital_a", 1, r#"org:"St. Mary's" and role:researcher"#);
    let c = net.record("hospital_a", cap, 1, None);
    let researcher = net.id("researcher");
    assert!(!net.state.is_authorised(&researcher, &c, net.state.height()));
    net.rejects(
        "authority",
        TxKind::AssignAttributes {
            participant: researcher,
            attributes: vec!["St. Mary's".into()],
            expiry_height: None,
        },
        codes::INVALID_FIELD,
    );
    net.ok(
        "authority",
        TxKind::AssignAttributes {
            participant: researcher,
            attributes: vec!["org:St. Mary's".into()],
            expiry_height: None,
        },
    );
    assert_eq!(
        net.state.authorisation(&researcher, &c, net.state.height()),
        Authorisation::Policy
    );
}

/// The encoding of state leaves and keys is part of consensus: a change must be deliberate
/// (and versioned), never a side effect. This pins the root of the test genesis and of one
/// block on top of it.
#[test]
fn state_root_encoding_is_pinned() {
    let mut net = Net::new();
    let genesis_root = hex::encode(net.state.state_root());
    let cap = net.capsule("hospital_a", 1, "role:researcher");
    net.record("hospital_a", cap, 1, None);
    let root = hex::encode(net.state.state_root());
    assert_eq!(
        (genesis_root.as_str(), root.as_str()),
        (
            "a4d25af7a15ba3165ba45d77dfd32a052180e70b2fb7428b316e21d93a090272",
            "687947826763050b2ff8fb71b162263d6c2f9a839ac90f0bdb1b547dbf3c1b9c"
        )
    );
}

#[test]
fn check_tx_changes_nothing() {
    let mut net = Net::new();
    let before = (net.state.state_root(), net.state.snapshot());
    let bytes = net.tx(
        "hospital_a",
        TxKind::PublishCapsule {
            capsule: CapsuleId([5; 32]),
            policy: "role:researcher".into(),
            epoch: 0,
            wrapped_search_key: vec![1; 8],
        },
    );
    let id = net.state.check_tx(&bytes).unwrap();
    assert_eq!(id, SignedTx::decode(&bytes).unwrap().id());
    let refs: Vec<&[u8]> = vec![&bytes];
    assert_eq!(net.state.check_txs(&refs), vec![Ok(id)]);
    assert_eq!((net.state.state_root(), net.state.snapshot()), before);
    assert!(net.state.take_events().is_empty());
    assert!(net.state.capsule(&CapsuleId([5; 32])).is_none());
}
