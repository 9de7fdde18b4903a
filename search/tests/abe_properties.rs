//! CP-ABE properties through the public API: decryption succeeds exactly when the policy is
//! satisfied; colluding users cannot pool key components; CCA (tampering, wrong aad).

use std::collections::BTreeSet;

use ehr_search::abe::{self, UserKey, WrappedKey};
use ehr_search::error::AbeError;
use ehr_search::policy::Policy;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

const UNIVERSE: [&str; 6] = [
    "role:researcher",
    "irb:study-42",
    "dept:cardiology",
    "org:hospital-a",
    "org:St. Mary's",
    "status:active-2025Q3",
];

fn quoted(a: &str) -> String {
    let (k, v) = a.split_once(':').unwrap();
    format!("{k}:\"{v}\"")
}

fn arb_policy() -> impl Strategy<Value = String> {
    let leaf = prop::sample::select(UNIVERSE.to_vec()).prop_map(quoted);
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4)
                .prop_map(|v| format!("({})", v.join(" AND "))),
            prop::collection::vec(inner.clone(), 2..4)
                .prop_map(|v| format!("({})", v.join(" or "))),
            (
                prop::collection::vec(inner, 1..4),
                any::<prop::sample::Index>()
            )
                .prop_map(|(v, k)| format!(
                    "{} of ({})",
                    k.index(v.len()) + 1,
                    v.join(", ")
                )),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn unwrap_succeeds_iff_policy_satisfied(
        text in arb_policy(),
        mask in 1u8..64,
        seed in any::<u64>(),
    ) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let (pp, msk) = abe::setup(&mut rng);
        let policy = Policy::parse(&text).unwrap();
        let attrs: Vec<&str> = (0..6).filter(|i| mask >> i & 1 == 1).map(|i| UNIVERSE[i]).collect();
        let key = abe::keygen(&pp, &msk, b"user", &attrs, &mut rng).unwrap();
        let secret = seed.to_be_bytes();
        let wk = abe::wrap(&pp, &policy, &secret, b"record-cid", &mut rng).unwrap();
        let wk = WrappedKey::from_bytes(&wk.to_bytes()).unwrap();
        match abe::unwrap(&key, &wk, b"record-cid") {
            Ok(out) => {
                prop_assert!(policy.is_satisfied_by(&attrs), "decrypted without satisfying {}", policy);
                prop_assert_eq!(&out[..], &secret[..]);
            }
            Err(e) => {
                prop_assert!(!policy.is_satisfied_by(&attrs), "satisfied {} but failed: {}", policy, e);
                prop_assert_eq!(e, AbeError::NotSatisfied);
            }
        }
    }
}

/// Parses the documented user-key encoding into (user id, K1, K2, attributes with K3).
#[allow(clippy::type_complexity)]
fn split_key(bytes: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<(String, Vec<u8>)>) {
    assert_eq!(&bytes[..2], &[0x03, 0x01]);
    let mut p = 2;
    let take = |p: &mut usize, n: usize| {
        let out = bytes[*p..*p + n].to_vec();
        *p += n;
        out
    };
    let len = u16::from_be_bytes(take(&mut p, 2).try_into().unwrap()) as usize;
    let uid = take(&mut p, len);
    let k1 = take(&mut p, 96);
    let k2 = take(&mut p, 48);
    let m = u16::from_be_bytes(take(&mut p, 2).try_into().unwrap()) as usize;
    let mut attrs = Vec::new();
    for _ in 0..m {
        let len = u16::from_be_bytes(take(&mut p, 2).try_into().unwrap()) as usize;
        let name = String::from_utf8(take(&mut p, len)).unwrap();
        attrs.push((name, take(&mut p, 48)));
    }
    assert_eq!(p, bytes.len());
    (uid, k1, k2, attrs)
}

fn join_key(uid: &[u8], k1: &[u8], k2: &[u8], attrs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut sorted = attrs.to_vec();
    sorted.sort();
    let mut b = vec![0x03, 0x01];
    b.extend_from_slice(&(uid.len() as u16).to_be_bytes());
    b.extend_from_slice(uid);
    b.extend_from_slice(k1);
    b.extend_from_slice(k2);
    b.extend_from_slice(&(sorted.len() as u16).to_be_bytes());
    for (name, p) in &sorted {
        b.extend_from_slice(&(name.len() as u16).to_be_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(p);
    }
    b
}

#[test]
fn colluding_users_cannot_pool_key_components() {
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    let (pp, msk) = abe::setup(&mut rng);
    let policy = Policy::parse("role:researcher and irb:study-42").unwrap();
    let wk = abe::wrap(&pp, &policy, b"data key", b"", &mut rng).unwrap();
    let alice = abe::keygen(
        &pp,
        &msk,
        b"alice",
        ["role:researcher", "org:hospital-a"],
        &mut rng,
    )
    .unwrap();
    let bob = abe::keygen(
        &pp,
        &msk,
        b"bob",
        ["irb:study-42", "org:hospital-a"],
        &mut rng,
    )
    .unwrap();
    assert_eq!(
        abe::unwrap(&alice, &wk, b"").unwrap_err(),
        AbeError::NotSatisfied
    );
    assert_eq!(
        abe::unwrap(&bob, &wk, b"").unwrap_err(),
        AbeError::NotSatisfied
    );

    let (a_uid, a_k1, a_k2, a_attrs) = split_key(&alice.to_bytes());
    let (b_uid, b_k1, b_k2, b_attrs) = split_key(&bob.to_bytes());
    let pick = |attrs: &[(String, Vec<u8>)], name: &str| {
        attrs.iter().find(|(n, _)| n == name).unwrap().clone()
    };
    // Alice's K1/K2 with Bob's irb component, and Bob's K1/K2 with Alice's role component.
    let mixes = [
        join_key(
            &a_uid,
            &a_k1,
            &a_k2,
            &[
                pick(&a_attrs, "role:researcher"),
                pick(&b_attrs, "irb:study-42"),
            ],
        ),
        join_key(
            &b_uid,
            &b_k1,
            &b_k2,
            &[
                pick(&a_attrs, "role:researcher"),
                pick(&b_attrs, "irb:study-42"),
            ],
        ),
        // K1 from one user, K2 from the other.
        join_key(
            &a_uid,
            &a_k1,
            &b_k2,
            &[
                pick(&a_attrs, "role:researcher"),
                pick(&b_attrs, "irb:study-42"),
            ],
        ),
        join_key(
            &a_uid,
            &b_k1,
            &a_k2,
            &[
                pick(&a_attrs, "role:researcher"),
                pick(&b_attrs, "irb:study-42"),
            ],
        ),
    ];
    for (i, bytes) in mixes.iter().enumerate() {
        let mixed = UserKey::from_bytes(bytes).expect("the mixed key is well formed");
        assert_eq!(
            abe::unwrap(&mixed, &wk, b"").unwrap_err(),
            AbeError::DecryptionFailed,
            "mix {i} decrypted"
        );
    }
    // The honest control: a key for both attributes decrypts.
    let carol = abe::keygen(
        &pp,
        &msk,
        b"carol",
        ["role:researcher", "irb:study-42"],
        &mut rng,
    )
    .unwrap();
    assert_eq!(&abe::unwrap(&carol, &wk, b"").unwrap()[..], b"data key");
}

#[test]
fn keys_from_other_parameters_fail() {
    let mut rng = ChaCha20Rng::seed_from_u64(22);
    let (pp, _) = abe::setup(&mut rng);
    let (pp2, msk2) = abe::setup(&mut rng);
    assert_ne!(pp, pp2);
    let policy = Policy::parse("role:researcher").unwrap();
    let wk = abe::wrap(&pp, &policy, b"k", b"", &mut rng).unwrap();
    let other = abe::keygen(&pp2, &msk2, b"eve", ["role:researcher"], &mut rng).unwrap();
    assert_eq!(
        abe::unwrap(&other, &wk, b"").unwrap_err(),
        AbeError::DecryptionFailed
    );
}

#[test]
fn tampered_wrapped_keys_and_wrong_aad_fail() {
    let mut rng = ChaCha20Rng::seed_from_u64(23);
    let (pp, msk) = abe::setup(&mut rng);
    let key = abe::keygen(
        &pp,
        &msk,
        b"u",
        ["role:researcher", "irb:study-42"],
        &mut rng,
    )
    .unwrap();
    let policy = Policy::parse("role:researcher and (irb:study-42 or dept:cardiology)").unwrap();
    let secret = [9u8; 32];
    let wk = abe::wrap(&pp, &policy, &secret, b"cid-1", &mut rng).unwrap();
    assert_eq!(&abe::unwrap(&key, &wk, b"cid-1").unwrap()[..], &secret);
    assert_eq!(
        abe::unwrap(&key, &wk, b"cid-2").unwrap_err(),
        AbeError::DecryptionFailed
    );
    assert_eq!(
        abe::unwrap(&key, &wk, b"").unwrap_err(),
        AbeError::DecryptionFailed
    );

    let bytes = wk.to_bytes();
    let mut accepted = 0;
    for pos in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut b = bytes.clone();
            b[pos] ^= bit;
            if let Ok(t) = WrappedKey::from_bytes(&b)
                && abe::unwrap(&key, &t, b"cid-1").is_ok()
            {
                accepted += 1;
            }
        }
    }
    assert_eq!(accepted, 0, "a modified wrapped key was accepted");

    // Two wrappings of the same secret share nothing that lets one be spliced into the other.
    let wk2 = abe::wrap(&pp, &policy, &secret, b"cid-1", &mut rng).unwrap();
    let b1 = wk.to_bytes();
    let b2 = wk2.to_bytes();
    assert_eq!(b1.len(), b2.len());
    let mut spliced = b1.clone();
    let tail = 32 + 2 + 32 + 32; // c_sigma, payload length, payload, tag
    spliced[b1.len() - tail..].copy_from_slice(&b2[b2.len() - tail..]);
    let t = WrappedKey::from_bytes(&spliced).unwrap();
    assert_eq!(
        abe::unwrap(&key, &t, b"cid-1").unwrap_err(),
        AbeError::DecryptionFailed
    );
}

#[test]
fn policy_is_public_and_round_trips_with_the_wrapped_key() {
    let mut rng = ChaCha20Rng::seed_from_u64(24);
    let (pp, _) = abe::setup(&mut rng);
    let policy = Policy::parse(r#"org:"St. Mary's" OR 2 of (a:1, b:2, c:3)"#).unwrap();
    let wk = abe::wrap(&pp, &policy, b"k", b"", &mut rng).unwrap();
    let back = WrappedKey::from_bytes(&wk.to_bytes()).unwrap();
    assert_eq!(back.policy(), &policy);
    let attrs: BTreeSet<String> = policy.attributes();
    assert_eq!(attrs.len(), 4);
}
