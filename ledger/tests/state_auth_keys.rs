//! The authentication-key transactions (`RegisterAuthKey`, `RevokeAuthKey`): structure checks
//! of the key DER, the per-participant rules, the state tree and snapshots.

mod state_support;

use ehr_ledger::app::{App, TxOutcome};
use ehr_ledger::state::{LedgerState, MAX_AUTH_KEYS_PER_PARTICIPANT, StateKey};
use ehr_ledger::tx::{
    AuthAlg, AuthKeyMaterial, MAX_AUTH_KEY_DER, SignedTx, TxBody, TxKind, auth_key_hash, codes,
    parse_auth_key,
};
use state_support::*;

// ----- a tiny DER writer for building keys of chosen shapes -----

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x100 {
        out.extend_from_slice(&[0x81, n as u8]);
    } else {
        out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(content);
    out
}

fn int(magnitude: &[u8]) -> Vec<u8> {
    let mut m = magnitude.to_vec();
    if m.first().is_none_or(|b| b & 0x80 != 0) {
        m.insert(0, 0);
    }
    der(0x02, &m)
}

fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut c = vec![0u8];
    c.extend_from_slice(bytes);
    der(0x03, &c)
}

const OID_RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const OID_EC: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const NULL: &[u8] = &[0x05, 0x00];

/// An odd modulus of exactly `bits` bits (structure only; not a real RSA modulus).
fn modulus(bits: usize, fill: u8) -> Vec<u8> {
    let len = bits.div_ceil(8);
    let mut n = vec![fill; len];
    let top_bits = bits - (len - 1) * 8;
    n[0] = 1 << (top_bits - 1) | (fill & ((1u16 << (top_bits - 1)) - 1) as u8);
    n[len - 1] |= 1;
    n
}

fn rsa_spki_with(n: &[u8], e: &[u8], params: &[u8]) -> Vec<u8> {
    let alg = der(0x30, &[OID_RSA, params].concat());
    let pkcs1 = der(0x30, &[int(n), int(e)].concat());
    der(0x30, &[alg, bit_string(&pkcs1)].concat())
}

fn rsa_spki(bits: usize, fill: u8) -> Vec<u8> {
    rsa_spki_with(&modulus(bits, fill), &[0x01, 0x00, 0x01], NULL)
}

fn ec_spki_with(curve: &[u8], point: &[u8]) -> Vec<u8> {
    let alg = der(0x30, &[OID_EC, curve].concat());
    der(0x30, &[alg, bit_string(point)].concat())
}

fn ec_spki(fill: u8) -> Vec<u8> {
    let mut point = vec![0x04];
    point.extend_from_slice(&[fill; 96]);
    ec_spki_with(OID_P384, &point)
}

fn register(alg: AuthAlg, der: Vec<u8>) -> TxKind {
    TxKind::RegisterAuthKey {
        alg,
        public_key_der: der,
    }
}

#[test]
fn structure_of_keys_is_checked() {
    for (bits, ok) in [
        (1024, false),
        (2047, false),
        (2048, true),
        (3072, true),
        (4096, true),
        (4097, false),
    ] {
        let d = rsa_spki(bits, 0x5a);
        match parse_auth_key(AuthAlg::Rs384, &d) {
            Ok(AuthKeyMaterial::Rsa { modulus_bits, .. }) => {
                assert!(ok, "{bits} bits accepted");
                assert_eq!(modulus_bits, bits);
            }
            Ok(other) => panic!("{other:?}"),
            Err(r) => {
                assert!(!ok, "{bits} bits refused: {r:?}");
                assert_eq!(r.code, codes::INVALID_FIELD);
                assert!(r.reason.contains("bits"), "{}", r.reason);
            }
        }
    }
    assert!(matches!(
        parse_auth_key(AuthAlg::Es384, &ec_spki(7)),
        Ok(AuthKeyMaterial::P384 { point }) if point.len() == 97
    ));
    let n = modulus(2048, 0x33);
    let mut even = n.clone();
    *even.last_mut().unwrap() &= 0xfe;
    let bad: Vec<(&str, AuthAlg, Vec<u8>)> = vec![
        ("empty", AuthAlg::Rs384, vec![]),
        ("garbage", AuthAlg::Rs384, vec![0x30, 0x03, 1, 2, 3]),
        ("too long", AuthAlg::Rs384, vec![0x30; MAX_AUTH_KEY_DER + 1]),
        ("rsa as es384", AuthAlg::Es384, rsa_spki(2048, 1)),
        ("ec as rs384", AuthAlg::Rs384, ec_spki(1)),
        ("p-256", AuthAlg::Es384, {
            let mut p = vec![4];
            p.extend_from_slice(&[1; 64]);
            ec_spki_with(OID_P256, &p)
        }),
        ("compressed point", AuthAlg::Es384, {
            let mut p = vec![2];
            p.extend_from_slice(&[1; 48]);
            ec_spki_with(OID_P384, &p)
        }),
        (
            "short point",
            AuthAlg::Es384,
            ec_spki_with(OID_P384, &[4; 96]),
        ),
        ("even modulus", AuthAlg::Rs384, {
            rsa_spki_with(&even, &[1, 0, 1], NULL)
        }),
        ("exponent 1", AuthAlg::Rs384, rsa_spki_with(&n, &[1], NULL)),
        (
            "even exponent",
            AuthAlg::Rs384,
            rsa_spki_with(&n, &[4], NULL),
        ),
        (
            "huge exponent",
            AuthAlg::Rs384,
            rsa_spki_with(&n, &[3, 0, 0, 0, 1], NULL),
        ),
        (
            "no NULL parameters",
            AuthAlg::Rs384,
            rsa_spki_with(&n, &[3], &[]),
        ),
        ("trailing byte", AuthAlg::Es384, {
            let mut d = ec_spki(1);
            d.push(0);
            d
        }),
        ("truncated", AuthAlg::Es384, {
            let d = ec_spki(1);
            d[..d.len() - 1].to_vec()
        }),
    ];
    for (what, alg, d) in bad {
        let r = parse_auth_key(alg, &d).expect_err(what);
        assert_eq!(r.code, codes::INVALID_FIELD, "{what}");
        assert!(
            r.reason.starts_with("public_key_der"),
            "{what}: {}",
            r.reason
        );
    }
    // The largest accepted RSA key fits the size bound with room to spare.
    assert!(rsa_spki(4096, 0xff).len() < MAX_AUTH_KEY_DER);
}

#[test]
fn mutated_keys_never_panic() {
    let good = [
        (AuthAlg::Rs384, rsa_spki(2048, 0x77)),
        (AuthAlg::Es384, ec_spki(9)),
    ];
    let mut x: u32 = 0x1234_5678;
    for (alg, d) in good {
        for _ in 0..3000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let mut m = d.clone();
            let i = (x as usize) % m.len();
            m[i] ^= (x >> 24) as u8 | 1;
            let cut = (x as usize >> 8) % (m.len() + 1);
            let _ = parse_auth_key(alg, &m[..cut]);
            let _ = parse_auth_key(alg, &m);
        }
    }
}

#[test]
fn registering_and_revoking_auth_keys() {
    let mut net = Net::new();
    let r = net.id("researcher");
    let h = net.id("hospital_a");
    let root0 = net.state.state_root();
    let rsa = rsa_spki(2048, 0x11);
    let ec = ec_spki(0x22);
    net.ok("researcher", register(AuthAlg::Rs384, rsa.clone()));
    net.ok("researcher", register(AuthAlg::Es384, ec.clone()));
    assert_ne!(net.state.state_root(), root0);
    assert_eq!(
        net.state.auth_keys(&r),
        vec![(AuthAlg::Rs384, rsa.clone()), (AuthAlg::Es384, ec.clone())]
    );
    let entries = net.state.auth_key_entries(&r);
    assert_eq!(entries[0].key_hash, auth_key_hash(&rsa));
    assert_eq!(entries[1].registered_at, net.state.height());
    assert_eq!(net.state.auth_key_owner(&auth_key_hash(&ec)), Some(r));
    assert!(net.state.auth_keys(&h).is_empty());

    // The same key again, by its owner or by anyone else.
    net.rejects(
        "researcher",
        register(AuthAlg::Es384, ec.clone()),
        codes::DUPLICATE,
    );
    net.rejects(
        "hospital_a",
        register(AuthAlg::Es384, ec.clone()),
        codes::KEY_IN_USE,
    );
    // Invalid structure is refused before any state is consulted.
    net.rejects(
        "researcher",
        register(AuthAlg::Rs384, rsa_spki(1024, 3)),
        codes::INVALID_FIELD,
    );
    // Any role may register (a validator, a patient).
    net.ok("patient", register(AuthAlg::Es384, ec_spki(0x33)));
    net.ok("validator", register(AuthAlg::Rs384, rsa_spki(3072, 0x44)));

    // At most a few per participant.
    for i in 2..MAX_AUTH_KEYS_PER_PARTICIPANT {
        net.ok(
            "researcher",
            register(AuthAlg::Es384, ec_spki(0x50 + i as u8)),
        );
    }
    net.rejects(
        "researcher",
        register(AuthAlg::Es384, ec_spki(0x70)),
        codes::LIMIT_EXCEEDED,
    );

    // Revocation: only one's own, only registered ones.
    net.rejects(
        "hospital_a",
        TxKind::RevokeAuthKey {
            key_hash: auth_key_hash(&ec),
        },
        codes::UNKNOWN_AUTH_KEY,
    );
    net.rejects(
        "researcher",
        TxKind::RevokeAuthKey { key_hash: [9; 32] },
        codes::UNKNOWN_AUTH_KEY,
    );
    net.ok(
        "researcher",
        TxKind::RevokeAuthKey {
            key_hash: auth_key_hash(&ec),
        },
    );
    assert_eq!(
        net.state.auth_keys(&r).len(),
        MAX_AUTH_KEYS_PER_PARTICIPANT - 1
    );
    assert!(
        !net.state
            .auth_keys(&r)
            .contains(&(AuthAlg::Es384, ec.clone()))
    );
    assert_eq!(net.state.auth_key_owner(&auth_key_hash(&ec)), None);
    net.rejects(
        "researcher",
        TxKind::RevokeAuthKey {
            key_hash: auth_key_hash(&ec),
        },
        codes::UNKNOWN_AUTH_KEY,
    );
    // Once revoked, the key may be registered again (here by another participant).
    net.ok("hospital_a", register(AuthAlg::Es384, ec.clone()));
    assert_eq!(net.state.auth_keys(&h), vec![(AuthAlg::Es384, ec.clone())]);

    // Revoking the last key removes the participant's leaf.
    let (before, _) = net.state.get_with_proof(&StateKey::AuthKeys(h));
    assert!(before.is_some());
    net.ok(
        "hospital_a",
        TxKind::RevokeAuthKey {
            key_hash: auth_key_hash(&ec),
        },
    );
    let root = net.state.state_root();
    let (after, proof) = net.state.get_with_proof(&StateKey::AuthKeys(h));
    assert!(after.is_none());
    proof.verify(&root, &StateKey::AuthKeys(h), None).unwrap();
}

#[test]
fn auth_keys_are_in_the_state_root_and_snapshots() {
    let mut net = Net::new();
    let r = net.id("researcher");
    net.ok("researcher", register(AuthAlg::Es384, ec_spki(1)));
    net.ok("researcher", register(AuthAlg::Rs384, rsa_spki(2048, 2)));
    let root = net.state.state_root();
    let key = StateKey::AuthKeys(r);
    let (value, proof) = net.state.get_with_proof(&key);
    let value = value.expect("leaf present");
    proof.verify(&root, &key, Some(&value)).unwrap();
    let decoded: Vec<ehr_ledger::state::AuthKey> = postcard::from_bytes(&value).unwrap();
    assert_eq!(decoded, net.state.auth_key_entries(&r));

    // Snapshot round trip.
    let twin = net.twin();
    assert_eq!(twin.state_root(), root);
    assert_eq!(twin.auth_keys(&r), net.state.auth_keys(&r));
    assert_eq!(twin.snapshot(), net.state.snapshot());
    // The derived owner index is rebuilt: a duplicate is still refused after restore.
    net.state = twin;
    net.rejects(
        "hospital_a",
        register(AuthAlg::Es384, ec_spki(1)),
        codes::KEY_IN_USE,
    );
    // A snapshot whose key list was tampered with does not restore.
    let snap = net.state.snapshot();
    let rsa = rsa_spki(2048, 2);
    let at = snap
        .windows(rsa.len())
        .position(|w| w == rsa.as_slice())
        .expect("key bytes in snapshot");
    let mut bad = snap.clone();
    bad[at + rsa.len() / 2] ^= 1;
    let mut target = LedgerState::from_genesis(&genesis()).unwrap();
    assert!(target.restore(&bad, &net.state.state_root()).is_err());
}

#[test]
fn version_one_snapshots_still_restore() {
    // A version-2 snapshot without authentication keys is the version-1 body followed by an
    // empty list (a single zero byte).
    let net = Net::new();
    let snap = net.state.snapshot();
    assert_eq!(&snap[..8], b"EHRSNAP\x02");
    assert_eq!(snap.last(), Some(&0));
    let mut v1 = b"EHRSNAP\x01".to_vec();
    v1.extend_from_slice(&snap[8..snap.len() - 1]);
    let mut target = LedgerState::from_genesis(&genesis()).unwrap();
    target.restore(&v1, &net.state.state_root()).unwrap();
    assert_eq!(target.snapshot(), snap);
}

#[test]
fn new_variants_do_not_change_existing_encodings() {
    // The new kinds are the last variants: an old kind's body encodes as before (its variant
    // index is unchanged), and a new kind's index follows the old ones.
    let k = signing_key(9);
    let me = pid(&k);
    let old = TxBody::new(
        CHAIN,
        me,
        1,
        TxKind::Revoke {
            grant: ehr_ledger::tx::GrantId([1; 32]),
        },
    )
    .encode();
    let new = TxBody::new(CHAIN, me, 1, TxKind::RevokeAuthKey { key_hash: [1; 32] }).encode();
    let kind_at = 1 + CHAIN.len() + 32 + 1;
    assert_eq!(old[kind_at], 8, "Revoke stays variant 8");
    assert_eq!(new[kind_at], 12, "RevokeAuthKey is variant 12");
    let tx = TxBody::new(CHAIN, me, 1, register(AuthAlg::Rs384, rsa_spki(2048, 5))).sign(&k);
    let back = SignedTx::decode(&tx.to_bytes()).unwrap();
    assert_eq!(back, tx);
    assert_eq!(
        tx.to_bytes()[1 + kind_at],
        11,
        "RegisterAuthKey is variant 11"
    );
}

#[test]
fn auth_key_transactions_in_one_block() {
    // Register and revoke in the same block: applied in order.
    let mut net = Net::new();
    let r = net.id("researcher");
    let d = ec_spki(3);
    let a = net.tx("researcher", register(AuthAlg::Es384, d.clone()));
    let b = net.tx(
        "researcher",
        TxKind::RevokeAuthKey {
            key_hash: auth_key_hash(&d),
        },
    );
    let out = net.apply(vec![a, b]);
    assert_eq!(out, vec![TxOutcome::Applied, TxOutcome::Applied]);
    assert!(net.state.auth_keys(&r).is_empty());
}
