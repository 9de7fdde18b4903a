//! The node over HTTP: a 4-replica consortium (`ehr dev`'s) in this process on 127.0.0.1.
//!
//! Printed:
//! - `ehr dev` start-to-ready time, first run (genesis ceremony included) and restart;
//! - FHIR uploads/s over HTTP with 4-replica commit: ~5 KB Observations, each hospital
//!   uploading through its own node with many concurrent requests (every upload is sealed,
//!   added to IPFS, its data key CP-ABE wrapped, labelled, committed by PBFT before the 201);
//! - search round trip p50/p99 over HTTP (trapdoors built client-side from the capsule the
//!   researcher opens) once the index holds the uploaded records; each query matches about
//!   `records / 1000` of them (one page of at most 100 is returned).
//!
//! Run: `cargo bench -p ehr --bench node_http`. Environment: `EHR_BENCH_RECORDS` (default
//! 100000: the index size for the search figure), `EHR_BENCH_UPLOADS` (default 4000: the
//! uploads timed for throughput, part of the records), `EHR_BENCH_CONCURRENCY` (default 256).

#[path = "../tests/node_support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ehr::cli::dev::DevConsortium;
use ehr_search::sse::Keyword;
use serde_json::json;
use support::{Net, Who};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn observation(i: usize, filler: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": format!("bench-{}", i % 1000), "display": "Benchmark observation"}]},
        "subject": {"reference": format!("Patient/p{i}")},
        "valueQuantity": {"value": i, "unit": "mmol/L"},
        "note": [{"text": filler}],
    }))
    .unwrap()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn upload_many(
    net: &Arc<Net>,
    hospitals: &Arc<Vec<(Who, String)>>,
    from: usize,
    n: usize,
    conc: usize,
    filler: &Arc<String>,
) -> (Duration, usize) {
    let next = Arc::new(AtomicUsize::new(from));
    let failed = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(conc)
        .build()
        .unwrap();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (next, failed, client, hospitals, filler) = (
            next.clone(),
            failed.clone(),
            client.clone(),
            hospitals.clone(),
            filler.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= from + n {
                    break;
                }
                let (who, url) = &hospitals[i % hospitals.len()];
                let r = client
                    .post(url)
                    .bearer_auth(who.token())
                    .header("content-type", "application/fhir+json")
                    .body(observation(i, &filler))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 201 => {}
                    Ok(r) => {
                        let s = r.status();
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("upload {i}: {s}: {}", r.text().await.unwrap_or_default());
                        }
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("upload {i}: {e}");
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let _ = &net;
    (t0.elapsed(), failed.load(Ordering::Relaxed))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let records = env("EHR_BENCH_RECORDS", 100_000);
        let uploads = env("EHR_BENCH_UPLOADS", 4000).min(records);
        let conc = env("EHR_BENCH_CONCURRENCY", 256);

        // Start to ready.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dev");
        let t0 = Instant::now();
        let dev = DevConsortium::start(&dir, 0).await.unwrap();
        let first = t0.elapsed();
        dev.shutdown().await;
        let t0 = Instant::now();
        let dev = DevConsortium::start(&dir, 0).await.unwrap();
        let again = t0.elapsed();
        dev.shutdown().await;
        println!("ehr dev start-to-ready: first run {first:.2?} (genesis ceremony included), restart {again:.2?}");

        let net = Arc::new(Net::start().await);
        let hospitals: Arc<Vec<(Who, String)>> = Arc::new(
            (0..4).map(|h| (net.who(&format!("hospital-{h}.json")), net.url(h, "/v1/records"))).collect(),
        );
        // ~5 KB resources.
        let filler: Arc<String> = Arc::new((0..2000).map(|i| format!("w{} ", i % 97)).collect::<String>().chars().take(4800).collect());
        let size = observation(0, &filler).len();

        // Throughput.
        let (took, failed) = upload_many(&net, &hospitals, 0, uploads, conc, &filler).await;
        let ok = uploads - failed;
        println!(
            "FHIR uploads over HTTP, 4-replica commit: {ok} x {size} B in {took:.2?} = {:.0} uploads/s ({failed} failed, concurrency {conc})",
            ok as f64 / took.as_secs_f64()
        );

        // Fill the index to `records`, then search.
        if records > uploads {
            let t0 = Instant::now();
            let (_, f) = upload_many(&net, &hospitals, uploads, records - uploads, conc, &filler).await;
            println!("filled to {records} records in {:.2?} ({f} failed)", t0.elapsed());
        }
        net.settle().await;
        let researcher = net.who("researcher.json");
        let opened = net.open_capsules(1, &researcher).await;
        let mut lat = Vec::new();
        let mut hits = 0usize;
        for q in 0..300 {
            let kw = Keyword::code(&format!("http://loinc.org|bench-{}", q % 1000)).unwrap();
            let t0 = Instant::now();
            let r = net.search(1, &researcher, &opened, &kw).await;
            lat.push(t0.elapsed());
            assert_eq!(r.status, 200);
            hits += r.json()["hits"].as_array().unwrap().len();
        }
        lat.sort();
        println!(
            "search round trip over HTTP at {records} records: p50 {:.2?}, p99 {:.2?} (300 queries, {:.1} hits each, trapdoors for 4 capsules per keyword)",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            hits as f64 / 300.0
        );
        match Arc::try_unwrap(net) {
            Ok(n) => n.dev.shutdown().await,
            Err(_) => eprintln!("consortium still referenced; not shut down cleanly"),
        }
    });
}
