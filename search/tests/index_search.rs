//! The index against a plaintext ground truth: generated corpora, AND/OR queries, deletions,
//! epoch rotations, pagination, persistence, idempotent replay, and no keyword or keyword-key
//! bytes on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ehr_search::IndexError;
use ehr_search::index::{Applied, Cursor, Index, IndexConfig, IndexEvent};
use ehr_search::sse::{
    CapsuleId, Field, Keyword, Label, LabelCounter, MemoryCounters, Query, SearchKeyOwner,
    SearchKeyState,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const CAPSULE: CapsuleId = CapsuleId([7; 32]);

fn vocab() -> Vec<Keyword> {
    let mut v = Vec::new();
    for i in 0..12 {
        v.push(Keyword::new(Field::Text, &format!("word{i}")).unwrap());
    }
    for i in 0..6 {
        v.push(Keyword::new(Field::Code, &format!("http://loinc.org|{i}000-{i}")).unwrap());
    }
    v
}

/// The uploader's side plus the plaintext ground truth.
struct World {
    owner: SearchKeyOwner,
    counters: MemoryCounters,
    vocab: Vec<Keyword>,
    /// cid -> keyword indices of live records.
    live: BTreeMap<Vec<u8>, BTreeSet<usize>>,
    events: Vec<IndexEvent>,
    height: u64,
    next_cid: u32,
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        World {
            owner: SearchKeyOwner::generate_with_epochs(&mut rng, 64).unwrap(),
            counters: MemoryCounters::new(),
            vocab: vocab(),
            live: BTreeMap::new(),
            events: Vec::new(),
            height: 1,
            next_cid: 0,
        }
    }

    fn add(&mut self, kws: &BTreeSet<usize>) -> IndexEvent {
        let cid = format!("bafy-test-cid-{:06}", self.next_cid).into_bytes();
        self.next_cid += 1;
        let keywords: Vec<Keyword> = kws.iter().map(|&i| self.vocab[i].clone()).collect();
        let labels = self
            .owner
            .epoch_key()
            .labels_for(&keywords, &mut self.counters)
            .unwrap();
        self.live.insert(cid.clone(), kws.clone());
        let ev = IndexEvent::RecordAdded {
            cid,
            capsule_id: CAPSULE,
            epoch: self.owner.epoch(),
            height: self.height,
            labels,
        };
        self.events.push(ev.clone());
        ev
    }

    fn remove(&mut self, cid: &[u8]) -> IndexEvent {
        self.live.remove(cid);
        let ev = IndexEvent::RecordRemoved {
            cid: cid.to_vec(),
            height: self.height,
        };
        self.events.push(ev.clone());
        ev
    }

    fn next_block(&mut self) {
        self.height += 1;
    }

    fn truth(&self, q: &Plain) -> BTreeSet<Vec<u8>> {
        self.live
            .iter()
            .filter(|(_, kws)| q.matches(kws))
            .map(|(c, _)| c.clone())
            .collect()
    }
}

/// A plaintext query over keyword indices.
#[derive(Clone, Debug)]
enum Plain {
    Kw(usize),
    And(Vec<Plain>),
    Or(Vec<Plain>),
}

impl Plain {
    fn matches(&self, kws: &BTreeSet<usize>) -> bool {
        match self {
            Plain::Kw(i) => kws.contains(i),
            Plain::And(v) => v.iter().all(|p| p.matches(kws)),
            Plain::Or(v) => v.iter().any(|p| p.matches(kws)),
        }
    }

    fn to_query(&self, state: &SearchKeyState, vocab: &[Keyword]) -> Query {
        match self {
            Plain::Kw(i) => Query::keyword(state, CAPSULE, &vocab[*i]),
            Plain::And(v) => Query::And(v.iter().map(|p| p.to_query(state, vocab)).collect()),
            Plain::Or(v) => Query::Or(v.iter().map(|p| p.to_query(state, vocab)).collect()),
        }
    }
}

fn all_results(index: &Index, q: &Query, page: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let p = index.search(q, cursor.as_ref(), page).unwrap();
        out.extend(p.hits.iter().map(|h| h.cid.clone()));
        match p.next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

fn check_queries(index: &Index, world: &World, queries: &[Plain]) {
    let state = world.owner.state();
    for q in queries {
        let got = all_results(index, &q.to_query(&state, &world.vocab), 1000);
        let got_set: BTreeSet<Vec<u8>> = got.iter().cloned().collect();
        assert_eq!(
            got.len(),
            got_set.len(),
            "a hit was returned twice for {q:?}"
        );
        assert_eq!(
            got_set,
            world.truth(q),
            "results differ from the ground truth for {q:?}"
        );
    }
}

fn standard_queries(n: usize) -> Vec<Plain> {
    let mut qs = Vec::new();
    for i in 0..n {
        qs.push(Plain::Kw(i));
    }
    qs.push(Plain::And(vec![Plain::Kw(0), Plain::Kw(1)]));
    qs.push(Plain::And(vec![Plain::Kw(2), Plain::Kw(13)]));
    qs.push(Plain::Or(vec![Plain::Kw(3), Plain::Kw(15)]));
    qs.push(Plain::And(vec![
        Plain::Or(vec![Plain::Kw(0), Plain::Kw(5)]),
        Plain::Kw(1),
    ]));
    qs.push(Plain::Or(vec![
        Plain::And(vec![Plain::Kw(4), Plain::Kw(6)]),
        Plain::And(vec![Plain::Kw(7), Plain::Kw(12)]),
    ]));
    qs
}

fn random_kws(rng: &mut ChaCha20Rng, n: usize) -> BTreeSet<usize> {
    let k = rng.gen_range(0..=5);
    // Skewed: low indices are frequent.
    (0..k)
        .map(|_| {
            let a = rng.gen_range(0..n);
            let b = rng.gen_range(0..n);
            a.min(b)
        })
        .collect()
}

fn open(dir: &Path) -> Index {
    Index::open(dir, IndexConfig::default()).unwrap()
}

/// Builds, deletes, rotates, adds again, and compares with the ground truth at every stage.
fn scenario(seed: u64, records: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut index = open(dir.path());
    let mut world = World::new(seed);
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed);
    let n = world.vocab.len();
    for i in 0..records {
        let kws = random_kws(&mut rng, n);
        let ev = world.add(&kws);
        assert_eq!(index.apply(&ev).unwrap(), Applied::Applied);
        if i % 10 == 9 {
            world.next_block();
        }
    }
    index.commit().unwrap();
    let queries = standard_queries(n);
    check_queries(&index, &world, &queries);

    // Deletions: remove about a quarter.
    world.next_block();
    let cids: Vec<Vec<u8>> = world.live.keys().cloned().collect();
    for c in cids.iter().filter(|_| rng.gen_bool(0.25)) {
        let ev = world.remove(c);
        assert_eq!(index.apply(&ev).unwrap(), Applied::Applied);
    }
    index.commit().unwrap();
    check_queries(&index, &world, &queries);

    // Rotation, then more records in the new epoch (a second segment too).
    world.owner.rotate().unwrap();
    world.next_block();
    for _ in 0..records / 2 {
        let kws = random_kws(&mut rng, n);
        let ev = world.add(&kws);
        index.apply(&ev).unwrap();
    }
    index.commit().unwrap();
    check_queries(&index, &world, &queries);

    // Deleting after the rotation, and compaction, keep results right.
    world.next_block();
    let cids: Vec<Vec<u8>> = world.live.keys().cloned().collect();
    for c in cids.iter().filter(|_| rng.gen_bool(0.2)) {
        let ev = world.remove(c);
        index.apply(&ev).unwrap();
    }
    index.commit().unwrap();
    check_queries(&index, &world, &queries);
    index.compact().unwrap();
    assert_eq!(index.stats().unwrap().segments, 1);
    check_queries(&index, &world, &queries);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]
    #[test]
    fn search_equals_ground_truth(seed in any::<u64>(), records in 20usize..120) {
        scenario(seed, records);
    }
}

#[test]
fn search_equals_ground_truth_larger_corpus() {
    scenario(42, 600);
}

#[test]
fn pagination_is_stable_while_records_are_added() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = open(dir.path());
    let mut world = World::new(3);
    let common: BTreeSet<usize> = [0usize].into_iter().collect();
    for i in 0..95 {
        let ev = world.add(&common);
        index.apply(&ev).unwrap();
        if i % 7 == 0 {
            world.next_block();
        }
    }
    index.commit().unwrap();
    let before = world.truth(&Plain::Kw(0));
    let q = Query::keyword(&world.owner.state(), CAPSULE, &world.vocab[0]);

    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut last_key: Option<(u64, Vec<u8>)> = None;
    let mut cursor: Option<Cursor> = None;
    let mut pages = 0;
    loop {
        let page = index.search(&q, cursor.as_ref(), 10).unwrap();
        pages += 1;
        for h in &page.hits {
            if let Some((lh, _)) = &last_key {
                assert!(h.height >= *lh, "heights go down between hits");
            }
            last_key = Some((h.height, h.cid.clone()));
            seen.push(h.cid.clone());
        }
        // Add records between pages, sometimes rotating the epoch.
        world.next_block();
        if pages % 3 == 0 {
            world.owner.rotate().unwrap();
        }
        for _ in 0..4 {
            let ev = world.add(&common);
            index.apply(&ev).unwrap();
        }
        index.commit().unwrap();
        match page.next {
            Some(c) => {
                // Cursors survive an encode/decode round trip.
                cursor = Some(Cursor::from_bytes(&c.to_bytes()).unwrap());
            }
            None => break,
        }
        assert!(pages < 1000, "pagination does not terminate");
    }
    let seen_set: BTreeSet<Vec<u8>> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), seen_set.len(), "a hit was returned twice");
    assert!(
        before.is_subset(&seen_set),
        "a record present at the start was skipped"
    );
    // The old state-derived query above only covers epoch 0; with the latest state, one pass
    // returns everything, in the same order as a fresh paging.
    let q_all = Query::keyword(&world.owner.state(), CAPSULE, &world.vocab[0]);
    let all = all_results(&index, &q_all, 13);
    assert_eq!(
        all.iter().cloned().collect::<BTreeSet<_>>(),
        world.truth(&Plain::Kw(0))
    );
    let all_one_page = all_results(&index, &q_all, 1000);
    assert_eq!(all, all_one_page, "the order depends on the page size");
}

#[test]
fn old_state_does_not_find_later_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = open(dir.path());
    let mut world = World::new(4);
    let kws: BTreeSet<usize> = [1usize].into_iter().collect();
    let e0 = world.add(&kws);
    index.apply(&e0).unwrap();
    let old_state = world.owner.state();
    world.owner.rotate().unwrap();
    world.next_block();
    let e1 = world.add(&kws);
    index.apply(&e1).unwrap();
    index.commit().unwrap();
    let old = all_results(
        &index,
        &Query::keyword(&old_state, CAPSULE, &world.vocab[1]),
        100,
    );
    let new = all_results(
        &index,
        &Query::keyword(&world.owner.state(), CAPSULE, &world.vocab[1]),
        100,
    );
    let IndexEvent::RecordAdded { cid: c0, .. } = e0 else {
        unreachable!()
    };
    assert_eq!(old, vec![c0]);
    assert_eq!(new.len(), 2);
    assert!(old_state.epoch_key(1).is_err());
}

#[test]
fn persistence_reopen_gives_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::new(5);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let queries = standard_queries(world.vocab.len());
    let expected: Vec<Vec<Vec<u8>>>;
    {
        let mut index = open(dir.path());
        for i in 0..200 {
            let kws = random_kws(&mut rng, world.vocab.len());
            let ev = world.add(&kws);
            index.apply(&ev).unwrap();
            if i % 50 == 0 {
                index.commit().unwrap();
                world.next_block();
            }
        }
        world.next_block();
        let victims: Vec<Vec<u8>> = world.live.keys().take(30).cloned().collect();
        for c in &victims {
            let ev = world.remove(c);
            index.apply(&ev).unwrap();
        }
        index.commit().unwrap();
        // Applied but uncommitted: lost on close, and not visible.
        world.next_block();
        index
            .apply(&IndexEvent::BlockApplied {
                height: world.height + 100,
            })
            .unwrap();
        let state = world.owner.state();
        expected = queries
            .iter()
            .map(|q| all_results(&index, &q.to_query(&state, &world.vocab), 17))
            .collect();
        check_queries(&index, &world, &queries);
    }
    let index = open(dir.path());
    assert_eq!(index.committed_height(), world.height - 1);
    assert_eq!(index.applied_height(), world.height - 1);
    let state = world.owner.state();
    for (q, exp) in queries.iter().zip(&expected) {
        assert_eq!(
            &all_results(&index, &q.to_query(&state, &world.vocab), 17),
            exp
        );
    }
    let stats = index.stats().unwrap();
    assert_eq!(stats.records, 200);
    assert_eq!(stats.removed, 30);
}

#[test]
fn apply_is_idempotent_and_rejects_bad_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::new(6);
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let n = world.vocab.len();
    let mut index = open(dir.path());
    for i in 0..60 {
        let kws = random_kws(&mut rng, n);
        world.add(&kws);
        if i % 10 == 9 {
            world.next_block();
        }
    }
    let victims: Vec<Vec<u8>> = world.live.keys().step_by(4).cloned().collect();
    for c in &victims {
        world.remove(c);
    }
    let events = world.events.clone();
    // Apply half, commit, then replay everything twice (crash replay and rebuild), uncommitted
    // duplicates included.
    for ev in &events[..30] {
        index.apply(ev).unwrap();
    }
    index.commit().unwrap();
    for ev in &events {
        index.apply(ev).unwrap();
    }
    for ev in &events {
        assert_eq!(index.apply(ev).unwrap(), Applied::AlreadyApplied);
    }
    index.commit().unwrap();
    for ev in &events {
        assert_eq!(index.apply(ev).unwrap(), Applied::AlreadyApplied);
    }
    let queries = standard_queries(n);
    check_queries(&index, &world, &queries);
    assert_eq!(index.stats().unwrap().records, 60);

    // Bad events are errors and change nothing.
    let IndexEvent::RecordAdded {
        cid, labels, epoch, ..
    } = events[0].clone()
    else {
        unreachable!()
    };
    let h = index.applied_height();
    let conflicting = IndexEvent::RecordAdded {
        cid: cid.clone(),
        capsule_id: CapsuleId([8; 32]),
        epoch,
        height: h,
        labels: labels.clone(),
    };
    assert!(matches!(
        index.apply(&conflicting),
        Err(IndexError::Conflict { .. })
    ));
    let stale = IndexEvent::RecordAdded {
        cid: b"brand-new".to_vec(),
        capsule_id: CAPSULE,
        epoch,
        height: h - 1,
        labels: vec![],
    };
    assert!(matches!(
        index.apply(&stale),
        Err(IndexError::OutOfOrder { .. })
    ));
    let unknown = IndexEvent::RecordRemoved {
        cid: b"never-seen".to_vec(),
        height: h,
    };
    assert!(matches!(
        index.apply(&unknown),
        Err(IndexError::UnknownRecord { .. })
    ));
    let dup_labels = vec![Label([1; 16]), Label([1; 16])];
    for bad in [
        IndexEvent::RecordAdded {
            cid: vec![],
            capsule_id: CAPSULE,
            epoch,
            height: h,
            labels: vec![],
        },
        IndexEvent::RecordAdded {
            cid: vec![1; 300],
            capsule_id: CAPSULE,
            epoch,
            height: h,
            labels: vec![],
        },
        IndexEvent::RecordAdded {
            cid: b"x".to_vec(),
            capsule_id: CAPSULE,
            epoch: u32::MAX,
            height: h,
            labels: vec![],
        },
        IndexEvent::RecordAdded {
            cid: b"y".to_vec(),
            capsule_id: CAPSULE,
            epoch,
            height: h,
            labels: dup_labels,
        },
    ] {
        assert!(matches!(
            index.apply(&bad),
            Err(IndexError::InvalidEvent { .. })
        ));
    }
    assert_eq!(index.applied_height(), h);
    index.commit().unwrap();
    check_queries(&index, &world, &queries);
    assert_eq!(index.stats().unwrap().records, 60);
}

#[test]
fn uncommitted_events_are_not_searchable() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = open(dir.path());
    let mut world = World::new(7);
    let kws: BTreeSet<usize> = [2usize].into_iter().collect();
    let ev = world.add(&kws);
    index.apply(&ev).unwrap();
    let q = Query::keyword(&world.owner.state(), CAPSULE, &world.vocab[2]);
    assert_eq!(index.search(&q, None, 10).unwrap().total, 0);
    index.commit().unwrap();
    assert_eq!(index.search(&q, None, 10).unwrap().total, 1);
}

#[test]
fn chain_survives_small_counter_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = open(dir.path());
    let mut world = World::new(8);
    let kws: BTreeSet<usize> = [3usize].into_iter().collect();
    let ev = world.add(&kws);
    index.apply(&ev).unwrap();
    // Counters reserved for uploads that never reached the ledger.
    let key = world.owner.epoch_key().keyword_key(&world.vocab[3]);
    for _ in 0..index.config().max_gap {
        world.counters.reserve(&[&key]).unwrap();
    }
    let ev = world.add(&kws);
    index.apply(&ev).unwrap();
    index.commit().unwrap();
    let q = Query::keyword(&world.owner.state(), CAPSULE, &world.vocab[3]);
    assert_eq!(index.search(&q, None, 10).unwrap().total, 2);

    // With no gap tolerance the chain stops at the gap (classic Π_bas).
    drop(index);
    let strict = Index::open(
        dir.path(),
        IndexConfig {
            max_gap: 0,
            ..IndexConfig::default()
        },
    )
    .unwrap();
    assert_eq!(strict.search(&q, None, 10).unwrap().total, 1);
}

#[test]
fn queries_and_pages_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(dir.path());
    let world = World::new(9);
    let q = Query::keyword(&world.owner.state(), CAPSULE, &world.vocab[0]);
    assert!(matches!(
        index.search(&q, None, 0),
        Err(IndexError::InvalidQuery(_))
    ));
    assert!(index.search(&q, None, 1001).is_err());
    assert!(index.search(&Query::And(vec![]), None, 10).is_err());
    assert!(index.search(&Query::Keyword(vec![]), None, 10).is_err());
    let mut deep = q.clone();
    for _ in 0..20 {
        deep = Query::And(vec![deep]);
    }
    assert!(index.search(&deep, None, 10).is_err());
    let many = Query::Or(vec![q.clone(); 5000]);
    assert!(index.search(&many, None, 10).is_err());
    assert!(Cursor::from_bytes(&[]).is_err());
    assert!(Cursor::from_bytes(&[1; 40]).is_err());
    assert!(
        Index::open(
            dir.path(),
            IndexConfig {
                writer_threads: 0,
                ..IndexConfig::default()
            }
        )
        .is_err()
    );
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_keyword_or_keyword_key_bytes_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::new(10);
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let n = world.vocab.len();
    {
        let mut index = open(dir.path());
        for i in 0..300 {
            let kws = random_kws(&mut rng, n);
            let ev = world.add(&kws);
            index.apply(&ev).unwrap();
            if i == 150 {
                index.commit().unwrap();
                world.owner.rotate().unwrap();
                world.next_block();
            }
        }
        index.commit().unwrap();
        // Searches must not write trapdoors anywhere either.
        let state = world.owner.state();
        for q in standard_queries(n) {
            all_results(&index, &q.to_query(&state, &world.vocab), 50);
        }
    }
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    let state = world.owner.state();
    for kw in &world.vocab {
        secrets.push(kw.value().as_bytes().to_vec());
        // The upper-case spelling too, in case something wrote the raw input.
        secrets.push(kw.value().to_uppercase().into_bytes());
        for ek in state.all_epoch_keys() {
            secrets.push(ek.keyword_key(kw).to_bytes().to_vec());
        }
    }
    let mut files = 0;
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(p) = stack.pop() {
        for entry in std::fs::read_dir(&p).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&path).unwrap();
            for s in &secrets {
                assert!(
                    !contains(&bytes, s),
                    "{} contains a keyword or keyword key",
                    path.display()
                );
            }
        }
    }
    assert!(files > 3, "the index directory is suspiciously empty");
}

/// Long chains are expanded in parallel blocks; the result (including where a chain stops at a
/// gap longer than `max_gap`) must not depend on the number of threads.
#[test]
fn parallel_expansion_matches_sequential() {
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::new(12);
    let kws: BTreeSet<usize> = [0usize].into_iter().collect();
    let key = world.owner.epoch_key().keyword_key(&world.vocab[0]);
    let max_gap = IndexConfig::default().max_gap;
    let mut reachable = BTreeSet::new();
    {
        let mut index = open(dir.path());
        for i in 0..3000u32 {
            // Small gaps (tolerated) now and then, straddling the parallel block borders.
            if i % 397 == 0 {
                for _ in 0..max_gap {
                    world.counters.reserve(&[&key]).unwrap();
                }
            }
            let ev = world.add(&kws);
            let IndexEvent::RecordAdded { cid, .. } = &ev else {
                unreachable!()
            };
            reachable.insert(cid.clone());
            index.apply(&ev).unwrap();
            if i % 1000 == 999 {
                index.commit().unwrap();
                world.next_block();
            }
        }
        // A gap longer than max_gap: records after it are unreachable by design.
        for _ in 0..=max_gap {
            world.counters.reserve(&[&key]).unwrap();
        }
        for _ in 0..10 {
            let ev = world.add(&kws);
            index.apply(&ev).unwrap();
        }
        index.commit().unwrap();
    }
    let q = Query::keyword(&world.owner.state(), CAPSULE, &world.vocab[0]);
    let mut results = Vec::new();
    for threads in [1, 2, 3] {
        let index = Index::open(
            dir.path(),
            IndexConfig {
                search_threads: threads,
                ..IndexConfig::default()
            },
        )
        .unwrap();
        results.push(all_results(&index, &q, 1000));
    }
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
    let got: BTreeSet<Vec<u8>> = results[0].iter().cloned().collect();
    assert_eq!(got, reachable);
}

/// Compaction while background merges run (many small commits) ends with one segment and the
/// same results.
#[test]
fn compact_after_many_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = open(dir.path());
    let mut world = World::new(13);
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    let n = world.vocab.len();
    for _ in 0..24 {
        for _ in 0..15 {
            let kws = random_kws(&mut rng, n);
            let ev = world.add(&kws);
            index.apply(&ev).unwrap();
        }
        index.commit().unwrap();
        world.next_block();
    }
    index.compact().unwrap();
    assert_eq!(index.stats().unwrap().segments, 1);
    assert_eq!(index.stats().unwrap().records, 360);
    check_queries(&index, &world, &standard_queries(n));
}
