//! Properties of the client side: key regression, labels, trapdoors and counters.

use std::collections::HashSet;

use ehr_search::error::SseError;
use ehr_search::sse::{
    CapsuleId, FileCounters, Keyword, Label, LabelCounter, MemoryCounters, SearchKeyOwner,
    SearchKeyState, Trapdoor,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The state of epoch e derives exactly the keys of epochs <= e, equal to the owner's.
    #[test]
    fn key_regression(seed in any::<u64>(), len in 1u32..40, e in 0u32..40, probe in 0u32..45) {
        let e = e % len;
        let mut owner = SearchKeyOwner::generate_with_epochs(
            &mut ChaCha20Rng::seed_from_u64(seed), len).unwrap();
        let kw = Keyword::text("cardiology").unwrap();
        let mut owner_keys = vec![owner.epoch_key().keyword_key(&kw)];
        for _ in 0..e {
            owner.rotate().unwrap();
            owner_keys.push(owner.epoch_key().keyword_key(&kw));
        }
        let state = SearchKeyState::from_bytes(&owner.state().to_bytes()).unwrap();
        prop_assert_eq!(state.epoch(), e);
        match state.epoch_key(probe) {
            Ok(k) => {
                prop_assert!(probe <= e);
                prop_assert_eq!(&k.keyword_key(&kw), &owner_keys[probe as usize]);
            }
            Err(SseError::EpochNotDerivable { requested, held }) => {
                prop_assert!(probe > e);
                prop_assert_eq!((requested, held), (probe, e));
            }
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
        // Trapdoors of a state cover exactly epochs 0..=e.
        let tds = state.trapdoors(CapsuleId([1; 32]), &kw);
        prop_assert_eq!(tds.len() as u32, e + 1);
        for (i, td) in tds.iter().enumerate() {
            prop_assert_eq!(td.epoch(), i as u32);
            prop_assert_eq!(td.key(), &owner_keys[i]);
        }
    }

    /// Labels of different keywords, epochs and counters never collide, and trapdoors survive
    /// encoding.
    #[test]
    fn labels_are_unique(seed in any::<u64>(), words in proptest::collection::btree_set("[a-z]{1,8}", 1..6)) {
        let mut owner = SearchKeyOwner::generate_with_epochs(
            &mut ChaCha20Rng::seed_from_u64(seed), 4).unwrap();
        let mut seen: HashSet<Label> = HashSet::new();
        for _ in 0..3 {
            let ek = owner.epoch_key();
            for w in &words {
                let kw = Keyword::text(w).unwrap();
                let td = ek.trapdoor(CapsuleId([2; 32]), &kw);
                let back = Trapdoor::from_bytes(&td.to_bytes()).unwrap();
                prop_assert_eq!(&back, &td);
                for c in 0..8 {
                    prop_assert!(seen.insert(td.key().label(c)), "label collision");
                }
            }
            owner.rotate().unwrap();
        }
    }
}

/// Memory and file counters hand out the same sequence; the file store continues after reopen.
#[test]
fn counter_stores_agree_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctr");
    let owner = SearchKeyOwner::generate(&mut ChaCha20Rng::seed_from_u64(1));
    let ek = owner.epoch_key();
    let kws: Vec<Keyword> = ["a", "b", "c"]
        .iter()
        .map(|w| Keyword::text(w).unwrap())
        .collect();
    let mut mem = MemoryCounters::new();
    let mut from_mem = Vec::new();
    let mut from_file = Vec::new();
    for round in 0..6 {
        let subset = &kws[..1 + round % 3];
        from_mem.push(ek.labels_for(subset, &mut mem).unwrap());
        let mut file = FileCounters::open(&path).unwrap();
        from_file.push(ek.labels_for(subset, &mut file).unwrap());
    }
    assert_eq!(from_mem, from_file);
    let all: Vec<Label> = from_mem.into_iter().flatten().collect();
    let distinct: HashSet<&Label> = all.iter().collect();
    assert_eq!(all.len(), distinct.len());
    // Reserve returns one counter per key, in order.
    let ka = ek.keyword_key(&kws[0]);
    let kb = ek.keyword_key(&kws[1]);
    let mut file = FileCounters::open(&path).unwrap();
    assert_eq!(file.reserve(&[&kb, &ka]).unwrap(), vec![4, 6]);
}
