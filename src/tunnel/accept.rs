//! The accept loop both roles share: per-source and connection limits, one task per accepted
//! socket, and the line logged when a handshake fails.

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::proto::handshake::{HandshakeError, HandshakeRandomness, Role};
use crate::proto::identity::{Fingerprint, TrustList};
use crate::tunnel::handshake::SessionError;
use crate::tunnel::net::{configure, Bound, Conn, Peer};
use crate::tunnel::settings::{SharedSettings, SocketPermissions};
use crate::tunnel::state::TunnelState;

/// One side of a tunnel: how it handles each accepted socket.
pub trait Tunnel: Send + Sync + 'static {
    /// The tunnel's name, for logs.
    fn name(&self) -> &str;
    /// Which side this tunnel is, for logs and metric labels.
    fn role(&self) -> Role;
    /// Timeouts and limits, the record layer and resumption: what both roles use.
    fn shared(&self) -> &SharedSettings;
    /// Whether open connections of a peer with key `fp` may go on under these settings: a
    /// reload cuts those of a key they no longer accept (unless a listener has
    /// `revoke = "new-only"`).
    fn keeps_open(&self, fp: &Fingerprint) -> bool;
    /// Whether a new stream (a new client) of a peer with key `fp` is allowed under these
    /// settings: what a reload checks an idle or reused session against, whatever `revoke` says.
    fn accepts_new(&self, fp: &Fingerprint) -> bool {
        self.keeps_open(fp)
    }
    /// A connector's terms (`tunnel::terms`): its pooled sessions carry new clients only if
    /// made under them. What a reload retires pooled sessions by; `None` for a listener.
    fn pool_terms(&self) -> Option<crate::tunnel::terms::Terms> {
        None
    }
    /// The log line of a listener's refusal (an Alert record) of this connector.
    fn describe_refusal(&self, alert: &crate::proto::record::Alert) -> String {
        alert.to_string()
    }
    /// The names `status` gives peer keys: a listener's trust list, a connector's pins.
    fn trust(&self) -> Option<Arc<TrustList>> {
        None
    }
    /// Mode and group of the listening socket when it is a Unix socket; `None` for a tunnel
    /// that listens on TCP only.
    fn socket_permissions(&self) -> Option<&SocketPermissions> {
        None
    }
    /// Serves one accepted connection, taking a handshake slot ([`TunnelState::handshake_slot`])
    /// for the costly part of its handshake. `self` holds the settings of the accept; `current`
    /// follows reloads, and is what each new stream (and a session given back to a pool) is
    /// checked against, so that a session whose handshake was in flight across a reload obeys
    /// the reload's trust as one that was open before it does.
    fn handle(
        self: Arc<Self>,
        current: Current<Self>,
        stream: Conn,
        peer: Peer,
        state: Arc<TunnelState>,
    ) -> impl Future<Output = ()> + Send;
}

/// The settings a reload last gave a tunnel (see [`spawn`]).
pub(crate) type Current<T> = watch::Receiver<Arc<T>>;

/// Fresh handshake randomness from the OS RNG.
pub(crate) fn os_randomness() -> HandshakeRandomness {
    HandshakeRandomness::generate(&mut rand::rand_core::UnwrapErr(rand::rngs::SysRng))
}

/// Starts [`serve`] for `tunnel` on `listener` as a task of `tracker`, with `state` (fresh, or
/// the one of the socket it replaces, so that counters survive). Returns the sender that
/// replaces the tunnel's settings for new connections (a reload).
pub(crate) fn spawn<T: Tunnel>(
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

/// Accepts connections until `stop`, each served in a task on `tracker` with the settings
/// current at its accept (a reload changes them for new connections, and for the new streams
/// of every session: [`Tunnel::handle`]).
pub(crate) async fn serve<T: Tunnel>(
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
        let now = Instant::now();
        state.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let shared = tunnel.shared();
        // Only IP peers have a source to limit; a Unix socket's clients are local users whom
        // the socket's file mode admits.
        let source = peer.ip();
        if let Some(ip) =
            source.filter(|ip| !state.sources.allow(*ip, shared.source_rate_limit, now))
        {
            let dropped = state.counters.rate_limited.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(held_back) = state.rate_log.check(now) {
                tracing::warn!(
                    tunnel = tunnel.name(),
                    role = %tunnel.role(),
                    source = %ip,
                    source_rate_limit = shared.source_rate_limit,
                    dropped_since_last_warning = held_back,
                    dropped_total = dropped,
                    "per-source rate limit reached, dropping new connections"
                );
            }
            stream.reset_on_close();
            continue;
        }
        // At `max_connections`, a listener closes its oldest connection that has not sent a
        // valid hello yet, or else its oldest session that has not carried a stream yet
        // (`tunnel::pre_auth`), and this one takes the slot it gives back.
        let max = shared.max_connections;
        let conn_slot = match state.connections.try_acquire(max) {
            Some(slot) => Some(slot),
            None if state.pre_auth.evict_oldest() || state.silent.evict_oldest() => None,
            None => {
                over_limit(&state, tunnel.as_ref(), &stream);
                continue;
            }
        };
        if let Conn::Tcp(s) = &stream {
            configure(s);
        }
        let (state, current) = (state.clone(), settings.clone());
        // Every line about this connection carries its session's id, recorded by `handle` once
        // it is known; a connector's lines name its local client here, and the listener's
        // address in their own `peer=` (an error span: shown whatever the log level).
        let span = match tunnel.role() {
            Role::Listener => tracing::error_span!("conn", session = tracing::field::Empty),
            Role::Connector => {
                tracing::error_span!("conn", session = tracing::field::Empty, client = %peer)
            }
        };
        tracker.spawn(
            async move {
                let conn_slot = match conn_slot {
                    Some(slot) => slot,
                    None => {
                        let freed = state.connections.acquire(max);
                        match tokio::time::timeout(EVICTION_WAIT, freed).await {
                            Ok(slot) => slot,
                            Err(_) => {
                                over_limit(&state, tunnel.as_ref(), &stream);
                                return;
                            }
                        }
                    }
                };
                tunnel.handle(current, stream, peer, state).await;
                drop(conn_slot);
            }
            .instrument(span),
        );
    }
}

/// How long a connection accepted at `max_connections` waits for the slot of the connection it
/// evicted (that one closes at once; this only bounds a race with other new connections).
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// Drops a connection at `max_connections`, with a warning at most every few seconds.
fn over_limit<T: Tunnel>(state: &TunnelState, tunnel: &T, stream: &Conn) {
    state.counters.over_limit.fetch_add(1, Ordering::Relaxed);
    if let Some(held_back) = state.limit_log.check(Instant::now()) {
        let shared = tunnel.shared();
        tracing::warn!(
            tunnel = tunnel.name(),
            role = %tunnel.role(),
            max_connections = shared.max_connections,
            dropped_since_last_warning = held_back,
            "connection limit reached, dropping new connections"
        );
    }
    stream.reset_on_close();
}

/// The line logged when a handshake fails.
pub(crate) fn log_refusal(tunnel: &str, role: Role, peer: impl Display, err: &SessionError) {
    use HandshakeError as H;
    match err {
        // Scanners, junk and slow senders before mac1: nothing an operator must act on, and a
        // flood of them must not flood the log (they are counted instead).
        SessionError::Handshake(H::BadMac1 | H::Message(_))
        | SessionError::Replay
        | SessionError::SourceLimited
        | SessionError::Overloaded
        | SessionError::Evicted
        | SessionError::Eof
        | SessionError::Unanswered
        | SessionError::Timeout(_)
        | SessionError::Io(_)
            if role == Role::Listener =>
        {
            tracing::debug!(tunnel = %tunnel, role = %role, %peer, reason = %err, "handshake refused")
        }
        SessionError::Handshake(H::UntrustedConnector(fp, _)) => tracing::warn!(
            tunnel = %tunnel,
            role = %role,
            %peer,
            fingerprint = %fp,
            "handshake refused: connector key {fp} is not trusted (add it to `peers` to let it in); \
             the connector was told"
        ),
        SessionError::Handshake(H::ServiceMismatch {
            fingerprint,
            asked,
            served,
            ..
        }) => tracing::warn!(
            tunnel = %tunnel,
            role = %role,
            %peer,
            fingerprint = %fingerprint,
            "handshake refused: connector key {fingerprint} asked for service {asked:?}, this \
             listener serves {served:?} (a connection meant for another listener?); the connector \
             was told"
        ),
        _ => {
            tracing::warn!(tunnel = %tunnel, role = %role, %peer, reason = %err, "handshake failed")
        }
    }
}
