//! Shared helpers of the node's end-to-end tests: an embedded 4-replica consortium on
//! loopback (`ehr dev`'s), identities, and an HTTP client that mints a fresh token per request.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::SigningKey;
use ehr::cli::dev::DevConsortium;
use ehr::consortium::IdentityFile;
use ehr_search::abe::UserKey;
use ehr_search::sse::{Capsule, Keyword, Query, SearchKeyState};
use serde_json::{Value, json};

/// The chain id `ehr dev` uses.
pub const CHAIN: &str = "ehr-dev";

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A participant as a test drives it.
pub struct Who {
    /// Its signing key.
    pub key: SigningKey,
    /// Its attribute key, if any.
    pub abe: Option<UserKey>,
    /// Its id (hex).
    pub id: String,
}

impl Who {
    /// Loads an identity file.
    pub fn load(path: &Path) -> Who {
        let f = IdentityFile::load(path).expect("identity file");
        Who {
            key: f.signing_key().unwrap(),
            abe: f.abe_key().unwrap(),
            id: f.participant.clone(),
        }
    }

    /// A fresh bearer token.
    pub fn token(&self) -> String {
        ehr::auth::mint_eddsa(&self.key, CHAIN, now(), 120)
    }
}

/// An HTTP response, read whole.
pub struct Resp {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body.
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// A header as a string.
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("header {name} missing"))
            .to_str()
            .unwrap()
            .to_owned()
    }

    /// Asserts a problem+json with this status and returns it.
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.header("content-type"), "application/problem+json");
        assert!(!self.header("x-request-id").is_empty());
        let v = self.json();
        assert_eq!(v["status"], status);
        assert!(v["request_id"].is_string());
        v
    }
}

/// Sends a request with `who`'s token (or `token` verbatim if given).
pub async fn send(
    method: reqwest::Method,
    url: String,
    who: Option<&Who>,
    ctype: Option<&str>,
    body: Vec<u8>,
) -> Resp {
    let client = reqwest::Client::new();
    let mut rb = client.request(method, url).body(body);
    if let Some(w) = who {
        rb = rb.bearer_auth(w.token());
    }
    if let Some(c) = ctype {
        rb = rb.header("content-type", c);
    }
    let r = rb.send().await.expect("request");
    Resp {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.bytes().await.expect("body").to_vec(),
    }
}

/// The consortium under test.
pub struct Net {
    /// The nodes.
    pub dev: DevConsortium,
    /// Its directory (kept alive by `_tmp`).
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Net {
    /// Starts a new consortium in a temporary directory.
    pub async fn start() -> Net {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dev");
        let dev = DevConsortium::start(&dir, 0).await.expect("dev consortium");
        Net {
            dev,
            dir,
            _tmp: Some(tmp),
        }
    }

    /// Restarts every node on the same directory.
    pub async fn restart(mut self) -> Net {
        let tmp = self._tmp.take();
        let dir = self.dir.clone();
        self.dev.shutdown().await;
        let dev = DevConsortium::start(&dir, 0).await.expect("restart");
        Net {
            dev,
            dir,
            _tmp: tmp,
        }
    }

    /// Node `i`'s base URL.
    pub fn url(&self, i: usize, path: &str) -> String {
        format!("http://{}{path}", self.dev.nodes[i].http_addr())
    }

    /// An identity of the consortium directory.
    pub fn who(&self, file: &str) -> Who {
        Who::load(&self.dir.join(file))
    }

    /// The ledger height and index height of node `i`.
    pub fn heights(&self, i: usize) -> (u64, u64) {
        let ctx = self.dev.nodes[i].ctx();
        let h = ctx.ledger.read().height();
        let ih = ctx.index.read().unwrap().committed_height();
        (h, ih)
    }

    /// Waits until every node's index reached node 0's ledger height.
    pub async fn settle(&self) {
        for _ in 0..400 {
            let target = self.heights(0).0;
            if (0..self.dev.nodes.len())
                .all(|i| self.heights(i).0 >= target && self.heights(i).1 >= target)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the nodes did not settle");
    }

    /// Uploads `body` as hospital `h` at node `h`.
    pub async fn upload(&self, h: usize, ctype: &str, body: Vec<u8>) -> Resp {
        let who = self.who(&format!("hospital-{h}.json"));
        send(
            reqwest::Method::POST,
            self.url(h, "/v1/records"),
            Some(&who),
            Some(ctype),
            body,
        )
        .await
    }

    /// Opens every capsule `who`'s attribute key satisfies (as listed by node `i`).
    pub async fn open_capsules(
        &self,
        i: usize,
        who: &Who,
    ) -> Vec<(ehr_search::sse::CapsuleId, SearchKeyState)> {
        let r = send(
            reqwest::Method::GET,
            self.url(i, "/v1/capsules"),
            Some(who),
            None,
            vec![],
        )
        .await;
        assert_eq!(r.status, 200);
        let key = who.abe.as_ref().expect("attribute key");
        r.json()["capsules"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| {
                let bytes = B64
                    .decode(c["wrapped_search_key"].as_str().unwrap())
                    .unwrap();
                let cap = Capsule::from_bytes(&bytes).unwrap();
                cap.open(key).ok().map(|s| (cap.capsule_id(), s))
            })
            .collect()
    }

    /// Searches at node `i` for one keyword over the given opened capsules.
    pub async fn search(
        &self,
        i: usize,
        who: &Who,
        opened: &[(ehr_search::sse::CapsuleId, SearchKeyState)],
        kw: &Keyword,
    ) -> Resp {
        let mut ts = Vec::new();
        for (id, st) in opened {
            if let Query::Keyword(t) = Query::keyword(st, *id, kw) {
                ts.extend(t.iter().map(|t| B64.encode(&*t.to_bytes())));
            }
        }
        if ts.is_empty() {
            // A caller with no capsule sends a well-formed query that can match nothing.
            let st = ehr_search::sse::SearchKeyOwner::generate(&mut rand::rngs::OsRng).state();
            let id = ehr_search::sse::CapsuleId([0; 32]);
            if let Query::Keyword(t) = Query::keyword(&st, id, kw) {
                ts.extend(t.iter().map(|t| B64.encode(&*t.to_bytes())));
            }
        }
        let body = json!({"query": {"keyword": ts}, "limit": 100});
        send(
            reqwest::Method::POST,
            self.url(i, "/v1/search"),
            Some(who),
            Some("application/json"),
            serde_json::to_vec(&body).unwrap(),
        )
        .await
    }
}
