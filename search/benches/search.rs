//! Search benchmark: index build rate, bytes per label, search latency against the number of
//! hits at 10^5 (and, opt-in, 10^6) records, and beside it the per-document pairing test of
//! attribute-based keyword search (ABKS) for comparison.
//!
//! Run: `cargo bench -p ehr-search --bench search`.
//! Environment:
//! - `EHR_BENCH_LARGE=1` also runs 10^6 records (several minutes, about 1 GB of disk);
//! - `EHR_BENCH_RECORDS=n` runs n records only (quick checks);
//! - `EHR_BENCH_WRITER_THREADS=n` sets tantivy's indexing threads (default 1);
//! - `EHR_BENCH_SEARCH_THREADS=n` sets the thread count of the second column of search
//!   figures (default 2; the first is always 1);
//! - `EHR_BENCH_SEARCH_LOOP=n` repeats the largest probe query n times (for profiling);
//! - `EHR_BENCH_PAIRING_DOCS=n` sets the number of documents the pairing baseline is timed on
//!   (default 10^4).
//!
//! Corpus: every record has 20 keywords: probe keywords with fixed numbers of hits (2,000,
//! 20,000 and 100,000 records, independent of the corpus size, so latency can be compared across
//! sizes) and the rest drawn from a skewed vocabulary of 5,000 words. One search key, one epoch.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use ark_bls12_381::{Bls12_381, Fr, G1Affine, G1Projective, G2Affine, G2Projective};
use ark_ec::pairing::Pairing;
use ark_ec::{CurveGroup, PrimeGroup};
use ark_std::{UniformRand, Zero};
use ehr_search::index::{Index, IndexConfig, IndexEvent};
use ehr_search::sse::{CapsuleId, Keyword, MemoryCounters, Query, SearchKeyOwner};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const KEYWORDS_PER_RECORD: usize = 20;
const VOCAB: usize = 5000;
const PROBES: [usize; 3] = [2_000, 20_000, 100_000];
const BATCH: usize = 10_000;
const CAPSULE: CapsuleId = CapsuleId([0x42; 32]);

fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(p).expect("read index dir") {
        let e = e.expect("dir entry");
        let m = e.metadata().expect("metadata");
        total += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Built {
    dir: tempfile::TempDir,
    index: Index,
    owner: SearchKeyOwner,
    probes: Vec<(usize, Keyword)>,
}

fn build(records: usize) -> Built {
    let mut rng = ChaCha20Rng::seed_from_u64(records as u64);
    let owner = SearchKeyOwner::generate(&mut rng);
    let ek = owner.epoch_key();
    let vocab: Vec<Keyword> = (0..VOCAB)
        .map(|i| Keyword::text(&format!("w{i}")).expect("keyword"))
        .collect();
    let probes: Vec<(usize, Keyword)> = PROBES
        .iter()
        .filter(|&&n| n <= records)
        .map(|&n| (n, Keyword::text(&format!("probe{n}")).expect("keyword")))
        .collect();
    // Which records carry which probe: a fixed-size random subset per probe.
    let probe_sets: Vec<BTreeSet<usize>> = probes
        .iter()
        .map(|(n, _)| {
            let mut s = BTreeSet::new();
            while s.len() < *n {
                s.insert(rng.gen_range(0..records));
            }
            s
        })
        .collect();

    let dir = tempfile::tempdir().expect("tempdir");
    let threads = std::env::var("EHR_BENCH_WRITER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1);
    let config = IndexConfig {
        writer_memory_bytes: threads * (256 << 20),
        writer_threads: threads,
        ..IndexConfig::default()
    };
    let mut index = Index::open(dir.path(), config).expect("open index");
    let mut counters = MemoryCounters::new();
    let mut label_time = Duration::ZERO;
    let mut index_time = Duration::ZERO;
    let mut labels_total = 0usize;
    let mut start = 0;
    while start < records {
        let end = (start + BATCH).min(records);
        let t = Instant::now();
        let mut events = Vec::with_capacity(end - start);
        for r in start..end {
            let mut kws: Vec<Keyword> = Vec::with_capacity(KEYWORDS_PER_RECORD);
            for (p, set) in probes.iter().zip(&probe_sets) {
                if set.contains(&r) {
                    kws.push(p.1.clone());
                }
            }
            while kws.len() < KEYWORDS_PER_RECORD {
                // Skewed: the minimum of two uniform draws.
                let a = rng.gen_range(0..VOCAB);
                let b = rng.gen_range(0..VOCAB);
                let w = &vocab[a.min(b)];
                if !kws.contains(w) {
                    kws.push(w.clone());
                }
            }
            let labels = ek.labels_for(&kws, &mut counters).expect("labels");
            labels_total += labels.len();
            let mut cid = b"bafkrei-bench-".to_vec();
            cid.extend_from_slice(&(r as u64).to_be_bytes());
            events.push(IndexEvent::RecordAdded {
                cid,
                capsule_id: CAPSULE,
                epoch: 0,
                height: (r / 100) as u64 + 1,
                labels,
            });
        }
        label_time += t.elapsed();
        let t = Instant::now();
        for ev in &events {
            index.apply(ev).expect("apply");
        }
        if end.is_multiple_of(100_000) || end == records {
            index.commit().expect("commit");
        }
        index_time += t.elapsed();
        start = end;
    }
    let t = Instant::now();
    index.compact().expect("compact");
    let compact_time = t.elapsed();
    let bytes = dir_bytes(dir.path());
    let stats = index.stats().expect("stats");
    println!(
        "build n={records}: {labels_total} labels; client labelling {:.1} s ({:.0} records/s); \
         index apply+commit {:.1} s = {:.0} records/s ({:.0} labels/s); final merge {:.1} s",
        label_time.as_secs_f64(),
        records as f64 / label_time.as_secs_f64(),
        index_time.as_secs_f64(),
        records as f64 / index_time.as_secs_f64(),
        labels_total as f64 / index_time.as_secs_f64(),
        compact_time.as_secs_f64(),
    );
    println!(
        "index n={records}: {:.1} MiB on disk, {:.1} bytes/label, {} segment(s), {} labels indexed",
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / labels_total as f64,
        stats.segments,
        stats.labels,
    );
    Built {
        dir,
        index,
        owner,
        probes,
    }
}

fn search_latency(b: &mut Built, records: usize) {
    let state = b.owner.state();
    // The second column of figures: `EHR_BENCH_SEARCH_THREADS` threads (default 2).
    let parallel = std::env::var("EHR_BENCH_SEARCH_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(2);
    let probes: Vec<(usize, Keyword)> = b.probes.clone();
    for (n, kw) in &probes {
        let q = Query::keyword(&state, CAPSULE, kw);
        let runs = if *n >= 100_000 { 11 } else { 31 };
        // Interleave one-thread and parallel runs so both see the same machine load.
        let mut times = [Vec::with_capacity(runs), Vec::with_capacity(runs)];
        let mut total = 0;
        for _ in 0..runs {
            for (slot, threads) in [(0, 1), (1, parallel)] {
                b.index.set_search_threads(threads).expect("threads");
                let t = Instant::now();
                let page = b.index.search(&q, None, 100).expect("search");
                times[slot].push(t.elapsed());
                total = page.total;
            }
        }
        b.index.set_search_threads(1).expect("threads");
        assert_eq!(total, *n, "the probe must hit exactly its records");
        // The PRF part of the per-hit cost, measured alone.
        let key = state.epoch_key(0).expect("epoch key").keyword_key(kw);
        let t = Instant::now();
        let mut x = 0u8;
        for c in 0..*n as u64 {
            x ^= key.label(c).0[0];
        }
        let prf = t.elapsed();
        std::hint::black_box(x);
        for (slot, threads) in [(0, 1), (1, parallel)] {
            let v = &mut times[slot];
            let p50 = percentile(v, 0.5);
            println!(
                "search n={records} hits={n} threads={threads}: p50 {:.3} ms, min {:.3} ms, \
                 p90 {:.3} ms; {:.2} us/hit at p50 (of which HMAC {:.2} us)",
                ms(p50),
                ms(v[0]),
                ms(percentile(v, 0.9)),
                p50.as_secs_f64() * 1e6 / *n as f64,
                prf.as_secs_f64() * 1e6 / *n as f64,
            );
        }
    }
    if b.probes.len() >= 2 {
        let q = Query::And(vec![
            Query::keyword(&state, CAPSULE, &b.probes[0].1),
            Query::keyword(&state, CAPSULE, &b.probes[1].1),
        ]);
        let mut times: Vec<Duration> = (0..21)
            .map(|_| {
                let t = Instant::now();
                b.index.search(&q, None, 100).expect("search");
                t.elapsed()
            })
            .collect();
        println!(
            "search n={records} AND(hits {} , hits {}): p50 {:.3} ms",
            b.probes[0].0,
            b.probes[1].0,
            ms(percentile(&mut times, 0.5))
        );
    }
    // Profiling aid: repeat the largest probe query.
    if let Some(n) = std::env::var("EHR_BENCH_SEARCH_LOOP")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        && let Some((_, kw)) = b.probes.last()
    {
        let q = Query::keyword(&state, CAPSULE, kw);
        for _ in 0..n {
            std::hint::black_box(b.index.search(&q, None, 100).expect("search"));
        }
    }
    let _ = b.dir.path();
}

/// One ABKS-style test per document: a product of three pairings compared with 1. The query
/// side (G2) is prepared once, which favours the baseline; each document brings three G1
/// elements (cycled through 64 random tuples: pairing cost does not depend on the values).
fn pairing_baseline(docs: usize) -> f64 {
    let mut rng = ark_std::rand::rngs::StdRng::from_seed([9u8; 32]);
    let q: Vec<<Bls12_381 as Pairing>::G2Prepared> = (0..3)
        .map(|_| {
            let p: G2Affine = (G2Projective::generator() * Fr::rand(&mut rng)).into_affine();
            p.into()
        })
        .collect();
    let tuples: Vec<[G1Affine; 3]> = (0..64)
        .map(|_| [0, 1, 2].map(|_| (G1Projective::generator() * Fr::rand(&mut rng)).into_affine()))
        .collect();
    let t = Instant::now();
    let mut matches = 0usize;
    for d in 0..docs {
        let a = &tuples[d % tuples.len()];
        let ml = Bls12_381::multi_miller_loop(a.iter().copied(), q.iter().cloned());
        let out = Bls12_381::final_exponentiation(ml).expect("final exponentiation");
        if out.is_zero() {
            matches += 1;
        }
    }
    let per_doc = t.elapsed().as_secs_f64() / docs as f64;
    std::hint::black_box(matches);
    println!(
        "ABKS baseline: {docs} documents, {:.3} ms per document (3-pairing product test)",
        per_doc * 1e3
    );
    per_doc
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let env_usize = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
    let mut sizes = vec![env_usize("EHR_BENCH_RECORDS").unwrap_or(100_000)];
    if std::env::var("EHR_BENCH_LARGE").is_ok_and(|v| v == "1") {
        sizes.push(1_000_000);
    }
    let pairing_docs = env_usize("EHR_BENCH_PAIRING_DOCS").unwrap_or(10_000).max(1);

    let mut p50_2k_at_1e5 = None;
    for &n in &sizes {
        let mut built = build(n);
        search_latency(&mut built, n);
        if n == 100_000 {
            let state = built.owner.state();
            if let Some((_, kw)) = built.probes.first() {
                let q = Query::keyword(&state, CAPSULE, kw);
                let mut t: Vec<Duration> = (0..31)
                    .map(|_| {
                        let s = Instant::now();
                        built.index.search(&q, None, 100).expect("search");
                        s.elapsed()
                    })
                    .collect();
                p50_2k_at_1e5 = Some(percentile(&mut t, 0.5));
            }
        }
    }
    let per_doc = pairing_baseline(pairing_docs);
    let abks_1e5 = per_doc * 100_000.0;
    println!(
        "ABKS baseline extrapolated to 10^5 records: {:.1} s per query per core",
        abks_1e5
    );
    if let Some(p50) = p50_2k_at_1e5 {
        println!(
            "speed-up at 10^5 records, 2,000 hits: {:.0}x",
            abks_1e5 / p50.as_secs_f64()
        );
    }
}
