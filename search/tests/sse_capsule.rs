//! Capsules: the search-key state wrapped with CP-ABE under the policy, bound to its id and epoch.

use ehr_search::abe;
use ehr_search::error::SseError;
use ehr_search::policy::Policy;
use ehr_search::sse::{Capsule, CapsuleId, Keyword, SearchKeyOwner};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

#[test]
fn capsule_opens_iff_policy_satisfied_and_is_bound_to_id_and_epoch() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let (pp, msk) = abe::setup(&mut rng);
    let policy = Policy::parse("role:researcher AND irb:study-42").unwrap();
    let mut owner = SearchKeyOwner::generate_with_epochs(&mut rng, 16).unwrap();
    owner.rotate().unwrap();
    owner.rotate().unwrap();
    let id = CapsuleId([5; 32]);
    let capsule = Capsule::seal(&pp, &policy, id, &owner.state(), &mut rng).unwrap();
    assert_eq!(capsule.epoch(), 2);
    assert_eq!(capsule.capsule_id(), id);

    let good = abe::keygen(
        &pp,
        &msk,
        b"alice",
        ["role:researcher", "irb:study-42"],
        &mut rng,
    )
    .unwrap();
    let bad = abe::keygen(&pp, &msk, b"bob", ["role:researcher"], &mut rng).unwrap();

    // Through the byte encoding, as it would come from the ledger.
    let decoded = Capsule::from_bytes(&capsule.to_bytes()).unwrap();
    let state = decoded.open(&good).unwrap();
    assert_eq!(state.epoch(), 2);
    let kw = Keyword::code("http://loinc.org|4548-4").unwrap();
    for e in 0..=2 {
        assert_eq!(
            state.epoch_key(e).unwrap().keyword_key(&kw),
            owner.state().epoch_key(e).unwrap().keyword_key(&kw)
        );
    }
    assert!(state.epoch_key(3).is_err());
    assert!(matches!(decoded.open(&bad), Err(SseError::Abe(_))));

    // Re-labelled as another capsule or another epoch: refused.
    let mut bytes = capsule.to_bytes();
    bytes[1] ^= 1;
    let other_id = Capsule::from_bytes(&bytes).unwrap();
    assert!(other_id.open(&good).is_err());
    let mut bytes = capsule.to_bytes();
    bytes[36] = 1;
    let other_epoch = Capsule::from_bytes(&bytes).unwrap();
    assert!(other_epoch.open(&good).is_err());

    // Malformed encodings are errors, never panics.
    let full = capsule.to_bytes();
    for cut in [0, 1, 20, 37, 38, full.len() / 2, full.len() - 1] {
        assert!(Capsule::from_bytes(&full[..cut]).is_err());
    }
    let mut v = full.clone();
    v[0] = 7;
    assert!(Capsule::from_bytes(&v).is_err());
    let dbg = format!("{capsule:?}");
    assert!(!dbg.contains(&hex::encode(&full[40..60])));
}
