//! End-to-end tests of `ehr seal` and `ehr open` through the built binary.

use std::path::Path;
use std::process::{Command, Output};

fn ehr(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ehr"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run the ehr binary")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A record spanning several 256 KiB segments, with a non-aligned tail.
fn record() -> Vec<u8> {
    (0..700_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// Files in `dir`, to check that failures leave nothing behind.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn seal_then_open_round_trips_and_wrong_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plain = record();
    std::fs::write(d.join("rec.json"), &plain).unwrap();

    let out = ehr(
        &[
            "seal",
            "--key-out",
            "rec.key",
            "--context",
            "policy-7",
            "rec.json",
            "-o",
            "rec.sealed",
        ],
        d,
    );
    assert!(out.status.success(), "seal failed: {}", stderr(&out));
    let key_text = std::fs::read_to_string(d.join("rec.key")).unwrap();
    assert!(key_text.starts_with("ehr-data-key-v1:"));
    assert_eq!(key_text.trim_end().len(), "ehr-data-key-v1:".len() + 64);
    // The key is never printed.
    let hex = key_text.trim_end().trim_start_matches("ehr-data-key-v1:");
    assert!(!stderr(&out).contains(hex) && !String::from_utf8_lossy(&out.stdout).contains(hex));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("rec.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let sealed = std::fs::read(d.join("rec.sealed")).unwrap();
    assert_eq!(
        sealed.len() as u64,
        ehr_storage::seal::sealed_len(plain.len() as u64)
    );
    assert_ne!(&sealed[200..300], &plain[200..300]);

    // Open to a file and to stdout.
    let out = ehr(
        &[
            "open",
            "--key",
            "rec.key",
            "--context",
            "policy-7",
            "rec.sealed",
            "-o",
            "back.json",
        ],
        d,
    );
    assert!(out.status.success(), "open failed: {}", stderr(&out));
    assert_eq!(std::fs::read(d.join("back.json")).unwrap(), plain);
    let out = ehr(
        &[
            "open",
            "--key",
            "rec.key",
            "--context",
            "policy-7",
            "rec.sealed",
        ],
        d,
    );
    assert!(out.status.success(), "open failed: {}", stderr(&out));
    assert_eq!(out.stdout, plain);

    // A second key, from sealing another file.
    std::fs::write(d.join("other.txt"), b"other").unwrap();
    let out = ehr(&["seal", "--key-out", "other.key", "other.txt"], d);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(d.join("other.txt.sealed").exists());

    let before = files(d);
    let out = ehr(
        &[
            "open",
            "--key",
            "other.key",
            "--context",
            "policy-7",
            "rec.sealed",
            "-o",
            "wrong.json",
        ],
        d,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("wrong data key"), "{}", stderr(&out));
    assert_eq!(files(d), before, "a failed open left files behind");

    // Right key, wrong context.
    let out = ehr(
        &[
            "open",
            "--key",
            "rec.key",
            "--context",
            "policy-8",
            "rec.sealed",
            "-o",
            "wrong.json",
        ],
        d,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("context mismatch"),
        "{}",
        stderr(&out)
    );
    assert_eq!(files(d), before);

    // A flipped bit in the last segment: the failure comes after earlier segments were
    // verified, and still no output file appears.
    let mut bad = sealed.clone();
    let at = bad.len() - 100;
    bad[at] ^= 0x10;
    std::fs::write(d.join("bad.sealed"), &bad).unwrap();
    let before = files(d);
    let out = ehr(
        &[
            "open",
            "--key",
            "rec.key",
            "--context",
            "policy-7",
            "bad.sealed",
            "-o",
            "wrong.json",
        ],
        d,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("segment 2") && stderr(&out).contains("failed authentication"),
        "{}",
        stderr(&out)
    );
    assert_eq!(files(d), before);

    // Truncated at a segment boundary.
    std::fs::write(d.join("cut.sealed"), &sealed[..262_144]).unwrap();
    let out = ehr(
        &[
            "open",
            "--key",
            "rec.key",
            "--context",
            "policy-7",
            "cut.sealed",
            "-o",
            "cut.json",
        ],
        d,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));
    assert!(!d.join("cut.json").exists());
}

#[test]
fn seal_refuses_to_overwrite_a_key_and_needs_a_key_source() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.txt"), b"abc").unwrap();
    std::fs::write(d.join("existing.key"), b"keep me").unwrap();

    let out = ehr(&["seal", "--key-out", "existing.key", "a.txt"], d);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("never overwritten"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(d.join("existing.key")).unwrap(), b"keep me");
    assert!(!d.join("a.txt.sealed").exists());

    // Neither --key nor --key-out: a usage error from clap.
    let out = ehr(&["seal", "a.txt"], d);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--key-out"), "{}", stderr(&out));

    // A malformed key file is explained, and nothing is written.
    std::fs::write(d.join("bad.key"), b"not a key\n").unwrap();
    let out = ehr(&["seal", "--key", "bad.key", "a.txt"], d);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a data key file"),
        "{}",
        stderr(&out)
    );
    assert!(!d.join("a.txt.sealed").exists());

    // Sealing an empty file under an existing key, then opening it.
    std::fs::write(d.join("empty"), b"").unwrap();
    let out = ehr(
        &["seal", "--key-out", "e.key", "empty", "-o", "empty.sealed"],
        d,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ehr(&["seal", "--key", "e.key", "a.txt", "-o", "a.sealed"], d);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ehr(&["open", "--key", "e.key", "empty.sealed"], d);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    let out = ehr(&["open", "--key", "e.key", "a.sealed", "-o", "-"], d);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, b"abc");
}

#[test]
fn help_explains_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let out = ehr(&["seal", "--help"], dir.path());
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for want in ["--key-out", "--context", "ehr-data-key-v1:", "0600"] {
        assert!(help.contains(want), "seal --help lacks {want}: {help}");
    }
    let out = ehr(&["open", "--help"], dir.path());
    assert!(String::from_utf8_lossy(&out.stdout).contains("authenticated"));
}
