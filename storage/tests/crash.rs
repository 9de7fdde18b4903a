//! Crash safety: a process killed (SIGKILL) in the middle of adds leaves the repository
//! consistent: no pinned partial DAG, earlier records intact, and GC removes the orphans.
//!
//! The test re-runs its own binary as the child (selected by `EHR_CRASH_CHILD`), lets it add
//! records, and kills it at several points: mid-way through one large add, and at a random
//! moment in a loop of small add-and-pin cycles (which also hits the pin write).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ehr_storage::blockstore::{Blockstore, CHUNK_SIZE, Cid};
use futures::TryStreamExt;
use tokio::io::AsyncRead;

const CHILD_MODE: &str = "EHR_CRASH_CHILD";
const CHILD_REPO: &str = "EHR_CRASH_CHILD_REPO";
const SMALL: usize = 3 * CHUNK_SIZE + 1;

/// An endless deterministic reader (the child never finishes a "big" add before the kill).
struct Endless(u64);

impl AsyncRead for Endless {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = buf.remaining().min(64 * 1024);
        self.0 += 1;
        buf.put_slice(&common::seeded(n, self.0));
        std::task::Poll::Ready(Ok(()))
    }
}

/// The child half of `kill_mid_add_leaves_repo_consistent`: a no-op unless that test started
/// this binary with `EHR_CRASH_CHILD` set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_entry_point() {
    let (Ok(mode), Ok(repo)) = (std::env::var(CHILD_MODE), std::env::var(CHILD_REPO)) else {
        return;
    };
    let store = Blockstore::open(common::offline(Path::new(&repo)))
        .await
        .expect("child open");
    match mode.as_str() {
        "big" => {
            let r = store.add(Endless(0)).await;
            panic!("the endless add returned {r:?}; the parent should have killed us");
        }
        "loop" => {
            for i in 0u64.. {
                store
                    .add_bytes(&common::seeded(SMALL, i))
                    .await
                    .expect("child add");
            }
        }
        other => panic!("unknown child mode {other}"),
    }
}

fn count_blocks(repo: &Path) -> usize {
    block_dir_files(repo)
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "data"))
        .count()
}

/// Every file under the repository's block store.
fn block_dir_files(repo: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![repo.join("blockstore")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files
}

/// Starts the child in `mode` and SIGKILLs it once the repo holds more than `blocks` blocks.
fn run_and_kill(repo: &Path, mode: &str, blocks: usize) {
    let exe: PathBuf = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_child_entry_point",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD_MODE, mode)
        .env(CHILD_REPO, repo)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let deadline = Instant::now() + Duration::from_secs(120);
    while count_blocks(repo) <= blocks {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let out = child.wait_with_output().expect("child output");
            panic!(
                "child exited early ({status}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            Instant::now() < deadline,
            "child wrote too few blocks in time"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL child");
    child.wait().expect("reap child");
}

async fn cat(store: &Blockstore, cid: Cid) -> Vec<u8> {
    let parts: Vec<bytes::Bytes> = store
        .cat(cid)
        .try_collect()
        .await
        .expect("cat pinned record");
    parts.concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_mid_add_leaves_repo_consistent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path();
    let record = common::seeded(5 * CHUNK_SIZE + 3, 4242);
    let kept = {
        let store = Blockstore::open(common::offline(repo)).await.expect("open");
        let added = store.add_bytes(&record).await.expect("add");
        store.shutdown().await;
        added
    };

    let small_cids: Vec<Cid> = (0..64)
        .map(|i| ehr_storage::blockstore::dag::hash_bytes(&common::seeded(SMALL, i)))
        .collect();
    let mut before = count_blocks(repo);
    for (mode, extra) in [
        ("big", 3),
        ("big", 40),
        ("loop", 9),
        ("loop", 23),
        ("loop", 30),
    ] {
        run_and_kill(repo, mode, before + extra);

        let store = Blockstore::open(common::offline(repo))
            .await
            .expect("reopen after kill");
        let report = store.open_report().clone();
        assert!(
            report.incomplete_pins.is_empty(),
            "{mode}+{extra}: partial DAG pinned: {report:?}"
        );
        // a block being written when the kill came is a temporary file, removed at open
        let stray: Vec<PathBuf> = block_dir_files(repo)
            .into_iter()
            .filter(|p| p.extension().is_none_or(|x| x != "data"))
            .collect();
        assert!(stray.is_empty(), "{mode}+{extra}: left behind: {stray:?}");
        // every pin is either the record added before, or a complete small record
        for pin in store.list_pins().await.expect("pins") {
            assert!(
                pin == kept.cid || small_cids.contains(&pin),
                "{mode}+{extra}: unexpected pin {pin}"
            );
            store.check_dag(pin).await.expect("pinned DAG complete");
            if pin != kept.cid {
                let i = small_cids
                    .iter()
                    .position(|c| *c == pin)
                    .expect("known small record");
                assert_eq!(cat(&store, pin).await, common::seeded(SMALL, i as u64));
            }
        }
        assert_eq!(
            cat(&store, kept.cid).await,
            record,
            "{mode}+{extra}: earlier record damaged"
        );
        // GC drops the orphans of the interrupted add and nothing pinned
        store.gc().await.expect("gc");
        let mut pinned_blocks = 0;
        for pin in store.list_pins().await.expect("pins") {
            pinned_blocks += if pin == kept.cid {
                kept.blocks as usize
            } else {
                5
            };
        }
        assert_eq!(
            count_blocks(repo),
            pinned_blocks,
            "{mode}+{extra}: GC left garbage or lost blocks"
        );
        assert!(store.check().await.expect("check").is_clean());
        before = count_blocks(repo);
        store.shutdown().await;
    }
}
