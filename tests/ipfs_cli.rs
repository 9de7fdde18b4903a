//! End-to-end tests of `ehr ipfs ...`: the real binary on real repositories in temp dirs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn seeded(len: usize, seed: u64) -> Vec<u8> {
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

fn ehr(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ehr"));
    cmd.args(args)
        .env_remove("EHR_IPFS_REPO")
        .env_remove("EHR_DATA_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run ehr")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "ehr failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

fn lines(s: &str) -> Vec<String> {
    s.lines().map(str::to_owned).collect()
}

/// Node 22 from `scripts/setup-js.sh` (installs tests/js on first use; fails loudly if npm does).
fn js_parity(files: &[PathBuf]) -> Vec<String> {
    let root = manifest_dir();
    let setup = Command::new("bash")
        .arg(root.join("scripts/setup-js.sh"))
        .output()
        .expect("setup-js");
    assert!(
        setup.status.success(),
        "setup-js.sh failed: {}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let node = String::from_utf8(setup.stdout).expect("utf-8");
    let out = Command::new(node.trim())
        .arg(root.join("tests/js/parity.mjs"))
        .args(files)
        .output()
        .expect("run parity.mjs");
    lines(&ok(out))
}

#[test]
fn add_only_hash_prints_kubo_cids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (i, len) in [0usize, 11, 262_144, 262_145, 3_000_000]
        .into_iter()
        .enumerate()
    {
        let p = dir.path().join(format!("f{i}"));
        let data = if len == 11 {
            b"hello world".to_vec()
        } else {
            seeded(len, i as u64)
        };
        std::fs::write(&p, data).expect("write");
        files.push(p);
    }
    let mut args = vec!["ipfs", "add", "--only-hash"];
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let ours = lines(&ok(ehr(&args, &[])));
    assert_eq!(
        ours[0],
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    );
    assert_eq!(
        ours[1],
        "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
    );
    assert_eq!(
        ours,
        js_parity(&files),
        "`ehr ipfs add --only-hash` differs from the JS importer"
    );
    assert!(
        !dir.path().join("data").exists(),
        "--only-hash touches no repository"
    );
}

#[test]
fn add_cat_pin_gc_export_import() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let repo_s = repo.display().to_string();
    let a = dir.path().join("a.bin");
    let b = dir.path().join("b.bin");
    let a_data = seeded(700_000, 1);
    std::fs::write(&a, &a_data).expect("write");
    std::fs::write(&b, seeded(300_000, 2)).expect("write");
    let (a_s, b_s) = (a.display().to_string(), b.display().to_string());

    let added = lines(&ok(ehr(
        &["ipfs", "add", "--repo", &repo_s, &a_s, &b_s],
        &[],
    )));
    let hashed = lines(&ok(ehr(&["ipfs", "add", "-n", &a_s, &b_s], &[])));
    assert_eq!(added, hashed);
    let (ca, cb) = (added[0].as_str(), added[1].as_str());

    let out = ehr(&["ipfs", "cat", "--repo", &repo_s, ca], &[]);
    assert!(out.status.success());
    assert!(out.stdout == a_data, "cat returns the added bytes");
    let out = ehr(
        &[
            "ipfs",
            "cat",
            "--repo",
            &repo_s,
            "--range",
            "262000..262300",
            ca,
        ],
        &[],
    );
    assert!(out.status.success());
    assert_eq!(out.stdout, &a_data[262_000..262_300]);

    let mut pins = lines(&ok(ehr(&["ipfs", "pins", "--repo", &repo_s], &[])));
    pins.sort();
    let mut want = vec![ca.to_owned(), cb.to_owned()];
    want.sort();
    assert_eq!(pins, want);

    // export a, then drop b and collect it
    let car = dir.path().join("a.car");
    ok(ehr(
        &[
            "ipfs",
            "export",
            "--repo",
            &repo_s,
            ca,
            "-o",
            &car.display().to_string(),
        ],
        &[],
    ));
    ok(ehr(&["ipfs", "unpin", "--repo", &repo_s, cb], &[]));
    let gc = ok(ehr(&["ipfs", "gc", "--repo", &repo_s], &[]));
    assert_eq!(gc.trim(), "removed 3 blocks", "b had two leaves and a root");
    let out = ehr(&["ipfs", "cat", "--repo", &repo_s, cb], &[]);
    assert!(!out.status.success(), "cat of a collected file fails");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the local repository"));
    assert!(ok(ehr(&["ipfs", "check", "--repo", &repo_s], &[])).contains("1 pins checked"));

    // import into a fresh repository found through EHR_DATA_DIR
    let data_dir = dir.path().join("node2");
    let roots = lines(&ok(ehr(
        &["ipfs", "import", &car.display().to_string()],
        &[("EHR_DATA_DIR", &data_dir)],
    )));
    assert_eq!(roots, vec![ca.to_owned()]);
    assert!(
        data_dir.join("ipfs").is_dir(),
        "default repository is $EHR_DATA_DIR/ipfs"
    );
    let out = ehr(&["ipfs", "cat", ca], &[("EHR_DATA_DIR", &data_dir)]);
    assert!(out.status.success() && out.stdout == a_data);

    // the peer id is stable across runs
    let id1 = ok(ehr(&["ipfs", "id", "--repo", &repo_s], &[]));
    let id2 = ok(ehr(&["ipfs", "id", "--repo", &repo_s], &[]));
    assert_eq!(id1, id2);
    assert!(id1.starts_with("12D3KooW"), "{id1}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo").display().to_string();
    let out = ehr(&["ipfs", "cat", "--repo", &repo, "not-a-cid"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid CID"));
    let missing = dir.path().join("missing.bin").display().to_string();
    let out = ehr(&["ipfs", "add", "--repo", &repo, &missing], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.bin"));
    assert!(
        !dir.path().join("repo").exists(),
        "a failed add creates no repository"
    );
    let out = ehr(
        &[
            "ipfs",
            "cat",
            "--repo",
            &repo,
            "--range",
            "9..3",
            "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("START is after END"));
}

/// The package directory: cargo's run-time value (a test binary reused from a build in another
/// checkout would carry that checkout's compile-time path), else the compile-time one.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
