//! The HTTP API (axum): the routes of [`routes::ROUTES`], bearer-token authentication on every
//! route the table marks, problem+json errors with request ids, body limits, timeouts and
//! metrics.

pub mod api;
pub mod auth;
pub mod problem;
pub mod routes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

use crate::node::NodeCtx;
use crate::node::metrics::{LatencyLabels, RouteLabels};
use problem::{Problem, REQUEST_ID};

/// The router of every route in the table, with its middleware.
pub fn router(ctx: Arc<NodeCtx>) -> Router {
    let mut public = Router::new();
    let mut protected = Router::new();
    for r in routes::ROUTES {
        if r.access.needs_token() {
            protected = protected.route(r.path, routes::handler(r));
        } else {
            public = public.route(r.path, routes::handler(r));
        }
    }
    let protected =
        protected.route_layer(middleware::from_fn_with_state(ctx.clone(), authenticate));
    public
        .merge(protected)
        .fallback(|req: Request| async move {
            Problem::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no such route: {} (the routes are listed at /openapi.json)",
                    req.uri().path()
                ),
            )
            .into_response()
        })
        .method_not_allowed_fallback(|req: Request| async move {
            let allowed: Vec<&str> = routes::ROUTES
                .iter()
                .filter(|r| template_matches(r.path, req.uri().path()))
                .map(|r| r.method)
                .collect();
            let mut resp = Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "method {} is not allowed on this route: use {}",
                    req.method(),
                    allowed.join(", ")
                ),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                resp.headers_mut().insert(header::ALLOW, v);
            }
            resp
        })
        // Inside the request-id scope, so a broken invariant in a handler is a 500 problem with
        // the request id (and a log line) instead of a dropped connection.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                tracing::error!(request_id = %problem::request_id(), "a request handler panicked");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error (see the node's logs with this request id)",
                )
                .into_response()
            },
        ))
        .layer(middleware::from_fn_with_state(ctx.clone(), observe))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(ctx)
}

/// Whether a concrete path matches a route template (`{name}` matches one segment).
fn template_matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| t == p || (t.starts_with('{') && !p.is_empty()))
}

async fn authenticate(State(ctx): State<Arc<NodeCtx>>, mut req: Request, next: Next) -> Response {
    match ctx.auth.authenticate(&ctx, req.headers()) {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(p) => {
            let status = p.status;
            let mut resp = p.into_response();
            if status == StatusCode::UNAUTHORIZED {
                // RFC 6750 section 3: name the scheme; an error code only when a token was
                // presented.
                let challenge = if req.headers().contains_key(header::AUTHORIZATION) {
                    "Bearer realm=\"ehr\", error=\"invalid_token\""
                } else {
                    "Bearer realm=\"ehr\""
                };
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            } else if let Some(secs) = p_retry_after(status) {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
            }
            resp
        }
    }
}

/// The `Retry-After` of an authentication refusal that is about load, not credentials.
fn p_retry_after(status: StatusCode) -> Option<&'static str> {
    (status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE)
        .then_some("5")
}

fn fresh_request_id() -> String {
    let mut b = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

/// Request id, timeout, metrics and a request log line (method, route, status, latency: never
/// bodies, tokens or query values).
async fn observe(State(ctx): State<Arc<NodeCtx>>, req: Request, next: Next) -> Response {
    let rid = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
        .unwrap_or_else(fresh_request_id);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let timeout = Duration::from_secs(ctx.config.http.request_timeout_secs);
    let is_fhir = route.starts_with("/fhir");
    let mut resp = REQUEST_ID
        .scope(rid.clone(), async move {
            // Every error of a FHIR route (extractors, authentication, handlers, timeouts) is
            // an OperationOutcome.
            let run = problem::FHIR_ERRORS.scope(is_fhir, next.run(req));
            match tokio::time::timeout(timeout, run).await {
                Ok(r) => r,
                Err(_) => {
                    problem::FHIR_ERRORS
                        .scope(is_fhir, async {
                            Problem::new(
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!("the request took longer than {timeout:?}"),
                            )
                            .into_response()
                        })
                        .await
                }
            }
        })
        .await;
    let status = resp.status().as_u16();
    let secs = start.elapsed().as_secs_f64();
    ctx.metrics
        .requests
        .get_or_create(&RouteLabels {
            route: route.clone(),
            method: method.clone(),
            status,
        })
        .inc();
    ctx.metrics
        .latency
        .get_or_create(&LatencyLabels {
            route: route.clone(),
        })
        .observe(secs);
    if status == 403 {
        // Counted by the handlers that decide authorisation.
    }
    tracing::debug!(%method, %route, status, ms = secs * 1000.0, request_id = %rid, "request");
    resp.headers_mut().insert(
        "x-request-id",
        HeaderValue::from_str(&rid).expect("invariant: request ids are header-safe"),
    );
    resp
}

/// Serves the API on `listener` until `stop` fires, then finishes requests in flight.
pub async fn serve(
    ctx: Arc<NodeCtx>,
    listener: tokio::net::TcpListener,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let app = router(ctx);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.await;
        })
        .await
    {
        tracing::error!(error = %e, "the HTTP server failed");
    }
}
