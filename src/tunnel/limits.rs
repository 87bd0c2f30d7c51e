//! Limits of the accept loop: gauges with a ceiling, per-source token buckets and a log-line
//! limiter. The clock is a parameter (`now`), so their tests step time instead of sleeping.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A counter of things in progress with a ceiling; a [`Slot`] holds one unit.
#[derive(Debug, Default)]
pub struct Gauge {
    taken: AtomicUsize,
    freed: tokio::sync::Notify,
}

/// One unit of a [`Gauge`], given back on drop.
#[derive(Debug)]
pub struct Slot(Arc<Gauge>);

impl Gauge {
    /// Takes a unit if fewer than `max` are taken.
    pub fn try_acquire(self: &Arc<Self>, max: usize) -> Option<Slot> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// Waits until a unit is free, then takes it.
    pub async fn acquire(self: &Arc<Self>, max: usize) -> Slot {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = self.try_acquire(max) {
                return slot;
            }
            freed.await;
        }
    }

    /// Units taken now.
    pub fn current(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_waiters();
    }
}

/// Lets a repeated warning through at most once per interval, counting what it held back.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    interval: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// A limiter letting one message through per `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a message may be logged at `now`, `n` being how many were held back since the
    /// last one; `None` when this one should be dropped.
    pub(crate) fn check(&self, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(t) if now.duration_since(t) < self.interval => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.suppressed.swap(0, Ordering::Relaxed))
            }
        }
    }
}

/// Per-source token buckets: at most `rate` new connections per second from one source, with
/// bursts of up to `rate`. A source is an IPv4 address or an IPv6 /64 (a host usually holds a
/// whole /64, so counting single IPv6 addresses would let one host be a million sources).
/// Memory is bounded: idle sources are forgotten, and while the table is full of busy sources,
/// every source not in it shares one overflow bucket, so that a flood from very many addresses
/// neither grows the table nor flushes the buckets of the sources already limited.
#[derive(Debug, Default)]
pub struct SourceLimiter {
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    buckets: HashMap<Source, (f64, Instant)>,
    /// When idle sources were last pruned: at most once per [`PRUNE_INTERVAL`], so that a
    /// flood into a full table costs one lookup per connection, not a scan.
    pruned: Option<Instant>,
}

/// Least time between two prunings of a full table.
const PRUNE_INTERVAL: Duration = Duration::from_secs(1);

/// What one bucket counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6Net([u8; 8]),
    /// Every source that finds the table full.
    Overflow,
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(a) => Source::V4(a),
            IpAddr::V6(a) => {
                let mut net = [0u8; 8];
                net.copy_from_slice(&a.octets()[..8]);
                Source::V6Net(net)
            }
        }
    }
}

/// Sources remembered (besides the overflow bucket) before idle ones are pruned.
const SOURCE_TABLE_SOFT_LIMIT: usize = 16_384;

impl SourceLimiter {
    /// Takes one token for `ip`'s source at `now`; false when it is over `rate` (0: no limit).
    pub fn allow(&self, ip: IpAddr, rate: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let rate = f64::from(rate);
        let refill = |tokens: f64, last: Instant| {
            (tokens + now.saturating_duration_since(last).as_secs_f64() * rate).min(rate)
        };
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let Table { buckets, pruned } = &mut *table;
        let mut source = Source::of(ip);
        if !buckets.contains_key(&source) && buckets.len() >= SOURCE_TABLE_SOFT_LIMIT {
            // Forget every source whose bucket has refilled (at most once per interval); if
            // that frees no room (a flood from very many addresses), this one shares the
            // overflow bucket.
            if pruned.is_none_or(|t| now.saturating_duration_since(t) >= PRUNE_INTERVAL) {
                *pruned = Some(now);
                buckets.retain(|s, (tokens, last)| {
                    *s == Source::Overflow || refill(*tokens, *last) < rate
                });
            }
            if buckets.len() >= SOURCE_TABLE_SOFT_LIMIT {
                source = Source::Overflow;
            }
        }
        let (tokens, last) = buckets.entry(source).or_insert((rate, now));
        *tokens = refill(*tokens, *last);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_limiter_allows_a_burst_then_refills_at_the_rate_per_address() {
        let l = SourceLimiter::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(
            (0..20).filter(|_| l.allow(a, 5, t0)).count(),
            5,
            "a burst of `rate`"
        );
        assert!(l.allow(b, 5, t0), "another address has its own bucket");
        assert!(
            !l.allow(a, 5, t0 + Duration::from_millis(100)),
            "half a token is not one"
        );
        assert!(
            l.allow(a, 5, t0 + Duration::from_millis(200)),
            "one token after 1/rate s"
        );
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            (0..20).filter(|_| l.allow(a, 5, later)).count(),
            5,
            "refills to `rate`, no more"
        );
        assert!((0..100).all(|_| l.allow(a, 0, t0)), "0 means no limit");
    }

    #[test]
    fn source_table_stays_bounded() {
        let l = SourceLimiter::default();
        let now = Instant::now();
        for i in 0..(SOURCE_TABLE_SOFT_LIMIT as u32 * 2) {
            l.allow(IpAddr::from(i.to_be_bytes()), 1, now);
        }
        // The sources and the overflow bucket.
        assert!(l.table.lock().unwrap().buckets.len() <= SOURCE_TABLE_SOFT_LIMIT + 1);
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source() {
        let l = SourceLimiter::default();
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!((0..3).filter(|_| l.allow(a, 3, t0)).count(), 3);
        assert!(!l.allow(same_64, 3, t0), "the same /64 shares the bucket");
        assert!(l.allow(other_64, 3, t0), "another /64 has its own");
        // An IPv4-mapped address counts as the IPv4 address.
        let v4: IpAddr = "192.0.2.9".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        assert!(l.allow(v4, 1, t0));
        assert!(!l.allow(mapped, 1, t0));
    }

    #[test]
    fn a_flood_of_new_sources_neither_flushes_limited_ones_nor_gets_past_the_rate() {
        let l = SourceLimiter::default();
        let t0 = Instant::now();
        let abuser: IpAddr = "198.51.100.7".parse().unwrap();
        assert!(l.allow(abuser, 1, t0));
        assert!(!l.allow(abuser, 1, t0), "limited");
        // Other sources, each using its one token: the table fills with busy buckets.
        for i in 0..SOURCE_TABLE_SOFT_LIMIT as u32 - 1 {
            l.allow(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), 1, t0);
        }
        // Twice as many new ones at the same instant: together they get one burst of `rate`.
        let new_allowed = (0..2 * SOURCE_TABLE_SOFT_LIMIT as u32)
            .filter(|i| l.allow(IpAddr::from((0x2000_0000 + i).to_be_bytes()), 1, t0))
            .count();
        assert_eq!(new_allowed, 1, "new sources share the overflow bucket");
        assert!(
            !l.allow(abuser, 1, t0),
            "the abuser's bucket was not flushed"
        );
        // Once buckets have refilled, new sources get their own again.
        let later = t0 + Duration::from_secs(2);
        assert!(l.allow("203.0.113.1".parse().unwrap(), 1, later));
    }

    #[test]
    fn log_limiter_lets_one_line_through_per_interval_and_counts_the_rest() {
        let l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.check(t0), Some(0));
        assert_eq!(l.check(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.check(t0 + Duration::from_secs(9)), None);
        assert_eq!(
            l.check(t0 + Duration::from_secs(10)),
            Some(2),
            "two held back"
        );
        assert_eq!(l.check(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn gauge_has_a_ceiling_and_slots_give_back_on_drop() {
        let g = Arc::new(Gauge::default());
        let a = g.try_acquire(2).unwrap();
        let _b = g.try_acquire(2).unwrap();
        assert!(g.try_acquire(2).is_none());
        assert_eq!(g.current(), 2);
        drop(a);
        assert_eq!(g.current(), 1);
        assert!(g.try_acquire(2).is_some());
    }
}
