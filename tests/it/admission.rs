//! The listener admits every stream against the configuration in force when it starts
//! (PROTOCOL.md §4.3): a reload reaches the next stream of a pooled, reused session (`forward`,
//! `proxy_protocol`; a `service` changed retires it), and `session_max_age` bounds every session's age, a session past it
//! finishing its stream and closing cleanly so that the next client is served on another; a
//! stream the listener cannot carry is refused with an Alert whose reason the connector logs.
//! Redirect mode's `allow_destinations` narrowed at reload is in `tests/it/redirect.rs` (it needs
//! a network namespace).

use crate::support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use support::daemon::*;

/// The value of `name=` in a log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
}

/// The listener's "connection open" lines so far.
fn opens(t: &Tunnel) -> Vec<String> {
    t.listener
        .log_text()
        .lines()
        .filter(|l| l.contains("connection open"))
        .map(str::to_string)
        .collect()
}

/// Runs clients one after the other (each through `client`, given its number) until the
/// listener carries one of them as the second (or later) stream of a session; returns the
/// listener's "connection open" lines of these clients. `done`: the clients served before.
fn clients_until_reused(t: &Tunnel, done: usize, client: impl Fn(u64)) -> Vec<String> {
    for i in 0..16 {
        client((done + i) as u64);
        // Sequential for the connector too: its stream has ended, the session is back.
        t.connector
            .wait_log_count("connection closed", done + i + 1);
        t.listener.wait_log_count("connection open", done + i + 1);
        let lines = opens(t);
        let last = &lines[done + i];
        if field(last, "stream").is_some_and(|s| s != "1") {
            return lines[done..].to_vec();
        }
    }
    panic!(
        "no session carried a second client:\n{}",
        t.listener.log_text()
    );
}

#[test]
fn a_reload_that_moves_forward_sends_the_next_stream_of_a_reused_session_to_the_new_target() {
    let old = Service::start(Behaviour::Echo);
    let new = Service::start(Behaviour::Echo);
    let t = tunnel_to(old.addr, "");
    let before = clients_until_reused(&t, 0, |seed| assert_echoes(t.entry, seed, 10_000));
    assert_eq!(old.accepted.load(Ordering::SeqCst), before.len());

    t.listener
        .edit_config(|text| text.replace(&old.addr.to_string(), &new.addr.to_string()));
    t.listener.reload();
    // The very next clients ride the pooled sessions of before the reload (one of them as a
    // reused session's next stream), and every one reaches the new target.
    let after = clients_until_reused(&t, before.len(), |seed| {
        assert_echoes(t.entry, seed, 10_000)
    });
    for line in &after {
        assert_eq!(
            field(line, "forward"),
            Some(&*new.addr.to_string()),
            "{line}"
        );
    }
    assert_eq!(
        old.accepted.load(Ordering::SeqCst),
        before.len(),
        "no client reached the old target after the reload"
    );
    assert_eq!(new.accepted.load(Ordering::SeqCst), after.len());
    let c = t.connector.log_text();
    assert!(!c.contains("connection reset"), "{c}");
}

/// A target that reads each connection's input to its end, reports it, and answers `done`.
fn recording_target() -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = mpsc::channel();
    let target = serve("127.0.0.1:0", move |mut s| {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut input = Vec::new();
        if s.read_to_end(&mut input).is_ok() {
            let _ = s.write_all(b"done");
            let _ = s.shutdown(Shutdown::Write);
            let _ = tx.send(input);
        }
    });
    (target.addr, rx)
}

/// The PROXY protocol v2 signature.
const PROXY_V2: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

#[test]
fn a_reload_that_turns_proxy_protocol_on_applies_to_the_next_stream_of_a_reused_session() {
    let (target, inputs) = recording_target();
    let t = tunnel_to(target, "");
    let client = |seed: u64| {
        let mut s = TcpStream::connect(t.entry).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(format!("client {seed}").as_bytes()).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"done");
    };
    let before = clients_until_reused(&t, 0, client);
    for _ in &before {
        let input = inputs.recv_timeout(Duration::from_secs(30)).unwrap();
        assert!(input.starts_with(b"client "), "no header yet: {input:?}");
    }

    t.listener
        .edit_config(|text| text.to_string() + "proxy_protocol = \"v2\"\n");
    t.listener.reload();
    let after = clients_until_reused(&t, before.len(), client);
    for (i, line) in after.iter().enumerate() {
        let input = inputs.recv_timeout(Duration::from_secs(30)).unwrap();
        assert!(
            input.starts_with(PROXY_V2),
            "stream {} of its session, client {}: no PROXY header: {input:?}",
            field(line, "stream").unwrap_or("?"),
            before.len() + i
        );
        let msg = format!("client {}", before.len() + i);
        assert!(input.ends_with(msg.as_bytes()), "{input:?}");
    }
}

/// `session_max_age` of the listener in these tests.
const MAX_AGE: Duration = Duration::from_secs(2);

#[test]
fn a_session_past_session_max_age_carries_no_new_stream_and_the_next_client_is_served() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let listener = site.start(
        "listener.toml",
        &listener_for(service.addr, "session_max_age = \"2s\"\n"),
    );
    let connector = site.start("connector.toml", &connector_for(listener.addr(), ""));
    let entry = connector.addr();

    // A stream still open when its session reaches the age is carried to its end.
    let mut long = TcpStream::connect(entry).unwrap();
    long.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    long.write_all(b"before").unwrap();
    let mut echo = [0u8; 6];
    long.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"before");
    std::thread::sleep(MAX_AGE + Duration::from_millis(500));
    long.write_all(b" after").unwrap();
    long.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    long.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b" after");
    listener.wait_log("it reached session_max_age");

    // Sessions past the age (the one that carried it, and the warm ones made meanwhile) are
    // closed between streams; the next clients are served, none reset.
    for seed in 0..3 {
        assert_echoes(entry, seed, 10_000);
        connector.wait_log_count("connection closed", seed as usize + 2);
    }
    std::thread::sleep(MAX_AGE + Duration::from_millis(500));
    assert_echoes(entry, 3, 10_000);
    connector.wait_log_count("connection closed", 5);
    let c = connector.log_text();
    assert!(!c.contains("connection reset"), "{c}");
    assert_eq!(service.accepted.load(Ordering::SeqCst), 5);

    // No session carried a stream after it was closed for its age: every `peer` (one sealed
    // session) closed for its age opens nothing later in the log.
    let log = listener.log_text();
    let lines: Vec<&str> = log.lines().collect();
    let mut closed = 0;
    for (i, line) in lines.iter().enumerate() {
        if !line.contains("it reached session_max_age") {
            continue;
        }
        closed += 1;
        let peer = field(line, "peer").unwrap();
        for later in &lines[i + 1..] {
            assert!(
                !(later.contains("connection open") && field(later, "peer") == Some(peer)),
                "a stream on a session closed for its age:\n{log}"
            );
        }
    }
    assert!(closed >= 2, "{log}");
}

/// The listener tells the connector what it could not do for a stream (PROTOCOL.md §4.2): an
/// Alert, not a bare reset, so the connector's log says why and its client is reset at once.
#[test]
fn a_forward_target_that_refuses_is_the_listeners_reason_in_the_connectors_log() {
    let dead = dead_port();
    let t = tunnel_to(dead.addr, "");
    // Twice: on a fresh or warm session, then again (the refused session is not reused).
    for _ in 0..2 {
        assert_eq!(
            try_exchange(t.entry, b"hello"),
            Err(std::io::ErrorKind::ConnectionReset),
            "the client is reset, not left waiting"
        );
    }
    let line = t
        .connector
        .wait_line("the listener could not connect to its forward target");
    assert!(line.contains("tunnel=test"), "{line}");
    assert!(line.contains("connection reset"), "{line}");
    let c = t.connector.log_text();
    assert!(!c.contains("truncated"), "{c}");
    let l = t.listener.wait_line("forward target unreachable");
    assert!(l.contains("the connector is told"), "{l}");
}

/// A reload that changes the listener's `service` takes it away from every open session: an
/// idle one is closed between streams, and the next client is refused (the connector's service
/// is no longer served), never carried to the service on a session of the old terms.
#[test]
fn a_reload_that_changes_the_service_leaves_no_session_of_the_old_one_carrying_clients() {
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, "");
    let before = clients_until_reused(&t, 0, |seed| assert_echoes(t.entry, seed, 10_000));
    t.listener
        .edit_config(|text| text.to_string() + "service = \"other\"\n");
    t.listener.reload();
    for _ in 0..3 {
        assert_eq!(
            try_exchange(t.entry, b"after the reload"),
            Err(std::io::ErrorKind::ConnectionReset)
        );
    }
    assert_eq!(service.accepted.load(Ordering::SeqCst), before.len());
    let log = t
        .listener
        .wait_log("a reload changed this listener's service");
    assert_eq!(
        opens(&t).len(),
        before.len(),
        "no stream after the reload:\n{log}"
    );
    let c = t.connector.wait_log("the listener serves \"other\"");
    assert!(c.contains("the listener serves \"other\""), "{c}");
}
