//! Bearer-token authentication of API requests against the ledger's keys ([`crate::auth`]).

use axum::http::{HeaderMap, StatusCode, header};

use super::problem::Problem;
use crate::auth::{AuthConfig, AuthError, Principal, Verifier, bearer_token};
use crate::node::NodeCtx;

/// Verifies client assertions for this chain.
#[derive(Debug)]
pub struct Authenticator {
    verifier: Verifier,
    chain_id: String,
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Authenticator {
    /// An authenticator for `chain_id` with the default limits (300 s lifetime, 60 s skew).
    pub fn new(chain_id: &str) -> Self {
        Authenticator {
            verifier: Verifier::new(AuthConfig::default()),
            chain_id: chain_id.to_owned(),
        }
    }

    /// Authenticates a request's `Authorization` header. 401 problems say what is wrong
    /// without echoing the token; a full replay cache is a 503 and too many live tokens of
    /// one participant a 429 (the caller retries later, its credentials are fine).
    pub fn authenticate(&self, ctx: &NodeCtx, headers: &HeaderMap) -> Result<Principal, Problem> {
        let value = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().map_err(|_| AuthError::NotBearer))
            .transpose();
        let token = value.and_then(bearer_token);
        let result = token.and_then(|t| {
            let st = ctx.ledger.read();
            self.verifier.verify(t, &self.chain_id, now_unix(), &*st)
        });
        result.map_err(|e| {
            // Load the caller cannot fix by re-authenticating is not a 401: it retries later.
            let status = match e {
                AuthError::TooManyLiveTokens => StatusCode::TOO_MANY_REQUESTS,
                AuthError::ReplayCacheFull => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::UNAUTHORIZED,
            };
            ctx.metrics
                .auth_failures
                .get_or_create(&crate::node::metrics::AuthLabels {
                    kind: if status == StatusCode::UNAUTHORIZED {
                        "unauthenticated".into()
                    } else {
                        "throttled".into()
                    },
                })
                .inc();
            Problem::new(status, e.to_string())
        })
    }
}
