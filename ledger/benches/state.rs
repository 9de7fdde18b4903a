//! Throughput of the ledger's application state: `check_tx` (single strict and batch
//! verification), `apply_block` of 2,000 `RegisterRecord` transactions (~300 bytes each), and
//! the cost of the state-root update per transaction.
//!
//! Run: `cargo bench -p ehr-ledger --bench state`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use ehr_ledger::app::{App, TxOutcome};
use ehr_ledger::smt::Smt;
use ehr_ledger::state::{Genesis, GenesisParticipant, LedgerState};
use ehr_ledger::tx::{CapsuleId, Cid, ParticipantId, Role, TxBody, TxKind};
use sha3::{Digest, Sha3_256};

const CHAIN: &str = "ehr-bench";
const BLOCK: usize = 2000;

fn key(i: u64) -> SigningKey {
    SigningKey::from_bytes(&Sha3_256::digest(i.to_le_bytes()).into())
}

fn pid(k: &SigningKey) -> ParticipantId {
    ParticipantId(k.verifying_key().to_bytes())
}

/// A consortium of `n` hospitals (keys 1..=n), each with capsule `i` published in block 1.
struct Fixture {
    hospitals: Vec<SigningKey>,
    state: LedgerState,
}

fn fixture(n: usize) -> Fixture {
    let hospitals: Vec<SigningKey> = (1..=n as u64).map(key).collect();
    let mut participants = vec![
        GenesisParticipant {
            key: key(0).verifying_key().to_bytes(),
            role: Role::Validator,
            label: "node-a".into(),
            attributes: vec![],
        },
        GenesisParticipant {
            key: key(u64::MAX).verifying_key().to_bytes(),
            role: Role::AttributeAuthority,
            label: "aa".into(),
            attributes: vec![],
        },
    ];
    for (i, h) in hospitals.iter().enumerate() {
        participants.push(GenesisParticipant {
            key: h.verifying_key().to_bytes(),
            role: Role::Hospital,
            label: format!("hospital-{i}"),
            attributes: vec![],
        });
    }
    let mut state = LedgerState::from_genesis(&Genesis {
        chain_id: CHAIN.into(),
        participants,
    })
    .expect("genesis");
    let capsules: Vec<Vec<u8>> = hospitals
        .iter()
        .enumerate()
        .map(|(i, h)| {
            TxBody::new(
                CHAIN,
                pid(h),
                1,
                TxKind::PublishCapsule {
                    capsule: capsule_id(i),
                    policy: "role:researcher and (irb:study-42 or dept:cardiology)".into(),
                    epoch: 0,
                    wrapped_search_key: vec![7; 200],
                },
            )
            .sign(h)
            .to_bytes()
        })
        .collect();
    let (out, _) = state.apply_block(1, &capsules);
    assert!(out.iter().all(|o| *o == TxOutcome::Applied));
    Fixture { hospitals, state }
}

fn capsule_id(i: usize) -> CapsuleId {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&(i as u64).to_le_bytes());
    CapsuleId(id)
}

/// A typical record registration: a 36-byte CIDv1, a 64-byte wrapped key, 2 search labels.
fn record_tx(h: &SigningKey, capsule: usize, nonce: u64, serial: u64) -> Vec<u8> {
    let mut cid = vec![0x01, 0x55, 0x12, 0x20];
    cid.extend_from_slice(&Sha3_256::digest(serial.to_le_bytes()));
    TxBody::new(
        CHAIN,
        pid(h),
        nonce,
        TxKind::RegisterRecord {
            cid: Cid(cid),
            capsule: capsule_id(capsule),
            epoch: 0,
            wrapped_key: vec![0x5A; 64],
            search_labels: vec![[1; 16], [2; 16]],
            size: 123_456,
            patient: None,
        },
    )
    .sign(h)
    .to_bytes()
}

fn restore(snapshot: &[u8], root: &[u8; 32]) -> LedgerState {
    let mut s = LedgerState::from_genesis(&Genesis {
        chain_id: CHAIN.into(),
        participants: vec![
            GenesisParticipant {
                key: key(0).verifying_key().to_bytes(),
                role: Role::Validator,
                label: "v".into(),
                attributes: vec![],
            },
            GenesisParticipant {
                key: key(u64::MAX).verifying_key().to_bytes(),
                role: Role::AttributeAuthority,
                label: "aa".into(),
                attributes: vec![],
            },
        ],
    })
    .expect("genesis");
    s.restore(snapshot, root).expect("restore");
    s
}

fn benches(c: &mut Criterion) {
    // One record from each of 2,000 hospitals: every transaction is at its sender's next nonce,
    // so check_tx runs every rule, not only the signature.
    let fx = fixture(BLOCK);
    let txs: Vec<Vec<u8>> = fx
        .hospitals
        .iter()
        .enumerate()
        .map(|(i, h)| record_tx(h, i, 2, i as u64))
        .collect();
    let avg = txs.iter().map(Vec::len).sum::<usize>() / txs.len();
    println!("RegisterRecord transaction size: {avg} bytes");
    let snapshot = fx.state.snapshot();
    let root = fx.state.state_root();

    let mut g = c.benchmark_group("check_tx");
    g.sample_size(10);
    g.throughput(Throughput::Elements(BLOCK as u64));
    g.bench_function("single_verify_strict_2000", |b| {
        b.iter(|| {
            for t in &txs {
                black_box(fx.state.check_tx(t).expect("valid"));
            }
        })
    });
    for batch in [64usize, 256, 2000] {
        g.bench_function(format!("batch_verify_{batch}_x_2000"), |b| {
            b.iter(|| {
                for chunk in txs.chunks(batch) {
                    let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
                    let out = fx.state.check_txs(&refs);
                    assert!(out.iter().all(Result::is_ok));
                }
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("apply_block");
    g.sample_size(10);
    g.throughput(Throughput::Elements(BLOCK as u64));
    // Cold: apply_block verifies every signature itself (a replica that never saw the txs).
    g.bench_function("register_record_2000_cold", |b| {
        b.iter_batched(
            || restore(&snapshot, &root),
            |mut s| {
                let (out, r) = s.apply_block(2, &txs);
                assert!(out.iter().all(|o| *o == TxOutcome::Applied));
                black_box(r)
            },
            BatchSize::PerIteration,
        )
    });
    // Warm: the transactions passed check_tx first (the normal path), so their strict
    // signature checks are remembered.
    g.bench_function("register_record_2000_after_check_tx", |b| {
        b.iter_batched(
            || {
                let s = restore(&snapshot, &root);
                for t in &txs {
                    s.check_tx(t).expect("valid");
                }
                s
            },
            |mut s| {
                let (out, r) = s.apply_block(2, &txs);
                assert!(out.iter().all(|o| *o == TxOutcome::Applied));
                black_box(r)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    // State-root update alone: each RegisterRecord touches about three leaves (record, nonce,
    // meta); insert 3 x 2,000 leaves into a tree of 100,000 and rehash.
    let mut base = Smt::new();
    for i in 0..100_000u64 {
        base.insert(Sha3_256::digest(i.to_be_bytes()).into(), [1; 32]);
    }
    base.commit();
    let mut g = c.benchmark_group("state_root");
    g.sample_size(10);
    g.throughput(Throughput::Elements(BLOCK as u64));
    g.bench_function("smt_3_leaves_per_tx_2000_in_100k", |b| {
        b.iter_batched(
            || base.clone(),
            |mut t| {
                for i in 0..(3 * BLOCK as u64) {
                    t.insert(
                        Sha3_256::digest((1_000_000 + i).to_be_bytes()).into(),
                        [2; 32],
                    );
                }
                black_box(t.commit())
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    // Larger measurements outside criterion: blocks of 2,000 records applied to a state that
    // already holds 100,000 records, with wall time and this thread's CPU time (the machine
    // may be shared; CPU time is the figure that does not depend on other load).
    let big = fixture(BLOCK);
    let mut state = big.state;
    let mut serial = 10_000_000u64;
    let mut height = 1u64;
    let next_block = |state: &LedgerState, serial: &mut u64| -> Vec<Vec<u8>> {
        let nonce = state.nonce(&pid(&big.hospitals[0])).expect("registered") + 1;
        big.hospitals
            .iter()
            .enumerate()
            .map(|(i, h)| {
                *serial += 1;
                record_tx(h, i, nonce, *serial)
            })
            .collect()
    };
    let start = Instant::now();
    for _ in 0..50 {
        let block = next_block(&state, &mut serial);
        let refs: Vec<&[u8]> = block.iter().map(Vec::as_slice).collect();
        assert!(state.check_txs(&refs).iter().all(Result::is_ok));
        height += 1;
        let (out, _) = state.apply_block(height, &block);
        assert!(out.iter().all(|o| *o == TxOutcome::Applied));
    }
    println!(
        "built a state of {} records in {:.1} s",
        state.records().count(),
        start.elapsed().as_secs_f64()
    );
    const ROUNDS: usize = 5;
    let n = (ROUNDS * BLOCK) as f64;
    let mut m = [Meter::default(); 4];
    for _ in 0..ROUNDS {
        // check_tx one by one, then apply (signatures remembered from check_tx).
        let block = next_block(&state, &mut serial);
        m[0].run(|| {
            for t in &block {
                state.check_tx(t).expect("valid");
            }
        });
        height += 1;
        m[1].run(|| {
            let (out, _) = state.apply_block(height, &block);
            assert!(out.iter().all(|o| *o == TxOutcome::Applied));
        });
        // check_txs with one batch verification, then apply verifying every signature.
        let block = next_block(&state, &mut serial);
        let refs: Vec<&[u8]> = block.iter().map(Vec::as_slice).collect();
        m[2].run(|| assert!(state.check_txs(&refs).iter().all(Result::is_ok)));
        height += 1;
        m[3].run(|| {
            let (out, _) = state.apply_block(height, &block);
            assert!(out.iter().all(|o| *o == TxOutcome::Applied));
        });
    }
    // The state-root update alone, in CPU time: 3 leaves per transaction into 100,000.
    let mut root_meter = Meter::default();
    for r in 0..ROUNDS as u64 {
        let mut t = base.clone();
        root_meter.run(|| {
            for i in 0..(3 * BLOCK as u64) {
                let k = 2_000_000 + r * 10_000 + i;
                t.insert(Sha3_256::digest(k.to_be_bytes()).into(), [3; 32]);
            }
            black_box(t.commit());
        });
    }
    println!(
        "state root update (3 leaves per tx, tree of 100,000): {:.1} us CPU per tx, {:.1} us wall",
        root_meter.cpu / n * 1e6,
        root_meter.wall / n * 1e6
    );
    for (name, meter) in [
        "check_tx (verify_strict)",
        "apply_block after check_tx",
        "check_txs (batch of 2000)",
        "apply_block verifying signatures",
    ]
    .iter()
    .zip(m)
    {
        println!(
            "at 100,000 records, {name}: {:.0} tx/s wall, {:.0} tx/s per CPU-second ({:.1} us CPU per tx)",
            n / meter.wall,
            n / meter.cpu,
            meter.cpu / n * 1e6
        );
    }
}

/// Accumulated wall and thread CPU seconds.
#[derive(Clone, Copy, Default)]
struct Meter {
    wall: f64,
    cpu: f64,
}

impl Meter {
    fn run(&mut self, f: impl FnOnce()) {
        let c0 = thread_cpu_seconds();
        let t0 = Instant::now();
        f();
        self.wall += t0.elapsed().as_secs_f64();
        self.cpu += thread_cpu_seconds() - c0;
    }
}

/// This thread's user + system CPU time from the Linux proc filesystem (clock ticks of
/// 1/100 s); falls back to 0 elsewhere, which then shows as an infinite rate.
fn thread_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return 0.0;
    };
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After the command name: state is field 3, utime field 14, stime field 15.
    let tick = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(14) + tick(15)) / 100.0
}

criterion_group!(state, benches);
criterion_main!(state);
