//! Socket plumbing shared by both roles: options, outgoing connects with fresh name resolution,
//! abortive close, and per-tunnel limits.

use std::net::SocketAddr;
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
