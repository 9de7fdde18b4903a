//! Consensus throughput of the ledger over loopback TCP with the real driver.
//!
//! Replicas run in this process, each with its own transport (authenticated TCP on 127.0.0.1,
//! ephemeral ports), driver, redb store on disk (fsync'd) and the real application state;
//! votes are Ed25519-signed. The load is pre-signed `RegisterRecord` transactions (~300 bytes)
//! from many hospitals; each hospital pipelines up to `EHR_BENCH_WINDOW` (8) transactions through one
//! replica (its nonces must arrive in order). Scenarios:
//!
//! - 4 replicas; 7 replicas;
//! - 4 replicas with one backup down for the whole run (throughput loss against the first);
//! - 4 replicas, the primary killed mid-run: time from the kill until commits resume, against
//!   the base view-change timeout.
//!
//! Printed: committed tx/s, p50/p99 commit latency (submission to reply), and CPU time per
//! committed transaction of the whole process (getrusage: replicas and load generator).
//!
//! Run: `cargo bench -p ehr --bench ledger_throughput` (release). `EHR_BENCH_SECS` scales the
//! load (default about 4 s per scenario); `EHR_BENCH_WINDOW` sets the transactions each sender
//! keeps in flight (default 8).

#[path = "../tests/ledger_net_support/mod.rs"]
mod support;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ehr::ledger_net::{Client, LedgerEvent, LedgerNode, TcpConnector};
use ehr_ledger::app::TxOutcome;
use support::{Consortium, driver_config};
use tokio::net::TcpListener;

/// Transactions in flight per hospital (`EHR_BENCH_WINDOW`, default 8): the offered load. The
/// latency figures are queueing at the default (768 in flight); a smaller window shows the
/// latency of a less loaded consortium.
fn window() -> usize {
    std::env::var("EHR_BENCH_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|w| *w > 0)
        .unwrap_or(8)
}
/// Hospitals (independent senders).
const HOSPITALS: usize = 96;
/// Base view-change timeout of the replicas.
const VC_MS: u64 = 1000;

fn cpu_time() -> Duration {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    tv(u.user_time()) + tv(u.system_time())
}

struct Cluster {
    c: Arc<Consortium>,
    nodes: Vec<Option<LedgerNode>>,
    _dir: tempfile::TempDir,
}

async fn start(n: usize, down: &[usize]) -> Cluster {
    let c = Arc::new(Consortium::new(n, HOSPITALS));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..n {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        addrs.push(l.local_addr().expect("addr").to_string());
        listeners.push(l);
    }
    let nodes = listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            if down.contains(&i) {
                return None;
            }
            let id = i as u32;
            let (replica, store) = c.open(id, &dir.path().join(format!("r{i}.redb")), VC_MS);
            Some(
                LedgerNode::start(
                    driver_config(),
                    replica,
                    store,
                    c.identity(id),
                    c.validator_set(),
                    addrs.clone(),
                    l,
                    TcpConnector,
                )
                .expect("start node"),
            )
        })
        .collect();
    Cluster {
        c,
        nodes,
        _dir: dir,
    }
}

impl Cluster {
    /// The client hospital `h` uses: replicas round-robin over the live ones.
    fn client_for(&self, h: usize) -> Client {
        let live: Vec<&LedgerNode> = self.nodes.iter().flatten().collect();
        live[h % live.len()].client(Duration::from_secs(60))
    }

    async fn publish_capsules(&self) {
        let mut pending = Vec::new();
        for h in 0..HOSPITALS {
            pending.push(
                self.client_for(h)
                    .enqueue(self.c.capsule_tx(h))
                    .expect("enqueue"),
            );
        }
        for p in pending {
            let done = p.wait().await.expect("capsule committed");
            assert_eq!(done.outcome, TxOutcome::Applied);
        }
    }

    async fn stop(self) {
        for n in self.nodes.into_iter().flatten() {
            let _ = n.shutdown().await;
        }
    }
}

#[derive(Default)]
struct LoadResult {
    applied: u64,
    rejected: u64,
    failed: u64,
    latencies: Vec<Duration>,
}

/// Each hospital sends `per_hospital` records (nonces from 2), `WINDOW` in flight.
async fn run_load(
    cl: &Cluster,
    per_hospital: u64,
    stop: Option<Arc<Mutex<bool>>>,
) -> (LoadResult, Duration) {
    let txs: Vec<Vec<Vec<u8>>> = (0..HOSPITALS)
        .map(|h| {
            (0..per_hospital)
                .map(|i| cl.c.record_tx(h, i + 2, i))
                .collect()
        })
        .collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (h, txs) in txs.into_iter().enumerate() {
        let client = cl.client_for(h);
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = LoadResult::default();
            let mut inflight = VecDeque::new();
            let record = |res: Result<ehr::ledger_net::Committed, _>,
                          t0: Instant,
                          r: &mut LoadResult| match res {
                Ok(c) => {
                    r.latencies.push(t0.elapsed());
                    match c.outcome {
                        TxOutcome::Applied => r.applied += 1,
                        TxOutcome::Rejected(_) => r.rejected += 1,
                    }
                }
                Err(_) => r.failed += 1,
            };
            for tx in txs {
                if stop.as_ref().is_some_and(|s| *s.lock().unwrap()) {
                    break;
                }
                if inflight.len() == window() {
                    let (t0, p): (Instant, ehr::ledger_net::PendingCommit) =
                        inflight.pop_front().unwrap();
                    record(p.wait().await, t0, &mut r);
                }
                match client.enqueue(tx) {
                    Ok(p) => inflight.push_back((Instant::now(), p)),
                    Err(_) => r.failed += 1,
                }
            }
            while let Some((t0, p)) = inflight.pop_front() {
                record(p.wait().await, t0, &mut r);
            }
            r
        }));
    }
    let mut total = LoadResult::default();
    for t in tasks {
        let r = t.await.expect("load task");
        total.applied += r.applied;
        total.rejected += r.rejected;
        total.failed += r.failed;
        total.latencies.extend(r.latencies);
    }
    (total, started.elapsed())
}

struct Row {
    name: String,
    tx_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_tx: f64,
    note: String,
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

async fn throughput(name: &str, n: usize, down: &[usize], per_hospital: u64) -> Row {
    eprintln!("{name}: starting");
    let cl = start(n, down).await;
    cl.publish_capsules().await;
    eprintln!("{name}: capsules committed, running the load");
    let cpu0 = cpu_time();
    let (mut r, wall) = run_load(&cl, per_hospital, None).await;
    let cpu = cpu_time() - cpu0;
    cl.stop().await;
    r.latencies.sort();
    let committed = r.applied + r.rejected;
    Row {
        name: name.into(),
        tx_per_s: r.applied as f64 / wall.as_secs_f64(),
        p50_ms: pct(&r.latencies, 0.5),
        p99_ms: pct(&r.latencies, 0.99),
        cpu_us_per_tx: cpu.as_secs_f64() * 1e6 / committed.max(1) as f64,
        note: format!(
            "{} applied, {} rejected, {} failed in {:.2} s",
            r.applied,
            r.rejected,
            r.failed,
            wall.as_secs_f64()
        ),
    }
}

/// Kills the primary (replica 0) after `after` under load; returns the time from the kill to
/// the first block committed after it, seen by replica 1.
async fn primary_kill(per_hospital: u64, after: Duration) -> Row {
    let mut cl = start(4, &[]).await;
    cl.publish_capsules().await;
    // (when, height, view of replica 1 when it executed the block)
    let commits: Arc<Mutex<Vec<(Instant, u64, u64)>>> = Arc::default();
    let observer = cl.nodes[1].as_ref().unwrap();
    let mut feed = observer.subscribe();
    let status = observer.watch_status();
    let log = commits.clone();
    let watcher = tokio::spawn(async move {
        loop {
            match feed.recv().await {
                Ok(LedgerEvent::Committed(b)) => {
                    let view = status.borrow().view;
                    log.lock()
                        .unwrap()
                        .push((Instant::now(), b.header.height, view));
                }
                Ok(LedgerEvent::StateRestored { .. }) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
    });
    // Only hospitals on replicas 1..3 keep sending; replica 0's clients would fail with it.
    let primary = cl.nodes[0].take().unwrap();
    let stop = Arc::new(Mutex::new(false));
    let load = {
        let clients: Vec<Client> = cl
            .nodes
            .iter()
            .flatten()
            .map(|n| n.client(Duration::from_secs(60)))
            .collect();
        let c = cl.c.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for h in 0..HOSPITALS {
                let client = clients[h % clients.len()].clone();
                let txs: Vec<Vec<u8>> = (0..per_hospital)
                    .map(|i| c.record_tx(h, i + 2, i))
                    .collect();
                let stop = stop.clone();
                tasks.push(tokio::spawn(async move {
                    let mut inflight = VecDeque::new();
                    for tx in txs {
                        if *stop.lock().unwrap() {
                            break;
                        }
                        if inflight.len() == window() {
                            let p: ehr::ledger_net::PendingCommit = inflight.pop_front().unwrap();
                            let _ = p.wait().await;
                        }
                        if let Ok(p) = client.enqueue(tx) {
                            inflight.push_back(p);
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        })
    };
    tokio::time::sleep(after).await;
    let height_at_kill = primary.status().height;
    let view_at_kill = primary.status().view;
    let killed = Instant::now();
    drop(primary); // Aborts its driver and transport: a crash, as far as the others can tell.
    let resumed = loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Blocks already prepared may still commit right after the kill; what counts is the
        // first block committed in a later view, under the new primary.
        let first_after = commits
            .lock()
            .unwrap()
            .iter()
            .find(|(t, _, v)| *t > killed && *v > view_at_kill)
            .copied();
        if let Some((t, h, v)) = first_after {
            break Some((t - killed, h, v));
        }
        if killed.elapsed() > Duration::from_secs(30) {
            break None;
        }
    };
    *stop.lock().unwrap() = true;
    let _ = tokio::time::timeout(Duration::from_secs(30), load).await;
    watcher.abort();
    cl.stop().await;
    let (resume_ms, note) = match resumed {
        Some((d, h, v)) => (
            d.as_secs_f64() * 1e3,
            format!(
                "killed in view {view_at_kill} at height {height_at_kill}; first commit in view {v} at height {h}; base view-change timeout {VC_MS} ms"
            ),
        ),
        None => (f64::NAN, "commits did not resume within 30 s".into()),
    };
    Row {
        name: "4 replicas, primary killed".into(),
        tx_per_s: f64::NAN,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        cpu_us_per_tx: f64::NAN,
        note: format!(
            "commits resumed after {resume_ms:.0} ms ({:.2}x the base timeout); {note}",
            resume_ms / VC_MS as f64
        ),
    }
}

fn main() {
    let secs: f64 = std::env::var("EHR_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    // Sized for roughly `secs` seconds at 10,000 tx/s with 4 replicas.
    let per_hospital = ((secs * 10_000.0) / HOSPITALS as f64).ceil() as u64;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let probe = Consortium::new(4, 1).record_tx(0, 2, 0).len();
    println!(
        "ledger throughput: loopback TCP, real driver, redb (fsync), Ed25519; {HOSPITALS} senders x {} in flight; RegisterRecord tx = {probe} bytes",
        window()
    );
    let rows = rt.block_on(async {
        let mut rows = Vec::new();
        rows.push(throughput("4 replicas", 4, &[], per_hospital).await);
        rows.push(throughput("7 replicas", 7, &[], (per_hospital / 3).max(1)).await);
        rows.push(throughput("4 replicas, 1 backup down", 4, &[3], per_hospital).await);
        rows.push(primary_kill(per_hospital, Duration::from_millis(1500)).await);
        rows
    });
    println!(
        "{:<28} {:>10} {:>9} {:>9} {:>12}  notes",
        "scenario", "tx/s", "p50 ms", "p99 ms", "CPU µs/tx"
    );
    for r in &rows {
        println!(
            "{:<28} {:>10.0} {:>9.1} {:>9.1} {:>12.1}  {}",
            r.name, r.tx_per_s, r.p50_ms, r.p99_ms, r.cpu_us_per_tx, r.note
        );
    }
    let loss = 1.0 - rows[2].tx_per_s / rows[0].tx_per_s;
    println!("throughput loss with one backup down: {:.1}%", loss * 100.0);
}
