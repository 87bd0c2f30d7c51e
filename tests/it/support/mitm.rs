//! An active network adversary for the daemon tests: a man-in-the-middle TCP proxy that sits
//! between a real connector and a real listener, understands the framing (handshake messages
//! `type | u16 len | body`, records `type | u24 len | ciphertext+tag`) and manipulates one chosen
//! connection while passing every other one through untouched. Plus a plaintext echo service that
//! keeps every byte it received, and how each of its connections ended.
//!
//! Threads and blocking std sockets; everything is bounded by read timeouts so a test cannot hang.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long any proxy or service socket may stay silent before it is given up on.
const IDLE: Duration = Duration::from_secs(30);

/// A direction of the sealed stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Connector → listener.
    Up,
    /// Listener → connector.
    Down,
}

/// Handshake messages per direction before the records start: ConnectorHello + ConnectorAuth up,
/// ListenerHello + ListenerAuth down.
pub const HANDSHAKE_MESSAGES: usize = 2;

/// One frame of a direction: a handshake message or a record, header included.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Position in the direction: 0 and 1 are handshake messages, 2.. are records.
    pub index: usize,
    pub bytes: Vec<u8>,
}

impl Frame {
    pub fn is_record(&self) -> bool {
        self.index >= HANDSHAKE_MESSAGES
    }
}

/// Names a frame of a direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// The i-th handshake message (0 or 1).
    Hs(usize),
    /// The i-th record (0-based, rekey and close records count; the connector's `Rec(0)` is its
    /// StreamInfo record).
    Rec(usize),
    /// The first close record (type 2).
    Close,
    /// Record `rec` (0-based) of stream `stream` (1-based) of a session that carries several
    /// (PROTOCOL.md §4.3): a direction's stream ends with its close record, so up, `rec: 0` is
    /// the stream's StreamInfo record; down, the listener's first record of the stream.
    InStream { stream: usize, rec: usize },
    /// The close record of stream `stream` (1-based).
    CloseOf(usize),
}

/// Where a record sits in its session's streams: (stream, 1-based; record within it, 0-based).
type StreamPos = Option<(usize, usize)>;

impl Unit {
    fn matches(self, index: usize, frame: &[u8], pos: StreamPos) -> bool {
        match self {
            Unit::Hs(i) => index == i,
            Unit::Rec(i) => index == HANDSHAKE_MESSAGES + i,
            Unit::Close => index >= HANDSHAKE_MESSAGES && frame.first() == Some(&2),
            Unit::InStream { stream, rec } => pos == Some((stream, rec)),
            Unit::CloseOf(n) => pos.is_some_and(|(s, _)| s == n) && frame.first() == Some(&2),
        }
    }

    pub fn is_handshake(self) -> bool {
        matches!(self, Unit::Hs(_))
    }
}

/// What the adversary does to the one connection it is armed for.
#[derive(Debug, Clone)]
pub enum Attack {
    /// Flip bit `bit` of byte `offset` (header included; negative counts from the end) of frame
    /// `unit`.
    Flip {
        dir: Dir,
        unit: Unit,
        offset: isize,
        bit: u8,
    },
    /// Do not forward the frame.
    Drop { dir: Dir, unit: Unit },
    /// Forward the frame twice.
    Duplicate { dir: Dir, unit: Unit },
    /// Forward the frame after `unit` before `unit`.
    Swap { dir: Dir, unit: Unit },
    /// Instead of forwarding `at`, send a bare FIN (shutdown write) to the receiver and forward
    /// nothing more in this direction.
    Truncate { dir: Dir, at: Unit },
    /// Forward the first `after` frames (handshake messages count) of this session, then send
    /// `with` (frames of another session) instead of the rest.
    Splice {
        dir: Dir,
        after: usize,
        with: Vec<Vec<u8>>,
    },
    /// Send the frame back to its sender instead of forwarding it.
    Reflect { dir: Dir, unit: Unit },
    /// Never contact the listener: answer the connector with these recorded listener bytes.
    ReplayDown { bytes: Vec<u8> },
    /// At frame `at`, send `with` (frames of another session) instead of it and the rest.
    SpliceAt {
        dir: Dir,
        at: Unit,
        with: Vec<Vec<u8>>,
    },
    /// At frame `at`, send a copy of the earlier frame `copy` of the same direction of this
    /// session: before `at`, instead of it, or after it.
    Replay {
        dir: Dir,
        at: Unit,
        copy: Unit,
        when: When,
    },
}

/// Where [`Attack::Replay`] puts its copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Before,
    Instead,
    After,
}

impl Attack {
    fn dir(&self) -> Option<Dir> {
        match self {
            Attack::Flip { dir, .. }
            | Attack::Drop { dir, .. }
            | Attack::Duplicate { dir, .. }
            | Attack::Swap { dir, .. }
            | Attack::Truncate { dir, .. }
            | Attack::Splice { dir, .. }
            | Attack::Reflect { dir, .. }
            | Attack::SpliceAt { dir, .. }
            | Attack::Replay { dir, .. } => Some(*dir),
            Attack::ReplayDown { .. } => None,
        }
    }

    /// The frame that sets it off, for [`Mitm::arm_live`] (`Splice` counts frames from the
    /// start of a connection and `ReplayDown` acts at accept: neither can be armed live).
    fn trigger(&self) -> Option<Unit> {
        match self {
            Attack::Flip { unit, .. }
            | Attack::Drop { unit, .. }
            | Attack::Duplicate { unit, .. }
            | Attack::Swap { unit, .. }
            | Attack::Reflect { unit, .. } => Some(*unit),
            Attack::Truncate { at, .. }
            | Attack::SpliceAt { at, .. }
            | Attack::Replay { at, .. } => Some(*at),
            Attack::Splice { .. } | Attack::ReplayDown { .. } => None,
        }
    }
}

/// Both directions of one connection as the proxy saw them (before manipulation).
#[derive(Debug, Clone, Default)]
pub struct Session {
    pub up: Vec<Frame>,
    pub down: Vec<Frame>,
    /// Set when both directions have ended.
    pub finished: bool,
}

impl Session {
    pub fn bytes(&self, dir: Dir) -> Vec<u8> {
        let frames = match dir {
            Dir::Up => &self.up,
            Dir::Down => &self.down,
        };
        frames
            .iter()
            .flat_map(|f| f.bytes.iter().copied())
            .collect()
    }

    pub fn frames(&self, dir: Dir) -> &[Frame] {
        match dir {
            Dir::Up => &self.up,
            Dir::Down => &self.down,
        }
    }
}

/// The man in the middle.
pub struct Mitm {
    pub addr: SocketAddr,
    armed: Arc<Mutex<Option<Attack>>>,
    /// Every connection so far, in accept order.
    pub sessions: Arc<Mutex<Vec<Arc<Mutex<Session>>>>>,
    /// How many connections had an attack armed.
    pub attacked: Arc<AtomicUsize>,
    /// How many manipulations actually fired (a frame was changed, dropped, moved or injected).
    pub fired: Arc<AtomicUsize>,
    /// The attack of [`Mitm::arm_live`], until a connection takes it.
    live: LiveSlot,
    /// The connection (accept order) that took the last live attack.
    pub live_taken_by: Arc<Mutex<Option<usize>>>,
}

/// The attack armed live, shared by every connection.
type LiveSlot = Arc<Mutex<Option<Attack>>>;

impl Mitm {
    /// A proxy on a fresh loopback port forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> Mitm {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let armed: Arc<Mutex<Option<Attack>>> = Arc::default();
        let sessions: Arc<Mutex<Vec<Arc<Mutex<Session>>>>> = Arc::default();
        let attacked = Arc::new(AtomicUsize::new(0));
        let fired = Arc::new(AtomicUsize::new(0));
        let live: LiveSlot = Arc::default();
        let live_taken_by: Arc<Mutex<Option<usize>>> = Arc::default();
        let (a, s, n, f) = (
            armed.clone(),
            sessions.clone(),
            attacked.clone(),
            fired.clone(),
        );
        let (lv, lt) = (live.clone(), live_taken_by.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                let attack = a.lock().unwrap().take();
                if attack.is_some() {
                    n.fetch_add(1, Ordering::SeqCst);
                }
                let session = Arc::new(Mutex::new(Session::default()));
                let index = {
                    let mut all = s.lock().unwrap();
                    all.push(session.clone());
                    all.len() - 1
                };
                let f = f.clone();
                let live = Live {
                    slot: lv.clone(),
                    taken_by: lt.clone(),
                    index,
                };
                std::thread::spawn(move || serve(c, upstream, attack, session, f, live));
            }
        });
        Mitm {
            addr,
            armed,
            sessions,
            attacked,
            fired,
            live,
            live_taken_by,
        }
    }

    /// `attack` for whichever connection, open already or not, first meets its frame (any
    /// connection without an attack of its own in that direction): for a pooled session, which
    /// connection will carry a given stream is not known in advance. Only one live attack at a
    /// time; it fires once.
    pub fn arm_live(&self, attack: Attack) {
        assert!(
            attack.trigger().is_some(),
            "{attack:?} cannot be armed live"
        );
        *self.live_taken_by.lock().unwrap() = None;
        *self.live.lock().unwrap() = Some(attack);
    }

    /// True while the live attack waits for its frame.
    pub fn is_live_armed(&self) -> bool {
        self.live.lock().unwrap().is_some()
    }

    /// Withdraws a live attack that has not fired.
    pub fn disarm_live(&self) {
        *self.live.lock().unwrap() = None;
    }

    /// The next accepted connection (only that one) gets `attack`.
    pub fn arm(&self, attack: Attack) {
        *self.armed.lock().unwrap() = Some(attack);
    }

    /// True when the armed attack has not been used yet.
    pub fn is_armed(&self) -> bool {
        self.armed.lock().unwrap().is_some()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().unwrap().len()
    }

    /// A copy of connection `i` once both its directions have ended (waits up to 10 s).
    pub fn finished_session(&self, i: usize) -> Session {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.sessions.lock().unwrap().get(i).cloned();
            if let Some(s) = s {
                let s = s.lock().unwrap().clone();
                if s.finished || Instant::now() > deadline {
                    return s;
                }
            }
            assert!(Instant::now() < deadline, "no session {i}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Sockets a direction writes to; shared because reflection writes back to the sender.
type Writer = Arc<Mutex<TcpStream>>;

/// A connection's view of the live attack slot.
#[derive(Clone)]
struct Live {
    slot: LiveSlot,
    taken_by: Arc<Mutex<Option<usize>>>,
    /// This connection, in accept order.
    index: usize,
}

fn serve(
    down: TcpStream,
    upstream: SocketAddr,
    attack: Option<Attack>,
    session: Arc<Mutex<Session>>,
    fired: Arc<AtomicUsize>,
    live: Live,
) {
    let _ = down.set_nodelay(true);
    let _ = down.set_read_timeout(Some(IDLE));
    if let Some(Attack::ReplayDown { bytes }) = &attack {
        // Impersonate the listener with a recorded flight; read what the connector says.
        let mut d = down;
        fired.fetch_add(1, Ordering::SeqCst);
        let _ = d.write_all(bytes);
        let mut sink = Vec::new();
        let _ = d.read_to_end(&mut sink);
        let _ = d.shutdown(Shutdown::Both);
        session.lock().unwrap().finished = true;
        return;
    }
    let up = match TcpStream::connect(upstream) {
        Ok(u) => u,
        Err(_) => {
            session.lock().unwrap().finished = true;
            return;
        }
    };
    let _ = up.set_nodelay(true);
    let _ = up.set_read_timeout(Some(IDLE));
    let w_up: Writer = Arc::new(Mutex::new(up.try_clone().unwrap()));
    let w_down: Writer = Arc::new(Mutex::new(down.try_clone().unwrap()));
    let (a1, s1, wu, wd, f1, l1) = (
        attack.clone(),
        session.clone(),
        w_up.clone(),
        w_down.clone(),
        fired.clone(),
        live.clone(),
    );
    let t_up = std::thread::spawn(move || direction(Dir::Up, down, wu, wd, a1, s1, f1, l1));
    direction(
        Dir::Down,
        up,
        w_down,
        w_up,
        attack,
        session.clone(),
        fired,
        live,
    );
    let _ = t_up.join();
    session.lock().unwrap().finished = true;
}

/// Reads exactly `buf.len()` bytes; returns how many arrived before EOF or an error.
fn read_full(src: &mut TcpStream, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    got
}

/// Reads the next frame of a direction; `Err(partial)` at the end of the stream.
fn next_frame(src: &mut TcpStream, index: usize) -> Result<Vec<u8>, Vec<u8>> {
    let hlen = if index < HANDSHAKE_MESSAGES { 3 } else { 4 };
    let mut frame = vec![0u8; hlen];
    let got = read_full(src, &mut frame);
    if got < hlen {
        frame.truncate(got);
        return Err(frame);
    }
    let body = if hlen == 3 {
        u16::from_be_bytes([frame[1], frame[2]]) as usize
    } else {
        u32::from_be_bytes([0, frame[1], frame[2], frame[3]]) as usize
    };
    frame.resize(hlen + body, 0);
    let got = read_full(src, &mut frame[hlen..]);
    if got < body {
        frame.truncate(hlen + got);
        return Err(frame);
    }
    Ok(frame)
}

/// Pumps one direction frame by frame, applying `attack` if it concerns this direction (or the
/// live attack, if this connection is the first to meet its frame).
#[allow(clippy::too_many_arguments)]
fn direction(
    dir: Dir,
    mut src: TcpStream,
    dst: Writer,
    back: Writer,
    attack: Option<Attack>,
    session: Arc<Mutex<Session>>,
    fired: Arc<AtomicUsize>,
    live: Live,
) {
    let mut attack = attack.filter(|a| a.dir() == Some(dir));
    let send = |w: &Writer, b: &[u8]| w.lock().unwrap().write_all(b).is_ok();
    let fire = || fired.fetch_add(1, Ordering::SeqCst);
    // Each manipulation fires once (the first matching frame).
    let mut done = false;
    let mut held: Option<Vec<u8>> = None;
    let mut silenced = false;
    let mut index = 0;
    // Stream bookkeeping (PROTOCOL.md §4.3): close records seen, records since the last one.
    let (mut closes, mut in_stream) = (0usize, 0usize);
    // This direction's frames so far with their places, for `Attack::Replay`.
    let mut history: Vec<(usize, StreamPos, Vec<u8>)> = Vec::new();
    loop {
        let frame = match next_frame(&mut src, index) {
            Ok(f) => f,
            Err(partial) => {
                if let Some(h) = held.take() {
                    send(&dst, &h);
                }
                if !silenced && !partial.is_empty() {
                    send(&dst, &partial);
                }
                break;
            }
        };
        {
            let mut s = session.lock().unwrap();
            let frames = match dir {
                Dir::Up => &mut s.up,
                Dir::Down => &mut s.down,
            };
            if frames.len() < 4096 {
                frames.push(Frame {
                    index,
                    bytes: frame.clone(),
                });
            }
        }
        let this = index;
        index += 1;
        let pos: StreamPos = (this >= HANDSHAKE_MESSAGES).then_some((closes + 1, in_stream));
        if this >= HANDSHAKE_MESSAGES {
            if frame.first() == Some(&2) {
                closes += 1;
                in_stream = 0;
            } else {
                in_stream += 1;
            }
        }
        if history.len() < 4096 {
            history.push((this, pos, frame.clone()));
        }
        if silenced {
            continue;
        }
        if attack.is_none() {
            let mut slot = live.slot.lock().unwrap();
            let mine = slot.as_ref().is_some_and(|a| {
                a.dir() == Some(dir) && a.trigger().is_some_and(|u| u.matches(this, &frame, pos))
            });
            if mine {
                attack = slot.take();
                *live.taken_by.lock().unwrap() = Some(live.index);
            }
        }
        if let Some(h) = held.take() {
            // The frame after a held one: reordered.
            if !(send(&dst, &frame) && send(&dst, &h)) {
                break;
            }
            continue;
        }
        let hit = |u: &Unit| !done && u.matches(this, &frame, pos);
        let ok = match &attack {
            Some(Attack::Flip {
                unit, offset, bit, ..
            }) if hit(unit) => {
                done = true;
                fire();
                let mut f = frame;
                let at = if *offset < 0 {
                    f.len() as isize + offset
                } else {
                    *offset
                } as usize;
                f[at] ^= 1 << bit;
                send(&dst, &f)
            }
            Some(Attack::Drop { unit, .. }) if hit(unit) => {
                done = true;
                fire();
                true
            }
            Some(Attack::Duplicate { unit, .. }) if hit(unit) => {
                done = true;
                fire();
                send(&dst, &frame) && send(&dst, &frame)
            }
            Some(Attack::Swap { unit, .. }) if hit(unit) => {
                done = true;
                fire();
                held = Some(frame);
                true
            }
            Some(Attack::Truncate { at, .. }) if hit(at) => {
                done = true;
                fire();
                let _ = dst.lock().unwrap().shutdown(Shutdown::Write);
                silenced = true;
                true
            }
            Some(Attack::Splice { after, with, .. }) if !done && this == *after => {
                done = true;
                fire();
                for f in with {
                    send(&dst, f);
                }
                silenced = true;
                true
            }
            Some(Attack::Reflect { unit, .. }) if hit(unit) => {
                done = true;
                fire();
                send(&back, &frame)
            }
            Some(Attack::SpliceAt { at, with, .. }) if hit(at) => {
                done = true;
                fire();
                for f in with {
                    send(&dst, f);
                }
                silenced = true;
                true
            }
            Some(Attack::Replay { at, copy, when, .. }) if hit(at) => {
                done = true;
                let earlier = history
                    .iter()
                    .find(|(i, p, f)| *i != this && copy.matches(*i, f, *p))
                    .map(|h| h.2.clone());
                match earlier {
                    // Nothing to copy (yet): forwarded untouched, and the attack does not count
                    // as fired.
                    None => send(&dst, &frame),
                    Some(c) => {
                        fire();
                        match when {
                            When::Before => send(&dst, &c) && send(&dst, &frame),
                            When::Instead => send(&dst, &c),
                            When::After => send(&dst, &frame) && send(&dst, &c),
                        }
                    }
                }
            }
            _ => send(&dst, &frame),
        };
        if !ok {
            break;
        }
    }
    // Pass the end of this direction on as a bare FIN, whatever it was (EOF, reset, timeout).
    let _ = dst.lock().unwrap().shutdown(Shutdown::Write);
}

/// Replays `bytes` to `addr` in a fresh connection, as a connector would send them. Returns
/// what came back before the connection ended and how it ended, or `None` if it did not end
/// within `within`.
pub fn replay(addr: SocketAddr, bytes: &[u8], within: Duration) -> Option<(Vec<u8>, End)> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(within)).unwrap();
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some((got, End::Eof)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Some((got, End::Reset)),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            Err(_) => return Some((got, End::Other)),
        }
    }
}

/// Splits a direction's bytes into frames (two handshake messages, then records).
pub fn frames_of(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let hlen = if out.len() < HANDSHAKE_MESSAGES { 3 } else { 4 };
        if bytes.len() - at < hlen {
            out.push(bytes[at..].to_vec());
            break;
        }
        let h = &bytes[at..];
        let body = if hlen == 3 {
            u16::from_be_bytes([h[1], h[2]]) as usize
        } else {
            u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize
        };
        let end = (at + hlen + body).min(bytes.len());
        out.push(bytes[at..end].to_vec());
        at = end;
    }
    out
}

/// How a socket's stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A clean FIN.
    Eof,
    /// ECONNRESET.
    Reset,
    /// Any other error.
    Other,
}

/// One connection of a [`RecordingEcho`].
#[derive(Debug, Clone, Default)]
pub struct Conn {
    pub received: Vec<u8>,
    pub end: Option<End>,
}

/// A plaintext echo service that keeps every byte each connection delivered, in order, and how
/// the connection ended.
pub struct RecordingEcho {
    pub addr: SocketAddr,
    pub conns: Arc<Mutex<Vec<Arc<Mutex<Conn>>>>>,
}

impl RecordingEcho {
    pub fn start() -> RecordingEcho {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Arc<Mutex<Conn>>>>> = Arc::default();
        let c2 = conns.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let conn = Arc::new(Mutex::new(Conn::default()));
                c2.lock().unwrap().push(conn.clone());
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(IDLE));
                    let mut buf = vec![0u8; 64 * 1024];
                    let end = loop {
                        match s.read(&mut buf) {
                            Ok(0) => break End::Eof,
                            Ok(n) => {
                                conn.lock().unwrap().received.extend_from_slice(&buf[..n]);
                                if let Err(e) = s.write_all(&buf[..n]) {
                                    break kind_end(e.kind());
                                }
                            }
                            Err(e) => break kind_end(e.kind()),
                        }
                    };
                    conn.lock().unwrap().end = Some(end);
                    let _ = s.shutdown(Shutdown::Write);
                });
            }
        });
        RecordingEcho { addr, conns }
    }

    pub fn count(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// Connection `i` once it has ended (waits up to `within`); `None` if it has not.
    pub fn ended(&self, i: usize, within: Duration) -> Option<Conn> {
        let deadline = Instant::now() + within;
        loop {
            let c = self.conns.lock().unwrap()[i].lock().unwrap().clone();
            if c.end.is_some() {
                return Some(c);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Only ECONNRESET is a reset: EPIPE follows a clean FIN that was then written into.
fn kind_end(k: ErrorKind) -> End {
    match k {
        ErrorKind::ConnectionReset => End::Reset,
        _ => End::Other,
    }
}

/// What a plaintext client saw: the bytes it read, and how the connection ended.
#[derive(Debug)]
pub struct Outcome {
    pub read: Vec<u8>,
    pub end: End,
    /// Where the end was reported: "write", "read".
    pub at: &'static str,
    pub elapsed: Duration,
}

/// Connects to `addr`, sends `data`, half-closes, and reads until the connection ends. The
/// kernel reports a reset once, to whichever call comes first, so a write's reset counts too.
pub fn client_exchange(addr: SocketAddr, data: &[u8]) -> Outcome {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    let out = |read, end, at| Outcome {
        read,
        end,
        at,
        elapsed: t0.elapsed(),
    };
    if let Err(e) = s.write_all(data) {
        return out(Vec::new(), kind_end(e.kind()), "write");
    }
    if let Err(e) = s.shutdown(Shutdown::Write) {
        if e.kind() == ErrorKind::ConnectionReset {
            return out(Vec::new(), End::Reset, "shutdown");
        }
    }
    let mut read = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out(read, End::Eof, "read"),
            Ok(n) => read.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                return out(read, End::Reset, "read")
            }
            Err(e) => panic!(
                "client read failed (not a reset): {e} after {:?}",
                t0.elapsed()
            ),
        }
    }
}
