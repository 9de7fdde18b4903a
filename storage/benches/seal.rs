//! Sealing envelope throughput: seal and open 64 MiB in memory, single thread, default layout
//! (256 KiB segments), through the push API (the node's path) and the `Read` adapters.
//!
//! Run: `cargo bench -p ehr-storage --bench seal`.

use std::hint::black_box;
use std::io::Read;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ehr_storage::seal::{
    DataKey, Opener, SealConfig, SealContext, Sealer, open_reader, seal_reader, sealed_len,
};

const LEN: usize = 64 << 20;

fn bench(c: &mut Criterion) {
    let key = DataKey::generate().expect("system random generator");
    let ctx = SealContext::new(b"bench-policy".to_vec());
    let plain: Vec<u8> = (0..LEN).map(|i| (i.wrapping_mul(31) >> 3) as u8).collect();
    let sealed_cap = usize::try_from(sealed_len(LEN as u64)).expect("fits");

    let mut sealed = Vec::with_capacity(sealed_cap);
    let mut sealer = Sealer::new(&key, &ctx, SealConfig::default()).expect("sealer");
    sealer.update(&plain, &mut sealed);
    sealer.finish(&mut sealed);

    let mut g = c.benchmark_group("seal_64MiB");
    g.sample_size(20);
    g.measurement_time(std::time::Duration::from_secs(8));
    g.throughput(Throughput::Bytes(LEN as u64));

    // Baseline on the same machine in the same run: ring AES-256-GCM over the same bytes in
    // place, 256 KiB at a time, no copies and no envelope. `seal` / `ring_in_place` is the
    // envelope's overhead, independent of how loaded the machine is.
    let ring_key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key.expose_secret()).expect("key"),
    );
    let mut scratch = plain.clone();
    g.bench_function("ring_in_place", |b| {
        b.iter(|| {
            for (i, chunk) in scratch.chunks_mut(262_144 - 16).enumerate() {
                let mut nonce = [0u8; 12];
                nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
                let tag = ring_key
                    .seal_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key(nonce),
                        ring::aead::Aad::empty(),
                        chunk,
                    )
                    .expect("seal");
                black_box(tag.as_ref()[0]);
            }
        })
    });

    let mut out = Vec::with_capacity(sealed_cap);
    g.bench_function("seal", |b| {
        b.iter(|| {
            out.clear();
            let mut s = Sealer::new(&key, &ctx, SealConfig::default()).expect("sealer");
            s.update(black_box(&plain), &mut out);
            s.finish(&mut out);
            black_box(out.len())
        })
    });

    let mut back = Vec::with_capacity(sealed_cap);
    g.bench_function("open", |b| {
        b.iter(|| {
            back.clear();
            let mut o = Opener::new(&key, &ctx).expect("opener");
            o.update(black_box(&sealed), &mut back).expect("authentic");
            o.finish(&mut back).expect("authentic");
            assert_eq!(back.len(), LEN);
        })
    });

    g.bench_function("seal_reader", |b| {
        b.iter(|| {
            out.clear();
            seal_reader(&key, &ctx, black_box(&plain[..]))
                .expect("reader")
                .read_to_end(&mut out)
                .expect("in-memory read");
            black_box(out.len())
        })
    });

    g.bench_function("open_reader", |b| {
        b.iter(|| {
            back.clear();
            open_reader(&key, &ctx, black_box(&sealed[..]))
                .expect("reader")
                .read_to_end(&mut back)
                .expect("authentic");
            assert_eq!(back.len(), LEN);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
