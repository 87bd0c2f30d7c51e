//! What the accept loop, the connections and the metrics of one tunnel share: gauges,
//! counters, the handshake histogram and the resumption ticket stores. Survives reloads.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::proto::handshake::{ConnectorEphemerals, Established};
use crate::proto::identity::Fingerprint;
use crate::proto::resume::{ConnectorTickets, TicketPolicy, TicketStore};
use crate::tunnel::handshake::SessionError;
use crate::tunnel::limits::{
    Gauge, LogLimiter, ReplayCache, Slot, SourceLimiter, REPLAY_CAPACITY, REPLAY_MAX_AGE,
};
use crate::tunnel::pump::{PumpStats, Traffic};
use crate::tunnel::settings::SharedSettings;
use crate::tunnel::signing::SigningPool;

/// Upper bounds of the handshake duration histogram, in seconds (0.1 ms to 10 s).
pub(crate) const HANDSHAKE_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// A fixed-bucket histogram of durations, updated with atomics.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); past the last bound, only `count` grows.
    pub(crate) buckets: [AtomicU64; HANDSHAKE_BUCKETS.len()],
    pub(crate) count: AtomicU64,
    pub(crate) sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = HANDSHAKE_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    #[cfg(any(test, feature = "testing"))]
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

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
    /// Listener: RSA signatures made for full handshakes (inline or by the signing threads,
    /// which hold it too).
    pub signatures: Arc<AtomicU64>,
    /// Client streams carried (one per client connection; several per session with reuse).
    pub streams: AtomicU64,
    /// Streams carried by a session that had carried another stream before (reuse).
    pub streams_reused: AtomicU64,
    /// Connector: clients served by a warm session from the pool (no handshake on their path).
    pub pool_hits: AtomicU64,
    /// Connector: clients that found the pool empty and waited for a handshake of their own.
    pub pool_misses: AtomicU64,
    /// Connector: sessions the listener refused after authenticating this connector (its
    /// Alert): this connector's key is not in its peers.
    pub refused_untrusted: AtomicU64,
    /// Connector: as `refused_untrusted`, for a `service` the listener does not serve.
    pub refused_service: AtomicU64,
}

/// What the accept loop and the connections of one tunnel share.
#[derive(Debug)]
pub struct TunnelState {
    /// Handshakes in progress.
    pub handshakes: Arc<Gauge>,
    /// Connections open (handshaking or established).
    pub connections: Arc<Gauge>,
    /// Listener: connections whose handshake answer is sent and that wait for the connector's
    /// ConnectorAuth or ResumeFinished (holding no handshake slot; at most `max_connections`).
    pub awaiting_auth: Arc<Gauge>,
    /// Listener: hello ephemerals seen, so that a replayed hello gets no answer.
    pub(crate) replays: ReplayCache,
    /// Listener: hellos waiting for a signature, the signature budget and the signing threads.
    pub(crate) signing: Arc<SigningPool>,
    /// Listener: full handshakes per source (`source_handshake_rate`).
    pub handshake_sources: SourceLimiter,
    /// Counters.
    pub counters: Counters,
    /// New connections per source address.
    pub sources: SourceLimiter,
    /// Plaintext bytes and rekeys of all connections, added to as records go.
    pub traffic: Arc<Traffic>,
    /// Failed handshakes by reason (the `reason` of each `SessionError`).
    pub failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Time from accept to an established session, of successful handshakes.
    pub handshake_seconds: Histogram,
    /// Listener: the resumption tickets issued (kept across reloads, memory only).
    pub tickets: Arc<Mutex<TicketStore>>,
    /// Established connections (client streams), for `status` and for cuts at reload.
    pub(crate) open: OpenConns,
    /// Listener: established sessions, for the whole of their life (streams and the idle time
    /// between them): a reload that stops trusting a key refuses their next stream
    /// ([`OpenConns::refuse_next_unless`]). Not shown by `status`.
    pub(crate) sessions: OpenConns,
    /// Every live sealed session, at both ends, with its state: for `status` and the metrics.
    pub(crate) live: Arc<crate::tunnel::sessions::Sessions>,
    /// Connector: warm sessions waiting for a client (PROTOCOL.md §4.3).
    pub(crate) pool: crate::tunnel::pool::Pool,
    /// Connector: the current resumption ticket (kept across reloads, memory only).
    pub connector_tickets: Arc<Mutex<ConnectorTickets>>,
    /// Connector: the ephemerals of the next hello, made while the previous handshake waited
    /// for the listener's answer (`tunnel::connector`).
    pub(crate) spare_ephemerals: Mutex<Option<ConnectorEphemerals>>,
    pub(crate) limit_log: LogLimiter,
    pub(crate) rate_log: LogLimiter,
    pub(crate) mac1_log: LogLimiter,
    pub(crate) overload_log: LogLimiter,
    /// Listener: its connections without a valid hello yet (per-source cap, eviction of the
    /// oldest at `max_connections`).
    pub(crate) pre_auth: Arc<crate::tunnel::pre_auth::PreAuth>,
    /// Listener: its sessions that have not carried a stream yet (per-key share, eviction of
    /// the oldest at `max_connections` after the connections without a valid hello).
    pub(crate) silent: Arc<crate::tunnel::pre_auth::Silent>,
}

impl TunnelState {
    /// Waits (holding nothing but the caller's socket) for one of `max_handshakes` slots, until
    /// `deadline`. Past `max_handshakes` connections queue instead of being dropped; only
    /// `max_connections` drops.
    pub async fn handshake_slot(
        &self,
        shared: &SharedSettings,
        deadline: tokio::time::Instant,
    ) -> Option<Slot> {
        tokio::time::timeout_at(deadline, self.handshakes.acquire(shared.max_handshakes))
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

    /// Connector: the listener authenticated this connector and refused it at `now` (an Alert
    /// record in answer to its handshake: key not trusted, another `service`; counted by
    /// `tunnel::carry` in `refused_untrusted` and `refused_service`, beside `handshakes ok`,
    /// which counts the handshakes completed on this side and, being a counter, never goes
    /// down). The pool stops its refills ([`crate::tunnel::pool::Pool::refused`]). Other alerts
    /// are not refusals of the handshake.
    pub(crate) fn refused_by_listener(&self, alert: &crate::proto::record::Alert, now: Instant) {
        use crate::proto::record::AlertCode;
        if matches!(
            alert.code(),
            AlertCode::Untrusted | AlertCode::ServiceMismatch
        ) {
            self.pool.refused(now);
        }
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
            awaiting_auth: Arc::default(),
            replays: ReplayCache::new(REPLAY_CAPACITY, REPLAY_MAX_AGE),
            signing: Arc::default(),
            handshake_sources: SourceLimiter::default(),
            counters: Counters::default(),
            sources: SourceLimiter::default(),
            traffic: Arc::default(),
            failures: Mutex::default(),
            handshake_seconds: Histogram::default(),
            tickets: Arc::default(),
            connector_tickets: Arc::default(),
            spare_ephemerals: Mutex::default(),
            open: OpenConns::default(),
            sessions: OpenConns::default(),
            live: Arc::default(),
            pool: crate::tunnel::pool::Pool::default(),
            limit_log: LogLimiter::new(Duration::from_secs(10)),
            rate_log: LogLimiter::new(Duration::from_secs(10)),
            mac1_log: LogLimiter::new(Duration::from_secs(10)),
            overload_log: LogLimiter::new(Duration::from_secs(10)),
            pre_auth: Arc::default(),
            silent: Arc::default(),
        }
    }
}

/// The resumption ticket policy of these settings.
pub(crate) fn ticket_policy(shared: &SharedSettings) -> TicketPolicy {
    TicketPolicy {
        lifetime: shared.resumption_lifetime,
        uses: shared.resumption_uses,
    }
}

/// Counts how a completed handshake went: resumed, or full after a refused ticket
/// ([`TunnelState::handshake_ok`] counts it as completed).
pub(crate) fn count_resumption(state: &TunnelState, est: &Established) {
    if est.resumed {
        state.counters.resumed.fetch_add(1, Ordering::Relaxed);
    } else if est.ticket_refused.is_some() {
        state
            .counters
            .resumption_fallbacks
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// One established connection: what `status` shows of it, and the handle a reload cuts it by.
#[derive(Debug)]
pub(crate) struct OpenConn {
    /// The peer, as logged (an address, or a Unix client).
    pub(crate) peer: String,
    /// The other side's key.
    pub(crate) fingerprint: Fingerprint,
    /// When the connection was accepted.
    pub(crate) opened: Instant,
    /// Whether its handshake was a resumption.
    pub(crate) resumed: bool,
    /// Bytes and rekeys so far, updated live by the pump.
    pub(crate) stats: Arc<PumpStats>,
    /// Cancelled to cut it (an entry of a tunnel's open streams, `TunnelState::open`) or to
    /// refuse its next stream (an entry of its sessions, `TunnelState::sessions`): each table
    /// uses it for one of the two, so one token serves both (memory per idle connection).
    signal: CancellationToken,
}

impl OpenConn {
    /// A connection to register with [`OpenConns::register`].
    pub(crate) fn new(
        peer: String,
        fingerprint: Fingerprint,
        opened: Instant,
        resumed: bool,
        stats: Arc<PumpStats>,
    ) -> Self {
        OpenConn {
            peer,
            fingerprint,
            opened,
            resumed,
            stats,
            signal: CancellationToken::new(),
        }
    }

    /// Resolves once the connection has been cut ([`OpenConns::cut_unless`]).
    pub(crate) async fn cut(&self) {
        self.signal.cancelled().await
    }

    /// Resolves once a reload has refused this session's next stream
    /// ([`OpenConns::refuse_next_unless`]).
    pub(crate) async fn next_refused(&self) {
        self.signal.cancelled().await
    }

    /// True once a reload has refused this session's next stream.
    pub(crate) fn no_next(&self) -> bool {
        self.signal.is_cancelled()
    }
}

/// The established connections of one tunnel, by an id of their own.
#[derive(Debug, Default)]
pub(crate) struct OpenConns {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Arc<OpenConn>>>,
    /// Set by [`OpenConns::close`]: every session registered from then on carries no next
    /// stream either.
    closed: std::sync::atomic::AtomicBool,
}

/// A connection's entry in [`OpenConns`], removed when this is dropped.
#[derive(Debug)]
pub(crate) struct Registered<'a> {
    table: &'a OpenConns,
    id: u64,
    /// The entry.
    pub(crate) conn: Arc<OpenConn>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.table.lock().remove(&self.id);
    }
}

impl OpenConns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<OpenConn>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `conn` for as long as the returned entry lives.
    pub(crate) fn register(&self, conn: OpenConn) -> Registered<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(conn);
        let mut map = self.lock();
        // Read under the lock that `close` sweeps under: a session is either swept or sees it.
        if self.closed.load(Ordering::Relaxed) {
            conn.signal.cancel();
        }
        map.insert(id, conn.clone());
        drop(map);
        Registered {
            table: self,
            id,
            conn,
        }
    }

    /// The connections open now, oldest first.
    pub(crate) fn list(&self) -> Vec<Arc<OpenConn>> {
        let mut v: Vec<_> = self.lock().iter().map(|(id, c)| (*id, c.clone())).collect();
        v.sort_by_key(|(id, _)| *id);
        v.into_iter().map(|(_, c)| c).collect()
    }

    /// Refuses the next stream of every session whose key `keep` refuses (an idle one ends at
    /// once, a busy one after its stream); returns how many.
    pub(crate) fn refuse_next_unless(&self, keep: impl Fn(&Fingerprint) -> bool) -> usize {
        let map = self.lock();
        let mut n = 0;
        for c in map.values().filter(|c| !keep(&c.fingerprint)) {
            if !c.signal.is_cancelled() {
                c.signal.cancel();
                n += 1;
            }
        }
        n
    }

    /// Shutdown: refuses the next stream of every session, open now or registered later (a
    /// handshake that was in flight at the stop carries no stream either).
    pub(crate) fn close(&self) {
        let map = self.lock();
        self.closed.store(true, Ordering::Relaxed);
        drop(map);
        self.refuse_next_unless(|_| false);
    }

    /// True once [`OpenConns::close`] ran (shutdown).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Cuts every open connection whose key `keep` refuses (each is then reset and logged by
    /// its own task); returns how many were cut.
    pub(crate) fn cut_unless(&self, keep: impl Fn(&Fingerprint) -> bool) -> usize {
        let map = self.lock();
        let mut n = 0;
        for c in map.values().filter(|c| !keep(&c.fingerprint)) {
            if !c.signal.is_cancelled() {
                c.signal.cancel();
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(byte: u8) -> OpenConn {
        OpenConn::new(
            "test".into(),
            Fingerprint([byte; 32]),
            Instant::now(),
            false,
            Arc::default(),
        )
    }

    #[test]
    fn close_refuses_the_next_stream_of_sessions_open_and_registered_later() {
        let conns = OpenConns::default();
        let before = conns.register(conn(1));
        let kept = conns.register(conn(2));
        // A reload's sweep refuses only the keys it names, and only the sessions present.
        assert_eq!(conns.refuse_next_unless(|fp| fp.0[0] == 2), 1);
        assert!(before.conn.no_next() && !kept.conn.no_next());
        let late_reload = conns.register(conn(1));
        assert!(!late_reload.conn.no_next());
        // A shutdown refuses every session, those whose handshake ends after it included.
        conns.close();
        assert!(kept.conn.no_next() && late_reload.conn.no_next());
        let after = conns.register(conn(2));
        assert!(after.conn.no_next());
    }
}
