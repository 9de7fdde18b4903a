//! The node's Prometheus metrics (`GET /metrics`): the `ehr_*` metrics of the node and, on
//! Linux, the standard process-collector metrics (`process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_cpu_seconds_total`) read from `/proc/self` on each scrape. Under `ehr dev` the four
//! replicas share one process, so each node reports the same process figures.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
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
    /// The unprefixed process metrics (their standard names have no `ehr_` prefix).
    process: Registry,
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
            process: Registry::default(),
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
        let mut process = Registry::default();
        process.register_collector(Box::new(ProcessCollector));
        Metrics {
            registry,
            process,
            ..m
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &self.process))
            .and_then(|()| encode_eof(&mut out))
            .expect("invariant: encoding metrics into a String succeeds");
        out
    }
}

/// One reading of a process's resources from `/proc/<pid>` (Linux).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessSample {
    /// Resident set size (`VmRSS`), in bytes.
    pub resident_bytes: u64,
    /// Virtual memory size (`VmSize`), in bytes.
    pub virtual_bytes: u64,
    /// The anonymous part of the resident set (`RssAnon`: heap, allocator arenas, stacks; the
    /// rest is file-backed, such as memory-mapped index files), if the kernel reports it.
    pub anon_bytes: Option<u64>,
    /// Open file descriptors, if the directory could be listed.
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors, if known.
    pub max_fds: Option<u64>,
    /// User plus system CPU time, in seconds, if known.
    pub cpu_seconds: Option<f64>,
}

/// Clock ticks per second of the times in `/proc/<pid>/stat` (`USER_HZ`, fixed at 100 in
/// Linux's user-space ABI whatever the kernel's internal tick rate).
const USER_HZ: f64 = 100.0;

/// Reads the resources of process `pid` (this process if `None`) from `/proc`. `None` when
/// `/proc` is absent (not Linux) or the process is gone.
pub fn read_process(pid: Option<u32>) -> Option<ProcessSample> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let dir = match pid {
        Some(p) => std::path::PathBuf::from(format!("/proc/{p}")),
        None => std::path::PathBuf::from("/proc/self"),
    };
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let (resident_bytes, virtual_bytes) = parse_status(&status)?;
    let anon_bytes = status_bytes(&status, "RssAnon:");
    let open_fds = std::fs::read_dir(dir.join("fd"))
        .ok()
        .map(|d| d.count() as u64);
    let max_fds = std::fs::read_to_string(dir.join("limits"))
        .ok()
        .and_then(|l| parse_max_open_files(&l));
    let cpu_seconds = std::fs::read_to_string(dir.join("stat"))
        .ok()
        .and_then(|s| parse_stat_cpu_ticks(&s))
        .map(|ticks| ticks as f64 / USER_HZ);
    Some(ProcessSample {
        resident_bytes,
        virtual_bytes,
        anon_bytes,
        open_fds,
        max_fds,
        cpu_seconds,
    })
}

/// `(VmRSS, VmSize)` in bytes from the text of `/proc/<pid>/status` (`None` if `VmRSS` is
/// missing, as for a zombie).
pub fn parse_status(text: &str) -> Option<(u64, u64)> {
    let rss = status_bytes(text, "VmRSS:")?;
    Some((rss, status_bytes(text, "VmSize:").unwrap_or(0)))
}

/// The `key` line (such as `RssAnon:`) of `/proc/<pid>/status`, in bytes (the file says kB).
pub fn status_bytes(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let rest = line[key.len()..].trim();
    let n = rest.strip_suffix("kB").unwrap_or(rest).trim();
    n.parse::<u64>().ok()?.checked_mul(1024)
}

/// `utime + stime` in clock ticks from the text of `/proc/<pid>/stat`. The command name (field
/// 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat_cpu_ticks(text: &str) -> Option<u64> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, utime field 14 and stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    utime.checked_add(stime)
}

/// The soft limit of `Max open files` from the text of `/proc/<pid>/limits`.
pub fn parse_max_open_files(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The process-collector metrics, read from `/proc/self` on every scrape.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(s) = read_process(None) else {
            return Ok(());
        };
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                Some(s.resident_bytes),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                Some(s.virtual_bytes),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                s.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                s.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            let Some(v) = value else { continue };
            let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        if let Some(cpu) = s.cpu_seconds {
            // OpenMetrics counters get their `_total` suffix from the encoder.
            let c = ConstCounter::new(cpu);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_gives_resident_and_virtual_bytes() {
        let text =
            "Name:\tehr\nVmPeak:\t  900 kB\nVmSize:\t  800 kB\nVmRSS:\t   12 kB\nThreads:\t4\n";
        assert_eq!(parse_status(text), Some((12 * 1024, 800 * 1024)));
        assert_eq!(parse_status("Name:\tzombie\nState:\tZ\n"), None);
        assert_eq!(parse_status("VmRSS:\t junk kB\n"), None);
        assert_eq!(
            status_bytes("RssAnon:\t   7 kB\n", "RssAnon:"),
            Some(7 * 1024)
        );
        assert_eq!(status_bytes(text, "RssAnon:"), None);
    }

    #[test]
    fn stat_cpu_ticks_count_fields_after_the_last_parenthesis() {
        // A command name with spaces and a `)` must not shift the fields.
        let text = "42 (we (i) rd) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1 2 3";
        assert_eq!(parse_stat_cpu_ticks(text), Some(300));
        assert_eq!(parse_stat_cpu_ticks("42 (short) S 1"), None);
        assert_eq!(parse_stat_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn limits_give_the_soft_open_files_limit() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_open_files(text), Some(1024));
        assert_eq!(parse_max_open_files("Max cpu time unlimited"), None);
    }

    #[test]
    fn exposition_has_node_and_process_metrics_and_one_eof() {
        let m = Metrics::new();
        m.records_uploaded.inc();
        let text = m.encode();
        assert!(text.contains("ehr_records_uploaded_total 1"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
        if cfg!(target_os = "linux") {
            let rss = text
                .lines()
                .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .expect("process_resident_memory_bytes is exported on Linux");
            assert!(rss > 0);
            assert!(
                text.contains("# TYPE process_cpu_seconds counter"),
                "{text}"
            );
            assert!(text.contains("process_cpu_seconds_total "), "{text}");
            assert!(text.contains("process_open_fds "), "{text}");
            assert!(!text.contains("ehr_process_"), "{text}");
        }
    }

    #[test]
    fn this_process_can_be_read_on_linux() {
        let s = read_process(None);
        if cfg!(target_os = "linux") {
            let s = s.expect("/proc/self is readable");
            assert!(s.resident_bytes > 0 && s.virtual_bytes >= s.resident_bytes);
            assert!(s.anon_bytes.is_some_and(|a| a > 0 && a <= s.resident_bytes));
            assert!(s.open_fds.is_some_and(|n| n > 0));
            let own = read_process(Some(std::process::id())).expect("/proc/<own pid>");
            assert!(own.resident_bytes > 0);
        } else {
            assert!(s.is_none());
        }
    }
}
