//! Socket plumbing shared by both roles: options, outgoing connects with fresh name resolution,
//! abortive close, and per-tunnel limits.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use crate::config::Address;

/// TCP_NODELAY and keepalive on every socket we own.
pub fn configure(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let _ = SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// Makes the coming close of `stream` a reset (RST) instead of a clean FIN.
pub fn reset_on_close(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Resolves `addr` anew (so a DNS change is followed) and connects to the first address that
/// answers within `timeout`.
pub async fn connect(addr: &Address, timeout: Duration) -> std::io::Result<TcpStream> {
    let attempt = async {
        let mut last = None;
        for sa in addr.resolve().await? {
            match TcpStream::connect(sa).await {
                Ok(s) => {
                    configure(&s);
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("{addr}: no address"))
        }))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out after {timeout:?}"),
            ))
        })
}

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
pub struct LogLimiter {
    interval: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// A limiter letting one message through per `interval`.
    pub fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a message may be logged now, `n` being how many were held back since the
    /// last one; `None` when this one should be dropped.
    pub fn check(&self) -> Option<u64> {
        let now = Instant::now();
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

/// The peer address of an accepted socket, for logs.
pub fn peer_of(stream: &TcpStream) -> Option<SocketAddr> {
    stream.peer_addr().ok()
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
    /// Takes one token for `ip`; false when `ip` is over `rate` (0: no limit).
    pub fn allow(&self, ip: IpAddr, rate: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let now = Instant::now();
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
    fn source_limiter_allows_a_burst_then_refuses_per_address() {
        let l = SourceLimiter::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let allowed = (0..20).filter(|_| l.allow(a, 5)).count();
        assert!((5..=6).contains(&allowed), "{allowed}");
        assert!(l.allow(b, 5), "another address has its own bucket");
        assert!((0..100).all(|_| l.allow(a, 0)), "0 means no limit");
    }

    #[test]
    fn source_table_stays_bounded() {
        let l = SourceLimiter::default();
        for i in 0..(SOURCE_TABLE_SOFT_LIMIT as u32 * 2) {
            l.allow(IpAddr::from(i.to_be_bytes()), 1);
        }
        assert!(l.buckets.lock().unwrap().len() <= SOURCE_TABLE_SOFT_LIMIT);
    }
}
