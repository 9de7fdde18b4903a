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

/// A configured peer that is down when the node opens, and is named by DNS, is dialled again
/// once it comes up: the node keeps its configured peers connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_peers_are_redialled_by_dns_name_until_they_come_up() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b_config = |listen: &str| BlockstoreConfig {
        repo: db.path().to_path_buf(),
        identity: ehr_storage::blockstore::IdentitySource::InRepo,
        listen: vec![listen.parse().expect("multiaddr")],
        ..Default::default()
    };
    // Learn B's peer id and a free port, then take B down.
    let b = Blockstore::open(b_config("/ip4/127.0.0.1/tcp/0"))
        .await
        .expect("open b");
    let b_id = b.peer_id();
    let port = addr_of(&b, false)
        .await
        .iter()
        .find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .expect("tcp port");
    let data = common::seeded(CHUNK_SIZE + 7, 9);
    let cid = b.add_bytes(&data).await.expect("add").cid;
    b.shutdown().await;

    let bootstrap: Multiaddr = format!("/dns4/localhost/tcp/{port}/p2p/{b_id}")
        .parse()
        .unwrap();
    let a = Blockstore::open(BlockstoreConfig {
        repo: da.path().to_path_buf(),
        identity: ehr_storage::blockstore::IdentitySource::Ephemeral,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: vec![bootstrap],
        ..Default::default()
    })
    .await
    .expect("open a while its peer is down");
    assert!(!a.connected_peers().await.unwrap().contains(&b_id));

    let b = Blockstore::open(b_config(&format!("/ip4/127.0.0.1/tcp/{port}")))
        .await
        .expect("reopen b on the same port");
    assert_eq!(b.peer_id(), b_id, "identity persisted in the repo");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !a.connected_peers().await.unwrap().contains(&b_id) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a never redialled its configured peer"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.fetch_and_pin(cid, &[b_id], Duration::from_secs(30))
        .await
        .expect("fetch from the redialled peer");
    let got: Vec<bytes::Bytes> = a.cat(cid).try_collect().await.expect("cat");
    assert!(got.concat() == data, "fetched bytes differ");
    a.shutdown().await;
    b.shutdown().await;
}

/// A peer that goes away and comes back (same identity, same address) still exchanges blocks
/// in both directions. rust-ipfs 0.16's bitswap never makes a new session for a peer whose
/// last connection closed once, so this is what the block-exchange protocol is for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_flow_both_ways_after_a_peer_restarts() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a_config = |listen: &str| BlockstoreConfig {
        repo: da.path().to_path_buf(),
        identity: ehr_storage::blockstore::IdentitySource::InRepo,
        listen: vec![listen.parse().expect("multiaddr")],
        ..Default::default()
    };
    let a = Blockstore::open(a_config("/ip4/127.0.0.1/tcp/0"))
        .await
        .expect("open a");
    let a_id = a.peer_id();
    let a_addr = addr_of(&a, false).await;
    let port = a_addr
        .iter()
        .find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .expect("tcp port");
    let b = Blockstore::open(BlockstoreConfig {
        repo: db.path().to_path_buf(),
        identity: ehr_storage::blockstore::IdentitySource::Ephemeral,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: vec![a_addr],
        ..Default::default()
    })
    .await
    .expect("open b");
    let wait_connected = |b: &Blockstore| {
        let b = b.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while !b.connected_peers().await.unwrap().contains(&a_id) {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "b never reconnected"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_connected(&b).await;

    let first = common::seeded(CHUNK_SIZE + 3, 21);
    let first_cid = a.add_bytes(&first).await.expect("add").cid;
    b.fetch_and_pin(first_cid, &[a_id], Duration::from_secs(10))
        .await
        .expect("fetch before the restart");

    // A goes away and comes back on the same address with the same identity.
    a.shutdown().await;
    let a = Blockstore::open(a_config(&format!("/ip4/127.0.0.1/tcp/{port}")))
        .await
        .expect("reopen a");
    assert_eq!(a.peer_id(), a_id);
    wait_connected(&b).await;

    let second = common::seeded(2 * CHUNK_SIZE + 5, 22);
    let second_cid = a.add_bytes(&second).await.expect("add").cid;
    b.fetch_and_pin(second_cid, &[a_id], Duration::from_secs(10))
        .await
        .expect("b fetches from the restarted peer");
    let got: Vec<bytes::Bytes> = b.cat(second_cid).try_collect().await.expect("cat");
    assert!(got.concat() == second, "fetched bytes differ");

    let third = common::seeded(CHUNK_SIZE / 2, 23);
    let third_cid = b.add_bytes(&third).await.expect("add").cid;
    a.fetch_and_pin(third_cid, &[b.peer_id()], Duration::from_secs(10))
        .await
        .expect("the restarted peer fetches from b");
    assert!(a.is_pinned(third_cid).await.expect("pinned"));

    a.shutdown().await;
    b.shutdown().await;
}

/// A local copy of a block that fails verification (same length, other bytes: a damaged disk)
/// does not stop a fetch: the verified copy from the peer replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_repairs_a_damaged_local_block() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Blockstore::open(config(da.path(), &["/ip4/127.0.0.1/tcp/0"], None))
        .await
        .expect("open a");
    let data = common::seeded(2 * CHUNK_SIZE + 11, 31);
    let cid = a.add_bytes(&data).await.expect("add").cid;

    // b holds a damaged copy of the first leaf, in rust-ipfs's layout
    let leaf = ehr_storage::blockstore::dag::raw_cid(&data[..CHUNK_SIZE]);
    let key = leaf.to_string();
    let path = db
        .path()
        .join("blockstore")
        .join(&key[key.len() - 3..key.len() - 1])
        .join(format!("{key}.data"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut damaged = data[..CHUNK_SIZE].to_vec();
    damaged[1000] ^= 1;
    std::fs::write(&path, &damaged).unwrap();

    let b = Blockstore::open(config(db.path(), &[], None))
        .await
        .expect("open b");
    b.connect(addr_of(&a, false).await).await.expect("dial a");
    b.fetch_and_pin(cid, &[a.peer_id()], Duration::from_secs(30))
        .await
        .expect("fetch despite the damaged copy");
    let got: Vec<bytes::Bytes> = b.cat(cid).try_collect().await.expect("cat");
    assert!(got.concat() == data, "fetched bytes differ");
    assert_eq!(std::fs::read(&path).unwrap(), &data[..CHUNK_SIZE]);
    b.shutdown().await;
    a.shutdown().await;
}
