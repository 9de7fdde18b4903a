//! Live interop: a Helia node (JS, Node 22) dials our node over TCP and fetches records by CID
//! over bitswap; the bytes it receives must be identical to what was added.

mod common;

use ehr_storage::blockstore::{Blockstore, BlockstoreConfig, CHUNK_SIZE, Multiaddr};
use ehr_storage::seal::{DataKey, SealContext, seal, sealed_len};
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

    // sealed records whose envelopes are: a raw leaf, exactly one chunk (the size rust-ipfs's
    // own add rejects), and a multi-leaf DAG
    let key = DataKey::generate().expect("data key");
    let envelope = |len: u64| -> usize { usize::try_from(sealed_len(len)).expect("fits") };
    let one_chunk_plain = (1..CHUNK_SIZE as u64)
        .rev()
        .find(|&n| envelope(n) == CHUNK_SIZE)
        .expect("a plaintext length whose envelope is exactly one chunk");
    let records: Vec<Vec<u8>> = [1000, one_chunk_plain, 3 * CHUNK_SIZE as u64 + 12345]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let ctx = SealContext::new(b"policy-interop".to_vec()).with_record(vec![i as u8]);
            seal(&key, &ctx, &common::seeded(n as usize, 77 + i as u64)).expect("seal")
        })
        .collect();
    assert_eq!(records[1].len(), CHUNK_SIZE);
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
