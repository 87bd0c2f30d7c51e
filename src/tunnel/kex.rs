//! Fresh hybrid keys inside a session (PROTOCOL.md §4.5), the tunnel's part: when the connector
//! starts an exchange, how old keys may get, and the exchange's records between streams.
//!
//! The record layer and `proto::kex` have no clock: they count hybrid generations. Here each
//! session remembers when its hybrid keys were made (the handshake, or the last exchange that
//! completed on this side) and the rules take `now`: the connector starts an exchange once they
//! are `rekey_interval` old ([`HybridClock::due`]); keys older than 1.5 × `rekey_interval` are
//! refused on both sides ([`HybridClock::expired`]): the connector stops sealing, the listener
//! stops opening, and the session ends. `rekey_interval = "off"`: neither.
//!
//! The pump's two directions share one [`SessionKex`]: the direction that opens a record of the
//! exchange hands the answer to the one that seals (a [`Notify`] wakes it).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::proto::handshake::{HandshakeRandomness, Role};
use crate::proto::kex::{Kex, KexError};
use crate::proto::mlkem::DecapsulationKey;
use crate::proto::record::{parse_header, Opened, Opener, RecordType, Sealer, HEADER_LEN};

/// The time rules of one session's hybrid keys: made at `since`, under `interval`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HybridClock {
    /// When the hybrid keys in use were made (handshake or last completed exchange).
    pub(crate) since: Instant,
    /// `rekey_interval`; `None`: no exchange by time, no limit.
    pub(crate) interval: Option<Duration>,
}

impl HybridClock {
    /// When the connector starts the next exchange.
    pub(crate) fn due_at(&self) -> Option<Instant> {
        self.interval.map(|i| self.since + i)
    }

    /// The hard limit: keys of this age (1.5 × `rekey_interval`) are refused.
    pub(crate) fn limit_at(&self) -> Option<Instant> {
        self.interval.map(|i| self.since + i + i / 2)
    }

    /// The connector should start an exchange at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.due_at().is_some_and(|t| now >= t)
    }

    /// The keys are past the hard limit at `now`.
    pub(crate) fn expired(&self, now: Instant) -> bool {
        self.limit_at().is_some_and(|t| now >= t)
    }

    /// The keys are older than `rekey_interval` at `now` (a pooled session is not handed out).
    pub(crate) fn older_than_interval(&self, now: Instant) -> bool {
        self.due(now)
    }
}

/// Why the exchange ended a session.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KexFailure {
    /// A record of the exchange was refused.
    #[error("key exchange: {0}")]
    Kex(#[from] KexError),
    /// The hybrid keys passed 1.5 × `rekey_interval` without a completed exchange.
    #[error("hybrid keys older than 1.5 x rekey_interval ({0:?}): no fresh key exchange in time")]
    Expired(Duration),
    /// The sealed socket failed, or ended while the exchange waited.
    #[error("peer socket: {0}")]
    Io(#[from] std::io::Error),
    /// The Reply (or Done) did not come within `handshake_timeout` between streams.
    #[error("no answer to the key exchange within {0:?}")]
    Timeout(Duration),
}

struct Inner {
    kex: Kex,
    since: Instant,
}

/// One session's hybrid exchange and its clock, shared by the pump's two directions.
pub(crate) struct SessionKex {
    role: Role,
    inner: Mutex<Inner>,
    /// Wakes the sealing direction: a record of the exchange is to be sent.
    pub(crate) wake: Notify,
}

impl std::fmt::Debug for SessionKex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKex").finish_non_exhaustive()
    }
}

/// A fresh X25519 secret scalar, from the OS RNG as the handshake's.
fn x25519_secret() -> [u8; 32] {
    // (Zeroized on drop; the copy returned is wiped by `proto::kex` after its one use.)
    HandshakeRandomness::generate(&mut rand::rand_core::UnwrapErr(rand::rngs::SysRng)).ephemeral
}

impl SessionKex {
    /// A session of `role` whose keys were made at `since` (its handshake).
    pub(crate) fn new(role: Role, since: Instant) -> Self {
        SessionKex {
            role,
            inner: Mutex::new(Inner {
                kex: Kex::new(role),
                since,
            }),
            wake: Notify::new(),
        }
    }

    /// Which side this session is.
    pub(crate) fn role(&self) -> Role {
        self.role
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The clock under `interval`.
    pub(crate) fn clock(&self, interval: Option<Duration>) -> HybridClock {
        HybridClock {
            since: self.lock().since,
            interval,
        }
    }

    /// An exchange is in flight on this side.
    pub(crate) fn in_flight(&self) -> bool {
        self.lock().kex.in_flight()
    }

    /// Exchanges completed on this side.
    pub(crate) fn completed(&self) -> u64 {
        self.lock().kex.completed()
    }

    /// What the sealing direction owes the exchange before its next record, at `now`: a
    /// connector past the hard limit stops sealing (`Err(Expired)`); a connector whose keys
    /// are `interval` old and has none in flight starts an exchange (its KeyShare); either side
    /// sends the record it owes (a listener's Reply, a connector's Done, each followed by the
    /// switch of its sending direction; a connector's Done completes its exchange at `now`).
    /// The records to write, in order, into `out`. One lock.
    pub(crate) fn to_send(
        &self,
        sealer: &mut Sealer,
        interval: Option<Duration>,
        now: Instant,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<(), KexFailure> {
        let mut inner = self.lock();
        if self.role == Role::Connector {
            let clock = HybridClock {
                since: inner.since,
                interval,
            };
            if clock.expired(now) {
                return Err(KexFailure::Expired(interval.unwrap_or_default()));
            }
            if !inner.kex.in_flight() && clock.due(now) {
                // The key generation (X25519 and ML-KEM-768) under the lock: the other
                // direction waits for it only if it opens a record of the exchange meanwhile.
                let record =
                    inner
                        .kex
                        .initiate(sealer, x25519_secret(), DecapsulationKey::generate())?;
                out.push(record);
            }
        }
        let before = inner.kex.completed();
        if let Some(r) = inner.kex.outgoing(sealer)? {
            out.push(r);
        }
        if inner.kex.completed() != before {
            inner.since = now;
        }
        Ok(())
    }

    /// The record of the exchange this side must send now, if any (see [`SessionKex::to_send`];
    /// between streams, where no exchange starts).
    pub(crate) fn outgoing(
        &self,
        sealer: &mut Sealer,
        now: Instant,
    ) -> Result<Option<Vec<u8>>, KexError> {
        let mut inner = self.lock();
        let before = inner.kex.completed();
        let out = inner.kex.outgoing(sealer)?;
        if inner.kex.completed() != before {
            inner.since = now;
        }
        Ok(out)
    }

    /// When the sealing direction must wake for the exchange by itself: a connector's next
    /// exchange under `interval` (none while one is in flight: the Reply wakes it).
    pub(crate) fn wake_at(&self, interval: Option<Duration>) -> Option<Instant> {
        let inner = self.lock();
        if self.role != Role::Connector || inner.kex.in_flight() {
            return None;
        }
        interval.map(|i| inner.since + i)
    }

    /// A record of the exchange opened by `opener`; a listener's Done completes its exchange
    /// at `now`. Wakes the sealing direction if there is something to send.
    pub(crate) fn receive(
        &self,
        opener: &mut Opener,
        kind: RecordType,
        body: &[u8],
        now: Instant,
    ) -> Result<(), KexError> {
        let mut inner = self.lock();
        let before = inner.kex.completed();
        inner.kex.receive(opener, kind, body, x25519_secret)?;
        if inner.kex.completed() != before {
            inner.since = now;
        }
        if inner.kex.has_outgoing() {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Between streams (after both close records): sends what this side owes and reads what it
    /// waits for, until no exchange is in flight here, within `timeout`. `leftover`: bytes read
    /// after the peer's close record; returns those that follow. A connector waits for the
    /// Reply and sends its Done; a listener sends its Reply and waits for the Done. `Ok(None)`:
    /// the peer ended the session (a TCP end of stream between streams, a clean end).
    pub(crate) async fn settle<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        sealed: &mut S,
        sealer: &mut Sealer,
        opener: &mut Opener,
        mut leftover: Vec<u8>,
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>, KexFailure> {
        let work = async {
            loop {
                if let Some(r) = self.outgoing(sealer, Instant::now())? {
                    sealed.write_all(&r).await?;
                    sealed.flush().await?;
                }
                if !self.in_flight() {
                    return Ok(Some(leftover));
                }
                // One whole record.
                while leftover.len() < HEADER_LEN {
                    if read_more(sealed, &mut leftover).await? == 0 {
                        return Ok(None);
                    }
                }
                let h: [u8; HEADER_LEN] = leftover[..HEADER_LEN]
                    .try_into()
                    .map_err(|_| KexError::Malformed(RecordType::KeyShareDone))?;
                let (kind, total) = parse_header(&h).map_err(KexError::Record)?;
                if !kind.is_key_share() {
                    // Between streams the peer may send nothing else while we wait.
                    return Err(KexError::Unexpected(kind).into());
                }
                while leftover.len() < total {
                    if read_more(sealed, &mut leftover).await? == 0 {
                        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                    }
                }
                let rest = leftover.split_off(total);
                match opener.open(&mut leftover).map_err(KexError::Record)? {
                    Opened::KeyShare(kind, body) => {
                        let body = body.to_vec();
                        self.receive(opener, kind, &body, Instant::now())?;
                    }
                    _ => return Err(KexError::Unexpected(kind).into()),
                }
                leftover = rest;
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(KexFailure::Timeout(timeout)),
        }
    }
}

async fn read_more<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.reserve(2048);
    s.read_buf(buf).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_due_at_the_interval_and_expires_at_one_and_a_half() {
        let t0 = Instant::now();
        let c = HybridClock {
            since: t0,
            interval: Some(Duration::from_secs(120)),
        };
        assert!(!c.due(t0 + Duration::from_secs(119)));
        assert!(c.due(t0 + Duration::from_secs(120)));
        assert!(c.older_than_interval(t0 + Duration::from_secs(121)));
        assert!(!c.expired(t0 + Duration::from_secs(179)));
        assert!(c.expired(t0 + Duration::from_secs(180)));
        // An exchange completed at 150 s: the clock starts again.
        let c = HybridClock {
            since: t0 + Duration::from_secs(150),
            ..c
        };
        assert!(!c.expired(t0 + Duration::from_secs(300)));
        assert!(c.expired(t0 + Duration::from_secs(330)));
        // Off: never due, never expired.
        let off = HybridClock {
            since: t0,
            interval: None,
        };
        assert!(!off.due(t0 + Duration::from_secs(1 << 30)));
        assert!(!off.expired(t0 + Duration::from_secs(1 << 30)));
    }

    #[test]
    fn a_session_exchange_completes_and_restarts_both_clocks() {
        use crate::proto::key_schedule::Secret;
        let (c_ap, l_ap) = (Secret::from_bytes([1; 32]), Secret::from_bytes([2; 32]));
        let (mut cs, mut co) = (
            Sealer::new(c_ap.clone(), 1 << 30),
            Opener::new(l_ap.clone()),
        );
        let (mut ls, mut lo) = (Sealer::new(l_ap, 1 << 30), Opener::new(c_ap));
        let t0 = Instant::now();
        let i = Some(Duration::from_secs(2));
        let (c, l) = (
            SessionKex::new(Role::Connector, t0),
            SessionKex::new(Role::Listener, t0),
        );
        // Not due yet; then due: one KeyShare, and none again while in flight.
        let send = |cs: &mut Sealer, at: Instant| {
            let mut out = Vec::new();
            c.to_send(cs, i, at, &mut out).map(|()| out)
        };
        assert!(send(&mut cs, t0 + Duration::from_secs(1))
            .unwrap()
            .is_empty());
        assert_eq!(c.wake_at(i), Some(t0 + Duration::from_secs(2)));
        let t = t0 + Duration::from_secs(2);
        let mut out = send(&mut cs, t).unwrap();
        assert_eq!(out.len(), 1);
        let mut share = out.remove(0);
        assert!(send(&mut cs, t).unwrap().is_empty());
        assert_eq!(c.wake_at(i), None, "in flight: the Reply wakes it");
        let Ok(Opened::KeyShare(kind, body)) = lo.open(&mut share) else {
            panic!("a KeyShare")
        };
        let body = body.to_vec();
        l.receive(&mut lo, kind, &body, t).unwrap();
        let mut reply = l.outgoing(&mut ls, t).unwrap().unwrap();
        let Ok(Opened::KeyShare(kind, body)) = co.open(&mut reply) else {
            panic!("a Reply")
        };
        let body = body.to_vec();
        c.receive(&mut co, kind, &body, t).unwrap();
        let t1 = t0 + Duration::from_millis(2100);
        let mut out = send(&mut cs, t1).unwrap();
        assert_eq!(out.len(), 1);
        let mut done = out.remove(0);
        assert_eq!(
            c.clock(i).since,
            t1,
            "the connector's clock restarts at its Done"
        );
        let Ok(Opened::KeyShare(kind, body)) = lo.open(&mut done) else {
            panic!("a Done")
        };
        let body = body.to_vec();
        let t2 = t0 + Duration::from_millis(2200);
        l.receive(&mut lo, kind, &body, t2).unwrap();
        assert_eq!(l.clock(i).since, t2, "the listener's at the Done it opens");
        assert_eq!((c.completed(), l.completed()), (1, 1));
        assert!(!l.clock(i).expired(t0 + Duration::from_secs(4)));
        // Past the limit with no exchange completed: the connector stops sealing.
        assert!(matches!(
            send(&mut cs, t1 + Duration::from_secs(3)),
            Err(KexFailure::Expired(_))
        ));
        assert!(send(&mut cs, t1 + Duration::from_millis(2999)).is_ok());
    }
}
