//! Four PBFT replicas with the real driver, application and redb stores on turmoil's
//! simulated network: transactions commit; a partitioned replica catches up after the
//! partition heals; a crashed replica restarts from its store and catches up; every replica
//! ends at the same ledger head.

mod ledger_net_sim;
mod ledger_net_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ehr::ledger_net::{Client, Committed, LedgerNode, Status};
use ehr_ledger::app::TxOutcome;
use futures::future::join_all;
use ledger_net_sim::{SimConnector, SimListener};
use ledger_net_support::{Consortium, driver_config};
use tokio::sync::watch;

const PORT: u16 = 7000;
const N: usize = 4;

/// What the test script sees of each host, and what it asks the simulation to do.
#[derive(Default)]
struct World {
    nodes: Vec<Option<(Client, watch::Receiver<Status>)>>,
    starts: Vec<u32>,
    crash: Option<String>,
    bounce: Option<String>,
    done: bool,
}

fn node(w: &Arc<Mutex<World>>, i: usize) -> (Client, watch::Receiver<Status>) {
    w.lock().unwrap().nodes[i].clone().expect("node registered")
}

async fn submit_all(client: &Client, txs: Vec<Vec<u8>>) -> Vec<Committed> {
    let done = join_all(txs.into_iter().map(|tx| client.submit(tx))).await;
    done.into_iter()
        .map(|r| {
            let c = r.expect("committed");
            assert_eq!(c.outcome, TxOutcome::Applied);
            c
        })
        .collect()
}

/// One at a time: across a view change the replicas may re-propose a sender's pending
/// transactions in another order, and the ledger's nonces then reject the out-of-order ones.
async fn submit_seq(client: &Client, txs: Vec<Vec<u8>>) -> Vec<Committed> {
    let mut out = Vec::new();
    for tx in txs {
        out.extend(submit_all(client, vec![tx]).await);
    }
    out
}

async fn wait_until(w: &Arc<Mutex<World>>, what: &str, cond: impl Fn(&[Status]) -> bool) {
    for _ in 0..600 {
        let statuses: Option<Vec<Status>> = {
            let w = w.lock().unwrap();
            w.nodes
                .iter()
                .map(|n| n.as_ref().map(|(_, s)| *s.borrow()))
                .collect()
        };
        if let Some(s) = statuses
            && cond(&s)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

fn same_head(s: &[Status], at_least: u64) -> bool {
    s[0].height >= at_least
        && s.iter()
            .all(|x| x.height == s[0].height && x.head == s[0].head)
}

#[test]
fn replicas_commit_through_partition_and_crash_restart() -> turmoil::Result {
    let c = Arc::new(Consortium::new(N, 4));
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let world = Arc::new(Mutex::new(World {
        nodes: vec![None; N],
        starts: vec![0; N],
        ..Default::default()
    }));
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(600))
        .build();
    let addrs: Vec<String> = (0..N).map(|i| format!("r{i}:{PORT}")).collect();
    for i in 0..N {
        let (c, dir, world, addrs) = (c.clone(), dir.clone(), world.clone(), addrs.clone());
        sim.host(format!("r{i}"), move || {
            let (c, dir, world, addrs) = (c.clone(), dir.clone(), world.clone(), addrs.clone());
            async move {
                let id = i as u32;
                // State comes from the store on disk: empty at first, persisted after a crash.
                let (replica, store) = c.open(id, &dir.path().join(format!("r{i}.redb")), 1000);
                let listener = SimListener::bind(PORT).await?;
                let node = LedgerNode::start(
                    driver_config(),
                    replica,
                    store,
                    c.identity(id),
                    c.validator_set(),
                    addrs,
                    listener,
                    SimConnector,
                )?;
                {
                    let mut w = world.lock().unwrap();
                    w.nodes[i] = Some((node.client(Duration::from_secs(60)), node.watch_status()));
                    w.starts[i] += 1;
                }
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    assert!(!node.is_stopped(), "driver of r{i} stopped");
                }
            }
        });
    }

    let script = {
        let (c, world) = (c.clone(), world.clone());
        async move {
            wait_until(&world, "all replicas up", |_| true).await;
            // 1. Capsules, each hospital through its own replica.
            for h in 0..N {
                let (client, _) = node(&world, h);
                submit_all(&client, vec![c.capsule_tx(h)]).await;
            }
            let mut nonce = [2u64; N];
            let mut batch = |h: usize, k: u64| -> Vec<Vec<u8>> {
                let txs = (0..k)
                    .map(|j| c.record_tx(h, nonce[h] + j, nonce[h] + j))
                    .collect();
                nonce[h] += k;
                txs
            };
            let first = submit_all(&node(&world, 0).0, batch(0, 10)).await;
            let h1 = first.iter().map(|x| x.height).max().unwrap();
            wait_until(&world, "same head after normal operation", |s| {
                same_head(s, h1)
            })
            .await;

            // 2. Partition r3 from the others: the other three keep committing.
            for p in ["r0", "r1", "r2"] {
                turmoil::partition("r3", p);
            }
            let mut top = 0;
            for h in 0..3 {
                let done = submit_all(&node(&world, h).0, batch(h, 10)).await;
                top = top.max(done.iter().map(|x| x.height).max().unwrap());
            }
            let behind = { *node(&world, 3).1.borrow() };
            assert!(
                behind.height < top,
                "r3 was cut off yet kept up: {behind:?} vs {top}"
            );
            for p in ["r0", "r1", "r2"] {
                turmoil::repair("r3", p);
            }
            // After healing r3 catches up, and a client of r3 itself is served. r3 often
            // started a view change while cut off (votes of its last proposals were lost) and
            // cannot go back to the others' view; it waits one view above them and relays its
            // clients' transactions to every replica until they commit.
            let done = submit_all(&node(&world, 3).0, batch(3, 5)).await;
            let top = done.iter().map(|x| x.height).max().unwrap();
            wait_until(&world, "r3 caught up after the partition", |s| {
                same_head(s, top)
            })
            .await;

            // 3. Crash r1; the others commit without it; restart it from its store.
            world.lock().unwrap().crash = Some("r1".into());
            while world.lock().unwrap().crash.is_some() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut top = 0;
            for h in [0, 2] {
                let done = submit_seq(&node(&world, h).0, batch(h, 10)).await;
                top = top.max(done.iter().map(|x| x.height).max().unwrap());
            }
            world.lock().unwrap().bounce = Some("r1".into());
            for _ in 0..600 {
                if world.lock().unwrap().starts[1] == 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(world.lock().unwrap().starts[1], 2, "r1 restarted");
            let restarted = { *node(&world, 1).1.borrow() };
            assert!(
                restarted.height >= h1,
                "r1 restored its committed blocks from disk: {restarted:?}"
            );
            let done = submit_seq(&node(&world, 1).0, batch(1, 5)).await;
            let top = top.max(done.iter().map(|x| x.height).max().unwrap());
            wait_until(&world, "r1 caught up after restart", |s| same_head(s, top)).await;
            let views: Vec<u64> = (0..N).map(|i| node(&world, i).1.borrow().view).collect();
            eprintln!("final views {views:?}, height {top}");
            world.lock().unwrap().done = true;
            Ok(())
        }
    };
    sim.client("script", script);

    loop {
        let finished = sim.step()?;
        let (crash, bounce, done) = {
            let mut w = world.lock().unwrap();
            (w.crash.clone(), w.bounce.take(), w.done)
        };
        if let Some(h) = crash {
            sim.crash(h.as_str());
            let mut w = world.lock().unwrap();
            let i: usize = h[1..].parse().unwrap();
            w.nodes[i] = None;
            w.crash = None;
        }
        if let Some(h) = bounce {
            sim.bounce(h.as_str());
        }
        if done || finished {
            break;
        }
    }
    assert!(world.lock().unwrap().done, "the script finished");
    Ok(())
}
