//! Helpers shared by the blockstore integration tests: seeded data, offline stores, and the
//! JavaScript reference implementations (installed by `scripts/setup-js.sh`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ehr_storage::blockstore::BlockstoreConfig;

/// Deterministic pseudo-random bytes (xorshift64*), the same for a given `(len, seed)`.
pub fn seeded(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A store configuration for `repo` with no listeners (dial-out only).
pub fn offline(repo: &Path) -> BlockstoreConfig {
    BlockstoreConfig {
        repo: repo.to_path_buf(),
        listen: Vec::new(),
        ..Default::default()
    }
}

/// The workspace root (the storage crate's parent directory).
pub fn workspace_root() -> PathBuf {
    manifest_dir()
        .parent()
        .expect("storage crate has a parent")
        .to_path_buf()
}

/// Runs `scripts/setup-js.sh` once per test binary and returns (node binary, tests/js dir).
/// Panics with npm's reason if the packages cannot be installed: there is no skip path.
pub fn js() -> (PathBuf, PathBuf) {
    static NODE: OnceLock<PathBuf> = OnceLock::new();
    let root = workspace_root();
    let node = NODE.get_or_init(|| {
        let out = Command::new("bash")
            .arg(root.join("scripts/setup-js.sh"))
            .output()
            .expect("running scripts/setup-js.sh");
        assert!(
            out.status.success(),
            "scripts/setup-js.sh failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim())
    });
    (node.clone(), root.join("tests/js"))
}

/// Runs `node tests/js/<script> args...` and returns its stdout; panics with stderr on failure.
pub fn run_js(script: &str, args: &[String]) -> String {
    let (node, dir) = js();
    let out = Command::new(node)
        .arg(dir.join(script))
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("running node");
    assert!(
        out.status.success(),
        "node {script} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The package directory: cargo's run-time value (a test binary reused from a build in another
/// checkout would carry that checkout's compile-time path), else the compile-time one.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
