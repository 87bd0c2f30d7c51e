//! The full-duplex pump between a plaintext socket and a sealed one, with half-close, for one
//! stream of a session.
//!
//! Two futures run in one task, one per direction. Plain → sealed: read up to `record_size`,
//! seal in place (with a rekey record in front when one is due), one write. Sealed → plain:
//! read up to one largest record at a time, open every complete record in place, and write
//! their plaintexts with one vectored write (at most one partial record stays buffered). A
//! plaintext EOF becomes a close record; a close record becomes `shutdown(Write)` on the
//! plaintext socket right away. The sealed socket stays open: once both directions' close
//! records have passed, the stream is over and the session may carry the next one (PROTOCOL.md
//! §4.3) or end with a TCP end of stream. Any error, or a sealed EOF without a close record,
//! fails the pump; the caller then resets the plaintext socket. Buffers are bounded, so a slow
//! reader slows the sender, and they exist only while data moves: each direction waits for
//! readability with no buffer, takes one when bytes arrive and gives it back once the socket is
//! drained, so an idle connection holds no record buffer at all.
//!
//! Keepalives (PROTOCOL.md §4.4): every record opened is "heard"; a third future, the watch,
//! applies the liveness rule (`proto::liveness`) and asks the writer for a Ping after half the
//! `dead_peer_timeout` of silence, and fails the pump ("peer silent for …") after the whole of
//! it. The reader asks the writer for a Pong for each Ping. Both run past their own direction's
//! close record: after it, the writer still sends keepalives and the reader still reads them, until
//! both close records have passed. The three share a few flags ([`Link`]); they run in one
//! task, polled in turn, and a flag that one raises makes the others be polled again at once.

use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;

use tokio::io::{AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

use std::sync::atomic::{AtomicBool, AtomicU32};

use crate::proto::aead::TAG_LEN;
use crate::proto::record::{
    parse_header, Opened, Opener, RecordError, RecordType, Sealer, HEADER_LEN, MAX_RECORD_LEN,
    OVERHEAD,
};
use crate::proto::{Liveness, LivenessAction};
use crate::tunnel::kex::{KexFailure, SessionKex};

/// How the pump seals.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PumpOptions {
    /// Largest plaintext per record.
    pub record_size: usize,
    /// `rekey_interval`: the connector starts a fresh hybrid exchange once the session's
    /// hybrid keys are this old; both sides refuse keys 1.5 times as old (`tunnel::kex`).
    pub rekey_interval: Option<Duration>,
    /// End the connection (an error: both sockets reset) after this long without a byte
    /// moving either way.
    pub idle_timeout: Option<Duration>,
    /// End the connection (an error: both sockets reset) when the peer is not heard from for
    /// this long; a Ping after half of it (PROTOCOL.md §4.4). `None`: no keepalive.
    pub dead_peer_timeout: Option<Duration>,
    /// A TCP half-close right behind our close record: the session carries no other stream
    /// (a connector that will not reuse it, a listener's session past `session_max_age`), so
    /// that a dropped close record is truncation.
    pub fin_after_close: FinAfterClose,
}

/// Whether a TCP half-close follows our close record of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FinAfterClose {
    /// No: the session may carry the next stream.
    No,
    /// Yes: this is the session's last stream.
    Yes,
    /// If the close record is sent at or after this instant (a listener's session that reaches
    /// `session_max_age` during the stream).
    From(std::time::Instant),
}

impl FinAfterClose {
    /// Whether a close record sent at `now` is followed by a half-close.
    pub(crate) fn at(self, now: std::time::Instant) -> bool {
        match self {
            FinAfterClose::No => false,
            FinAfterClose::Yes => true,
            FinAfterClose::From(t) => now >= t,
        }
    }
}

impl From<bool> for FinAfterClose {
    fn from(last: bool) -> Self {
        if last {
            FinAfterClose::Yes
        } else {
            FinAfterClose::No
        }
    }
}

/// The read side of a plaintext socket, TCP or Unix: waiting for readability without a buffer,
/// then reading what is there without blocking. Implemented for the streams and their halves.
pub(crate) trait PlainRead: Sync {
    /// Waits until the socket may be readable.
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Reads what is there now into `buf` (see [`read_now`]); `WouldBlock` if nothing is.
    fn read_now(&self, buf: &mut [u8]) -> std::io::Result<Read>;
}

macro_rules! plain_read {
    ($($t:ty => |$s:ident| $inner:expr;)*) => {$(
        impl PlainRead for $t {
            fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send {
                let $s = self;
                $inner.readable()
            }
            fn read_now(&self, buf: &mut [u8]) -> std::io::Result<Read> {
                let $s = self;
                let socket = $inner;
                let room = buf.len();
                read_now(room, |short| {
                    socket.try_io(Interest::READABLE, || drains(room, short, socket.try_read(buf)))
                })
            }
        }
    )*};
}
plain_read! {
    TcpStream => |s| s;
    tcp::ReadHalf<'_> => |s| AsRef::<TcpStream>::as_ref(s);
    tcp::OwnedReadHalf => |s| AsRef::<TcpStream>::as_ref(s);
    UnixStream => |s| s;
    unix::ReadHalf<'_> => |s| AsRef::<UnixStream>::as_ref(s);
    unix::OwnedReadHalf => |s| AsRef::<UnixStream>::as_ref(s);
}

/// What one read brought.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Read {
    /// Bytes read; 0 is the end of the stream.
    pub n: usize,
    /// The read filled less than its buffer: the socket is drained, and its readiness has been
    /// cleared, so the next wait for readability needs no read that fails with "would block".
    pub drained: bool,
}

/// One read through a socket's `try_io`, where `read` returns what `drains` makes of the raw
/// read. A stream socket's read that fills less than its buffer has taken everything queued
/// (under epoll, as tokio's own `poll_read` assumes): `drains` then records the count and
/// reports "would block", so that `try_io` clears the readiness; a later arrival sets it again.
/// Saves one failing system call per burst in each direction (per request/response on a
/// keep-alive connection).
fn read_now(
    room: usize,
    read: impl FnOnce(&mut Option<usize>) -> std::io::Result<usize>,
) -> std::io::Result<Read> {
    let mut short = None;
    match read(&mut short) {
        Ok(n) => Ok(Read {
            n,
            drained: n > 0 && n < room,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => match short {
            Some(n) => Ok(Read { n, drained: true }),
            None => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// The inside of `try_io` for [`read_now`]: a short read becomes "would block", its count kept.
fn drains(
    room: usize,
    short: &mut Option<usize>,
    r: std::io::Result<usize>,
) -> std::io::Result<usize> {
    match r {
        Ok(n) if 0 < n && n < room => {
            *short = Some(n);
            Err(std::io::ErrorKind::WouldBlock.into())
        }
        r => r,
    }
}

/// Totals of all the connections of a tunnel, added to as records go (for metrics).
#[derive(Debug, Default)]
pub struct Traffic {
    /// Plaintext bytes sealed and sent.
    pub sent: AtomicU64,
    /// Plaintext bytes opened and delivered.
    pub received: AtomicU64,
    /// Rekey records sent and received.
    pub rekeys: AtomicU64,
}

/// What one session's streams moved, and when its peer was last heard from (a record
/// received); listed with the session in `tunnel::sessions`.
#[derive(Debug)]
pub(crate) struct SessionTraffic {
    /// Bytes and rekeys of all its streams.
    pub traffic: Traffic,
    born: std::time::Instant,
    /// Milliseconds after `born` at which the peer was last heard from.
    heard_ms: AtomicU64,
}

impl SessionTraffic {
    /// The traffic of a session established at `born` (when its peer was last heard from).
    pub(crate) fn new(born: std::time::Instant) -> Self {
        SessionTraffic {
            traffic: Traffic::default(),
            born,
            heard_ms: AtomicU64::new(0),
        }
    }

    /// The peer was heard from now.
    pub(crate) fn heard(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.heard_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago the peer was last heard from, at `now`.
    pub(crate) fn last_heard(&self, now: std::time::Instant) -> Duration {
        let at = self.born + Duration::from_millis(self.heard_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(at)
    }
}

/// Bytes and rekeys so far, readable while the pump runs.
#[derive(Debug, Default)]
pub(crate) struct PumpStats {
    /// The tunnel's totals, added to as well if set.
    pub tunnel: Option<std::sync::Arc<Traffic>>,
    /// The session's totals and last-heard time, kept up as well if set.
    pub session: Option<std::sync::Arc<SessionTraffic>>,
    /// Plaintext bytes sealed and sent to the peer.
    pub sent: AtomicU64,
    /// Plaintext bytes received from the peer and delivered.
    pub received: AtomicU64,
    /// Rekey records sent.
    pub rekeys_sent: AtomicU64,
    /// Rekey records received.
    pub rekeys_received: AtomicU64,
}

impl PumpStats {
    fn add(&self, own: &AtomicU64, n: u64, total: impl Fn(&Traffic) -> &AtomicU64) {
        own.fetch_add(n, Ordering::Relaxed);
        if let Some(t) = &self.tunnel {
            total(t).fetch_add(n, Ordering::Relaxed);
        }
        if let Some(s) = &self.session {
            total(&s.traffic).fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The peer was heard from (a record received).
    fn heard(&self) {
        if let Some(s) = &self.session {
            s.heard();
        }
    }

    /// (sent, received, rekeys sent + received).
    pub(crate) fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
            self.rekeys_sent.load(Ordering::Relaxed) + self.rekeys_received.load(Ordering::Relaxed),
        )
    }
}

/// Why a pump ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PumpError {
    /// The plaintext socket failed.
    #[error("local socket: {0}")]
    Plain(std::io::Error),
    /// The sealed socket failed.
    #[error("peer socket: {0}")]
    Sealed(std::io::Error),
    /// A record was refused, or the stream was truncated.
    #[error("{0}")]
    Record(#[from] RecordError),
    /// Cut from outside: a reload stopped trusting the peer's key.
    #[error("revoked at reload")]
    Revoked,
    /// No byte moved either way for `idle_timeout`.
    #[error("idle for {0:?} (idle_timeout)")]
    Idle(Duration),
    /// Nothing heard from the peer for `dead_peer_timeout`, a Ping unanswered.
    #[error("peer silent for {0:?} (dead_peer_timeout)")]
    PeerSilent(Duration),
    /// The fresh hybrid exchange failed, or did not complete in time.
    #[error("{0}")]
    Kex(#[from] KexFailure),
}

impl From<crate::proto::kex::KexError> for PumpError {
    fn from(e: crate::proto::kex::KexError) -> Self {
        PumpError::Kex(KexFailure::Kex(e))
    }
}

/// What the pump's three futures share (PROTOCOL.md §4.4): when the peer was last heard from,
/// the keepalives the writer owes, and how far each direction is. In the pump's own frame,
/// not on the heap.
#[derive(Debug)]
struct Link {
    /// The time `heard_ms` counts from.
    base: tokio::time::Instant,
    /// 1 + milliseconds after `base` at which the peer was last heard from; 0: not yet.
    heard_ms: AtomicU64,
    /// Pongs the writer owes (one per Ping opened).
    pongs_due: AtomicU32,
    /// The watch asks the writer for a Ping.
    ping_due: AtomicBool,
    /// Our close record has gone out.
    sent_close: AtomicBool,
    /// The peer's close record has been opened.
    got_close: AtomicBool,
    /// Our TCP FIN went behind our close record: we cannot send a Ping (nor a Pong).
    own_fin: AtomicBool,
    /// The peer's TCP FIN came behind its close record: it cannot answer a Ping.
    peer_fin: AtomicBool,
    /// The watch asks the writer for the connector's next exchange (`SessionKex::wake_at`).
    kex_due: AtomicBool,
    /// A flag changed: poll every future again before waiting.
    kick: AtomicBool,
    /// Writes held up by flow control, not by the peer's silence: the reader's to a local
    /// client that does not read (we do not read the peer meanwhile), the writer's of data to
    /// a peer whose window is closed (its keepalives wait behind them). No silence counts while
    /// either lasts: `TCP_USER_TIMEOUT` judges a window that stays closed.
    held_up: AtomicU32,
}

/// The keepalive the writer owes, or its end.
enum Due {
    Ping,
    Pong,
    /// Both close records have passed and nothing is owed: the writer is done.
    Done,
}

impl Link {
    fn new() -> Self {
        Link {
            base: tokio::time::Instant::now(),
            heard_ms: AtomicU64::new(0),
            pongs_due: AtomicU32::new(0),
            ping_due: AtomicBool::new(false),
            sent_close: AtomicBool::new(false),
            got_close: AtomicBool::new(false),
            own_fin: AtomicBool::new(false),
            peer_fin: AtomicBool::new(false),
            kex_due: AtomicBool::new(false),
            kick: AtomicBool::new(false),
            held_up: AtomicU32::new(0),
        }
    }

    /// Runs `write`, a write that flow control may hold up, with no silence counted meanwhile.
    async fn held_up<T>(&self, write: impl Future<Output = T>) -> T {
        self.held_up.fetch_add(1, Ordering::Relaxed);
        let r = write.await;
        self.held_up.fetch_sub(1, Ordering::Relaxed);
        self.heard();
        r
    }

    fn set(&self, flag: &AtomicBool) {
        flag.store(true, Ordering::Relaxed);
        self.kick.store(true, Ordering::Relaxed);
    }

    fn is(flag: &AtomicBool) -> bool {
        flag.load(Ordering::Relaxed)
    }

    /// A record from the peer was opened now.
    fn heard(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.heard_ms.store(ms + 1, Ordering::Relaxed);
    }

    /// When the peer was last heard from during this stream.
    fn heard_at(&self) -> Option<std::time::Instant> {
        match self.heard_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some((self.base + Duration::from_millis(ms - 1)).into_std()),
        }
    }

    /// A Ping was opened: the writer owes a Pong.
    fn owe_pong(&self) {
        self.pongs_due.fetch_add(1, Ordering::Relaxed);
        self.kick.store(true, Ordering::Relaxed);
    }

    /// Both close records have passed.
    fn both_closed(&self) -> bool {
        Self::is(&self.sent_close) && Self::is(&self.got_close)
    }

    /// The keepalive the writer owes now (taken), or `Done` once `closed` (our close record
    /// sent) and the peer's opened.
    fn take_due(&self, closed: bool) -> Option<Due> {
        let pongs = self.pongs_due.load(Ordering::Relaxed);
        if pongs > 0 {
            self.pongs_due.store(pongs - 1, Ordering::Relaxed);
            return Some(Due::Pong);
        }
        if self.ping_due.swap(false, Ordering::Relaxed) {
            return Some(Due::Ping);
        }
        (closed && Self::is(&self.got_close)).then_some(Due::Done)
    }

    /// Resolves once the watch asks for the exchange (taken). Registers no waker, as
    /// [`Link::due`].
    fn kex_wake(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(move |_| {
            if self.kex_due.swap(false, Ordering::Relaxed) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// Resolves with what [`Link::take_due`] gives. Registers no waker: the pump polls the
    /// writer again whenever a flag changes (`kick`).
    fn due(&self, closed: bool) -> impl Future<Output = Due> + '_ {
        poll_fn(move |_| match self.take_due(closed) {
            Some(d) => Poll::Ready(d),
            None => Poll::Pending,
        })
    }
}

/// Seals and writes one keepalive.
async fn send_keepalive<W: AsyncWrite + Unpin>(
    sealed: &mut W,
    sealer: &mut Sealer,
    pong: bool,
) -> Result<(), PumpError> {
    let record = if pong {
        sealer.seal_pong()?
    } else {
        sealer.seal_ping()?
    };
    sealed.write_all(&record).await.map_err(PumpError::Sealed)?;
    sealed.flush().await.map_err(PumpError::Sealed)
}

/// The pump's one timer (PROTOCOL.md §4.4, §4.5): a single `Sleep`, reset at every poll to
/// the earliest deadline of the rules in [`Watch`]. Resolves with the error that ends the
/// stream; never while no rule is on.
async fn watch(
    opts: PumpOptions,
    kex: &SessionKex,
    stats: &PumpStats,
    link: &Link,
    heard_before: Option<std::time::Instant>,
) -> PumpError {
    let mut rules = Watch::new(opts, link.base.into_std(), heard_before, stats);
    let mut sleep = pin!(tokio::time::sleep_until(link.base));
    poll_fn(|cx| loop {
        let now = tokio::time::Instant::now();
        let at = match rules.step(now.into_std(), kex, stats, link) {
            Err(e) => return Poll::Ready(e),
            Ok(None) => return Poll::Pending,
            Ok(Some(at)) => tokio::time::Instant::from_std(at),
        };
        if sleep.deadline() != at {
            sleep.as_mut().reset(at);
        }
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // A deadline passed: step the rules again (each moves its own past `now`).
    })
    .await
}

/// The timed rules over one stream, stepped with `now`: the idle bound, the liveness rule, the
/// hybrid keys' hard limit and the connector's next exchange.
struct Watch {
    idle: Option<Idle>,
    live: Option<Liveness>,
    dead_peer_timeout: Duration,
    rekey_interval: Option<Duration>,
}

/// No byte moved either way (per `stats`) for `timeout`, checked four times per timeout: an
/// idle connection ends between 1 and 1.25 timeouts.
struct Idle {
    timeout: Duration,
    step: Duration,
    last: u64,
    quiet: Duration,
    next: std::time::Instant,
}

fn moved(stats: &PumpStats) -> u64 {
    stats.sent.load(Ordering::Relaxed) + stats.received.load(Ordering::Relaxed)
}

impl Watch {
    /// `heard_before`: when the session last heard from the peer before this stream.
    fn new(
        opts: PumpOptions,
        start: std::time::Instant,
        heard_before: Option<std::time::Instant>,
        stats: &PumpStats,
    ) -> Self {
        let idle = opts.idle_timeout.map(|timeout| {
            let step = (timeout / 4).max(Duration::from_millis(1));
            Idle {
                timeout,
                step,
                last: moved(stats),
                quiet: Duration::ZERO,
                next: start + step,
            }
        });
        let live = opts.dead_peer_timeout.map(|timeout| {
            Liveness::new(
                timeout,
                heard_before.map_or(start, |h| {
                    start.checked_sub(timeout).map_or(h, |floor| h.max(floor))
                }),
            )
        });
        Watch {
            idle,
            live,
            dead_peer_timeout: opts.dead_peer_timeout.unwrap_or_default(),
            rekey_interval: opts.rekey_interval,
        }
    }

    /// Applies every rule at `now`: the error that ends the stream, or the earliest instant at
    /// which a rule may next act (none: no rule is on).
    fn step(
        &mut self,
        now: std::time::Instant,
        kex: &SessionKex,
        stats: &PumpStats,
        link: &Link,
    ) -> Result<Option<std::time::Instant>, PumpError> {
        let mut next = None;
        let mut until = |at: Option<std::time::Instant>| {
            next = match (next, at) {
                (Some(a), Some(b)) => Some(std::cmp::min(a, b)),
                (a, b) => a.or(b),
            };
        };
        if let Some(idle) = &mut self.idle {
            if now >= idle.next {
                let moved = moved(stats);
                if moved == idle.last {
                    idle.quiet += idle.step;
                    if idle.quiet >= idle.timeout {
                        return Err(PumpError::Idle(idle.timeout));
                    }
                } else {
                    idle.last = moved;
                    idle.quiet = Duration::ZERO;
                }
                idle.next = now + idle.step;
            }
            until(Some(idle.next));
        }
        // The session's hybrid keys past 1.5 × the interval (an exchange that completes
        // meanwhile moves the limit on).
        let clock = kex.clock(self.rekey_interval);
        if clock.expired(now) {
            return Err(expired(self.rekey_interval));
        }
        until(clock.limit_at());
        // The connector's next exchange: the writer is asked once, until it has taken it.
        match kex.wake_at(self.rekey_interval) {
            Some(at) if at <= now => {
                if !Link::is(&link.kex_due) {
                    link.set(&link.kex_due);
                }
            }
            at => until(at),
        }
        // The liveness rule (PROTOCOL.md §4.4): a Ping asked of the writer after half of the
        // timeout without a record from the peer, the pump failed after the whole of it. After
        // our TCP FIN no Ping can go (the silence still counts); after the peer's, the peer
        // cannot answer (no silence counts against it, and a Ping still goes every half
        // timeout so that it hears us).
        if let Some(live) = &mut self.live {
            let timeout = self.dead_peer_timeout;
            if let Some(h) = link.heard_at() {
                live.heard(h);
            }
            if link.held_up.load(Ordering::Relaxed) > 0 {
                live.heard(now);
            }
            match live.poll(now) {
                LivenessAction::None => {}
                LivenessAction::SendPing => {
                    if Link::is(&link.peer_fin) {
                        *live = Liveness::new(timeout, now);
                    }
                    if !Link::is(&link.own_fin) {
                        link.set(&link.ping_due);
                    }
                }
                LivenessAction::Dead(_) if Link::is(&link.peer_fin) => {
                    *live = Liveness::new(timeout, now);
                }
                LivenessAction::Dead(d) => return Err(PumpError::PeerSilent(d)),
            }
            until(Some(live.next_due()));
        }
        Ok(next)
    }
}

/// Runs both directions of one stream until both have ended cleanly (both close records passed),
/// or one fails. On success, returns the bytes read from the sealed socket after the peer's close
/// record (the start of the next stream, if any).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn pump<PR, PW, SR, SW>(
    plain_r: &PR,
    plain_w: &mut PW,
    sealed_r: &SR,
    sealed_w: &mut SW,
    sealer: &mut Sealer,
    opener: &mut Opener,
    kex: &SessionKex,
    leftover: Vec<u8>,
    opts: PumpOptions,
    stats: &PumpStats,
) -> Result<Vec<u8>, PumpError>
where
    PR: PlainRead,
    PW: AsyncWrite + Unpin,
    SR: AsRef<TcpStream>,
    SW: AsyncWrite + Unpin,
{
    let link = Link::new();
    // When the session last heard from the peer before this stream (a warm session's time in
    // the pool counts).
    let heard_before = stats.session.as_ref().map(|s| {
        let now = std::time::Instant::now();
        now.checked_sub(s.last_heard(now)).unwrap_or(now)
    });
    // Polled by hand, each future pinned once in this frame: `try_join!` inside `select!` keeps
    // a second copy of both directions' state (the task of every idle connection holds it).
    let mut up = pin!(plain_to_sealed(
        plain_r, sealed_w, sealer, kex, opts, stats, &link
    ));
    let mut down = pin!(sealed_to_plain(
        sealed_r,
        plain_w,
        opener,
        kex,
        opts.rekey_interval,
        leftover,
        stats,
        &link
    ));
    let mut watch = pin!(watch(opts, kex, stats, &link, heard_before));
    let (mut up_done, mut rest) = (false, None);
    poll_fn(|cx| loop {
        link.kick.store(false, Ordering::Relaxed);
        if !up_done {
            if let Poll::Ready(r) = up.as_mut().poll(cx) {
                r?;
                up_done = true;
            }
        }
        if rest.is_none() {
            if let Poll::Ready(r) = down.as_mut().poll(cx) {
                rest = Some(r?);
            }
        }
        if up_done {
            if let Some(r) = rest.take() {
                return Poll::Ready(Ok(r));
            }
        }
        if let Poll::Ready(e) = watch.as_mut().poll(cx) {
            return Poll::Ready(Err(e));
        }
        // A flag raised by one future concerns another, polled before it: again.
        if !link.kick.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
    })
    .await
}

fn expired(interval: Option<Duration>) -> PumpError {
    PumpError::Kex(KexFailure::Expired(interval.unwrap_or_default()))
}

/// The exchange's part of the sealing direction, before its next record (`SessionKex::to_send`):
/// a connector past the hard limit stops; a KeyShare that is due, or the record this side owes,
/// is written here (each direction moving after its own switch point).
async fn kex_step<W: AsyncWrite + Unpin>(
    sealed: &mut W,
    sealer: &mut Sealer,
    kex: &SessionKex,
    opts: PumpOptions,
) -> Result<(), PumpError> {
    let mut out = Vec::new();
    kex.to_send(
        sealer,
        opts.rekey_interval,
        std::time::Instant::now(),
        &mut out,
    )?;
    for r in out {
        sealed.write_all(&r).await.map_err(PumpError::Sealed)?;
    }
    Ok(())
}

/// Reads what `socket` has now into `buf`, taking the buffer from `make` if there is none; on
/// "would block" the buffer is given back (the connection is idle) and `None` returned.
fn try_fill(
    socket: &impl PlainRead,
    buf: &mut Option<Vec<u8>>,
    make: impl FnOnce() -> Vec<u8>,
    range: std::ops::Range<usize>,
) -> std::io::Result<Option<Read>> {
    let b = buf.get_or_insert_with(make);
    match socket.read_now(&mut b[range]) {
        Ok(r) => Ok(Some(r)),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            *buf = None;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

async fn plain_to_sealed<R, W>(
    plain: &R,
    sealed: &mut W,
    sealer: &mut Sealer,
    kex: &SessionKex,
    opts: PumpOptions,
    stats: &PumpStats,
    link: &Link,
) -> Result<(), PumpError>
where
    R: PlainRead,
    W: AsyncWrite + Unpin,
{
    // [room for a rekey record][record header][plaintext][tag], only while data moves.
    let data_at = OVERHEAD + HEADER_LEN;
    let full = opts.record_size;
    let small = SMALL_ROOM.min(full);
    // Plaintext room of the next buffer taken: small after a burst of small reads (requests,
    // keystrokes), so that each of them does not zero a whole record's buffer; full after a
    // burst that filled a buffer (and at once, mid-burst, when a small buffer fills).
    let mut room = small;
    let mut burst_max = 0;
    let mut buf: Option<Vec<u8>> = None;
    loop {
        kex_step(sealed, sealer, kex, opts).await?;
        if buf.is_none() {
            tokio::select! {
                r = plain.readable() => r.map_err(PumpError::Plain)?,
                () = kex.wake.notified() => continue,
                () = link.kex_wake() => continue,
                d = link.due(false) => {
                    send_keepalive(sealed, sealer, matches!(d, Due::Pong)).await?;
                    continue;
                }
            }
        }
        let have = buf.as_ref().map_or(room, |b| b.len() - data_at - TAG_LEN);
        let range = data_at..data_at + have;
        // Drained: the burst is over, and its largest read sizes the next one's buffer.
        let mut burst_over = |burst_max: &mut usize| {
            room = if *burst_max >= small { full } else { small };
            *burst_max = 0;
        };
        let Some(Read { n, drained }) = try_fill(
            plain,
            &mut buf,
            || vec![0u8; data_at + have + TAG_LEN],
            range,
        )
        .map_err(PumpError::Plain)?
        else {
            burst_over(&mut burst_max);
            continue;
        };
        burst_max = burst_max.max(n);
        let Some(b) = buf.as_mut() else { continue };
        if n == 0 {
            // The end of this stream in our direction; the session stays open (no TCP FIN).
            let mut close = [0u8; OVERHEAD];
            sealer.seal_close(&mut close)?;
            sealed.write_all(&close).await.map_err(PumpError::Sealed)?;
            if opts.fin_after_close.at(std::time::Instant::now()) {
                sealed.shutdown().await.map_err(PumpError::Sealed)?;
                link.set(&link.own_fin);
                link.set(&link.sent_close);
                return Ok(());
            }
            sealed.flush().await.map_err(PumpError::Sealed)?;
            link.set(&link.sent_close);
            // Keepalives still go, under the next stream's key, until the peer's close record
            // has passed too (and the Pongs owed by then); so does the fresh hybrid exchange
            // (PROTOCOL.md §4.5: a half-closed stream keeps getting fresh keys).
            loop {
                tokio::select! {
                    d = link.due(true) => match d {
                        Due::Done => {
                            // What the exchange still owes goes now; the rest between streams.
                            kex_step(sealed, sealer, kex, opts).await?;
                            return Ok(());
                        }
                        d => send_keepalive(sealed, sealer, matches!(d, Due::Pong)).await?,
                    },
                    () = kex.wake.notified() => {}
                    () = link.kex_wake() => {}
                }
                kex_step(sealed, sealer, kex, opts).await?;
            }
        }
        let mut start = OVERHEAD;
        if sealer.rekey_due() {
            let room: &mut [u8; OVERHEAD] = (&mut b[..OVERHEAD])
                .try_into()
                .map_err(|_| RecordError::Buffer(OVERHEAD))?;
            sealer.seal_rekey(room)?;
            stats.add(&stats.rekeys_sent, 1, |t| &t.rekeys);
            start = 0;
        }
        let end = data_at + n + TAG_LEN;
        sealer.seal_data(&mut b[OVERHEAD..end])?;
        link.held_up(sealed.write_all(&b[start..end]))
            .await
            .map_err(PumpError::Sealed)?;
        stats.add(&stats.sent, n as u64, |t| &t.sent);
        if drained {
            // Nothing more queued (and readiness cleared): wait without a buffer.
            buf = None;
            burst_over(&mut burst_max);
        } else if n == have && have < full {
            // A small buffer filled: more is probably there; read it a record at a time.
            buf = Some(vec![0u8; data_at + full + TAG_LEN]);
        }
        // Keepalives owed are sent between records too.
        while let Some(d) = link.take_due(false) {
            send_keepalive(sealed, sealer, matches!(d, Due::Pong)).await?;
        }
    }
}

/// Plaintext room of the buffer plain → sealed takes after a burst of small reads (see
/// `plain_to_sealed`): zeroing it costs about 1/16 of a 64 KiB record's.
const SMALL_ROOM: usize = 4096;

/// Room for new bytes from the sealed socket at each read: one largest record, so that one
/// read usually brings several small records or a whole large one.
const READ_CHUNK: usize = MAX_RECORD_LEN;
/// Most plaintext records handed to the plaintext socket in one vectored write.
const MAX_IOV: usize = 16;

/// Writes `pieces` (offset, length) of `buf` with as few vectored writes as the socket takes.
async fn write_pieces<W: AsyncWrite + Unpin>(
    plain: &mut W,
    buf: &[u8],
    pieces: &[(usize, usize)],
) -> std::io::Result<()> {
    let mut iov = [IoSlice::new(&[]); MAX_IOV];
    let n = pieces.len().min(MAX_IOV);
    for (slot, &(at, len)) in iov.iter_mut().zip(&pieces[..n]) {
        *slot = IoSlice::new(&buf[at..at + len]);
    }
    let mut left = &mut iov[..n];
    while !left.is_empty() {
        let written = plain.write_vectored(left).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut left, written);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn sealed_to_plain<R, W>(
    sealed: &R,
    plain: &mut W,
    opener: &mut Opener,
    kex: &SessionKex,
    rekey_interval: Option<Duration>,
    leftover: Vec<u8>,
    stats: &PumpStats,
    link: &Link,
) -> Result<Vec<u8>, PumpError>
where
    R: AsRef<TcpStream>,
    W: AsyncWrite + Unpin,
{
    let sealed = sealed.as_ref();
    // Holds at most one partial record and a chunk; dropped whenever it is empty and the
    // socket is drained, so an idle connection holds none.
    let mut buf = leftover;
    let mut start = 0;
    let mut drained = false;
    // Waits for bytes, or (after the peer's close record) for ours to have gone too.
    let wait = |buf: &mut Vec<u8>| {
        if buf.is_empty() {
            // Idle between records: give the buffer back while waiting.
            *buf = Vec::new();
        }
        poll_fn(|cx| {
            if link.both_closed() {
                return Poll::Ready(Ok(()));
            }
            sealed.poll_read_ready(cx).map_err(PumpError::Sealed)
        })
    };
    // The peer's close record has passed (and been handed on as an end of stream).
    let mut after_close = opener.is_closed();
    loop {
        // Open every complete record buffered (up to MAX_IOV data records), then hand their
        // plaintexts to the plaintext socket in one vectored write.
        let mut pieces = [(0usize, 0usize); MAX_IOV];
        let mut count = 0;
        let mut need = HEADER_LEN;
        let mut closed = false;
        let mut failed = None;
        let mut next_stream = false;
        let mut opened = false;
        // The listener refuses records under hybrid keys past their hard limit (§4.5).
        if kex.role() == crate::proto::handshake::Role::Listener
            && buf.len() > start
            && kex.clock(rekey_interval).expired(std::time::Instant::now())
        {
            return Err(expired(rekey_interval));
        }
        while count < MAX_IOV {
            if after_close && link.both_closed() {
                // The stream is over: what is left belongs to the session.
                next_stream = true;
                break;
            }
            let Some(h) = buf[start..].first_chunk::<HEADER_LEN>() else {
                break;
            };
            let total = match parse_header(h) {
                Ok((kind, _)) if after_close && kind == RecordType::StreamInfo => {
                    // The next stream's first record: the listener opens it.
                    next_stream = true;
                    break;
                }
                Ok((_, total)) => total,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            if buf.len() - start < total {
                need = total;
                break;
            }
            match opener.open(&mut buf[start..start + total]) {
                Ok(Opened::Data(d)) => {
                    pieces[count] = (start + HEADER_LEN, d.len());
                    count += 1;
                }
                Ok(Opened::Rekey) => {
                    stats.add(&stats.rekeys_received, 1, |t| &t.rekeys);
                }
                Ok(Opened::Close) => closed = true,
                Ok(Opened::Ping) => link.owe_pong(),
                Ok(Opened::KeyShare(kind, body)) => {
                    // The fresh hybrid exchange (PROTOCOL.md §4.5); its answer is the writer's.
                    if let Err(e) = kex.receive(opener, kind, body, std::time::Instant::now()) {
                        return Err(e.into());
                    }
                    link.kick.store(true, Ordering::Relaxed);
                }
                Ok(Opened::Pong) => {}
                Ok(Opened::Alert(a)) => failed = Some(RecordError::Refused(a)),
                Err(e) => failed = Some(e),
            }
            if failed.is_some() {
                break;
            }
            opened = true;
            start += total;
            if closed {
                break;
            }
        }
        if opened {
            // Any record opened: the peer is alive.
            link.heard();
            stats.heard();
        }
        if count > 0 {
            // What was authenticated before a failure is still delivered, as record by record.
            link.held_up(write_pieces(plain, &buf, &pieces[..count]))
                .await
                .map_err(PumpError::Plain)?;
            let delivered: usize = pieces[..count].iter().map(|p| p.1).sum();
            stats.add(&stats.received, delivered as u64, |t| &t.received);
        }
        if let Some(e) = failed {
            return Err(e.into());
        }
        if next_stream {
            // Only the bytes that follow, in a buffer of their own size: the session may now
            // wait between streams for a long time, and must not hold a read chunk meanwhile.
            return Ok(buf.split_off(start));
        }
        if closed {
            // The end of this stream from the peer: passed on at once. Keepalives may follow
            // the close record until ours has gone too; then what follows belongs to the next
            // stream (or is refused there by the record layer).
            plain.shutdown().await.map_err(PumpError::Plain)?;
            after_close = true;
            link.set(&link.got_close);
            continue;
        }
        if count == MAX_IOV {
            continue;
        }
        // Keep only the partial record, then read more.
        buf.drain(..start);
        start = 0;
        if drained {
            // The last read took everything queued: wait for more.
            drained = false;
            wait(&mut buf).await?;
            continue;
        }
        let want = need.max(buf.len() + READ_CHUNK);
        if buf.capacity() < want {
            buf.reserve_exact(want - buf.len());
        }
        let room = buf.capacity() - buf.len();
        let read = read_now(room, |short| {
            sealed.try_io(Interest::READABLE, || {
                drains(room, short, sealed.try_read_buf(&mut buf))
            })
        });
        let n = match read {
            Ok(r) => {
                drained = r.drained;
                r.n
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                wait(&mut buf).await?;
                continue;
            }
            Err(e) => return Err(PumpError::Sealed(e)),
        };
        if n == 0 {
            if after_close && buf.is_empty() {
                // The peer's FIN behind its close record (its last stream): it cannot answer a
                // Ping any more. A clean end of its direction.
                link.set(&link.peer_fin);
                return Ok(Vec::new());
            }
            // No close record: truncation.
            return Err(RecordError::Truncated.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::key_schedule::Secret;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A connected loopback TCP pair.
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// Runs a pump between a local "plain" pair and a "sealed" pair whose far end the test
    /// drives as the peer, and returns the pump's result.
    async fn run_pump(
        opts: PumpOptions,
        peer: impl FnOnce(TcpStream, TcpStream, Sealer) -> tokio::task::JoinHandle<()>,
    ) -> Result<Vec<u8>, PumpError> {
        let (mut ours, far) = rig().await;
        let peer_task = peer(far.sealed, far.app, far.sealer);
        let r = ours.pump(opts).await;
        peer_task.abort();
        r
    }

    /// Our end of one stream's pump under fixed keys: its sockets' halves and record layer.
    struct Ours {
        pr: tokio::net::tcp::OwnedReadHalf,
        pw: tokio::net::tcp::OwnedWriteHalf,
        sr: tokio::net::tcp::OwnedReadHalf,
        sw: tokio::net::tcp::OwnedWriteHalf,
        sealer: Sealer,
        opener: Opener,
        stats: PumpStats,
    }

    /// The far ends: the peer's sealed socket and record layer, and the local application.
    struct Far {
        sealed: TcpStream,
        app: TcpStream,
        sealer: Sealer,
        opener: Opener,
    }

    async fn rig() -> (Ours, Far) {
        let (plain_local, app) = tcp_pair().await;
        let (sealed_local, sealed) = tcp_pair().await;
        let ours = Secret::from_bytes([1; 32]);
        let theirs = Secret::from_bytes([2; 32]);
        let far = Far {
            sealed,
            app,
            sealer: Sealer::new(theirs.clone(), 1 << 30),
            opener: Opener::new(ours.clone()),
        };
        let (pr, pw) = plain_local.into_split();
        let (sr, sw) = sealed_local.into_split();
        let ours = Ours {
            pr,
            pw,
            sr,
            sw,
            sealer: Sealer::new(ours, 1 << 30),
            opener: Opener::new(theirs),
            stats: PumpStats::default(),
        };
        (ours, far)
    }

    impl Ours {
        async fn pump(&mut self, opts: PumpOptions) -> Result<Vec<u8>, PumpError> {
            pump(
                &self.pr,
                &mut self.pw,
                &self.sr,
                &mut self.sw,
                &mut self.sealer,
                &mut self.opener,
                &kex(),
                Vec::new(),
                opts,
                &self.stats,
            )
            .await
        }
    }

    fn kex() -> SessionKex {
        SessionKex::new(
            crate::proto::handshake::Role::Connector,
            std::time::Instant::now(),
        )
    }

    const OPTS: PumpOptions = PumpOptions {
        record_size: 1024,
        rekey_interval: None,
        idle_timeout: None,
        dead_peer_timeout: None,
        fin_after_close: FinAfterClose::No,
    };

    #[tokio::test]
    async fn a_close_record_is_passed_on_at_once_and_the_session_stays_open() {
        let (mut ours, far) = rig().await;
        let Far {
            sealed: mut sealed_peer,
            app: mut plain_app,
            sealer: mut peer_sealer,
            opener: mut peer_opener,
        } = far;
        let peer = tokio::spawn(async move {
            // The peer's close record, and right behind it (same write) a byte of what follows.
            let mut close = [0u8; OVERHEAD];
            peer_sealer.seal_close(&mut close).unwrap();
            let mut w = close.to_vec();
            w.push(0xAB);
            sealed_peer.write_all(&w).await.unwrap();
            // The application sees the end of stream without any TCP FIN on the sealed side...
            let mut sink = Vec::new();
            plain_app.read_to_end(&mut sink).await.unwrap();
            assert!(sink.is_empty());
            // ...and its own end becomes our close record, again without a FIN.
            plain_app.shutdown().await.unwrap();
            let mut rec = [0u8; OVERHEAD];
            sealed_peer.read_exact(&mut rec).await.unwrap();
            assert_eq!(peer_opener.open(&mut rec).unwrap(), Opened::Close);
            (sealed_peer, plain_app)
        });
        let rest = ours.pump(OPTS).await.unwrap();
        assert_eq!(
            rest,
            vec![0xAB],
            "the bytes after the close record are kept"
        );
        assert!(
            rest.capacity() < 1024,
            "the session waits for its next stream without a read chunk: {}",
            rest.capacity()
        );
        assert!(ours.sealer.is_closed() && ours.opener.is_closed());
        let (mut sealed_peer, _app) = peer.await.unwrap();
        // The session is still open: nothing more, and no end of stream, has arrived.
        let mut probe = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_millis(50), sealed_peer.read(&mut probe)).await;
        assert!(r.is_err(), "the sealed socket stays open: {r:?}");
    }

    #[tokio::test]
    async fn an_end_of_stream_without_a_close_record_is_truncation() {
        let r = run_pump(OPTS, |sealed, app, _| {
            tokio::spawn(async move {
                drop(sealed);
                let _keep = app;
                std::future::pending::<()>().await;
            })
        })
        .await;
        assert!(
            matches!(r, Err(PumpError::Record(RecordError::Truncated))),
            "{r:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_ends_after_idle_timeout_and_a_busy_one_does_not() {
        let opts = PumpOptions {
            idle_timeout: Some(Duration::from_secs(60)),
            ..OPTS
        };
        // Idle from the start: ended.
        let r = run_pump(opts, |sealed, app, _| {
            tokio::spawn(async move {
                let _keep = (sealed, app);
                std::future::pending::<()>().await;
            })
        })
        .await;
        assert!(
            matches!(r, Err(PumpError::Idle(d)) if d == Duration::from_secs(60)),
            "{r:?}"
        );

        // A byte from the application every 30 s for 5 minutes, then both ends close: not idle.
        let r = run_pump(opts, |mut sealed, mut app, mut sealer| {
            tokio::spawn(async move {
                for _ in 0..10 {
                    app.write_all(b"x").await.unwrap();
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                app.shutdown().await.unwrap();
                let mut close = [0u8; OVERHEAD];
                sealer.seal_close(&mut close).unwrap();
                sealed.write_all(&close).await.unwrap();
                sealed.shutdown().await.unwrap();
                let mut sink = Vec::new();
                let _ = sealed.read_to_end(&mut sink).await;
                let _ = app.read_to_end(&mut sink).await;
            })
        })
        .await;
        assert!(r.is_ok(), "{r:?}");
    }

    /// Plays the peer of a stream on `sealed`: opens every record with `opener`, answers each
    /// Ping with a Pong (if `answer`), and reports what it opened.
    fn keepalive_peer(
        mut sealed: TcpStream,
        mut sealer: Sealer,
        mut opener: Opener,
        answer: bool,
        seen: std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let mut h = [0u8; HEADER_LEN];
                if sealed.read_exact(&mut h).await.is_err() {
                    return;
                }
                let (_, total) = parse_header(&h).unwrap();
                let mut rec = vec![0u8; total];
                rec[..HEADER_LEN].copy_from_slice(&h);
                sealed.read_exact(&mut rec[HEADER_LEN..]).await.unwrap();
                let what = match opener.open(&mut rec).unwrap() {
                    Opened::Ping => "ping",
                    Opened::Pong => "pong",
                    Opened::Close => "close",
                    Opened::Data(_) => "data",
                    _ => "other",
                };
                seen.lock().unwrap().push(what);
                if what == "ping" && answer {
                    sealed
                        .write_all(&sealer.seal_pong().unwrap())
                        .await
                        .unwrap();
                }
            }
        })
    }

    /// A stream over a live peer that stays quiet on both sides for several
    /// `dead_peer_timeout`s is kept (Pings answered keep it), and one over a silent peer is
    /// ended after the timeout, a Ping unanswered (PROTOCOL.md §4.4; time stepped).
    #[tokio::test(start_paused = true)]
    async fn keepalives_keep_a_quiet_stream_over_a_live_peer_and_end_it_over_a_silent_one() {
        let t = Duration::from_secs(20);
        let opts = PumpOptions {
            dead_peer_timeout: Some(t),
            ..OPTS
        };
        let ours = Secret::from_bytes([1; 32]);
        for answer in [true, false] {
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let (seen2, ours2) = (seen.clone(), ours.clone());
            let started = tokio::time::Instant::now();
            let pump = run_pump(opts, move |sealed, app, sealer| {
                let peer = keepalive_peer(sealed, sealer, Opener::new(ours2), answer, seen2);
                tokio::spawn(async move {
                    // Quiet: the application sends nothing, the peer nothing but Pongs.
                    let _keep = (app, peer);
                    std::future::pending::<()>().await;
                })
            });
            let r = tokio::time::timeout(5 * t, pump).await;
            let pings = seen
                .lock()
                .unwrap()
                .iter()
                .filter(|w| **w == "ping")
                .count();
            if answer {
                assert!(r.is_err(), "a quiet stream over a live peer is kept: {r:?}");
                assert!(pings >= 9, "one Ping per half timeout of silence: {pings}");
            } else {
                let r = r.expect("ended");
                assert!(
                    matches!(r, Err(PumpError::PeerSilent(d)) if d == t),
                    "{r:?}"
                );
                assert_eq!(started.elapsed(), t, "ended at the timeout, not later");
                assert_eq!(pings, 1, "one Ping, unanswered");
            }
        }
    }

    /// A local client that stops reading holds the pump up: that is flow control, not a
    /// silent peer, and no silence is counted while it lasts (time stepped).
    #[tokio::test(start_paused = true)]
    async fn a_local_client_that_stops_reading_is_not_a_silent_peer() {
        let t = Duration::from_secs(2);
        let opts = PumpOptions {
            dead_peer_timeout: Some(t),
            ..OPTS
        };
        let pump = run_pump(opts, |mut sealed, app, mut sealer| {
            tokio::spawn(async move {
                // The application never reads; the peer sends until the buffers are full.
                let _keep = app;
                let mut rec = vec![0u8; 16 * 1024 + OVERHEAD];
                loop {
                    sealer.seal_data(&mut rec).unwrap();
                    if sealed.write_all(&rec).await.is_err() {
                        return;
                    }
                }
            })
        });
        let r = tokio::time::timeout(10 * t, pump).await;
        assert!(r.is_err(), "a held-up stream is not taken for dead: {r:?}");
    }

    /// A Ping from the peer is answered with one Pong inside a stream and after our close
    /// record (under the next stream's key), and the stream then ends cleanly.
    #[tokio::test]
    async fn pings_are_answered_inside_a_stream_and_after_our_close() {
        let (mut ours, far) = rig().await;
        let Far {
            sealed: mut sealed_peer,
            app: mut plain_app,
            sealer: mut peer_sealer,
            opener: mut peer_opener,
        } = far;
        let peer = tokio::spawn(async move {
            let mut rec = [0u8; OVERHEAD];
            // Inside the stream.
            sealed_peer
                .write_all(&peer_sealer.seal_ping().unwrap())
                .await
                .unwrap();
            sealed_peer.read_exact(&mut rec).await.unwrap();
            assert_eq!(peer_opener.open(&mut rec), Ok(Opened::Pong));
            // The application ends its side: our close record; then a Ping after it.
            plain_app.shutdown().await.unwrap();
            sealed_peer.read_exact(&mut rec).await.unwrap();
            assert_eq!(peer_opener.open(&mut rec), Ok(Opened::Close));
            sealed_peer
                .write_all(&peer_sealer.seal_ping().unwrap())
                .await
                .unwrap();
            sealed_peer.read_exact(&mut rec).await.unwrap();
            assert_eq!(
                peer_opener.open(&mut rec),
                Ok(Opened::Pong),
                "after our close"
            );
            // Its own close ends the stream.
            let mut close = [0u8; OVERHEAD];
            peer_sealer.seal_close(&mut close).unwrap();
            sealed_peer.write_all(&close).await.unwrap();
            let mut sink = Vec::new();
            plain_app.read_to_end(&mut sink).await.unwrap();
            (sealed_peer, plain_app)
        });
        let opts = PumpOptions {
            dead_peer_timeout: Some(Duration::from_secs(20)),
            ..OPTS
        };
        let rest = ours.pump(opts).await.unwrap();
        assert!(rest.is_empty());
        assert!(ours.sealer.is_closed() && ours.opener.is_closed());
        peer.await.unwrap();
    }

    /// A read that fills less than its buffer reports the socket drained and clears its
    /// readiness, and bytes that arrive afterwards are still seen: the next wait wakes for them.
    #[tokio::test]
    async fn a_short_read_drains_and_later_bytes_still_wake_the_reader() {
        let (a, mut b) = tcp_pair().await;
        b.write_all(b"hello").await.unwrap();
        a.readable().await.unwrap();
        let mut buf = [0u8; 64];
        let r = PlainRead::read_now(&a, &mut buf).unwrap();
        assert_eq!((r.n, r.drained), (5, true));
        assert_eq!(&buf[..5], b"hello");
        // Readiness was cleared with the short read: nothing is read without a new arrival.
        let e = PlainRead::read_now(&a, &mut buf).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        b.write_all(&[7u8; 64]).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), a.readable())
            .await
            .expect("bytes sent after a draining read wake the reader")
            .unwrap();
        // A read that fills its buffer does not claim the socket drained.
        let r = PlainRead::read_now(&a, &mut buf).unwrap();
        assert_eq!((r.n, r.drained), (64, false));
        drop(b);
        a.readable().await.unwrap();
        let r = PlainRead::read_now(&a, &mut buf).unwrap();
        assert_eq!((r.n, r.drained), (0, false), "the end of the stream");
    }

    /// The task of every established connection holds the pump's state: each direction's and
    /// the idle watch's once, not copied a second time (memory per idle connection).
    #[tokio::test]
    async fn the_pump_holds_each_direction_once() {
        let (mut a, mut b) = tcp_pair().await;
        let (pr, mut pw) = a.split();
        let (sr, mut sw) = b.split();
        let s = Secret::from_bytes([1; 32]);
        let (mut sealer, mut opener) = (Sealer::new(s.clone(), 1 << 30), Opener::new(s));
        let stats = PumpStats::default();
        let link = Link::new();
        let k = kex();
        let parts = {
            let up = plain_to_sealed(&pr, &mut sw, &mut sealer, &k, OPTS, &stats, &link);
            let up = std::mem::size_of_val(&up);
            let down = sealed_to_plain(
                &sr,
                &mut pw,
                &mut opener,
                &k,
                None,
                Vec::new(),
                &stats,
                &link,
            );
            up + std::mem::size_of_val(&down)
                + std::mem::size_of_val(&watch(OPTS, &k, &stats, &link, None))
                + std::mem::size_of_val(&link)
        };
        let whole = pump(
            &pr,
            &mut pw,
            &sr,
            &mut sw,
            &mut sealer,
            &mut opener,
            &k,
            Vec::new(),
            OPTS,
            &stats,
        );
        let whole = std::mem::size_of_val(&whole);
        // The arguments and the join's own state are a few hundred bytes at most.
        assert!(
            whole < parts + 512,
            "pump future {whole} B against its parts' {parts} B"
        );
    }
}
