//! Warm sessions of a connector tunnel: established sessions waiting for a client
//! (PROTOCOL.md §4.3; docs/operations.md, "Session resumption").
//!
//! A client that finds a session here sends its StreamInfo record and first bytes at once: no
//! TCP connect, no handshake round trip. Sessions come from two places: background refills (a
//! handshake made ahead of need, resumed when a ticket allows) and streams that ended cleanly
//! in both directions (reuse). The pool keeps at least `pool_min` and at most `pool_max`
//! sessions; between them its target follows demand: each client that finds it empty raises the
//! target by one, each quiet sweep lowers it by one.
//!
//! A client that finds the pool empty waits for the first session that becomes free, rather
//! than for a handshake of its own: it makes sure one more handshake is under way than clients
//! wait (a refill started for it), and takes whichever comes first, that refill or a session
//! another client's stream gives back (one round trip away, where a handshake is two). In a
//! burst, every client thus costs at most one handshake, not its own and a refill besides.
//!
//! A session is never handed out when it is past [`POOL_IDLE`] in the pool (the listener closes
//! idle sessions after [`crate::tunnel::listener::SESSION_IDLE`], well after), past its stream or
//! age bound, made for another `connect` address or under other terms than those in force
//! (`tunnel::terms`), of a key the current settings no longer pin (with TOFU: no longer the
//! one `known_peers` records), or dead. Pooled sessions have no task (memory per idle
//! connection): the sweep, and `take` before it hands one out, read what each socket has without
//! blocking. Between streams the listener sends nothing but keepalives (PROTOCOL.md §4.4): a
//! Ping is answered with a Pong at once, a Pong is "heard"; anything else (another record, an
//! end of stream, a reset) discards the session — except the listener's refusal of a refill's
//! session, below. The sweep sends a Ping to a session not heard from for half the
//! `dead_peer_timeout` and discards one not heard from for all of it; `take` hands out only a
//! session heard from within half of it (plus one sweep interval, [`sweep_every`]).
//!
//! Until the listener has accepted a stream of this connector (at start, after a reload, after
//! a refusal), the pool is *unproven*: at most one refill runs at a time, and clients beyond it
//! make their own handshake. A connector the listener refuses thus costs one refused handshake
//! per client, not a burst of refills; and the refills after the first resume from the ticket
//! its handshake gave, rather than all being full handshakes made at once without a ticket.
//!
//! An authenticated refusal (the listener's Alert: this connector's key is not trusted, or
//! another `service`) stops refills: [`Pool::refused`] closes the idle sessions (made under the
//! same terms, the listener refuses them too), and until a backoff ends ([`refusal_backoff`],
//! doubling with each refusal in a row, capped), a reload ([`Pool::reloaded`]) or a stream the
//! listener accepted ([`Pool::accepted`]), nothing is put in and no refill starts: each client
//! makes one handshake of its own, and learns the listener's answer itself.
//!
//! A refill's session is put in as soon as the connector's side of its handshake is done; the
//! listener's refusal comes after, as the session's first record, while it waits here. It is
//! read from the session when a client or a sweep finds it ([`Refusal`]): the pool is refused
//! as above, and the refusal goes to the next client ([`Take::Refused`], once) instead of a
//! session, so that the client's log line says why, without a handshake of its own.
//!
//! The rules that depend on time take it as a parameter (`now`), so that they are tested by
//! stepping it; the connector passes the time of the call.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::proto::identity::Fingerprint;
use crate::proto::record::{
    parse_header, Alert, AlertCode, Opened, RecordType, HEADER_LEN, MAX_ALERT_DETAIL, OVERHEAD,
};
use crate::proto::{Liveness, LivenessAction};
use crate::tunnel::handshake::Records;

/// Longest a session waits in the pool; then it is closed (before the listener's bound).
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(60);
/// How often the pool is swept (expired and dead sessions closed, the target adapted, refills
/// started), at most; more often with a short `dead_peer_timeout` ([`sweep_every`]).
pub(crate) const SWEEP: Duration = Duration::from_secs(5);

/// How often the pool is swept with this `dead_peer_timeout`: every [`SWEEP`], or a quarter of
/// the timeout if that is shorter, so that a Ping from the listener is answered well within
/// the half timeout it waits (PROTOCOL.md §4.4).
pub(crate) fn sweep_every(dead_peer_timeout: Option<Duration>) -> Duration {
    dead_peer_timeout
        .map_or(SWEEP, |t| (t / 4).min(SWEEP))
        .max(Duration::from_millis(10))
}
/// After a failed refill, no other refill starts for this long (a listener that is down is not
/// hammered; clients still try their own handshake).
pub(crate) const REFILL_BACKOFF: Duration = Duration::from_secs(10);
/// The first refusal backoff ([`refusal_backoff`]).
pub(crate) const REFUSAL_BACKOFF_FIRST: Duration = Duration::from_secs(5);
/// The longest refusal backoff.
pub(crate) const REFUSAL_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// How long refills stop after the `n`th authenticated refusal in a row (n >= 1):
/// [`REFUSAL_BACKOFF_FIRST`], doubled with each refusal, at most [`REFUSAL_BACKOFF_MAX`].
pub(crate) fn refusal_backoff(n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(16);
    REFUSAL_BACKOFF_FIRST
        .saturating_mul(1 << doublings)
        .min(REFUSAL_BACKOFF_MAX)
}

/// The pool keeps `pool_min` sessions warm only while clients came within this long.
pub(crate) const KEEP_WARM: Duration = Duration::from_secs(600);

/// What [`Pool::take_or_wait`] found for a client. Matched at once, never held across an await
/// (the session is moved out of it), so its size costs nothing per connection.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Take {
    /// A warm session.
    Session(Session),
    /// None now: the next session put in comes here (`None`: make a handshake of its own).
    Wait(oneshot::Receiver<Option<Session>>),
    /// None, and none expected: make a handshake of its own.
    Miss,
    /// The listener refused a session made for the pool: this client is refused with its
    /// reason, without a handshake of its own.
    Refused(Box<Refusal>),
}

/// The listener's refusal of this connector (an Alert of code 1 or 2), read from a session
/// made by a refill while it waited in the pool.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    /// The Alert.
    pub(crate) alert: Alert,
    /// The refused session's id (`session=` on its log lines).
    pub(crate) session: u64,
    /// The listener's address, as connected to.
    pub(crate) peer: String,
    /// The key the listener proved.
    pub(crate) fingerprint: Fingerprint,
    /// Already logged and counted (by the sweep that found it).
    pub(crate) reported: bool,
}

/// The largest Alert record: header, code, length, detail, tag.
const MAX_ALERT_RECORD: usize = OVERHEAD + 2 + MAX_ALERT_DETAIL;

/// The listener's refusal waiting on `session`, whose next record (begun in `leftover`) is not
/// a keepalive: an Alert of code 1 or 2 as the session's first record, read without blocking
/// and authenticated. `None` for anything else (the session is discarded).
fn refusal_of(session: &mut Session) -> Option<Refusal> {
    if session.streams > 0 {
        return None;
    }
    let mut buf = [0u8; MAX_ALERT_RECORD];
    let have = session.leftover.len();
    buf.get_mut(..have)?.copy_from_slice(&session.leftover);
    // The session is discarded: what is read is the listener's last word.
    let n = have + session.sealed.try_read(&mut buf[have..]).unwrap_or(0);
    let header: [u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
    let (kind, total) = parse_header(&header).ok()?;
    if kind != RecordType::Alert || total > n {
        return None;
    }
    let Ok(Opened::Alert(alert)) = session.records.opener.open(&mut buf[..total]) else {
        return None;
    };
    matches!(
        alert.code(),
        AlertCode::Untrusted | AlertCode::ServiceMismatch
    )
    .then(|| Refusal {
        alert,
        session: session.records.session_id(),
        peer: session.peer().to_string(),
        fingerprint: session.records.fingerprint,
        reported: false,
    })
}

/// An established session of a connector, between streams or before its first.
pub(crate) struct Session {
    /// The sealed socket to the listener.
    pub(crate) sealed: TcpStream,
    /// Its record layer.
    pub(crate) records: Records,
    /// Bytes read after the handshake or the last stream (always empty for a pooled session).
    pub(crate) leftover: Vec<u8>,
    /// Whether its handshake was a resumption.
    pub(crate) resumed: bool,
    /// When its handshake completed.
    pub(crate) born: Instant,
    /// Streams carried so far.
    pub(crate) streams: u64,
    /// The `connect` address it was made for (a reload may change it).
    pub(crate) connect: String,
    /// The connector's terms it was made under (`tunnel::terms`): it carries a new client only
    /// while they are those of the settings in force.
    pub(crate) terms: crate::tunnel::terms::Terms,
    /// With several `peer` pins, which one the listener's key matched (1-based).
    pub(crate) pin: Option<usize>,
    /// The `dead_peer_timeout` it was made under (PROTOCOL.md §4.4); `None`: no keepalive.
    pub(crate) keepalive: Option<Duration>,
}

impl Session {
    /// The listener's address, as connected to.
    pub(crate) fn peer(&self) -> &str {
        self.records
            .session
            .as_ref()
            .map_or("", |s| s.entry.peer.as_str())
    }

    /// Whether this session may carry another stream at `now`: fewer than `max_streams` so far
    /// (`session_reuse_streams`) and younger than `max_age` (`session_reuse_age`).
    pub(crate) fn within_bounds(&self, max_streams: u32, max_age: Duration, now: Instant) -> bool {
        self.streams < u64::from(max_streams) && now.saturating_duration_since(self.born) < max_age
    }
}

struct Idle {
    session: Session,
    since: Instant,
    /// When the listener was last heard from, and whether a Ping is out (no keepalive: `None`).
    live: Option<Liveness>,
}

impl Idle {
    /// `session` put in at `now`; its listener last heard from when its record layer says.
    fn new(session: Session, now: Instant) -> Self {
        let heard = session.records.session.as_ref().map_or(now, |g| {
            now.checked_sub(g.entry.traffic.last_heard(Instant::now()))
                .unwrap_or(now)
        });
        let live = session.keepalive.map(|t| Liveness::new(t, heard));
        Idle {
            session,
            since: now,
            live,
        }
    }

    /// Whether it has waited less than [`POOL_IDLE`] at `now`.
    fn fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) < POOL_IDLE
    }

    /// Whether it may go to a client at `now`: heard from within half the `dead_peer_timeout`
    /// and one sweep interval (PROTOCOL.md §4.4).
    fn heard_lately(&self, now: Instant) -> bool {
        self.live.as_ref().is_none_or(|l| {
            let t = self.session.keepalive.unwrap_or(Duration::ZERO);
            l.heard_within(t / 2 + sweep_every(Some(t)), now)
        })
    }

    /// Reads what the socket has without blocking and applies the liveness rule at `now`:
    /// Pings answered, Pongs heard, a Ping sent when one is due. False if the session is dead
    /// or broken: an end of stream, an error, a record other than a keepalive, a keepalive
    /// that does not open, a Pong that cannot be written whole, a peer silent for the whole
    /// `dead_peer_timeout`. A record other than a keepalive may be the listener's refusal
    /// ([`refusal_of`]).
    fn service(&mut self, now: Instant) -> Serviced {
        if self.serve(now) {
            return Serviced::Live;
        }
        match refusal_of(&mut self.session) {
            Some(r) => Serviced::Refused(Box::new(r)),
            None => Serviced::Dead,
        }
    }

    /// [`Idle::service`] without the refusal: true while the session lives.
    fn serve(&mut self, now: Instant) -> bool {
        let s = &mut self.session;
        // `leftover` holds at most one partial keepalive between calls (or what followed the
        // listener's close record, at `put`).
        loop {
            if s.leftover.len() < OVERHEAD {
                let mut chunk = [0u8; OVERHEAD];
                let want = OVERHEAD - s.leftover.len();
                match s.sealed.try_read(&mut chunk[..want]) {
                    Ok(0) => return false,
                    Ok(n) => s.leftover.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return false,
                }
            }
            let Some(header) = s.leftover.first_chunk::<HEADER_LEN>() else {
                break;
            };
            match parse_header(header) {
                Ok((kind, OVERHEAD)) if kind.is_keepalive() => {}
                _ => return false,
            }
            let Some(record) = s.leftover.first_chunk_mut::<OVERHEAD>() else {
                break;
            };
            match s.records.opener.open(record) {
                Ok(Opened::Ping) => {
                    let Ok(pong) = s.records.sealer.seal_pong() else {
                        return false;
                    };
                    if !matches!(s.sealed.try_write(&pong), Ok(OVERHEAD)) {
                        return false;
                    }
                }
                Ok(Opened::Pong) => {}
                _ => return false,
            }
            s.leftover.drain(..OVERHEAD);
            s.records.heard();
            if let Some(l) = self.live.as_mut() {
                l.heard(now);
            }
        }
        if s.leftover.is_empty() {
            // No buffer held while idle.
            s.leftover = Vec::new();
        }
        match self.live.as_mut().map(|l| l.poll(now)) {
            None | Some(LivenessAction::None) => true,
            Some(LivenessAction::SendPing) => match s.records.sealer.seal_ping() {
                Ok(ping) => matches!(s.sealed.try_write(&ping), Ok(OVERHEAD)),
                Err(_) => false,
            },
            Some(LivenessAction::Dead(_)) => false,
        }
    }
}

/// What [`Idle::service`] found.
enum Serviced {
    /// Alive (keepalives answered, a Ping sent if due).
    Live,
    /// Dead or broken: discard it.
    Dead,
    /// The listener refused it (discard it, and the pool is refused).
    Refused(Box<Refusal>),
}

#[derive(Default)]
struct Inner {
    /// Most recently added last.
    idle: VecDeque<Idle>,
    /// Refill handshakes in progress.
    refilling: usize,
    /// Clients waiting for a session, oldest first: each gets the next session put in (`None`
    /// when a refill failed: it then makes its own handshake).
    waiters: VecDeque<oneshot::Sender<Option<Session>>>,
    /// How many sessions the pool aims to hold (between `pool_min` and `pool_max`).
    target: usize,
    /// Clients that found the pool empty, not yet answered by a higher target.
    misses: usize,
    /// A client found the pool empty since the last sweep.
    missed_recently: bool,
    /// A sweeper task runs.
    sweeping: bool,
    /// No refill before this (after a failed one).
    backoff_until: Option<Instant>,
    /// When a client last came.
    last_client: Option<Instant>,
    /// Shutdown ([`Pool::close`]): nothing is put in any more.
    closed: bool,
    /// Cold ([`Pool::refills_due`]): one refill at a time, and clients beyond it make their own
    /// handshake.
    cold: bool,
    /// The listener accepted a stream of this connector since the start, the last reload and
    /// the last refusal ([`Pool::accepted`]).
    proven: bool,
    /// Authenticated refusals in a row ([`Pool::refused`]).
    refusals: u32,
    /// Refused by the listener: no refill, nothing put in, before this.
    refused_until: Option<Instant>,
    /// A refusal read from a pooled session by a sweep, for the next client.
    pending: Option<Refusal>,
    /// When the sweep last adapted the target.
    adapted: Option<Instant>,
}

impl Inner {
    /// Refills are backing off after a failed one, or after a refusal.
    fn backing_off(&self, now: Instant) -> bool {
        self.backoff_until.is_some_and(|t| now < t) || self.refusing(now)
    }

    /// The listener refused this connector, and the refusal backoff runs.
    fn refusing(&self, now: Instant) -> bool {
        self.refused_until.is_some_and(|t| now < t)
    }

    /// A client came within [`KEEP_WARM`]: `pool_min` sessions are kept warm.
    fn warm(&self, now: Instant) -> bool {
        self.last_client
            .is_some_and(|t| now.saturating_duration_since(t) < KEEP_WARM)
    }
}

/// The warm sessions of one connector tunnel (empty for a listener).
#[derive(Default)]
pub(crate) struct Pool {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("idle", &self.len()).finish()
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sessions waiting now.
    pub(crate) fn len(&self) -> usize {
        self.lock().idle.len()
    }

    /// A usable session for a new client at `now`, the most recently added first; every
    /// unusable one met on the way is closed. `usable` checks the key and bounds against the
    /// current settings. `Err`: the listener refused a session made for the pool (found now,
    /// or by a sweep since), which this client is told instead ([`Pool::refused`] is done).
    pub(crate) fn take(
        &self,
        connect: &str,
        usable: impl Fn(&Session) -> bool,
        now: Instant,
    ) -> Result<Option<Session>, Box<Refusal>> {
        let mut closed = Vec::new();
        let mut inner = self.lock();
        inner.last_client = Some(now);
        if let Some(r) = inner.pending.take() {
            return Err(Box::new(r));
        }
        let found = loop {
            let Some(mut idle) = inner.idle.pop_back() else {
                inner.misses += 1;
                inner.missed_recently = true;
                break Ok(None);
            };
            let s = &idle.session;
            if idle.fresh(now) && s.connect == connect && usable(s) {
                match idle.service(now) {
                    Serviced::Live if idle.heard_lately(now) => break Ok(Some(idle.session)),
                    Serviced::Live | Serviced::Dead => {}
                    Serviced::Refused(r) => {
                        closed.push(idle.session);
                        Self::refuse(&mut inner, now);
                        break Err(r);
                    }
                }
            }
            closed.push(idle.session);
        };
        let emptied = (found.is_err()).then(|| Self::drain(&mut inner));
        drop(inner);
        drop(closed);
        if let Some((idle, waiters)) = emptied {
            Self::release(idle, waiters);
        }
        found
    }

    /// As [`Pool::take`]; when no session is there, and refills may start, the client waits
    /// for the next one put in: [`Take::Wait`], counted so that [`Pool::refills_due`] starts
    /// one more refill than clients wait. [`Take::Miss`]: make a handshake of its own (the pool
    /// is closed, or refills are backing off after a failure).
    pub(crate) fn take_or_wait(
        &self,
        connect: &str,
        usable: impl Fn(&Session) -> bool,
        now: Instant,
    ) -> Take {
        match self.take(connect, usable, now) {
            Ok(Some(s)) => return Take::Session(s),
            Ok(None) => {}
            Err(r) => return Take::Refused(r),
        }
        let mut inner = self.lock();
        if inner.closed || inner.backing_off(now) {
            return Take::Miss;
        }
        inner.waiters.retain(|w| !w.is_closed());
        if inner.cold && inner.waiters.len() >= inner.refilling.max(1) {
            // No ticket yet: the one refill that runs is someone else's; a handshake of its
            // own now rather than a wait for it.
            return Take::Miss;
        }
        let (tx, rx) = oneshot::channel();
        inner.waiters.push_back(tx);
        Take::Wait(rx)
    }

    /// Puts `session` back (or in for the first time) at `now`: to the oldest waiting client if
    /// there is one, else among the idle; false (and the session closed) when the pool already
    /// holds `max`.
    /// `session.leftover` may hold keepalives the listener sent after its close record: they
    /// are opened (and a Ping answered) first, and anything else refuses the session.
    pub(crate) fn put(&self, session: Session, max: usize, now: Instant) -> bool {
        let mut idle = Idle::new(session, now);
        match idle.service(now) {
            Serviced::Live => {}
            Serviced::Dead => return false,
            Serviced::Refused(r) => {
                // A refill's session the listener refused before it was put in: as when a
                // sweep finds it, the next client is told.
                let mut inner = self.lock();
                Self::refuse(&mut inner, now);
                inner.pending = Some(*r);
                Self::empty(inner);
                return false;
            }
        }
        let mut session = idle.session;
        let mut inner = self.lock();
        if inner.closed || inner.refusing(now) {
            return false;
        }
        while let Some(w) = inner.waiters.pop_front() {
            match w.send(Some(session)) {
                Ok(()) => return true,
                // That client is gone: the next one.
                Err(Some(back)) => session = back,
                Err(None) => return false,
            }
        }
        if inner.idle.len() >= max {
            return false;
        }
        inner.idle.push_back(Idle::new(session, now));
        true
    }

    /// Closes every waiting session whose key `keep` refuses (a reload); returns how many.
    pub(crate) fn retain(&self, keep: impl Fn(&Fingerprint) -> bool) -> usize {
        let mut inner = self.lock();
        let before = inner.idle.len();
        inner.idle.retain(|i| keep(&i.session.records.fingerprint));
        before - inner.idle.len()
    }

    /// Closes every waiting session that `keep` refuses (a reload that changed the connector's
    /// terms); returns how many.
    pub(crate) fn retire(&self, keep: impl Fn(&Session) -> bool) -> usize {
        let mut inner = self.lock();
        let before = inner.idle.len();
        inner.idle.retain(|i| keep(&i.session));
        before - inner.idle.len()
    }

    /// The listener refused this connector at `now` (an authenticated Alert): the idle
    /// sessions are closed, waiting clients sent to their own handshake, and refills stop for
    /// [`refusal_backoff`] of the refusals in a row. Returns that backoff.
    pub(crate) fn refused(&self, now: Instant) -> Duration {
        let mut inner = self.lock();
        let backoff = Self::refuse(&mut inner, now);
        Self::empty(inner);
        backoff
    }

    /// [`Pool::refused`]'s backoff, without emptying the pool.
    fn refuse(inner: &mut Inner, now: Instant) -> Duration {
        inner.refusals = inner.refusals.saturating_add(1);
        let backoff = refusal_backoff(inner.refusals);
        inner.refused_until = Some(now + backoff);
        inner.proven = false;
        backoff
    }

    /// The listener accepted a stream of this connector: a refusal backoff ends, and the pool
    /// is proven.
    pub(crate) fn accepted(&self) {
        let mut inner = self.lock();
        inner.proven = true;
        inner.cold = false;
        inner.refusals = 0;
        inner.refused_until = None;
        inner.pending = None;
    }

    /// A reload: the refusal backoff ends (the operator may have fixed what the listener
    /// refused), and so does a failed refill's.
    pub(crate) fn reloaded(&self) {
        let mut inner = self.lock();
        inner.proven = false;
        inner.refusals = 0;
        inner.refused_until = None;
        inner.backoff_until = None;
        inner.pending = None;
    }

    /// Shutdown: closes every waiting session, and every one put in from now on; waiting
    /// clients are told to make their own handshake.
    pub(crate) fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        Self::empty(inner);
    }

    /// Closes every waiting session and sends every waiting client to its own handshake, with
    /// the lock released first (closing a session and waking a client need no lock).
    fn empty(mut inner: std::sync::MutexGuard<'_, Inner>) {
        let (idle, waiters) = Self::drain(&mut inner);
        drop(inner);
        Self::release(idle, waiters);
    }

    /// Takes every waiting session and waiting client out, for [`Pool::release`].
    fn drain(inner: &mut Inner) -> (VecDeque<Idle>, VecDeque<oneshot::Sender<Option<Session>>>) {
        (
            std::mem::take(&mut inner.idle),
            std::mem::take(&mut inner.waiters),
        )
    }

    /// Closes `idle` and sends `waiters` to their own handshake (with the lock released).
    fn release(idle: VecDeque<Idle>, waiters: VecDeque<oneshot::Sender<Option<Session>>>) {
        drop(idle);
        for w in waiters {
            let _ = w.send(None);
        }
    }

    /// Whether the listener accepted a stream of this connector since the start, the last
    /// reload and the last refusal.
    pub(crate) fn proven(&self) -> bool {
        self.lock().proven
    }

    /// How many refills to start at `now` for a pool between `min` and `max` (counted as
    /// started). `cold` (the pool is not [`Pool::proven`]): at most one refill runs.
    pub(crate) fn refills_due(&self, min: usize, max: usize, cold: bool, now: Instant) -> usize {
        let mut inner = self.lock();
        inner.cold = cold;
        if inner.closed || inner.backing_off(now) {
            return 0;
        }
        let min = if inner.warm(now) { min.min(max) } else { 0 };
        inner.target = inner.target.clamp(min, max.max(min));
        let misses = std::mem::take(&mut inner.misses);
        inner.target = (inner.target + misses).min(max);
        inner.waiters.retain(|w| !w.is_closed());
        // Waiting clients are served by refills in progress, one each: those refills do not
        // count towards the target (the sessions the next clients will find).
        let want = inner.waiters.len() + inner.target;
        let mut n = want.saturating_sub(inner.idle.len() + inner.refilling);
        if cold {
            n = n.min(1usize.saturating_sub(inner.refilling));
        }
        inner.refilling += n;
        n
    }

    /// A refill ended at `now`: with a session for the pool, or failed. A failure backs refills
    /// off for [`REFILL_BACKOFF`], and tells the oldest waiting client to make its own handshake
    /// (which reports why).
    pub(crate) fn refilled(&self, ok: bool, now: Instant) {
        let mut inner = self.lock();
        inner.refilling = inner.refilling.saturating_sub(1);
        if !ok {
            inner.backoff_until = Some(now + REFILL_BACKOFF);
            while let Some(w) = inner.waiters.pop_front() {
                if w.send(None).is_ok() {
                    break;
                }
            }
        }
    }

    /// Claims the sweeper role; false if a sweeper already runs.
    pub(crate) fn start_sweeping(&self) -> bool {
        !std::mem::replace(&mut self.lock().sweeping, true)
    }

    /// One sweep at `now`: closes expired and dead sessions and lowers the target after a quiet
    /// period. Returns false (and gives up the sweeper role) when there is nothing left to look
    /// after; and the listener's refusal if a dead session holds one (then kept for the next
    /// client, marked reported: the caller logs and counts it).
    pub(crate) fn sweep(&self, min: usize, now: Instant) -> (bool, Option<Refusal>) {
        let mut inner = self.lock();
        let mut refusal = None;
        let mut keep = VecDeque::new();
        for mut i in std::mem::take(&mut inner.idle) {
            if !i.fresh(now) {
                continue;
            }
            match i.service(now) {
                Serviced::Live => keep.push_back(i),
                Serviced::Dead => {}
                Serviced::Refused(r) => {
                    refusal.get_or_insert(*r);
                }
            }
        }
        inner.idle = keep;
        if let Some(r) = &mut refusal {
            r.reported = true;
            inner.pending = Some(r.clone());
            Self::refuse(&mut inner, now);
            let (idle, waiters) = Self::drain(&mut inner);
            drop(inner);
            Self::release(idle, waiters);
            return (true, refusal);
        }
        // The target adapts once per [`SWEEP`], however often the sweep runs.
        if inner
            .adapted
            .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP)
        {
            inner.adapted = Some(now);
            if !inner.missed_recently && inner.target > min {
                inner.target -= 1;
            }
            inner.missed_recently = false;
        }
        let warm = inner.warm(now);
        let busy = !inner.idle.is_empty() || inner.refilling > 0 || warm;
        if !busy {
            inner.sweeping = false;
        }
        (busy, None)
    }

    /// Gives up the sweeper role (its tunnel settings were replaced).
    pub(crate) fn stop_sweeping(&self) {
        self.lock().sweeping = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::key_schedule::Secret;
    use crate::proto::record::{Opener, RecordType, Sealer};

    /// A session over a real (idle) loopback connection.
    async fn session(l: &tokio::net::TcpListener) -> (Session, TcpStream) {
        let s = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (far, _) = l.accept().await.unwrap();
        let key = Secret::from_bytes([3; 32]);
        let session = Session {
            sealed: s,
            records: Records {
                fingerprint: Fingerprint::of_spki(b"test key"),
                sealer: Sealer::new(key.clone(), 1 << 30),
                opener: Opener::new(key),
                session: None,
                resumed: true,
                kex: crate::tunnel::kex::SessionKex::new(
                    crate::proto::handshake::Role::Connector,
                    Instant::now(),
                ),
            },
            leftover: Vec::new(),
            resumed: true,
            born: Instant::now(),
            streams: 0,
            connect: "here".into(),
            terms: Default::default(),
            pin: None,
            keepalive: None,
        };
        (session, far)
    }

    /// The far end of a pooled session refuses it as a listener does: an Alert of `code`,
    /// sealed under `key` (the session's is `[3; 32]`), as its first record.
    async fn refuse(far: &mut TcpStream, key: [u8; 32], code: AlertCode) -> Alert {
        use tokio::io::AsyncWriteExt;
        let detail: &[u8] = match code {
            AlertCode::ServiceMismatch => b"other",
            _ => b"",
        };
        let alert = Alert::new(code, detail);
        let mut sealer = Sealer::new(Secret::from_bytes(key), 1 << 30);
        far.write_all(&sealer.seal_alert(&alert).unwrap())
            .await
            .unwrap();
        // On loopback it is there at once; no timing is asserted.
        tokio::time::sleep(Duration::from_millis(100)).await;
        alert
    }

    #[tokio::test]
    async fn a_refusal_read_from_a_pooled_session_goes_to_the_next_client_once() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let now = Instant::now();
        let (other, _far2) = session(&l).await;
        let (s, mut far) = session(&l).await;
        assert!(pool.put(other, 4, now) && pool.put(s, 4, now));
        let alert = refuse(&mut far, [3; 32], AlertCode::Untrusted).await;
        match pool.take_or_wait("here", |_| true, now) {
            Take::Refused(r) => {
                assert_eq!(r.alert, alert);
                assert!(!r.reported, "the client that found it reports it");
            }
            _ => panic!("the client is told the listener's refusal"),
        }
        assert_eq!(pool.len(), 0, "the other session (same terms) is closed");
        // Once: the next client makes a handshake of its own, and refills back off.
        assert!(matches!(
            pool.take_or_wait("here", |_| true, now),
            Take::Miss
        ));
        assert_eq!(pool.refills_due(0, 4, false, now), 0);
    }

    #[tokio::test]
    async fn a_refusal_found_by_a_sweep_waits_for_the_next_client() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let now = Instant::now();
        let (s, mut far) = session(&l).await;
        assert!(pool.put(s, 4, now));
        let alert = refuse(&mut far, [3; 32], AlertCode::ServiceMismatch).await;
        let (_, found) = pool.sweep(0, now);
        let found = found.expect("the sweep reads the refusal");
        assert!(found.reported && found.alert == alert);
        match pool.take_or_wait("here", |_| true, now) {
            Take::Refused(r) => assert!(r.reported && r.alert == alert, "{r:?}"),
            _ => panic!("the next client is told the refusal the sweep found"),
        }
        assert!(matches!(
            pool.take_or_wait("here", |_| true, now),
            Take::Miss
        ));
    }

    #[tokio::test]
    async fn an_alert_not_sealed_under_the_session_key_is_no_refusal() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let now = Instant::now();
        let (s, mut far) = session(&l).await;
        assert!(pool.put(s, 4, now));
        // Someone on the path, without the session's keys.
        refuse(&mut far, [9; 32], AlertCode::Untrusted).await;
        let Take::Wait(_next) = pool.take_or_wait("here", |_| true, now) else {
            panic!("the session is dropped as dead, the pool not refused");
        };
        assert_eq!(pool.refills_due(0, 4, false, now), 2);
    }

    /// A client's wait for the next session of an empty pool, at `now`.
    fn wait_at(pool: &Pool, now: Instant) -> oneshot::Receiver<Option<Session>> {
        match pool.take_or_wait("here", |_| true, now) {
            Take::Wait(next) => next,
            _ => panic!("an empty pool makes the client wait"),
        }
    }

    /// [`wait_at`] now.
    fn wait(pool: &Pool) -> oneshot::Receiver<Option<Session>> {
        wait_at(pool, Instant::now())
    }

    /// The far end of a pooled session plays the listener: its records sealed under the test
    /// key, and the pool's opened with it.
    fn listener_side() -> (Sealer, Opener) {
        let key = Secret::from_bytes([3; 32]);
        (Sealer::new(key.clone(), 1 << 30), Opener::new(key))
    }

    /// Reads one record the pool wrote to `far`, and opens it.
    async fn read_keepalive(far: &mut TcpStream, opener: &mut Opener) -> RecordType {
        use tokio::io::AsyncReadExt;
        let mut rec = [0u8; OVERHEAD];
        far.read_exact(&mut rec).await.unwrap();
        match opener.open(&mut rec) {
            Ok(Opened::Ping) => RecordType::Ping,
            Ok(Opened::Pong) => RecordType::Pong,
            other => panic!("not a keepalive: {other:?}"),
        }
    }

    /// Lets bytes written on loopback arrive.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn a_pooled_session_answers_pings_and_is_discarded_for_anything_else() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let t0 = Instant::now();
        let t = Duration::from_secs(20);
        let (mut s, mut far) = session(&l).await;
        s.keepalive = Some(t);
        assert!(pool.put(s, 4, t0));
        let (mut lsealer, mut lopener) = listener_side();
        // A Ping, in two pieces across two sweeps: answered with one Pong, and the session
        // kept.
        let ping = lsealer.seal_ping().unwrap();
        far.write_all(&ping[..7]).await.unwrap();
        settle().await;
        assert!(pool.sweep(0, t0 + Duration::from_secs(1)).0);
        assert_eq!(pool.len(), 1, "a partial record waits for the rest");
        far.write_all(&ping[7..]).await.unwrap();
        settle().await;
        pool.sweep(0, t0 + Duration::from_secs(2));
        assert_eq!(pool.len(), 1);
        assert_eq!(
            read_keepalive(&mut far, &mut lopener).await,
            RecordType::Pong
        );
        // An unsolicited Pong: heard, nothing sent.
        far.write_all(&lsealer.seal_pong().unwrap()).await.unwrap();
        settle().await;
        pool.sweep(0, t0 + Duration::from_secs(3));
        assert_eq!(pool.len(), 1);
        // Anything else (here a data record): the session is discarded.
        let mut d = vec![0u8; 1 + OVERHEAD];
        lsealer.seal_data(&mut d).unwrap();
        far.write_all(&d).await.unwrap();
        settle().await;
        pool.sweep(0, t0 + Duration::from_secs(4));
        assert_eq!(
            pool.len(),
            0,
            "a data record between streams kills the session"
        );
        // A forged Ping (it does not authenticate): discarded too.
        let (mut s, mut far) = session(&l).await;
        s.keepalive = Some(t);
        assert!(pool.put(s, 4, t0));
        let mut forged = Sealer::new(Secret::from_bytes([4; 32]), 1 << 30)
            .seal_ping()
            .unwrap();
        forged[0] = RecordType::Ping as u8;
        far.write_all(&forged).await.unwrap();
        settle().await;
        pool.sweep(0, t0 + Duration::from_secs(1));
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test]
    async fn a_silent_pooled_session_is_pinged_then_discarded_and_not_handed_out_meanwhile() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let t0 = Instant::now();
        let t = Duration::from_secs(20);
        let slack = sweep_every(Some(t));
        assert_eq!(slack, SWEEP);
        assert_eq!(
            sweep_every(Some(Duration::from_secs(2))),
            Duration::from_millis(500)
        );
        let (_, mut lopener) = listener_side();
        let (mut s, mut far) = session(&l).await;
        s.keepalive = Some(t);
        assert!(pool.put(s, 4, t0));
        // Nothing until half the timeout; then one Ping.
        pool.sweep(0, t0 + Duration::from_secs(9));
        pool.sweep(0, t0 + Duration::from_secs(10));
        pool.sweep(0, t0 + Duration::from_secs(12));
        assert_eq!(
            read_keepalive(&mut far, &mut lopener).await,
            RecordType::Ping
        );
        settle().await;
        // Heard neither within half the timeout nor a sweep more: not handed out (closed).
        let late = t0 + t / 2 + slack + Duration::from_millis(1);
        assert!(pool.take("here", |_| true, late).unwrap().is_none());
        assert_eq!(pool.len(), 0);
        // Another: its Pong comes, and it serves; one silent for the whole timeout is closed by
        // the sweep.
        let (mut lsealer, mut lopener) = listener_side();
        let (mut s, mut far) = session(&l).await;
        s.keepalive = Some(t);
        assert!(pool.put(s, 4, t0));
        pool.sweep(0, t0 + Duration::from_secs(10));
        assert_eq!(
            read_keepalive(&mut far, &mut lopener).await,
            RecordType::Ping
        );
        far.write_all(&lsealer.seal_pong().unwrap()).await.unwrap();
        settle().await;
        assert!(
            pool.take("here", |_| true, late).unwrap().is_some(),
            "heard again"
        );
        let (mut s, _far) = session(&l).await;
        s.keepalive = Some(t);
        assert!(pool.put(s, 4, t0));
        pool.sweep(0, t0 + Duration::from_secs(10));
        assert_eq!(pool.len(), 1);
        pool.sweep(0, t0 + t);
        assert_eq!(pool.len(), 0, "silent for dead_peer_timeout: discarded");
    }

    #[tokio::test]
    async fn a_client_that_finds_the_pool_empty_gets_the_next_session_put_in() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let now = Instant::now();
        let next = wait(&pool);
        // One refill for the waiting client, on top of the target (1 here, from its miss).
        assert_eq!(pool.refills_due(0, 4, false, now), 2);
        let (s, _far) = session(&l).await;
        assert!(pool.put(s, 4, now));
        pool.refilled(true, now);
        let got = next.await.unwrap().expect("a session, not a failure");
        assert_eq!(got.connect, "here");
        assert_eq!(pool.len(), 0, "handed to the client, not kept idle");
        // The next session put in, with nobody waiting, waits idle for the next client.
        let (s, _far2) = session(&l).await;
        assert!(pool.put(s, 4, now));
        assert!(matches!(
            pool.take_or_wait("here", |_| true, now),
            Take::Session(_)
        ));
    }

    #[tokio::test]
    async fn a_failed_refill_sends_a_waiting_client_to_its_own_handshake() {
        let pool = Pool::default();
        let now = Instant::now();
        let next = wait(&pool);
        assert!(pool.refills_due(0, 4, false, now) >= 1);
        pool.refilled(false, now);
        assert!(next.await.unwrap().is_none(), "told to make its own");
        // Refills now back off: the next client does not wait at all.
        assert!(matches!(
            pool.take_or_wait("here", |_| true, now),
            Take::Miss
        ));
    }

    #[tokio::test]
    async fn a_client_that_gave_up_waiting_is_skipped() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let gone = wait(&pool);
        let next = wait(&pool);
        drop(gone);
        let (s, _far) = session(&l).await;
        assert!(pool.put(s, 4, Instant::now()));
        assert!(
            next.await.unwrap().is_some(),
            "the one still waiting gets it"
        );
        pool.close();
        let Take::Miss = pool.take_or_wait("here", |_| true, Instant::now()) else {
            panic!("a closed pool makes nobody wait");
        };
    }

    #[tokio::test]
    async fn a_session_idle_in_the_pool_for_pool_idle_is_not_handed_out() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let t0 = Instant::now();
        let almost = t0 + POOL_IDLE - Duration::from_millis(1);
        let (s, _far) = session(&l).await;
        assert!(pool.put(s, 4, t0));
        assert!(
            pool.take("here", |_| true, almost).unwrap().is_some(),
            "within POOL_IDLE it serves"
        );
        let (s, _far2) = session(&l).await;
        assert!(pool.put(s, 4, t0));
        assert!(
            pool.take("here", |_| true, t0 + POOL_IDLE)
                .unwrap()
                .is_none(),
            "at POOL_IDLE it is closed, not handed out"
        );
        assert_eq!(pool.len(), 0, "the expired session is gone");
        // The sweep closes it too, at the same bound.
        let (s, _far3) = session(&l).await;
        assert!(pool.put(s, 4, t0));
        pool.sweep(0, almost);
        assert_eq!(pool.len(), 1, "a sweep keeps a session within POOL_IDLE");
        pool.sweep(0, t0 + POOL_IDLE);
        assert_eq!(pool.len(), 0, "a sweep closes a session at POOL_IDLE");
    }

    #[tokio::test]
    async fn a_session_carries_no_new_client_past_its_age_or_stream_bound() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut s, _far) = session(&l).await;
        let age = Duration::from_secs(600);
        let born = s.born;
        assert!(s.within_bounds(2, age, born + age - Duration::from_millis(1)));
        assert!(
            !s.within_bounds(2, age, born + age),
            "as old as session_reuse_age"
        );
        s.streams = 1;
        assert!(s.within_bounds(2, age, born));
        s.streams = 2;
        assert!(
            !s.within_bounds(2, age, born),
            "session_reuse_streams carried"
        );
    }

    #[tokio::test]
    async fn refills_back_off_after_a_failure_then_start_again() {
        let pool = Pool::default();
        let t0 = Instant::now();
        drop(wait_at(&pool, t0));
        assert_eq!(pool.refills_due(0, 4, false, t0), 1, "one for the miss");
        pool.refilled(false, t0);
        let during = t0 + REFILL_BACKOFF - Duration::from_millis(1);
        assert_eq!(pool.refills_due(0, 4, false, during), 0, "backing off");
        assert!(matches!(
            pool.take_or_wait("here", |_| true, during),
            Take::Miss
        ));
        let after = t0 + REFILL_BACKOFF;
        assert!(
            matches!(pool.take_or_wait("here", |_| true, after), Take::Wait(_)),
            "past REFILL_BACKOFF a client waits for a refill again"
        );
        assert!(
            pool.refills_due(0, 4, false, after) > 0,
            "refills start again"
        );
    }

    #[tokio::test]
    async fn pool_min_is_kept_warm_only_while_clients_came_within_keep_warm() {
        let t0 = Instant::now();
        // A client at t0 finds the pool empty: the target is `pool_min` (2) plus its miss.
        let warm = Pool::default();
        drop(warm.take("here", |_| true, t0));
        assert_eq!(
            warm.refills_due(2, 4, false, t0 + KEEP_WARM - Duration::from_secs(1)),
            3
        );
        // Past KEEP_WARM, `pool_min` no longer counts: just the miss.
        let cold = Pool::default();
        drop(cold.take("here", |_| true, t0));
        assert_eq!(cold.refills_due(2, 4, false, t0 + KEEP_WARM), 1);
    }

    #[test]
    fn the_refusal_backoff_doubles_from_its_first_to_its_cap() {
        assert_eq!(refusal_backoff(1), REFUSAL_BACKOFF_FIRST);
        assert_eq!(refusal_backoff(2), REFUSAL_BACKOFF_FIRST * 2);
        assert_eq!(refusal_backoff(3), REFUSAL_BACKOFF_FIRST * 4);
        assert_eq!(refusal_backoff(1000), REFUSAL_BACKOFF_MAX, "capped");
        assert_eq!(refusal_backoff(u32::MAX), REFUSAL_BACKOFF_MAX);
        let mut last = Duration::ZERO;
        for n in 1..40 {
            assert!(
                refusal_backoff(n) >= last,
                "never shorter for more refusals"
            );
            last = refusal_backoff(n);
        }
    }

    #[tokio::test]
    async fn a_refusal_stops_refills_and_puts_until_its_backoff_ends() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let t0 = Instant::now();
        let (s, _far) = session(&l).await;
        assert!(pool.put(s, 4, t0));
        let waiting = {
            let gone = pool.take("here", |_| true, t0).unwrap();
            assert!(gone.is_some());
            wait_at(&pool, t0)
        };
        let (s, _far2) = session(&l).await;
        pool.lock().idle.push_back(Idle::new(s, t0));
        // The refusal: idle sessions closed, the waiting client sent to its own handshake.
        assert_eq!(pool.refused(t0), REFUSAL_BACKOFF_FIRST);
        assert_eq!(
            pool.len(),
            0,
            "idle sessions of the refused terms are closed"
        );
        assert!(waiting.await.unwrap().is_none(), "told to make its own");
        let during = t0 + REFUSAL_BACKOFF_FIRST - Duration::from_millis(1);
        assert_eq!(
            pool.refills_due(1, 4, false, during),
            0,
            "no refill while refused"
        );
        assert!(
            matches!(pool.take_or_wait("here", |_| true, during), Take::Miss),
            "one handshake of its own per client, no wait"
        );
        let (s, _far3) = session(&l).await;
        assert!(
            !pool.put(s, 4, during),
            "a refill that was in flight is closed"
        );
        // The backoff ends: refills start again.
        let after = t0 + REFUSAL_BACKOFF_FIRST;
        assert!(pool.refills_due(1, 4, false, after) > 0);
        pool.refilled(true, after);
        // A second refusal in a row backs off twice as long.
        assert_eq!(pool.refused(after), REFUSAL_BACKOFF_FIRST * 2);
        let still = after + REFUSAL_BACKOFF_FIRST;
        assert_eq!(pool.refills_due(1, 4, false, still), 0, "doubled");
        // A stream the listener accepted ends it at once, and the count of refusals.
        pool.accepted();
        assert!(pool.refills_due(1, 4, false, still) > 0);
        assert_eq!(pool.refused(still), REFUSAL_BACKOFF_FIRST, "counted anew");
        // So does a reload.
        pool.reloaded();
        assert!(matches!(
            pool.take_or_wait("here", |_| true, still),
            Take::Wait(_)
        ));
        assert!(pool.refills_due(1, 4, false, still) > 0);
    }

    #[tokio::test]
    async fn cold_one_refill_runs_and_other_clients_make_their_own() {
        let pool = Pool::default();
        let t0 = Instant::now();
        let first = wait_at(&pool, t0);
        // Target 2 (pool_min 1 and the miss) and the waiting client: 3, but cold: 1.
        assert_eq!(pool.refills_due(1, 4, true, t0), 1);
        assert_eq!(pool.refills_due(1, 4, true, t0), 0, "one at a time");
        assert!(
            matches!(pool.take_or_wait("here", |_| true, t0), Take::Miss),
            "the running refill is the first client's"
        );
        pool.refilled(true, t0);
        // With a ticket, the rest at once (the waiting client still counts).
        assert_eq!(pool.refills_due(1, 4, false, t0), 4);
        drop(first);
    }

    #[tokio::test]
    async fn sessions_of_other_terms_are_retired() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let now = Instant::now();
        let (old, _far) = session(&l).await;
        let (mut new, _far2) = session(&l).await;
        let terms = crate::tunnel::terms::TermsOf {
            connect: "here",
            service: "s",
            own: Fingerprint([1; 32]),
            pins: &[],
            tofu: None,
            psk: None,
        }
        .digest();
        new.terms = terms;
        assert!(pool.put(old, 4, now) && pool.put(new, 4, now));
        assert_eq!(pool.retire(|s| s.terms == terms), 1);
        let kept = pool
            .take("here", |s| s.terms == terms, now)
            .unwrap()
            .expect("kept");
        assert_eq!(kept.terms, terms);
    }
}
