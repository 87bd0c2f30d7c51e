//! Liveness (PROTOCOL.md §4.4) between real daemons: a listener that hangs (SIGSTOP: its kernel
//! still acknowledges, so TCP sees nothing) and a relay that stops forwarding without closing
//! cost a client at most a `handshake_timeout` or a `dead_peer_timeout` and a keepalive, never
//! a hang; once the peer is back, clients are served again; and a quiet stream or a pooled
//! session over a live peer is kept by keepalives, however long it is quiet.
//!
//! The configs use short timeouts (`dead_peer_timeout = "2s"`, `handshake_timeout = "2s"`);
//! the bounds checked are those plus a generous margin (a hang would be far past them).

use crate::support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::daemon::*;
use support::pseudo_random;

/// Both daemons' `[defaults]`: short liveness and handshake bounds.
const SHORT: &str = "dead_peer_timeout = \"2s\"\nhandshake_timeout = \"2s\"\n";
/// `dead_peer_timeout` of [`SHORT`].
const DEAD: Duration = Duration::from_secs(2);
/// `handshake_timeout` of [`SHORT`].
const HANDSHAKE: Duration = Duration::from_secs(2);
/// What a bound may take beyond its timeouts on a loaded test machine (a hang takes forever).
const MARGIN: Duration = Duration::from_secs(6);

/// How a client's connection ended: what it read, and whether it ended in an error (a reset)
/// or a clean end of stream; `None` if it was still open after `within`.
fn ends_within(s: &mut TcpStream, within: Duration) -> Option<(Vec<u8>, bool)> {
    s.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some((got, false)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some((got, true)),
        }
    }
}

/// A client that connects, sends `msg` and reads its echo back (the stream then stays open).
fn open_stream(entry: SocketAddr, msg: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(entry).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(msg).unwrap();
    let mut echo = vec![0u8; msg.len()];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(echo, msg);
    s
}

/// A client arriving while the peer hangs: it is let go (reset, or closed without an echo)
/// within `bound`, never left hanging. Returns how long that took.
fn let_go_within(entry: SocketAddr, bound: Duration) -> Duration {
    let t = Instant::now();
    let mut s = TcpStream::connect(entry).unwrap();
    // Its bytes may be refused by a reset already: that is the answer too.
    let _ = s.write_all(b"anyone there?");
    let end = ends_within(&mut s, bound + Duration::from_secs(30));
    let took = t.elapsed();
    let (got, _) = end.expect("a client of a hung peer is not left hanging");
    assert!(got.is_empty(), "no echo from a hung peer: {got:?}");
    assert!(took < bound, "let go after {took:?}, bound {bound:?}");
    took
}

/// The scenario of both hangs: a stream open across the hang is reset within a
/// `dead_peer_timeout` and a keepalive, a client arriving during it is let go within a
/// `handshake_timeout` (or a `dead_peer_timeout`, if it got a warm session heard from just
/// before the hang), and once the peer is back clients are served, bytes hashed end to end.
fn hang_and_resume(entry: SocketAddr, connector: &Daemon, hang: impl Fn(), resume: impl Fn()) {
    // Warm sessions made, and one client served.
    assert_echoes(entry, 1, 50_000);
    connector.wait_log_count("connection closed", 1);
    let mut open = open_stream(entry, b"before the hang");
    hang();
    let hung = Instant::now();
    // A client right after the hang began.
    thread::sleep(Duration::from_millis(300));
    let_go_within(entry, HANDSHAKE.max(DEAD) + MARGIN);
    // The stream open across the hang: reset, not left hanging.
    let end = ends_within(
        &mut open,
        DEAD + DEAD / 2 + MARGIN + Duration::from_secs(30),
    );
    let (_, reset) = end.expect("a stream open across the hang is ended");
    assert!(reset, "ended by a reset, not a clean end");
    let took = hung.elapsed();
    assert!(
        took < DEAD + DEAD / 2 + MARGIN,
        "stream reset after {took:?}"
    );
    // A client long after the hang began: no warm session is heard from any more.
    thread::sleep(DEAD);
    let_go_within(entry, HANDSHAKE + MARGIN);
    let log = connector.log_text();
    assert!(
        log.contains("peer silent for 2s"),
        "the cause is logged: {log}"
    );
    resume();
    // Served again, every byte hashed (a client may meet a session the hang killed, which is
    // reset as above; the next ones are served).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seed = 100;
    loop {
        seed += 1;
        let data = Arc::new(pseudo_random(seed, 100_000));
        let s = TcpStream::connect(entry).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let served = thread::spawn(move || {
            let (sent, received, n) = echo_hashed(s, data);
            sent == received && n == 100_000
        })
        .join()
        .unwrap_or(false);
        if served {
            break;
        }
        assert!(Instant::now() < deadline, "not served again after the hang");
        thread::sleep(Duration::from_millis(200));
    }
    for seed in 200..203 {
        assert_echoes(entry, seed, 100_000);
    }
}

fn signal(d: &Daemon, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(d.child.id() as i32);
    nix::sys::signal::kill(pid, sig).unwrap();
    if sig == nix::sys::signal::Signal::SIGSTOP {
        // kill() returns before the process has stopped: wait until /proc says so, or a
        // client meant to meet the hang may still be answered.
        let stat = format!("/proc/{}/stat", d.child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let state = std::fs::read_to_string(&stat).unwrap_or_default();
            // The state follows the command name's closing parenthesis.
            if state
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the daemon did not stop");
    }
}

/// Resumes a stopped daemon when dropped (a failed assertion must not leave it stopped).
struct Cont<'a>(&'a Daemon);

impl Drop for Cont<'_> {
    fn drop(&mut self) {
        signal(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

#[test]
fn a_listener_that_hangs_costs_its_clients_a_timeout_not_a_hang() {
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, SHORT);
    let _cont = Cont(&t.listener);
    hang_and_resume(
        t.entry,
        &t.connector,
        || signal(&t.listener, nix::sys::signal::Signal::SIGSTOP),
        || signal(&t.listener, nix::sys::signal::Signal::SIGCONT),
    );
}

/// A TCP relay that can be told to stop forwarding (and accepting) without closing anything,
/// and to resume.
struct Relay {
    addr: SocketAddr,
    stopped: Arc<AtomicBool>,
}

impl Relay {
    fn start(target: SocketAddr) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stopped = Arc::new(AtomicBool::new(false));
        let st = stopped.clone();
        thread::spawn(move || {
            for c in l.incoming() {
                // Stopped: connections wait in the backlog, accepted by the kernel only.
                while st.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(20));
                }
                let Ok(c) = c else { continue };
                let Ok(u) = TcpStream::connect(target) else {
                    continue;
                };
                for (from, to) in [(c.try_clone().unwrap(), u.try_clone().unwrap()), (u, c)] {
                    let st = st.clone();
                    thread::spawn(move || copy_unless_stopped(from, to, &st));
                }
            }
        });
        Relay { addr, stopped }
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    fn resume(&self) {
        self.stopped.store(false, Ordering::Relaxed);
    }
}

/// Copies `from` to `to` while not stopped; while stopped, reads nothing and writes nothing.
fn copy_unless_stopped(mut from: TcpStream, mut to: TcpStream, stopped: &AtomicBool) {
    from.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 16384];
    loop {
        if stopped.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                // A relay stopped meanwhile holds what it read until it resumes.
                while stopped.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(20));
                }
                if to.write_all(&buf[..n]).is_err() {
                    let _ = from.shutdown(Shutdown::Both);
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

#[test]
fn a_relay_that_stops_forwarding_costs_clients_a_timeout_not_a_hang() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let listener = site.start("listener.toml", &listener_for(service.addr, SHORT));
    let relay = Relay::start(listener.addr());
    let connector = site.start("connector.toml", &connector_for(relay.addr, SHORT));
    hang_and_resume(
        connector.addr(),
        &connector,
        || relay.stop(),
        || relay.resume(),
    );
    // The listener, too, gave up on the sessions it could not hear from (between streams or
    // in a stream), with the cause.
    let log = listener.log_text();
    assert!(log.contains("peer silent for 2s"), "{log}");
}

#[test]
fn a_quiet_stream_and_a_pooled_session_over_a_live_peer_are_kept() {
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, SHORT);
    assert_echoes(t.entry, 1, 10_000);
    t.connector.wait_log_count("connection closed", 1);
    // A stream quiet both ways for several dead_peer_timeouts: still open, still carrying.
    let mut s = open_stream(t.entry, b"hello");
    thread::sleep(DEAD * 4);
    s.write_all(b"still there").unwrap();
    let mut echo = [0u8; 11];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"still there");
    s.shutdown(Shutdown::Write).unwrap();
    let end = ends_within(&mut s, Duration::from_secs(20));
    assert_eq!(end, Some((Vec::new(), false)), "a clean end");
    let closed = t.connector.wait_log_count("connection closed", 2);
    // Warm and reused sessions idle in the pool for several dead_peer_timeouts: kept alive by
    // keepalives, and the next client rides one.
    thread::sleep(DEAD * 4);
    assert_echoes(t.entry, 2, 100_000);
    let log = t.connector.wait_log_count("connection open", 3);
    let last = log
        .lines()
        .rfind(|l| l.contains("connection open"))
        .unwrap();
    assert!(last.contains("pooled=true"), "{last}");
    for (who, log) in [("connector", closed), ("listener", t.listener.log_text())] {
        assert!(!log.contains("peer silent"), "{who}: {log}");
        assert!(!log.contains("connection reset"), "{who}: {log}");
    }
}

#[test]
fn handshakes_to_a_hung_listener_end_at_the_handshake_timeout_full_and_resumed() {
    let service = Service::start(Behaviour::Echo);
    // One session per client, so that every client makes a handshake of its own: a full one,
    // or a resumed one from the ticket of the first client's.
    for (extra, resumed) in [("resumption = false\n", false), ("", true)] {
        let t = tunnel_to(service.addr, &format!("{SHORT}{NO_POOL}{extra}"));
        let _cont = Cont(&t.listener);
        assert_echoes(t.entry, 1, 10_000);
        let (c, _) = t.wait_opens(1);
        assert_eq!(c, [false]);
        signal(&t.listener, nix::sys::signal::Signal::SIGSTOP);
        let_go_within(t.entry, HANDSHAKE + MARGIN);
        let log = t.connector.wait_log("handshake timed out after 2s");
        signal(&t.listener, nix::sys::signal::Signal::SIGCONT);
        assert_echoes(t.entry, 2, 10_000);
        let (c, _) = t.wait_opens(2);
        assert_eq!(c, [false, resumed], "{log}");
    }
}

/// A session's last stream (reuse off): the connector's FIN follows its close record, so it can
/// send no keepalive; the listener, having read that FIN, sends them instead, and a service
/// that answers only after several `dead_peer_timeout`s of silence is not cut.
#[test]
fn a_slow_answer_after_the_clients_half_close_on_a_last_stream_is_kept() {
    let service = serve("127.0.0.1:0", |mut s| {
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        thread::sleep(DEAD * 3);
        let _ = s.write_all(&got);
    });
    let t = tunnel_to(service.addr, &format!("{SHORT}{NO_POOL}"));
    let mut c = TcpStream::connect(t.entry).unwrap();
    c.write_all(b"slow question").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let end = ends_within(&mut c, Duration::from_secs(30));
    assert_eq!(end, Some((b"slow question".to_vec(), false)));
    for (who, log) in [
        ("connector", t.connector.log_text()),
        ("listener", t.listener.log_text()),
    ] {
        assert!(!log.contains("peer silent"), "{who}: {log}");
    }
}
