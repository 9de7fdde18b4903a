//! The route table: method, path, summary and who may call. The router, `/openapi.json` and
//! the documentation test are all generated from it, so a route cannot exist undocumented.

use std::sync::Arc;

use axum::routing::{MethodRouter, delete, get, post};
use serde_json::{Map, Value, json};

use super::api;
use crate::node::NodeCtx;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (operations endpoints).
    Public,
    /// Any registered participant with a valid bearer token.
    Participant,
    /// This node's hospital only.
    Hospital,
    /// Participants the ledger authorises for the record (audited).
    Authorised,
}

impl Access {
    /// Whether a bearer token is required.
    pub fn needs_token(self) -> bool {
        self != Access::Public
    }

    fn describe(self) -> &'static str {
        match self {
            Access::Public => "anyone",
            Access::Participant => "any registered participant (bearer token)",
            Access::Hospital => "this node's hospital (bearer token)",
            Access::Authorised => {
                "participants the ledger authorises for the record (bearer token; audited)"
            }
        }
    }
}

/// One route.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path template (axum syntax).
    pub path: &'static str,
    /// One-line summary.
    pub summary: &'static str,
    /// Who may call it.
    pub access: Access,
}

macro_rules! routes {
    ($($m:literal $p:literal $a:ident $s:literal,)*) => {
        /// Every route of the API.
        pub const ROUTES: &[Route] = &[$(Route { method: $m, path: $p, summary: $s, access: Access::$a },)*];
    };
}

routes! {
    "GET" "/healthz" Public "Liveness: 200 while the process runs.",
    "GET" "/readyz" Public "Readiness: 200 when the ledger is in normal operation, the index is at the ledger head and the hospital's capsule is published; else 503.",
    "GET" "/metrics" Public "Prometheus metrics.",
    "GET" "/openapi.json" Public "This API description.",
    "POST" "/v1/records" Hospital "Upload records (FHIR JSON/Bundle/NDJSON, pre-sealed, or binary); 201 once committed.",
    "GET" "/v1/records/{cid}" Authorised "Read a record: audited on the ledger, then its sealed bytes with the wrapped key.",
    "GET" "/v1/records/{cid}/meta" Participant "A record's ledger entry and grants.",
    "GET" "/v1/records/{cid}/proof" Participant "Inclusion proof of the transaction that registered a record.",
    "POST" "/v1/search" Participant "Search with trapdoors; returns only records the caller may read.",
    "POST" "/v1/grants" Hospital "Grant a named participant access to a record (its data key rewrapped for them).",
    "GET" "/v1/grants" Participant "List grants by cid or grantee.",
    "DELETE" "/v1/grants/{id}" Hospital "Revoke a grant.",
    "POST" "/v1/transactions" Participant "Submit a transaction the caller signed; answers after commit.",
    "GET" "/v1/abe/params" Participant "The CP-ABE public parameters.",
    "POST" "/v1/abe/partial-key" Participant "This validator's partial attribute key for the caller's current ledger attributes.",
    "GET" "/v1/capsules" Participant "Every published capsule.",
    "GET" "/v1/capsules/{id}" Participant "One capsule.",
    "GET" "/v1/participants/{id}" Participant "One participant, its nonce and attributes.",
    "GET" "/v1/ledger/head" Participant "The ledger head.",
    "GET" "/v1/ledger/blocks/{height}" Participant "One committed block.",
    "POST" "/fhir/{type}" Hospital "FHIR create: store one resource of this type as a record.",
    "POST" "/fhir" Hospital "FHIR transaction (all entries in one ledger transaction, or none) or batch (entry by entry) Bundle: each entry a record.",
    "GET" "/fhir/metadata" Public "FHIR CapabilityStatement.",
    "GET" "/ipfs/{cid}" Authorised "Trustless gateway: raw block or CAR (audited like a read).",
}

/// The handler of a route. Panics on a table entry without a handler (a broken invariant the
/// tests catch).
pub fn handler(r: &Route) -> MethodRouter<Arc<NodeCtx>> {
    match (r.method, r.path) {
        ("GET", "/healthz") => get(api::healthz),
        ("GET", "/readyz") => get(api::readyz),
        ("GET", "/metrics") => get(api::metrics),
        ("GET", "/openapi.json") => get(api::openapi),
        ("POST", "/v1/records") => post(api::post_records),
        ("GET", "/v1/records/{cid}") => get(api::get_record),
        ("GET", "/v1/records/{cid}/meta") => get(api::get_record_meta),
        ("GET", "/v1/records/{cid}/proof") => get(api::get_record_proof),
        ("POST", "/v1/search") => post(api::post_search),
        ("POST", "/v1/grants") => post(api::post_grant),
        ("GET", "/v1/grants") => get(api::get_grants),
        ("DELETE", "/v1/grants/{id}") => delete(api::delete_grant),
        ("POST", "/v1/transactions") => post(api::post_transaction),
        ("GET", "/v1/abe/params") => get(api::abe_params),
        ("POST", "/v1/abe/partial-key") => post(api::abe_partial),
        ("GET", "/v1/capsules") => get(api::get_capsules),
        ("GET", "/v1/capsules/{id}") => get(api::get_capsule),
        ("GET", "/v1/participants/{id}") => get(api::get_participant),
        ("GET", "/v1/ledger/head") => get(api::ledger_head),
        ("GET", "/v1/ledger/blocks/{height}") => get(api::ledger_block),
        ("POST", "/fhir/{type}") => post(api::fhir_post_type),
        ("POST", "/fhir") => post(api::fhir_post_bundle),
        ("GET", "/fhir/metadata") => get(api::fhir_metadata),
        ("GET", "/ipfs/{cid}") => get(api::ipfs_gateway),
        (m, p) => panic!("route table invariant: no handler for {m} {p}"),
    }
}

/// The OpenAPI 3.1 document generated from [`ROUTES`].
pub fn openapi() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for r in ROUTES {
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|n| json!({"name": n, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = json!({
            "summary": r.summary,
            "description": format!("Who may call: {}.", r.access.describe()),
            "parameters": params,
            "responses": {
                "default": {"description": "application/problem+json (RFC 9457) on errors; FHIR routes answer an OperationOutcome"}
            },
        });
        if r.access.needs_token() {
            op["security"] = json!([{"bearer": []}]);
        }
        paths
            .entry(r.path.to_owned())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("invariant: path items are objects")
            .insert(r.method.to_ascii_lowercase(), op);
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "ehr node API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA, ES384 or RS384 client assertion)"}}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_a_handler_and_is_documented() {
        let doc = openapi();
        for r in ROUTES {
            let _ = handler(r);
            let op = &doc["paths"][r.path][r.method.to_ascii_lowercase()];
            assert!(
                op["summary"].is_string(),
                "{} {} undocumented",
                r.method,
                r.path
            );
            assert_eq!(
                op["security"].is_array(),
                r.access.needs_token(),
                "{}",
                r.path
            );
        }
        // Everything under /v1, /fhir (but the capability statement) and /ipfs needs a token.
        for r in ROUTES {
            let protected = r.path.starts_with("/v1/")
                || r.path.starts_with("/ipfs/")
                || (r.path.starts_with("/fhir") && r.path != "/fhir/metadata");
            assert_eq!(r.access.needs_token(), protected, "{} {}", r.method, r.path);
        }
        let n: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_object().unwrap().len())
            .sum();
        assert_eq!(n, ROUTES.len(), "no duplicate (method, path)");
    }
}
