//! Figures for the replica core, in process (no network, no disk): four replicas with real
//! Ed25519 votes and the real application ([`LedgerState`], every replica verifying every
//! client signature through `App::check_tx`), messages really encoded and decoded.
//!
//! 1. Committed transactions per second and CPU-µs per transaction (all four replicas run on
//!    this one thread, so wall time is CPU time; per replica it is a quarter).
//! 2. The time for a replica 10,000 blocks behind to catch up by state transfer (checkpoint
//!    snapshot plus the blocks after it).
//!
//! Run: `cargo bench -p ehr-ledger --bench consensus` (`EHR_BENCH_TXS`, `EHR_BENCH_BLOCKS` to
//! change the sizes).

use std::collections::VecDeque;
use std::time::Instant;

use ed25519_dalek::SigningKey;
use ehr_ledger::app::App;
use ehr_ledger::crypto::{Ed25519Signer, ReplicaId, Signer};
use ehr_ledger::replica::{Action, Dest, Input, Replica, ReplicaConfig};
use ehr_ledger::state::{Genesis, GenesisParticipant, LedgerState};
use ehr_ledger::tx::{CapsuleId, Cid, ParticipantId, Role, TxBody, TxKind};
use sha3::{Digest, Sha3_256};

const CHAIN: &str = "ehr-bench";

fn key(i: u64) -> SigningKey {
    SigningKey::from_bytes(&Sha3_256::digest(i.to_le_bytes()).into())
}

fn pid(k: &SigningKey) -> ParticipantId {
    ParticipantId(k.verifying_key().to_bytes())
}

fn capsule_id(i: usize) -> CapsuleId {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&(i as u64).to_le_bytes());
    CapsuleId(id)
}

fn genesis(hospitals: &[SigningKey]) -> LedgerState {
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
    LedgerState::from_genesis(&Genesis {
        chain_id: CHAIN.into(),
        participants,
    })
    .expect("genesis")
}

fn capsule_tx(h: &SigningKey, i: usize) -> Vec<u8> {
    TxBody::new(
        CHAIN,
        pid(h),
        1,
        TxKind::PublishCapsule {
            capsule: capsule_id(i),
            policy: "role:researcher and dept:cardiology".into(),
            epoch: 0,
            wrapped_search_key: vec![7; 200],
        },
    )
    .sign(h)
    .to_bytes()
}

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

struct Cluster {
    replicas: Vec<Replica<LedgerState>>,
    queue: VecDeque<(ReplicaId, ReplicaId, Vec<u8>)>,
    down: Vec<bool>,
    now: u64,
    messages: u64,
    bytes: u64,
}

impl Cluster {
    fn new(hospitals: &[SigningKey], batch: usize) -> Self {
        let signers: Vec<Ed25519Signer> = (0..4u64)
            .map(|i| Ed25519Signer::from_bytes(&Sha3_256::digest((1000 + i).to_le_bytes()).into()))
            .collect();
        let validators: Vec<[u8; 32]> = signers.iter().map(|s| s.public_key()).collect();
        let replicas = signers
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let cfg = ReplicaConfig {
                    chain_id: CHAIN.into(),
                    id: i as ReplicaId,
                    validators: validators.clone(),
                    max_batch_txs: batch,
                    batch_delay_ms: 1,
                    ..ReplicaConfig::default()
                };
                Replica::new(cfg, Box::new(s), genesis(hospitals), None).expect("replica")
            })
            .collect();
        Self {
            replicas,
            queue: VecDeque::new(),
            down: vec![false; 4],
            now: 1,
            messages: 0,
            bytes: 0,
        }
    }

    fn drain(&mut self, id: ReplicaId) {
        let actions: Vec<Action> = self.replicas[id as usize].drain_actions().collect();
        for a in actions {
            if let Action::Send { to, msg } = a {
                match to {
                    Dest::One(t) => self.queue.push_back((id, t, msg)),
                    Dest::All => {
                        for t in 0..4 {
                            if t != id {
                                self.queue.push_back((id, t, msg.clone()));
                            }
                        }
                    }
                }
            }
        }
    }

    fn pump(&mut self) {
        while let Some((from, to, msg)) = self.queue.pop_front() {
            if self.down[from as usize] || self.down[to as usize] {
                continue;
            }
            self.messages += 1;
            self.bytes += msg.len() as u64;
            let _ = self.replicas[to as usize].step(Input::Peer { from, msg });
            self.drain(to);
        }
    }

    fn tick(&mut self, ms: u64) {
        self.now += ms;
        for id in 0..4 {
            if !self.down[id as usize] {
                let _ = self.replicas[id as usize].step(Input::Tick { now_ms: self.now });
                self.drain(id);
            }
        }
        self.pump();
    }

    fn submit(&mut self, to: ReplicaId, tx: Vec<u8>) {
        self.replicas[to as usize]
            .step(Input::Request(tx))
            .expect("transaction accepted");
        self.drain(to);
    }

    fn heads(&self) -> Vec<u64> {
        self.replicas.iter().map(|r| r.last_executed()).collect()
    }
}

/// CPU time of this thread in seconds (Linux `/proc/thread-self/schedstat`; falls back to
/// wall time elsewhere). The machine may be shared, so CPU time is the honest figure.
fn cpu_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn throughput() {
    let n_hospitals = if quick() { 50 } else { 2000 };
    let hospitals: Vec<SigningKey> = (1..=n_hospitals).map(key).collect();
    let per = env("EHR_BENCH_TXS", if quick() { 100 } else { 20_000 })
        .div_ceil(hospitals.len())
        .max(1);
    let mut c = Cluster::new(&hospitals, 2000);
    // Setup (not timed): every hospital publishes its capsule.
    for (i, h) in hospitals.iter().enumerate() {
        c.submit(0, capsule_tx(h, i));
    }
    c.pump();
    c.tick(5);
    assert!(
        c.replicas.iter().all(|r| r.pending_len() == 0),
        "setup committed"
    );
    let start_height = c.heads()[0];
    // Pre-signed load: nonce-major order so each hospital's nonces stay in sequence.
    let mut txs = Vec::with_capacity(per * hospitals.len());
    let mut serial = 0u64;
    for n in 0..per as u64 {
        for (i, h) in hospitals.iter().enumerate() {
            serial += 1;
            txs.push(record_tx(h, i, 2 + n, serial));
        }
    }
    let sizes: usize = txs.iter().map(Vec::len).sum();
    // The application's own share, for reference: one check_tx and one apply per transaction
    // on one replica.
    let app_us = {
        let mut st = genesis(&hospitals);
        let caps: Vec<Vec<u8>> = hospitals
            .iter()
            .enumerate()
            .map(|(i, h)| capsule_tx(h, i))
            .collect();
        st.apply_block(1, &caps);
        let a = cpu_secs().unwrap_or(0.0);
        let mut height = 1;
        for chunk in txs.chunks(2000) {
            for tx in chunk {
                st.check_tx(tx).expect("valid");
            }
            height += 1;
            st.apply_block(height, chunk);
        }
        (cpu_secs().unwrap_or(0.0) - a) * 1e6 / txs.len() as f64
    };
    let total = txs.len();
    let (m0, b0) = (c.messages, c.bytes);
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    for chunk in txs.chunks(2000) {
        for tx in chunk {
            c.submit(0, tx.clone());
        }
        c.pump();
    }
    while c.replicas.iter().any(|r| r.pending_len() > 0) {
        c.tick(2);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = match (cpu0, cpu_secs()) {
        (Some(a), Some(b)) => b - a,
        _ => elapsed,
    };
    let applied = c.replicas[0].app().state_root();
    assert!(
        c.replicas.iter().all(|r| r.app().state_root() == applied),
        "replicas agree"
    );
    let blocks = c.heads()[0] - start_height;
    println!(
        "consensus/4-replicas-in-process: {total} tx ({} B avg) in {blocks} blocks; wall {:.3} s, CPU {:.3} s (one thread runs all 4 replicas)",
        sizes / total,
        elapsed,
        cpu,
    );
    println!(
        "  committed: {:.0} tx/s per CPU-second for the whole 4-replica cluster ({:.0} tx/s wall on this shared machine)",
        total as f64 / cpu,
        total as f64 / elapsed,
    );
    println!(
        "  CPU per tx: {:.1} us for all 4 replicas = {:.1} us per replica; {} messages, {:.1} MB",
        cpu * 1e6 / total as f64,
        cpu * 1e6 / total as f64 / 4.0,
        c.messages - m0,
        (c.bytes - b0) as f64 / 1e6,
    );
    println!(
        "  of which the application (check_tx + apply_block, one replica): {app_us:.1} us/tx; consensus overhead {:.1} us/tx per replica",
        cpu * 1e6 / total as f64 / 4.0 - app_us,
    );
}

fn catch_up() {
    let blocks = env("EHR_BENCH_BLOCKS", if quick() { 300 } else { 10_000 });
    let hospitals: Vec<SigningKey> = (1..=200u64).map(key).collect();
    let mut c = Cluster::new(&hospitals, 1);
    c.down[3] = true;
    let t0 = Instant::now();
    let mut capsules = hospitals.iter().enumerate();
    let mut nonce = 1u64;
    let mut serial = 0u64;
    let mut i = 0usize;
    while (c.heads()[0] as usize) < blocks {
        // One transaction per block, from round-robin hospitals.
        let tx = if let Some((k, h)) = capsules.next() {
            capsule_tx(h, k)
        } else {
            let k = i % hospitals.len();
            if k == 0 {
                nonce += 1;
            }
            serial += 1;
            i += 1;
            record_tx(&hospitals[k], k, nonce, serial)
        };
        c.submit(0, tx);
        c.pump();
        c.tick(2);
    }
    let build = t0.elapsed();
    let head = c.heads()[0];
    let snap = c.replicas[0].app().snapshot().len();
    println!(
        "consensus/build-chain: {head} blocks committed by 3 replicas in {:.2} s ({:.0} blocks/s, one tx per block)",
        build.as_secs_f64(),
        head as f64 / build.as_secs_f64()
    );
    // Replica 3 comes back with nothing: the idle heartbeat asks for state, a peer answers
    // with its stable checkpoint (snapshot) and the blocks after it.
    c.down[3] = false;
    let cpu1 = cpu_secs();
    let t1 = Instant::now();
    let mut rounds = 0;
    while c.heads()[3] < head && rounds < 10_000 {
        c.tick(500);
        rounds += 1;
    }
    let took = t1.elapsed();
    let took_cpu = match (cpu1, cpu_secs()) {
        (Some(a), Some(b)) => b - a,
        _ => took.as_secs_f64(),
    };
    assert_eq!(c.heads()[3], head, "replica 3 caught up");
    assert_eq!(
        c.replicas[3].app().state_root(),
        c.replicas[0].app().state_root()
    );
    println!(
        "consensus/state-transfer: a replica {head} blocks behind caught up in {:.1} ms wall, {:.1} ms CPU (all 4 replicas; snapshot {} KB + {} blocks replayed, {rounds} tick rounds)",
        took.as_secs_f64() * 1e3,
        took_cpu * 1e3,
        snap / 1024,
        head - c.replicas[3].stable_checkpoint().height,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes `--bench`; under `cargo test --benches` run a small smoke version.
    if !args.iter().any(|a| a == "--bench") {
        QUICK.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    throughput();
    catch_up();
}

static QUICK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn quick() -> bool {
    QUICK.load(std::sync::atomic::Ordering::Relaxed)
}
