//! Limits of the accept loop: gauges with a ceiling, per-source token buckets and a log-line
//! limiter. The clock is a parameter (`now`), so their tests step time instead of sleeping.

use std::collections::{HashMap, HashSet, VecDeque};
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

/// What one bucket counts, and what the signing queue is fair between: an IPv4 address or an
/// IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6Net([u8; 8]),
    /// Every source that finds the table full.
    Overflow,
}

impl Source {
    /// The source `ip` belongs to.
    pub(crate) fn of(ip: IpAddr) -> Source {
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

/// A token bucket: `rate` tokens per second, holding at most `burst`. Starts full.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// An empty-history bucket; the first call finds it full.
    pub(crate) const fn new() -> Self {
        TokenBucket {
            tokens: 0.0,
            last: None,
        }
    }

    /// Takes one token at `now` under `rate` per second and `burst` (0 rate: no limit, always
    /// `Ok`). `Err(wait)`: none left, the next one comes after `wait`.
    pub(crate) fn take(&mut self, rate: u32, burst: u32, now: Instant) -> Result<(), Duration> {
        if rate == 0 {
            return Ok(());
        }
        let (rate, burst) = (f64::from(rate), f64::from(burst.max(1)));
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }

    /// Adds what `rate` per second gave since the last call, up to `burst` (full at the first).
    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        self.tokens = match self.last {
            None => burst,
            Some(t) => {
                (self.tokens + now.saturating_duration_since(t).as_secs_f64() * rate).min(burst)
            }
        };
        self.last = Some(now);
    }
}

/// A budget of time: `percent` of each second may be spent, with bursts of one second's worth
/// (`signature_cpu`: the time the listener spends answering full handshakes). Spending may
/// overdraw it by the one item in progress; it is then ready again once paid back. Starts full.
#[derive(Debug)]
pub(crate) struct TimeBudget {
    /// Its tokens are seconds that may still be spent (negative: overdrawn).
    bucket: TokenBucket,
}

impl TimeBudget {
    /// An empty-history budget; the first call finds it full.
    pub(crate) const fn new() -> Self {
        TimeBudget {
            bucket: TokenBucket::new(),
        }
    }

    /// `Ok` when there is time left at `now` under `percent` of each second (0: no cap, always
    /// `Ok`); `Err(wait)`: overdrawn, ready again after `wait`.
    pub(crate) fn ready(&mut self, percent: u32, now: Instant) -> Result<(), Duration> {
        let Some(share) = share(percent) else {
            return Ok(());
        };
        self.bucket.refill(share, share, now);
        if self.bucket.tokens > 0.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64(-self.bucket.tokens / share).max(MIN_WAIT))
        }
    }

    /// Spends `took` at `now` under `percent` (nothing with 0).
    pub(crate) fn spend(&mut self, percent: u32, took: Duration, now: Instant) {
        if let Some(share) = share(percent) {
            self.bucket.refill(share, share, now);
            self.bucket.tokens -= took.as_secs_f64();
        }
    }
}

/// `percent` (0: no cap) as a share of each second.
fn share(percent: u32) -> Option<f64> {
    (percent > 0).then(|| f64::from(percent.min(100)) / 100.0)
}

/// Shortest wait [`TimeBudget::ready`] gives, so that a waiter never spins.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// The hello ephemerals (`e_c`) a listener tunnel has answered or is answering, so that a
/// captured hello replayed gets no answer (SECURITY.md, "Flooding the listener"). Bounded: past
/// `capacity` the oldest is forgotten, and so is any older than `max_age`; a replay of a
/// forgotten one costs the attacker as much as a fresh hello, which is what it must cost.
#[derive(Debug)]
pub(crate) struct ReplayCache {
    capacity: usize,
    max_age: Duration,
    inner: Mutex<ReplayInner>,
}

#[derive(Debug, Default)]
struct ReplayInner {
    seen: HashSet<[u8; 32]>,
    order: VecDeque<([u8; 32], Instant)>,
}

/// Ephemerals remembered per listener tunnel: 65,536 × about 80 bytes (the set's and the
/// queue's entries) ≈ 5 MiB at most.
pub(crate) const REPLAY_CAPACITY: usize = 65_536;
/// How long an ephemeral is remembered at most.
pub(crate) const REPLAY_MAX_AGE: Duration = Duration::from_secs(3600);

impl ReplayCache {
    /// A cache of at most `capacity` ephemerals, each for at most `max_age`.
    pub(crate) fn new(capacity: usize, max_age: Duration) -> Self {
        ReplayCache {
            capacity: capacity.max(1),
            max_age,
            inner: Mutex::default(),
        }
    }

    /// Records `e` at `now`; false if it was already there (a replay).
    pub(crate) fn first_sight(&self, e: [u8; 32], now: Instant) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let ReplayInner { seen, order } = &mut *inner;
        while let Some((old, at)) = order.front() {
            if order.len() < self.capacity && now.saturating_duration_since(*at) < self.max_age {
                break;
            }
            seen.remove(old);
            order.pop_front();
        }
        if !seen.insert(e) {
            return false;
        }
        order.push_back((e, now));
        true
    }

    /// Ephemerals remembered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .order
            .len()
    }
}

/// A bounded queue that is fair between sources: [`FairQueue::pop`] serves the sources in turn
/// (round robin, each source's own items in order), and while the queue is full a newcomer
/// from a source with fewer items pushes out the newest item of the longest queue, so that
/// however many items one source (or many) sends, every other source keeps a place.
#[derive(Debug)]
pub(crate) struct FairQueue<T> {
    queues: HashMap<Source, VecDeque<T>>,
    /// Sources with items, in serving order.
    ring: VecDeque<Source>,
    len: usize,
    capacity: usize,
}

/// What [`FairQueue::push`] did.
#[derive(Debug)]
pub(crate) enum Pushed<T> {
    /// Queued.
    Queued,
    /// Queued, pushing out this item of a longer queue.
    Evicted(T),
    /// Not queued: the source holds its share already.
    Refused(T),
}

impl<T> FairQueue<T> {
    /// An empty queue of at most `capacity` items.
    pub(crate) fn new(capacity: usize) -> Self {
        FairQueue {
            queues: HashMap::new(),
            ring: VecDeque::new(),
            len: 0,
            capacity: capacity.max(1),
        }
    }

    /// Items queued.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Queues `item` from `source`, unless that source has `per_source` items already
    /// (`None`: no per-source cap) or the queue is full of sources no longer than it.
    pub(crate) fn push(&mut self, source: Source, item: T, per_source: Option<usize>) -> Pushed<T> {
        let own = self.queues.get(&source).map_or(0, VecDeque::len);
        if per_source.is_some_and(|cap| own >= cap) {
            return Pushed::Refused(item);
        }
        let mut evicted = None;
        if self.len >= self.capacity {
            let longest = self
                .queues
                .iter()
                .max_by_key(|(_, q)| q.len())
                .map(|(s, q)| (*s, q.len()));
            match longest {
                Some((victim, n)) if n > own + 1 => {
                    evicted = self.remove_newest(victim);
                }
                _ => return Pushed::Refused(item),
            }
        }
        let q = self.queues.entry(source).or_default();
        if q.is_empty() {
            self.ring.push_back(source);
        }
        q.push_back(item);
        self.len += 1;
        match evicted {
            Some(e) => Pushed::Evicted(e),
            None => Pushed::Queued,
        }
    }

    fn remove_newest(&mut self, source: Source) -> Option<T> {
        let q = self.queues.get_mut(&source)?;
        let item = q.pop_back()?;
        self.len -= 1;
        if q.is_empty() {
            self.queues.remove(&source);
            self.ring.retain(|s| *s != source);
        }
        Some(item)
    }

    /// The next item: the oldest of the source whose turn it is.
    pub(crate) fn pop(&mut self) -> Option<T> {
        let source = self.ring.pop_front()?;
        let q = self.queues.get_mut(&source)?;
        let item = q.pop_front();
        if q.is_empty() {
            self.queues.remove(&source);
        } else {
            self.ring.push_back(source);
        }
        if item.is_some() {
            self.len -= 1;
        }
        item
    }

    /// Puts `item` (just popped from `source`) back where it was: first in line.
    pub(crate) fn push_front(&mut self, source: Source, item: T) {
        let q = self.queues.entry(source).or_default();
        if !q.is_empty() {
            self.ring.retain(|s| *s != source);
        }
        q.push_front(item);
        self.ring.push_front(source);
        self.len += 1;
    }

    /// Drops every item `keep` refuses (connections given up while queued).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let mut len = 0;
        self.queues.retain(|_, q| {
            q.retain(&mut keep);
            len += q.len();
            !q.is_empty()
        });
        let queues = &self.queues;
        self.ring.retain(|s| queues.contains_key(s));
        self.len = len;
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

    #[test]
    fn time_budget_gives_its_share_of_each_second_and_waits_out_an_overdraft() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = TimeBudget::new();
        assert!(b.ready(0, t0).is_ok(), "0: no cap");
        b.spend(0, Duration::from_secs(100), t0);
        assert!(b.ready(0, t0).is_ok());

        let mut b = TimeBudget::new();
        // 10 %: a burst of 100 ms of work, then 100 ms per second.
        assert!(b.ready(10, t0).is_ok(), "starts full");
        b.spend(10, ms(60), t0);
        assert!(b.ready(10, t0).is_ok(), "40 ms left");
        b.spend(10, ms(60), t0);
        let wait = b.ready(10, t0).expect_err("20 ms overdrawn");
        assert!(
            wait >= ms(199) && wait <= ms(201),
            "{wait:?}: paid back at 10 % in 200 ms"
        );
        assert!(b.ready(10, t0 + ms(150)).is_err(), "not yet");
        assert!(b.ready(10, t0 + ms(210)).is_ok(), "paid back");
        assert!(
            b.ready(10, t0 + Duration::from_secs(60)).is_ok(),
            "and never more than one second's worth saved"
        );
        b.spend(10, ms(101), t0 + Duration::from_secs(60));
        assert!(b.ready(10, t0 + Duration::from_secs(60)).is_err());
    }

    #[test]
    fn token_bucket_gives_a_burst_then_the_rate() {
        let mut b = TokenBucket::new();
        let t0 = Instant::now();
        assert_eq!((0..10).filter(|_| b.take(4, 4, t0).is_ok()).count(), 4);
        let wait = b.take(4, 4, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(250) && wait > Duration::ZERO);
        assert!(b.take(4, 4, t0 + Duration::from_millis(250)).is_ok());
        assert!((0..100).all(|_| b.take(0, 0, t0).is_ok()), "0: no limit");
    }

    #[test]
    fn replay_cache_refuses_a_second_sight_and_stays_bounded() {
        let c = ReplayCache::new(4, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(c.first_sight([1; 32], t0));
        assert!(!c.first_sight([1; 32], t0), "a replay");
        for i in 2..10u8 {
            assert!(c.first_sight([i; 32], t0));
        }
        assert_eq!(c.len(), 4);
        assert!(c.first_sight([1; 32], t0), "the oldest was forgotten");
        assert!(!c.first_sight([9; 32], t0));
        let later = t0 + Duration::from_secs(61);
        assert!(c.first_sight([9; 32], later), "too old to remember");
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn fair_queue_serves_sources_in_turn_and_a_flood_cannot_take_every_place() {
        let a = Source::of("192.0.2.1".parse().unwrap());
        let b = Source::of("192.0.2.2".parse().unwrap());
        let c = Source::of("2001:db8::1".parse().unwrap());
        let mut q = FairQueue::new(4);
        for i in 0..4 {
            assert!(matches!(q.push(a, ("a", i), None), Pushed::Queued));
        }
        // Full of a's: b pushes out a's newest, and so does c.
        assert!(matches!(
            q.push(b, ("b", 0), None),
            Pushed::Evicted(("a", 3))
        ));
        assert!(matches!(
            q.push(c, ("c", 0), None),
            Pushed::Evicted(("a", 2))
        ));
        // Now a and b... b (1 item) cannot push out a (2 items): not longer by two.
        assert!(matches!(q.push(b, ("b", 1), None), Pushed::Refused(_)));
        assert!(matches!(q.push(a, ("a", 9), None), Pushed::Refused(_)));
        assert_eq!(q.len(), 4);
        // In turn: a, b, c, then a again.
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, [("a", 0), ("b", 0), ("c", 0), ("a", 1)]);
        // A per-source cap.
        assert!(matches!(q.push(a, ("a", 0), Some(1)), Pushed::Queued));
        assert!(matches!(q.push(a, ("a", 1), Some(1)), Pushed::Refused(_)));
        q.retain(|_| false);
        assert_eq!(q.len(), 0);
        assert!(q.pop().is_none());
    }
}
