//! Four replicas in one process over real TCP sockets on 127.0.0.1 (ephemeral ports), with the
//! real application state, Ed25519 votes and redb stores on disk: transactions submitted to
//! every replica commit, clients get verifiable commit certificates, and all four replicas end
//! at the same ledger head.

mod ledger_net_support;

use std::time::Duration;

use ehr::ledger_net::{Committed, LedgerEvent, LedgerNode, NetError, TcpConnector, submit_quorum};
use ehr_ledger::app::TxOutcome;
use futures::future::join_all;
use ledger_net_support::{CHAIN, Consortium, driver_config};
use tokio::net::TcpListener;

const TIMEOUT: Duration = Duration::from_secs(60);

async fn start_cluster(c: &Consortium, dir: &std::path::Path) -> Vec<LedgerNode> {
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..c.n {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(l.local_addr().unwrap().to_string());
        listeners.push(l);
    }
    listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let id = i as u32;
            let (replica, store) = c.open(id, &dir.join(format!("r{i}.redb")), 2000);
            LedgerNode::start(
                driver_config(),
                replica,
                store,
                c.identity(id),
                c.validator_set(),
                addrs.clone(),
                l,
                TcpConnector,
            )
            .unwrap()
        })
        .collect()
}

async fn wait_same_head(nodes: &[LedgerNode], height: u64) {
    for n in nodes {
        let mut w = n.watch_status();
        tokio::time::timeout(TIMEOUT, w.wait_for(|s| s.height >= height))
            .await
            .expect("replica reaches the height in time")
            .unwrap();
    }
    // No further transactions: every replica ends at the same height and head.
    let top = nodes.iter().map(|n| n.status().height).max().unwrap();
    for n in nodes {
        let mut w = n.watch_status();
        tokio::time::timeout(TIMEOUT, w.wait_for(|s| s.height >= top))
            .await
            .unwrap()
            .unwrap();
    }
    let heads: Vec<_> = nodes
        .iter()
        .map(|n| (n.status().height, n.status().head))
        .collect();
    assert!(
        heads.windows(2).all(|w| w[0] == w[1]),
        "replicas disagree on the head: {heads:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_commit_over_loopback_and_agree_on_the_head() {
    let c = Consortium::new(4, 8);
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(&c, dir.path()).await;
    let clients: Vec<_> = nodes.iter().map(|n| n.client(TIMEOUT)).collect();
    let mut feed = nodes[3].subscribe();

    // Every hospital publishes its capsule, through a different replica each.
    let capsules = join_all((0..c.hospitals.len()).map(|h| {
        let tx = c.capsule_tx(h);
        let client = clients[h % 4].clone();
        async move { (client.submit(tx.clone()).await, tx) }
    }))
    .await;
    for (r, tx) in &capsules {
        let done: &Committed = r.as_ref().expect("capsule committed");
        assert_eq!(done.outcome, TxOutcome::Applied);
        done.verify(tx, CHAIN, 0, &c.validator_keys(), 2 * c.f + 1)
            .expect("certificate verifies");
    }

    // Then 20 records per hospital, all in flight at once. A sender's nonces must reach the
    // ledger in order, so each hospital submits through one replica (hospitals are spread).
    let per_hospital = 20u64;
    let records = join_all((0..c.hospitals.len()).flat_map(|h| {
        let clients = &clients;
        let c = &c;
        (0..per_hospital).map(move |i| {
            let tx = c.record_tx(h, i + 2, i);
            let client = clients[h % 4].clone();
            async move { client.submit(tx).await }
        })
    }))
    .await;
    let mut top = 0;
    for r in &records {
        let done = r.as_ref().expect("record committed");
        assert_eq!(done.outcome, TxOutcome::Applied, "{:?}", done.outcome);
        top = top.max(done.height);
    }
    wait_same_head(&nodes, top).await;

    // The commit feed delivered blocks in height order.
    let mut last = 0;
    while let Ok(ev) = feed.try_recv() {
        let LedgerEvent::Committed(b) = ev else {
            panic!("no state transfer expected: {ev:?}")
        };
        assert!(b.header.height > last);
        last = b.header.height;
    }
    assert_eq!(last, nodes[3].status().height);

    // f+1 matching replies from different replicas, for one more transaction.
    let tx = c.record_tx(0, per_hospital + 2, 10_000);
    let agreed = submit_quorum(&clients, &tx, c.f).await.unwrap();
    assert_eq!(agreed.outcome, TxOutcome::Applied);

    // A transaction the application refuses up front is a clear error, not a hang.
    let mut forged = c.record_tx(1, per_hospital + 2, 20_000);
    let last_byte = forged.len() - 1;
    forged[last_byte] ^= 1;
    match clients[0].submit(forged).await {
        Err(NetError::Refused(reason)) => assert!(reason.contains("signature"), "{reason}"),
        other => panic!("a forged transaction must be refused, got {other:?}"),
    }

    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_cluster_resumes_from_its_stores() {
    let c = Consortium::new(4, 2);
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(&c, dir.path()).await;
    let client = nodes[1].client(TIMEOUT);
    client.submit(c.capsule_tx(0)).await.unwrap();
    let first = client.submit(c.record_tx(0, 2, 0)).await.unwrap();
    let before: Vec<_> = nodes.iter().map(|n| n.status()).collect();
    wait_same_head(&nodes, first.height).await;
    for n in nodes {
        n.shutdown().await.unwrap();
    }

    // Same stores, new processes' worth of state: the ledger continues where it was.
    let nodes = start_cluster(&c, dir.path()).await;
    for (n, b) in nodes.iter().zip(&before) {
        assert!(
            n.status().height >= first.height.min(b.height),
            "restored height"
        );
    }
    let again = nodes[2]
        .client(TIMEOUT)
        .submit(c.record_tx(0, 3, 1))
        .await
        .unwrap();
    assert!(again.height > first.height);
    assert_eq!(again.outcome, TxOutcome::Applied);
    // Resubmitting an already committed transaction is refused by the application (nonce).
    match nodes[0].client(TIMEOUT).submit(c.record_tx(0, 2, 0)).await {
        Err(NetError::Refused(reason)) => assert!(reason.contains("nonce"), "{reason}"),
        other => panic!("a replayed transaction must be refused, got {other:?}"),
    }
    wait_same_head(&nodes, again.height).await;
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
