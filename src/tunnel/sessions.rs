//! The live sealed sessions of one tunnel, at both ends, for `status` and the
//! `sealpipe_sessions` gauges: each with an id (also on its log lines), its state (warm: never
//! carried a stream; idle: between streams; active: carrying one), age, streams carried, key
//! generation, how it was made (resumed or full), when the peer was last heard from, the peer's
//! address and the key it proved.
//!
//! A session is registered once, after its handshake, and removed when its [`SessionGuard`]
//! (held by its record layer, [`crate::tunnel::handshake::Records`]) is dropped: at most one
//! entry per live session, so memory is bounded by what the tunnel holds open anyway. A stream's
//! start and end change only atomics of the entry; the table's locks (one of [`SHARDS`], by id)
//! are taken only when a session begins and ends, and by `status`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::proto::identity::Fingerprint;
use crate::tunnel::pump::SessionTraffic;

/// Locks of the table: sessions of one tunnel that start or end at once rarely meet on one.
const SHARDS: usize = 16;

/// Session ids of this process: unique over all its tunnels, so a log line's `session=` names
/// one session.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A new session id.
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// What a session is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionState {
    /// Established, never carried a stream (a connector's pooled session, on both ends).
    Warm,
    /// Between streams.
    Idle,
    /// Carrying a client stream.
    Active,
}

impl SessionState {
    /// Every state, in the order of the gauges.
    pub(crate) const ALL: [SessionState; 3] =
        [SessionState::Warm, SessionState::Idle, SessionState::Active];

    /// Its name in `status` and in the metrics' `state` label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SessionState::Warm => "warm",
            SessionState::Idle => "idle",
            SessionState::Active => "active",
        }
    }
}

/// One live session.
#[derive(Debug)]
pub(crate) struct SessionEntry {
    /// Its id, as on its log lines (`session=`).
    pub(crate) id: u64,
    /// The peer's address (listener: the connector's; connector: the listener's).
    pub(crate) peer: String,
    /// The key the peer proved (listener: the connector's; connector: the listener's, whose
    /// name in `status` says which of several `peer` pins it is).
    pub(crate) fingerprint: Fingerprint,
    /// Listener with a `next_private_key`: which of its keys the connector's hello was for.
    pub(crate) own_key: Option<Fingerprint>,
    /// Whether its handshake was a resumption.
    pub(crate) resumed: bool,
    /// When it was established.
    pub(crate) born: Instant,
    carrying: AtomicBool,
    streams: AtomicU64,
    /// Bytes and rekeys of all its streams and when the peer was last heard from, kept up
    /// live by the pump.
    pub(crate) traffic: Arc<SessionTraffic>,
}

impl SessionEntry {
    /// A session established now.
    pub(crate) fn new(
        id: u64,
        peer: String,
        fingerprint: Fingerprint,
        resumed: bool,
        born: Instant,
    ) -> Self {
        SessionEntry {
            id,
            peer,
            fingerprint,
            own_key: None,
            resumed,
            born,
            carrying: AtomicBool::new(false),
            streams: AtomicU64::new(0),
            traffic: Arc::new(SessionTraffic::new(born)),
        }
    }

    /// What it is doing now.
    pub(crate) fn state(&self) -> SessionState {
        if self.carrying.load(Ordering::Relaxed) {
            SessionState::Active
        } else if self.streams.load(Ordering::Relaxed) == 0 {
            SessionState::Warm
        } else {
            SessionState::Idle
        }
    }

    /// Streams carried so far, the one it carries included.
    pub(crate) fn streams(&self) -> u64 {
        self.streams.load(Ordering::Relaxed)
    }

    /// A stream starts (its StreamInfo record sent or received).
    pub(crate) fn begin_stream(&self) {
        self.streams.fetch_add(1, Ordering::Relaxed);
        self.carrying.store(true, Ordering::Relaxed);
    }

    /// The stream ended.
    pub(crate) fn end_stream(&self) {
        self.carrying.store(false, Ordering::Relaxed);
    }

    /// How long ago the peer was last heard from, at `now` (its handshake counts).
    pub(crate) fn last_heard(&self, now: Instant) -> Duration {
        self.traffic.last_heard(now)
    }
}

type Shard = Mutex<HashMap<u64, Arc<SessionEntry>>>;

/// The live sessions of one tunnel.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    shards: [Shard; SHARDS],
}

/// A session's entry in [`Sessions`], removed when this is dropped.
#[derive(Debug)]
pub(crate) struct SessionGuard {
    table: Arc<Sessions>,
    /// The entry.
    pub(crate) entry: Arc<SessionEntry>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.table.shard(self.entry.id).remove(&self.entry.id);
    }
}

impl Sessions {
    fn shard(&self, id: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<SessionEntry>>> {
        self.shards[(id % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Lists `entry` for as long as the returned guard lives.
    pub(crate) fn register(self: &Arc<Self>, entry: SessionEntry) -> SessionGuard {
        let entry = Arc::new(entry);
        self.shard(entry.id).insert(entry.id, entry.clone());
        SessionGuard {
            table: self.clone(),
            entry,
        }
    }

    /// The live sessions, oldest first.
    pub(crate) fn list(&self) -> Vec<Arc<SessionEntry>> {
        let mut v: Vec<Arc<SessionEntry>> = (0..SHARDS as u64)
            .flat_map(|i| self.shard(i).values().cloned().collect::<Vec<_>>())
            .collect();
        v.sort_by_key(|e| e.id);
        v
    }

    /// How many sessions are in each state, in the order of [`SessionState::ALL`].
    pub(crate) fn counts(&self) -> [u64; 3] {
        let mut n = [0u64; 3];
        for i in 0..SHARDS as u64 {
            for e in self.shard(i).values() {
                n[e.state() as usize] += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_warm_then_active_then_idle_and_gone_with_its_guard() {
        let table = Arc::new(Sessions::default());
        let fp = Fingerprint([7; 32]);
        let a = table.register(SessionEntry::new(
            next_id(),
            "a".into(),
            fp,
            true,
            Instant::now(),
        ));
        let b = table.register(SessionEntry::new(
            next_id(),
            "b".into(),
            fp,
            false,
            Instant::now(),
        ));
        assert_eq!(table.counts(), [2, 0, 0]);
        a.entry.begin_stream();
        assert_eq!(a.entry.state(), SessionState::Active);
        assert_eq!(table.counts(), [1, 0, 1]);
        a.entry.end_stream();
        assert_eq!(table.counts(), [1, 1, 0]);
        assert_eq!(a.entry.streams(), 1);
        let listed: Vec<String> = table.list().iter().map(|e| e.peer.clone()).collect();
        assert_eq!(listed, ["a", "b"], "oldest first");
        drop(a);
        assert_eq!(table.counts(), [1, 0, 0]);
        drop(b);
        assert!(table.list().is_empty());
    }
}
