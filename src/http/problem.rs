//! RFC 9457 problem details (`application/problem+json`), FHIR OperationOutcomes, and the one
//! place that maps node errors to HTTP statuses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::node::upload::OpError;

tokio::task_local! {
    /// The current request's id (set by the request-id middleware).
    pub static REQUEST_ID: String;
    /// Whether the current route answers errors as FHIR OperationOutcomes.
    pub static FHIR_ERRORS: bool;
}

/// The current request id, if inside a request.
pub fn request_id() -> String {
    REQUEST_ID.try_with(|s| s.clone()).unwrap_or_default()
}

/// One field error of a problem.
#[derive(Debug, Clone)]
pub struct FieldError {
    /// The field.
    pub field: String,
    /// Why.
    pub reason: String,
}

/// A problem response.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The status.
    pub status: StatusCode,
    /// Short title.
    pub title: String,
    /// Explanation (never secrets, never health data).
    pub detail: String,
    /// The request path.
    pub instance: Option<String>,
    /// Field errors.
    pub errors: Vec<FieldError>,
}

impl Problem {
    /// A problem with `status` and `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Problem {
            status,
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            detail: detail.into(),
            instance: None,
            errors: Vec::new(),
        }
    }

    /// A 400 naming `field`.
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        let (field, reason) = (field.into(), reason.into());
        let mut p = Problem::new(StatusCode::BAD_REQUEST, format!("{field}: {reason}"));
        p.errors.push(FieldError { field, reason });
        p
    }

    /// The same problem with another status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self.title = status.canonical_reason().unwrap_or("Error").to_owned();
        self
    }
}

impl From<OpError> for Problem {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Input { field, reason } => Problem::field(field, reason),
            OpError::Forbidden(d) => Problem::new(StatusCode::FORBIDDEN, d),
            OpError::NotFound(d) => Problem::new(StatusCode::NOT_FOUND, d),
            OpError::Rejected { code, reason } => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("the ledger rejected the transaction: {code}: {reason}"),
            ),
            OpError::Unavailable(d) | OpError::OutcomeUnknown(d) => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, d)
            }
            OpError::TooLarge(d) => Problem::new(StatusCode::PAYLOAD_TOO_LARGE, d),
            OpError::Internal(d) => {
                // The request id is what the client's problem shows: log it to find this line.
                tracing::error!(error = %d, request_id = %request_id(), "internal error");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error (see the node's logs with this request id)",
                )
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let rid = request_id();
        let fhir = FHIR_ERRORS.try_with(|f| *f).unwrap_or(false);
        let (body, ctype) = if fhir {
            let code = match self.status.as_u16() {
                401 | 403 => "security",
                404 => "not-found",
                413 => "too-costly",
                400 | 415 | 422 => "invalid",
                503 | 504 => "transient",
                _ => "exception",
            };
            let mut issues: Vec<_> = self
                .errors
                .iter()
                .map(|e| {
                    json!({"severity":"error","code":code,"diagnostics":e.reason,"expression":[e.field]})
                })
                .collect();
            if issues.is_empty() {
                issues.push(json!({"severity":"error","code":code,"diagnostics":self.detail}));
            }
            (
                json!({"resourceType":"OperationOutcome","id":rid,"issue":issues}),
                "application/fhir+json",
            )
        } else {
            let errors: Vec<_> = self
                .errors
                .iter()
                .map(|e| json!({"field":e.field,"reason":e.reason}))
                .collect();
            (
                json!({
                    "type":"about:blank",
                    "title":self.title,
                    "status":self.status.as_u16(),
                    "detail":self.detail,
                    "instance":self.instance,
                    "request_id":rid,
                    "errors":errors,
                }),
                "application/problem+json",
            )
        };
        let mut r = (self.status, body.to_string()).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        r
    }
}
