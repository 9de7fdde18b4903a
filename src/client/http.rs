//! The HTTP client of a node: a fresh bearer token per request, problem+json errors turned
//! into [`ClientError`]s, and retries for idempotent requests only.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use reqwest::{Method, StatusCode, Url, header};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::ClientError;
use super::problem::Problem;

/// Lifetime of each bearer token (the node accepts at most 300 s).
pub const TOKEN_TTL_SECS: u64 = 120;
/// Attempts for an idempotent request (the first try included).
const IDEMPOTENT_ATTEMPTS: u32 = 3;
/// Largest error body read.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Largest JSON answer read.
const MAX_JSON_BODY: usize = 64 << 20;

/// Whether a request may be sent again after a network failure or a 502/503/504 answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The request changes nothing or the same thing twice (GET, search): retried.
    Idempotent,
    /// The request may change state (upload, grant, transaction): sent once.
    Once,
}

/// A client of one node's HTTP API, authenticated as one participant.
pub struct NodeClient {
    http: reqwest::Client,
    base: Url,
    key: SigningKey,
    audience: String,
}

impl std::fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeClient")
            .field("base", &self.base.as_str())
            .field("audience", &self.audience)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl NodeClient {
    /// A client of the node at `base` (such as `http://127.0.0.1:8080`), signing tokens with
    /// `key` for audience `chain_id`.
    pub fn new(base: &str, key: &SigningKey, chain_id: &str) -> Result<NodeClient, ClientError> {
        let mut base = Url::parse(base)
            .map_err(|e| ClientError::input("--node", format!("not a URL ({e}): {base}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ClientError::input(
                "--node",
                "must be an http:// or https:// URL",
            ));
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("ehr-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                ClientError::input("--node", format!("cannot build an HTTP client: {e}"))
            })?;
        Ok(NodeClient {
            http,
            base,
            key: key.clone(),
            audience: chain_id.to_owned(),
        })
    }

    /// The node's base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The absolute URL of `path` (relative to the base, such as `v1/search`).
    pub fn url(&self, path: &str) -> Result<Url, ClientError> {
        self.base
            .join(path.trim_start_matches('/'))
            .map_err(|e| ClientError::input("path", format!("{path}: {e}")))
    }

    /// A fresh bearer token (new `jti`, short lifetime).
    pub fn token(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        crate::auth::mint_eddsa(&self.key, &self.audience, now, TOKEN_TTL_SECS)
    }

    /// Sends a request built by `build` (called again for every attempt, with a fresh token)
    /// and returns the successful response; error answers become [`ClientError::Refused`] or
    /// [`ClientError::Server`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        retry: Retry,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let url = self.url(path)?;
        let attempts = match retry {
            Retry::Idempotent => IDEMPOTENT_ATTEMPTS,
            Retry::Once => 1,
        };
        let mut last = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                tracing::info!(attempt = attempt + 1, path = %url.path(), "retrying");
            }
            let req = build(
                self.http
                    .request(method.clone(), url.clone())
                    .bearer_auth(self.token()),
            );
            match req.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    let status = resp.status();
                    let err = error_from_response(resp).await;
                    let transient = matches!(
                        status,
                        StatusCode::BAD_GATEWAY
                            | StatusCode::SERVICE_UNAVAILABLE
                            | StatusCode::GATEWAY_TIMEOUT
                    );
                    if !transient {
                        return Err(err);
                    }
                    last = Some(err);
                }
                Err(e) => {
                    let err = ClientError::Network {
                        url: without_query(&url),
                        reason: describe_reqwest(&e),
                    };
                    // A request that reached the node may have been applied: only idempotent
                    // requests are sent again, and only for connection-level failures.
                    if !(e.is_connect() || e.is_timeout() || e.is_request()) {
                        return Err(err);
                    }
                    last = Some(err);
                }
            }
        }
        Err(last.expect("invariant: at least one attempt ran"))
    }

    /// `GET path` and parse the JSON answer (retried on transient failures).
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self
            .send(Method::GET, path, Retry::Idempotent, |r| {
                r.header(header::ACCEPT, "application/json")
            })
            .await?;
        read_json(resp, path).await
    }

    /// `POST path` with a JSON body and parse the JSON answer.
    pub async fn post_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        retry: Retry,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).expect("invariant: request bodies serialise");
        let resp = self
            .send(Method::POST, path, retry, |r| {
                r.header(header::CONTENT_TYPE, "application/json")
                    .header(header::ACCEPT, "application/json")
                    .body(bytes.clone())
            })
            .await?;
        read_json(resp, path).await
    }

    /// `DELETE path` (sent once) and parse the JSON answer, if any.
    pub async fn delete(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let resp = self.send(Method::DELETE, path, Retry::Once, |r| r).await?;
        let bytes = read_limited(resp, MAX_JSON_BODY, path).await?;
        if bytes.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::bad_response(path, e.to_string()))
    }
}

/// The node's error answer as a [`ClientError`].
pub async fn error_from_response(resp: reqwest::Response) -> ClientError {
    let status = resp.status().as_u16();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let path = resp.url().path().to_owned();
    let body = read_limited(resp, MAX_ERROR_BODY, &path)
        .await
        .unwrap_or_default();
    let problem = Box::new(Problem::parse(status, request_id.as_deref(), &body));
    if problem.is_refusal() {
        ClientError::Refused(problem)
    } else {
        ClientError::Server(problem)
    }
}

/// Reads a JSON answer (at most 64 MiB).
pub async fn read_json<T: DeserializeOwned>(
    resp: reqwest::Response,
    what: &str,
) -> Result<T, ClientError> {
    let bytes = read_limited(resp, MAX_JSON_BODY, what).await?;
    serde_json::from_slice(&bytes).map_err(|e| ClientError::bad_response(what, e.to_string()))
}

/// Reads a body of at most `max` bytes (a longer one is cut off at `max`).
async fn read_limited(
    mut resp: reqwest::Response,
    max: usize,
    what: &str,
) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ClientError::bad_response(what, describe_reqwest(&e)))?
    {
        let room = max - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() == max {
            break;
        }
    }
    Ok(out)
}

/// A reqwest error with its causes, without the URL's query string.
pub fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

fn without_query(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A one-route HTTP/1.1 server on 127.0.0.1 answering each connection with the next canned
    /// response; counts the requests and keeps their heads.
    async fn canned(
        responses: Vec<(u16, &'static str, String)>,
    ) -> (String, Arc<AtomicUsize>, Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, h) = (count.clone(), heads.clone());
        tokio::spawn(async move {
            for (status, ctype, body) in responses {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 16 * 1024];
                let n = sock.read(&mut buf).await.unwrap();
                h.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                c.fetch_add(1, Ordering::SeqCst);
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\nx-request-id: req-{status}\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                sock.write_all(resp.as_bytes()).await.unwrap();
                let _ = sock.shutdown().await;
            }
        });
        (format!("http://{addr}"), count, heads)
    }

    fn client(base: &str) -> NodeClient {
        NodeClient::new(base, &SigningKey::from_bytes(&[9; 32]), "ehr-test").unwrap()
    }

    #[tokio::test]
    async fn retries_idempotent_requests_on_503_then_succeeds() {
        let (base, count, heads) = canned(vec![
            (503, "text/plain", "busy".into()),
            (200, "application/json", r#"{"height":7}"#.into()),
        ])
        .await;
        let v: serde_json::Value = client(&base).get_json("/v1/ledger/head").await.unwrap();
        assert_eq!(v["height"], 7);
        assert_eq!(count.load(Ordering::SeqCst), 2);
        let heads = heads.lock().unwrap();
        let tokens: Vec<&str> = heads
            .iter()
            .map(|h| {
                h.lines()
                    .find_map(|l| l.strip_prefix("authorization: Bearer "))
                    .expect("every request carries a bearer token")
            })
            .collect();
        assert_ne!(tokens[0], tokens[1], "a fresh token per attempt");
    }

    #[tokio::test]
    async fn does_not_retry_non_idempotent_requests() {
        let (base, count, _) = canned(vec![(503, "text/plain", "busy".into())]).await;
        let err = client(&base)
            .post_json::<_, serde_json::Value>("/v1/records", &serde_json::json!({}), Retry::Once)
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn refusals_carry_the_problem() {
        let body = r#"{"title":"Forbidden","status":403,"detail":"policy not satisfied"}"#;
        let (base, count, _) = canned(vec![(403, "application/problem+json", body.into())]).await;
        let err = client(&base)
            .get_json::<serde_json::Value>("/v1/records/x")
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let s = err.to_string();
        assert!(s.contains("403 Forbidden: policy not satisfied"), "{s}");
        assert!(s.contains("req-403"), "{s}");
        assert_eq!(count.load(Ordering::SeqCst), 1, "4xx is never retried");
    }

    #[tokio::test]
    async fn unreachable_nodes_are_network_errors() {
        // Bind then drop a listener: its port is (for a moment) closed.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        let err = client(&base)
            .get_json::<serde_json::Value>("/healthz")
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Network { .. }), "{err}");
        assert_eq!(err.exit_code(), 3);
    }

    #[test]
    fn rejects_bad_node_urls() {
        let k = SigningKey::from_bytes(&[1; 32]);
        assert!(NodeClient::new("ftp://x", &k, "c").is_err());
        assert!(NodeClient::new("not a url", &k, "c").is_err());
        let c = NodeClient::new("http://127.0.0.1:1/base", &k, "c").unwrap();
        assert_eq!(
            c.url("/v1/search").unwrap().as_str(),
            "http://127.0.0.1:1/base/v1/search"
        );
    }
}
