//! The request handlers. Each authenticated handler receives the caller's [`Principal`]
//! (inserted by the authentication middleware for the routes the table marks).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ehr_ledger::app::TxOutcome;
use ehr_ledger::state::{Authorisation, Record};
use ehr_ledger::store::Store as _;
use ehr_ledger::tx::{Cid as LedgerCid, GrantId, ParticipantId, Purpose, Scope, SignedTx, TxKind};
use ehr_search::abe::PartialKey;
use ehr_search::index::Cursor;
use ehr_search::sse::{Query as SseQuery, Trapdoor};
use ehr_storage::blockstore::Cid;
use serde::Deserialize;
use serde_json::{Value, json};

use super::problem::{FHIR_ERRORS, Problem};
use crate::auth::Principal;
use crate::fhir::{ExtractConfig, InputFormat};
use crate::node::NodeCtx;
use crate::node::upload::{OpError, Uploaded, search_keywords};

type Ctx = State<Arc<NodeCtx>>;
type R = Result<Response, Problem>;
/// One resource to store as a record: its JSON bytes and its keywords.
type FhirDoc = (Vec<u8>, Vec<crate::fhir::Keyword>);

/// The query string of a request, deserialised; a query that does not fit is a 400 problem
/// naming the parameter (axum's own rejection would be plain text).
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| Query(q.0))
            .map_err(|e| {
                Problem::field(
                    "query",
                    format!(
                        "{} (see this route's parameters at /openapi.json)",
                        e.body_text()
                    ),
                )
            })
    }
}

/// The path parameters of a request; a parameter that is not valid (percent-decoded) UTF-8 is
/// a 400 problem whose field is the parameter (axum's own rejection would be plain text).
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(p) => Ok(Path(p.0)),
            Err(e) => {
                use axum::extract::path::ErrorKind;
                use axum::extract::rejection::PathRejection;
                // Name the parameter when the framework knows it.
                let field = match &e {
                    PathRejection::FailedToDeserializePathParams(d) => match d.kind() {
                        ErrorKind::InvalidUtf8InPathParam { key }
                        | ErrorKind::ParseErrorAtKey { key, .. }
                        | ErrorKind::DeserializeError { key, .. } => key.clone(),
                        _ => "path".to_owned(),
                    },
                    _ => "path".to_owned(),
                };
                Err(Problem::field(
                    field,
                    format!("{} (percent-encode UTF-8 only)", e.body_text()),
                ))
            }
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

fn created(v: Value) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}

/// Reads a body of at most the configured size (413 beyond it).
pub async fn read_body(ctx: &NodeCtx, body: Body) -> Result<bytes::Bytes, Problem> {
    let limit = ctx.config.http.max_body_bytes;
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "body: larger than {limit} bytes (or cut off): split the upload (NDJSON lines, \
                 smaller Bundles) or raise http.max_body_bytes"
            ),
        )
    })
}

fn parse_participant(field: &str, s: &str) -> Result<ParticipantId, Problem> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(s, &mut id)
        .map_err(|_| Problem::field(field, "must be a participant id (64 lowercase hex digits)"))?;
    Ok(ParticipantId(id))
}

fn parse_cid(s: &str) -> Result<Cid, Problem> {
    let cid: Cid = s
        .parse()
        .map_err(|_| Problem::field("cid", "not a CID (CIDv1 base32 expected)"))?;
    if u64::from(cid.version()) != 1 {
        return Err(Problem::field("cid", "must be a CIDv1"));
    }
    Ok(cid)
}

fn hex32(field: &str, s: &str) -> Result<[u8; 32], Problem> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(s, &mut id).map_err(|_| Problem::field(field, "must be 64 hex digits"))?;
    Ok(id)
}

fn uploaded_json(u: &Uploaded) -> Value {
    json!({
        "cid": u.cid.to_string(),
        "height": u.height,
        "tx_id": hex::encode(u.tx_id),
        "capsule": hex::encode(u.capsule),
        "epoch": u.epoch,
        "labels": u.labels,
        "size": u.size,
    })
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

/// `GET /healthz`.
pub async fn healthz() -> Response {
    Json(json!({"status":"ok"})).into_response()
}

/// `GET /readyz`.
pub async fn readyz(State(ctx): Ctx) -> Response {
    let (ok, detail) = ctx.readiness();
    if ok {
        Json(json!({"status":"ready","detail":detail})).into_response()
    } else {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {detail}"),
        )
        .into_response()
    }
}

/// `GET /metrics`.
pub async fn metrics(State(ctx): Ctx) -> Response {
    let mut r = ctx.metrics.encode().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
    Json(super::routes::openapi()).into_response()
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

/// Query of `POST /v1/records`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// Capsule id (default: the hospital's default capsule).
    pub policy: Option<String>,
    /// The patient's participant id.
    pub patient: Option<String>,
}

fn must_be_hospital(ctx: &NodeCtx, p: &Principal) -> Result<(), Problem> {
    if p.participant != ctx.hospital_id {
        ctx.metrics
            .auth_failures
            .get_or_create(&crate::node::metrics::AuthLabels {
                kind: "forbidden".into(),
            })
            .inc();
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "only this node's hospital may upload records, grant or revoke access here: \
             use your own hospital's node",
        ));
    }
    Ok(())
}

/// Splits a FHIR upload into one JSON document per record (every resource of a Bundle, every
/// NDJSON line), after validating the whole input.
fn fhir_records(body: &[u8], format: InputFormat) -> Result<Vec<FhirDoc>, Problem> {
    let cfg = ExtractConfig::default();
    crate::fhir::extract(body, format, &cfg).map_err(|e| Problem::field("body", e.to_string()))?;
    let docs: Vec<Value> = match format {
        InputFormat::Json => {
            let v: Value = serde_json::from_slice(body)
                .map_err(|e| Problem::field("body", format!("not JSON: {e}")))?;
            if v.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
                v.get("entry")
                    .and_then(Value::as_array)
                    .map(|es| {
                        es.iter()
                            .filter_map(|e| e.get("resource").cloned())
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                vec![v]
            }
        }
        InputFormat::Ndjson => body
            .split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(|l| {
                serde_json::from_slice(l)
                    .map_err(|e| Problem::field("body", format!("not JSON: {e}")))
            })
            .collect::<Result<_, _>>()?,
    };
    if docs.is_empty() {
        return Err(Problem::field("body", "holds no resource"));
    }
    docs.into_iter()
        .enumerate()
        .map(|(i, d)| {
            let ex = crate::fhir::extract_value(&d, &cfg)
                .map_err(|e| Problem::field(format!("body[{i}]"), e.to_string()))?;
            let bytes = serde_json::to_vec(&d).expect("invariant: a JSON value serialises");
            Ok((bytes, ex.keywords.into_iter().collect()))
        })
        .collect()
}

/// Uploads each document as a record. Each upload runs in its own task, so a client that
/// disconnects (or a request timeout) cannot cancel one between its blockstore add and its
/// registration: it completes, or fails and unpins.
async fn upload_fhir_docs(
    ctx: &Arc<NodeCtx>,
    docs: Vec<FhirDoc>,
    capsule: [u8; 32],
    patient: Option<ParticipantId>,
) -> Result<Vec<Uploaded>, Problem> {
    let tasks: Vec<_> = docs
        .into_iter()
        .map(|(bytes, kws)| {
            let keywords = search_keywords(&kws);
            drop(kws);
            let ctx = ctx.clone();
            tokio::spawn(async move { ctx.upload_plain(bytes, keywords, capsule, patient).await })
        })
        .collect();
    let results = futures::future::join_all(tasks).await;
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        let r = r.map_err(|e| Problem::from(OpError::Internal(e.to_string())))?;
        out.push(r.map_err(Problem::from)?);
    }
    Ok(out)
}

/// Uploads every document independently (a FHIR batch): one result per document, in order.
async fn upload_fhir_docs_each(
    ctx: &Arc<NodeCtx>,
    docs: Vec<FhirDoc>,
    capsule: [u8; 32],
) -> Vec<Result<Uploaded, Problem>> {
    let tasks: Vec<_> = docs
        .into_iter()
        .map(|(bytes, kws)| {
            let keywords = search_keywords(&kws);
            drop(kws);
            let ctx = ctx.clone();
            tokio::spawn(async move { ctx.upload_plain(bytes, keywords, capsule, None).await })
        })
        .collect();
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| {
            r.map_err(|e| Problem::from(OpError::Internal(e.to_string())))
                .and_then(|r| r.map_err(Problem::from))
        })
        .collect()
}

/// Runs one upload in its own task (see [`upload_fhir_docs`]).
async fn detached<F>(f: F) -> Result<Uploaded, Problem>
where
    F: std::future::Future<Output = Result<Uploaded, OpError>> + Send + 'static,
{
    tokio::spawn(f)
        .await
        .map_err(|e| Problem::from(OpError::Internal(e.to_string())))?
        .map_err(Problem::from)
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// `POST /v1/records`.
pub async fn post_records(
    State(ctx): Ctx,
    Extension(p): Extension<Principal>,
    Query(q): Query<UploadQuery>,
    req: Request,
) -> R {
    must_be_hospital(&ctx, &p)?;
    let capsule = ctx
        .resolve_capsule(q.policy.as_deref())
        .map_err(Problem::from)?;
    let patient = q
        .patient
        .as_deref()
        .map(|s| parse_participant("patient", s))
        .transpose()?;
    let headers = req.headers().clone();
    let ctype = content_type(&headers);
    let body = read_body(&ctx, req.into_body()).await?;
    if body.is_empty() {
        return Err(Problem::field("body", "is empty"));
    }
    let records = if let Some(format) = InputFormat::from_media_type(&ctype) {
        let docs = fhir_records(&body, format)?;
        drop(body);
        upload_fhir_docs(&ctx, docs, capsule, patient).await?
    } else if ctype == "application/vnd.ehr.sealed" {
        let h = |name: &str| -> Result<String, Problem> {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .ok_or_else(|| Problem::field(name, "header missing"))
        };
        if let Ok(c) = h("ehr-capsule")
            && hex32("ehr-capsule", &c)? != capsule
        {
            return Err(Problem::field(
                "ehr-capsule",
                "differs from the capsule of `policy`",
            ));
        }
        let wrapped = B64
            .decode(h("ehr-wrapped-key")?)
            .map_err(|_| Problem::field("ehr-wrapped-key", "not base64url"))?;
        let kk = h("ehr-keyword-keys").unwrap_or_default();
        let mut keys = Vec::new();
        for (i, part) in kk
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            let raw =
                zeroize::Zeroizing::new(B64.decode(part).map_err(|_| {
                    Problem::field(format!("ehr-keyword-keys[{i}]"), "not base64url")
                })?);
            let arr: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
                Problem::field(format!("ehr-keyword-keys[{i}]"), "must be 32 bytes")
            })?;
            keys.push(zeroize::Zeroizing::new(arr));
        }
        let c = ctx.clone();
        let body = body.to_vec();
        vec![
            detached(async move { c.upload_sealed(body, wrapped, keys, capsule, patient).await })
                .await?,
        ]
    } else if ctype.is_empty() {
        return Err(Problem::field(
            "content-type",
            "header missing: send application/fhir+json, application/fhir+ndjson, \
             application/json, application/vnd.ehr.sealed or a binary type",
        )
        .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    } else if ctype.contains("json") {
        return Err(Problem::field(
            "content-type",
            format!("{ctype} is not accepted: use application/fhir+json, application/json or application/fhir+ndjson"),
        )
        .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    } else {
        // A binary record: sealed, no keywords.
        let c = ctx.clone();
        let body = body.to_vec();
        vec![
            detached(async move { c.upload_plain(body, Vec::new(), capsule, patient).await })
                .await?,
        ]
    };
    Ok(created(json!({
        "records": records.iter().map(uploaded_json).collect::<Vec<_>>()
    })))
}

fn record_of(ctx: &NodeCtx, cid: &Cid) -> Result<Record, Problem> {
    ctx.ledger
        .read()
        .record(&LedgerCid(cid.to_bytes()))
        .cloned()
        .ok_or_else(|| {
            Problem::field(
                "cid",
                "no record with this CID on the ledger (a record uploaded elsewhere appears \
                 once its registration commits)",
            )
            .with_status(StatusCode::NOT_FOUND)
        })
}

/// Query of `GET /v1/records/{cid}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// Why the record is read.
    pub purpose: Option<String>,
}

fn parse_purpose(s: Option<&str>) -> Result<Purpose, Problem> {
    Ok(match s.unwrap_or("research") {
        "treatment" => Purpose::Treatment,
        "research" => Purpose::Research,
        "audit" => Purpose::Audit,
        "emergency" => Purpose::Emergency,
        "patient-request" => Purpose::PatientRequest,
        _ => {
            return Err(Problem::field(
                "purpose",
                "must be treatment, research, audit, emergency or patient-request",
            ));
        }
    })
}

/// Authorises `p` to read `cid` and records the access (allowed or not) on the ledger.
async fn authorise_and_audit(
    ctx: &NodeCtx,
    p: &Principal,
    cid: &Cid,
    purpose: Purpose,
) -> Result<(Record, Authorisation, [u8; 32]), Problem> {
    let record = record_of(ctx, cid)?;
    let basis = {
        let st = ctx.ledger.read();
        st.authorisation(&p.participant, &record.cid, st.height())
    };
    let committed = ctx
        .validator
        .submit(TxKind::RecordAccess {
            cid: record.cid.clone(),
            accessor: p.participant,
            purpose,
        })
        .await
        .map_err(|e| Problem::from(OpError::from(e)))?;
    if let TxOutcome::Rejected(r) = &committed.outcome {
        tracing::warn!(code = r.code, "access audit transaction rejected");
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the access could not be audited on the ledger",
        ));
    }
    if !basis.is_allowed() {
        ctx.metrics
            .auth_failures
            .get_or_create(&crate::node::metrics::AuthLabels {
                kind: "forbidden".into(),
            })
            .inc();
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "not authorised to read this record (the attempt is recorded on the ledger)",
        ));
    }
    Ok((record, basis, committed.tx_id))
}

/// `GET /v1/records/{cid}`.
pub async fn get_record(
    State(ctx): Ctx,
    Extension(p): Extension<Principal>,
    Path(cid): Path<String>,
    Query(q): Query<ReadQuery>,
) -> R {
    let cid = parse_cid(&cid)?;
    let purpose = parse_purpose(q.purpose.as_deref())?;
    let (record, basis, audit_tx) = authorise_and_audit(&ctx, &p, &cid, purpose).await?;
    let (kind, key) = match basis {
        Authorisation::Grant(g) => {
            let grant = ctx
                .ledger
                .read()
                .grant(&g)
                .cloned()
                .ok_or_else(|| Problem::new(StatusCode::CONFLICT, "the grant vanished"))?;
            ("grant", grant.rewrapped_key)
        }
        _ => ("abe", record.wrapped_key.clone()),
    };
    if !ctx.blockstore.has_block(cid).await.unwrap_or(false) {
        // Not replicated here yet: try the consortium now.
        ctx.blockstore
            .fetch_and_pin(cid, &[], std::time::Duration::from_secs(10))
            .await
            .map_err(|e| {
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the record's blocks are not available here yet: {e}"),
                )
            })?;
    }
    // The first chunk is read before the answer starts, so a damaged or missing local block
    // (the whole of a small record) is a 5xx problem rather than a 200 cut short.
    let mut stream = ctx.blockstore.cat(cid);
    let first = match futures::StreamExt::next(&mut stream).await {
        Some(Ok(b)) => Some(Ok::<_, ehr_storage::StoreError>(b)),
        Some(Err(e)) => return Err(store_problem(&cid, e)),
        None => None,
    };
    let stream = futures::StreamExt::chain(futures::stream::iter(first), stream);
    let mut r = Body::from_stream(stream).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.ehr.sealed"),
    );
    let hv = |s: String| {
        HeaderValue::from_str(&s).expect("invariant: hex and base64url are header-safe")
    };
    h.insert("ehr-capsule", hv(hex::encode(record.capsule.0)));
    h.insert("ehr-key-kind", HeaderValue::from_static(kind));
    h.insert("ehr-wrapped-key", hv(b64(&key)));
    h.insert("ehr-audit-tx", hv(hex::encode(audit_tx)));
    h.insert(header::CONTENT_LENGTH, hv(record.size.to_string()));
    Ok(r)
}

/// The problem of a blockstore failure while serving a registered record: blocks not here yet
/// are a 503 (retry), anything else (a block that does not hash to its CID, an unreadable
/// repository) an internal error, logged with the CID.
fn store_problem(cid: &Cid, e: ehr_storage::StoreError) -> Problem {
    use ehr_storage::StoreError as E;
    match e {
        E::BlockMissing { .. } | E::IncompleteDag { .. } => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the record's blocks are not available on this node yet: retry shortly or ask another node",
        ),
        other => Problem::from(OpError::Internal(format!(
            "serving the blocks of {cid}: {other}"
        ))),
    }
}

/// `GET /v1/records/{cid}/meta`.
pub async fn get_record_meta(
    State(ctx): Ctx,
    Extension(_p): Extension<Principal>,
    Path(cid): Path<String>,
) -> R {
    let cid = parse_cid(&cid)?;
    let record = record_of(&ctx, &cid)?;
    let st = ctx.ledger.read();
    let grants: Vec<Value> = st
        .grants_for_record(&record.cid)
        .into_iter()
        .map(|g| grant_json(g, st.height()))
        .collect();
    Ok(Json(json!({
        "cid": cid.to_string(),
        "owner": record.owner.to_string(),
        "capsule": hex::encode(record.capsule.0),
        "epoch": record.epoch,
        "size": record.size,
        "patient": record.patient.map(|p| p.to_string()),
        "registered_at": record.registered_at,
        "tx_id": hex::encode(record.tx),
        "status": match &record.status {
            ehr_ledger::state::RecordStatus::Active => json!("active"),
            ehr_ledger::state::RecordStatus::Superseded { by, at } => json!({"superseded": {"by": Cid::try_from(by.0.as_slice()).map(|c| c.to_string()).unwrap_or_default(), "at": at}}),
        },
        "labels": record.search_labels.len(),
        "grants": grants,
    }))
    .into_response())
}

/// `GET /v1/records/{cid}/proof`.
pub async fn get_record_proof(
    State(ctx): Ctx,
    Extension(_p): Extension<Principal>,
    Path(cid): Path<String>,
) -> R {
    let cid = parse_cid(&cid)?;
    let record = record_of(&ctx, &cid)?;
    let block = ctx
        .store
        .block(record.registered_at)
        .map_err(|e| Problem::from(OpError::Internal(e.to_string())))?
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "the registering block is not stored here (state transfer)",
            )
        })?;
    let index = block
        .txs
        .iter()
        .position(|t| ehr_ledger::replica::tx_id(t) == record.tx)
        .ok_or_else(|| {
            Problem::from(OpError::Internal(
                "registering transaction not in its block".into(),
            ))
        })?;
    let proof = block
        .inclusion_proof(index)
        .ok_or_else(|| Problem::from(OpError::Internal("no inclusion proof".into())))?;
    Ok(Json(json!({
        "cid": cid.to_string(),
        "height": record.registered_at,
        "index": index,
        "tx": b64(&block.txs[index]),
        "proof": b64(&postcard::to_stdvec(&proof).expect("invariant: proofs serialise")),
        "header": header_json(&block.header),
    }))
    .into_response())
}

fn header_json(h: &ehr_ledger::block::BlockHeader) -> Value {
    json!({
        "chain_id": h.chain_id,
        "epoch": h.epoch,
        "height": h.height,
        "prev_hash": hex::encode(h.prev_hash),
        "tx_root": hex::encode(h.tx_root),
        "tx_count": h.tx_count,
        "state_root": hex::encode(h.state_root),
        "hash": hex::encode(h.hash()),
    })
}

// ---------------------------------------------------------------------------------------------
// Search
// ---------------------------------------------------------------------------------------------

/// Body of `POST /v1/search`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    /// The query.
    pub query: Value,
    /// Page size.
    pub limit: Option<usize>,
    /// Where to continue.
    pub cursor: Option<String>,
}

fn parse_query(v: &Value, path: &str, depth: usize) -> Result<SseQuery, Problem> {
    if depth > 16 {
        return Err(Problem::field(path, "nested deeper than 16"));
    }
    let obj = v
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or_else(|| Problem::field(path, "must be an object with one of keyword, and, or"))?;
    let (k, inner) = obj.iter().next().expect("one member");
    let arr = inner
        .as_array()
        .ok_or_else(|| Problem::field(format!("{path}.{k}"), "must be an array"))?;
    if arr.is_empty() {
        return Err(Problem::field(format!("{path}.{k}"), "must not be empty"));
    }
    match k.as_str() {
        "keyword" => {
            let mut ts = Vec::with_capacity(arr.len());
            for (i, t) in arr.iter().enumerate() {
                let f = format!("{path}.keyword[{i}]");
                let s = t
                    .as_str()
                    .ok_or_else(|| Problem::field(&f, "must be a string"))?;
                let raw = zeroize::Zeroizing::new(
                    B64.decode(s)
                        .map_err(|_| Problem::field(&f, "not base64url"))?,
                );
                ts.push(Trapdoor::from_bytes(&raw).map_err(|e| Problem::field(&f, e.to_string()))?);
            }
            Ok(SseQuery::Keyword(ts))
        }
        "and" | "or" => {
            let subs = arr
                .iter()
                .enumerate()
                .map(|(i, s)| parse_query(s, &format!("{path}.{k}[{i}]"), depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if k == "and" {
                SseQuery::And(subs)
            } else {
                SseQuery::Or(subs)
            })
        }
        other => Err(Problem::field(
            path,
            format!("unknown operator {other:?} (keyword, and, or)"),
        )),
    }
}

/// The longest a search waits for the index to take in the blocks committed before it came.
const SEARCH_INDEX_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits, up to [`SEARCH_INDEX_WAIT`], until the search index has committed every ledger block
/// this node had committed when the call began. The index follower commits at most every
/// 200 ms, so without this a search sent right after an upload's 201 (a script's next line)
/// could miss the record. After the wait (an index still catching up after a restore) the
/// search runs on what is indexed.
async fn await_index(ctx: &NodeCtx) {
    let target = ctx.ledger.read().height();
    let deadline = tokio::time::Instant::now() + SEARCH_INDEX_WAIT;
    loop {
        let indexed = ctx
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .committed_height();
        if indexed >= target {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::debug!(
                indexed,
                ledger = target,
                "search on an index still catching up"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// `POST /v1/search`.
pub async fn post_search(State(ctx): Ctx, Extension(p): Extension<Principal>, req: Request) -> R {
    let body = read_body(&ctx, req.into_body()).await?;
    let body: SearchBody =
        serde_json::from_slice(&body).map_err(|e| Problem::field("body", e.to_string()))?;
    let limit = body.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::field("limit", "must be within 1..=1000"));
    }
    let query = parse_query(&body.query, "query", 0)?;
    let mut cursor = match body.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            Cursor::from_bytes(
                &B64.decode(c)
                    .map_err(|_| Problem::field("cursor", "not base64url"))?,
            )
            .map_err(|e| Problem::field("cursor", e.to_string()))?,
        ),
    };
    await_index(&ctx).await;
    // Page through the index, keeping only records the caller may read, until the page is
    // full or the results end.
    let ctx2 = ctx.clone();
    let participant = p.participant;
    let (hits, next) = tokio::task::spawn_blocking(move || {
        let mut hits = Vec::new();
        loop {
            let page = {
                let idx = ctx2.index.read().unwrap_or_else(|e| e.into_inner());
                idx.search(&query, cursor.as_ref(), limit)
            }
            .map_err(|e| Problem::field("query", e.to_string()))?;
            let st = ctx2.ledger.read();
            let h = st.height();
            for hit in page.hits {
                if st
                    .authorisation(&participant, &LedgerCid(hit.cid.clone()), h)
                    .is_allowed()
                {
                    hits.push(hit);
                }
            }
            drop(st);
            cursor = page.next;
            if hits.len() >= limit || cursor.is_none() {
                break;
            }
        }
        hits.truncate(limit);
        Ok::<_, Problem>((hits, cursor))
    })
    .await
    .map_err(|e| Problem::from(OpError::Internal(e.to_string())))??;
    let next = if hits.len() == limit { next } else { None };
    let out: Vec<Value> = hits
        .iter()
        .map(|h| {
            json!({
                "cid": Cid::try_from(h.cid.as_slice()).map(|c| c.to_string()).unwrap_or_else(|_| hex::encode(&h.cid)),
                "capsule": hex::encode(h.capsule_id.0),
                "epoch": h.epoch,
                "height": h.height,
            })
        })
        .collect();
    Ok(Json(json!({
        "hits": out,
        "next_cursor": next.map(|c| b64(&c.to_bytes())),
    }))
    .into_response())
}

// ---------------------------------------------------------------------------------------------
// Grants
// ---------------------------------------------------------------------------------------------

/// Body of `POST /v1/grants`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    /// The record.
    pub cid: String,
    /// Who may read it.
    pub grantee: String,
    /// The first height at which it no longer holds.
    pub expiry_height: Option<u64>,
    /// Or: how many blocks from now.
    pub expires_in_blocks: Option<u64>,
}

fn grant_json(g: &ehr_ledger::state::Grant, height: u64) -> Value {
    json!({
        "grant": hex::encode(g.id.0),
        "cid": Cid::try_from(g.cid.0.as_slice()).map(|c| c.to_string()).unwrap_or_default(),
        "grantor": g.grantor.to_string(),
        "grantee": g.grantee.to_string(),
        "expiry_height": g.expiry_height,
        "granted_at": g.granted_at,
        "revoked": g.revoked.as_ref().map(|r| json!({"by": r.by.to_string(), "at": r.at})),
        "active": g.is_active_at(height),
    })
}

/// `POST /v1/grants`.
pub async fn post_grant(State(ctx): Ctx, Extension(p): Extension<Principal>, req: Request) -> R {
    must_be_hospital(&ctx, &p)?;
    let body = read_body(&ctx, req.into_body()).await?;
    let body: GrantBody =
        serde_json::from_slice(&body).map_err(|e| Problem::field("body", e.to_string()))?;
    let cid = parse_cid(&body.cid)?;
    let grantee = parse_participant("grantee", &body.grantee)?;
    let (grantee_key, height) = {
        let st = ctx.ledger.read();
        let k = st
            .participant(&grantee)
            .map(|p| p.key)
            .ok_or_else(|| Problem::field("grantee", "not a registered participant"))?;
        (k, st.height())
    };
    let expiry = match (body.expiry_height, body.expires_in_blocks) {
        (Some(h), None) => h,
        (None, Some(n)) => height.saturating_add(n.max(1)),
        _ => {
            return Err(Problem::field(
                "expiry_height",
                "give exactly one of expiry_height and expires_in_blocks",
            ));
        }
    };
    let record = record_of(&ctx, &cid)?;
    if record.owner != ctx.hospital_id {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "this hospital does not own the record",
        ));
    }
    let key = ctx
        .owner_keys
        .get(&record.cid.0)
        .map_err(|e| Problem::from(OpError::Internal(e.to_string())))?
        .ok_or_else(|| {
            Problem::new(
                StatusCode::CONFLICT,
                "this node does not hold the record's data key (uploaded pre-sealed or elsewhere)",
            )
        })?;
    let rewrapped = crate::keywrap::wrap_for(
        &grantee_key,
        &record.cid.0,
        key.expose_secret(),
        &mut rand::rngs::OsRng,
    )
    .map_err(|e| Problem::from(OpError::Internal(e.to_string())))?;
    drop(key);
    let c = ctx
        .hospital
        .submit(TxKind::Grant {
            cid: record.cid.clone(),
            grantee,
            scope: Scope::Read,
            expiry_height: expiry,
            rewrapped_key: rewrapped,
        })
        .await
        .map_err(|e| Problem::from(OpError::from(e)))?;
    if let TxOutcome::Rejected(r) = &c.outcome {
        return Err(Problem::from(OpError::Rejected {
            code: r.code.into(),
            reason: r.reason.clone(),
        }));
    }
    Ok(created(json!({
        "grant": hex::encode(c.tx_id),
        "height": c.height,
        "tx_id": hex::encode(c.tx_id),
    })))
}

/// Query of `GET /v1/grants`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsQuery {
    /// By record.
    pub cid: Option<String>,
    /// By grantee.
    pub grantee: Option<String>,
}

/// `GET /v1/grants`.
pub async fn get_grants(
    State(ctx): Ctx,
    Extension(_p): Extension<Principal>,
    Query(q): Query<GrantsQuery>,
) -> R {
    let st = ctx.ledger.read();
    let h = st.height();
    let list: Vec<Value> = match (q.cid, q.grantee) {
        (Some(c), None) => {
            let cid = parse_cid(&c)?;
            st.grants_for_record(&LedgerCid(cid.to_bytes()))
                .into_iter()
                .map(|g| grant_json(g, h))
                .collect()
        }
        (None, Some(g)) => {
            let id = parse_participant("grantee", &g)?;
            st.grants_for_grantee(&id)
                .into_iter()
                .map(|g| grant_json(g, h))
                .collect()
        }
        _ => return Err(Problem::field("cid", "give exactly one of cid and grantee")),
    };
    Ok(Json(json!({"grants": list})).into_response())
}

/// `DELETE /v1/grants/{id}`.
pub async fn delete_grant(
    State(ctx): Ctx,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> R {
    must_be_hospital(&ctx, &p)?;
    let id = GrantId(hex32("id", &id)?);
    if ctx.ledger.read().grant(&id).is_none() {
        return Err(Problem::field(
            "id",
            "no grant with this id on the ledger (list a record's grants with GET /v1/grants?cid=)",
        )
        .with_status(StatusCode::NOT_FOUND));
    }
    let c = ctx
        .hospital
        .submit(TxKind::Revoke { grant: id })
        .await
        .map_err(|e| Problem::from(OpError::from(e)))?;
    if let TxOutcome::Rejected(r) = &c.outcome {
        return Err(Problem::from(OpError::Rejected {
            code: r.code.into(),
            reason: r.reason.clone(),
        }));
    }
    Ok(
        Json(
            json!({"grant": hex::encode(id.0), "height": c.height, "tx_id": hex::encode(c.tx_id)}),
        )
        .into_response(),
    )
}

// ---------------------------------------------------------------------------------------------
// Transactions, keys, ledger
// ---------------------------------------------------------------------------------------------

/// Body of `POST /v1/transactions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxSubmit {
    /// base64url `SignedTx` bytes.
    pub tx: String,
}

/// `POST /v1/transactions`.
pub async fn post_transaction(
    State(ctx): Ctx,
    Extension(p): Extension<Principal>,
    req: Request,
) -> R {
    let body = read_body(&ctx, req.into_body()).await?;
    let body: TxSubmit =
        serde_json::from_slice(&body).map_err(|e| Problem::field("body", e.to_string()))?;
    let bytes = B64
        .decode(body.tx.trim())
        .map_err(|_| Problem::field("tx", "not base64url"))?;
    let tx = SignedTx::decode(&bytes)
        .map_err(|r| Problem::field("tx", format!("{}: {}", r.code, r.reason)))?;
    if tx.body.sender != p.participant {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "tx: its sender is not the authenticated participant (sign it with the key of the \
             participant whose token authenticates the request)",
        ));
    }
    let c = ctx.client.submit(bytes).await.map_err(|e| match e {
        crate::ledger_net::NetError::Refused(r) => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, format!("refused: {r}"))
        }
        other => Problem::from(OpError::from(other)),
    })?;
    let outcome = match &c.outcome {
        TxOutcome::Applied => json!("applied"),
        TxOutcome::Rejected(r) => json!({"rejected": {"code": r.code, "reason": r.reason}}),
    };
    Ok(Json(json!({
        "tx_id": hex::encode(c.tx_id),
        "height": c.height,
        "index": c.index,
        "outcome": outcome,
    }))
    .into_response())
}

/// `GET /v1/abe/params`.
pub async fn abe_params(State(ctx): Ctx, Extension(_p): Extension<Principal>) -> R {
    Ok(Json(json!({
        "params": ctx.consortium.file.abe_public_params,
        "threshold": ctx.consortium.file.threshold,
        "validators": ctx.consortium.n(),
    }))
    .into_response())
}

/// `POST /v1/abe/partial-key`.
pub async fn abe_partial(State(ctx): Ctx, Extension(p): Extension<Principal>) -> R {
    let attrs: Vec<String> = {
        let st = ctx.ledger.read();
        let mut a: Vec<String> = st
            .attributes_at(&p.participant, st.height())
            .into_iter()
            .map(str::to_owned)
            .collect();
        a.sort();
        a
    };
    if attrs.is_empty() {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "you hold no attributes on the ledger: ask the attribute authority to assign them",
        ));
    }
    let pp = ctx.consortium.abe_params.clone();
    let ctx2 = ctx.clone();
    let user = p.participant.0;
    let a2 = attrs.clone();
    let partial: PartialKey = tokio::task::spawn_blocking(move || {
        ctx2.abe_share
            .issue_partial(&pp, &user, &a2, &mut rand::rngs::OsRng)
    })
    .await
    .map_err(|e| Problem::from(OpError::Internal(e.to_string())))?
    .map_err(|e| Problem::from(OpError::Internal(e.to_string())))?;
    Ok(Json(json!({
        "index": partial.index(),
        "attributes": attrs,
        "partial": b64(&partial.to_bytes()),
    }))
    .into_response())
}

fn capsule_json(c: &ehr_ledger::state::Capsule) -> Value {
    json!({
        "id": hex::encode(c.id.0),
        "owner": c.owner.to_string(),
        "policy": c.policy,
        "epoch": c.epoch,
        "wrapped_search_key": b64(&c.wrapped_search_key),
        "published_at": c.published_at,
    })
}

/// `GET /v1/capsules`.
pub async fn get_capsules(State(ctx): Ctx, Extension(_p): Extension<Principal>) -> R {
    let st = ctx.ledger.read();
    let list: Vec<Value> = st.capsules().map(capsule_json).collect();
    Ok(Json(json!({"capsules": list})).into_response())
}

/// `GET /v1/capsules/{id}`.
pub async fn get_capsule(
    State(ctx): Ctx,
    Extension(_p): Extension<Principal>,
    Path(id): Path<String>,
) -> R {
    let id = hex32("id", &id)?;
    let st = ctx.ledger.read();
    let c = st.capsule(&ehr_ledger::tx::CapsuleId(id)).ok_or_else(|| {
        Problem::field(
            "id",
            "no capsule with this id on the ledger (list them with GET /v1/capsules)",
        )
        .with_status(StatusCode::NOT_FOUND)
    })?;
    Ok(Json(capsule_json(c)).into_response())
}

/// `GET /v1/participants/{id}`.
pub async fn get_participant(
    State(ctx): Ctx,
    Extension(_p): Extension<Principal>,
    Path(id): Path<String>,
) -> R {
    let id = parse_participant("id", &id)?;
    let st = ctx.ledger.read();
    let p = st.participant(&id).ok_or_else(|| {
        Problem::field(
            "id",
            "no participant with this id is registered on the ledger",
        )
        .with_status(StatusCode::NOT_FOUND)
    })?;
    Ok(Json(json!({
        "id": p.id.to_string(),
        "key": hex::encode(p.key),
        "role": format!("{:?}", p.role),
        "label": p.label,
        "registered_at": p.registered_at,
        "nonce": st.nonce(&id),
        "attributes": st.attributes_at(&id, st.height()),
    }))
    .into_response())
}

/// `GET /v1/ledger/head`.
pub async fn ledger_head(State(ctx): Ctx, Extension(_p): Extension<Principal>) -> R {
    let s = *ctx.status.borrow();
    let root = ehr_ledger::app::App::state_root(&ctx.ledger);
    Ok(Json(json!({
        "height": s.height,
        "hash": hex::encode(s.head),
        "view": s.view,
        "state_root": hex::encode(root),
    }))
    .into_response())
}

/// `GET /v1/ledger/blocks/{height}`.
pub async fn ledger_block(
    State(ctx): Ctx,
    Extension(_p): Extension<Principal>,
    Path(h): Path<String>,
) -> R {
    let h: u64 = h
        .parse()
        .map_err(|_| Problem::field("height", "must be a block height (a non-negative integer)"))?;
    let b = ctx
        .store
        .block(h)
        .map_err(|e| Problem::from(OpError::Internal(e.to_string())))?
        .ok_or_else(|| {
            let head = ctx.ledger.read().height();
            Problem::field(
                "height",
                format!(
                    "no block at height {h} on this node (the ledger head is at {head}; blocks \
                     before a state-transfer checkpoint are not stored here)"
                ),
            )
            .with_status(StatusCode::NOT_FOUND)
        })?;
    Ok(Json(json!({
        "header": header_json(&b.header),
        "txs": b.txs.iter().map(|t| b64(t)).collect::<Vec<_>>(),
        "cert": b64(&postcard::to_stdvec(&b.cert).expect("invariant: certificates serialise")),
    }))
    .into_response())
}

// ---------------------------------------------------------------------------------------------
// FHIR flavour
// ---------------------------------------------------------------------------------------------

async fn fhir_upload(
    ctx: &Arc<NodeCtx>,
    p: &Principal,
    req: Request,
    want_type: Option<String>,
) -> R {
    must_be_hospital(ctx, p)?;
    let capsule = ctx.resolve_capsule(None).map_err(Problem::from)?;
    let ctype = content_type(req.headers());
    if InputFormat::from_media_type(&ctype) != Some(InputFormat::Json) {
        return Err(
            Problem::field("content-type", "must be application/fhir+json")
                .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE),
        );
    }
    let body = read_body(ctx, req.into_body()).await?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| Problem::field("body", format!("not JSON: {e}")))?;
    let rt = v.get("resourceType").and_then(Value::as_str).unwrap_or("");
    match &want_type {
        Some(t) if t != rt => {
            return Err(Problem::field(
                "resourceType",
                format!("the body's resourceType does not match the URL's type {t}"),
            ));
        }
        None if rt != "Bundle" => {
            return Err(Problem::field("resourceType", "POST /fhir takes a Bundle"));
        }
        _ => {}
    }
    let bundle_type = if want_type.is_none() {
        match v.get("type").and_then(Value::as_str) {
            Some(t @ ("transaction" | "batch")) => Some(t.to_owned()),
            Some(other) => {
                return Err(Problem::field(
                    "type",
                    format!(
                        "POST /fhir takes a transaction or batch Bundle, not a `{other}` Bundle \
                         (to store a Bundle as one document, POST it to /fhir/Bundle)"
                    ),
                ));
            }
            None => {
                return Err(Problem::field(
                    "type",
                    "missing: POST /fhir takes a transaction or batch Bundle",
                ));
            }
        }
    } else {
        None
    };
    if bundle_type.is_some() {
        let entries = v.get("entry").and_then(Value::as_array);
        for (i, e) in entries.into_iter().flatten().enumerate() {
            let method = e.pointer("/request/method").and_then(Value::as_str);
            if method.is_some_and(|m| m != "POST") {
                return Err(Problem::field(
                    format!("entry[{i}].request.method"),
                    "only POST (create) is supported: records are immutable",
                ));
            }
        }
    }
    drop(v);
    let docs = if want_type.as_deref() == Some("Bundle") {
        // A Bundle posted as a resource is one document.
        let ex = crate::fhir::extract(&body, InputFormat::Json, &ExtractConfig::default())
            .map_err(|e| Problem::field("body", e.to_string()))?;
        vec![(body.to_vec(), ex.keywords.into_iter().collect())]
    } else {
        fhir_records(&body, InputFormat::Json)?
    };
    drop(body);
    let (status, body, first) = match bundle_type.as_deref() {
        None => {
            let ups = upload_fhir_docs(ctx, docs, capsule, None).await?;
            let cid = ups[0].cid;
            let body = json!({"resourceType":"OperationOutcome","issue":[{"severity":"information","code":"informational","diagnostics":format!("stored as {cid}")}]});
            (StatusCode::CREATED, body, Some(cid))
        }
        Some("transaction") => {
            let docs = docs
                .into_iter()
                .map(|(bytes, kws)| (bytes, search_keywords(&kws)))
                .collect();
            let ups = ctx
                .upload_plain_atomic(docs, capsule, None)
                .await
                .map_err(Problem::from)?;
            let entries: Vec<Value> = ups.iter().map(fhir_created_entry).collect();
            let body =
                json!({"resourceType":"Bundle","type":"transaction-response","entry":entries});
            (StatusCode::OK, body, None)
        }
        Some(_) => {
            let results = upload_fhir_docs_each(ctx, docs, capsule).await;
            let entries: Vec<Value> = results
                .into_iter()
                .map(|r| match r {
                    Ok(u) => fhir_created_entry(&u),
                    Err(p) => json!({"response": {
                        "status": p.status.as_u16().to_string(),
                        "outcome": {"resourceType": "OperationOutcome", "issue": [{
                            "severity": "error",
                            "code": "processing",
                            "diagnostics": p.detail,
                        }]},
                    }}),
                })
                .collect();
            let body = json!({"resourceType":"Bundle","type":"batch-response","entry":entries});
            (StatusCode::OK, body, None)
        }
    };
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json"),
    );
    if let Some(cid) = first {
        r.headers_mut().insert(
            header::LOCATION,
            HeaderValue::from_str(&format!("/v1/records/{cid}"))
                .expect("invariant: a CID is header-safe"),
        );
    }
    Ok(r)
}

/// A transaction/batch-response entry for a stored record.
fn fhir_created_entry(u: &Uploaded) -> Value {
    json!({"response": {
        "status": "201 Created",
        "location": format!("/v1/records/{}", u.cid),
        "etag": format!("W/\"{}\"", u.height),
    }})
}

/// `POST /fhir/{type}`.
pub async fn fhir_post_type(
    State(ctx): Ctx,
    Extension(p): Extension<Principal>,
    Path(t): Path<String>,
    req: Request,
) -> R {
    let r = FHIR_ERRORS
        .scope(true, async {
            fhir_upload(&ctx, &p, req, Some(t)).await.into_response()
        })
        .await;
    Ok(r)
}

/// `POST /fhir`.
pub async fn fhir_post_bundle(
    State(ctx): Ctx,
    Extension(p): Extension<Principal>,
    req: Request,
) -> R {
    let r = FHIR_ERRORS
        .scope(true, async {
            fhir_upload(&ctx, &p, req, None).await.into_response()
        })
        .await;
    Ok(r)
}

/// `GET /fhir/metadata`.
pub async fn fhir_metadata(State(ctx): Ctx) -> Response {
    let types: Vec<Value> = crate::fhir::params::token_params()
        .iter()
        .map(|p| p.resource.as_str())
        .filter(|r| *r != "*")
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|t| json!({"type": t, "interaction": [{"code": "create"}]}))
        .collect();
    let body = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "kind": "instance",
        "date": "2026-01-01",
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "software": {"name": "ehr", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": format!("encrypted EHR node of {}", ctx.config.hospital.label)},
        "rest": [{"mode": "server", "security": {"description": "SMART Backend Services style client assertions (Bearer JWT)"}, "resource": types, "interaction": [{"code": "transaction"}]}],
    });
    let mut r = body.to_string().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json"),
    );
    r
}

// ---------------------------------------------------------------------------------------------
// IPFS gateway
// ---------------------------------------------------------------------------------------------

/// Query of `GET /ipfs/{cid}`.
#[derive(Debug, Deserialize)]
pub struct GatewayQuery {
    /// `raw` or `car`.
    pub format: Option<String>,
}

/// `GET /ipfs/{cid}`: the trustless gateway (raw block or CAR), authorised like a record read.
pub async fn ipfs_gateway(
    State(ctx): Ctx,
    Extension(p): Extension<Principal>,
    Path(cid): Path<String>,
    Query(q): Query<GatewayQuery>,
    headers: HeaderMap,
) -> R {
    let cid = parse_cid(&cid)?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = match q.format.as_deref() {
        Some("raw") => "raw",
        Some("car") => "car",
        Some(_) => return Err(Problem::field("format", "must be raw or car")),
        None if accept.contains("application/vnd.ipld.car") => "car",
        None if accept.contains("application/vnd.ipld.raw") => "raw",
        None => {
            return Err(Problem::new(
                StatusCode::NOT_ACCEPTABLE,
                "ask for application/vnd.ipld.raw or application/vnd.ipld.car (or ?format=)",
            ));
        }
    };
    authorise_and_audit(&ctx, &p, &cid, Purpose::Research).await?;
    let (ctype, body) = if format == "raw" {
        let b = ctx
            .blockstore
            .get_block(cid)
            .await
            .map_err(|e| store_problem(&cid, e))?;
        ("application/vnd.ipld.raw", b.to_vec())
    } else {
        let mut out = Vec::new();
        ctx.blockstore
            .export_car(cid, &mut out)
            .await
            .map_err(|e| store_problem(&cid, e))?;
        ("application/vnd.ipld.car; version=1", out)
    };
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=0"),
    );
    h.insert(
        "x-ipfs-path",
        HeaderValue::from_str(&format!("/ipfs/{cid}")).expect("invariant: a CID is header-safe"),
    );
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{cid}.{format}\"")).expect("invariant: header-safe"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    Ok(r)
}
