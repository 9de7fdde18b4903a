//! `ehr load --spawn` end to end: the real binary creates a consortium, starts four `ehr node`
//! child processes on 127.0.0.1, runs a few seconds of uploads and searches, stops the nodes
//! and reports. No timing thresholds: only that work was done, nothing failed, the report is
//! complete and no node process outlives the run.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn ehr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ehr"))
}

/// Whether process `pid` still exists (a zombie counts as gone: it no longer runs).
fn running(pid: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    state.is_some_and(|s| s != "Z" && s != "X")
}

#[test]
fn spawned_load_uploads_searches_and_samples_every_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("consortium");
    let json = tmp.path().join("load.json");
    let out = ehr()
        .args(["load", "--spawn", "--duration", "4s"])
        .args(["--upload-concurrency", "2", "--search-concurrency", "2"])
        .args(["--sample-every", "250ms", "--seed", "7"])
        // A relative --dir: the node configurations must not depend on the children's cwd.
        .args(["--dir", "consortium"])
        .current_dir(tmp.path())
        .arg("--json")
        .arg(&json)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ehr load failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("uploads") && stdout.contains("searches"),
        "{stdout}"
    );
    assert!(stdout.contains("errors: none"), "{stdout}");

    let r: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["mode"], "spawn");
    assert_eq!(r["seed"], 7);
    let uploads = r["uploads"]["ok"].as_u64().unwrap();
    let searches = r["searches"]["ok"].as_u64().unwrap();
    assert!(uploads > 0, "no upload completed: {stdout}");
    assert!(searches > 0, "no search completed: {stdout}");
    assert_eq!(r["uploads"]["failed"], 0, "{stdout}");
    assert_eq!(r["searches"]["failed"], 0, "{stdout}");
    assert_eq!(r["errors"].as_array().unwrap().len(), 0, "{stdout}");
    let latency = &r["uploads"]["latency"];
    assert_eq!(latency["count"].as_u64(), Some(uploads));
    assert!(latency["p50_ms"].as_f64().unwrap() <= latency["max_ms"].as_f64().unwrap());
    let ops = r["ops"].as_array().unwrap();
    assert_eq!(ops.len() as u64, uploads + searches);
    // Uploads went to every node (each with its own hospital).
    let mut upload_nodes: Vec<u64> = ops
        .iter()
        .filter(|o| o["op"] == "upload")
        .map(|o| o["node"].as_u64().unwrap())
        .collect();
    upload_nodes.sort_unstable();
    upload_nodes.dedup();
    assert_eq!(upload_nodes, [0, 1], "2 upload tasks: nodes 0 and 1");

    let nodes = r["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4);
    let mut pids = Vec::new();
    for n in nodes {
        assert_eq!(n["source"], "proc");
        let pid = n["pid"].as_u64().expect("a child's pid");
        pids.push(pid);
        let samples = n["samples"].as_array().unwrap();
        assert!(!samples.is_empty(), "no RSS sample for pid {pid}");
        for s in samples {
            let rss = s["rss_bytes"].as_u64().unwrap();
            assert!(rss > 0);
            // The anonymous part comes from /proc/<pid>/status too.
            let anon = s["anon_bytes"].as_u64().expect("anon_bytes from /proc");
            assert!(anon > 0 && anon <= rss);
        }
        assert!(n["summary"]["verdict"].is_string());
    }
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 4, "four distinct node processes");
    assert!(!pids.contains(&u64::from(std::process::id())));
    for pid in pids {
        assert!(!running(pid), "node process {pid} outlived ehr load");
    }
    // The consortium stays in --dir, with each node's log.
    for i in 0..4 {
        assert!(Path::new(&dir).join(format!("node-{i}/node.log")).is_file());
    }
}

#[test]
fn load_refuses_bad_arguments_before_starting_anything() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (vec!["load", "--spawn", "--duration", "0s"], "--duration"),
        (
            vec!["load", "--spawn", "--duration", "5 parsecs"],
            "--duration",
        ),
        (
            vec![
                "load",
                "--spawn",
                "--upload-concurrency",
                "0",
                "--search-concurrency",
                "0",
            ],
            "at least one",
        ),
        (vec!["load"], "--consortium"),
        (vec!["load", "--dir", "x"], "--spawn"),
    ] {
        let out = ehr().args(&args).current_dir(tmp.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // Nothing was created.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    let help = ehr().args(["load", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--spawn",
        "--duration",
        "--upload-concurrency",
        "--search-concurrency",
        "--seed",
        "--json",
        "--hospital",
        "--researcher",
        "Examples:",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

/// Against running nodes: `ehr dev` (four replicas in one process) started as a child, then
/// `ehr load` with its consortium and identity files; memory comes from each node's /metrics.
#[test]
fn load_against_running_nodes_reads_memory_from_metrics() {
    use std::io::BufRead as _;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let mut dev = ehr()
        .arg("dev")
        .arg("--dir")
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kills `ehr dev` however the test ends.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = dev.stdout.take().unwrap();
    let mut dev = Kill(dev);
    let mut ready = false;
    for line in std::io::BufReader::new(stdout).lines() {
        if line.unwrap().contains("Ctrl-C to stop") {
            ready = true;
            break;
        }
    }
    assert!(ready, "ehr dev did not start: {:?}", dev.0.try_wait());
    let json = tmp.path().join("load.json");
    let mut cmd = ehr();
    cmd.args(["load", "--duration", "3s", "--sample-every", "250ms"])
        .args(["--upload-concurrency", "2", "--search-concurrency", "1"])
        .arg("--consortium")
        .arg(dir.join("consortium.json"))
        .arg("--researcher")
        .arg(dir.join("researcher.json"))
        .arg("--json")
        .arg(&json)
        .env("RUST_LOG", "warn");
    for i in [2, 3] {
        cmd.arg("--hospital")
            .arg(dir.join(format!("hospital-{i}.json")));
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["mode"], "existing");
    assert!(r["uploads"]["ok"].as_u64().unwrap() > 0, "{stdout}");
    assert!(r["searches"]["ok"].as_u64().unwrap() > 0, "{stdout}");
    assert_eq!(r["uploads"]["failed"], 0, "{stdout}");
    assert_eq!(r["searches"]["failed"], 0, "{stdout}");
    // Each hospital uploaded to its own node (hospital-2 to node 2, hospital-3 to node 3).
    let mut nodes: Vec<u64> = r["ops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["op"] == "upload")
        .map(|o| o["node"].as_u64().unwrap())
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    assert_eq!(nodes, [2, 3]);
    let mem = r["nodes"].as_array().unwrap();
    assert_eq!(mem.len(), 4);
    for n in mem {
        assert_eq!(n["source"], "metrics");
        assert!(n["pid"].is_null());
        assert!(
            n["samples"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["anon_bytes"].is_null())
        );
        let samples = n["samples"].as_array().unwrap();
        if cfg!(target_os = "linux") {
            assert!(!samples.is_empty(), "no /metrics RSS for {}", n["url"]);
        }
    }
    let _ = &mut dev;
}
