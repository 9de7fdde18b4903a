//! Fuzz harness (a bounded, seeded property test) for the HTTP API: mutated and random bodies,
//! content types, query strings, path parameters (CIDs, ids, heights), headers, bearer tokens
//! and methods, sent to every route of `ehr::http::routes::ROUTES` of one in-process node
//! (node 0 of an embedded consortium) holding real fixtures (a record, a grant).
//!
//! Seeds: the request bodies in `fuzz/corpus/http/` (`<route>--<name>`, with `{cid}`,
//! `{participant}`, `{trapdoor}` and `{tx}` replaced by live values of the fixture), the sealed
//! envelopes of `fuzz/corpus/storage_envelope/` for pre-sealed uploads, and valid path
//! parameters, query strings and headers of each route.
//!
//! Properties of every answer: no 5xx (but `/readyz`'s documented 503 while the index catches
//! up with the ledger); every error is problem+json (an OperationOutcome on
//! `/fhir`) whose request id is the `x-request-id` header's and whose `detail` is not empty;
//! every 400 names the field or input (`errors[0].field`); a refusal writes nothing (the
//! ledger height, the record count and the pins of the node are unchanged), except a 403 on a
//! record read, which the ledger audits by contract; and the node still answers `/healthz`
//! afterwards. The run is deterministic (seed `EHR_FUZZ_SEED`, default 0); `EHR_FUZZ_CASES=<n>`
//! multiplies the case count.

#[path = "../fuzz/mutate.rs"]
mod mutate;
mod node_support;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ehr::http::routes::ROUTES;
use ehr_ledger::tx::{ParticipantId, TxBody, TxKind};
use ehr_search::sse::{Keyword, Query};
use node_support::{CHAIN, Net, Who};
use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestCaseError, TestRng, TestRunner};
use reqwest::header::HeaderValue;
use serde_json::{Value, json};

/// The corpus target.
const TARGET: &str = "http";
/// Cases of one run (times `EHR_FUZZ_CASES`).
const CASES: u32 = 600;
/// The longest body sent.
const MAX_BODY: usize = 8 * 1024;

/// The routes whose reads are audited on the ledger, allowed or refused.
fn audited(path: &str) -> bool {
    path == "/v1/records/{cid}" || path == "/ipfs/{cid}"
}

/// The live values the seeds refer to.
struct Fixture {
    net: Net,
    rt: tokio::runtime::Runtime,
    hospital: Who,
    researcher: Who,
    cid: String,
    grant: String,
    capsule: String,
    participant: String,
    trapdoor: String,
    tx: String,
    wrapped_key: String,
}

impl Fixture {
    fn start() -> Fixture {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let net = rt.block_on(Net::start());
        let hospital = net.who("hospital-0.json");
        let researcher = net.who("researcher.json");
        let participant = net.who("researcher-1.json").id;
        let (cid, grant, trapdoor, wrapped_key) = rt.block_on(async {
            let up = net
                .upload(
                    0,
                    "application/fhir+json",
                    mutate::corpus(TARGET)
                        .into_iter()
                        .find(|(n, _)| n == "records--condition.json")
                        .expect("the condition seed")
                        .1,
                )
                .await;
            assert_eq!(up.status, 201, "{}", String::from_utf8_lossy(&up.body));
            let cid = up.json()["records"][0]["cid"].as_str().unwrap().to_owned();
            let g = node_support::send(
                reqwest::Method::POST,
                net.url(0, "/v1/grants"),
                Some(&hospital),
                Some("application/json"),
                serde_json::to_vec(
                    &json!({"cid": cid, "grantee": participant, "expires_in_blocks": 100_000}),
                )
                .unwrap(),
            )
            .await;
            assert_eq!(g.status, 201, "{}", String::from_utf8_lossy(&g.body));
            let grant = g.json()["grant"].as_str().unwrap().to_owned();
            net.settle().await;
            let cap = net.dev.nodes[0].ctx().capsule.id;
            let kw = Keyword::code("http://snomed.info/sct|44054006").unwrap();
            let mut trapdoor = String::new();
            for (id, st) in net.open_capsules(0, &researcher).await {
                if id.0 == cap
                    && let Query::Keyword(ts) = Query::keyword(&st, id, &kw)
                {
                    trapdoor = B64.encode(&*ts[0].to_bytes());
                }
            }
            assert!(
                !trapdoor.is_empty(),
                "the researcher opens node 0's capsule"
            );
            let r = node_support::send(
                reqwest::Method::GET,
                net.url(0, &format!("/v1/records/{cid}")),
                Some(&researcher),
                None,
                vec![],
            )
            .await;
            assert_eq!(r.status, 200);
            (cid, grant, trapdoor, r.header("ehr-wrapped-key"))
        });
        let mut id = [0u8; 32];
        hex::decode_to_slice(&hospital.id, &mut id).unwrap();
        let nonce = net.dev.nodes[0]
            .ctx()
            .ledger
            .read()
            .nonce(&ParticipantId(id))
            .unwrap_or(0)
            + 1;
        let tx = TxBody::new(
            CHAIN,
            ParticipantId(id),
            nonce,
            TxKind::RevokeAuthKey { key_hash: [7; 32] },
        )
        .sign(&hospital.key);
        Fixture {
            capsule: hex::encode(net.dev.nodes[0].ctx().capsule.id),
            tx: B64.encode(tx.to_bytes()),
            net,
            rt,
            hospital,
            researcher,
            cid,
            grant,
            participant,
            trapdoor,
            wrapped_key,
        }
    }

    fn fill(&self, s: &str) -> String {
        s.replace("{cid}", &self.cid)
            .replace("{participant}", &self.participant)
            .replace("{trapdoor}", &self.trapdoor)
            .replace("{tx}", &self.tx)
            .replace("{capsule}", &self.capsule)
            .replace("{grant}", &self.grant)
    }

    /// Valid values of a route's path parameter.
    fn param_seeds(&self, path: &str) -> Vec<Vec<u8>> {
        let v: Vec<String> = match path {
            p if p.contains("{cid}") => vec![self.cid.clone()],
            "/v1/grants/{id}" => vec![self.grant.clone()],
            "/v1/capsules/{id}" => vec![self.capsule.clone()],
            "/v1/participants/{id}" => vec![self.participant.clone(), self.hospital.id.clone()],
            "/v1/ledger/blocks/{height}" => {
                vec!["0".into(), "1".into(), "18446744073709551615".into()]
            }
            "/fhir/{type}" => vec!["Condition".into(), "Bundle".into()],
            _ => vec![],
        };
        v.into_iter().map(String::into_bytes).collect()
    }

    /// Valid query strings of a route.
    fn query_seeds(&self, path: &str) -> Vec<Vec<u8>> {
        let v: Vec<String> = match path {
            "/v1/records" => vec![
                format!("policy={}", self.capsule),
                format!("patient={}&policy={}", self.participant, self.capsule),
            ],
            "/v1/records/{cid}" => {
                vec!["purpose=treatment".into(), "purpose=patient-request".into()]
            }
            "/v1/grants" => vec![
                format!("cid={}", self.cid),
                format!("grantee={}", self.participant),
            ],
            "/ipfs/{cid}" => vec!["format=raw".into(), "format=car".into()],
            _ => vec![],
        };
        let mut v: Vec<Vec<u8>> = v.into_iter().map(String::into_bytes).collect();
        v.push(b"x=1".to_vec());
        v
    }

    /// The body seeds of a route (every seed for a route without its own).
    fn body_seeds(&self, method: &str, path: &str) -> Vec<Vec<u8>> {
        let prefix = match (method, path) {
            ("POST", "/v1/records") => "records--",
            ("POST", "/fhir/{type}") | ("POST", "/fhir") => "fhir--",
            ("POST", "/v1/search") => "search--",
            ("POST", "/v1/grants") => "grants--",
            ("POST", "/v1/transactions") => "transactions--",
            _ => "",
        };
        let mut v: Vec<Vec<u8>> = mutate::corpus(TARGET)
            .into_iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, b)| {
                self.fill(&String::from_utf8(b).expect("UTF-8 seeds"))
                    .into_bytes()
            })
            .collect();
        if prefix.is_empty() || prefix == "records--" {
            v.push(b"\x00\x01binary".to_vec());
        }
        if prefix == "records--" {
            // Sealed envelopes (the storage harness's seeds) for pre-sealed uploads.
            v.extend(
                mutate::corpus("storage_envelope")
                    .into_iter()
                    .filter(|(_, b)| b.len() <= MAX_BODY)
                    .map(|(_, b)| b),
            );
        }
        v
    }

    /// (ledger height, records, pins) of node 0.
    fn footprint(&self) -> (u64, usize, usize) {
        let ctx = self.net.dev.nodes[0].ctx().clone();
        let (h, n) = {
            let st = ctx.ledger.read();
            (st.height(), st.records().count())
        };
        let pins = self
            .rt
            .block_on(ctx.blockstore.list_pins())
            .expect("listing pins")
            .len();
        (h, n, pins)
    }
}

/// Who sends a request.
#[derive(Debug, Clone)]
enum Caller {
    Hospital,
    Researcher,
    /// A raw `Authorization` value.
    Raw(Vec<u8>),
}

/// One fuzzed request.
#[derive(Debug, Clone)]
struct Case {
    route: usize,
    method: Option<&'static str>,
    param: Vec<u8>,
    raw_param: bool,
    query: Option<Vec<u8>>,
    ctype: Option<Vec<u8>>,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
    caller: Caller,
}

/// Percent-encodes every byte but the unreserved ones (and, with `keep`, the given ones).
fn encode(bytes: &[u8], keep: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || keep.contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Seeds or mutations of them (or random bytes).
fn from_seeds(seeds: Vec<Vec<u8>>, max_len: usize) -> BoxedStrategy<Vec<u8>> {
    if seeds.is_empty() {
        return Just(Vec::new()).boxed();
    }
    let seeds = Arc::new(seeds);
    prop_oneof![
        2 => proptest::sample::select((*seeds).clone()),
        5 => mutate::mutated(seeds.clone(), 3, max_len),
        1 => mutate::raw(seeds, max_len.min(512)),
    ]
    .boxed()
}

const CTYPES: &[&str] = &[
    "application/fhir+json",
    "application/json",
    "application/fhir+ndjson",
    "application/vnd.ehr.sealed",
    "application/octet-stream",
    "application/fhir+json; charset=utf-8",
    "text/json",
    "multipart/form-data; boundary=x",
];

fn case(fx: &Fixture) -> impl Strategy<Value = Case> + use<> {
    let per_route: Vec<BoxedStrategy<Case>> = ROUTES
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let ctype = prop_oneof![
                1 => Just(None),
                6 => proptest::sample::select(CTYPES).prop_map(|c| Some(c.as_bytes().to_vec())),
                1 => from_seeds(CTYPES.iter().map(|c| c.as_bytes().to_vec()).collect(), 80).prop_map(Some),
            ];
            let header_seeds: Vec<(&'static str, Vec<Vec<u8>>)> = vec![
                ("accept", vec![b"application/vnd.ipld.raw".to_vec(), b"application/vnd.ipld.car".to_vec(), b"*/*".to_vec()]),
                ("ehr-capsule", vec![fx.capsule.clone().into_bytes()]),
                ("ehr-wrapped-key", vec![fx.wrapped_key.clone().into_bytes()]),
                ("ehr-keyword-keys", vec![B64.encode([9u8; 32]).into_bytes(), format!("{},{}", B64.encode([1u8; 32]), B64.encode([2u8; 32])).into_bytes()]),
                ("x-request-id", vec![b"fuzz-request-1".to_vec()]),
            ];
            let headers = proptest::collection::vec(
                proptest::sample::select(header_seeds).prop_flat_map(|(name, seeds)| {
                    (Just(name), from_seeds(seeds, 256))
                }),
                0..3,
            );
            let caller = prop_oneof![
                8 => Just(Caller::Hospital),
                1 => Just(Caller::Researcher),
                1 => from_seeds(vec![b"Bearer not.a.jwt".to_vec(), b"Basic dXNlcjpwdw".to_vec()], 200).prop_map(Caller::Raw),
            ];
            let method = prop_oneof![
                19 => Just(None),
                1 => proptest::sample::select(&["GET", "POST", "PUT", "DELETE", "PATCH"][..]).prop_map(Some),
            ];
            (
                method,
                from_seeds(fx.param_seeds(r.path), 128),
                proptest::bool::weighted(0.1),
                proptest::option::weighted(0.7, from_seeds(fx.query_seeds(r.path), 256)),
                ctype,
                headers,
                from_seeds(fx.body_seeds(r.method, r.path), MAX_BODY),
                caller,
            )
                .prop_map(move |(method, param, raw_param, query, ctype, headers, body, caller)| Case {
                    route: i,
                    method,
                    param,
                    raw_param,
                    query,
                    ctype,
                    headers,
                    body,
                    caller,
                })
                .boxed()
        })
        .collect();
    proptest::strategy::Union::new(per_route)
}

/// The request's path (and query) string.
fn target(c: &Case) -> String {
    let r = &ROUTES[c.route];
    let param = if c.raw_param {
        // Raw: slashes and dots reach the router as they are.
        encode(&c.param, b"/")
    } else {
        encode(&c.param, b"")
    };
    let mut path = String::new();
    for seg in r.path.split('/').skip(1) {
        path.push('/');
        if seg.starts_with('{') {
            path.push_str(&param);
        } else {
            path.push_str(seg);
        }
    }
    if let Some(q) = &c.query {
        path.push('?');
        path.push_str(&encode(q, b"=&%+"));
    }
    path
}

/// The answer of one case.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

fn send(fx: &Fixture, c: &Case) -> Answer {
    let r = &ROUTES[c.route];
    let method: reqwest::Method = c.method.unwrap_or(r.method).parse().unwrap();
    let url = fx.net.url(0, &target(c));
    let auth = match &c.caller {
        Caller::Hospital => Some(format!("Bearer {}", fx.hospital.token()).into_bytes()),
        Caller::Researcher => Some(format!("Bearer {}", fx.researcher.token()).into_bytes()),
        Caller::Raw(v) => Some(v.clone()),
    };
    fx.rt.block_on(async {
        let client = reqwest::Client::new();
        let mut rb = client.request(method, &url).body(c.body.clone());
        if let Some(a) = auth.and_then(|a| HeaderValue::from_bytes(&a).ok()) {
            rb = rb.header("authorization", a);
        }
        if let Some(t) = c
            .ctype
            .as_ref()
            .and_then(|t| HeaderValue::from_bytes(t).ok())
        {
            rb = rb.header("content-type", t);
        }
        for (name, v) in &c.headers {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                rb = rb.header(*name, v);
            }
        }
        let resp = tokio::time::timeout(std::time::Duration::from_secs(60), rb.send())
            .await
            .expect("the node answers within a minute")
            .expect("the node answers");
        Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.bytes().await.expect("body").to_vec(),
        }
    })
}

/// Checks one answer; `Err` names what is wrong.
fn check(
    c: &Case,
    a: &Answer,
    before: (u64, usize, usize),
    after: (u64, usize, usize),
) -> Result<(), String> {
    let r = &ROUTES[c.route];
    let body = String::from_utf8_lossy(&a.body);
    let what = format!(
        "{} {} -> {}",
        c.method.unwrap_or(r.method),
        target(c),
        a.status
    );
    // The one documented 5xx: readiness while the index catches up with the ledger (for
    // example right after an upload).
    let not_ready = r.path == "/readyz"
        && a.status == 503
        && c.method.is_none_or(|m| m == r.method)
        && body.contains("not ready");
    if a.status >= 500 && !not_ready {
        return Err(format!("{what}: a server error: {body}"));
    }
    let rid = a
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if rid.is_empty() {
        return Err(format!("{what}: no request id"));
    }
    if a.status >= 400 {
        let ctype = a
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let v: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
        let problem = ctype == "application/problem+json"
            && v["status"] == a.status
            && v["request_id"] == rid
            && v["detail"].as_str().is_some_and(|d| !d.is_empty())
            && (a.status != 400
                || v["errors"][0]["field"]
                    .as_str()
                    .is_some_and(|f| !f.is_empty()));
        let outcome = target(c).starts_with("/fhir")
            && ctype == "application/fhir+json"
            && v["resourceType"] == "OperationOutcome"
            && v["id"] == rid
            && v["issue"][0]["diagnostics"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
            && (a.status != 400
                || v["issue"][0]["expression"][0]
                    .as_str()
                    .is_some_and(|f| !f.is_empty()));
        if !problem && !outcome {
            return Err(format!(
                "{what}: not a problem (or OperationOutcome) with the request id, a detail and, for a 400, the field ({ctype}): {body}"
            ));
        }
        let audited_refusal =
            a.status == 403 && audited(r.path) && c.method.is_none_or(|m| m == r.method);
        if !audited_refusal && before != after {
            return Err(format!(
                "{what}: a refusal changed the node (height, records, pins) {before:?} -> {after:?}: {body}"
            ));
        }
    }
    Ok(())
}

/// A case of route `path` with everything else plain.
fn plain(path: &str, param: &[u8], query: Option<&[u8]>, method: Option<&'static str>) -> Case {
    Case {
        route: ROUTES
            .iter()
            .position(|r| r.path == path)
            .expect("a route of the table"),
        method,
        param: param.to_vec(),
        raw_param: false,
        query: query.map(<[u8]>::to_vec),
        ctype: None,
        headers: vec![],
        body: vec![],
        caller: Caller::Researcher,
    }
}

/// Inputs that got the framework's plain-text (or empty) answer before this harness: each is
/// now a problem that names the input, and changes nothing.
fn directed(fx: &Fixture) {
    let run = |c: Case| {
        let before = fx.footprint();
        let a = send(fx, &c);
        let after = fx.footprint();
        check(&c, &a, before, after).unwrap_or_else(|e| panic!("{e}"));
        let v: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
        (a, v)
    };
    // A path parameter that is not UTF-8 once percent-decoded.
    let (a, v) = run(plain("/v1/records/{cid}/meta", b"\xff\xfe", None, None));
    assert_eq!(a.status, 400, "{v}");
    assert_eq!(v["errors"][0]["field"], "cid");
    assert!(v["detail"].as_str().unwrap().contains("cid"), "{v}");
    // An unknown query parameter, and a malformed one.
    let (a, v) = run(plain(
        "/v1/grants",
        b"",
        Some(b"cid=x&bogus=1"),
        Some("GET"),
    ));
    assert_eq!(a.status, 400);
    assert_eq!(v["errors"][0]["field"], "query");
    assert!(v["detail"].as_str().unwrap().contains("bogus"), "{v}");
    let (a, v) = run(plain(
        "/v1/records/{cid}",
        fx.cid.as_bytes(),
        Some(b"purpose=%FF"),
        None,
    ));
    assert_eq!(
        (a.status, v["errors"][0]["field"].as_str()),
        (400, Some("purpose")),
        "{v}"
    );
    // A method the route does not take.
    let (a, v) = run(plain("/v1/records", b"", None, Some("PUT")));
    assert_eq!(a.status, 405);
    assert!(v["detail"].as_str().unwrap().contains("POST"), "{v}");
    assert_eq!(a.headers.get("allow").unwrap(), "POST");
    let (a, _) = run(plain("/fhir", b"", None, Some("DELETE")));
    assert_eq!(a.status, 405);
    // An encoded slash stays inside its parameter.
    let (a, v) = run(plain("/v1/capsules/{id}", b"x/y", None, None));
    assert_eq!(
        (a.status, v["errors"][0]["field"].as_str()),
        (400, Some("id")),
        "{v}"
    );
    // An unknown route names the path.
    let r = fx.rt.block_on(node_support::send(
        reqwest::Method::GET,
        fx.net.url(0, "/v2/nothing"),
        None,
        None,
        vec![],
    ));
    let v = r.problem(404);
    assert!(v["detail"].as_str().unwrap().contains("/v2/nothing"), "{v}");
}

fn seed() -> [u8; 32] {
    let n: u64 = std::env::var("EHR_FUZZ_SEED")
        .ok()
        .map(|s| s.trim().parse().expect("EHR_FUZZ_SEED must be a number"))
        .unwrap_or(0);
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&n.to_le_bytes());
    s
}

#[test]
fn http_inputs_never_fail_the_server_and_refusals_write_nothing() {
    let fx = Fixture::start();
    let mut config = mutate::config(CASES);
    config.max_shrink_iters = 200;
    config.source_file = Some(file!());
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed()));
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    let stats = std::cell::RefCell::new(&mut statuses);
    let result = runner.run(&case(&fx), |c| {
        let before = fx.footprint();
        let a = send(&fx, &c);
        let after = fx.footprint();
        *stats.borrow_mut().entry(a.status).or_default() += 1;
        check(&c, &a, before, after).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The node still answers.
    let h = fx.rt.block_on(node_support::send(
        reqwest::Method::GET,
        fx.net.url(0, "/healthz"),
        None,
        None,
        vec![],
    ));
    assert_eq!(h.status, 200);
    directed(&fx);
    // The cases reached deep: accepted requests, field errors and authorisation refusals.
    eprintln!("statuses: {statuses:?}");
    for s in [200, 400, 403] {
        assert!(
            statuses.contains_key(&s),
            "no {s} in {statuses:?}: the cases stay shallow"
        );
    }
    let Fixture { net, rt, .. } = fx;
    rt.block_on(net.dev.shutdown());
}
