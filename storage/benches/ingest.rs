//! Ingest and serving figures of the IPFS blockstore, with a JS (Helia) anchor in the same run.
//!
//! `cargo bench -p ehr-storage --bench ingest` prints one table:
//! - durable ingest: generate plaintext -> seal (chunked AES-256-GCM) -> 256 KiB chunks ->
//!   CIDs -> fsynced block writes -> recursive pin, for 256 MiB and 1 GiB, each in a child
//!   process whose peak RSS (VmHWM) is reported; also without the seal step;
//! - Helia `addBytes` into `blockstore-fs` with the same CID parameters (no fsync there);
//! - read-back: verified cat -> open (authenticate + decrypt), MB/s and peak RSS;
//! - bitswap serving: a Helia client on loopback fetching a 256 MiB sealed record.
//!
//! MB = 10^6 bytes. Sizes can be overridden with `EHR_BENCH_SIZES_MIB=256,1024`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::task::{Context, Poll};
use std::time::Instant;

use ehr_storage::blockstore::{Blockstore, BlockstoreConfig, Cid};
use ehr_storage::seal::{DataKey, Opener, SealConfig, SealContext, Sealer};
use futures::StreamExt;
use tokio::io::{AsyncRead, ReadBuf};

const MIB: u64 = 1024 * 1024;
/// Not a secret: a fixed key so the child processes of one run agree.
const BENCH_KEY: [u8; 32] = [0x42; 32];

/// Deterministic pseudo-random plaintext, generated on the fly (never held whole).
struct Plain {
    left: u64,
    x: u64,
}

impl Plain {
    fn new(len: u64) -> Self {
        Self {
            left: len,
            x: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn fill(&mut self, buf: &mut [u8]) -> usize {
        let n = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        for word in buf[..n].chunks_mut(8) {
            self.x ^= self.x >> 12;
            self.x ^= self.x << 25;
            self.x ^= self.x >> 27;
            let v = self.x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            word.copy_from_slice(&v[..word.len()]);
        }
        self.left -= n as u64;
        n
    }
}

/// An `AsyncRead` of the plaintext, optionally sealed on the fly.
struct Source {
    plain: Plain,
    sealer: Option<Sealer>,
    seal: bool,
    scratch: Vec<u8>,
    out: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Source {
    fn new(len: u64, seal: bool) -> Self {
        let sealer = seal.then(|| {
            let key = DataKey::from_bytes(BENCH_KEY);
            Sealer::new(&key, &context(), SealConfig::default()).expect("sealer")
        });
        Self {
            plain: Plain::new(len),
            sealer,
            seal,
            scratch: vec![0; MIB as usize],
            out: Vec::new(),
            pos: 0,
            done: false,
        }
    }

    fn refill(&mut self) {
        self.out.clear();
        self.pos = 0;
        let n = self.plain.fill(&mut self.scratch);
        if !self.seal {
            self.out.extend_from_slice(&self.scratch[..n]);
            self.done = n == 0;
            return;
        }
        if n > 0 {
            self.sealer
                .as_mut()
                .expect("sealer present until finish")
                .update(&self.scratch[..n], &mut self.out);
        } else if let Some(s) = self.sealer.take() {
            s.finish(&mut self.out);
        } else {
            self.done = true;
        }
    }
}

impl AsyncRead for Source {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.pos == self.out.len() && !self.done {
            self.refill();
        }
        let this = &mut *self;
        let n = buf.remaining().min(this.out.len() - this.pos);
        buf.put_slice(&this.out[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

fn context() -> SealContext {
    SealContext::new(b"bench-policy".to_vec()).with_record(b"bench-record".to_vec())
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn offline(repo: &Path) -> BlockstoreConfig {
    BlockstoreConfig {
        repo: repo.to_path_buf(),
        listen: Vec::new(),
        ..Default::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Child: ingest `mib` MiB into `repo`; prints `cid bytes seconds vmhwm_kib`.
fn child_ingest(mib: u64, repo: &Path, seal: bool) {
    runtime().block_on(async {
        let store = Blockstore::open(offline(repo)).await.expect("open");
        let start = Instant::now();
        let added = store.add(Source::new(mib * MIB, seal)).await.expect("add");
        let secs = start.elapsed().as_secs_f64();
        println!("{} {} {secs} {}", added.cid, added.size, vm_hwm_kib());
        store.shutdown().await;
    });
}

/// Child: read `cid` back (verified cat, then open if sealed); prints `bytes seconds vmhwm_kib`.
fn child_read(cid: Cid, repo: &Path, seal: bool) {
    runtime().block_on(async {
        let store = Blockstore::open(offline(repo)).await.expect("open");
        let start = Instant::now();
        let mut stream = store.cat(cid);
        let mut opener =
            seal.then(|| Opener::new(&DataKey::from_bytes(BENCH_KEY), &context()).expect("opener"));
        let mut plain = Vec::with_capacity(2 * MIB as usize);
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.expect("verified block");
            match &mut opener {
                Some(o) => {
                    o.update(&chunk, &mut plain).expect("authentic segment");
                    total += plain.len() as u64;
                    plain.clear();
                }
                None => total += chunk.len() as u64,
            }
        }
        if let Some(o) = opener {
            o.finish(&mut plain).expect("authentic final segment");
            total += plain.len() as u64;
        }
        let secs = start.elapsed().as_secs_f64();
        println!("{total} {secs} {}", vm_hwm_kib());
        drop(stream);
        store.shutdown().await;
    });
}

fn run_child(args: &[String]) -> Vec<String> {
    let out = Command::new(std::env::current_exe().expect("bench binary"))
        .args(args)
        .output()
        .expect("spawn child");
    assert!(
        out.status.success(),
        "child {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn setup_js() -> (PathBuf, PathBuf) {
    let root = manifest_dir().parent().expect("workspace").to_path_buf();
    let out = Command::new("bash")
        .arg(root.join("scripts/setup-js.sh"))
        .output()
        .expect("setup-js");
    assert!(
        out.status.success(),
        "setup-js.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        PathBuf::from(String::from_utf8(out.stdout).expect("utf-8").trim()),
        root.join("tests/js"),
    )
}

fn mbps(bytes: f64, secs: f64) -> f64 {
    bytes / 1e6 / secs
}

fn row(what: &str, size_mib: u64, mb_s: f64, rss_mib: Option<f64>) {
    let rss = rss_mib.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"));
    println!("| {what:<58} | {size_mib:>5} MiB | {mb_s:>8.1} | {rss:>9} |");
    std::io::stdout().flush().ok();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--child-ingest") => {
            return child_ingest(
                args[1].parse().expect("MiB"),
                Path::new(&args[2]),
                args[3] == "seal",
            );
        }
        Some("--child-read") => {
            return child_read(
                args[1].parse().expect("cid"),
                Path::new(&args[2]),
                args[3] == "seal",
            );
        }
        _ => {}
    }
    let sizes: Vec<u64> = std::env::var("EHR_BENCH_SIZES_MIB")
        .unwrap_or_else(|_| "256,1024".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("EHR_BENCH_SIZES_MIB: comma-separated MiB")
        })
        .collect();
    let (node, js_dir) = setup_js();
    let work = tempfile::tempdir().expect("tempdir");
    println!(
        "ingest bench: {} cores; MB = 10^6 bytes; RSS = peak VmHWM of the child process",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| {:<58} | {:>9} | {:>8} | {:>9} |",
        "measurement", "size", "MB/s", "RSS MiB"
    );
    println!("|{:-<60}|{:-<11}|{:-<10}|{:-<11}|", "", "", "", "");

    for &mib in &sizes {
        let bytes = (mib * MIB) as f64;
        // Helia anchor first, then ours, on fresh directories
        let helia_dir = work.path().join(format!("helia-{mib}"));
        std::fs::create_dir_all(&helia_dir).expect("mkdir");
        let out = Command::new(&node)
            .arg(js_dir.join("helia-add.mjs"))
            .arg(&helia_dir)
            .arg(mib.to_string())
            .current_dir(&js_dir)
            .output()
            .expect("run helia-add");
        assert!(
            out.status.success(),
            "helia-add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("helia-add JSON");
        row(
            "Helia addBytes -> blockstore-fs (no fsync), Kubo params",
            mib,
            v["mb_per_s"].as_f64().unwrap_or(0.0),
            None,
        );
        std::fs::remove_dir_all(&helia_dir).ok();

        for seal in [true, false] {
            let repo = work.path().join(format!("repo-{mib}-{seal}"));
            let mode = if seal { "seal" } else { "plain" };
            let r = run_child(&[
                "--child-ingest".into(),
                mib.to_string(),
                repo.display().to_string(),
                mode.into(),
            ]);
            let (cid, size, secs, hwm): (String, f64, f64, f64) = (
                r[0].clone(),
                r[1].parse().expect("size"),
                r[2].parse().expect("secs"),
                r[3].parse().expect("hwm"),
            );
            let label = if seal {
                "ehr seal+chunk+CID+fsync store+pin (durable ingest)"
            } else {
                "ehr chunk+CID+fsync store+pin (no seal)"
            };
            row(label, mib, mbps(size, secs), Some(hwm / 1024.0));
            let r = run_child(&[
                "--child-read".into(),
                cid,
                repo.display().to_string(),
                mode.into(),
            ]);
            let (total, secs, hwm): (f64, f64, f64) = (
                r[0].parse().expect("bytes"),
                r[1].parse().expect("secs"),
                r[2].parse().expect("hwm"),
            );
            assert_eq!(total, bytes, "read back the whole record");
            let label = if seal {
                "ehr verified cat + open (read-back, plaintext MB/s)"
            } else {
                "ehr verified cat (read-back)"
            };
            row(label, mib, mbps(total, secs), Some(hwm / 1024.0));
            std::fs::remove_dir_all(&repo).ok();
        }
    }

    // Bitswap serving to a Helia client on loopback
    let serve_mib = 256;
    runtime().block_on(async {
        let repo = work.path().join("serve");
        let store = Blockstore::open(BlockstoreConfig {
            repo: repo.clone(),
            ..Default::default()
        })
        .await
        .expect("open");
        let added = store
            .add(Source::new(serve_mib * MIB, true))
            .await
            .expect("add");
        let tcp = store
            .listen_addrs()
            .await
            .expect("addrs")
            .into_iter()
            .find(|a| a.to_string().contains("/tcp/"))
            .expect("tcp listener");
        let dial = format!("{tcp}/p2p/{}", store.peer_id());
        let out = tokio::process::Command::new(&node)
            .arg(js_dir.join("helia-fetch.mjs"))
            .args([dial, "600000".into(), added.cid.to_string()])
            .current_dir(&js_dir)
            .output()
            .await
            .expect("run helia-fetch");
        assert!(
            out.status.success(),
            "helia-fetch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("helia-fetch JSON");
        assert_eq!(
            v["bytes"].as_u64(),
            Some(added.size),
            "Helia received the whole record"
        );
        let ms = v["ms"].as_f64().unwrap_or(f64::INFINITY);
        row(
            "bitswap serve -> Helia client over TCP loopback (sealed)",
            serve_mib,
            mbps(added.size as f64, ms / 1e3),
            None,
        );
        store.shutdown().await;
    });
}

/// The package directory: cargo's run-time value (a test binary reused from a build in another
/// checkout would carry that checkout's compile-time path), else the compile-time one.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
