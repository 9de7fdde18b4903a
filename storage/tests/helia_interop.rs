//! Live interop: a Helia node (JS, Node 22) dials our node over TCP and fetches records by CID
//! over bitswap; the bytes it receives must be identical to what was added.

mod common;

use ehr_storage::blockstore::{Blockstore, BlockstoreConfig, CHUNK_SIZE, Multiaddr};
use rust_ipfs::Protocol;
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helia_fetches_records_over_bitswap() {
    let (node, js_dir) = common::js();
    let repo = tempfile::tempdir().expect("tempdir");
    let store = Blockstore::open(BlockstoreConfig {
        repo: repo.path().to_path_buf(),
        ..Default::default()
    })
    .await
    .expect("open");

    // sizes: a raw leaf, exactly one chunk (the rust-ipfs add bug case), a multi-leaf DAG
    let records: Vec<Vec<u8>> = [1000, CHUNK_SIZE, 3 * CHUNK_SIZE + 12345]
        .iter()
        .enumerate()
        .map(|(i, &n)| common::seeded(n, 77 + i as u64))
        .collect();
    let mut cids = Vec::new();
    for r in &records {
        cids.push(store.add_bytes(r).await.expect("add").cid);
    }

    let tcp: Multiaddr = store
        .listen_addrs()
        .await
        .expect("listen addrs")
        .into_iter()
        .find(|a| {
            a.iter()
                .any(|p| matches!(p, Protocol::Tcp(port) if port != 0))
        })
        .expect("a TCP listener with a bound port");
    let dial = tcp.with(Protocol::P2p(store.peer_id()));

    let mut args = vec![
        js_dir.join("helia-fetch.mjs").display().to_string(),
        dial.to_string(),
        "60000".into(),
    ];
    args.extend(cids.iter().map(|c| c.to_string()));
    let out = tokio::process::Command::new(&node)
        .args(&args)
        .current_dir(&js_dir)
        .output()
        .await
        .expect("run node");
    assert!(
        out.status.success(),
        "helia-fetch failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), records.len());
    for ((line, record), cid) in lines.iter().zip(&records).zip(&cids) {
        assert_eq!(line["cid"], cid.to_string());
        assert_eq!(line["bytes"], record.len() as u64, "{cid}");
        assert_eq!(
            line["sha256"],
            hex::encode(Sha256::digest(record)),
            "{cid}: bytes differ"
        );
    }
    store.shutdown().await;
}
