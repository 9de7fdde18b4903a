//! `ehr load`: a load generator for a 4-node consortium, with each node's memory over time.
//!
//! Upload tasks send synthetic FHIR R4 records (about 5 KB, codes from a fixed synthetic
//! vocabulary: [`crate::client::load`]) to each node with that node's own hospital identity;
//! search tasks send real trapdoors built from the capsules a researcher's attribute key opens.
//! Both run concurrently for `--duration`. Memory: with `--spawn` the load generator starts
//! the four `ehr node` processes itself and reads each child's `VmRSS` from `/proc/<pid>/status`;
//! against existing nodes it reads `process_resident_memory_bytes` from each node's `/metrics`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::{Method, header};

use crate::client::api::{Api, SearchPage};
use crate::client::crypto::{OpenedCapsule, build_query, open_capsules, search_body};
use crate::client::http::read_json;
use crate::client::load::{
    ErrorCount, LoadReport, NodeMemory, RssSample, Tally, Workload, error_kind, memory_summary,
};
use crate::client::{ClientError, Consortium, Identity, NodeClient, Retry};
use crate::config::NodeConfig;
use crate::consortium::{
    ConsortiumFile, IdentityFile, InitOptions, init_consortium, write_public_atomically,
};

/// Nodes of the consortium `--spawn` starts.
const SPAWN_NODES: usize = 4;
/// How long spawned nodes may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a stopped node may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// Hits per search page.
const SEARCH_LIMIT: usize = 100;

/// Arguments of `ehr load`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Examples:
  # A fresh 4-node consortium as child processes, two minutes of load, samples for plotting:
  ehr load --spawn --duration 2m --json load.json
  # Against running nodes (uploads go to each hospital identity's own node):
  ehr load --consortium consortium.json --researcher researcher.json \\
      --hospital hospital-0.json --hospital hospital-1.json --duration 10m

Uploads: each upload task sends synthetic FHIR R4 records (about 5 KB; obviously fictitious,
labelled HTEST; codes from a fixed synthetic vocabulary, varied by --seed) to one node, signed
by that node's own hospital (only a node's hospital may upload to it). Each answer comes after
the ledger committed the record, so uploads/s is the committed-record rate.
Searches: each search task builds real trapdoors from the capsules the researcher's attribute
key opens (one or two codes, AND or OR) and sends them to the nodes in turn.
Memory: with --spawn, VmRSS of each node process from /proc/<pid>/status; otherwise
process_resident_memory_bytes from each node's /metrics (Linux nodes), sampled every
--sample-every. The verdict compares the mean of the second quarter of the samples with the
last quarter's: flat when it grew at most 5%.

Prints a progress line while running, then: uploads/s and searches/s, p50/p99/max latency,
errors by status, and each node's RSS at the start, each quarter and the end. --json writes all
of it with every sample and every request. Exit status: 0 when no request failed, 3 otherwise
(the report is printed either way), 1 for bad arguments or a consortium that cannot start.
Ctrl-C stops the load early and still reports. The spawned nodes are stopped with SIGTERM (and
killed after 30 s); the load generator itself must not be killed with SIGKILL, or they outlive it.")]
pub struct LoadArgs {
    /// Create a fresh 4-node consortium and run each node as a child process (`ehr node`) on
    /// 127.0.0.1 with ephemeral ports; stop them when done.
    #[arg(long, conflicts_with_all = ["consortium", "hospitals", "researcher"])]
    pub spawn: bool,
    /// With --spawn: the directory to create the consortium in (absent or empty; kept, with
    /// each node's log in node-<i>/node.log). Default: a temporary directory, removed after.
    #[arg(long, requires = "spawn", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The consortium file of the running nodes (searches and memory readings go to every
    /// validator's http_url).
    #[arg(long, value_name = "FILE", required_unless_present = "spawn")]
    pub consortium: Option<PathBuf>,
    /// A hospital identity file (repeatable); it uploads to the node named in its `node` field.
    #[arg(
        long = "hospital",
        value_name = "FILE",
        required_unless_present = "spawn"
    )]
    pub hospitals: Vec<PathBuf>,
    /// The researcher identity file (with an attribute key) the searches are made with.
    #[arg(long, value_name = "FILE", required_unless_present = "spawn")]
    pub researcher: Option<PathBuf>,
    /// How long to send requests (`90s`, `10m`, `1h`, `500ms`; a bare number is seconds).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Concurrent upload tasks (spread over the nodes).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(0..=4096))]
    pub upload_concurrency: u16,
    /// Concurrent search tasks (spread over the nodes).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(0..=4096))]
    pub search_concurrency: u16,
    /// Seed of the synthetic records and queries.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Interval between memory readings.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub sample_every: Duration,
    /// Write the whole report, with every memory sample and request, as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Parses `500ms`, `90s`, `10m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}`: expected a number and a unit, such as 90s or 10m"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use ms, s, m or h)"
            ));
        }
    };
    if d.is_zero() {
        return Err(format!("`{text}`: must be more than zero"));
    }
    Ok(d)
}

/// Runs `ehr load`.
pub fn run(args: LoadArgs) -> anyhow::Result<()> {
    if args.upload_concurrency == 0 && args.search_concurrency == 0 {
        bail!("--upload-concurrency, --search-concurrency: at least one must be more than 0");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(async {
        if args.spawn {
            run_spawned(&args).await
        } else {
            run_existing(&args).await
        }
    })?;
    print!("{}", report.render());
    if let Some(path) = &args.json {
        let bytes = serde_json::to_vec(&report).context("encoding the JSON report")?;
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    let failed = report.failures();
    if failed > 0 {
        eprintln!("ehr load: {failed} request(s) failed");
        std::process::exit(3);
    }
    Ok(())
}

/// Where the load goes and how memory is read.
struct Target {
    /// One uploader per hospital: (replica id, API client of its own node).
    uploaders: Vec<(usize, Arc<Api>)>,
    /// The researcher's client of each node: (replica id, API client).
    searchers: Vec<(usize, Arc<Api>)>,
    /// The capsules the researcher opens.
    opened: Arc<Vec<OpenedCapsule>>,
    /// Each node: (replica id, URL, memory source).
    nodes: Vec<(usize, String, MemorySource)>,
}

/// How a node's memory is read.
#[derive(Clone)]
enum MemorySource {
    /// `/proc/<pid>/status` of a child process.
    Pid(u32),
    /// `process_resident_memory_bytes` of the node's `/metrics`.
    Metrics(reqwest::Client),
}

impl MemorySource {
    /// RSS and, from `/proc`, its anonymous part.
    async fn read(&self, url: &str) -> Option<(u64, Option<u64>)> {
        match self {
            MemorySource::Pid(pid) => crate::node::metrics::read_process(Some(*pid))
                .map(|s| (s.resident_bytes, s.anon_bytes)),
            MemorySource::Metrics(http) => {
                let text = http
                    .get(format!("{}/metrics", url.trim_end_matches('/')))
                    .send()
                    .await
                    .ok()?
                    .error_for_status()
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                resident_from_metrics(&text).map(|b| (b, None))
            }
        }
    }
}

/// `process_resident_memory_bytes` from a Prometheus text exposition.
pub fn resident_from_metrics(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix("process_resident_memory_bytes ")?;
        // Integer or float notation, optionally followed by a timestamp.
        let v: f64 = v.split_whitespace().next()?.parse().ok()?;
        (v.is_finite() && v >= 0.0).then_some(v as u64)
    })
}

/// Opens the capsules listed by `api` with the researcher's key, waiting up to a minute for at
/// least `want` of them (a fresh consortium creates each hospital's capsule as it starts).
async fn open_researcher_capsules(
    api: &Api,
    researcher: &Identity,
    want: usize,
) -> anyhow::Result<Vec<OpenedCapsule>> {
    let key = researcher
        .abe_key()
        .context("--researcher: the identity has no attribute key (run `ehr keygen --abe`)")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = api.capsules().await?;
        let report = open_capsules(&listed, key);
        if report.opened.len() >= want.max(1) {
            return Ok(report.opened);
        }
        if Instant::now() > deadline {
            bail!(
                "the researcher's attribute key opens {} of the {} capsule(s) listed (wanted {}): \
                 searches would find nothing",
                report.opened.len(),
                listed.len(),
                want.max(1)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn api_for(url: &str, id: &Identity) -> Result<Arc<Api>, ClientError> {
    Ok(Arc::new(Api::new(NodeClient::new(
        url,
        id.signing_key(),
        id.chain_id(),
    )?)))
}

/// Against running nodes.
async fn run_existing(args: &LoadArgs) -> anyhow::Result<LoadReport> {
    let cpath = args
        .consortium
        .as_deref()
        .context("--consortium: required")?;
    let consortium = Consortium::load(cpath)?;
    let rpath = args
        .researcher
        .as_deref()
        .context("--researcher: required")?;
    let researcher = Identity::load(rpath)?;
    let urls: Vec<String> = consortium
        .validators
        .iter()
        .map(|v| v.http_url.clone())
        .collect();
    let mut uploaders = Vec::new();
    for (k, path) in args.hospitals.iter().enumerate() {
        let id = Identity::load(path)?;
        let url = id.node().with_context(|| {
            format!("--hospital {}: the identity names no node", path.display())
        })?;
        let node = urls
            .iter()
            .position(|u| u.trim_end_matches('/') == url.trim_end_matches('/'))
            .unwrap_or(k);
        uploaders.push((node, api_for(url, &id)?));
    }
    let mut searchers = Vec::new();
    for (i, u) in urls.iter().enumerate() {
        searchers.push((i, api_for(u, &researcher)?));
    }
    let opened = if args.search_concurrency > 0 {
        open_researcher_capsules(&searchers[0].1, &researcher, 1).await?
    } else {
        Vec::new()
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building an HTTP client")?;
    let nodes = urls
        .iter()
        .enumerate()
        .map(|(i, u)| (i, u.clone(), MemorySource::Metrics(http.clone())))
        .collect();
    let target = Target {
        uploaders,
        searchers,
        opened: Arc::new(opened),
        nodes,
    };
    drive(&target, args, "existing", || None).await
}

/// The node processes `--spawn` started; any still running when this is dropped are killed.
struct Children {
    procs: Vec<Child>,
    logs: Vec<PathBuf>,
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.procs {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Children {
    /// The first child that exited, with its status and the end of its log.
    fn exited(&mut self) -> Option<String> {
        for (i, c) in self.procs.iter_mut().enumerate() {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(format!(
                    "node-{i} exited ({status}); end of {}:\n{}",
                    self.logs[i].display(),
                    log_tail(&self.logs[i])
                ));
            }
        }
        None
    }

    /// SIGTERM to every child, then waits for them (killing those still running after
    /// [`STOP_GRACE`]). An error names each node that did not exit cleanly.
    async fn stop(&mut self) -> anyhow::Result<()> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        for c in &mut self.procs {
            if matches!(c.try_wait(), Ok(None)) {
                let pid = i32::try_from(c.id()).context("a child's pid does not fit an i32")?;
                if let Err(e) = kill(Pid::from_raw(pid), Signal::SIGTERM) {
                    tracing::warn!(pid, error = %e, "cannot send SIGTERM to a node");
                }
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        let mut problems = Vec::new();
        for (i, c) in self.procs.iter_mut().enumerate() {
            loop {
                match c.try_wait() {
                    Ok(Some(status)) => {
                        if !status.success() {
                            problems.push(format!("node-{i} exited with {status}"));
                        }
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok(None) => {
                        let _ = c.kill();
                        let _ = c.wait();
                        problems.push(format!(
                            "node-{i} did not stop within {STOP_GRACE:?} of SIGTERM (killed)"
                        ));
                        break;
                    }
                    Err(e) => {
                        problems.push(format!("node-{i}: cannot wait for it: {e}"));
                        break;
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("{}", problems.join("; "))
        }
    }
}

/// The last 20 lines of a log file.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Addresses of one spawned node.
struct Ports {
    http: u16,
    peer: u16,
    ipfs: u16,
}

/// Distinct free loopback ports: bound together (so the kernel hands out distinct ones), then
/// released for the children to bind. Another process could take one in between; the node
/// then fails to start, and the load generator says so.
fn reserve_ports(n: usize) -> anyhow::Result<Vec<Ports>> {
    let listeners: Vec<std::net::TcpListener> = (0..n * 3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("reserving loopback ports")?;
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?;
    Ok(ports
        .chunks(3)
        .map(|c| Ports {
            http: c[0],
            peer: c[1],
            ipfs: c[2],
        })
        .collect())
}

/// Creates the consortium in `dir` with this run's loopback addresses; returns each node's
/// configuration file and URL.
fn prepare_consortium(dir: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    init_consortium(&InitOptions {
        nodes: SPAWN_NODES,
        out: dir.to_path_buf(),
        chain_id: "ehr-load".into(),
        host_pattern: "127.0.0.1".into(),
        researchers: 1,
        ..InitOptions::default()
    })
    .with_context(|| format!("creating the consortium in {}", dir.display()))?;
    let ports = reserve_ports(SPAWN_NODES)?;
    let cpath = dir.join("consortium.json");
    let mut file: ConsortiumFile = serde_json::from_slice(
        &std::fs::read(&cpath).with_context(|| format!("reading {}", cpath.display()))?,
    )
    .context("parsing the new consortium.json")?;
    let peers: Vec<String> = ports
        .iter()
        .map(|p| format!("127.0.0.1:{}", p.peer))
        .collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{}", p.http))
        .collect();
    let ipfs: Vec<String> = ports
        .iter()
        .map(|p| format!("/ip4/127.0.0.1/tcp/{}", p.ipfs))
        .collect();
    let peer_ids: Vec<String> = file
        .validators
        .iter()
        .map(|v| v.ipfs_peer_id.clone())
        .collect();
    for (i, v) in file.validators.iter_mut().enumerate() {
        v.peer_addr = peers[i].clone();
        v.http_url = urls[i].clone();
        v.ipfs_addrs = vec![ipfs[i].clone()];
    }
    write_public_atomically(&cpath, &serde_json::to_vec_pretty(&file)?)?;
    let mut out = Vec::new();
    for i in 0..SPAWN_NODES {
        let path = dir.join(format!("node-{i}/node.toml"));
        let mut cfg = NodeConfig::load(&path)?;
        cfg.http.listen = format!("127.0.0.1:{}", ports[i].http);
        cfg.ledger.listen = peers[i].clone();
        cfg.ledger.peers = peers.clone();
        cfg.ipfs.listen = vec![ipfs[i].clone()];
        cfg.ipfs.bootstrap = (0..SPAWN_NODES)
            .filter(|j| *j != i)
            .map(|j| format!("{}/p2p/{}", ipfs[j], peer_ids[j]))
            .collect();
        write_public_atomically(&path, cfg.to_toml().as_bytes())?;
        out.push((path, urls[i].clone()));
    }
    // The identity files name this run's nodes, so they work with the other client commands.
    for (i, url) in urls.iter().enumerate() {
        set_identity_node(&dir.join(format!("hospital-{i}.json")), url)?;
    }
    set_identity_node(&dir.join("researcher-0.json"), &urls[0])?;
    Ok(out)
}

fn set_identity_node(path: &Path, url: &str) -> anyhow::Result<()> {
    let mut id = IdentityFile::load(path)?;
    id.node = Some(url.to_owned());
    id.save(path)?;
    Ok(())
}

/// Starts `ehr node --config <cfg>` for each node, logging to `node-<i>/node.log`.
fn spawn_nodes(configs: &[(PathBuf, String)]) -> anyhow::Result<Children> {
    let exe = std::env::current_exe().context("locating the ehr executable")?;
    let mut children = Children {
        procs: Vec::new(),
        logs: Vec::new(),
    };
    for (i, (cfg, _)) in configs.iter().enumerate() {
        let log_path = cfg.with_file_name("node.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new(&exe)
            .arg("node")
            .arg("--config")
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node-{i} ({})", exe.display()))?;
        children.procs.push(child);
        children.logs.push(log_path);
    }
    Ok(children)
}

/// Waits until every node answers `/readyz` with 200.
async fn wait_ready(children: &mut Children, urls: &[String]) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut ready = vec![false; urls.len()];
    while ready.iter().any(|r| !r) {
        if let Some(why) = children.exited() {
            bail!("a node stopped while starting: {why}");
        }
        if Instant::now() > deadline {
            let waiting: Vec<String> = ready
                .iter()
                .enumerate()
                .filter(|(_, r)| !**r)
                .map(|(i, _)| format!("node-{i}"))
                .collect();
            bail!(
                "{} not ready after {READY_TIMEOUT:?}; end of node-0's log:\n{}",
                waiting.join(", "),
                log_tail(&children.logs[0])
            );
        }
        for (i, u) in urls.iter().enumerate() {
            if !ready[i] {
                ready[i] = http
                    .get(format!("{u}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// `--spawn`: a fresh consortium, four child processes, the load, a clean stop.
async fn run_spawned(args: &LoadArgs) -> anyhow::Result<LoadReport> {
    // Dropped last: the children (declared after) are stopped before the directory goes.
    let temp;
    let dir = match &args.dir {
        Some(d) => {
            if d.exists()
                && std::fs::read_dir(d)
                    .with_context(|| format!("--dir {}", d.display()))?
                    .next()
                    .is_some()
            {
                bail!("--dir {}: must be absent or empty", d.display());
            }
            // Absolute, so the rewritten node configurations do not depend on the directory
            // the children start in.
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.canonicalize()
                .with_context(|| format!("--dir {}", d.display()))?
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("ehr-load-")
                .tempdir()
                .context("creating a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let configs = prepare_consortium(&dir)?;
    let urls: Vec<String> = configs.iter().map(|(_, u)| u.clone()).collect();
    let mut children = spawn_nodes(&configs)?;
    let result = async {
        let t0 = Instant::now();
        wait_ready(&mut children, &urls).await?;
        eprintln!(
            "ehr load: {SPAWN_NODES} nodes ready in {:.1?} (pids {})",
            t0.elapsed(),
            children
                .procs
                .iter()
                .map(|c| c.id().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let researcher = Identity::load(&dir.join("researcher-0.json"))?;
        let mut uploaders = Vec::new();
        let mut searchers = Vec::new();
        for (i, u) in urls.iter().enumerate() {
            let hospital = Identity::load(&dir.join(format!("hospital-{i}.json")))?;
            uploaders.push((i, api_for(u, &hospital)?));
            searchers.push((i, api_for(u, &researcher)?));
        }
        let opened = if args.search_concurrency > 0 {
            // Each hospital's default capsule admits the demo researcher.
            open_researcher_capsules(&searchers[0].1, &researcher, SPAWN_NODES).await?
        } else {
            Vec::new()
        };
        let nodes = urls
            .iter()
            .enumerate()
            .map(|(i, u)| (i, u.clone(), MemorySource::Pid(children.procs[i].id())))
            .collect();
        let target = Target {
            uploaders,
            searchers,
            opened: Arc::new(opened),
            nodes,
        };
        let exited = Mutex::new(None::<String>);
        let report = drive(&target, args, "spawn", || {
            let mut e = exited.lock().expect("exit check lock");
            if e.is_none() {
                *e = children.exited();
            }
            e.clone()
        })
        .await?;
        let mut report = report;
        if let Some(why) = exited.into_inner().expect("exit check lock") {
            // The measurements so far are still reported; the run counts as failed.
            eprintln!("ehr load: a node stopped during the load: {why}");
            report.errors.push(ErrorCount {
                op: "node".to_owned(),
                kind: "process exited".to_owned(),
                count: 1,
                example: why,
            });
        }
        anyhow::Ok(report)
    }
    .await;
    let stopped = children.stop().await;
    let report = result?;
    stopped.context("stopping the nodes")?;
    Ok(report)
}

/// Counters the progress line shows.
#[derive(Default)]
struct Live {
    uploads: AtomicU64,
    searches: AtomicU64,
    failures: AtomicU64,
}

/// Runs the load against `target` for `args.duration` and measures it. `node_gone` is asked
/// once a second whether a node process stopped (then the load ends early).
async fn drive(
    target: &Target,
    args: &LoadArgs,
    mode: &str,
    mut node_gone: impl FnMut() -> Option<String>,
) -> anyhow::Result<LoadReport> {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let live = Arc::new(Live::default());
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let deadline = t0 + args.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..usize::from(args.upload_concurrency) {
        let (node, api) = target.uploaders[k % target.uploaders.len()].clone();
        let (tally, live, stop) = (tally.clone(), live.clone(), stop.clone());
        let mut work = Workload::new(args.seed, k as u64);
        tasks.spawn(async move {
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                let record = work.record();
                let len = record.len() as u64;
                let sent = Instant::now();
                let r = api
                    .upload(record.into(), "application/fhir+json", None, None, &[])
                    .await;
                let (t_s, ms) = (
                    (sent - t0).as_secs_f64(),
                    sent.elapsed().as_secs_f64() * 1e3,
                );
                let mut t = tally.lock().expect("tally lock");
                match r {
                    Ok(_) => {
                        t.ok("upload", node, t_s, ms, len);
                        live.uploads.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        t.failed("upload", node, t_s, ms, error_kind(&e), e.to_string());
                        live.failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    for k in 0..usize::from(args.search_concurrency) {
        let (node, api) = target.searchers[k % target.searchers.len()].clone();
        let (tally, live, stop) = (tally.clone(), live.clone(), stop.clone());
        let opened = target.opened.clone();
        let mut work = Workload::new(args.seed, (1 << 32) + k as u64);
        tasks.spawn(async move {
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                let (keywords, combine) = work.query();
                let body = match build_query(&opened, &keywords, combine) {
                    Ok(q) => search_body(&q, SEARCH_LIMIT, None),
                    Err(e) => {
                        let mut t = tally.lock().expect("tally lock");
                        t.failed(
                            "search",
                            node,
                            (Instant::now() - t0).as_secs_f64(),
                            0.0,
                            error_kind(&e),
                            e.to_string(),
                        );
                        live.failures.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                let sent = Instant::now();
                let r = search_once(&api, &body).await;
                let (t_s, ms) = (
                    (sent - t0).as_secs_f64(),
                    sent.elapsed().as_secs_f64() * 1e3,
                );
                let mut t = tally.lock().expect("tally lock");
                match r {
                    Ok(page) => {
                        t.ok("search", node, t_s, ms, page.hits.len() as u64);
                        live.searches.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        t.failed("search", node, t_s, ms, error_kind(&e), e.to_string());
                        live.failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }

    // Memory readings and the progress line, until every task is done.
    let mut samples: Vec<Vec<RssSample>> = vec![Vec::new(); target.nodes.len()];
    let bar = progress_bar(args.duration);
    let mut tick = tokio::time::interval(args.sample_every);
    let signal = super::dev::shutdown_signal();
    tokio::pin!(signal);
    let mut last_line = Instant::now();
    let mut panicked = None;
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Err(e)) => {
                    stop.store(true, Ordering::Relaxed);
                    panicked = Some(e.to_string());
                }
                Some(Ok(())) => {}
            },
            _ = tick.tick() => {
                let t_s = t0.elapsed().as_secs_f64();
                let mut rss = Vec::new();
                for (k, (_, url, src)) in target.nodes.iter().enumerate() {
                    match src.read(url).await {
                        Some((b, anon_bytes)) => {
                            samples[k].push(RssSample { t_s, rss_bytes: b, anon_bytes });
                            rss.push(format!("{:.0}", b as f64 / 1048576.0));
                        }
                        None => rss.push("?".to_owned()),
                    }
                }
                if let Some(why) = node_gone() {
                    tracing::warn!("stopping the load: {why}");
                    stop.store(true, Ordering::Relaxed);
                }
                let (u, s, f) = (
                    live.uploads.load(Ordering::Relaxed),
                    live.searches.load(Ordering::Relaxed),
                    live.failures.load(Ordering::Relaxed),
                );
                let el = t_s.max(1e-3);
                let msg = format!(
                    "uploads {u} ({:.1}/s)  searches {s} ({:.1}/s)  failed {f}  RSS MiB {}",
                    u as f64 / el,
                    s as f64 / el,
                    rss.join("/")
                );
                bar.set_position(t0.elapsed().as_secs().min(args.duration.as_secs()));
                if bar.is_hidden() {
                    if last_line.elapsed() >= Duration::from_secs(10) {
                        eprintln!("ehr load: {:>5.0} s  {msg}", t_s);
                        last_line = Instant::now();
                    }
                } else {
                    bar.set_message(msg);
                }
            },
            _ = &mut signal, if !stop.load(Ordering::Relaxed) => {
                eprintln!("ehr load: stopping early (signal)");
                stop.store(true, Ordering::Relaxed);
            },
        }
    }
    bar.finish_and_clear();
    let elapsed_s = t0.elapsed().as_secs_f64();
    if let Some(p) = panicked {
        bail!("a load task failed: {p}");
    }
    let tally = Arc::try_unwrap(tally)
        .map_err(|_| anyhow::anyhow!("invariant: every load task finished"))?
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a load task panicked holding the tally"))?;
    let nodes = target
        .nodes
        .iter()
        .zip(samples)
        .map(|((i, url, src), samples)| NodeMemory {
            node: *i,
            url: url.clone(),
            pid: match src {
                MemorySource::Pid(p) => Some(*p),
                MemorySource::Metrics(_) => None,
            },
            source: match src {
                MemorySource::Pid(_) => "proc".to_owned(),
                MemorySource::Metrics(_) => "metrics".to_owned(),
            },
            summary: memory_summary(&samples),
            samples,
        })
        .collect();
    Ok(LoadReport {
        mode: mode.to_owned(),
        seed: args.seed,
        upload_concurrency: usize::from(args.upload_concurrency),
        search_concurrency: usize::from(args.search_concurrency),
        duration_s: args.duration.as_secs_f64(),
        elapsed_s,
        uploads: tally.stats("upload", elapsed_s),
        searches: tally.stats("search", elapsed_s),
        errors: tally.errors(),
        nodes,
        ops: tally.into_ops(),
    })
}

/// One `POST /v1/search`, sent once (a retry would hide the failure and its latency).
async fn search_once(api: &Api, body: &str) -> Result<SearchPage, ClientError> {
    let resp = api
        .http
        .send(Method::POST, "v1/search", Retry::Once, |r| {
            r.header(header::CONTENT_TYPE, "application/json")
                .body(body.to_owned())
        })
        .await?;
    read_json(resp, "search").await
}

/// The progress bar over the run's seconds (hidden when standard error is not a terminal;
/// then a plain line is printed every 10 s instead).
fn progress_bar(d: Duration) -> indicatif::ProgressBar {
    use std::io::IsTerminal as _;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(d.as_secs().max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:20}] {msg}")
            .expect("invariant: the template is valid")
            .progress_chars("=> "),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "s", "0s", "-1s", "1.5s", "10 parsecs", "1d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resident_memory_is_read_from_a_metrics_exposition() {
        let text = "# TYPE ehr_ledger_height gauge\nehr_ledger_height 3\n\
                    # TYPE process_resident_memory_bytes gauge\n\
                    process_resident_memory_bytes 123456\n# EOF\n";
        assert_eq!(resident_from_metrics(text), Some(123_456));
        assert_eq!(
            resident_from_metrics("process_resident_memory_bytes 1.5e6 1700000000\n"),
            Some(1_500_000)
        );
        assert_eq!(resident_from_metrics("ehr_ledger_height 3\n"), None);
        assert_eq!(
            resident_from_metrics("process_resident_memory_bytes NaN\n"),
            None
        );
        // The node's own exposition carries it (on Linux).
        let own = crate::node::metrics::Metrics::new().encode();
        assert_eq!(
            resident_from_metrics(&own).is_some(),
            cfg!(target_os = "linux")
        );
    }

    #[test]
    fn reserved_ports_are_distinct() {
        let p = reserve_ports(4).unwrap();
        let mut all: Vec<u16> = p.iter().flat_map(|p| [p.http, p.peer, p.ipfs]).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 12);
    }
}
