//! The peer transport: authenticated connections to every other replica, bounded queues,
//! reconnects.
//!
//! Each replica dials every other replica and uses that connection only to *send*; it accepts
//! connections from every other replica and uses those only to *receive*. Two one-way
//! connections per pair avoid the tie-breaking of simultaneous dials, and a failed send path
//! never blocks the receive path.
//!
//! - Outgoing: one task per peer owns a bounded queue. [`Transport::send`] never waits: when the
//!   queue is full the new message is dropped, counted and logged (consensus tolerates loss
//!   and retransmits through its own timeouts; memory must not grow). The task reconnects with
//!   capped exponential backoff and jitter.
//! - Incoming: a task per accepted connection runs the handshake (bounded in time and in
//!   number of concurrent unauthenticated connections), then forwards frames into one bounded
//!   inbound channel; when the driver is behind, reading stops and TCP pushes back. A newer
//!   authenticated connection from the same replica replaces the older one.
//! - Framing: see [`super::frame`]. A peer announcing a frame over the maximum is dropped with
//!   a logged reason.
//!
//! The transport is generic over [`Listener`] and [`Connector`] so the same code runs over
//! tokio TCP in production and over a simulated network in tests.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::error::NetError;
use super::frame::{Kind, read_typed, write_typed};
use super::handshake::{self, Identity, ValidatorSet};

/// A source of incoming byte streams (a bound TCP listener, or a simulated one in tests).
pub trait Listener: Send + 'static {
    /// The stream type of an accepted connection.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection; returns it and a printable peer address.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, String)>> + Send;
}

/// Opens outgoing byte streams to `host:port` addresses.
pub trait Connector: Clone + Send + Sync + 'static {
    /// The stream type of an outgoing connection.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Connects to `addr`.
    fn connect(&self, addr: String) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, String)> {
        let (stream, addr) = tokio::net::TcpListener::accept(self).await?;
        stream.set_nodelay(true)?;
        Ok((stream, addr.to_string()))
    }
}

/// Connects over tokio TCP (no Nagle delay: consensus messages are latency-bound).
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    type Stream = tokio::net::TcpStream;

    async fn connect(&self, addr: String) -> io::Result<Self::Stream> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// Limits and timings of the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// Largest frame sent or accepted; a peer announcing more is dropped.
    pub max_frame_bytes: u32,
    /// Messages queued per outgoing peer before new ones are dropped.
    pub queue_capacity: usize,
    /// Messages received from all peers and not yet taken by the driver.
    pub inbound_capacity: usize,
    /// Time allowed for a connection attempt.
    pub connect_timeout: Duration,
    /// Time allowed for the handshake on a new connection.
    pub handshake_timeout: Duration,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// Accepted connections allowed to be in their handshake at once.
    pub max_pending_handshakes: usize,
    /// A side that has sent nothing for this long sends a keepalive frame.
    pub keepalive_interval: Duration,
    /// A connection on which nothing arrived for this long is closed (and redialled): it
    /// catches half-open connections and paths that silently lost data.
    pub idle_timeout: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 16 * 1024 * 1024,
            queue_capacity: 4096,
            inbound_capacity: 8192,
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            max_pending_handshakes: 16,
            keepalive_interval: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(3),
        }
    }
}

impl TransportConfig {
    /// Checks the limits; the error names the field.
    pub fn validate(&self) -> Result<(), NetError> {
        let bad = |f: &str| Err(NetError::Config(format!("{f} must be positive")));
        if self.max_frame_bytes == 0 {
            return bad("max_frame_bytes");
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity");
        }
        if self.inbound_capacity == 0 {
            return bad("inbound_capacity");
        }
        if self.max_pending_handshakes == 0 {
            return bad("max_pending_handshakes");
        }
        if self.connect_timeout.is_zero() || self.handshake_timeout.is_zero() {
            return bad("connect_timeout and handshake_timeout");
        }
        if self.keepalive_interval.is_zero() || self.idle_timeout <= self.keepalive_interval * 2 {
            return Err(NetError::Config(
                "keepalive_interval must be positive and idle_timeout more than twice it".into(),
            ));
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            return Err(NetError::Config(
                "backoff_initial must be positive and at most backoff_max".into(),
            ));
        }
        Ok(())
    }
}

/// A message received from an authenticated peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The sending replica (authenticated by the handshake of the connection it came on).
    pub from: u32,
    /// The frame's payload.
    pub msg: Vec<u8>,
}

/// Counters of one outgoing peer link.
#[derive(Debug, Default)]
struct LinkStats {
    connected: AtomicBool,
    sent: AtomicU64,
    dropped: AtomicU64,
    connects: AtomicU64,
}

/// Counters of the transport as a whole.
#[derive(Debug, Default)]
struct Shared {
    refused_handshakes: AtomicU64,
    accepted_peers: AtomicU64,
}

struct Link {
    tx: mpsc::Sender<Bytes>,
    stats: Arc<LinkStats>,
}

/// The running transport of one replica. Dropping it stops every task it started.
pub struct Transport {
    me: u32,
    links: Vec<Option<Link>>,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("me", &self.me)
            .field("peers", &self.links.len())
            .finish()
    }
}

impl Transport {
    /// Starts accepting on `listener` and dialling every other replica at `addrs[id]`
    /// (`addrs` is in replica-id order and has one entry per validator). Returns the transport
    /// and the channel of authenticated inbound messages.
    pub fn start<L: Listener, C: Connector>(
        cfg: TransportConfig,
        me: Arc<Identity>,
        validators: Arc<ValidatorSet>,
        addrs: Vec<String>,
        listener: L,
        connector: C,
    ) -> Result<(Self, mpsc::Receiver<Inbound>), NetError> {
        cfg.validate()?;
        if addrs.len() != validators.len() {
            return Err(NetError::Config(format!(
                "addrs: {} addresses for {} validators",
                addrs.len(),
                validators.len()
            )));
        }
        if validators.key(me.id()) != Some(&me.public()) {
            return Err(NetError::Config(format!(
                "identity: key of replica {} is not the validator set's key for that id",
                me.id()
            )));
        }
        let cfg = Arc::new(cfg);
        let shared = Arc::new(Shared::default());
        let (in_tx, in_rx) = mpsc::channel(cfg.inbound_capacity);
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(
            listener,
            cfg.clone(),
            me.clone(),
            validators.clone(),
            in_tx,
            shared.clone(),
        ));
        let mut links = Vec::with_capacity(addrs.len());
        for (id, addr) in addrs.into_iter().enumerate() {
            let id = id as u32;
            if id == me.id() {
                links.push(None);
                continue;
            }
            let (tx, rx) = mpsc::channel(cfg.queue_capacity);
            let stats = Arc::new(LinkStats::default());
            tasks.spawn(dial_loop(
                id,
                addr,
                rx,
                connector.clone(),
                cfg.clone(),
                me.clone(),
                validators.clone(),
                stats.clone(),
            ));
            links.push(Some(Link { tx, stats }));
        }
        Ok((
            Self {
                me: me.id(),
                links,
                shared,
                tasks,
            },
            in_rx,
        ))
    }

    /// This replica's id.
    pub fn me(&self) -> u32 {
        self.me
    }

    /// Queues `msg` for replica `to` without waiting. Returns `false` if it was dropped (queue
    /// full, or `to` is this replica or not a validator).
    pub fn send(&self, to: u32, msg: Bytes) -> bool {
        let Some(Some(link)) = self.links.get(to as usize) else {
            return false;
        };
        match link.tx.try_send(msg) {
            Ok(()) => true,
            Err(_) => {
                let n = link.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n.is_power_of_two() {
                    warn!(
                        peer = to,
                        dropped = n,
                        "outgoing queue full; dropping messages"
                    );
                }
                false
            }
        }
    }

    /// Queues `msg` for every other replica.
    pub fn broadcast(&self, msg: Bytes) {
        for id in 0..self.links.len() as u32 {
            if id != self.me {
                self.send(id, msg.clone());
            }
        }
    }

    /// Whether the outgoing connection to `peer` is currently established and authenticated.
    pub fn is_connected(&self, peer: u32) -> bool {
        matches!(self.links.get(peer as usize), Some(Some(l)) if l.stats.connected.load(Ordering::Relaxed))
    }

    /// Messages dropped so far because the queue to `peer` was full.
    pub fn dropped(&self, peer: u32) -> u64 {
        match self.links.get(peer as usize) {
            Some(Some(l)) => l.stats.dropped.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Messages written so far to `peer`'s connections.
    pub fn sent(&self, peer: u32) -> u64 {
        match self.links.get(peer as usize) {
            Some(Some(l)) => l.stats.sent.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Successful outgoing connections (handshake done) to `peer` so far.
    pub fn connects(&self, peer: u32) -> u64 {
        match self.links.get(peer as usize) {
            Some(Some(l)) => l.stats.connects.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Incoming connections refused so far (failed or timed-out handshakes).
    pub fn refused_handshakes(&self) -> u64 {
        self.shared.refused_handshakes.load(Ordering::Relaxed)
    }

    /// Incoming connections authenticated so far.
    pub fn accepted_peers(&self) -> u64 {
        self.shared.accepted_peers.load(Ordering::Relaxed)
    }

    /// Stops every task of the transport (also done on drop).
    pub fn shutdown(&mut self) {
        self.tasks.abort_all();
    }
}

async fn accept_loop<L: Listener>(
    mut listener: L,
    cfg: Arc<TransportConfig>,
    me: Arc<Identity>,
    validators: Arc<ValidatorSet>,
    inbound: mpsc::Sender<Inbound>,
    shared: Arc<Shared>,
) {
    let pending = Arc::new(Semaphore::new(cfg.max_pending_handshakes));
    // The newest authenticated connection of each peer holds the receiver of its entry; a newer
    // one replaces (and so stops) it.
    let current: Arc<Mutex<HashMap<u32, oneshot::Sender<()>>>> = Arc::default();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    warn!(%addr, "too many handshakes in progress; closing connection");
                    shared.refused_handshakes.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                conns.spawn(serve_incoming(
                    stream, addr, permit, cfg.clone(), me.clone(), validators.clone(),
                    inbound.clone(), shared.clone(), current.clone(),
                ));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_incoming<S: AsyncRead + AsyncWrite + Unpin + Send>(
    mut stream: S,
    addr: String,
    permit: tokio::sync::OwnedSemaphorePermit,
    cfg: Arc<TransportConfig>,
    me: Arc<Identity>,
    validators: Arc<ValidatorSet>,
    inbound: mpsc::Sender<Inbound>,
    shared: Arc<Shared>,
    current: Arc<Mutex<HashMap<u32, oneshot::Sender<()>>>>,
) {
    let peer = match tokio::time::timeout(
        cfg.handshake_timeout,
        handshake::accept(&mut stream, &me, &validators),
    )
    .await
    {
        Ok(Ok(peer)) => peer,
        Ok(Err(e)) => {
            shared.refused_handshakes.fetch_add(1, Ordering::Relaxed);
            warn!(%addr, reason = %e, "refused incoming peer");
            return;
        }
        Err(_) => {
            shared.refused_handshakes.fetch_add(1, Ordering::Relaxed);
            warn!(%addr, reason = %NetError::HandshakeTimeout, "refused incoming peer");
            return;
        }
    };
    drop(permit);
    shared.accepted_peers.fetch_add(1, Ordering::Relaxed);
    let (replaced_tx, mut replaced) = oneshot::channel();
    {
        let mut map = current
            .lock()
            .expect("transport connection registry poisoned");
        if let Some(old) = map.insert(peer, replaced_tx) {
            let _ = old.send(());
        }
    }
    debug!(peer, %addr, "incoming peer authenticated");
    let (mut rd, mut wr) = tokio::io::split(stream);
    let reader = async {
        loop {
            let frame =
                tokio::time::timeout(cfg.idle_timeout, read_typed(&mut rd, cfg.max_frame_bytes))
                    .await
                    .unwrap_or(Err(NetError::Idle(cfg.idle_timeout)))?;
            match frame {
                Some((Kind::Message, msg)) => {
                    if inbound.send(Inbound { from: peer, msg }).await.is_err() {
                        return Ok(()); // The driver is gone.
                    }
                }
                Some((Kind::Keepalive, _)) => {}
                None => return Err(NetError::Io(io::ErrorKind::UnexpectedEof.into())),
            }
        }
    };
    let keepalive = async {
        loop {
            tokio::time::sleep(cfg.keepalive_interval).await;
            write_typed(&mut wr, Kind::Keepalive, &[], cfg.max_frame_bytes).await?;
            wr.flush().await?;
        }
    };
    let ended: Result<(), NetError> = tokio::select! {
        r = reader => r,
        r = keepalive => r,
        _ = &mut replaced => {
            debug!(peer, "connection replaced by a newer one");
            Ok(())
        }
    };
    if let Err(reason) = ended {
        warn!(peer, %reason, "closing incoming peer connection");
    }
}

/// The delay before reconnect attempt `attempt` (0-based): `initial * 2^attempt`, capped at
/// `max`, then drawn uniformly from its upper half so that replicas restarted together do not
/// reconnect in lockstep.
pub fn backoff_delay(
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: &mut impl Rng,
) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.min(20));
    let capped = exp.min(max);
    let half = capped / 2;
    half + Duration::from_nanos(rng.gen_range(0..=half.as_nanos().min(u128::from(u64::MAX)) as u64))
}

#[allow(clippy::too_many_arguments)]
async fn dial_loop<C: Connector>(
    peer: u32,
    addr: String,
    mut rx: mpsc::Receiver<Bytes>,
    connector: C,
    cfg: Arc<TransportConfig>,
    me: Arc<Identity>,
    validators: Arc<ValidatorSet>,
    stats: Arc<LinkStats>,
) {
    let mut attempt: u32 = 0;
    loop {
        match connect_once(peer, &addr, &connector, &cfg, &me, &validators).await {
            Ok(stream) => {
                attempt = 0;
                stats.connects.fetch_add(1, Ordering::Relaxed);
                stats.connected.store(true, Ordering::Relaxed);
                info!(peer, %addr, "connected to peer");
                let ended = pump(stream, &mut rx, &cfg, &stats).await;
                stats.connected.store(false, Ordering::Relaxed);
                match ended {
                    Pump::QueueClosed => return,
                    Pump::Failed(reason) => warn!(peer, %reason, "connection to peer lost"),
                }
            }
            Err(e) => debug!(peer, %addr, reason = %e, attempt, "cannot reach peer"),
        }
        let delay = backoff_delay(
            cfg.backoff_initial,
            cfg.backoff_max,
            attempt,
            &mut rand::thread_rng(),
        );
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}

async fn connect_once<C: Connector>(
    peer: u32,
    addr: &str,
    connector: &C,
    cfg: &TransportConfig,
    me: &Identity,
    validators: &ValidatorSet,
) -> Result<C::Stream, NetError> {
    let mut stream = tokio::time::timeout(cfg.connect_timeout, connector.connect(addr.to_owned()))
        .await
        .map_err(|_| {
            NetError::Io(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
        })??;
    tokio::time::timeout(
        cfg.handshake_timeout,
        handshake::dial(&mut stream, me, validators, peer),
    )
    .await
    .map_err(|_| NetError::HandshakeTimeout)??;
    Ok(stream)
}

enum Pump {
    QueueClosed,
    Failed(NetError),
}

/// Writes queued messages to one connection until it fails or the transport stops. Batches
/// whatever is queued before flushing, sends keepalives when idle, and reads the listener's
/// keepalives so a dead connection is noticed even when there is nothing to send.
async fn pump<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    rx: &mut mpsc::Receiver<Bytes>,
    cfg: &TransportConfig,
    stats: &LinkStats,
) -> Pump {
    let (mut rd, wr) = tokio::io::split(stream);
    let mut wr = BufWriter::with_capacity(256 * 1024, wr);
    let writer = async {
        loop {
            let first = match tokio::time::timeout(cfg.keepalive_interval, rx.recv()).await {
                Ok(Some(m)) => Some(m),
                Ok(None) => return Pump::QueueClosed,
                Err(_) => None,
            };
            let Some(first) = first else {
                if let Err(e) =
                    write_typed(&mut wr, Kind::Keepalive, &[], cfg.max_frame_bytes).await
                {
                    return Pump::Failed(e);
                }
                if let Err(e) = wr.flush().await {
                    return Pump::Failed(NetError::Io(e));
                }
                continue;
            };
            let mut next = Some(first);
            while let Some(m) = next {
                match write_typed(&mut wr, Kind::Message, &m, cfg.max_frame_bytes).await {
                    Ok(()) => {
                        stats.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e @ (NetError::FrameTooLarge { .. } | NetError::EmptyFrame)) => {
                        warn!(reason = %e, "not sending an unsendable message");
                    }
                    Err(e) => return Pump::Failed(e),
                }
                next = rx.try_recv().ok();
            }
            if let Err(e) = wr.flush().await {
                return Pump::Failed(NetError::Io(e));
            }
        }
    };
    let reader = async {
        loop {
            let frame = tokio::time::timeout(cfg.idle_timeout, read_typed(&mut rd, 0))
                .await
                .unwrap_or(Err(NetError::Idle(cfg.idle_timeout)));
            match frame {
                Ok(Some((Kind::Keepalive, _))) => {}
                Ok(Some((Kind::Message, _))) => {
                    return NetError::MalformedHandshake(
                        "listener sent a message on a send-only connection",
                    );
                }
                Ok(None) => return NetError::Io(io::ErrorKind::UnexpectedEof.into()),
                Err(e) => return e,
            }
        }
    };
    tokio::select! {
        p = writer => p,
        e = reader => Pump::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn backoff_is_capped_and_jittered_within_bounds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (i, m) = (Duration::from_millis(50), Duration::from_secs(2));
        for attempt in 0..40 {
            let d = backoff_delay(i, m, attempt, &mut rng);
            let full = i.saturating_mul(1 << attempt.min(20)).min(m);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
    }

    #[test]
    fn config_validation_names_the_field() {
        assert!(TransportConfig::default().validate().is_ok());
        let c = TransportConfig {
            queue_capacity: 0,
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("queue_capacity")
        );
        let c = TransportConfig {
            backoff_max: Duration::from_millis(1),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("backoff"));
    }
}
