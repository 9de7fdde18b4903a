//! Fault tests of a 4-node consortium of real `ehr node` processes on 127.0.0.1.
//!
//! Each node's PBFT and IPFS swarm links run through proxies of the test (one per ordered pair),
//! so a node can be partitioned and healed; nodes are killed with SIGKILL and restarted on
//! their data directories. Under a continuous upload load (each hospital uploads to its own
//! node), the default scenario kills the PBFT primary, kills a backup and partitions a node,
//! checks that commits resume while each fault is in force, and then that every node converges
//! to one ledger head, that every acknowledged upload is on every node's ledger, and that the
//! same search gives the same CIDs everywhere. Before the faults, every node must read every
//! hospital's latest record.
//!
//! Replication is checked too: each hospital's latest record is read at every node after each
//! fault (printed), and at the end every node's blockstore must hold every acknowledged
//! record's whole DAG, pinned. (This test is what found rust-ipfs 0.16's bitswap never
//! exchanging blocks with a peer again once its connection had closed; see
//! `storage/src/blockstore/exchange.rs`.) The swarm links the proxies cut are the configured
//! ones; peers also dial the listen addresses identify tells them, which
//! bypass the proxies, so a partition cuts PBFT fully and the swarm only partly.
//!
//! Long mode: `EHR_FAULT_RUNS=N` (seed `EHR_FAULT_SEED`, default random and printed) then kills
//! a random node at a random moment mid-load N times, restarting and converging after each, and
//! prints per-run outcomes and a summary (runs, acknowledged, lost).
//!
//! Debugging: `EHR_FAULT_NODE_LOG` is the nodes' `RUST_LOG`; `EHR_FAULT_KEEP=1` keeps the
//! consortium directory (configurations, data, each node's `node.log`) and prints its path.

mod process_support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ehr_search::sse::Keyword;
use ehr_storage::blockstore::{Blockstore, BlockstoreConfig, Cid, IdentitySource};
use futures::StreamExt as _;
use process_support::{CHAIN, Cluster, N, now};
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;

/// SNOMED codes the synthetic conditions carry (searched at the end).
const CODES: &[&str] = &["44054006", "38341003", "195967001", "13645005"];
/// Pause after each acknowledged upload (bounds the number of records a run makes).
const PACE: Duration = Duration::from_millis(150);
/// Generous bound of every wait (a loaded 2-core machine, debug build).
const LONG: Duration = Duration::from_secs(180);

/// One acknowledged (201) upload.
#[derive(Debug, Clone)]
struct Ack {
    hospital: usize,
    cid: String,
    height: u64,
    tx_id: String,
    code: &'static str,
}

/// The background upload load: one task per hospital, uploading to its own node.
struct Load {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    failures: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn condition(tag: &str, h: usize, seq: u64, code: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "resourceType": "Condition",
        "id": format!("{tag}-h{h}-{seq}"),
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
        "subject": {"reference": format!("Patient/{tag}-p{}", seq % 7)}
    }))
    .expect("JSON")
}

impl Load {
    /// Starts uploading as every hospital to its own node.
    fn start(c: &Cluster, tag: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for h in 0..N {
            let url = c.url(h, "/v1/records");
            let key = c.hospitals[h].key.clone();
            let http = c.http.clone();
            let (stop, acks, failures) = (stop.clone(), acks.clone(), failures.clone());
            let tag = tag.to_owned();
            tasks.push(tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::Acquire) {
                    seq += 1;
                    let code = CODES[(seq as usize + h) % CODES.len()];
                    let r = http
                        .post(&url)
                        .bearer_auth(ehr::auth::mint_eddsa(&key, CHAIN, now(), 120))
                        .header("content-type", "application/fhir+json")
                        .body(condition(&tag, h, seq, code))
                        .send()
                        .await;
                    let ok = match r {
                        Ok(r) if r.status().as_u16() == 201 => {
                            match r.json::<serde_json::Value>().await {
                                Ok(v) => {
                                    let rec = &v["records"][0];
                                    acks.lock().expect("acks lock").push(Ack {
                                        hospital: h,
                                        cid: rec["cid"].as_str().expect("cid").to_owned(),
                                        height: rec["height"].as_u64().expect("height"),
                                        tx_id: rec["tx_id"].as_str().expect("tx_id").to_owned(),
                                        code,
                                    });
                                    true
                                }
                                // The answer was lost on the way: not acknowledged.
                                Err(_) => false,
                            }
                        }
                        _ => false,
                    };
                    if ok {
                        tokio::time::sleep(PACE).await;
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }));
        }
        Load {
            stop,
            acks,
            failures,
            tasks,
        }
    }

    fn snapshot(&self) -> Vec<Ack> {
        self.acks.lock().expect("acks lock").clone()
    }

    fn acked(&self) -> usize {
        self.acks.lock().expect("acks lock").len()
    }

    /// Stops the load and returns every acknowledged upload and the number of failed attempts.
    async fn stop(self) -> (Vec<Ack>, u64) {
        self.stop.store(true, Ordering::Release);
        for t in self.tasks {
            t.await.expect("load task");
        }
        let acks = self.acks.lock().expect("acks lock").clone();
        (acks, self.failures.load(Ordering::Relaxed))
    }
}

/// The current primary as the live node `probe` reports it (primary = view mod n).
async fn primary(c: &Cluster, probe: usize) -> usize {
    let h = c
        .head(probe)
        .await
        .unwrap_or_else(|| panic!("node {probe} reports no head\n{}", c.tails()));
    (h.view % N as u64) as usize
}

/// Waits until the live nodes `others` commit at least `blocks` blocks beyond their height now.
async fn commits_resume(c: &Cluster, others: &[usize], blocks: u64, what: &str) -> (u64, u64) {
    let h0 = c.max_height(others).await;
    c.wait_for(
        &format!("commits resume ({what}): height above {h0} + {blocks} on {others:?}"),
        LONG,
        || async move { c.max_height(others).await >= h0 + blocks },
    )
    .await;
    (h0, c.max_height(others).await)
}

/// Waits until node `i` is ready and at least at the height the others had when it came back.
async fn catches_up(c: &Cluster, i: usize, what: &str) {
    let others: Vec<usize> = (0..N).filter(|&j| j != i).collect();
    let target = c.max_height(&others).await;
    c.wait_ready(i, LONG).await;
    c.wait_for(
        &format!("node {i} catches up to height {target} ({what})"),
        LONG,
        || async move { c.head(i).await.is_some_and(|h| h.height >= target) },
    )
    .await;
}

/// The acknowledgements not on `node`'s ledger as acknowledged (same tx id and height).
async fn missing_on(c: &Cluster, node: usize, acks: &[Ack]) -> Vec<String> {
    futures::stream::iter(acks.iter().cloned())
        .map(|a| async move {
            let r = process_support::send(
                &c.http,
                reqwest::Method::GET,
                c.url(node, &format!("/v1/records/{}/meta", a.cid)),
                Some(&c.researcher),
                None,
                vec![],
            )
            .await;
            match r {
                Ok(r) if r.status == 200 => {
                    let v = r.json();
                    if v["tx_id"] == json!(a.tx_id) && v["registered_at"] == json!(a.height) {
                        None
                    } else {
                        Some(format!(
                            "{} (hospital {}): acknowledged tx {} at {}, node {node} has {v}",
                            a.cid, a.hospital, a.tx_id, a.height
                        ))
                    }
                }
                Ok(r) => Some(format!(
                    "{}: node {node} answers {} {}",
                    a.cid,
                    r.status,
                    r.text()
                )),
                Err(e) => Some(format!("{}: node {node} does not answer: {e}", a.cid)),
            }
        })
        .buffer_unordered(16)
        .filter_map(|x| async move { x })
        .collect()
        .await
}

/// Asserts the same search gives the same CIDs on every node and finds every acknowledged
/// upload with that code.
async fn check_search(c: &Cluster, acks: &[Ack]) {
    let opened = c.open_capsules(0).await;
    assert_eq!(
        opened.len(),
        N,
        "the researcher opens every hospital's capsule"
    );
    for code in CODES {
        let kw = Keyword::code(&format!("http://snomed.info/sct|{code}")).expect("keyword");
        let first = c.search(0, &opened, &kw).await;
        for i in 1..N {
            let here = c.search(i, &opened, &kw).await;
            assert_eq!(
                here, first,
                "search for {code}: node {i} and node 0 return different CIDs"
            );
        }
        let want: BTreeSet<String> = acks
            .iter()
            .filter(|a| a.code == *code)
            .map(|a| a.cid.clone())
            .collect();
        let lost: Vec<_> = want.difference(&first).collect();
        assert!(
            lost.is_empty(),
            "search for {code} misses acknowledged uploads {lost:?}"
        );
    }
}

/// Waits (bounded) until no node has replication work left, reads each hospital's latest
/// record at every node through the API (verifying the bytes against the CID), then stops the
/// nodes and checks that every node's blockstore holds every acknowledged record's whole DAG,
/// pinned. Every shortfall is collected and reported together.
async fn check_replication(c: &mut Cluster, acks: &[Ack]) {
    let mut problems = Vec::new();
    let start = Instant::now();
    let mut quiet = 0;
    let mut queues = Vec::new();
    while quiet < 3 && start.elapsed() < LONG {
        queues.clear();
        for i in 0..N {
            queues.push(c.metric(i, "ehr_replication_queue").await);
        }
        quiet = if queues.iter().all(|q| *q == Some(0.0)) {
            quiet + 1
        } else {
            0
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if quiet < 3 {
        problems.push(format!(
            "replication queues did not drain within {LONG:?}: {queues:?}"
        ));
    }

    // Each hospital's latest record, read at every node.
    problems.extend(probe(c, acks, "after the faults").await);

    for i in 0..N {
        c.kill9(i);
    }
    for i in 0..N {
        let repo = c.dir.join(format!("node-{i}/data/blockstore"));
        let store = Blockstore::open(BlockstoreConfig {
            repo: repo.clone(),
            identity: IdentitySource::Ephemeral,
            listen: vec![],
            bootstrap: vec![],
            ..BlockstoreConfig::default()
        })
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", repo.display()));
        let mut missing = Vec::new();
        for a in acks {
            let cid: Cid = a.cid.parse().expect("CID");
            let pinned = store.is_pinned(cid).await.unwrap_or(false);
            if !pinned || store.check_dag(cid).await.is_err() {
                missing.push(format!(
                    "{} (hospital {}, pinned {pinned})",
                    a.cid, a.hospital
                ));
            }
        }
        store.shutdown().await;
        if !missing.is_empty() {
            problems.push(format!(
                "node {i}'s blockstore lacks {} of {} acknowledged records: {missing:?}",
                missing.len(),
                acks.len()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "replication incomplete:\n{}\n{}",
        problems.join("\n"),
        c.tails()
    );
}

/// Each hospital's latest acknowledged record read at every node (concurrently: a read that
/// must fetch from a peer waits up to 10 s), its bytes checked against its CID; prints the
/// statuses and returns a description of every read that failed.
async fn probe(c: &Cluster, acks: &[Ack], label: &str) -> Vec<String> {
    let reads: Vec<(usize, Ack)> = (0..N)
        .filter_map(|h| acks.iter().rev().find(|a| a.hospital == h).cloned())
        .flat_map(|a| (0..N).map(move |i| (i, a.clone())))
        .collect();
    let results = futures::future::join_all(reads.into_iter().map(|(i, a)| async move {
        let r = process_support::send(
            &c.http,
            reqwest::Method::GET,
            c.url(i, &format!("/v1/records/{}", a.cid)),
            Some(&c.researcher),
            None,
            vec![],
        )
        .await;
        let shown = format!(
            "h{}@n{i}:{}",
            a.hospital,
            r.as_ref().map(|r| r.status).unwrap_or(0)
        );
        let problem = match r {
            Ok(r) if r.status == 200 => {
                let got = Blockstore::only_hash(&r.body[..]).await.expect("hash");
                (got.to_string() != a.cid)
                    .then(|| format!("node {i} serves other bytes for {}", a.cid))
            }
            Ok(r) => Some(format!(
                "read {} (hospital {}) at node {i}: {} {}",
                a.cid,
                a.hospital,
                r.status,
                r.text()
            )),
            Err(e) => Some(format!("read {} at node {i}: {e}", a.cid)),
        };
        (shown, problem)
    }))
    .await;
    let mut q = Vec::new();
    for i in 0..N {
        q.push(c.metric(i, "ehr_replication_queue").await);
    }
    let shown: Vec<&str> = results.iter().map(|(s, _)| s.as_str()).collect();
    eprintln!("[probe] {label}: {} queues {q:?}", shown.join(" "));
    results.into_iter().filter_map(|(_, p)| p).collect()
}

/// The default scenario (see the file's documentation).
async fn scenario(c: &mut Cluster) -> Vec<Ack> {
    let t = Instant::now();
    let load = Load::start(c, "s");
    c.wait_for("the first acknowledged uploads", LONG, || async {
        load.acked() >= 8
    })
    .await;
    // Before any fault, every node reads every hospital's latest record (fetched over
    // bitswap where it is not replicated yet).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let unread = probe(c, &load.snapshot(), "before faults").await;
    assert!(
        unread.is_empty(),
        "reads failed before any fault: {unread:?}"
    );
    eprintln!(
        "[faults] load running: {} acknowledged at {:?}",
        load.acked(),
        t.elapsed()
    );

    // 1. kill -9 the primary.
    let p = primary(c, 0).await;
    let view_before = c.head(p).await.expect("primary head").view;
    c.kill9(p);
    let others: Vec<usize> = (0..N).filter(|&j| j != p).collect();
    let (h0, h1) = commits_resume(c, &others, 10, &format!("primary {p} killed")).await;
    let view_after = c.head(others[0]).await.expect("head").view;
    assert!(
        view_after > view_before,
        "the view moved on after the primary died ({view_before} -> {view_after})"
    );
    eprintln!(
        "[faults] primary {p} killed: height {h0} -> {h1}, view {view_before} -> {view_after}, at {:?}",
        t.elapsed()
    );
    c.start(p);
    catches_up(c, p, "restarted primary").await;
    probe(c, &load.snapshot(), "after primary restart").await;
    eprintln!(
        "[faults] node {p} restarted and caught up at {:?}",
        t.elapsed()
    );

    // 2. kill -9 a backup.
    let p = primary(c, 0).await;
    let b = (p + 1) % N;
    c.kill9(b);
    let others: Vec<usize> = (0..N).filter(|&j| j != b).collect();
    let (h0, h1) = commits_resume(c, &others, 10, &format!("backup {b} killed")).await;
    eprintln!(
        "[faults] backup {b} killed: height {h0} -> {h1}, at {:?}",
        t.elapsed()
    );
    c.start(b);
    catches_up(c, b, "restarted backup").await;
    probe(c, &load.snapshot(), "after backup restart").await;
    eprintln!(
        "[faults] node {b} restarted and caught up at {:?}",
        t.elapsed()
    );

    // 3. partition the current primary (links to and from it cut, new connections refused).
    let p = primary(c, 0).await;
    c.partition(p, true);
    let others: Vec<usize> = (0..N).filter(|&j| j != p).collect();
    let (h0, h1) = commits_resume(c, &others, 10, &format!("node {p} partitioned")).await;
    assert!(c.alive(p), "the partitioned node still runs");
    let isolated = c.head(p).await.map(|h| h.height);
    eprintln!(
        "[faults] node {p} partitioned: others {h0} -> {h1}, it is at {isolated:?}, at {:?}",
        t.elapsed()
    );
    c.partition(p, false);
    catches_up(c, p, "healed partition").await;
    probe(c, &load.snapshot(), "after heal").await;
    eprintln!(
        "[faults] node {p} healed and caught up at {:?}",
        t.elapsed()
    );

    let (acks, failures) = load.stop().await;
    eprintln!(
        "[faults] load stopped: {} acknowledged, {failures} failed attempts, at {:?}",
        acks.len(),
        t.elapsed()
    );
    for h in 0..N {
        assert!(
            acks.iter().any(|a| a.hospital == h),
            "hospital {h} got no upload acknowledged"
        );
    }
    acks
}

/// Long mode: `runs` random kills mid-load. Returns the acknowledged uploads.
async fn random_kills(c: &mut Cluster, runs: u64, seed: u64) -> Vec<Ack> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut all = Vec::new();
    let mut lost_total = 0usize;
    let start = Instant::now();
    for run in 0..runs {
        let t = Instant::now();
        let victim = rng.gen_range(0..N);
        let before = rng.gen_range(300..4000u64);
        let down = rng.gen_range(0..3000u64);
        let was_primary = primary(c, (victim + 1) % N).await == victim;
        let load = Load::start(c, &format!("r{run}"));
        tokio::time::sleep(Duration::from_millis(before)).await;
        c.kill9(victim);
        tokio::time::sleep(Duration::from_millis(down)).await;
        c.start(victim);
        c.wait_ready(victim, LONG).await;
        // Some load on the restarted node too.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (acks, failures) = load.stop().await;
        let head = c.converge(LONG).await;
        let mut lost = BTreeSet::new();
        for i in 0..N {
            for m in missing_on(c, i, &acks).await {
                eprintln!("[faults] run {run}: LOST {m}");
                lost.insert(m.split(' ').next().unwrap_or_default().to_owned());
            }
        }
        lost_total += lost.len();
        eprintln!(
            "[faults] run {run}/{runs} seed {seed}: killed node {victim}{} after {before} ms, down {down} ms; \
             {} acknowledged, {failures} failed attempts, {} lost; head {}; {:.1} s",
            if was_primary { " (primary)" } else { "" },
            acks.len(),
            lost.len(),
            head.height,
            t.elapsed().as_secs_f64()
        );
        all.extend(acks);
    }
    eprintln!(
        "[faults] SUMMARY seed {seed}: runs {runs}, acknowledged {}, lost {lost_total}, {:.1} s per run",
        all.len(),
        start.elapsed().as_secs_f64() / runs.max(1) as f64
    );
    assert_eq!(
        lost_total, 0,
        "acknowledged uploads were lost (seed {seed}; see the LOST lines above)"
    );
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consortium_processes_survive_kills_and_partitions() {
    let t = Instant::now();
    let mut c = Cluster::create().await;
    for i in 0..N {
        c.start(i);
    }
    for i in 0..N {
        c.wait_ready(i, LONG).await;
    }
    eprintln!("[faults] 4 nodes ready at {:?}", t.elapsed());

    let mut acks = scenario(&mut c).await;

    let runs: u64 = std::env::var("EHR_FAULT_RUNS")
        .ok()
        .map(|v| v.parse().expect("EHR_FAULT_RUNS is a number"))
        .unwrap_or(0);
    if runs > 0 {
        let seed: u64 = std::env::var("EHR_FAULT_SEED")
            .ok()
            .map(|v| v.parse().expect("EHR_FAULT_SEED is a number"))
            .unwrap_or_else(|| rand::thread_rng().r#gen());
        eprintln!("[faults] long mode: {runs} runs, EHR_FAULT_SEED={seed}");
        acks.extend(random_kills(&mut c, runs, seed).await);
    }

    let head = c.converge(LONG).await;
    eprintln!(
        "[faults] converged at height {} at {:?}",
        head.height,
        t.elapsed()
    );
    for i in 0..N {
        let missing = missing_on(&c, i, &acks).await;
        assert!(
            missing.is_empty(),
            "node {i} lacks {} of {} acknowledged uploads: {missing:?}",
            missing.len(),
            acks.len()
        );
    }
    check_search(&c, &acks).await;
    check_replication(&mut c, &acks).await;
    eprintln!(
        "[faults] all checks passed: {} acknowledged uploads, {:?}",
        acks.len(),
        t.elapsed()
    );
}
