//! Threshold issuance through the public API: t partials work, t - 1 do not, corrupted
//! partials are detected, and everything survives its byte encoding.

use ehr_search::abe::{self, MasterKeyShare, PartialKey, PublicParams};
use ehr_search::error::AbeError;
use ehr_search::policy::Policy;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

const ATTRS: [&str; 3] = ["role:researcher", "irb:study-42", "org:hospital-a"];

#[test]
fn any_t_of_n_validators_issue_a_working_key() {
    let mut rng = ChaCha20Rng::seed_from_u64(31);
    // n = 3f + 1 = 7 validators, t = 2f + 1 = 5.
    let (pp, shares) = abe::setup_dealer(7, 5, &mut rng).unwrap();
    let pp = PublicParams::from_bytes(&pp.to_bytes()).unwrap();
    assert_eq!((pp.validators(), pp.threshold()), (7, 5));
    let shares: Vec<MasterKeyShare> = shares
        .iter()
        .map(|s| MasterKeyShare::from_bytes(&s.to_bytes()).unwrap())
        .collect();
    let partials: Vec<PartialKey> = shares
        .iter()
        .map(|s| {
            let p = s.issue_partial(&pp, b"alice#42", ATTRS, &mut rng).unwrap();
            PartialKey::from_bytes(&p.to_bytes()).unwrap()
        })
        .collect();
    let policy = Policy::parse("role:researcher and irb:study-42").unwrap();
    let wk = abe::wrap(&pp, &policy, b"search key", b"capsule", &mut rng).unwrap();

    for subset in [[0usize, 1, 2, 3, 4], [2, 3, 4, 5, 6], [0, 2, 4, 5, 6]] {
        let chosen: Vec<PartialKey> = subset.iter().map(|i| partials[*i].clone()).collect();
        let key = abe::combine(&pp, b"alice#42", ATTRS, &chosen).unwrap();
        assert_eq!(
            &abe::unwrap(&key, &wk, b"capsule").unwrap()[..],
            b"search key"
        );
    }
    assert_eq!(
        abe::combine(&pp, b"alice#42", ATTRS, &partials[..4]).unwrap_err(),
        AbeError::NotEnoughPartials { needed: 5, got: 4 }
    );
}

#[test]
fn t_minus_one_partials_give_no_working_key() {
    let mut rng = ChaCha20Rng::seed_from_u64(32);
    let (pp, shares) = abe::setup_dealer(4, 3, &mut rng).unwrap();
    let partials: Vec<PartialKey> = shares[..2]
        .iter()
        .map(|s| s.issue_partial(&pp, b"mallory", ATTRS, &mut rng).unwrap())
        .collect();
    let policy = Policy::parse("role:researcher").unwrap();
    let wk = abe::wrap(&pp, &policy, b"k", b"", &mut rng).unwrap();
    // Each partial alone is a FABEO key under a share, not under alpha: it does not decrypt.
    for p in &partials {
        let as_user_key = user_key_from_partial(p);
        assert_eq!(
            abe::unwrap(&as_user_key, &wk, b"").unwrap_err(),
            AbeError::DecryptionFailed
        );
    }
}

/// Re-labels a partial key's encoding as a user key (the bodies share one format).
fn user_key_from_partial(p: &PartialKey) -> abe::UserKey {
    let bytes = p.to_bytes();
    let mut b = vec![0x03, 0x01];
    b.extend_from_slice(&bytes[6..]);
    abe::UserKey::from_bytes(&b).unwrap()
}

#[test]
fn corrupted_partials_are_detected_and_skipped() {
    let mut rng = ChaCha20Rng::seed_from_u64(33);
    let (pp, shares) = abe::setup_dealer(4, 2, &mut rng).unwrap();
    let good: Vec<PartialKey> = shares
        .iter()
        .map(|s| s.issue_partial(&pp, b"bob", ATTRS, &mut rng).unwrap())
        .collect();
    // A Byzantine validator 2 sends validator 1's partial under its own index.
    let mut bytes = good[0].to_bytes().to_vec();
    bytes[2..6].copy_from_slice(&2u32.to_be_bytes());
    let replayed = PartialKey::from_bytes(&bytes).unwrap();
    assert!(matches!(
        pp.verify_partial(b"bob", ATTRS, &replayed),
        Err(AbeError::InvalidPartial { index: 2, .. })
    ));
    // A partial of another key request.
    let other = shares[2]
        .issue_partial(&pp, b"bob-other-request", ATTRS, &mut rng)
        .unwrap();
    assert!(pp.verify_partial(b"bob", ATTRS, &other).is_err());
    // combine skips the bad ones.
    let key = abe::combine(
        &pp,
        b"bob",
        ATTRS,
        &[replayed, other, good[3].clone(), good[0].clone()],
    )
    .unwrap();
    let policy = Policy::parse("org:hospital-a").unwrap();
    let wk = abe::wrap(&pp, &policy, b"k", b"", &mut rng).unwrap();
    assert_eq!(&abe::unwrap(&key, &wk, b"").unwrap()[..], b"k");
}

#[test]
fn a_share_index_beyond_the_parameters_is_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(34);
    let (_, shares) = abe::setup_dealer(5, 2, &mut rng).unwrap();
    let (small, _) = abe::setup_dealer(3, 2, &mut rng).unwrap();
    assert!(matches!(
        shares[4].issue_partial(&small, b"u", ATTRS, &mut rng),
        Err(AbeError::InvalidInput { field: "share", .. })
    ));
}
