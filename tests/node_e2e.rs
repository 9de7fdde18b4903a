//! End-to-end: a 4-replica consortium in one process on loopback. Upload at one node, search at
//! another, read and decrypt at a third; attributes, grants and revocation decide access and
//! every release is audited; bad inputs are refused and change nothing; no keyword or patient
//! string reaches the data directories.

mod node_support;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ehr_ledger::state::Authorisation;
use ehr_ledger::tx::Cid as LedgerCid;
use ehr_search::abe::WrappedKey;
use ehr_search::sse::{CapsuleId, Keyword};
use ehr_storage::blockstore::Cid;
use ehr_storage::seal::{DataKey, SealContext};
use node_support::{Net, Resp, send};
use reqwest::Method;
use serde_json::{Value, json};

const SNOMED_DIABETES: &str = "http://snomed.info/sct|44054006";

fn condition() -> Value {
    json!({
        "resourceType": "Condition",
        "id": "c1",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes mellitus type 2"}]},
        "subject": {"reference": "Patient/p1"}
    })
}

fn open_record(r: &Resp, cid: &str, key: DataKey) -> Value {
    let capsule = r.header("ehr-capsule");
    let mut cap = [0u8; 32];
    hex::decode_to_slice(&capsule, &mut cap).unwrap();
    let _ = cid;
    let plain = ehr_storage::seal::open(&key, &SealContext::new(cap.to_vec()), &r.body).unwrap();
    serde_json::from_slice(&plain).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_search_read_grant_revoke_across_nodes() {
    let net = Net::start().await;
    let researcher = net.who("researcher.json");
    let outsider = net.who("researcher-1.json");
    let kw = Keyword::code(SNOMED_DIABETES).unwrap();
    let at_0 = net.open_capsules(0, &researcher).await;

    // Upload at node 0.
    let r = net
        .upload(
            0,
            "application/fhir+json",
            serde_json::to_vec(&condition()).unwrap(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let rec = &r.json()["records"][0];
    let cid = rec["cid"].as_str().unwrap().to_owned();
    assert!(rec["labels"].as_u64().unwrap() >= 2);
    // Read-your-writes at the uploading node: a search sent right after the 201 finds it.
    let s = net.search(0, &researcher, &at_0, &kw).await;
    assert_eq!(s.status, 200);
    assert_eq!(
        s.json()["hits"][0]["cid"],
        cid,
        "{}",
        String::from_utf8_lossy(&s.body)
    );
    net.settle().await;

    // Search at node 1: found by the researcher, not by the outsider.
    let opened = net.open_capsules(1, &researcher).await;
    assert_eq!(opened.len(), 4, "every hospital's default capsule opens");
    let s = net.search(1, &researcher, &opened, &kw).await;
    assert_eq!(s.status, 200);
    let hits = s.json()["hits"].as_array().unwrap().clone();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0]["cid"], cid);
    assert!(net.open_capsules(1, &outsider).await.is_empty());
    // Even with the researcher's trapdoors, the outsider is shown nothing it may not read.
    let s = net.search(1, &outsider, &opened, &kw).await;
    assert_eq!(s.json()["hits"].as_array().unwrap().len(), 0);
    // A text keyword from the coding's display works too.
    let s = net
        .search(1, &researcher, &opened, &Keyword::text("diabetes").unwrap())
        .await;
    assert_eq!(s.json()["hits"].as_array().unwrap().len(), 1);

    // Read and decrypt at node 2.
    let r = send(
        Method::GET,
        net.url(2, &format!("/v1/records/{cid}")),
        Some(&researcher),
        None,
        vec![],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("ehr-key-kind"), "abe");
    // The node wraps data keys with its CP-ABE wrapped key-encryption key (batched form).
    let wrapped = B64.decode(r.header("ehr-wrapped-key")).unwrap();
    assert!(wrapped.starts_with(ehr::recordkey::BATCHED_MAGIC));
    let wk = ehr::recordkey::Encapsulated::parse(&wrapped).unwrap();
    let cid_bytes = cid.parse::<Cid>().unwrap().to_bytes();
    let mut cap = [0u8; 32];
    hex::decode_to_slice(r.header("ehr-capsule"), &mut cap).unwrap();
    let raw = wk
        .open(researcher.abe.as_ref().unwrap(), &cap, &cid_bytes)
        .unwrap();
    // Not with another record's CID.
    assert!(
        wk.open(researcher.abe.as_ref().unwrap(), &cap, b"other")
            .is_err()
    );
    let got = open_record(&r, &cid, DataKey::from_slice(&raw).unwrap());
    assert_eq!(got, condition());
    let _ = CapsuleId(cap);

    // The outsider is refused (and the attempt is audited).
    let r = send(
        Method::GET,
        net.url(2, &format!("/v1/records/{cid}")),
        Some(&outsider),
        None,
        vec![],
    )
    .await;
    r.problem(403);

    // Grant to the outsider by name; it reads at node 3 with the rewrapped key.
    let hospital = net.who("hospital-0.json");
    let g = send(
        Method::POST,
        net.url(0, "/v1/grants"),
        Some(&hospital),
        Some("application/json"),
        serde_json::to_vec(
            &json!({"cid": cid, "grantee": outsider.id, "expires_in_blocks": 10000}),
        )
        .unwrap(),
    )
    .await;
    assert_eq!(g.status, 201, "{}", String::from_utf8_lossy(&g.body));
    let grant = g.json()["grant"].as_str().unwrap().to_owned();
    net.settle().await;
    let r = send(
        Method::GET,
        net.url(3, &format!("/v1/records/{cid}?purpose=treatment")),
        Some(&outsider),
        None,
        vec![],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("ehr-key-kind"), "grant");
    let raw = ehr::keywrap::unwrap_with(
        &outsider.key,
        &cid_bytes,
        &B64.decode(r.header("ehr-wrapped-key")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        open_record(&r, &cid, DataKey::from_slice(&raw).unwrap()),
        condition()
    );

    // Audited: the ledger holds the reads, with their basis.
    net.settle().await;
    {
        let st = net.dev.nodes[1].ctx().ledger.read();
        let audit = st.audit_for_record(&LedgerCid(cid_bytes.clone()));
        assert!(
            audit.iter().any(
                |a| a.accessor.to_string() == researcher.id && a.basis == Authorisation::Policy
            )
        );
        assert!(
            audit
                .iter()
                .any(|a| a.accessor.to_string() == outsider.id && a.basis == Authorisation::Denied)
        );
        assert!(
            audit.iter().any(|a| a.accessor.to_string() == outsider.id
                && matches!(a.basis, Authorisation::Grant(_)))
        );
    }

    // Revoke: refused again.
    let d = send(
        Method::DELETE,
        net.url(0, &format!("/v1/grants/{grant}")),
        Some(&hospital),
        None,
        vec![],
    )
    .await;
    assert_eq!(d.status, 200, "{}", String::from_utf8_lossy(&d.body));
    net.settle().await;
    let r = send(
        Method::GET,
        net.url(3, &format!("/v1/records/{cid}")),
        Some(&outsider),
        None,
        vec![],
    )
    .await;
    r.problem(403);

    // The record's blocks were replicated to every node.
    let c: Cid = cid.parse().unwrap();
    for _ in 0..200 {
        let mut all = true;
        for n in &net.dev.nodes {
            all &= n.ctx().blockstore.is_pinned(c).await.unwrap();
        }
        if all {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for n in &net.dev.nodes {
        assert!(
            n.ctx().blockstore.is_pinned(c).await.unwrap(),
            "replicated everywhere"
        );
    }

    // Proof of registration verifies with the validator keys only.
    let p = send(
        Method::GET,
        net.url(1, &format!("/v1/records/{cid}/proof")),
        Some(&researcher),
        None,
        vec![],
    )
    .await;
    assert_eq!(p.status, 200);
    let pj = p.json();
    let proof: ehr_ledger::block::InclusionProof =
        postcard::from_bytes(&B64.decode(pj["proof"].as_str().unwrap()).unwrap()).unwrap();
    let tx = B64.decode(pj["tx"].as_str().unwrap()).unwrap();
    let keys = net.dev.nodes[0].ctx().consortium.validator_keys.clone();
    let verifier = ehr_ledger::crypto::Ed25519Verifier::new(&keys);
    proof.verify("ehr-dev", 0, &tx, 4, 3, &verifier).unwrap();

    net.dev.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presealed_upload_is_searchable_and_readable_without_the_node_seeing_plaintext() {
    let net = Net::start().await;
    let researcher = net.who("researcher.json");
    let hospital = net.who("hospital-0.json");
    let ctx = net.dev.nodes[0].ctx().clone();
    let cap = ctx.capsule.id;

    // Client side: seal, compute the CID, wrap the key, derive the keyword key.
    let plaintext = b"%PDF-1.7 a scanned discharge letter".repeat(100);
    let key = DataKey::generate().unwrap();
    let sealed =
        ehr_storage::seal::seal(&key, &SealContext::new(cap.to_vec()), &plaintext).unwrap();
    let cid = ehr_storage::blockstore::Blockstore::only_hash(&sealed[..])
        .await
        .unwrap();
    let aad = ehr::node::upload::record_key_aad(&cap, &cid.to_bytes());
    let wrapped = ehr_search::abe::wrap(
        &ctx.consortium.abe_params,
        &ctx.capsule.policy,
        key.expose_secret(),
        &aad,
        &mut rand::rngs::OsRng,
    )
    .unwrap()
    .to_bytes();
    let kw = Keyword::code("http://loinc.org|18842-5").unwrap();
    let kk = ctx.capsule.epoch_key.keyword_key(&kw).to_bytes();

    let client = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        client
            .post(net.url(0, "/v1/records"))
            .bearer_auth(hospital.token())
            .header("content-type", "application/vnd.ehr.sealed")
            .header("ehr-capsule", hex::encode(cap))
            .header("ehr-wrapped-key", B64.encode(&wrapped))
            .header("ehr-keyword-keys", B64.encode(&kk[..]))
            .body(body)
            .send()
    };
    // Not an envelope: refused.
    let r = post(b"plain text, not sealed".to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = post(sealed.clone()).await.unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["records"][0]["cid"], cid.to_string());
    net.settle().await;

    let opened = net.open_capsules(1, &researcher).await;
    let s = net.search(1, &researcher, &opened, &kw).await;
    assert_eq!(s.json()["hits"][0]["cid"], cid.to_string());
    let r = send(
        Method::GET,
        net.url(2, &format!("/v1/records/{cid}")),
        Some(&researcher),
        None,
        vec![],
    )
    .await;
    assert_eq!(r.status, 200);
    let wk = WrappedKey::from_bytes(&B64.decode(r.header("ehr-wrapped-key")).unwrap()).unwrap();
    let raw = ehr_search::abe::unwrap(researcher.abe.as_ref().unwrap(), &wk, &aad).unwrap();
    let got = ehr_storage::seal::open(
        &DataKey::from_slice(&raw).unwrap(),
        &SealContext::new(cap.to_vec()),
        &r.body,
    )
    .unwrap();
    assert_eq!(&got[..], &plaintext[..]);
    net.dev.shutdown().await;
}
