//! The accept loop both roles share, and the per-connection log lines.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{SocketPermissions, Tuning};
use crate::metrics::Histogram;
use crate::proto::handshake::{Established, HandshakeError, HandshakeRandomness};
use crate::proto::identity::Fingerprint;
use crate::proto::resume::{ConnectorTickets, TicketPolicy, TicketStore};
use crate::tunnel::net::{
    configure, reset_on_close, Bound, Conn, Gauge, LogLimiter, Peer, Slot, SourceLimiter,
};
use crate::tunnel::pump::{pump, PumpError, PumpOptions, PumpStats, Traffic};
use crate::tunnel::session::{Records, SessionError};

/// Counters of one tunnel, readable by tests and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Handshakes completed.
    pub handshakes_ok: AtomicU64,
    /// Handshakes refused or failed.
    pub handshakes_failed: AtomicU64,
    /// Listener: connector hellos without a valid mac1 (scanners, junk, wrong pins): no work done.
    pub mac1_rejected: AtomicU64,
    /// Connections dropped at `max_connections`.
    pub over_limit: AtomicU64,
    /// Connections dropped by the per-source rate limit.
    pub rate_limited: AtomicU64,
    /// Handshakes completed by session resumption (no RSA operation).
    pub resumed: AtomicU64,
    /// Resumption tickets offered (connector) or presented (listener) but refused, so that a
    /// full handshake ran instead.
    pub resumption_fallbacks: AtomicU64,
}

/// What the accept loop and the connections of one tunnel share.
#[derive(Debug)]
pub struct TunnelState {
    /// Handshakes in progress.
    pub handshakes: Arc<Gauge>,
    /// Connections open (handshaking or established).
    pub connections: Arc<Gauge>,
    /// Counters.
    pub counters: Counters,
    /// New connections per source address.
    pub sources: SourceLimiter,
    /// Plaintext bytes and rekeys of all connections, added to as records go.
    pub traffic: Arc<Traffic>,
    /// Failed handshakes by reason ([`SessionError::reason`]).
    pub failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Time from accept to an established session, of successful handshakes.
    pub handshake_seconds: Histogram,
    /// Listener: the resumption tickets issued (kept across reloads, memory only).
    pub tickets: Arc<Mutex<TicketStore>>,
    /// Connector: the current resumption ticket (kept across reloads, memory only).
    pub connector_tickets: Arc<Mutex<ConnectorTickets>>,
    limit_log: LogLimiter,
    rate_log: LogLimiter,
}

impl TunnelState {
    /// Waits (holding nothing but the caller's socket) for one of `max_handshakes` slots, until
    /// `deadline`. Past `max_handshakes` connections queue instead of being dropped; only
    /// `max_connections` drops.
    pub async fn handshake_slot(
        &self,
        tuning: &Tuning,
        deadline: tokio::time::Instant,
    ) -> Option<Slot> {
        tokio::time::timeout_at(deadline, self.handshakes.acquire(tuning.max_handshakes))
            .await
            .ok()
    }

    /// Counts a failed handshake, by reason.
    pub fn handshake_failed(&self, err: &SessionError) {
        self.counters
            .handshakes_failed
            .fetch_add(1, Ordering::Relaxed);
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        *f.entry(err.reason()).or_insert(0) += 1;
    }

    /// Counts a completed handshake that took `took` since the accept.
    pub fn handshake_ok(&self, took: Duration) {
        self.counters.handshakes_ok.fetch_add(1, Ordering::Relaxed);
        self.handshake_seconds.observe(took);
    }
}

impl Default for TunnelState {
    fn default() -> Self {
        TunnelState {
            handshakes: Arc::default(),
            connections: Arc::default(),
            counters: Counters::default(),
            sources: SourceLimiter::default(),
            traffic: Arc::default(),
            failures: Mutex::default(),
            handshake_seconds: Histogram::default(),
            tickets: Arc::default(),
            connector_tickets: Arc::default(),
            limit_log: LogLimiter::new(Duration::from_secs(10)),
            rate_log: LogLimiter::new(Duration::from_secs(10)),
        }
    }
}

/// One side of a tunnel: how it handles each accepted socket.
pub trait Tunnel: Send + Sync + 'static {
    /// The tunnel's name, for logs.
    fn name(&self) -> &str;
    /// "listener" or "connector", for logs.
    fn role(&self) -> &'static str;
    /// Timeouts and limits.
    fn tuning(&self) -> &Tuning;
    /// Mode and group of the listening socket when it is a Unix socket.
    fn socket_permissions(&self) -> Option<&SocketPermissions> {
        None
    }
    /// Serves one accepted connection, taking a handshake slot ([`TunnelState::handshake_slot`])
    /// for the costly part of its handshake.
    fn handle(
        self: Arc<Self>,
        stream: Conn,
        peer: Peer,
        state: Arc<TunnelState>,
    ) -> impl Future<Output = ()> + Send;
}

/// The resumption ticket policy of `tuning`.
pub fn ticket_policy(tuning: &Tuning) -> TicketPolicy {
    TicketPolicy {
        lifetime: tuning.resumption_lifetime,
        uses: tuning.resumption_uses,
    }
}

/// Counts how a completed handshake went: resumed, or full after a refused ticket
/// ([`TunnelState::handshake_ok`] counts it as completed).
pub fn count_resumption(state: &TunnelState, est: &Established) {
    if est.resumed {
        state.counters.resumed.fetch_add(1, Ordering::Relaxed);
    } else if est.ticket_refused.is_some() {
        state
            .counters
            .resumption_fallbacks
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Fresh handshake randomness from the OS RNG.
pub fn os_randomness() -> HandshakeRandomness {
    HandshakeRandomness::generate(&mut rand::rand_core::UnwrapErr(rand::rngs::SysRng))
}

/// Starts [`serve`] for `tunnel` on `listener` as a task of `tracker`, with `state` (fresh, or
/// the one of the socket it replaces, so that counters survive). Returns the sender that
/// replaces the tunnel's settings for new connections (a reload).
pub fn spawn<T: Tunnel>(
    listener: Bound,
    tunnel: Arc<T>,
    state: Arc<TunnelState>,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> watch::Sender<Arc<T>> {
    let (tx, rx) = watch::channel(tunnel);
    tracker.spawn(serve(listener, rx, state, stop, tracker.clone()));
    tx
}

/// Carries an established session between `plain` and `sealed` until both directions have
/// ended, resets both sockets if it fails (a Unix socket is just closed), and logs the close
/// line. What both roles do after their handshake and the StreamInfo record (sent by the
/// connector, read by the listener). Bytes and rekeys are added to `state` live.
#[allow(clippy::too_many_arguments)]
pub async fn carry<T: Tunnel>(
    tunnel: &T,
    mut plain: Conn,
    mut sealed: TcpStream,
    records: Records,
    leftover: Vec<u8>,
    peer: impl Display,
    started: Instant,
    state: &TunnelState,
) {
    let Records {
        fingerprint,
        sealer,
        opener,
    } = records;
    let tuning = tunnel.tuning();
    let stats = PumpStats {
        tunnel: Some(state.traffic.clone()),
        ..PumpStats::default()
    };
    let opts = PumpOptions {
        record_size: tuning.record_size,
        rekey_interval: tuning.rekey_interval,
    };
    let result = {
        let (sr, mut sw) = sealed.split();
        match &mut plain {
            Conn::Tcp(p) => {
                let (pr, mut pw) = p.split();
                pump(
                    &pr, &mut pw, &sr, &mut sw, sealer, opener, leftover, opts, &stats,
                )
                .await
            }
            Conn::Unix(p) => {
                let (pr, mut pw) = p.split();
                pump(
                    &pr, &mut pw, &sr, &mut sw, sealer, opener, leftover, opts, &stats,
                )
                .await
            }
        }
    };
    if result.is_err() {
        plain.reset_on_close();
        reset_on_close(&sealed);
    }
    log_close(
        tunnel.name(),
        tunnel.role(),
        peer,
        &fingerprint,
        &stats,
        started,
        &result,
    );
}

/// Accepts connections until `stop`, each served in a task on `tracker` with the settings
/// current at its accept (a reload changes them for new connections only).
pub async fn serve<T: Tunnel>(
    listener: Bound,
    settings: watch::Receiver<Arc<T>>,
    state: Arc<TunnelState>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tunnel = settings.borrow().clone();
        state.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let tuning = tunnel.tuning();
        // Only IP peers have a source to limit; a Unix socket's clients are local users whom
        // the socket's file mode admits.
        let source = peer.ip();
        if let Some(ip) = source.filter(|ip| !state.sources.allow(*ip, tuning.source_rate_limit)) {
            let dropped = state.counters.rate_limited.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(held_back) = state.rate_log.check() {
                tracing::warn!(
                    tunnel = tunnel.name(),
                    role = tunnel.role(),
                    source = %ip,
                    source_rate_limit = tuning.source_rate_limit,
                    dropped_since_last_warning = held_back,
                    dropped_total = dropped,
                    "per-source rate limit reached, dropping new connections"
                );
            }
            stream.reset_on_close();
            continue;
        }
        let Some(conn_slot) = state.connections.try_acquire(tuning.max_connections) else {
            over_limit(&state, tunnel.as_ref(), &stream);
            continue;
        };
        if let Conn::Tcp(s) = &stream {
            configure(s);
        }
        let state = state.clone();
        tracker.spawn(async move {
            tunnel.handle(stream, peer, state).await;
            drop(conn_slot);
        });
    }
}

/// Drops a connection at `max_connections`, with a warning at most every few seconds.
fn over_limit<T: Tunnel>(state: &TunnelState, tunnel: &T, stream: &Conn) {
    state.counters.over_limit.fetch_add(1, Ordering::Relaxed);
    if let Some(held_back) = state.limit_log.check() {
        let tuning = tunnel.tuning();
        tracing::warn!(
            tunnel = tunnel.name(),
            role = tunnel.role(),
            max_connections = tuning.max_connections,
            dropped_since_last_warning = held_back,
            "connection limit reached, dropping new connections"
        );
    }
    stream.reset_on_close();
}

/// The line logged when a handshake fails.
pub fn log_refusal(tunnel: &str, role: &str, peer: impl Display, err: &SessionError) {
    use HandshakeError as H;
    match err {
        // Scanners, junk and slow senders before mac1: nothing an operator must act on, and a
        // flood of them must not flood the log (they are counted instead).
        SessionError::Handshake(H::BadMac1 | H::Message(_))
        | SessionError::Eof
        | SessionError::Timeout(_)
        | SessionError::Io(_)
            if role == "listener" =>
        {
            tracing::debug!(tunnel, role, %peer, reason = %err, "handshake refused")
        }
        SessionError::Handshake(H::UntrustedConnector(fp)) => tracing::warn!(
            tunnel,
            role,
            %peer,
            fingerprint = %fp,
            "handshake refused: connector key {fp} is not trusted (add it to `peers` to let it in)"
        ),
        _ => tracing::warn!(tunnel, role, %peer, reason = %err, "handshake failed"),
    }
}

/// The line logged when an established connection ends.
fn log_close(
    tunnel: &str,
    role: &str,
    peer: impl Display,
    fingerprint: &Fingerprint,
    stats: &PumpStats,
    started: Instant,
    result: &Result<(), PumpError>,
) {
    let (sent, received, rekeys) = stats.snapshot();
    let duration_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(()) => tracing::info!(
            tunnel, role, %peer, fingerprint = %fingerprint, sent, received, rekeys, duration_ms,
            reason = "closed by both ends", "connection closed"
        ),
        Err(e) => tracing::warn!(
            tunnel, role, %peer, fingerprint = %fingerprint, sent, received, rekeys, duration_ms,
            reason = %e, "connection reset"
        ),
    }
}
