//! End-to-end: the FHIR fixtures uploaded through the API leave no keyword or patient string
//! in any file under the nodes' data directories; after a restart everything is still
//! searchable; bad inputs get a 4xx problem and change neither the ledger nor the index.

mod node_support;

use std::path::{Path, PathBuf};

use ehr::fhir::{ExtractConfig, InputFormat};
use ehr_search::sse::Keyword;
use node_support::{CHAIN, Net, send};
use reqwest::Method;
use serde_json::{Value, json};

fn fixtures() -> Vec<(PathBuf, &'static str)> {
    let root = manifest_dir().join("tests/fixtures/fhir");
    let mut out = vec![
        (
            root.join("carebundle/type2_diabetes-42-0000.json"),
            "application/fhir+json",
        ),
        (
            root.join("carebundle/export.ndjson"),
            "application/fhir+ndjson",
        ),
    ];
    let mut ex: Vec<_> = std::fs::read_dir(root.join("r4-examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    ex.sort();
    out.extend(ex.into_iter().map(|p| (p, "application/fhir+json")));
    out
}

/// Strings that must never be found at rest: keyword values and patient names (at least 6
/// bytes long, so that short common words do not match by chance in binary data).
fn needles() -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    for (p, ctype) in fixtures() {
        let bytes = std::fs::read(&p).unwrap();
        let fmt = InputFormat::from_media_type(ctype).unwrap();
        let ex = ehr::fhir::extract(&bytes, fmt, &ExtractConfig::default()).unwrap();
        for k in ex.keywords {
            if k.value.len() >= 6 {
                out.insert(k.value.clone());
            }
        }
        let text = String::from_utf8(bytes).unwrap();
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                collect_names(&v, &mut out);
            }
        }
    }
    out.into_iter().collect()
}

fn collect_names(v: &Value, out: &mut std::collections::BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "family" || k == "given" || k == "birthDate" {
                    match x {
                        Value::String(s) if s.len() >= 6 => {
                            out.insert(s.clone());
                        }
                        Value::Array(a) => {
                            for s in a.iter().filter_map(Value::as_str).filter(|s| s.len() >= 6) {
                                out.insert(s.to_owned());
                            }
                        }
                        _ => {}
                    }
                }
                collect_names(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_names(x, out)),
        _ => {}
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fixtures_leave_no_plaintext_restart_keeps_state_bad_inputs_change_nothing() {
    let net = Net::start().await;
    let mut uploaded = 0;
    for (i, (p, ctype)) in fixtures().into_iter().enumerate() {
        let h = i % 2;
        let r = net.upload(h, ctype, std::fs::read(&p).unwrap()).await;
        assert_eq!(
            r.status,
            201,
            "{}: {}",
            p.display(),
            String::from_utf8_lossy(&r.body)
        );
        uploaded += r.json()["records"].as_array().unwrap().len();
    }
    assert!(uploaded > 100, "{uploaded} records");
    net.settle().await;

    // No keyword or patient string anywhere under the data directories.
    let needles = needles();
    assert!(needles.len() > 50, "{} needles", needles.len());
    assert!(
        needles
            .iter()
            .any(|n| n == "http://hl7.org/fhir/sid/icd-10-cm|E11.9")
    );
    let mut files = Vec::new();
    for i in 0..4 {
        files_under(&net.dir.join(format!("node-{i}/data")), &mut files);
    }
    assert!(files.len() > 20);
    for f in &files {
        // Files come and go (index merges, temporary files): a vanished one holds nothing.
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        for n in &needles {
            assert!(
                !text.contains(n.as_str()),
                "{} holds a plaintext string ({} bytes)",
                f.display(),
                n.len()
            );
        }
    }

    // Restart every node on the same directories, with a 1 MiB body limit at node 0.
    let toml = net.dir.join("node-0/node.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(
        &toml,
        text.replace("max_body_bytes = 33554432", "max_body_bytes = 1048576"),
    )
    .unwrap();
    let before_restart = net.heights(0).0;
    let net = net.restart().await;
    assert!(net.heights(0).0 >= before_restart);
    net.settle().await;
    let researcher = net.who("researcher.json");
    let opened = net.open_capsules(2, &researcher).await;
    let s = net
        .search(
            2,
            &researcher,
            &opened,
            &Keyword::code("http://hl7.org/fhir/sid/icd-10-cm|E11.9").unwrap(),
        )
        .await;
    assert_eq!(s.status, 200);
    assert!(
        !s.json()["hits"].as_array().unwrap().is_empty(),
        "still found after restart"
    );

    // Bad inputs: a 4xx problem each, and nothing changes.
    let hospital = net.who("hospital-0.json");
    let (h0, i0) = net.heights(0);
    let pins0 = net.dev.nodes[0]
        .ctx()
        .blockstore
        .list_pins()
        .await
        .unwrap()
        .len();
    let url = net.url(0, "/v1/records");
    let post = |ctype: &'static str, body: Vec<u8>, url: String| {
        let who = &hospital;
        async move { send(Method::POST, url, Some(who), Some(ctype), body).await }
    };
    let p = post(
        "application/fhir+json",
        br#"{"resourceType": 5}"#.to_vec(),
        url.clone(),
    )
    .await
    .problem(400);
    assert_eq!(p["errors"][0]["field"], "body");
    post("application/fhir+json", b"{not json".to_vec(), url.clone())
        .await
        .problem(400);
    post(
        "application/fhir+ndjson",
        b"{\"resourceType\":\"Patient\"}\n[1]\n".to_vec(),
        url.clone(),
    )
    .await
    .problem(400);
    post("text/json", b"{}".to_vec(), url.clone())
        .await
        .problem(415);
    post(
        "application/octet-stream",
        vec![7u8; (1 << 20) + 1],
        url.clone(),
    )
    .await
    .problem(413);
    let p = post(
        "application/fhir+json",
        serde_json::to_vec(&json!({"resourceType":"Basic"})).unwrap(),
        format!("{url}?policy={}", "ab".repeat(32)),
    )
    .await
    .problem(400);
    assert_eq!(p["errors"][0]["field"], "policy");
    post(
        "application/fhir+json",
        b"{}".to_vec(),
        format!("{url}?patient=xyz"),
    )
    .await
    .problem(400);
    // Not the node's hospital.
    let other = net.who("hospital-1.json");
    send(
        Method::POST,
        url.clone(),
        Some(&other),
        Some("application/fhir+json"),
        b"{}".to_vec(),
    )
    .await
    .problem(403);
    // Bad CID.
    let p = send(
        Method::GET,
        net.url(0, "/v1/records/not-a-cid"),
        Some(&researcher),
        None,
        vec![],
    )
    .await
    .problem(400);
    assert_eq!(p["errors"][0]["field"], "cid");
    // No token, an expired token, a replayed token, a token for another chain.
    send(Method::GET, net.url(0, "/v1/capsules"), None, None, vec![])
        .await
        .problem(401);
    let expired = ehr::auth::mint_eddsa(&researcher.key, CHAIN, node_support::now() - 1000, 120);
    let replay = ehr::auth::mint_eddsa(&researcher.key, CHAIN, node_support::now(), 120);
    let other_chain = ehr::auth::mint_eddsa(&researcher.key, "other", node_support::now(), 120);
    let client = reqwest::Client::new();
    let with = |t: String| {
        let c = client.clone();
        let u = net.url(0, "/v1/capsules");
        async move { c.get(u).bearer_auth(t).send().await.unwrap() }
    };
    assert_eq!(with(expired).await.status(), 401);
    assert_eq!(with(replay.clone()).await.status(), 200);
    let r = with(replay.clone()).await;
    assert_eq!(r.status(), 401);
    let body = r.text().await.unwrap();
    assert!(!body.contains(&replay), "the token is not echoed");
    assert_eq!(with(other_chain).await.status(), 401);
    // FHIR flavour: the type must match, errors are OperationOutcomes.
    let r = send(
        Method::POST,
        net.url(0, "/fhir/Observation"),
        Some(&hospital),
        Some("application/fhir+json"),
        serde_json::to_vec(&json!({"resourceType":"Condition"})).unwrap(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["resourceType"],
        "OperationOutcome",
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // Bad search queries.
    for q in [
        json!({"query": {"nope": []}}),
        json!({"query": {"keyword": ["!!"]}}),
        json!({"query": {"keyword": ["AAAA"]}, "limit": 0}),
    ] {
        send(
            Method::POST,
            net.url(0, "/v1/search"),
            Some(&researcher),
            Some("application/json"),
            serde_json::to_vec(&q).unwrap(),
        )
        .await
        .problem(400);
    }
    // Unknown route.
    send(Method::GET, net.url(0, "/v2/nothing"), None, None, vec![])
        .await
        .problem(404);

    assert_eq!(
        net.heights(0),
        (h0, i0),
        "the ledger and the index are unchanged"
    );
    assert_eq!(
        net.dev.nodes[0]
            .ctx()
            .blockstore
            .list_pins()
            .await
            .unwrap()
            .len(),
        pins0
    );

    // Metrics saw it all.
    let m = send(Method::GET, net.url(0, "/metrics"), None, None, vec![]).await;
    let text = String::from_utf8(m.body).unwrap();
    assert!(
        text.contains("ehr_auth_failures_total{kind=\"unauthenticated\"}"),
        "{text}"
    );
    assert!(text.contains("route=\"/v1/records\""));
    let o = send(Method::GET, net.url(0, "/openapi.json"), None, None, vec![]).await;
    assert_eq!(
        o.json()["paths"]["/v1/search"]["post"]["security"][0]["bearer"],
        json!([])
    );

    net.dev.shutdown().await;
}

/// The package directory: cargo's run-time value (a test binary reused from a build in another
/// checkout would carry that checkout's compile-time path), else the compile-time one.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
