//! The pure parts of `ehr load`: the synthetic workload (FHIR R4 records of about 5 KB with
//! codes from a fixed synthetic vocabulary, and the searches run against them), latency and
//! memory summaries, and the report (text and JSON).
//!
//! Every record is obviously fictitious: ids `synthetic-…`, the `HTEST` security label, a
//! narrative saying no real person is described, patients `Patient/synthetic-NNNN`, and codes
//! from a code system under `example.org` besides a few real LOINC and SNOMED CT codes.

use std::collections::BTreeMap;

use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::crypto::{Combine, KeywordArg};
use super::synthetic::{CONDITIONS, LOINC, OBSERVATIONS, SNOMED};

/// The code system of the synthetic vocabulary.
pub const VOCABULARY_SYSTEM: &str = "https://example.org/fhir/CodeSystem/ehr-load-synthetic";
/// Codes in the synthetic vocabulary (`syn-000` to `syn-063`).
pub const VOCABULARY_SIZE: usize = 64;
/// The size each generated record is padded to (its note), in bytes.
pub const TARGET_RECORD_BYTES: usize = 5 * 1024;
/// Growth from the second quarter's mean RSS to the last quarter's mean under which memory is
/// called flat, in percent. Allocators keep freed pages and caches warm up, so a few percent of
/// drift is not a leak; a leak over a run of minutes shows as far more.
pub const FLAT_GROWTH_PCT: f64 = 5.0;
/// Fewest samples for a memory verdict (two per quarter).
pub const MIN_VERDICT_SAMPLES: usize = 8;

const WORDS: &[&str] = &[
    "synthetic",
    "load",
    "test",
    "record",
    "fictitious",
    "benchmark",
    "generated",
    "sample",
    "placeholder",
    "routine",
    "follow-up",
    "stable",
    "reviewed",
    "unremarkable",
    "scheduled",
    "observation",
];

/// The `i`-th code of the synthetic vocabulary.
pub fn vocabulary_code(i: usize) -> String {
    format!("syn-{:03}", i % VOCABULARY_SIZE)
}

/// The search keyword (`system|code`) of the `i`-th vocabulary code.
pub fn vocabulary_keyword(i: usize) -> String {
    format!("{VOCABULARY_SYSTEM}|{}", vocabulary_code(i))
}

/// A skewed pick in `0..n` (low indexes more often, as real code frequencies are).
fn skewed(rng: &mut ChaCha20Rng, n: usize) -> usize {
    let u: f64 = rng.r#gen();
    ((u * u) * n as f64) as usize % n
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"system": system, "code": code, "display": display})
}

fn vocab_coding(i: usize) -> Value {
    coding(
        VOCABULARY_SYSTEM,
        &vocabulary_code(i),
        &format!("Synthetic finding {}", i % VOCABULARY_SIZE),
    )
}

/// A deterministic stream of synthetic records and search queries: the same seed and stream
/// give the same records and queries.
#[derive(Debug)]
pub struct Workload {
    rng: ChaCha20Rng,
    seed: u64,
    stream: u64,
    next: u64,
}

impl Workload {
    /// The workload of `stream` (one per concurrent task) for `seed`.
    pub fn new(seed: u64, stream: u64) -> Workload {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Workload {
            rng,
            seed,
            stream,
            next: 0,
        }
    }

    /// The next record: a FHIR R4 Observation (two in three) or Condition, compact JSON of
    /// about [`TARGET_RECORD_BYTES`].
    pub fn record(&mut self) -> Vec<u8> {
        let n = self.next;
        self.next += 1;
        let rng = &mut self.rng;
        let id = format!("synthetic-{}-{}-{n:06}", self.seed, self.stream);
        let meta = json!({"security": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
            "code": "HTEST", "display": "test health data"}]});
        let text = json!({"status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Synthetic load-test data; describes no real person.</div>"});
        let patient = format!("Patient/synthetic-{:04}", rng.gen_range(0..10_000));
        let main = skewed(rng, VOCABULARY_SIZE);
        let mut v = if rng.gen_range(0..3) < 2 {
            let (code, display, unit, lo, hi) = OBSERVATIONS[rng.gen_range(0..OBSERVATIONS.len())];
            let components: Vec<Value> = (0..rng.gen_range(2..6))
                .map(|_| {
                    json!({
                        "code": {"coding": [vocab_coding(skewed(rng, VOCABULARY_SIZE))]},
                        "valueQuantity": {"value": rng.gen_range(0..1000), "unit": "1",
                                          "system": "http://unitsofmeasure.org", "code": "1"}
                    })
                })
                .collect();
            json!({
                "resourceType": "Observation", "id": id, "meta": meta, "text": text,
                "status": "final",
                "category": [{"coding": [coding(
                    "http://terminology.hl7.org/CodeSystem/observation-category",
                    "laboratory", "Laboratory")]}],
                "code": {"coding": [coding(LOINC, code, display), vocab_coding(main)],
                         "text": display},
                "subject": {"reference": patient},
                "effectiveDateTime": format!("2024-{:02}-{:02}", rng.gen_range(1..13), rng.gen_range(1..29)),
                "valueQuantity": {"value": (rng.gen_range(lo..hi) * 10.0f64).round() / 10.0,
                                  "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
                "component": components,
            })
        } else {
            let (code, display) = CONDITIONS[rng.gen_range(0..CONDITIONS.len())];
            json!({
                "resourceType": "Condition", "id": id, "meta": meta, "text": text,
                "clinicalStatus": {"coding": [coding(
                    "http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active")]},
                "code": {"coding": [coding(SNOMED, code, display), vocab_coding(main)],
                         "text": display},
                "subject": {"reference": patient},
                "recordedDate": format!("2024-{:02}-{:02}", rng.gen_range(1..13), rng.gen_range(1..29)),
            })
        };
        // Pad with a note of synthetic words up to the target size.
        let base = serde_json::to_vec(&v).expect("invariant: JSON values serialise");
        let want = TARGET_RECORD_BYTES.saturating_sub(base.len() + 24);
        let mut note = String::with_capacity(want + 16);
        while note.len() < want {
            if !note.is_empty() {
                note.push(' ');
            }
            note.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
        }
        v["note"] = json!([{ "text": note }]);
        serde_json::to_vec(&v).expect("invariant: JSON values serialise")
    }

    /// The next search: one vocabulary code (three in five), two vocabulary codes joined by OR,
    /// or a LOINC/SNOMED code AND a vocabulary code.
    pub fn query(&mut self) -> (Vec<KeywordArg>, Combine) {
        let rng = &mut self.rng;
        let a = skewed(rng, VOCABULARY_SIZE);
        match rng.gen_range(0..5) {
            0..=2 => (vec![KeywordArg::Code(vocabulary_keyword(a))], Combine::And),
            3 => {
                let b = skewed(rng, VOCABULARY_SIZE);
                (
                    vec![
                        KeywordArg::Code(vocabulary_keyword(a)),
                        KeywordArg::Code(vocabulary_keyword(b)),
                    ],
                    Combine::Or,
                )
            }
            _ => {
                let real = if rng.gen_range(0..3) < 2 {
                    format!(
                        "{LOINC}|{}",
                        OBSERVATIONS[rng.gen_range(0..OBSERVATIONS.len())].0
                    )
                } else {
                    format!(
                        "{SNOMED}|{}",
                        CONDITIONS[rng.gen_range(0..CONDITIONS.len())].0
                    )
                };
                (
                    vec![
                        KeywordArg::Code(real),
                        KeywordArg::Code(vocabulary_keyword(a)),
                    ],
                    Combine::And,
                )
            }
        }
    }
}

/// Latency percentiles of one kind of request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Requests measured.
    pub count: u64,
    /// Median, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, in milliseconds.
    pub p99_ms: f64,
    /// Slowest, in milliseconds.
    pub max_ms: f64,
}

/// The nearest-rank percentile `p` (0 to 1) of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises latencies in milliseconds (in any order).
pub fn summarize(latencies_ms: &[f64]) -> LatencySummary {
    let mut v: Vec<f64> = latencies_ms
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .collect();
    v.sort_by(f64::total_cmp);
    LatencySummary {
        count: v.len() as u64,
        p50_ms: percentile(&v, 0.50),
        p99_ms: percentile(&v, 0.99),
        max_ms: v.last().copied().unwrap_or(0.0),
    }
}

/// One memory reading of a node.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RssSample {
    /// Seconds since the load started.
    pub t_s: f64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
    /// Its anonymous part (heap, allocator arenas, stacks), in bytes, when read from `/proc`.
    #[serde(default)]
    pub anon_bytes: Option<u64>,
}

/// A node's memory over the run: readings at the start, at each quarter of the samples and at
/// the end, and whether it grew.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemorySummary {
    /// The first reading, in bytes.
    pub start: u64,
    /// The reading a quarter of the way through, in bytes.
    pub q1: u64,
    /// The reading half way through, in bytes.
    pub q2: u64,
    /// The reading three quarters of the way through, in bytes.
    pub q3: u64,
    /// The last reading, in bytes.
    pub end: u64,
    /// Growth of the mean from the second quarter of the samples to the last, in percent
    /// (`None` with fewer than [`MIN_VERDICT_SAMPLES`] samples).
    pub growth_pct: Option<f64>,
    /// `memory flat …`, `memory grew …`, or why there is no verdict.
    pub verdict: String,
}

/// Summarises a node's readings (in time order); `None` without any.
pub fn memory_summary(samples: &[RssSample]) -> Option<MemorySummary> {
    let first = samples.first()?;
    let last = samples.last()?;
    let at = |f: f64| samples[((samples.len() - 1) as f64 * f).round() as usize].rss_bytes;
    let n = samples.len();
    let mean = |s: &[RssSample]| s.iter().map(|x| x.rss_bytes as f64).sum::<f64>() / s.len() as f64;
    let (growth_pct, verdict) = if n < MIN_VERDICT_SAMPLES {
        (
            None,
            format!("no verdict: {n} sample(s), at least {MIN_VERDICT_SAMPLES} needed"),
        )
    } else {
        let second = mean(&samples[n / 4..n / 2]);
        let fourth = mean(&samples[n - n / 4..]);
        let g = (fourth - second) / second * 100.0;
        let verdict = if g <= FLAT_GROWTH_PCT {
            format!("memory flat ({g:+.1}% from the second quarter to the last)")
        } else {
            format!("memory grew {g:.1}% from the second quarter to the last")
        };
        (Some(g), verdict)
    };
    Some(MemorySummary {
        start: first.rss_bytes,
        q1: at(0.25),
        q2: at(0.5),
        q3: at(0.75),
        end: last.rss_bytes,
        growth_pct,
        verdict,
    })
}

/// Counts of one kind of request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpStats {
    /// Requests that succeeded.
    pub ok: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Successful requests per second of the run.
    pub per_sec: f64,
    /// Latency of the successful requests.
    pub latency: LatencySummary,
    /// Uploads: bytes of the records sent; searches: hits returned.
    pub volume: u64,
}

/// Failures of one kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorCount {
    /// `upload` or `search`.
    pub op: String,
    /// `http <status>`, `network`, or `client: <what>`.
    pub kind: String,
    /// How many.
    pub count: u64,
    /// The first such error's message.
    pub example: String,
}

/// One request, for plotting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpSample {
    /// Seconds since the load started, when it was sent.
    pub t_s: f64,
    /// `upload` or `search`.
    pub op: String,
    /// The node it went to (replica id).
    pub node: usize,
    /// Its latency, in milliseconds.
    pub ms: f64,
    /// Whether it succeeded.
    pub ok: bool,
}

/// One node's memory over the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeMemory {
    /// The replica id.
    pub node: usize,
    /// Its HTTP URL.
    pub url: String,
    /// Its process id, when the load generator started it.
    pub pid: Option<u32>,
    /// `proc` (`/proc/<pid>/status` of a child) or `metrics` (`process_resident_memory_bytes`).
    pub source: String,
    /// The readings, about one a second.
    pub samples: Vec<RssSample>,
    /// Their summary.
    pub summary: Option<MemorySummary>,
}

/// Everything `ehr load` measured (`--json` writes it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// `spawn` or `existing`.
    pub mode: String,
    /// The workload seed.
    pub seed: u64,
    /// Concurrent upload tasks.
    pub upload_concurrency: usize,
    /// Concurrent search tasks.
    pub search_concurrency: usize,
    /// The requested duration, in seconds.
    pub duration_s: f64,
    /// From the first request to the last answer, in seconds.
    pub elapsed_s: f64,
    /// Uploads.
    pub uploads: OpStats,
    /// Searches.
    pub searches: OpStats,
    /// Failures by request and kind.
    pub errors: Vec<ErrorCount>,
    /// Memory of each node.
    pub nodes: Vec<NodeMemory>,
    /// Every request.
    pub ops: Vec<OpSample>,
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

impl LoadReport {
    /// Failed requests of both kinds, plus node processes that stopped during the run.
    pub fn failures(&self) -> u64 {
        let nodes: u64 = self
            .errors
            .iter()
            .filter(|e| e.op == "node")
            .map(|e| e.count)
            .sum();
        self.uploads.failed + self.searches.failed + nodes
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let line = |s: &mut String, name: &str, o: &OpStats, unit: &str| {
            s.push_str(&format!(
                "{name:<9} {:>7} ok {:>5} failed {:>9.1}/s   p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms  ({} {unit})\n",
                o.ok, o.failed, o.per_sec, o.latency.p50_ms, o.latency.p99_ms, o.latency.max_ms, o.volume
            ));
        };
        s.push_str(&format!(
            "ehr load ({} mode, seed {}): {:.1} s, {} upload and {} search task(s)\n",
            self.mode, self.seed, self.elapsed_s, self.upload_concurrency, self.search_concurrency
        ));
        line(&mut s, "uploads", &self.uploads, "record bytes");
        line(&mut s, "searches", &self.searches, "hits");
        if self.errors.is_empty() {
            s.push_str("errors: none\n");
        } else {
            s.push_str("errors:\n");
            for e in &self.errors {
                s.push_str(&format!(
                    "  {} {}: {} (first: {})\n",
                    e.op, e.kind, e.count, e.example
                ));
            }
        }
        s.push_str("memory (RSS at start, 1/4, 1/2, 3/4, end of the run):\n");
        for n in &self.nodes {
            let who = match n.pid {
                Some(p) => format!("node-{} (pid {p})", n.node),
                None => format!("node-{} ({})", n.node, n.url),
            };
            match &n.summary {
                Some(m) => s.push_str(&format!(
                    "  {who}: {} {} {} {} {}: {}\n",
                    mib(m.start),
                    mib(m.q1),
                    mib(m.q2),
                    mib(m.q3),
                    mib(m.end),
                    m.verdict
                )),
                None => s.push_str(&format!("  {who}: no readings ({})\n", n.source)),
            }
            if let Some(anon) = n.samples.last().and_then(|x| x.anon_bytes) {
                s.push_str(&format!(
                    "    of which anonymous at the end: {}\n",
                    mib(anon)
                ));
            }
        }
        s
    }
}

/// Accumulates requests' outcomes while the load runs.
#[derive(Debug, Default)]
pub struct Tally {
    ops: Vec<OpSample>,
    volume: BTreeMap<String, u64>,
    errors: BTreeMap<(String, String), (u64, String)>,
}

impl Tally {
    /// Records a successful request moving `volume` (bytes or hits).
    pub fn ok(&mut self, op: &str, node: usize, t_s: f64, ms: f64, volume: u64) {
        *self.volume.entry(op.to_owned()).or_default() += volume;
        self.ops.push(OpSample {
            t_s,
            op: op.to_owned(),
            node,
            ms,
            ok: true,
        });
    }

    /// Records a failed request.
    pub fn failed(&mut self, op: &str, node: usize, t_s: f64, ms: f64, kind: String, msg: String) {
        let e = self.errors.entry((op.to_owned(), kind)).or_insert((0, msg));
        e.0 += 1;
        self.ops.push(OpSample {
            t_s,
            op: op.to_owned(),
            node,
            ms,
            ok: false,
        });
    }

    /// Successful and failed requests so far of `op`.
    pub fn counts(&self, op: &str) -> (u64, u64) {
        let ok = self.ops.iter().filter(|o| o.op == op && o.ok).count() as u64;
        let all = self.ops.iter().filter(|o| o.op == op).count() as u64;
        (ok, all - ok)
    }

    /// Statistics of `op` over a run of `elapsed_s` seconds.
    pub fn stats(&self, op: &str, elapsed_s: f64) -> OpStats {
        let ok: Vec<f64> = self
            .ops
            .iter()
            .filter(|o| o.op == op && o.ok)
            .map(|o| o.ms)
            .collect();
        let (n_ok, failed) = self.counts(op);
        OpStats {
            ok: n_ok,
            failed,
            per_sec: if elapsed_s > 0.0 {
                n_ok as f64 / elapsed_s
            } else {
                0.0
            },
            latency: summarize(&ok),
            volume: self.volume.get(op).copied().unwrap_or(0),
        }
    }

    /// The failures, by request and kind.
    pub fn errors(&self) -> Vec<ErrorCount> {
        self.errors
            .iter()
            .map(|((op, kind), (count, example))| ErrorCount {
                op: op.clone(),
                kind: kind.clone(),
                count: *count,
                example: example.clone(),
            })
            .collect()
    }

    /// Every request, in the order recorded.
    pub fn into_ops(self) -> Vec<OpSample> {
        self.ops
    }
}

/// The report's name for a client error: `http <status>`, `network`, or `client: <what>`.
pub fn error_kind(e: &super::ClientError) -> String {
    use super::ClientError as E;
    match e {
        E::Refused(p) | E::Server(p) => format!("http {}", p.status),
        E::Network { .. } => "network".to_owned(),
        other => {
            let s = other.to_string();
            format!("client: {}", s.split(':').next().unwrap_or("error"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::{ExtractConfig, InputFormat, extract};
    use proptest::prelude::*;

    #[test]
    fn records_are_valid_synthetic_fhir_of_about_5_kb_with_vocabulary_codes() {
        let mut w = Workload::new(7, 3);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..60 {
            let r = w.record();
            assert!(
                (TARGET_RECORD_BYTES - 200..TARGET_RECORD_BYTES + 200).contains(&r.len()),
                "{} bytes",
                r.len()
            );
            let text = std::str::from_utf8(&r).unwrap();
            assert!(text.contains("HTEST") && text.contains("synthetic-"));
            let e = extract(&r, InputFormat::Json, &ExtractConfig::default()).unwrap();
            assert_eq!(e.resources, 1);
            let vocab: Vec<_> = e
                .keywords
                .iter()
                .filter(|k| k.value.starts_with(VOCABULARY_SYSTEM))
                .collect();
            assert!(!vocab.is_empty(), "a vocabulary code is indexed: {text}");
            seen.extend(vocab.iter().map(|k| k.value.clone()));
        }
        assert!(seen.len() > 10, "codes vary: {seen:?}");
    }

    #[test]
    fn workloads_are_deterministic_per_seed_and_stream() {
        let take = |seed, stream| {
            let mut w = Workload::new(seed, stream);
            (w.record(), w.record(), format!("{:?}", w.query()))
        };
        assert_eq!(take(1, 0), take(1, 0));
        assert_ne!(take(1, 0), take(1, 1));
        assert_ne!(take(1, 0), take(2, 0));
    }

    #[test]
    fn queries_use_codes_the_records_carry() {
        let mut w = Workload::new(3, 0);
        for _ in 0..50 {
            let (kws, _) = w.query();
            assert!(!kws.is_empty() && kws.len() <= 2);
            for k in kws {
                let KeywordArg::Code(c) = k else {
                    panic!("codes only")
                };
                assert!(
                    c.starts_with(VOCABULARY_SYSTEM)
                        || c.starts_with(LOINC)
                        || c.starts_with(SNOMED),
                    "{c}"
                );
            }
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let s = summarize(&v);
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert_eq!(summarize(&[]), LatencySummary::default());
        assert_eq!(summarize(&[3.0]).p99_ms, 3.0);
    }

    fn series(values: &[u64]) -> Vec<RssSample> {
        values
            .iter()
            .enumerate()
            .map(|(i, &b)| RssSample {
                t_s: i as f64,
                rss_bytes: b,
                anon_bytes: None,
            })
            .collect()
    }

    #[test]
    fn memory_verdicts() {
        let flat = memory_summary(&series(&[50, 100, 100, 101, 100, 102, 101, 100])).unwrap();
        assert!(flat.verdict.starts_with("memory flat"), "{}", flat.verdict);
        assert_eq!((flat.start, flat.end), (50, 100));
        // Second quarter mean 100, last quarter mean 150: grew 50%.
        let grew = memory_summary(&series(&[90, 95, 100, 100, 120, 130, 150, 150])).unwrap();
        assert_eq!(grew.growth_pct, Some(50.0));
        assert_eq!(
            grew.verdict,
            "memory grew 50.0% from the second quarter to the last"
        );
        let few = memory_summary(&series(&[1, 2, 3])).unwrap();
        assert!(few.growth_pct.is_none() && few.verdict.starts_with("no verdict"));
        assert!(memory_summary(&[]).is_none());
    }

    #[test]
    fn tally_counts_and_reports_errors_by_kind() {
        let mut t = Tally::default();
        t.ok("upload", 0, 0.1, 10.0, 5000);
        t.ok("upload", 1, 0.2, 30.0, 5000);
        t.failed("upload", 2, 0.3, 5.0, "http 503".into(), "busy".into());
        t.failed("upload", 2, 0.4, 5.0, "http 503".into(), "later".into());
        t.ok("search", 0, 0.5, 2.0, 7);
        let u = t.stats("upload", 2.0);
        assert_eq!((u.ok, u.failed, u.volume), (2, 2, 10_000));
        assert_eq!(u.per_sec, 1.0);
        assert_eq!(u.latency.max_ms, 30.0);
        let e = t.errors();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].count, e[0].example.as_str()), (2, "busy"));
        assert_eq!(t.stats("search", 2.0).volume, 7);
    }

    #[test]
    fn a_stopped_node_counts_as_a_failure() {
        let mut r = LoadReport {
            mode: "spawn".into(),
            seed: 1,
            upload_concurrency: 1,
            search_concurrency: 1,
            duration_s: 1.0,
            elapsed_s: 1.0,
            uploads: OpStats::default(),
            searches: OpStats::default(),
            errors: Vec::new(),
            nodes: Vec::new(),
            ops: Vec::new(),
        };
        assert_eq!(r.failures(), 0);
        assert!(r.render().contains("errors: none"));
        r.errors.push(ErrorCount {
            op: "node".into(),
            kind: "process exited".into(),
            count: 1,
            example: "node-2 exited".into(),
        });
        assert_eq!(r.failures(), 1);
        assert!(r.render().contains("node process exited: 1"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn summaries_are_ordered(v in proptest::collection::vec(0.0f64..1e6, 0..200)) {
            let s = summarize(&v);
            prop_assert!(s.p50_ms <= s.p99_ms && s.p99_ms <= s.max_ms);
            prop_assert_eq!(s.count as usize, v.len());
        }

        #[test]
        fn memory_summary_never_panics(v in proptest::collection::vec(1u64..1 << 40, 0..100)) {
            let m = memory_summary(&series(&v));
            prop_assert_eq!(m.is_some(), !v.is_empty());
        }
    }
}
