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
use axum::http::{HeaderValue, StatusCode};
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
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "no such route").into_response() })
        .layer(middleware::from_fn_with_state(ctx.clone(), observe))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(ctx)
}

async fn authenticate(State(ctx): State<Arc<NodeCtx>>, mut req: Request, next: Next) -> Response {
    let is_fhir = req.uri().path().starts_with("/fhir");
    match ctx.auth.authenticate(&ctx, req.headers()) {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(p) => {
            problem::FHIR_ERRORS
                .scope(is_fhir, async move { p.into_response() })
                .await
        }
    }
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
            match tokio::time::timeout(timeout, next.run(req)).await {
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
