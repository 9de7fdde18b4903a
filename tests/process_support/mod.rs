//! Helpers of the process fault tests: a consortium of real `ehr node` OS processes on
//! 127.0.0.1, created with `ehr init-consortium`, whose PBFT links and IPFS swarm links each run
//! through a TCP proxy of the test (one per ordered pair of nodes), so a node can be killed,
//! restarted, partitioned and healed.
//!
//! Every child process is killed when the [`Cluster`] is dropped (also while panicking, when the
//! tail of every node's log is printed first).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::SigningKey;
use ehr::config::NodeConfig;
use ehr::consortium::{ConsortiumFile, IdentityFile};
use ehr_search::abe::UserKey;
use ehr_search::sse::{Capsule, CapsuleId, Keyword, Query, SearchKeyState};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The chain id of the test consortium.
pub const CHAIN: &str = "ehr-faults";
/// Number of nodes.
pub const N: usize = 4;

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Free TCP ports on 127.0.0.1 for the nodes' listeners, which must stay the same across
/// restarts: chosen at random *below* the kernel's ephemeral range (read from
/// `ip_local_port_range`) and checked free by binding, so that neither the proxies (bound to
/// port 0) nor any outgoing connection can take one while its node is down. Falls back to
/// port-0 reservations when the range leaves no room below it.
#[derive(Debug, Default)]
pub struct Ports {
    taken: BTreeSet<u16>,
}

impl Ports {
    /// A fresh free port, distinct from every port this pool handed out.
    pub fn take(&mut self) -> u16 {
        let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32768);
        let mut rng = rand::thread_rng();
        for _ in 0..1000 {
            let p = if low > 12000 {
                rand::Rng::gen_range(&mut rng, 10000..low)
            } else {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("bind an ephemeral port")
                    .port()
            };
            if !self.taken.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
                self.taken.insert(p);
                return p;
            }
        }
        panic!("no free port found on 127.0.0.1");
    }
}

// ---------------------------------------------------------------------------------------------
// The link proxy
// ---------------------------------------------------------------------------------------------

/// A one-target TCP proxy. While cut, its open connections are closed and new ones are
/// accepted and closed at once (the dialler sees the connection fail and retries).
#[derive(Debug)]
pub struct Link {
    /// Where the proxy listens.
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Starts a proxy to `target` on the current runtime.
    pub async fn start(target: SocketAddr) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if *rx.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Link { addr, cut, task }
    }

    /// Cuts (`true`) or heals (`false`) the link.
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.set_cut(true);
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Identities and HTTP
// ---------------------------------------------------------------------------------------------

/// A participant as the test drives it.
pub struct Who {
    /// Its signing key.
    pub key: SigningKey,
    /// Its attribute key, if any.
    pub abe: Option<UserKey>,
}

impl Who {
    /// Loads an identity file.
    pub fn load(path: &Path) -> Who {
        let f = IdentityFile::load(path)
            .unwrap_or_else(|e| panic!("identity file {}: {e}", path.display()));
        Who {
            key: f.signing_key().expect("identity signing key"),
            abe: f.abe_key().expect("identity attribute key"),
        }
    }

    /// A fresh bearer token.
    pub fn token(&self) -> String {
        ehr::auth::mint_eddsa(&self.key, CHAIN, now(), 120)
    }
}

/// One HTTP answer, read whole.
#[derive(Debug)]
pub struct Resp {
    /// Status.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text (for messages).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP client with a bounded time per request.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .expect("HTTP client")
}

/// Sends a request with `who`'s token; `Err` on a transport failure (refused, reset, timeout).
pub async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    who: Option<&Who>,
    ctype: Option<&str>,
    body: Vec<u8>,
) -> Result<Resp, reqwest::Error> {
    let mut rb = http.request(method, url).body(body);
    if let Some(w) = who {
        rb = rb.bearer_auth(w.token());
    }
    if let Some(c) = ctype {
        rb = rb.header("content-type", c);
    }
    let r = rb.send().await?;
    let status = r.status().as_u16();
    let body = r.bytes().await?.to_vec();
    Ok(Resp { status, body })
}

// ---------------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------------

/// One node process and where it lives.
#[derive(Debug)]
pub struct NodeProc {
    /// Its configuration file.
    pub config: PathBuf,
    /// Its log file (stdout and stderr of every run, appended).
    pub log: PathBuf,
    /// Its HTTP address.
    pub http: SocketAddr,
    /// The running process, if any.
    pub child: Option<Child>,
    /// How many times it was started.
    pub starts: u32,
}

/// The ledger head as one node reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Executed height.
    pub height: u64,
    /// Hash of the head block (hex).
    pub hash: String,
    /// Current PBFT view.
    pub view: u64,
}

/// A consortium of [`N`] node processes behind link proxies.
pub struct Cluster {
    /// The nodes.
    pub nodes: Vec<NodeProc>,
    /// PBFT links: `ledger_links[i][j]` carries what node `i` sends to node `j` (`None` on
    /// the diagonal).
    pub ledger_links: Vec<Vec<Option<Link>>>,
    /// IPFS swarm links, laid out as [`Cluster::ledger_links`] (node `i` dials node `j`).
    pub swarm_links: Vec<Vec<Option<Link>>>,
    /// The consortium directory.
    pub dir: PathBuf,
    /// The demo researcher (holds the default policy's attributes).
    pub researcher: Who,
    /// Each node's hospital.
    pub hospitals: Vec<Who>,
    /// The HTTP client.
    pub http: reqwest::Client,
    _tmp: tempfile::TempDir,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Runs the genesis ceremony, rewrites every node's configuration to loopback addresses
    /// behind the proxies, and starts the proxies (not the nodes).
    pub async fn create() -> Cluster {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let dir = tmp.path().join("consortium");
        let out = Command::new(env!("CARGO_BIN_EXE_ehr"))
            .args(["init-consortium", "--nodes", "4", "--chain-id", CHAIN])
            .args(["--host-pattern", "127.0.0.1", "--out"])
            .arg(&dir)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run ehr init-consortium");
        assert!(
            out.status.success(),
            "ehr init-consortium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let consortium: ConsortiumFile = serde_json::from_slice(
            &std::fs::read(dir.join("consortium.json")).expect("consortium.json"),
        )
        .expect("consortium.json parses");

        let mut ports = Ports::default();
        let http_ports: Vec<u16> = (0..N).map(|_| ports.take()).collect();
        let ledger_ports: Vec<u16> = (0..N).map(|_| ports.take()).collect();
        let swarm_ports: Vec<u16> = (0..N).map(|_| ports.take()).collect();
        let loopback = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));

        let mut ledger_links = Vec::new();
        let mut swarm_links = Vec::new();
        for i in 0..N {
            let mut lrow = Vec::new();
            let mut srow = Vec::new();
            for j in 0..N {
                if i == j {
                    lrow.push(None);
                    srow.push(None);
                } else {
                    lrow.push(Some(Link::start(loopback(ledger_ports[j])).await));
                    srow.push(Some(Link::start(loopback(swarm_ports[j])).await));
                }
            }
            ledger_links.push(lrow);
            swarm_links.push(srow);
        }

        let mut nodes = Vec::new();
        for i in 0..N {
            let node_dir = dir.join(format!("node-{i}"));
            let config = node_dir.join("node.toml");
            let mut cfg =
                NodeConfig::load(&config).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
            assert_eq!(cfg.replica_id as usize, i, "node-{i} is replica {i}");
            cfg.http.listen = loopback(http_ports[i]).to_string();
            cfg.http.request_timeout_secs = 20;
            cfg.ledger.listen = loopback(ledger_ports[i]).to_string();
            cfg.ledger.peers = (0..N)
                .map(|j| match &ledger_links[i][j] {
                    Some(l) => l.addr.to_string(),
                    None => loopback(ledger_ports[i]).to_string(),
                })
                .collect();
            cfg.ipfs.listen = vec![format!("/ip4/127.0.0.1/tcp/{}", swarm_ports[i])];
            let direct = std::env::var_os("EHR_FAULT_DIRECT_SWARM").is_some();
            cfg.ipfs.bootstrap = (0..N)
                .filter_map(|j| {
                    swarm_links[i][j].as_ref().map(|l| {
                        format!(
                            "/ip4/127.0.0.1/tcp/{}/p2p/{}",
                            if direct {
                                swarm_ports[j]
                            } else {
                                l.addr.port()
                            },
                            consortium.validators[j].ipfs_peer_id
                        )
                    })
                })
                .collect();
            cfg.validate().expect("rewritten configuration is valid");
            std::fs::write(&config, cfg.to_toml()).expect("write node.toml");
            nodes.push(NodeProc {
                config,
                log: node_dir.join("node.log"),
                http: loopback(http_ports[i]),
                child: None,
                starts: 0,
            });
        }
        let researcher = Who::load(&dir.join("researcher-0.json"));
        let hospitals = (0..N)
            .map(|i| Who::load(&dir.join(format!("hospital-{i}.json"))))
            .collect();
        Cluster {
            nodes,
            ledger_links,
            swarm_links,
            dir,
            researcher,
            hospitals,
            http: client(),
            _tmp: tmp,
        }
    }

    /// Starts node `i`'s process (it must not be running).
    pub fn start(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        assert!(n.child.is_none(), "node {i} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .expect("open node log");
        let child = Command::new(env!("CARGO_BIN_EXE_ehr"))
            .arg("node")
            .arg("--config")
            .arg(&n.config)
            .env(
                "RUST_LOG",
                std::env::var("EHR_FAULT_NODE_LOG")
                    .unwrap_or_else(|_| "warn,ehr=info,ehr_storage=info".to_owned()),
            )
            .env_remove("EHR_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn ehr node");
        n.child = Some(child);
        n.starts += 1;
    }

    /// Kills node `i` with SIGKILL and reaps it.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether node `i`'s process is running (a process that exited is reaped and reported).
    pub fn alive(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(Ok(Some(status))) => {
                panic!(
                    "node {i} exited on its own ({status}); log:\n{}",
                    self.tail(i)
                )
            }
            Some(Err(e)) => panic!("node {i}: {e}"),
            None => false,
        }
    }

    /// Cuts (or heals) every PBFT and swarm link from and to node `i`.
    pub fn partition(&self, i: usize, cut: bool) {
        for links in [&self.ledger_links, &self.swarm_links] {
            let from = links[i].iter();
            let to = links.iter().map(|row| &row[i]);
            for l in from.chain(to).flatten() {
                l.set_cut(cut);
            }
        }
    }

    /// Node `i`'s base URL joined with `path`.
    pub fn url(&self, i: usize, path: &str) -> String {
        format!("http://{}{path}", self.nodes[i].http)
    }

    /// The last lines of node `i`'s log.
    pub fn tail(&self, i: usize) -> String {
        let text = std::fs::read(&self.nodes[i].log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Every node's log tail.
    pub fn tails(&self) -> String {
        (0..N)
            .map(|i| format!("----- node {i} log tail -----\n{}\n", self.tail(i)))
            .collect()
    }

    /// Whether node `i` answers `/readyz` with 200.
    pub async fn ready(&self, i: usize) -> bool {
        matches!(
            send(&self.http, reqwest::Method::GET, self.url(i, "/readyz"), None, None, vec![]).await,
            Ok(r) if r.status == 200
        )
    }

    /// Node `i`'s ledger head, or `None` if it does not answer.
    pub async fn head(&self, i: usize) -> Option<Head> {
        let r = send(
            &self.http,
            reqwest::Method::GET,
            self.url(i, "/v1/ledger/head"),
            Some(&self.researcher),
            None,
            vec![],
        )
        .await
        .ok()?;
        if r.status != 200 {
            return None;
        }
        let v = r.json();
        Some(Head {
            height: v["height"].as_u64()?,
            hash: v["hash"].as_str()?.to_owned(),
            view: v["view"].as_u64()?,
        })
    }

    /// A sample of node `i`'s `/metrics` by its full name (e.g. `ehr_replication_queue`).
    pub async fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let r = send(
            &self.http,
            reqwest::Method::GET,
            self.url(i, "/metrics"),
            None,
            None,
            vec![],
        )
        .await
        .ok()?;
        let text = String::from_utf8_lossy(&r.body).into_owned();
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// Polls `check` every 250 ms until it holds; panics after `limit` with `what` and every
    /// node's log tail.
    pub async fn wait_for<F, Fut>(&self, what: &str, limit: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while !check().await {
            if start.elapsed() > limit {
                panic!(
                    "timed out after {limit:?} waiting for: {what}\n{}",
                    self.tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until node `i` is ready.
    pub async fn wait_ready(&self, i: usize, limit: Duration) {
        self.wait_for(&format!("node {i} ready"), limit, || self.ready(i))
            .await;
    }

    /// The largest height any of `among` reports.
    pub async fn max_height(&self, among: &[usize]) -> u64 {
        let mut best = 0;
        for &i in among {
            if let Some(h) = self.head(i).await {
                best = best.max(h.height);
            }
        }
        best
    }

    /// Waits until every node reports the same head (height and block hash) twice in a row,
    /// one second apart, and is ready; returns it.
    pub async fn converge(&self, limit: Duration) -> Head {
        let start = Instant::now();
        let mut last: Option<Head> = None;
        loop {
            let mut heads = Vec::new();
            for i in 0..N {
                heads.push(self.head(i).await);
            }
            let all_ready = {
                let mut ok = true;
                for i in 0..N {
                    ok &= self.ready(i).await;
                }
                ok
            };
            let first = heads[0].clone();
            let same = first.as_ref().is_some_and(|f| {
                heads.iter().all(|h| {
                    h.as_ref()
                        .is_some_and(|h| h.height == f.height && h.hash == f.hash)
                })
            });
            if same && all_ready {
                let f = first.expect("checked above");
                if last
                    .as_ref()
                    .is_some_and(|l| l.height == f.height && l.hash == f.hash)
                {
                    return f;
                }
                last = Some(f);
            } else {
                last = None;
            }
            if start.elapsed() > limit {
                panic!(
                    "the nodes did not converge within {limit:?}: heads {heads:?}\n{}",
                    self.tails()
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Opens every capsule the researcher's attribute key satisfies (as node `i` lists them).
    pub async fn open_capsules(&self, i: usize) -> Vec<(CapsuleId, SearchKeyState)> {
        let r = send(
            &self.http,
            reqwest::Method::GET,
            self.url(i, "/v1/capsules"),
            Some(&self.researcher),
            None,
            vec![],
        )
        .await
        .expect("list capsules");
        assert_eq!(r.status, 200, "GET /v1/capsules: {}", r.text());
        let key = self
            .researcher
            .abe
            .as_ref()
            .expect("researcher attribute key");
        r.json()["capsules"]
            .as_array()
            .expect("capsules array")
            .iter()
            .filter_map(|c| {
                let bytes = B64
                    .decode(
                        c["wrapped_search_key"]
                            .as_str()
                            .expect("wrapped_search_key"),
                    )
                    .expect("capsule is base64url");
                let cap = Capsule::from_bytes(&bytes).expect("capsule decodes");
                cap.open(key).ok().map(|s| (cap.capsule_id(), s))
            })
            .collect()
    }

    /// Every CID node `i` returns for one keyword searched with trapdoors of `opened` (the
    /// same trapdoor bytes are sent to every node), following cursors.
    pub async fn search(
        &self,
        i: usize,
        opened: &[(CapsuleId, SearchKeyState)],
        kw: &Keyword,
    ) -> BTreeSet<String> {
        let mut ts = Vec::new();
        for (id, st) in opened {
            if let Query::Keyword(t) = Query::keyword(st, *id, kw) {
                ts.extend(t.iter().map(|t| B64.encode(&*t.to_bytes())));
            }
        }
        assert!(!ts.is_empty(), "the researcher opens at least one capsule");
        let mut out = BTreeSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut body = json!({"query": {"keyword": ts}, "limit": 1000});
            if let Some(c) = &cursor {
                body["cursor"] = json!(c);
            }
            let r = send(
                &self.http,
                reqwest::Method::POST,
                self.url(i, "/v1/search"),
                Some(&self.researcher),
                Some("application/json"),
                serde_json::to_vec(&body).expect("JSON"),
            )
            .await
            .unwrap_or_else(|e| panic!("search at node {i}: {e}"));
            assert_eq!(r.status, 200, "search at node {i}: {}", r.text());
            let v = r.json();
            for h in v["hits"].as_array().expect("hits") {
                out.insert(h["cid"].as_str().expect("hit cid").to_owned());
            }
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return out,
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        use std::io::Write as _;
        // Kill first: nothing below may keep a node alive (a failed write must not panic here).
        for i in 0..N {
            self.kill9(i);
        }
        if std::thread::panicking() {
            let _ = writeln!(std::io::stderr(), "{}", self.tails());
        }
        if std::env::var_os("EHR_FAULT_KEEP").is_some() {
            let dir = self.dir.clone();
            let tmp = std::mem::replace(
                &mut self._tmp,
                tempfile::tempdir().expect("temporary directory"),
            );
            let _ = tmp.keep();
            let _ = writeln!(std::io::stderr(), "[faults] kept {}", dir.display());
        }
    }
}
