//! Limits of the accept loop: gauges with a ceiling, per-source token buckets and a log-line
//! limiter. The clock is a parameter (`now`), so their tests step time instead of sleeping.

use std::collections::HashMap;
use std::net::IpAddr;
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

/// Per-source-address token buckets: at most `rate` new connections per second from one IP
/// address, with bursts of up to `rate`. Memory is bounded: idle sources are forgotten.
#[derive(Debug, Default)]
pub struct SourceLimiter {
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Sources remembered before idle ones are pruned.
const SOURCE_TABLE_SOFT_LIMIT: usize = 16_384;

impl SourceLimiter {
    /// Takes one token for `ip` at `now`; false when `ip` is over `rate` (0: no limit).
    pub fn allow(&self, ip: IpAddr, rate: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let rate = f64::from(rate);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= SOURCE_TABLE_SOFT_LIMIT && !buckets.contains_key(&ip) {
            // Forget every source whose bucket has refilled; if that is not enough (a flood
            // from very many addresses), start afresh rather than grow.
            buckets.retain(|_, (tokens, last)| {
                *tokens + now.duration_since(*last).as_secs_f64() * rate < rate
            });
            if buckets.len() >= SOURCE_TABLE_SOFT_LIMIT {
                buckets.clear();
            }
        }
        let (tokens, last) = buckets.entry(ip).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate);
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
        assert!(l.buckets.lock().unwrap().len() <= SOURCE_TABLE_SOFT_LIMIT);
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
