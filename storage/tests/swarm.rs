//! Two of our nodes on loopback: bitswap over QUIC and TCP, and the private-network option.

mod common;

use std::time::Duration;

use ehr_storage::blockstore::{
    Blockstore, BlockstoreConfig, CHUNK_SIZE, Multiaddr, PrivateNetworkKey,
};
use futures::TryStreamExt;
use rust_ipfs::Protocol;

fn config(repo: &std::path::Path, listen: &[&str], psk: Option<[u8; 32]>) -> BlockstoreConfig {
    BlockstoreConfig {
        repo: repo.to_path_buf(),
        identity: ehr_storage::blockstore::IdentitySource::Ephemeral,
        listen: listen
            .iter()
            .map(|a| a.parse().expect("multiaddr"))
            .collect(),
        private_network: psk.map(PrivateNetworkKey::from_bytes),
        ..Default::default()
    }
}

async fn addr_of(store: &Blockstore, quic: bool) -> Multiaddr {
    let addr = store
        .listen_addrs()
        .await
        .expect("listen addrs")
        .into_iter()
        .find(|a| a.iter().any(|p| matches!(p, Protocol::QuicV1)) == quic)
        .expect("a listener of the wanted transport");
    addr.with(Protocol::P2p(store.peer_id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_between_nodes_over_quic_and_tcp() {
    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let a = Blockstore::open(BlockstoreConfig {
        repo: da.path().to_path_buf(),
        ..Default::default()
    })
    .await
    .expect("open a");
    let data = common::seeded(2 * CHUNK_SIZE + 99, 5);
    let cid = a.add_bytes(&data).await.expect("add").cid;

    for (dir, quic) in [(&db, true), (&dc, false)] {
        let b = Blockstore::open(config(dir.path(), &[], None))
            .await
            .expect("open b");
        b.connect(addr_of(&a, quic).await).await.expect("dial a");
        b.fetch_and_pin(cid, &[a.peer_id()], Duration::from_secs(30))
            .await
            .expect("fetch over bitswap");
        assert!(b.is_pinned(cid).await.expect("pinned"));
        let got: Vec<bytes::Bytes> = b.cat(cid).try_collect().await.expect("cat");
        assert!(got.concat() == data, "quic={quic}: fetched bytes differ");
        b.shutdown().await;
    }
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_network_admits_only_key_holders() {
    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let a = Blockstore::open(config(da.path(), &["/ip4/127.0.0.1/tcp/0"], Some([1; 32])))
        .await
        .expect("open a");
    let cid = a.add_bytes(b"consortium only").await.expect("add").cid;
    let a_addr = addr_of(&a, false).await;

    let member = Blockstore::open(config(db.path(), &[], Some([1; 32])))
        .await
        .expect("open member");
    member
        .connect(a_addr.clone())
        .await
        .expect("same key connects");
    member
        .fetch_and_pin(cid, &[a.peer_id()], Duration::from_secs(30))
        .await
        .expect("member fetches");

    let outsider = Blockstore::open(config(dc.path(), &[], Some([2; 32])))
        .await
        .expect("open outsider");
    let dialed = tokio::time::timeout(Duration::from_secs(20), outsider.connect(a_addr)).await;
    assert!(
        !matches!(dialed, Ok(Ok(()))),
        "a node with another key must not connect"
    );
    assert!(!outsider.has_block(cid).await.expect("has"));

    member.shutdown().await;
    outsider.shutdown().await;
    a.shutdown().await;
}
