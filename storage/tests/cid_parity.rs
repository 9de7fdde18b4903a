//! CID parity with the JS reference importer (`ipfs-unixfs-importer`) under Kubo's
//! `ipfs add --cid-version=1` parameters, at every size where the DAG shape changes.

mod common;

use ehr_storage::blockstore::{Blockstore, CHUNK_SIZE, MAX_LINKS};
use futures::TryStreamExt;

const KIB256: usize = CHUNK_SIZE;
const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cids_match_the_js_importer() {
    let sizes = [
        0,
        1,
        KIB256 - 1,
        KIB256,
        KIB256 + 1,
        MAX_LINKS * KIB256,
        (MAX_LINKS + 1) * KIB256 + 1,
        10 * MIB,
        64 * MIB,
    ];
    let files = tempfile::tempdir().expect("tempdir");
    let repo = tempfile::tempdir().expect("tempdir");
    let store = Blockstore::open(common::offline(repo.path()))
        .await
        .expect("open");

    let mut paths = Vec::new();
    let mut ours = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let path = files.path().join(format!("input-{len}.bin"));
        std::fs::write(&path, common::seeded(len, 1000 + i as u64)).expect("write input");
        // stored add, streamed from the file
        let file = tokio::fs::File::open(&path).await.expect("open input");
        let added = store.add(file).await.expect("add");
        assert_eq!(added.size, len as u64);
        // only-hash gives the same CID without storing
        let file = tokio::fs::File::open(&path).await.expect("open input");
        assert_eq!(
            Blockstore::only_hash(file).await.expect("only_hash"),
            added.cid,
            "size {len}"
        );
        // read back (skip the largest to keep the debug suite quick; the bench reads 1 GiB)
        if len <= 10 * MIB {
            let back: Vec<bytes::Bytes> = store.cat(added.cid).try_collect().await.expect("cat");
            assert!(
                back.concat() == std::fs::read(&path).expect("read input"),
                "size {len}"
            );
        }
        paths.push(path.display().to_string());
        ours.push(added.cid.to_string());
    }
    store.shutdown().await;

    let theirs: Vec<String> = common::run_js("parity.mjs", &paths)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        theirs.len(),
        sizes.len(),
        "one CID per input from the importer"
    );
    for ((len, a), b) in sizes.iter().zip(&ours).zip(&theirs) {
        assert_eq!(a, b, "CID mismatch for {len} bytes");
    }
    // raw leaf up to one chunk, a dag-pb root above
    for (len, cid) in sizes.iter().zip(&ours) {
        let prefix = if *len <= KIB256 { "bafkrei" } else { "bafybei" };
        assert!(cid.starts_with(prefix), "{len} bytes gave {cid}");
    }
}
