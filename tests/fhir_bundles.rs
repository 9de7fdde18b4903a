//! End-to-end: `POST /fhir` Bundles. A transaction Bundle is registered atomically (one
//! `RegisterRecords` ledger transaction: every entry or none); a batch Bundle entry by entry
//! with a status per entry; other Bundle types, non-create entries, too many or too large
//! entries are refused and change nothing.

mod node_support;

use ehr_search::sse::Keyword;
use node_support::{Net, send};
use reqwest::Method;
use serde_json::{Value, json};

const LOINC_HBA1C: &str = "http://loinc.org|4548-4";

/// A synthetic Observation with `codes` extra codings (to make it large).
fn observation(i: usize, codes: usize) -> Value {
    let mut coding = vec![json!({"system": "http://loinc.org", "code": "4548-4",
        "display": "Hemoglobin A1c"})];
    for c in 0..codes {
        coding.push(json!({"system": "urn:example:synthetic", "code": format!("s{i}-{c}")}));
    }
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": coding},
        "valueQuantity": {"value": 5 + i % 4, "unit": "%"},
    })
}

fn bundle(kind: &str, resources: Vec<Value>) -> Vec<u8> {
    let entry: Vec<Value> = resources
        .into_iter()
        .map(|r| json!({"resource": r, "request": {"method": "POST", "url": "Observation"}}))
        .collect();
    serde_json::to_vec(&json!({"resourceType": "Bundle", "type": kind, "entry": entry})).unwrap()
}

async fn post_fhir(net: &Net, body: Vec<u8>) -> node_support::Resp {
    let hospital = net.who("hospital-0.json");
    send(
        Method::POST,
        net.url(0, "/fhir"),
        Some(&hospital),
        Some("application/fhir+json"),
        body,
    )
    .await
}

fn text(r: &node_support::Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// An OperationOutcome error naming `needle`, with the ledger unchanged.
fn refused(net: &Net, r: &node_support::Resp, status: u16, needle: &str, before: u64) {
    assert_eq!(r.status, status, "{}", text(r));
    let v = r.json();
    assert_eq!(v["resourceType"], "OperationOutcome", "{v}");
    assert!(v.to_string().contains(needle), "{needle} not in {v}");
    assert_eq!(
        net.heights(0).0,
        before,
        "a refused Bundle changed the ledger"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transaction_bundles_are_all_or_nothing_and_batches_per_entry() {
    let net = Net::start().await;
    net.settle().await;
    let researcher = net.who("researcher.json");

    // A transaction: three records in one ledger transaction.
    let r = post_fhir(
        &net,
        bundle("transaction", (0..3).map(|i| observation(i, 1)).collect()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let v = r.json();
    assert_eq!(v["type"], "transaction-response");
    let entries = v["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    let cids: Vec<String> = entries
        .iter()
        .map(|e| {
            assert_eq!(e["response"]["status"], "201 Created");
            let loc = e["response"]["location"].as_str().unwrap();
            loc.strip_prefix("/v1/records/").unwrap().to_owned()
        })
        .collect();
    let etags: Vec<&Value> = entries.iter().map(|e| &e["response"]["etag"]).collect();
    assert!(
        etags.windows(2).all(|w| w[0] == w[1]),
        "one height: {etags:?}"
    );
    net.settle().await;
    // Every record's proof, at another node, names the same transaction.
    let mut txs = Vec::new();
    for cid in &cids {
        let p = send(
            Method::GET,
            net.url(2, &format!("/v1/records/{cid}/proof")),
            Some(&researcher),
            None,
            vec![],
        )
        .await;
        assert_eq!(p.status, 200, "{}", text(&p));
        txs.push(p.json()["tx"].clone());
    }
    assert!(txs.windows(2).all(|w| w[0] == w[1]), "one transaction");
    // And all three are found by a researcher at node 1.
    let opened = net.open_capsules(1, &researcher).await;
    let s = net
        .search(
            1,
            &researcher,
            &opened,
            &Keyword::code(LOINC_HBA1C).unwrap(),
        )
        .await;
    assert_eq!(s.status, 200);
    let mut hits: Vec<String> = s.json()["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["cid"].as_str().unwrap().to_owned())
        .collect();
    hits.sort();
    let mut want = cids.clone();
    want.sort();
    assert_eq!(hits, want);

    // Refusals change nothing.
    let before = net.heights(0).0;
    let mut bad = observation(9, 0);
    bad["code"] = json!("not a CodeableConcept");
    let r = post_fhir(&net, bundle("transaction", vec![observation(8, 0), bad])).await;
    refused(&net, &r, 400, "body", before);
    let r = post_fhir(&net, bundle("collection", vec![observation(8, 0)])).await;
    refused(&net, &r, 400, "transaction or batch", before);
    let mut put: Value =
        serde_json::from_slice(&bundle("transaction", vec![observation(8, 0)])).unwrap();
    put["entry"][0]["request"]["method"] = "PUT".into();
    let r = post_fhir(&net, serde_json::to_vec(&put).unwrap()).await;
    refused(&net, &r, 400, "entry[0].request.method", before);
    let r = post_fhir(
        &net,
        bundle("transaction", (0..257).map(|i| observation(i, 0)).collect()),
    )
    .await;
    refused(&net, &r, 413, "at most 256", before);
    // Too large for one ledger transaction: found after sealing and wrapping, and every
    // stored DAG is unpinned again.
    let pins_before = net.dev.nodes[0]
        .ctx()
        .blockstore
        .list_pins()
        .await
        .unwrap()
        .len();
    let r = post_fhir(
        &net,
        bundle(
            "transaction",
            (0..100).map(|i| observation(i, 40)).collect(),
        ),
    )
    .await;
    refused(&net, &r, 413, "bytes", before);
    let pins_after = net.dev.nodes[0]
        .ctx()
        .blockstore
        .list_pins()
        .await
        .unwrap()
        .len();
    assert_eq!(pins_before, pins_after, "a refused transaction left pins");

    // A batch: entries registered one by one, a status each.
    let r = post_fhir(
        &net,
        bundle("batch", vec![observation(20, 0), observation(21, 0)]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let v = r.json();
    assert_eq!(v["type"], "batch-response");
    let entries = v["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert!(
        entries
            .iter()
            .all(|e| e["response"]["status"] == "201 Created")
    );
    assert!(net.heights(0).0 > before);

    // A Bundle posted as a resource is one document.
    let hospital = net.who("hospital-0.json");
    let r = send(
        Method::POST,
        net.url(0, "/fhir/Bundle"),
        Some(&hospital),
        Some("application/fhir+json"),
        bundle("collection", vec![observation(30, 0), observation(31, 0)]),
    )
    .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    assert!(r.header("location").starts_with("/v1/records/"));
}
