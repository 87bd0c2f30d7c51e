//! A listener's connections that have not sent a hello with a valid mac1 yet (PROTOCOL.md §5.3,
//! steps 1 and 2; SECURITY.md, "Flooding the listener"). mac1 protects the listener's CPU, not
//! its connection slots: an idle socket costs an attacker nothing, so without a bound a hundred
//! idle connections a second would hold every one of `max_connections` for `handshake_timeout`.
//! So: at most [`PRE_AUTH_PER_SOURCE`] such connections per source (an IPv4 address or an IPv6
//! /64), and when `max_connections` is reached, at most one of them per connection in all: a
//! new connection past either bound closes the **oldest** such connection (of its source, or
//! of the tunnel) and takes its place. A connector sends its hello at once, so it spends about
//! one round trip in this table and is never the oldest for long; a flood of idle sockets only
//! evicts itself, even one from the connector's own address (a NAT).
//!
//! The same table, keyed by connector key ([`Silent`]), holds a listener's sessions that have
//! not carried a stream yet (PROTOCOL.md §4.1: their first StreamInfo is awaited 120 s, since a
//! connector's warm sessions wait for their clients): at most `max_connections /`
//! [`SILENT_SHARE_PER_KEY`] per connector key, and evicted, oldest first, at `max_connections`
//! once no connection without a valid hello is left to evict. So authenticated but silent
//! sessions (anyone's, with `accept_unknown`) cannot lock a connector out either.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use crate::proto::identity::Fingerprint;
use crate::tunnel::limits::Source;

/// Connections without a valid hello yet, per source: a connector's default `max_handshakes`
/// (so that a connector starting cold with many clients behind one address is not refused),
/// an eighth of the default `max_connections`.
pub(crate) const PRE_AUTH_PER_SOURCE: usize = 128;

/// A listener's sessions that have not carried a stream yet may take at most
/// `max_connections / SILENT_SHARE_PER_KEY` places per connector key.
pub(crate) const SILENT_SHARE_PER_KEY: usize = 4;

/// Connections of one listener tunnel (kept in its [`crate::tunnel::state::TunnelState`]),
/// oldest first, each evictable, at most a number per key `K`.
#[derive(Debug)]
pub(crate) struct Evictable<K> {
    inner: Mutex<Inner<K>>,
}

/// Connections without a valid hello, per source.
pub(crate) type PreAuth = Evictable<Source>;
/// Sessions without a stream yet, per connector key.
pub(crate) type Silent = Evictable<Fingerprint>;

impl<K> Default for Evictable<K> {
    fn default() -> Self {
        Evictable {
            inner: Mutex::new(Inner {
                next: 0,
                order: BTreeMap::new(),
                per_key: HashMap::new(),
            }),
        }
    }
}

#[derive(Debug)]
struct Inner<K> {
    next: u64,
    /// Oldest first (ids grow with time): each connection's key and its eviction signal.
    order: BTreeMap<u64, (Option<K>, CancellationToken)>,
    per_key: HashMap<K, usize>,
}

impl<K: Copy + Eq + Hash> Inner<K> {
    fn forget(&mut self, key: Option<K>) {
        if let Some(k) = key {
            if let Some(n) = self.per_key.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.per_key.remove(&k);
                }
            }
        }
    }
}

/// One connection's place in the table, until it leaves it (drop it then: its hello passed
/// mac1, its session's first stream came) or it is evicted ([`Place::evicted`] fires).
#[derive(Debug)]
pub(crate) struct Place<K: Copy + Eq + Hash> {
    table: Arc<Evictable<K>>,
    id: u64,
    key: Option<K>,
    evicted: CancellationToken,
}

impl<K: Copy + Eq + Hash> Evictable<K> {
    fn lock(&self) -> MutexGuard<'_, Inner<K>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new connection of `key` (`None`: never capped); when that key already
    /// holds `per_key` places, its oldest is evicted.
    pub(crate) fn enter(self: &Arc<Self>, key: Option<K>, per_key: usize) -> Place<K> {
        let mut inner = self.lock();
        if let Some(k) = key {
            let n = inner.per_key.get(&k).copied().unwrap_or(0);
            if n >= per_key.max(1) {
                let oldest = inner
                    .order
                    .iter()
                    .find(|(_, (other, _))| *other == Some(k))
                    .map(|(id, _)| *id);
                if let Some((other, evicted)) = oldest.and_then(|id| inner.order.remove(&id)) {
                    inner.forget(other);
                    evicted.cancel();
                }
            }
            *inner.per_key.entry(k).or_insert(0) += 1;
        }
        let id = inner.next;
        inner.next += 1;
        let evicted = CancellationToken::new();
        inner.order.insert(id, (key, evicted.clone()));
        Place {
            table: self.clone(),
            id,
            key,
            evicted,
        }
    }

    /// Evicts the oldest connection in the table (it closes itself, giving back its connection
    /// slot); false when there is none.
    pub(crate) fn evict_oldest(&self) -> bool {
        let mut inner = self.lock();
        let Some((_, (key, evicted))) = inner.order.pop_first() else {
            return false;
        };
        inner.forget(key);
        evicted.cancel();
        true
    }

    /// Connections in the table now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().order.len()
    }
}

impl<K: Copy + Eq + Hash> Place<K> {
    /// Fires when this connection is evicted to make room for a newer one.
    pub(crate) fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }
}

impl<K: Copy + Eq + Hash> Drop for Place<K> {
    fn drop(&mut self) {
        let mut inner = self.table.lock();
        if inner.order.remove(&self.id).is_some() {
            inner.forget(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn source(i: u8) -> Option<Source> {
        Some(Source::of(IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))))
    }

    #[test]
    fn a_source_past_its_cap_evicts_its_own_oldest_and_places_come_back() {
        let t = Arc::new(PreAuth::default());
        let other = t.enter(source(2), 3);
        let held: Vec<_> = (0..3).map(|_| t.enter(source(1), 3)).collect();
        let newest = t.enter(source(1), 3);
        assert!(held[0].evicted().is_cancelled(), "its oldest goes");
        assert!(!held[1].evicted().is_cancelled() && !newest.evicted().is_cancelled());
        assert!(
            !other.evicted().is_cancelled(),
            "another source is untouched"
        );
        assert_eq!(t.len(), 4);
        let unsourced: Vec<_> = (0..5).map(|_| t.enter(None, 3)).collect();
        assert!(
            unsourced.iter().all(|p| !p.evicted().is_cancelled()),
            "no source, no cap"
        );
        drop((held, newest, other, unsourced));
        assert_eq!(t.len(), 0);
        let again: Vec<_> = (0..3).map(|_| t.enter(source(1), 3)).collect();
        assert!(
            again.iter().all(|p| !p.evicted().is_cancelled()),
            "given back on drop"
        );
    }

    #[test]
    fn the_oldest_is_evicted_first_and_only_once() {
        let t = Arc::new(PreAuth::default());
        let a = t.enter(source(1), 8);
        let b = t.enter(source(2), 8);
        assert!(t.evict_oldest());
        assert!(a.evicted().is_cancelled() && !b.evicted().is_cancelled());
        assert_eq!(t.len(), 1);
        drop(a);
        assert_eq!(t.len(), 1, "an evicted place is not counted twice");
        // Its source's count went down at the eviction.
        let _held: Vec<_> = (0..8).map(|_| t.enter(source(1), 8)).collect();
        assert!(t.evict_oldest());
        assert!(b.evicted().is_cancelled());
        drop(b);
        assert_eq!(t.len(), 8);
        let t2 = Arc::new(PreAuth::default());
        assert!(!t2.evict_oldest(), "nothing to evict");
    }
}
