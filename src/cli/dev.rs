//! `ehr dev`: an embedded 4-replica consortium in one process on 127.0.0.1.
//!
//! On first run the genesis ceremony writes the consortium into `--dir` (default `ehr-dev`);
//! later runs reuse it (ledgers, blockstores and indexes persist under `node-<i>/data`). Every
//! listener is on 127.0.0.1 with an ephemeral port (node 0's HTTP port can be fixed with
//! `--http-port`); `consortium.json` and the identity files' `node` are rewritten with this
//! run's addresses. Demo identities: `authority.json`, `hospital-<i>.json` and
//! `researcher.json` (its attribute key combined from t partial keys; it holds
//! `role:researcher` and `irb:study-42`, which the hospitals' default policy asks for).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ehr_storage::blockstore::Multiaddr;

use crate::config::NodeConfig;
use crate::consortium::{
    ConsortiumFile, IdentityFile, InitOptions, init_consortium, write_public_atomically,
};
use crate::node::{Node, StartOptions};

/// Number of replicas of the embedded consortium.
pub const DEV_NODES: usize = 4;

/// Arguments of `ehr dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Directory of the embedded consortium (created on first run, reused after).
    #[arg(
        long,
        env = "EHR_DEV_DIR",
        default_value = "ehr-dev",
        value_name = "DIR"
    )]
    pub dir: PathBuf,
    /// HTTP port of node 0 (0: ephemeral). The other nodes use ephemeral ports.
    #[arg(long, default_value_t = 0)]
    pub http_port: u16,
}

/// Runs `ehr dev` until Ctrl-C (or SIGTERM).
pub fn run(args: DevArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let dev = DevConsortium::start(&args.dir, args.http_port).await?;
        dev.print();
        shutdown_signal().await;
        println!("ehr dev: stopping");
        dev.shutdown().await;
        Ok(())
    })
}

/// A running embedded consortium.
#[derive(Debug)]
pub struct DevConsortium {
    /// The nodes, by replica id.
    pub nodes: Vec<Node>,
    /// Its directory.
    pub dir: PathBuf,
    /// Start to ready.
    pub ready_after: Duration,
}

impl DevConsortium {
    /// Creates (first run) or reuses the consortium in `dir` and starts every node; returns
    /// when all are ready.
    pub async fn start(dir: &std::path::Path, http_port: u16) -> anyhow::Result<DevConsortium> {
        let t0 = Instant::now();
        let cpath = dir.join("consortium.json");
        if !cpath.exists() {
            init_consortium(&InitOptions {
                nodes: DEV_NODES,
                out: dir.to_path_buf(),
                chain_id: "ehr-dev".into(),
                host_pattern: "127.0.0.1".into(),
                researchers: 2,
                ..InitOptions::default()
            })
            .with_context(|| format!("creating the consortium in {}", dir.display()))?;
            std::fs::rename(dir.join("researcher-0.json"), dir.join("researcher.json"))
                .context("naming the demo researcher's identity")?;
        }
        let mut http = Vec::new();
        let mut ledger = Vec::new();
        for i in 0..DEV_NODES {
            let port = if i == 0 { http_port } else { 0 };
            http.push(
                tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .with_context(|| format!("binding 127.0.0.1:{port}"))?,
            );
            ledger.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
        }
        let peer_addrs: Vec<String> = ledger
            .iter()
            .map(|l| l.local_addr().map(|a| a.to_string()))
            .collect::<Result<_, _>>()?;
        let http_urls: Vec<String> = http
            .iter()
            .map(|l| l.local_addr().map(|a| format!("http://{a}")))
            .collect::<Result<_, _>>()?;
        let mut starts = Vec::new();
        for (i, (h, l)) in http.into_iter().zip(ledger).enumerate() {
            let cfg = NodeConfig::load(&dir.join(format!("node-{i}/node.toml")))?;
            let opts = StartOptions {
                http_listener: Some(h),
                ledger_listener: Some(l),
                peer_addrs: Some(peer_addrs.clone()),
                ipfs_listen: Some(vec!["/ip4/127.0.0.1/tcp/0".parse::<Multiaddr>()?]),
                ipfs_bootstrap: Some(vec![]),
                ..StartOptions::default()
            };
            starts.push(Node::start(cfg, opts));
        }
        let mut nodes = Vec::new();
        for r in futures::future::join_all(starts).await {
            nodes.push(r.context("starting a node")?);
        }
        // The swarm: every node dials every other one.
        let mut addrs = Vec::new();
        for n in &nodes {
            let bs = &n.ctx().blockstore;
            let peer = bs.peer_id();
            let a: Vec<String> = bs
                .listen_addrs()
                .await?
                .into_iter()
                .map(|a| format!("{a}/p2p/{peer}"))
                .collect();
            addrs.push(a);
        }
        for (i, n) in nodes.iter().enumerate() {
            for (j, a) in addrs.iter().enumerate() {
                if i != j
                    && let Some(first) = a.first()
                    && let Err(e) = n.ctx().blockstore.connect(first.parse()?).await
                {
                    tracing::warn!(error = %e, "dev swarm: dial failed");
                }
            }
        }
        // Public addresses of this run.
        let mut file: ConsortiumFile = serde_json::from_slice(&std::fs::read(&cpath)?)?;
        for (i, v) in file.validators.iter_mut().enumerate() {
            v.peer_addr = peer_addrs[i].clone();
            v.http_url = http_urls[i].clone();
            v.ipfs_addrs = addrs[i]
                .iter()
                .map(|a| a.split("/p2p/").next().unwrap_or(a).to_owned())
                .collect();
        }
        write_public_atomically(&cpath, &serde_json::to_vec_pretty(&file)?)?;
        for entry in std::fs::read_dir(dir)? {
            let p = entry?.path();
            let name = p.file_name().and_then(|s| s.to_str()).unwrap_or("");
            if p.extension().is_some_and(|e| e == "json") && name != "consortium.json" {
                let mut id = IdentityFile::load(&p)?;
                let node = name
                    .strip_prefix("hospital-")
                    .and_then(|s| s.strip_suffix(".json"))
                    .and_then(|s| s.parse::<usize>().ok())
                    .filter(|i| *i < DEV_NODES)
                    .unwrap_or(0);
                id.node = Some(http_urls[node].clone());
                id.save(&p)?;
            }
        }
        for n in &nodes {
            if !n.wait_ready(Duration::from_secs(120)).await {
                anyhow::bail!("a node did not become ready: {}", n.ctx().readiness().1);
            }
        }
        Ok(DevConsortium {
            nodes,
            dir: dir.to_path_buf(),
            ready_after: t0.elapsed(),
        })
    }

    /// Prints the URLs, files and next commands.
    pub fn print(&self) {
        println!(
            "ehr dev: {} replicas ready in {:.2?}",
            self.nodes.len(),
            self.ready_after
        );
        for (i, n) in self.nodes.iter().enumerate() {
            println!("  node-{i}: http://{}", n.http_addr());
        }
        let d = self.dir.display();
        println!("files:");
        println!("  {d}/consortium.json      (public trust anchor)");
        println!("  {d}/authority.json       (attribute authority identity)");
        println!("  {d}/hospital-<i>.json    (hospital i, uploads through node-i)");
        println!(
            "  {d}/researcher.json      (role:researcher, irb:study-42, attribute key included)"
        );
        println!("  {d}/researcher-1.json    (role:researcher only: finds nothing)");
        println!("next:");
        println!("  curl http://{}/readyz", self.nodes[0].http_addr());
        println!("  curl http://{}/openapi.json", self.nodes[0].http_addr());
        println!(
            "  the CLI client commands take --identity {d}/hospital-0.json (upload) or {d}/researcher.json (search, read)"
        );
        println!("ehr dev: Ctrl-C to stop");
    }

    /// Stops every node.
    pub async fn shutdown(self) {
        futures::future::join_all(self.nodes.into_iter().map(Node::shutdown)).await;
    }
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM (what Kubernetes and `kill` send).
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
