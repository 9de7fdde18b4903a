//! The security matrix: for every route of `ehr::http::routes::ROUTES` and every kind of
//! caller, the expected HTTP status, as data. One in-process consortium serves the whole
//! matrix with real fixtures (an uploaded record, a live grant, a revoked grant); every
//! request is real HTTP to node 0 (the record owner's), and the record reads are repeated at
//! node 2, which must decide the same from its own copy of the ledger.
//!
//! Checked for every cell: the status (so 401 "who are you" and 403 "not you" are told apart);
//! every 4xx/5xx body is problem+json (an OperationOutcome on `/fhir`) carrying the request id
//! of the `x-request-id` header; 401s carry `WWW-Authenticate: Bearer` and never echo the
//! token; searches show a record only to callers that may read it; every authenticated read of
//! a record (`/v1/records/{cid}`, `/ipfs/{cid}`), allowed or refused, is on the ledger's audit
//! log with the right basis.
//!
//! The table must name exactly the routes of `ROUTES`: a new route without a row, or a row
//! whose route is gone, fails [`matrix_names_exactly_the_routes`].

mod node_support;

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::SigningKey;
use ehr::http::routes::{Access, ROUTES};
use ehr_ledger::state::Authorisation;
use ehr_ledger::tx::{Cid as LedgerCid, ParticipantId, Role as LedgerRole, TxBody, TxKind};
use ehr_search::sse::{Keyword, Query};
use ehr_storage::blockstore::Cid;
use futures::StreamExt as _;
use node_support::{CHAIN, Net, Resp, Who, now};
use reqwest::Method;
use serde_json::{Value, json};

/// Every kind of caller the matrix covers, in the column order of [`MATRIX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Caller {
    /// No `Authorization` header.
    Anonymous,
    /// A token of a registered participant whose `exp` has passed.
    Expired,
    /// A well-formed token signed by a key no participant registered.
    WrongKey,
    /// A bearer value that is not a JWT.
    Malformed,
    /// A valid token already used once at this node (same `jti`).
    Replayed,
    /// Node 0's hospital, the record's owner.
    Hospital,
    /// Another hospital of the consortium.
    OtherHospital,
    /// A researcher without the attributes of the record's policy.
    ResearcherWithout,
    /// A researcher with them.
    ResearcherWith,
    /// A clinician whose grant on the record was revoked.
    RevokedGrantee,
    /// A clinician holding a live grant on the record.
    LiveGrantee,
}

const CALLERS: [Caller; 11] = [
    Caller::Anonymous,
    Caller::Expired,
    Caller::WrongKey,
    Caller::Malformed,
    Caller::Replayed,
    Caller::Hospital,
    Caller::OtherHospital,
    Caller::ResearcherWithout,
    Caller::ResearcherWith,
    Caller::RevokedGrantee,
    Caller::LiveGrantee,
];

impl Caller {
    /// Whether the caller presents no valid token.
    fn unauthenticated(self) -> bool {
        self <= Caller::Replayed
    }

    /// Whether the ledger lets the caller read the fixture record.
    fn may_read(self) -> bool {
        matches!(
            self,
            Caller::Hospital | Caller::ResearcherWith | Caller::LiveGrantee
        )
    }
}

/// The expected status of every route for every caller (columns in [`CALLERS`] order):
/// anonymous, expired, wrong key, malformed, replayed, hospital, other hospital, researcher
/// without attributes, researcher with them, revoked grantee, live grantee.
#[rustfmt::skip]
const MATRIX: &[(&str, &str, [u16; 11])] = &[
    //                                        anon exp  wkey malf repl hosp othH rNo  rYes revk live
    ("GET",    "/healthz",                   [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("GET",    "/readyz",                    [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("GET",    "/metrics",                   [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("GET",    "/openapi.json",              [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("POST",   "/v1/records",                [401, 401, 401, 401, 401, 201, 403, 403, 403, 403, 403]),
    ("GET",    "/v1/records/{cid}",          [401, 401, 401, 401, 401, 200, 403, 403, 200, 403, 200]),
    ("GET",    "/v1/records/{cid}/meta",     [401, 401, 401, 401, 401, 200, 200, 200, 200, 200, 200]),
    ("GET",    "/v1/records/{cid}/proof",    [401, 401, 401, 401, 401, 200, 200, 200, 200, 200, 200]),
    ("POST",   "/v1/search",                 [401, 401, 401, 401, 401, 200, 200, 200, 200, 200, 200]),
    ("POST",   "/v1/grants",                 [401, 401, 401, 401, 401, 201, 403, 403, 403, 403, 403]),
    ("GET",    "/v1/grants",                 [401, 401, 401, 401, 401, 200, 200, 200, 200, 200, 200]),
    ("DELETE", "/v1/grants/{id}",            [401, 401, 401, 401, 401, 200, 403, 403, 403, 403, 403]),
    ("POST",   "/v1/transactions",           [401, 401, 401, 401, 401, 422, 422, 422, 422, 422, 422]),
    ("GET",    "/v1/abe/params",             [401, 401, 401, 401, 401, 200, 200, 200, 200, 200, 200]),
    ("POST",   "/v1/abe/partial-key",        [401, 401, 401, 401, 401, 403, 403, 200, 200, 403, 403]),
    ("GET",    "/v1/capsules",               [401, 401, 401, 401, 401, 200, 200, 200, 200, 200, 200]),
    ("GET",    "/v1/capsules/{id}",          [401, 401, 401, 401, 401, 200, 200, 200, 200, 200, 200]),
    ("GET",    "/v1/participants/{id}",      [401, 401, 401, 401, 401, 200, 200, 200, 200, 200, 200]),
    ("GET",    "/v1/ledger/head",            [401, 401, 401, 401, 401, 200, 200, 200, 200, 200, 200]),
    ("GET",    "/v1/ledger/blocks/{height}", [401, 401, 401, 401, 401, 200, 200, 200, 200, 200, 200]),
    ("POST",   "/fhir/{type}",               [401, 401, 401, 401, 401, 201, 403, 403, 403, 403, 403]),
    ("POST",   "/fhir",                      [401, 401, 401, 401, 401, 200, 403, 403, 403, 403, 403]),
    ("GET",    "/fhir/metadata",             [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("GET",    "/ipfs/{cid}",                [401, 401, 401, 401, 401, 200, 403, 403, 200, 403, 200]),
];

/// Checks that the table names every route of `ROUTES` exactly once and nothing else, and
/// that its unauthenticated columns agree with each route's `Access`. Returns the problems.
fn matrix_problems() -> Vec<String> {
    let mut out = Vec::new();
    for r in ROUTES {
        let n = MATRIX
            .iter()
            .filter(|(m, p, _)| *m == r.method && *p == r.path)
            .count();
        if n == 0 {
            out.push(format!(
                "route {} {} has no row in the security matrix",
                r.method, r.path
            ));
        } else if n > 1 {
            out.push(format!(
                "route {} {} has {n} rows in the security matrix",
                r.method, r.path
            ));
        }
    }
    for (m, p, row) in MATRIX {
        let Some(r) = ROUTES.iter().find(|r| r.method == *m && r.path == *p) else {
            out.push(format!(
                "the security matrix has a row for {m} {p}, which is not a route any more"
            ));
            continue;
        };
        for (c, want) in CALLERS.iter().zip(row) {
            if c.unauthenticated() {
                let expect = if r.access.needs_token() { 401 } else { 200 };
                if *want != expect {
                    out.push(format!(
                        "{m} {p} is {:?} but its {c:?} cell is {want}, not {expect}",
                        r.access
                    ));
                }
            } else if r.access == Access::Hospital && *c != Caller::Hospital && *want != 403 {
                out.push(format!(
                    "{m} {p} is for the hospital only but {c:?} expects {want}"
                ));
            }
        }
    }
    out
}

#[test]
fn matrix_names_exactly_the_routes() {
    let problems = matrix_problems();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A test-side participant: a key and its id.
struct Key {
    key: SigningKey,
    id: String,
}

impl Key {
    fn of(w: &Who) -> Key {
        Key {
            key: w.key.clone(),
            id: w.id.clone(),
        }
    }
}

/// The consortium and its fixtures.
struct Fixture {
    net: Net,
    client: reqwest::Client,
    keys: BTreeMap<Caller, Key>,
    /// A researcher whose tokens stand in for the unauthenticated callers' identity.
    researcher: Key,
    /// The record every record route reads.
    cid: String,
    /// A grant the matrix revokes (to hospital 2, so no caller's access changes).
    spare_grant: String,
    /// The hospital's default capsule.
    capsule: String,
    /// The height of the record's registering block.
    height: u64,
    /// Trapdoors for the record's keyword.
    trapdoors: Vec<String>,
    /// Hospital 3: the grantee of the matrix's `POST /v1/grants`.
    other_grantee: String,
}

const SNOMED_DIABETES: &str = "http://snomed.info/sct|44054006";

fn condition() -> Value {
    json!({
        "resourceType": "Condition",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
        "subject": {"reference": "Patient/p1"}
    })
}

fn bundle() -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": condition()}]})
}

/// One request of the matrix.
struct Req {
    /// The node it is sent to.
    node: usize,
    method: Method,
    path: String,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

impl Fixture {
    async fn send(&self, req: &Req, auth: Option<String>) -> Resp {
        let method = req.method.clone();
        let mut rb = self
            .client
            .request(method, self.net.url(req.node, &req.path))
            .body(req.body.clone());
        for (k, v) in &req.headers {
            rb = rb.header(*k, v);
        }
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        let r = rb.send().await.expect("request");
        Resp {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.bytes().await.expect("body").to_vec(),
        }
    }

    /// A fresh token of `key`.
    fn token(key: &Key) -> String {
        ehr::auth::mint_eddsa(&key.key, CHAIN, now(), 120)
    }

    /// The `Authorization` value of `caller`; `None` for no header. A replayed token is
    /// used once first at `node` (each node has its own replay cache).
    async fn auth(&self, caller: Caller, node: usize) -> Option<String> {
        let bearer = |t: String| Some(format!("Bearer {t}"));
        match caller {
            Caller::Anonymous => None,
            Caller::Expired => bearer(ehr::auth::mint_eddsa(
                &self.researcher.key,
                CHAIN,
                now() - 1000,
                120,
            )),
            Caller::WrongKey => bearer(ehr::auth::mint_eddsa(
                &SigningKey::generate(&mut rand::rngs::OsRng),
                CHAIN,
                now(),
                120,
            )),
            Caller::Malformed => Some("Bearer not.a.jwt".into()),
            Caller::Replayed => {
                let t = Self::token(&self.researcher);
                let first = self
                    .send(
                        &Req {
                            node,
                            method: Method::GET,
                            path: "/v1/ledger/head".into(),
                            body: vec![],
                            headers: vec![],
                        },
                        bearer(t.clone()),
                    )
                    .await;
                assert_eq!(first.status, 200, "the token's first use is accepted");
                bearer(t)
            }
            c => bearer(Self::token(&self.keys[&c])),
        }
    }

    /// The participant whose key signs `caller`'s transactions (the researcher's for callers
    /// without a valid token: they are refused before the body is read).
    fn signer(&self, caller: Caller) -> &Key {
        self.keys.get(&caller).unwrap_or(&self.researcher)
    }

    /// The concrete request of a route for `caller`.
    fn request(&self, method: &str, template: &str, caller: Caller) -> Req {
        let path = template
            .replace("{cid}", &self.cid)
            .replace(
                "{id}",
                &match template {
                    "/v1/grants/{id}" => self.spare_grant.clone(),
                    "/v1/capsules/{id}" => self.capsule.clone(),
                    _ => self.researcher.id.clone(),
                },
            )
            .replace("{height}", &self.height.to_string())
            .replace("{type}", "Condition");
        let json_body = |v: Value| serde_json::to_vec(&v).unwrap();
        let ctype = |c: &str| vec![("content-type", c.to_owned())];
        let (path, body, headers) = match (method, template) {
            ("POST", "/v1/records") | ("POST", "/fhir/{type}") => {
                (path, json_body(condition()), ctype("application/fhir+json"))
            }
            ("POST", "/fhir") => (path, json_body(bundle()), ctype("application/fhir+json")),
            ("POST", "/v1/search") => (
                path,
                json_body(json!({"query": {"keyword": self.trapdoors}, "limit": 1000})),
                ctype("application/json"),
            ),
            ("POST", "/v1/grants") => (
                path,
                json_body(
                    json!({"cid": self.cid, "grantee": self.other_grantee, "expires_in_blocks": 1000}),
                ),
                ctype("application/json"),
            ),
            ("GET", "/v1/grants") => (format!("{path}?cid={}", self.cid), vec![], vec![]),
            ("POST", "/v1/transactions") => {
                // A harmless transaction of the caller's own: removing an authentication key
                // it never registered (authenticated and the caller's, so it reaches the
                // ledger's check, which refuses it: 422 naming the field).
                let s = self.signer(caller);
                let id = participant(&s.id);
                let nonce = self.net.dev.nodes[0]
                    .ctx()
                    .ledger
                    .read()
                    .nonce(&id)
                    .unwrap_or(0)
                    + 1;
                let tx = TxBody::new(
                    CHAIN,
                    id,
                    nonce,
                    TxKind::RevokeAuthKey { key_hash: [7; 32] },
                )
                .sign(&s.key);
                (
                    path,
                    json_body(json!({"tx": B64.encode(tx.to_bytes())})),
                    ctype("application/json"),
                )
            }
            ("GET", "/ipfs/{cid}") => (
                path,
                vec![],
                vec![("accept", "application/vnd.ipld.raw".to_owned())],
            ),
            _ => (path, vec![], vec![]),
        };
        Req {
            node: 0,
            method: method.parse().expect("a route's method parses"),
            path,
            body,
            headers,
        }
    }
}

/// Whether the ledger audits a route's reads, allowed or refused.
fn audited(path: &str) -> bool {
    path == "/v1/records/{cid}" || path == "/ipfs/{cid}"
}

fn participant(hex_id: &str) -> ParticipantId {
    let mut id = [0u8; 32];
    hex::decode_to_slice(hex_id, &mut id).expect("a participant id is 64 hex digits");
    ParticipantId(id)
}

/// Sends a JSON request with a fresh token of `who` and asserts its status.
async fn call(f: &Fixture, who: &Key, method: Method, path: &str, body: Value, want: u16) -> Value {
    let r = f
        .send(
            &Req {
                node: 0,
                method,
                path: path.into(),
                body: if body.is_null() {
                    vec![]
                } else {
                    serde_json::to_vec(&body).unwrap()
                },
                headers: vec![("content-type", "application/json".into())],
            },
            Some(format!("Bearer {}", Fixture::token(who))),
        )
        .await;
    assert_eq!(
        r.status,
        want,
        "{path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

/// Registers a clinician (as the attribute authority) and returns its key.
async fn register_clinician(f: &Fixture, authority: &Key, label: &str) -> Key {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let pk = key.verifying_key().to_bytes();
    let auth_id = participant(&authority.id);
    let nonce = f.net.dev.nodes[0]
        .ctx()
        .ledger
        .read()
        .nonce(&auth_id)
        .unwrap_or(0)
        + 1;
    let tx = TxBody::new(
        CHAIN,
        auth_id,
        nonce,
        TxKind::RegisterParticipant {
            key: pk,
            role: LedgerRole::Researcher,
            label: label.into(),
        },
    )
    .sign(&authority.key);
    let v = call(
        f,
        authority,
        Method::POST,
        "/v1/transactions",
        json!({"tx": B64.encode(tx.to_bytes())}),
        200,
    )
    .await;
    assert_eq!(v["outcome"], "applied", "{v}");
    Key {
        id: hex::encode(pk),
        key,
    }
}

async fn fixture() -> Fixture {
    let net = Net::start().await;
    let hospital = Key::of(&net.who("hospital-0.json"));
    let researcher = Key::of(&net.who("researcher.json"));
    let mut f = Fixture {
        client: reqwest::Client::new(),
        keys: BTreeMap::new(),
        researcher: Key::of(&net.who("researcher.json")),
        cid: String::new(),
        spare_grant: String::new(),
        capsule: hex::encode(net.dev.nodes[0].ctx().capsule.id),
        height: 0,
        trapdoors: Vec::new(),
        other_grantee: net.who("hospital-3.json").id,
        net,
    };
    let authority = Key::of(&f.net.who("authority.json"));
    let revoked = register_clinician(&f, &authority, "clinician-revoked").await;
    let live = register_clinician(&f, &authority, "clinician-live").await;

    // The record.
    let up = f
        .net
        .upload(
            0,
            "application/fhir+json",
            serde_json::to_vec(&condition()).unwrap(),
        )
        .await;
    assert_eq!(up.status, 201, "{}", String::from_utf8_lossy(&up.body));
    let rec = up.json()["records"][0].clone();
    f.cid = rec["cid"].as_str().unwrap().to_owned();
    f.height = rec["height"].as_u64().unwrap();

    // Grants: live, revoked, and a spare one (to hospital 2) for the matrix to revoke.
    let grant = |grantee: String| {
        let f = &f;
        let hospital = &hospital;
        async move {
            call(
                f,
                hospital,
                Method::POST,
                "/v1/grants",
                json!({"cid": f.cid, "grantee": grantee, "expires_in_blocks": 10_000}),
                201,
            )
            .await["grant"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let _live_grant = grant(live.id.clone()).await;
    let revoked_grant = grant(revoked.id.clone()).await;
    let spare = grant(f.net.who("hospital-2.json").id).await;
    call(
        &f,
        &hospital,
        Method::DELETE,
        &format!("/v1/grants/{revoked_grant}"),
        Value::Null,
        200,
    )
    .await;
    f.spare_grant = spare;

    // Trapdoors for the record's keyword, as a reader of the capsule would make them (handed
    // to every caller: the search must filter by authorisation, not by trapdoor possession).
    let kw = Keyword::code(SNOMED_DIABETES).unwrap();
    let cap = f.net.dev.nodes[0].ctx().capsule.id;
    for (id, st) in f.net.open_capsules(0, &f.net.who("researcher.json")).await {
        if id.0 == cap
            && let Query::Keyword(ts) = Query::keyword(&st, id, &kw)
        {
            f.trapdoors = ts.iter().map(|t| B64.encode(&*t.to_bytes())).collect();
        }
    }
    assert!(!f.trapdoors.is_empty());

    f.keys.insert(Caller::Hospital, hospital);
    f.keys.insert(
        Caller::OtherHospital,
        Key::of(&f.net.who("hospital-1.json")),
    );
    f.keys.insert(
        Caller::ResearcherWithout,
        Key::of(&f.net.who("researcher-1.json")),
    );
    f.keys.insert(Caller::ResearcherWith, researcher);
    f.keys.insert(Caller::RevokedGrantee, revoked);
    f.keys.insert(Caller::LiveGrantee, live);
    f.net.settle().await;
    f
}

/// Checks one answer against its cell; returns the failures (empty when it is right).
fn check_cell(
    f: &Fixture,
    node: usize,
    method: &str,
    template: &str,
    caller: Caller,
    want: u16,
    r: &Resp,
) -> Vec<String> {
    let mut out = Vec::new();
    let cell = format!("{method} {template} as {caller:?} at node {node}");
    let body = String::from_utf8_lossy(&r.body);
    if r.status != want {
        out.push(format!(
            "{cell}: status {} instead of {want}: {body}",
            r.status
        ));
        return out;
    }
    let rid = r
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if rid.is_empty() {
        out.push(format!("{cell}: no x-request-id header"));
    }
    if r.status >= 400 {
        let ctype = r
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if template.starts_with("/fhir") {
            if ctype != "application/fhir+json"
                || v["resourceType"] != "OperationOutcome"
                || v["id"] != rid.as_str()
                || v["issue"][0]["diagnostics"]
                    .as_str()
                    .is_none_or(str::is_empty)
            {
                out.push(format!(
                    "{cell}: not an OperationOutcome with the request id ({ctype}): {body}"
                ));
            }
        } else if ctype != "application/problem+json"
            || v["status"] != r.status
            || v["request_id"] != rid.as_str()
            || v["detail"].as_str().is_none_or(str::is_empty)
        {
            out.push(format!(
                "{cell}: not problem+json with the request id ({ctype}): {body}"
            ));
        }
    }
    if r.status >= 300 {
        // A refusal releases nothing of the record: no key, no capsule, no audit receipt.
        for h in [
            "ehr-wrapped-key",
            "ehr-capsule",
            "ehr-key-kind",
            "ehr-audit-tx",
        ] {
            if r.headers.contains_key(h) {
                out.push(format!("{cell}: a refusal carries the {h} header"));
            }
        }
    }
    if r.status == 401 {
        let www = r
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !www.starts_with("Bearer") {
            out.push(format!(
                "{cell}: a 401 without `WWW-Authenticate: Bearer` ({www:?})"
            ));
        }
        if body.contains("eyJ") || body.contains("not.a.jwt") {
            out.push(format!("{cell}: the 401 echoes the token: {body}"));
        }
    }
    if r.status < 300 {
        match (method, template) {
            ("POST", "/v1/search") => {
                let v = r.json();
                let found = v["hits"]
                    .as_array()
                    .is_some_and(|h| h.iter().any(|h| h["cid"] == f.cid.as_str()));
                if found != caller.may_read() {
                    out.push(format!(
                        "{cell}: the record is {}in the hits, but the caller {} read it: {body}",
                        if found { "" } else { "not " },
                        if caller.may_read() { "may" } else { "may not" }
                    ));
                }
            }
            ("GET", "/v1/records/{cid}") => {
                if r.headers.get("ehr-audit-tx").is_none() {
                    out.push(format!("{cell}: a release without its audit transaction"));
                }
                let kind = r.headers.get("ehr-key-kind").and_then(|v| v.to_str().ok());
                let expect = if caller == Caller::LiveGrantee {
                    "grant"
                } else {
                    "abe"
                };
                if kind != Some(expect) {
                    out.push(format!("{cell}: key kind {kind:?} instead of {expect}"));
                }
            }
            _ => {}
        }
    }
    if template == "/v1/transactions" && r.status == 422 && !body.contains("unknown-auth-key") {
        // Authenticated, the sender is the caller: the ledger's own check refuses it.
        out.push(format!(
            "{cell}: refused for another reason than the ledger's: {body}"
        ));
    }
    out
}

/// Every authenticated read of the record, allowed or not, is on the audit log with its
/// basis; unauthenticated ones never reach the ledger.
fn audit_problems(
    f: &Fixture,
    ledger_cid: &LedgerCid,
    audit_before: usize,
    reads: usize,
) -> Vec<String> {
    let mut failures = Vec::new();
    let st = f.net.dev.nodes[0].ctx().ledger.read();
    let audit = st.audit_for_record(ledger_cid);
    let authenticated = CALLERS.iter().filter(|c| !c.unauthenticated()).count();
    if audit.len() != audit_before + reads * authenticated {
        failures.push(format!(
            "the audit log of the record grew by {} entries, not {}",
            audit.len().saturating_sub(audit_before),
            reads * authenticated
        ));
    }
    for c in CALLERS.iter().filter(|c| !c.unauthenticated()) {
        let id = participant(&f.keys[c].id);
        let mine: Vec<_> = audit
            .get(audit_before..)
            .unwrap_or(&[])
            .iter()
            .filter(|a| a.accessor == id)
            .collect();
        let bases_ok = mine.iter().all(|a| match a.basis {
            Authorisation::Denied => !c.may_read(),
            _ => c.may_read(),
        });
        if mine.len() != reads || !bases_ok {
            failures.push(format!(
                "{c:?}: {} audit entries (want {reads}) whose bases agree with the ledger: {bases_ok}",
                mine.len()
            ));
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_for_every_caller() {
    let problems = matrix_problems();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let f = Arc::new(fixture().await);
    let ledger_cid = LedgerCid(f.cid.parse::<Cid>().unwrap().to_bytes());
    let audit_before = f.net.dev.nodes[0]
        .ctx()
        .ledger
        .read()
        .audit_for_record(&ledger_cid)
        .len();

    // Every cell at node 0 (the record owner's); the record reads again at node 2, which
    // must decide the same from its own copy of the ledger. Transactions carry the sender's
    // next nonce: those cells run one at a time after the rest (which run concurrently).
    let cells: Vec<(&str, &str, Caller, u16, usize)> = MATRIX
        .iter()
        .flat_map(|(m, p, row)| {
            let access = ROUTES
                .iter()
                .find(|r| r.method == *m && r.path == *p)
                .map(|r| r.access);
            let nodes: &[usize] = if access == Some(Access::Authorised) {
                &[0, 2]
            } else {
                &[0]
            };
            nodes.iter().flat_map(move |n| {
                CALLERS
                    .iter()
                    .zip(row)
                    .map(move |(c, w)| (*m, *p, *c, *w, *n))
            })
        })
        .collect();
    let reads = cells
        .iter()
        .filter(|(_, p, c, _, _)| audited(p) && *c == Caller::Hospital)
        .count();
    let (serial, parallel): (Vec<_>, Vec<_>) = cells.iter().partition(|(m, p, c, _, _)| {
        *m == "POST" && *p == "/v1/transactions" && !c.unauthenticated()
    });
    let run = |(m, p, c, w, n): (&'static str, &'static str, Caller, u16, usize)| {
        let f = f.clone();
        async move {
            let mut req = f.request(m, p, c);
            req.node = n;
            let auth = f.auth(c, n).await;
            let r = f.send(&req, auth).await;
            check_cell(&f, n, m, p, c, w, &r)
        }
    };
    let mut failures: Vec<String> = futures::stream::iter(parallel.into_iter().copied().map(run))
        .buffer_unordered(12)
        .flat_map(futures::stream::iter)
        .collect()
        .await;
    for cell in serial {
        failures.extend(run(*cell).await);
    }

    f.net.settle().await;
    let audit_failures = audit_problems(&f, &ledger_cid, audit_before, reads);
    failures.extend(audit_failures);

    let total = cells.len();
    assert!(
        failures.is_empty(),
        "{} of {total} cells failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Arc::try_unwrap(f)
        .unwrap_or_else(|_| panic!("every request finished"))
        .net
        .dev
        .shutdown()
        .await;
}

/// Every file under `dir` whose name holds `needle`.
fn files_named(dir: &std::path::Path, needle: &str, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_named(&p, needle, out);
        } else if p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains(needle))
        {
            out.push(p);
        }
    }
}

/// The node's warnings and errors, captured for every test of this binary (the nodes run
/// in-process, on the runtime's threads, so the subscriber is global).
fn captured_logs() -> Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let b = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || LogWriter(b.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        buf
    })
    .clone()
}

/// A writer appending to the captured log.
struct LogWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An internal failure (a record's block damaged on disk) is a 500 problem with the request
/// id, saying where to look, and never the 200 of a cut-short body or a misleading 404; the
/// node's log has a line with that request id and the CID, and no health data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_block_is_a_500_problem_with_a_request_id() {
    let logs = captured_logs();
    let net = Net::start().await;
    let up = net
        .upload(
            0,
            "application/fhir+json",
            serde_json::to_vec(&condition()).unwrap(),
        )
        .await;
    assert_eq!(up.status, 201, "{}", String::from_utf8_lossy(&up.body));
    let cid = up.json()["records"][0]["cid"].as_str().unwrap().to_owned();
    let mut files = Vec::new();
    files_named(&net.dir.join("node-0/data"), &cid, &mut files);
    assert_eq!(
        files.len(),
        1,
        "one block file of a small record: {files:?}"
    );
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&files[0], &bytes).unwrap();

    let researcher = net.who("researcher.json");
    for (path, accept) in [
        (format!("/ipfs/{cid}"), Some("application/vnd.ipld.raw")),
        (format!("/v1/records/{cid}"), None),
    ] {
        let client = reqwest::Client::new();
        let mut rb = client
            .get(net.url(0, &path))
            .bearer_auth(researcher.token());
        if let Some(a) = accept {
            rb = rb.header("accept", a);
        }
        let r = rb.send().await.unwrap();
        let r = Resp {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.bytes().await.unwrap().to_vec(),
        };
        let p = r.problem(500);
        assert_eq!(p["request_id"], r.header("x-request-id").as_str(), "{path}");
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.contains("logs"), "{path}: {detail}");
        assert!(
            !detail.contains(&cid),
            "{path}: internals stay in the log: {detail}"
        );
        let rid = r.header("x-request-id");
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains(&rid) && l.contains("internal error"))
            .unwrap_or_else(|| panic!("{path}: no log line with request id {rid}:\n{text}"));
        assert!(
            line.contains(&cid),
            "{path}: the log names the record: {line}"
        );
        for phi in ["44054006", "Patient/p1", "Condition"] {
            assert!(
                !line.contains(phi),
                "{path}: health data in the log: {line}"
            );
        }
    }
    net.dev.shutdown().await;
}
