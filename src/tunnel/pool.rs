//! Warm sessions of a connector tunnel: established sessions waiting for a client
//! (PROTOCOL.md §4.3, README "Warm sessions").
//!
//! A client that finds a session here sends its StreamInfo record and first bytes at once: no
//! TCP connect, no handshake round trip. Sessions come from two places: background refills (a
//! handshake made ahead of need, resumed when a ticket allows) and streams that ended cleanly
//! in both directions (reuse). The pool keeps at least `pool_min` and at most `pool_max`
//! sessions; between them its target follows demand: each client that finds it empty raises the
//! target by one, each quiet sweep lowers it by one.
//!
//! A session is never handed out when it is past [`POOL_IDLE`] in the pool (the listener closes
//! idle sessions after [`crate::tunnel::listener::SESSION_IDLE`], well after), past its stream or
//! age bound, made for another `connect` address, of a key the current settings no longer pin, or
//! dead: a pooled socket must have nothing to read (the listener sends nothing between
//! streams), so an end of stream, a reset or any byte means the session is discarded.

use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::proto::identity::Fingerprint;
use crate::tunnel::session::Records;

/// Longest a session waits in the pool; then it is closed (before the listener's bound).
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(60);
/// How often the pool is swept (expired and dead sessions closed, the target adapted, refills
/// started).
pub(crate) const SWEEP: Duration = Duration::from_secs(5);
/// After a failed refill, no other refill starts for this long (a listener that is down is not
/// hammered; clients still try their own handshake).
pub(crate) const REFILL_BACKOFF: Duration = Duration::from_secs(10);
/// The pool keeps `pool_min` sessions warm only while clients came within this long.
pub(crate) const KEEP_WARM: Duration = Duration::from_secs(600);

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
    /// With several `peer` pins, which one the listener's key matched (1-based).
    pub(crate) pin: Option<usize>,
}

struct Idle {
    session: Session,
    since: Instant,
}

#[derive(Default)]
struct Inner {
    /// Most recently added last.
    idle: VecDeque<Idle>,
    /// Refill handshakes in progress.
    refilling: usize,
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

/// True if `sealed` has nothing to read and no error: still open, with nothing unexpected sent.
fn alive(sealed: &TcpStream) -> bool {
    let mut probe = [MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(sealed).peek(&mut probe) {
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        // An end of stream (listener gone), or a byte the listener must not send between streams.
        Ok(_) => false,
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

    /// A usable session for a new client, the most recently added first; every unusable one met
    /// on the way is closed. `usable` checks the key and bounds against the current settings.
    pub(crate) fn take(&self, connect: &str, usable: impl Fn(&Session) -> bool) -> Option<Session> {
        let mut closed = Vec::new();
        let mut inner = self.lock();
        inner.last_client = Some(Instant::now());
        let found = loop {
            let Some(idle) = inner.idle.pop_back() else {
                inner.misses += 1;
                inner.missed_recently = true;
                break None;
            };
            let s = &idle.session;
            if idle.since.elapsed() < POOL_IDLE
                && s.connect == connect
                && usable(s)
                && alive(&s.sealed)
            {
                break Some(idle.session);
            }
            closed.push(idle.session);
        };
        drop(inner);
        drop(closed);
        found
    }

    /// Puts `session` back (or in for the first time); false (and the session closed) when the
    /// pool already holds `max`.
    pub(crate) fn put(&self, session: Session, max: usize) -> bool {
        let mut inner = self.lock();
        if inner.closed || inner.idle.len() >= max || !session.leftover.is_empty() {
            return false;
        }
        inner.idle.push_back(Idle {
            session,
            since: Instant::now(),
        });
        true
    }

    /// Closes every waiting session whose key `keep` refuses (a reload); returns how many.
    pub(crate) fn retain(&self, keep: impl Fn(&Fingerprint) -> bool) -> usize {
        let mut inner = self.lock();
        let before = inner.idle.len();
        inner.idle.retain(|i| keep(&i.session.records.fingerprint));
        before - inner.idle.len()
    }

    /// Shutdown: closes every waiting session, and every one put in from now on.
    pub(crate) fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        let idle = std::mem::take(&mut inner.idle);
        drop(inner);
        drop(idle);
    }

    /// How many refills to start now for a pool between `min` and `max` (counted as started).
    pub(crate) fn refills_due(&self, min: usize, max: usize) -> usize {
        let mut inner = self.lock();
        if inner.closed || inner.backoff_until.is_some_and(|t| Instant::now() < t) {
            return 0;
        }
        let min = if inner.last_client.is_some_and(|t| t.elapsed() < KEEP_WARM) {
            min.min(max)
        } else {
            0
        };
        inner.target = inner.target.clamp(min, max.max(min));
        let misses = std::mem::take(&mut inner.misses);
        inner.target = (inner.target + misses).min(max);
        let have = inner.idle.len() + inner.refilling;
        let n = inner.target.saturating_sub(have);
        inner.refilling += n;
        n
    }

    /// A refill ended: with a session for the pool, or failed.
    pub(crate) fn refilled(&self, ok: bool) {
        let mut inner = self.lock();
        inner.refilling = inner.refilling.saturating_sub(1);
        if !ok {
            inner.backoff_until = Some(Instant::now() + REFILL_BACKOFF);
        }
    }

    /// Claims the sweeper role; false if a sweeper already runs.
    pub(crate) fn start_sweeping(&self) -> bool {
        !std::mem::replace(&mut self.lock().sweeping, true)
    }

    /// One sweep: closes expired and dead sessions and lowers the target after a quiet period.
    /// Returns false (and gives up the sweeper role) when there is nothing left to look after.
    pub(crate) fn sweep(&self, min: usize) -> bool {
        let mut inner = self.lock();
        let keep: VecDeque<Idle> = std::mem::take(&mut inner.idle)
            .into_iter()
            .filter(|i| i.since.elapsed() < POOL_IDLE && alive(&i.session.sealed))
            .collect();
        inner.idle = keep;
        if !inner.missed_recently && inner.target > min {
            inner.target -= 1;
        }
        inner.missed_recently = false;
        let warm = inner.last_client.is_some_and(|t| t.elapsed() < KEEP_WARM);
        let busy = !inner.idle.is_empty() || inner.refilling > 0 || warm;
        if !busy {
            inner.sweeping = false;
        }
        busy
    }

    /// Gives up the sweeper role (its tunnel settings were replaced).
    pub(crate) fn stop_sweeping(&self) {
        self.lock().sweeping = false;
    }
}
