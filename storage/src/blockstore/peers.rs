//! Keeping the configured peers (the consortium's other nodes) connected.
//!
//! The swarm has no DHT by default, so bitswap can only fetch from peers it is connected to.
//! A single dial at open is not enough: in a consortium the other nodes start in any order,
//! restart, and move (a Kubernetes pod keeps its DNS name, not its IP). So a background task
//! checks every [`TICK`] which configured peers are connected and redials the others with
//! exponential backoff, resolving `/dns`, `/dns4` and `/dns6` names with the system resolver at
//! every dial (libp2p's own DNS transport is not enabled, and would default to a public
//! resolver).

use std::net::IpAddr;
use std::sync::Weak;
use std::time::Duration;

use rust_ipfs::{Multiaddr, PeerId, Protocol};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::Inner;

/// How often the task looks at the connections.
pub(super) const TICK: Duration = Duration::from_secs(2);
/// First redial delay after a failed dial.
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Longest redial delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long one dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The peer id of a `.../p2p/<peer id>` address.
pub(super) fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(p)) => Some(p),
        _ => None,
    }
}

/// The dialable addresses of `addr`: itself if it starts with an IP, else one address per IP
/// its DNS name resolves to (of the family `/dns4` or `/dns6` asks for).
pub(super) async fn resolve(addr: &Multiaddr) -> Result<Vec<Multiaddr>, String> {
    let mut parts = addr.iter();
    let (host, want_v4, want_v6) = match parts.next() {
        Some(Protocol::Dns(h)) => (h.to_string(), true, true),
        Some(Protocol::Dns4(h)) => (h.to_string(), true, false),
        Some(Protocol::Dns6(h)) => (h.to_string(), false, true),
        _ => return Ok(vec![addr.clone()]),
    };
    let rest: Vec<Protocol<'_>> = parts.collect();
    let port = match rest.first() {
        Some(Protocol::Tcp(p)) | Some(Protocol::Udp(p)) => *p,
        _ => {
            return Err(format!(
                "{addr}: a DNS name must be followed by /tcp or /udp"
            ));
        }
    };
    let ips = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?;
    let mut out = Vec::new();
    for sa in ips {
        let first = match sa.ip() {
            IpAddr::V4(ip) if want_v4 => Protocol::Ip4(ip),
            IpAddr::V6(ip) if want_v6 => Protocol::Ip6(ip),
            _ => continue,
        };
        let mut m = Multiaddr::empty().with(first);
        for p in &rest {
            m = m.with(p.clone());
        }
        if !out.contains(&m) {
            out.push(m);
        }
    }
    if out.is_empty() {
        return Err(format!("{host} has no address of the requested family"));
    }
    Ok(out)
}

/// Dials `addr` (resolving it first); true once one of its addresses connected.
pub(super) async fn dial(inner: &Inner, addr: &Multiaddr) -> Result<(), String> {
    let mut last = String::from("no address");
    for a in resolve(addr).await? {
        match tokio::time::timeout(DIAL_TIMEOUT, inner.ipfs.connect(a.clone())).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => last = format!("{a}: {e}"),
            Err(_) => last = format!("{a}: no connection within {DIAL_TIMEOUT:?}"),
        }
    }
    Err(last)
}

/// Per-peer redial state.
#[derive(Debug)]
struct Slot {
    addr: Multiaddr,
    peer: PeerId,
    backoff: Duration,
    next: Instant,
    was_connected: bool,
}

/// Runs until the store is dropped: redials every configured peer that is not connected.
pub(super) async fn keep_connected(inner: Weak<Inner>, peers: Vec<Multiaddr>) {
    let now = Instant::now();
    let mut slots: Vec<Slot> = peers
        .into_iter()
        .filter_map(|addr| {
            peer_of(&addr).map(|peer| Slot {
                addr,
                peer,
                backoff: BACKOFF_INITIAL,
                next: now,
                was_connected: false,
            })
        })
        .collect();
    if slots.is_empty() {
        return;
    }
    loop {
        tokio::time::sleep(TICK).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let connected = match inner.ipfs.connected().await {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "swarm stopped; peer keeper exits");
                return;
            }
        };
        for slot in &mut slots {
            if connected.contains(&slot.peer) {
                slot.backoff = BACKOFF_INITIAL;
                slot.was_connected = true;
                continue;
            }
            if slot.was_connected {
                info!(peer = %slot.peer, "configured peer disconnected; redialling");
                slot.was_connected = false;
                slot.next = Instant::now();
            }
            if Instant::now() < slot.next {
                continue;
            }
            match dial(&inner, &slot.addr).await {
                Ok(()) => {
                    info!(peer = %slot.peer, "connected to configured peer");
                    slot.backoff = BACKOFF_INITIAL;
                    slot.was_connected = true;
                }
                Err(e) => {
                    debug!(addr = %slot.addr, error = %e, retry_in = ?slot.backoff, "peer dial failed");
                    if slot.backoff >= BACKOFF_MAX {
                        warn!(addr = %slot.addr, error = %e, "configured peer still unreachable");
                    }
                    slot.next = Instant::now() + slot.backoff;
                    slot.backoff = (slot.backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ip_addresses_are_dialled_as_they_are() {
        let a: Multiaddr = "/ip4/10.1.2.3/tcp/4001".parse().unwrap();
        assert_eq!(resolve(&a).await.unwrap(), vec![a]);
    }

    #[tokio::test]
    async fn dns4_names_resolve_to_ip4_keeping_the_rest() {
        let pid = PeerId::random();
        let a: Multiaddr = format!("/dns4/localhost/tcp/4001/p2p/{pid}")
            .parse()
            .unwrap();
        let r = resolve(&a).await.unwrap();
        let want: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{pid}")
            .parse()
            .unwrap();
        assert!(r.contains(&want), "{r:?}");
        assert!(
            r.iter()
                .all(|m| matches!(m.iter().next(), Some(Protocol::Ip4(_))))
        );
        assert_eq!(peer_of(&a), Some(pid));
    }

    #[tokio::test]
    async fn a_name_without_a_port_is_an_error() {
        let a: Multiaddr = "/dns4/localhost".parse().unwrap();
        let e = resolve(&a).await.unwrap_err();
        assert!(e.contains("/tcp or /udp"), "{e}");
    }

    #[tokio::test]
    async fn unresolvable_names_are_errors_not_panics() {
        let a: Multiaddr = "/dns4/no-such-host.invalid/tcp/4001".parse().unwrap();
        assert!(resolve(&a).await.is_err());
    }
}
