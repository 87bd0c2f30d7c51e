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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use crate::tunnel::limits::Source;

/// Connections without a valid hello yet, per source: a connector's default `max_handshakes`
/// (so that a connector starting cold with many clients behind one address is not refused),
/// an eighth of the default `max_connections`.
pub(crate) const PRE_AUTH_PER_SOURCE: usize = 128;

/// The table of one listener tunnel (kept in its [`crate::tunnel::state::TunnelState`]).
#[derive(Debug, Default)]
pub(crate) struct PreAuth {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    /// Oldest first (ids grow with time): each connection's source and its eviction signal.
    order: BTreeMap<u64, (Option<Source>, CancellationToken)>,
    per_source: HashMap<Source, usize>,
}

impl Inner {
    fn forget(&mut self, source: Option<Source>) {
        if let Some(s) = source {
            if let Some(n) = self.per_source.get_mut(&s) {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(&s);
                }
            }
        }
    }
}

/// One connection's place in the table, until its hello passed mac1 (drop it then) or it is
/// evicted ([`PreAuthPlace::evicted`] fires).
#[derive(Debug)]
pub(crate) struct PreAuthPlace {
    table: Arc<PreAuth>,
    id: u64,
    source: Option<Source>,
    evicted: CancellationToken,
}

impl PreAuth {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new connection from `source` (`None`: not an IP peer, never capped); when
    /// that source already holds `per_source` places, its oldest is evicted.
    pub(crate) fn enter(
        self: &Arc<Self>,
        source: Option<Source>,
        per_source: usize,
    ) -> PreAuthPlace {
        let mut inner = self.lock();
        if let Some(s) = source {
            let n = inner.per_source.get(&s).copied().unwrap_or(0);
            if n >= per_source.max(1) {
                let oldest = inner
                    .order
                    .iter()
                    .find(|(_, (src, _))| *src == Some(s))
                    .map(|(id, _)| *id);
                if let Some((src, evicted)) = oldest.and_then(|id| inner.order.remove(&id)) {
                    inner.forget(src);
                    evicted.cancel();
                }
            }
            *inner.per_source.entry(s).or_insert(0) += 1;
        }
        let id = inner.next;
        inner.next += 1;
        let evicted = CancellationToken::new();
        inner.order.insert(id, (source, evicted.clone()));
        PreAuthPlace {
            table: self.clone(),
            id,
            source,
            evicted,
        }
    }

    /// Evicts the oldest connection without a valid hello (it closes itself, giving back its
    /// connection slot); false when there is none.
    pub(crate) fn evict_oldest(&self) -> bool {
        let mut inner = self.lock();
        let Some((_, (source, evicted))) = inner.order.pop_first() else {
            return false;
        };
        inner.forget(source);
        evicted.cancel();
        true
    }

    /// Connections without a valid hello now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().order.len()
    }
}

impl PreAuthPlace {
    /// Fires when this connection is evicted to make room for a newer one.
    pub(crate) fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }
}

impl Drop for PreAuthPlace {
    fn drop(&mut self) {
        let mut inner = self.table.lock();
        if inner.order.remove(&self.id).is_some() {
            inner.forget(self.source);
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
