//! The Kubernetes manifests in `deploy/k8s` pass the offline validation of
//! `scripts/check-deploy.sh` (kustomize render, `kubernetes-validate --strict`, the consortium
//! and custom-resource checks, `checkov` with zero failed checks), and the validation catches
//! what it is there to catch: each mutation below must make it fail with a message naming the
//! problem.
//!
//! The script installs its pinned Python tools into a cache outside the repository on the
//! first run (that needs the Python package index once). Runs are serialised: they share that
//! cache and the machine's two cores.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    manifest_dir()
}

/// What one run of the check script looks at.
struct Target<'a> {
    /// A copy of `deploy/k8s` (default: the committed one).
    k8s: Option<&'a Path>,
    /// The overlays to check, space-separated (may be empty).
    overlays: &'a str,
    /// The Dockerfile to lint, or `None` to skip it.
    dockerfile: Option<&'a Path>,
}

/// Runs the check script on `target`; returns whether it passed and its whole output.
fn run_check(target: &Target<'_>) -> (bool, String) {
    run_check_with(target, &[])
}

/// [`run_check`] with extra environment variables.
fn run_check_with(target: &Target<'_>, env: &[(&str, &Path)]) -> (bool, String) {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/check-deploy.sh"))
        .env("EHR_BIN", env!("CARGO_BIN_EXE_ehr"))
        .env("EHR_DEPLOY_OVERLAYS", target.overlays)
        .env(
            "EHR_DEPLOY_DOCKERFILE",
            target.dockerfile.map(Path::as_os_str).unwrap_or_default(),
        )
        .current_dir(repo());
    if let Some(dir) = target.k8s {
        cmd.env("EHR_DEPLOY_K8S", dir);
    }
    for (key, value) in env {
        cmd.env(key, value);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("bash runs scripts/check-deploy.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    (status.success(), text)
}

/// Copies `deploy/k8s` (without any local consortium output) into a temporary directory.
fn copy_k8s() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("create the copy's directory");
        for entry in std::fs::read_dir(from).expect("read deploy/k8s") {
            let entry = entry.expect("directory entry");
            let path = entry.path();
            if entry.file_name() == "consortium" {
                continue;
            }
            if path.is_dir() {
                copy(&path, &to.join(entry.file_name()));
            } else {
                std::fs::copy(&path, to.join(entry.file_name())).expect("copy a manifest");
            }
        }
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    copy(&repo().join("deploy/k8s"), dir.path());
    dir
}

/// Replaces exactly one occurrence of `from` in `file` (relative to the copy).
fn mutate(root: &Path, file: &str, from: &str, to: &str) {
    let path = root.join(file);
    let text = std::fs::read_to_string(&path).expect("read the manifest to mutate");
    assert_eq!(
        text.matches(from).count(),
        1,
        "{file}: the mutation's anchor {from:?} must occur exactly once"
    );
    std::fs::write(&path, text.replacen(from, to, 1)).expect("write the mutated manifest");
}

/// Runs the check on a copy of `deploy/k8s` mutated by `edit`, and requires it to fail with
/// `expected` in its output.
fn assert_caught(overlays: &str, expected: &str, edit: impl FnOnce(&Path)) {
    let copy = copy_k8s();
    edit(copy.path());
    let (ok, out) = run_check(&Target {
        k8s: Some(copy.path()),
        overlays,
        dockerfile: None,
    });
    assert!(!ok, "the check passed a broken manifest; output:\n{out}");
    assert!(
        out.contains(expected),
        "the check failed without naming {expected:?}; output:\n{out}"
    );
}

#[test]
fn committed_overlays_pass_offline_validation() {
    let dockerfile = repo().join("deploy/Dockerfile");
    let (ok, out) = run_check(&Target {
        k8s: None,
        overlays: "dev production",
        dockerfile: Some(&dockerfile),
    });
    assert!(ok, "scripts/check-deploy.sh failed:\n{out}");
    for overlay in ["dev", "production"] {
        for needle in [
            format!("{overlay}: kubernetes-validate --strict -k 1.30.0 passed"),
            format!("{overlay}: kubernetes-validate --strict -k 1.33.0 passed"),
            format!("{overlay}: checkov passed"),
        ] {
            assert!(out.contains(&needle), "missing {needle:?} in:\n{out}");
        }
        let failed = format!("{overlay}: checkov passed (Passed checks: ");
        let line = out
            .lines()
            .find(|l| l.contains(&failed))
            .unwrap_or_else(|| panic!("no checkov summary for {overlay} in:\n{out}"));
        assert!(line.contains("Failed checks: 0,"), "{line}");
    }
    assert!(out.contains("consortium and custom-resource checks passed (2 overlays)"));
    // Once the binary has `init-consortium`, the script must use its real output and compare
    // every installed node.toml with the pod (paths, ports, peers).
    let has_init = Command::new(env!("CARGO_BIN_EXE_ehr"))
        .args(["init-consortium", "--help"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_init {
        for n in [4, 7] {
            let needle =
                format!("checked {n} installed node.toml files of real init-consortium output");
            assert!(out.contains(&needle), "missing {needle:?} in:\n{out}");
        }
    }
    let docker = out
        .lines()
        .find(|l| l.contains("Dockerfile: hadolint and checkov passed"))
        .unwrap_or_else(|| panic!("no Dockerfile summary in:\n{out}"));
    assert!(docker.contains("Failed checks: 0,"), "{docker}");
}

#[test]
fn a_dockerfile_running_as_root_is_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("Dockerfile");
    let text = std::fs::read_to_string(repo().join("deploy/Dockerfile")).expect("read Dockerfile");
    assert_eq!(text.matches("USER 10001:10001").count(), 1);
    std::fs::write(&path, text.replace("USER 10001:10001", "USER root")).expect("write Dockerfile");
    let (ok, out) = run_check(&Target {
        k8s: None,
        overlays: "",
        dockerfile: Some(&path),
    });
    assert!(
        !ok,
        "the check passed a Dockerfile running as root; output:\n{out}"
    );
    assert!(
        out.contains("DL3002"),
        "hadolint's last-user-root rule not named:\n{out}"
    );
}

#[test]
fn a_misspelt_field_fails_strict_schema_validation() {
    assert_caught("dev", "kubernetes-validate --strict", |k8s| {
        mutate(
            k8s,
            "base/statefulset.yaml",
            "minReadySeconds: 10",
            "minReadySecond: 10",
        );
    });
}

#[test]
fn a_disruption_budget_below_quorum_is_refused() {
    assert_caught("dev", "spec.minAvailable", |k8s| {
        mutate(
            k8s,
            "base/poddisruptionbudget.yaml",
            "minAvailable: 3",
            "minAvailable: 2",
        );
    });
}

#[test]
fn a_replica_without_its_key_secret_is_refused() {
    // Production scaled to seven replicas must mount seven key Secrets into the init container.
    assert_caught("production", "keys-6", |k8s| {
        mutate(
            k8s,
            "overlays/production/statefulset-production.yaml",
            "            - name: keys-6\n              mountPath: /run/ehr-keys/node-6\n              readOnly: true\n",
            "",
        );
    });
}

#[test]
fn key_secrets_mounted_into_the_node_container_are_refused() {
    assert_caught("dev", "only the init container may", |k8s| {
        mutate(
            k8s,
            "base/statefulset.yaml",
            "            - name: tmp\n              mountPath: /tmp\n",
            "            - name: tmp\n              mountPath: /tmp\n            - name: keys-0\n              mountPath: /run/ehr-keys/node-0\n              readOnly: true\n",
        );
    });
}

#[test]
fn an_alert_with_invalid_promql_is_refused() {
    assert_caught("production", "not valid PromQL", |k8s| {
        mutate(
            k8s,
            "components/monitoring/prometheusrule.yaml",
            "expr: changes(ehr_ledger_view[30m]) > 2",
            "expr: changes(ehr_ledger_view[30m] > 2",
        );
    });
}

#[test]
fn a_writable_root_filesystem_fails_checkov() {
    assert_caught("dev", "CKV_K8S_22", |k8s| {
        let path = k8s.join("base/statefulset.yaml");
        let text = std::fs::read_to_string(&path).expect("read the StatefulSet");
        assert_eq!(text.matches("readOnlyRootFilesystem: true").count(), 2);
        std::fs::write(
            &path,
            text.replace(
                "readOnlyRootFilesystem: true",
                "readOnlyRootFilesystem: false",
            ),
        )
        .expect("write the StatefulSet");
    });
}

#[test]
fn an_init_script_installing_another_replicas_keys_is_refused() {
    assert_caught("dev", "is not replica 3's key", |k8s| {
        mutate(
            k8s,
            "base/statefulset.yaml",
            "keys=\"/run/ehr-keys/node-$ord\"",
            "keys=\"/run/ehr-keys/node-0\"",
        );
    });
}

#[test]
fn alerts_over_metrics_the_node_does_not_export_are_refused() {
    // An exposition with every metric the alerts use but the view: the view-change and
    // stalled-ledger alerts could never fire.
    let dir = tempfile::tempdir().expect("temporary directory");
    let metrics = dir.path().join("metrics.txt");
    let families = [
        ("ehr_http_requests", "counter"),
        ("ehr_ledger_height", "gauge"),
        ("ehr_index_height", "gauge"),
        ("ehr_replication_queue", "gauge"),
        ("ehr_replication_pinned", "counter"),
        ("ehr_replication_failures", "counter"),
        ("ehr_auth_failures", "counter"),
    ];
    let text: String = families
        .iter()
        .map(|(name, kind)| format!("# TYPE {name} {kind}\n"))
        .collect();
    std::fs::write(&metrics, text).expect("write the exposition");
    let target = Target {
        k8s: None,
        overlays: "production",
        dockerfile: None,
    };
    let (ok, out) = run_check_with(&target, &[("EHR_METRICS_FILE", &metrics)]);
    assert!(!ok, "alerts over a missing metric passed; output:\n{out}");
    assert!(
        out.contains("alerts use ehr_ledger_view, which the node's /metrics does not export"),
        "the missing metric is not named:\n{out}"
    );
    assert!(
        !out.contains("alerts use ehr_ledger_height, which"),
        "an exported gauge was reported missing:\n{out}"
    );
    assert!(
        !out.contains("alerts use ehr_auth_failures_total, which"),
        "a counter's _total sample was not derived from its TYPE line:\n{out}"
    );
}

/// The package directory: cargo's run-time value (a test binary reused from a build in another
/// checkout would carry that checkout's compile-time path), else the compile-time one.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
