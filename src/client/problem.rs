//! Error answers of the node (`application/problem+json`, RFC 9457, or a FHIR
//! `OperationOutcome`) parsed and rendered for people.

use std::fmt;

use serde::Deserialize;

/// Longest part of a non-JSON error body kept for the message.
const MAX_TEXT_SNIPPET: usize = 300;

/// One field error of a problem: which field, and why it was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FieldError {
    /// The field (a JSON pointer, query parameter or header name).
    #[serde(default)]
    pub field: String,
    /// Why it was rejected.
    #[serde(default)]
    pub reason: String,
}

/// A node's error answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Problem {
    /// The HTTP status.
    #[serde(default)]
    pub status: u16,
    /// A short summary of the problem type.
    #[serde(default)]
    pub title: String,
    /// What happened in this case.
    #[serde(default)]
    pub detail: Option<String>,
    /// The problem type URI.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The node's request id (also in the `x-request-id` header), for its operators.
    #[serde(default)]
    pub request_id: Option<String>,
    /// Errors in individual fields.
    #[serde(default)]
    pub errors: Vec<FieldError>,
}

impl Problem {
    /// A problem with only a status and a title (when the body said nothing useful).
    pub fn from_status(status: u16, title: impl Into<String>) -> Problem {
        Problem {
            status,
            title: title.into(),
            ..Problem::default()
        }
    }

    /// Parses an error body: problem+json, a FHIR OperationOutcome, or else a snippet of the
    /// text. `status` and `request_id` (from the header) fill what the body leaves out.
    pub fn parse(status: u16, request_id: Option<&str>, body: &[u8]) -> Problem {
        let mut p = match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) if v.get("resourceType").and_then(|t| t.as_str()) == Some("OperationOutcome") => {
                from_operation_outcome(&v)
            }
            Ok(v) if v.is_object() => serde_json::from_value::<Problem>(v).unwrap_or_default(),
            _ => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let mut snippet: String = text.chars().take(MAX_TEXT_SNIPPET).collect();
                if snippet.len() < text.len() {
                    snippet.push_str("...");
                }
                Problem {
                    detail: (!snippet.is_empty()).then_some(snippet),
                    ..Problem::default()
                }
            }
        };
        if p.status == 0 {
            p.status = status;
        }
        if p.title.is_empty() {
            p.title = reason_phrase(status).to_owned();
        }
        if p.request_id.is_none() {
            p.request_id = request_id.map(str::to_owned);
        }
        p
    }

    /// Whether this is a client error (4xx): the node refused the request.
    pub fn is_refusal(&self) -> bool {
        (400..500).contains(&self.status)
    }
}

fn from_operation_outcome(v: &serde_json::Value) -> Problem {
    let mut p = Problem {
        title: "FHIR request rejected".into(),
        ..Problem::default()
    };
    for issue in v
        .get("issue")
        .and_then(|i| i.as_array())
        .into_iter()
        .flatten()
    {
        let text = issue
            .get("diagnostics")
            .and_then(|d| d.as_str())
            .or_else(|| issue.pointer("/details/text").and_then(|d| d.as_str()))
            .unwrap_or("")
            .to_owned();
        let field = issue
            .get("expression")
            .and_then(|e| e.as_array())
            .and_then(|e| e.first())
            .and_then(|e| e.as_str())
            .unwrap_or("-")
            .to_owned();
        p.errors.push(FieldError {
            field,
            reason: text,
        });
    }
    p
}

/// The standard reason phrase of a status (a fallback title).
fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

impl fmt::Display for Problem {
    /// `403 Forbidden: detail` then one indented line per field error and the request id.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.title)?;
        if let Some(d) = self.detail.as_deref().filter(|d| !d.is_empty()) {
            write!(f, ": {d}")?;
        }
        for e in &self.errors {
            // The node often titles a single field error with that error: say it once.
            let line = format!("{}: {}", e.field, e.reason);
            if self.errors.len() == 1 && (line == self.title || Some(&line) == self.detail.as_ref())
            {
                continue;
            }
            write!(f, "\n  - {line}")?;
        }
        if let Some(id) = &self.request_id {
            write!(f, "\n  (request id {id})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_problem_json_with_field_errors() {
        let body = br#"{"type":"about:blank","title":"Invalid request","status":422,
            "detail":"the search query is malformed","instance":"/v1/search",
            "request_id":"r-1","errors":[{"field":"/limit","reason":"must be 1 to 1000"},
            {"field":"/query/keyword/0","reason":"not a trapdoor"}]}"#;
        let p = Problem::parse(422, None, body);
        assert!(p.is_refusal());
        assert_eq!(p.errors.len(), 2);
        let s = p.to_string();
        assert_eq!(
            s,
            "422 Invalid request: the search query is malformed\n  - /limit: must be 1 to 1000\n  \
             - /query/keyword/0: not a trapdoor\n  (request id r-1)"
        );
    }

    #[test]
    fn fills_status_title_and_request_id_from_the_response() {
        let p = Problem::parse(503, Some("abc"), b"");
        assert_eq!(p.status, 503);
        assert_eq!(p.title, "Service Unavailable");
        assert_eq!(p.request_id.as_deref(), Some("abc"));
        assert!(!p.is_refusal());
        assert_eq!(p.to_string(), "503 Service Unavailable\n  (request id abc)");
    }

    #[test]
    fn reads_operation_outcomes() {
        let body = br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error",
            "code":"invalid","diagnostics":"resourceType must be Observation",
            "expression":["Observation.resourceType"]}]}"#;
        let p = Problem::parse(400, None, body);
        assert_eq!(p.title, "FHIR request rejected");
        assert_eq!(p.errors[0].field, "Observation.resourceType");
        assert_eq!(p.errors[0].reason, "resourceType must be Observation");
    }

    #[test]
    fn keeps_only_a_snippet_of_text_bodies() {
        let body = "x".repeat(5000);
        let p = Problem::parse(502, None, body.as_bytes());
        let d = p.detail.unwrap();
        assert_eq!(d.len(), MAX_TEXT_SNIPPET + 3);
        assert!(d.ends_with("..."));
    }

    #[test]
    fn a_single_field_error_repeated_in_the_title_is_said_once() {
        let body = br#"{"title":"limit: must be 1 to 1000","status":400,
            "errors":[{"field":"limit","reason":"must be 1 to 1000"}]}"#;
        let p = Problem::parse(400, None, body);
        assert_eq!(p.to_string(), "400 limit: must be 1 to 1000");
    }

    #[test]
    fn garbage_json_keeps_the_status() {
        let p = Problem::parse(400, None, br#"{"status":"not a number"}"#);
        assert_eq!(p.status, 400);
        assert_eq!(p.title, "Bad Request");
    }
}
