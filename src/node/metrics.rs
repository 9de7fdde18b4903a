//! The node's Prometheus metrics (`GET /metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a request metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route template, such as `/v1/records/{cid}`.
    pub route: String,
    /// The HTTP method.
    pub method: String,
    /// The status code.
    pub status: u16,
}

/// Labels of a latency metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    /// The route template.
    pub route: String,
}

/// Labels of an authentication failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    /// `unauthenticated` (401) or `forbidden` (403).
    pub kind: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric the node exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests by route, method and status.
    pub requests: Family<RouteLabels, Counter>,
    /// Request latency by route, in seconds.
    pub latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    /// Bytes of record uploads received.
    pub upload_bytes: Counter,
    /// Records registered through this node.
    pub records_uploaded: Counter,
    /// The ledger's executed height.
    pub ledger_height: Gauge,
    /// The ledger's view.
    pub ledger_view: Gauge,
    /// The search index's applied height.
    pub index_height: Gauge,
    /// Records waiting to be fetched and pinned from peers.
    pub replication_queue: Gauge,
    /// Records fetched and pinned from peers.
    pub replication_done: Counter,
    /// Replication attempts that failed (retried later).
    pub replication_failures: Counter,
    /// Authentication and authorisation failures.
    pub auth_failures: Family<AuthLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ehr");
        let requests = Family::<RouteLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let m = Metrics {
            requests,
            latency,
            upload_bytes: Counter::default(),
            records_uploaded: Counter::default(),
            ledger_height: Gauge::default(),
            ledger_view: Gauge::default(),
            index_height: Gauge::default(),
            replication_queue: Gauge::default(),
            replication_done: Counter::default(),
            replication_failures: Counter::default(),
            auth_failures: Family::default(),
            registry: Registry::default(),
        };
        registry.register("http_requests", "HTTP requests", m.requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            m.latency.clone(),
        );
        registry.register(
            "upload_bytes",
            "Bytes of uploaded records",
            m.upload_bytes.clone(),
        );
        registry.register(
            "records_uploaded",
            "Records registered through this node",
            m.records_uploaded.clone(),
        );
        registry.register(
            "ledger_height",
            "Executed ledger height",
            m.ledger_height.clone(),
        );
        registry.register("ledger_view", "Current PBFT view", m.ledger_view.clone());
        registry.register(
            "index_height",
            "Search index applied height",
            m.index_height.clone(),
        );
        registry.register(
            "replication_queue",
            "Records waiting to be fetched and pinned",
            m.replication_queue.clone(),
        );
        registry.register(
            "replication_pinned",
            "Records fetched from peers and pinned",
            m.replication_done.clone(),
        );
        registry.register(
            "replication_failures",
            "Failed replication attempts",
            m.replication_failures.clone(),
        );
        registry.register(
            "auth_failures",
            "Authentication (401) and authorisation (403) failures",
            m.auth_failures.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("invariant: encoding metrics into a String succeeds");
        out
    }
}
