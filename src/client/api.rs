//! Typed calls of the node's HTTP API (see the `/openapi.json` the node serves). Answers are
//! parsed leniently where the contract leaves room (extra fields are ignored) and strictly
//! where the client relies on a value.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ehr_ledger::tx::{ParticipantId, SignedTx};
use ehr_search::sse::CapsuleId;
use reqwest::{Method, header};
use serde::Deserialize;
use serde_json::Value;

use super::crypto::{ListedCapsule, parse_capsule_id};
use super::error::ClientError;
use super::http::{NodeClient, Retry, read_json};
use super::proof::ProofAnswer;

/// One record the node registered (`POST /v1/records`).
#[derive(Debug, Clone, Deserialize)]
pub struct UploadedRecord {
    /// Its CID.
    pub cid: String,
    /// The height that committed it.
    #[serde(default)]
    pub height: u64,
    /// The registering transaction.
    #[serde(default)]
    pub tx_id: String,
    /// The capsule it is indexed under.
    #[serde(default)]
    pub capsule: String,
    /// The search key epoch.
    #[serde(default)]
    pub epoch: u64,
    /// Ciphertext size in bytes.
    #[serde(default)]
    pub size: u64,
}

#[derive(Deserialize)]
struct UploadAnswer {
    records: Vec<UploadedRecord>,
}

/// One search hit.
#[derive(Debug, Clone, Deserialize)]
pub struct SearchHit {
    /// The record's CID.
    pub cid: String,
    /// Its capsule.
    #[serde(default)]
    pub capsule: String,
    /// The epoch its labels were made in.
    #[serde(default)]
    pub epoch: u64,
    /// The height that registered it.
    #[serde(default)]
    pub height: u64,
}

/// One page of search results.
#[derive(Debug, Clone, Deserialize)]
pub struct SearchPage {
    /// The hits.
    pub hits: Vec<SearchHit>,
    /// The cursor of the next page, if any.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// The ledger head.
#[derive(Debug, Clone, Deserialize)]
pub struct Head {
    /// Height of the last committed block.
    pub height: u64,
    /// Its hash.
    #[serde(default)]
    pub hash: String,
    /// The consensus view.
    #[serde(default)]
    pub view: u64,
    /// The state root.
    #[serde(default)]
    pub state_root: String,
}

/// The outcome of a submitted transaction.
#[derive(Debug, Clone, Deserialize)]
pub struct TxOutcome {
    /// Its id.
    pub tx_id: String,
    /// The height that committed it.
    pub height: u64,
    /// Its position in the block.
    #[serde(default)]
    pub index: u64,
    /// `"applied"` or `{"rejected":{"code","reason"}}`.
    pub outcome: Value,
}

impl TxOutcome {
    /// `Ok` if applied; a refusal naming the ledger's code and reason otherwise.
    pub fn applied(&self) -> Result<(), ClientError> {
        if self.outcome.as_str() == Some("applied") {
            return Ok(());
        }
        let r = self.outcome.get("rejected").unwrap_or(&self.outcome);
        let code = r.get("code").and_then(Value::as_str).unwrap_or("unknown");
        let reason = r.get("reason").and_then(Value::as_str).unwrap_or("");
        Err(ClientError::Refused(Box::new(super::problem::Problem {
            status: 422,
            title: format!("transaction rejected by the ledger ({code})"),
            detail: Some(reason.to_owned()),
            ..Default::default()
        })))
    }
}

/// A validator's partial attribute key.
#[derive(Debug, Clone, Deserialize)]
pub struct PartialKeyAnswer {
    /// The validator's 1-based share index.
    pub index: u32,
    /// The attributes the key was issued for (the caller's current ones on the ledger).
    pub attributes: Vec<String>,
    /// The `PartialKey` bytes, base64url.
    pub partial: String,
}

/// A grant created by `POST /v1/grants`.
#[derive(Debug, Clone, Deserialize)]
pub struct GrantAnswer {
    /// The grant id.
    pub grant: String,
    /// The height that committed it.
    #[serde(default)]
    pub height: u64,
    /// The grant transaction.
    #[serde(default)]
    pub tx_id: String,
}

/// The typed API of one node.
#[derive(Debug)]
pub struct Api {
    /// The underlying HTTP client.
    pub http: NodeClient,
}

impl Api {
    /// Wraps a client.
    pub fn new(http: NodeClient) -> Api {
        Api { http }
    }

    /// `GET /v1/ledger/head`.
    pub async fn head(&self) -> Result<Head, ClientError> {
        self.http.get_json("v1/ledger/head").await
    }

    /// `GET /v1/capsules`: every capsule with its encoded wrapped search key.
    pub async fn capsules(&self) -> Result<Vec<ListedCapsule>, ClientError> {
        let v: Value = self.http.get_json("v1/capsules").await?;
        let list = match &v {
            Value::Array(a) => a,
            Value::Object(o) => o
                .get("capsules")
                .and_then(Value::as_array)
                .ok_or_else(|| ClientError::bad_response("capsules", "no `capsules` array"))?,
            _ => return Err(ClientError::bad_response("capsules", "not a JSON list")),
        };
        let mut out = Vec::with_capacity(list.len());
        for (i, c) in list.iter().enumerate() {
            let field = |names: &[&str]| {
                names
                    .iter()
                    .find_map(|n| c.get(*n).and_then(Value::as_str))
                    .ok_or_else(|| {
                        ClientError::bad_response(
                            format!("capsules[{i}]"),
                            format!("missing `{}`", names[0]),
                        )
                    })
            };
            let id = parse_capsule_id(field(&["id", "capsule"])?)
                .map_err(|e| ClientError::bad_response(format!("capsules[{i}].id"), e))?;
            let bytes = B64
                .decode(field(&["wrapped_search_key", "capsule_bytes"])?)
                .map_err(|_| {
                    ClientError::bad_response(
                        format!("capsules[{i}].wrapped_search_key"),
                        "not base64url",
                    )
                })?;
            out.push(ListedCapsule { id, bytes });
        }
        Ok(out)
    }

    /// `GET /v1/capsules` again, for each capsule's owner.
    pub async fn capsule_owners(&self) -> Result<Vec<(CapsuleId, ParticipantId)>, ClientError> {
        let v: Value = self.http.get_json("v1/capsules").await?;
        let list = v
            .get("capsules")
            .and_then(Value::as_array)
            .or_else(|| v.as_array())
            .ok_or_else(|| ClientError::bad_response("capsules", "not a list"))?;
        let mut out = Vec::new();
        for c in list {
            let (Some(id), Some(owner)) = (
                c.get("id").and_then(Value::as_str),
                c.get("owner").and_then(Value::as_str),
            ) else {
                continue;
            };
            if let (Ok(id), Ok(owner)) = (
                parse_capsule_id(id),
                super::identity::parse_participant(owner),
            ) {
                out.push((id, owner));
            }
        }
        Ok(out)
    }

    /// `POST /v1/search` with a prepared body (it holds trapdoors). Retried: it changes nothing.
    pub async fn search(&self, body: &str) -> Result<SearchPage, ClientError> {
        let resp = self
            .http
            .send(Method::POST, "v1/search", Retry::Idempotent, |r| {
                r.header(header::CONTENT_TYPE, "application/json")
                    .body(body.to_owned())
            })
            .await?;
        read_json(resp, "search").await
    }

    /// `POST /v1/records` with `body` of media type `content_type` (sent once).
    pub async fn upload(
        &self,
        body: reqwest::Body,
        content_type: &str,
        policy: Option<&CapsuleId>,
        patient: Option<&ParticipantId>,
        extra_headers: &[(&str, String)],
    ) -> Result<Vec<UploadedRecord>, ClientError> {
        let mut path = "v1/records".to_owned();
        let mut q = Vec::new();
        if let Some(p) = policy {
            q.push(format!("policy={}", hex::encode(p.0)));
        }
        if let Some(p) = patient {
            q.push(format!("patient={p}"));
        }
        if !q.is_empty() {
            path.push('?');
            path.push_str(&q.join("&"));
        }
        // A streaming body cannot be replayed: the request is sent exactly once.
        let body = std::sync::Mutex::new(Some(body));
        let resp = self
            .http
            .send(Method::POST, &path, Retry::Once, |r| {
                let mut r = r.header(header::CONTENT_TYPE, content_type);
                for (k, v) in extra_headers {
                    r = r.header(*k, v);
                }
                match body.lock().expect("upload body lock").take() {
                    Some(b) => r.body(b),
                    None => r,
                }
            })
            .await?;
        let a: UploadAnswer = read_json(resp, "upload").await?;
        Ok(a.records)
    }

    /// `GET /v1/records/{cid}?purpose=...`: the sealed record stream and its headers.
    pub async fn get_record(
        &self,
        cid: &str,
        purpose: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let path = format!("v1/records/{cid}?purpose={purpose}");
        self.http
            .send(Method::GET, &path, Retry::Once, |r| {
                r.header(header::ACCEPT, "application/vnd.ehr.sealed")
            })
            .await
    }

    /// `GET /v1/records/{cid}/proof`.
    pub async fn proof(&self, cid: &str) -> Result<ProofAnswer, ClientError> {
        self.http.get_json(&format!("v1/records/{cid}/proof")).await
    }

    /// `GET /v1/participants/{id}` (the raw JSON).
    pub async fn participant(&self, id: &ParticipantId) -> Result<Value, ClientError> {
        self.http.get_json(&format!("v1/participants/{id}")).await
    }

    /// The next nonce of `id`: its last used nonce on the ledger plus one.
    pub async fn next_nonce(&self, id: &ParticipantId) -> Result<u64, ClientError> {
        let v = self.participant(id).await?;
        let last = v
            .get("nonce")
            .and_then(Value::as_u64)
            .ok_or_else(|| ClientError::bad_response("participant", "no `nonce` field"))?;
        last.checked_add(1)
            .ok_or_else(|| ClientError::bad_response("participant.nonce", "exhausted"))
    }

    /// `POST /v1/transactions`: submits a transaction the caller signed, waits for its commit.
    pub async fn submit(&self, tx: &SignedTx) -> Result<TxOutcome, ClientError> {
        let body = serde_json::json!({ "tx": B64.encode(tx.to_bytes()) });
        // Resending a signed transaction is safe (the ledger refuses a replayed nonce), but a
        // resend would turn success into a confusing duplicate error: sent once.
        self.http
            .post_json("v1/transactions", &body, Retry::Once)
            .await
    }

    /// `POST /v1/abe/partial-key` on this node's validator.
    pub async fn partial_key(&self) -> Result<PartialKeyAnswer, ClientError> {
        self.http
            .post_json(
                "v1/abe/partial-key",
                &serde_json::json!({}),
                Retry::Idempotent,
            )
            .await
    }

    /// `POST /v1/grants` (an absolute `expiry_height`, or else `expires_in_blocks`).
    pub async fn grant(
        &self,
        cid: &str,
        grantee: &ParticipantId,
        expiry_height: Option<u64>,
        expires_in_blocks: u64,
    ) -> Result<GrantAnswer, ClientError> {
        let mut body = serde_json::json!({ "cid": cid, "grantee": grantee.to_string() });
        match expiry_height {
            Some(h) => body["expiry_height"] = h.into(),
            None => body["expires_in_blocks"] = expires_in_blocks.into(),
        }
        self.http.post_json("v1/grants", &body, Retry::Once).await
    }

    /// `DELETE /v1/grants/{id}`.
    pub async fn revoke_grant(&self, grant: &str) -> Result<Value, ClientError> {
        self.http.delete(&format!("v1/grants/{grant}")).await
    }
}
