//! CP-ABE benchmark: FABEO keygen, wrap (encrypt) and unwrap (decrypt, including the
//! Fujisaki-Okamoto re-encryption check) for AND policies of 1, 10 and 50 attributes; threshold
//! partial issuance, partial verification and combination at 10 attributes (t = 3 of n = 4).
//!
//! Run: `cargo bench -p ehr-search --bench abe`.
//! Attribute hashes are cached process-wide (they are public), so wrap is measured warm, as an
//! encryptor that reuses its policies runs it.

use std::hint::black_box;

use ark_bls12_381::{Bls12_381, G1Affine, G2Affine};
use ark_ec::pairing::Pairing;
use ark_std::UniformRand;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ehr_search::abe::{self, PartialKey};
use ehr_search::policy::Policy;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn attrs(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("attr:{i:03}")).collect()
}

fn and_policy(attrs: &[String]) -> Policy {
    Policy::parse(&attrs.join(" and ")).expect("valid policy")
}

fn bench_single_authority(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let (pp, msk) = abe::setup(&mut rng);
    let mut group = c.benchmark_group("fabeo");
    group.sample_size(30);
    for n in [1usize, 10, 50] {
        let names = attrs(n);
        let policy = and_policy(&names);
        let key = abe::keygen(&pp, &msk, b"bench-user", &names, &mut rng).expect("keygen");
        let wrapped = abe::wrap(&pp, &policy, &[7u8; 32], b"aad", &mut rng).expect("wrap");
        println!(
            "fabeo n={n}: wrapped key {} B, user key {} B",
            wrapped.to_bytes().len(),
            key.to_bytes().len()
        );
        group.bench_with_input(BenchmarkId::new("keygen", n), &n, |b, _| {
            b.iter(|| abe::keygen(&pp, &msk, b"bench-user", &names, &mut rng).expect("keygen"))
        });
        group.bench_with_input(BenchmarkId::new("wrap", n), &n, |b, _| {
            b.iter(|| {
                abe::wrap(&pp, black_box(&policy), &[7u8; 32], b"aad", &mut rng).expect("wrap")
            })
        });
        group.bench_with_input(BenchmarkId::new("unwrap", n), &n, |b, _| {
            b.iter(|| abe::unwrap(&key, black_box(&wrapped), b"aad").expect("unwrap"))
        });
    }
    group.finish();

    // The floor of unwrap: FABEO's decapsulation is one 3-pair multi-pairing; unwrap adds the
    // Fujisaki-Okamoto re-encryption check on top.
    let g1s: Vec<G1Affine> = (0..3).map(|_| G1Affine::rand(&mut rng)).collect();
    let g2s: Vec<G2Affine> = (0..3).map(|_| G2Affine::rand(&mut rng)).collect();
    c.bench_function("fabeo/multi_pairing_3", |b| {
        b.iter(|| Bls12_381::multi_pairing(black_box(g1s.clone()), black_box(g2s.clone())))
    });
}

fn bench_threshold(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let (pp, shares) = abe::setup_dealer(4, 3, &mut rng).expect("dealer");
    let names = attrs(10);
    let partials: Vec<PartialKey> = shares
        .iter()
        .map(|s| {
            s.issue_partial(&pp, b"bench-user", &names, &mut rng)
                .expect("partial")
        })
        .collect();
    let mut group = c.benchmark_group("threshold");
    group.sample_size(30);
    group.bench_function("issue_partial/10", |b| {
        b.iter(|| {
            shares[0]
                .issue_partial(&pp, b"bench-user", &names, &mut rng)
                .expect("partial")
        })
    });
    group.bench_function("verify_partial/10", |b| {
        b.iter(|| {
            pp.verify_partial(b"bench-user", &names, black_box(&partials[0]))
                .expect("valid")
        })
    });
    group.bench_function("combine_3_of_4/10", |b| {
        b.iter(|| {
            abe::combine(&pp, b"bench-user", &names, black_box(&partials[..3])).expect("combine")
        })
    });
    group.finish();
}

criterion_group!(benches, bench_single_authority, bench_threshold);
criterion_main!(benches);
