//! Reused and warm sessions (PROTOCOL.md §4.3): a client served by a pooled session, a thousand
//! sequential clients carried by one session with every byte hashed, and a reload that stops
//! trusting the connector's key: its pooled sessions carry no new client, nor does a session
//! whose handshake was in flight across that reload or across a shutdown.
//!
//! A listener restart under a running connector with the pool on is covered by
//! `tests/it/faults.rs` (`listener_restarted_on_the_same_port_serves_the_running_connector`).

use crate::support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use support::daemon::*;
use support::wait_for;

/// The `stream=` value of every "connection open" line of `log`.
fn streams(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("connection open"))
        .filter_map(|l| l.split(" stream=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn a_second_client_is_served_by_a_warm_session() {
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, "");
    assert_echoes(t.entry, 1, 100_000);
    t.connector.wait_log_count("connection closed", 1);
    // The second client rides a session that is ready: the first client's, back in the pool
    // once both close records passed, or the warm one made meanwhile.
    assert_echoes(t.entry, 2, 100_000);
    let log = t.connector.wait_log_count("connection open", 2);
    let opens: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection open"))
        .collect();
    assert!(opens[1].contains("pooled=true"), "{}", opens[1]);
    let log = t.listener.wait_log_count("connection open", 2);
    let s = streams(&log);
    assert!(s == [1, 2] || s == [1, 1], "{log}");
    assert!(!t.connector.log_text().contains("connection reset"));
}

#[test]
fn one_session_carries_a_thousand_sequential_clients_every_byte_hashed() {
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, "");
    for seed in 0..1000u64 {
        // assert_echoes hashes both ways: what the client sent and what came back.
        assert_echoes(t.entry, seed, 1000 + seed as usize);
        // Sequential for the connector too: the last stream has ended there as well.
        t.connector
            .wait_log_count("connection closed", seed as usize + 1);
    }
    let log = t.listener.wait_log_count("connection open", 1000);
    let s = streams(&log);
    assert_eq!(s.len(), 1000);
    // About one session: a client that comes before the last one's session is back in the
    // pool (its stream ends for the client a moment before it ends for the connector) makes a
    // handshake of its own, so a few may begin; every other client rides a pooled session.
    let firsts = s.iter().filter(|&&n| n == 1).count();
    assert!(firsts <= 10, "sessions that began: {firsts}");
    assert!(s.iter().max() >= Some(&100), "{s:?}");
    let c = t.connector.log_text();
    assert!(!c.contains("connection reset"), "{c}");
    // Every client is on a pooled session except those that made their own handshake; a
    // warm session's first stream is `stream=1` and pooled, so the fresh ones are at most the
    // sessions that began.
    let fresh = c.matches("pooled=false").count();
    assert_eq!(c.matches("pooled=true").count() + fresh, 1000, "{c}");
    assert!(
        fresh <= firsts,
        "fresh {fresh}, sessions that began {firsts}"
    );
}

#[test]
fn a_reload_that_removes_the_key_leaves_pooled_sessions_unused() {
    let service = Service::start(Behaviour::Echo);
    // `revoke = "new-only"` keeps open streams; a new client is a new stream and is refused.
    let t = tunnel_to(service.addr, "");
    t.listener.edit_config(|text| {
        text.replace("[[listener]]\n", "[[listener]]\nrevoke = \"new-only\"\n")
    });
    t.listener.reload();
    assert_echoes(t.entry, 1, 10_000);
    assert_echoes(t.entry, 2, 10_000);
    t.connector.wait_line("pooled=true");

    t.listener.edit_config(|text| {
        text.replace(
            &connector_fp().to_string(),
            &fingerprint_of("untrusted.pem").to_string(),
        )
    });
    t.listener.reload();
    // The pooled session is closed by the listener; the next client is refused, never served
    // and never silently dropped.
    let r = try_exchange(t.entry, b"after the reload");
    assert_eq!(r, Err(std::io::ErrorKind::ConnectionReset));
    let log = t.listener.log_text();
    assert!(
        log.contains("sessions carry no new stream (revoked at reload)"),
        "{log}"
    );
    assert_eq!(streams(&log).len(), 2, "no stream after the reload:\n{log}");
}

/// A relay in front of a listener that holds back what a connector sends once the listener has
/// answered (the rest of its handshake) until [`HoldingRelay::release`].
struct HoldingRelay {
    addr: SocketAddr,
    held: Arc<AtomicBool>,
    gate: Arc<(Mutex<bool>, Condvar)>,
}

impl HoldingRelay {
    fn start(upstream: SocketAddr) -> HoldingRelay {
        let socket = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let held = Arc::new(AtomicBool::new(false));
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let (h, g) = (held.clone(), gate.clone());
        thread::spawn(move || {
            for down in socket.incoming().flatten() {
                let up = TcpStream::connect(upstream).unwrap();
                let answered = Arc::new(AtomicBool::new(false));
                let (mut down_r, mut up_w) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                let (mut up_r, mut down_w) = (up, down);
                let seen = answered.clone();
                thread::spawn(move || {
                    copy(&mut up_r, &mut down_w, |_| {
                        seen.store(true, Ordering::SeqCst)
                    })
                });
                let (h, g) = (h.clone(), g.clone());
                thread::spawn(move || {
                    copy(&mut down_r, &mut up_w, |_| {
                        if answered.load(Ordering::SeqCst) {
                            h.store(true, Ordering::SeqCst);
                            let (open, cv) = &*g;
                            drop(cv.wait_while(open.lock().unwrap(), |o| !*o));
                        }
                    })
                });
            }
        });
        HoldingRelay { addr, held, gate }
    }

    fn release(&self) {
        let (open, cv) = &*self.gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }
}

/// Copies `from` to `to` until the end, calling `before` ahead of each write; half-closes `to`.
fn copy(from: &mut TcpStream, to: &mut TcpStream, before: impl Fn(&[u8])) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        before(&buf[..n]);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[test]
fn a_handshake_in_flight_across_a_shutdown_carries_no_stream() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let mut listener = site.start(
        "listener.toml",
        &listener_for(service.addr, "drain_timeout = \"20s\"\n"),
    );
    let relay = HoldingRelay::start(listener.addr());
    let connector = start_connector(&site, relay.addr, "pool_max = 0\n");
    let entry = connector.addr();
    let client = thread::spawn(move || try_exchange(entry, b"across the shutdown"));
    wait_for("the connector's last flight held by the relay", || {
        relay.held.load(Ordering::SeqCst)
    });
    listener.signal("TERM");
    listener.wait_log("stopping: no new connections");
    relay.release();
    // The handshake completes; its stream meets the shutdown and is refused at once (a reset),
    // neither carried nor left waiting for the drain timeout.
    let r = client.join().unwrap();
    assert_eq!(r, Err(std::io::ErrorKind::ConnectionReset));
    let status = listener.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let log = listener.log_text();
    assert!(!log.contains("connection open"), "{log}");
    assert!(!log.contains("drain timeout reached"), "{log}");
    assert_eq!(
        service.accepted.load(Ordering::SeqCst),
        0,
        "the service saw no connection"
    );
}

#[test]
fn a_handshake_in_flight_across_a_reload_that_removes_the_key_carries_no_stream() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let listener = site.start("listener.toml", &listener_for(service.addr, ""));
    let relay = HoldingRelay::start(listener.addr());
    // No pool: the client's own handshake is the one held across the reload.
    let connector = start_connector(&site, relay.addr, "pool_max = 0\n");
    let entry = connector.addr();
    let client = thread::spawn(move || try_exchange(entry, b"across the reload"));
    wait_for("the connector's last flight held by the relay", || {
        relay.held.load(Ordering::SeqCst)
    });
    listener.edit_config(|text| {
        text.replace(
            &connector_fp().to_string(),
            &fingerprint_of("untrusted.pem").to_string(),
        )
    });
    listener.reload();
    relay.release();
    // The handshake completes under the settings of its accept; its stream meets the reload's.
    // Refused at once (a reset), not left waiting.
    let r = client.join().unwrap();
    assert_eq!(r, Err(std::io::ErrorKind::ConnectionReset));
    let log = listener.log_text();
    assert!(log.contains("new stream refused"), "{log}");
    assert!(!log.contains("connection open"), "{log}");
    assert_eq!(
        service.accepted.load(Ordering::SeqCst),
        0,
        "the service saw no connection"
    );
}
