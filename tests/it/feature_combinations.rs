//! How the features combine, with real daemons over real sockets: resumption and the metrics,
//! resumption and `accept_unknown` (and its reload), resumption and TOFU, resumption and the
//! StreamInfo record / PROXY header, Unix-socket clients and PROXY v2, and Unix sockets and
//! redirect mode in the config.

use crate::support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::daemon::*;

const PROXY_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

// ---------------------------------------------------------------------------------------------
// Metrics

#[test]
fn resumptions_and_handshakes_are_each_counted_once_on_both_sides() {
    let service = Service::start(Behaviour::Echo);
    let t = metrics_tunnel(service.addr);
    let (lm, cm) = (metrics_addr(&t.listener), metrics_addr(&t.connector));

    // One full handshake, then three resumed ones.
    for i in 0..4u8 {
        echo_ok(t.entry, &[b'a' + i; 1000]);
    }
    assert_eq!(t.connector.wait_opens(4), [false, true, true, true]);
    assert_eq!(t.listener.wait_opens(4), [false, true, true, true]);
    for (addr, role) in [(cm, "connector"), (lm, "listener")] {
        let text = wait_value(addr, &series("sealpipe_connections_open", role, ""), 0);
        let received = series("sealpipe_bytes_received_total", role, "");
        let text = if value(&text, &received) == Some(4000) {
            text
        } else {
            wait_value(addr, &received, 4000)
        };
        assert_values(
            &text,
            role,
            &[
                ("sealpipe_resumptions_total", "", 3),
                ("sealpipe_handshakes_total", ",result=\"ok\"", 4),
                ("sealpipe_handshake_duration_seconds_count", "", 4),
                ("sealpipe_connections_total", "", 4),
            ],
        );
        assert!(!text.contains("result=\"failed\""), "{role}:\n{text}");
    }

    // A refused ticket (the listener turned resumption off): a full handshake in the same
    // connection, counted once as ok, and not as a resumption.
    t.listener
        .edit_config(|text| text.replace("[defaults]\n", "[defaults]\nresumption = false\n"));
    t.listener.reload();
    echo_ok(t.entry, b"full again");
    assert!(
        !t.connector.wait_opens(5)[4],
        "the refused ticket is not a resumption"
    );
    for (addr, role) in [(cm, "connector"), (lm, "listener")] {
        let text = wait_value(
            addr,
            &series("sealpipe_handshakes_total", role, ",result=\"ok\""),
            5,
        );
        assert_values(&text, role, &[("sealpipe_resumptions_total", "", 3)]);
        assert!(!text.contains("result=\"failed\""), "{role}:\n{text}");
    }
    assert_eq!(service.accepted.load(Ordering::SeqCst), 5);
}

// ---------------------------------------------------------------------------------------------
// accept_unknown

/// A listener with `accept_unknown = true` (trusting the test connector key only) forwarding to
/// `target`, and a connector whose key is not in its `peers`.
fn accept_unknown_tunnel(target: SocketAddr) -> Tunnel {
    Tunnel::start(
        Site::new(),
        &listener_toml(
            any_port(),
            target,
            "listener.pem",
            &format!("{}accept_unknown = true\n", trusted_peers()),
        ),
        |listener| {
            connector_config(
                "untrusted.pem",
                any_port(),
                listener,
                &listener_fp(),
                NO_POOL,
            )
        },
    )
}

#[test]
fn an_accept_unknown_connector_resumes_until_a_reload_turns_accept_unknown_off() {
    let service = Service::start(Behaviour::Echo);
    let t = accept_unknown_tunnel(service.addr);
    for msg in [&b"one"[..], b"two", b"three"] {
        echo_ok(t.entry, msg);
    }
    assert_eq!(t.listener.wait_opens(3), [false, true, true]);
    assert_eq!(t.connector.wait_opens(3), [false, true, true]);

    // accept_unknown off: the connector still holds a ticket with uses left, but the listener
    // refuses it (its peer is no longer let in) and then the full handshake too.
    // (The config text is edited, not rewritten: `listen` stays `127.0.0.1:0`, the same socket.)
    t.listener
        .edit_config(|text| text.replace("accept_unknown = true\n", ""));
    t.listener.reload();
    for _ in 0..2 {
        assert_eq!(
            try_exchange(t.entry, b"let me in"),
            Err(ErrorKind::ConnectionReset)
        );
    }
    let log = t.listener.wait_log("is not trusted");
    let untrusted = fingerprint_of("untrusted.pem");
    assert!(
        log.contains(&format!("connector key {untrusted} is not trusted")),
        "{log}"
    );
    assert_eq!(t.listener.opens().len(), 3, "{log}");
    assert_eq!(service.accepted.load(Ordering::SeqCst), 3);
}

#[test]
fn turning_accept_unknown_off_holds_even_if_the_new_listen_address_cannot_be_bound() {
    let service = Service::start(Behaviour::Echo);
    let t = accept_unknown_tunnel(service.addr);
    echo_ok(t.entry, b"in");
    assert_eq!(t.listener.wait_opens(1), [false]);

    // The reload moves the listener to an address already taken, and turns accept_unknown off:
    // the old socket stays (nothing else can serve), but under the new settings.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    t.listener.edit_config(|text| {
        text.replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{}\"", taken.local_addr().unwrap()),
        )
        .replace("accept_unknown = true\n", "")
    });
    let log = t.listener.reload();
    assert!(
        log.contains("the previous socket stays, with the new settings"),
        "{log}"
    );
    assert_eq!(
        try_exchange(t.entry, b"let me in"),
        Err(ErrorKind::ConnectionReset)
    );
    t.listener.wait_log("is not trusted");
    assert_eq!(t.listener.opens().len(), 1);
    assert_eq!(service.accepted.load(Ordering::SeqCst), 1);
    drop(taken);
}

// ---------------------------------------------------------------------------------------------
// TOFU

#[test]
fn a_tofu_connector_resumes_from_its_second_connection_and_a_key_change_stays_loud() {
    let service = Service::start(Behaviour::Echo);
    let t = tofu_tunnel(service.addr);
    let addr = t.listener.addr();
    let known = t.site.path("known_peers");

    // First contact: a full handshake and the key recorded; the ticket of that handshake is
    // bound to the recorded key, so the very next connection (pinned to it) resumes.
    echo_ok(t.entry, b"first");
    let recorded = std::fs::read_to_string(&known).unwrap();
    assert!(
        recorded.ends_with(&format!("\n{addr} {}\n", listener_fp())),
        "{recorded}"
    );
    echo_ok(t.entry, b"second");
    echo_ok(t.entry, b"third");
    assert_eq!(t.connector.wait_opens(3), [false, true, true]);
    assert_eq!(t.listener.wait_opens(3), [false, true, true]);

    // The listener's key changes at a reload (its ticket store survives): the connector offers
    // its ticket, which the listener refuses (other keys), and the full handshake that follows
    // presents the new key: refused, loudly.
    t.listener
        .edit_config(|text| text.replace("\"listener.pem\"", "\"untrusted.pem\""));
    t.listener.reload();
    assert_eq!(try_exchange(t.entry, b"x"), Err(ErrorKind::ConnectionReset));
    let clog = t.connector.wait_log("LISTENER KEY CHANGED");
    let other = fingerprint_of("untrusted.pem");
    assert!(
        clog.lines().any(|l| l.contains("LISTENER KEY CHANGED")
            && l.contains("ERROR")
            && l.contains(&format!(
                "known_peers has {}, the listener presented {other}",
                listener_fp()
            ))),
        "{clog}"
    );
    assert_eq!(std::fs::read_to_string(&known).unwrap(), recorded);
    assert_eq!(t.connector.opens().len(), 3);
    assert_eq!(service.accepted.load(Ordering::SeqCst), 3);
}

#[test]
fn a_first_contact_resume_hello_is_dropped_at_mac1_by_an_allow_tofu_listener() {
    use sealpipe::proto::handshake::{mac1, FIRST_CONTACT};
    use sealpipe::proto::messages::{header, MessageType, RESUME_HELLO_BODY};
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let listener = site.start(
        "listener.toml",
        &(allow_tofu_listener(any_port(), service.addr, "listener.pem") + METRICS),
    );
    let lm = metrics_addr(&listener);
    // A ResumeHello (version 1, no options, a valid X25519 point, some ticket) whose mac1 is
    // keyed by the public first-contact constant: anybody can make one, no connector sends one.
    let mut hello = header(MessageType::ResumeHello, RESUME_HELLO_BODY).to_vec();
    hello.extend_from_slice(&[1, 0]);
    hello.extend_from_slice(&[0x42; 32]);
    let mut e = [0u8; 32];
    e[0] = 9;
    hello.extend_from_slice(&e);
    hello.extend_from_slice(&[0x5a; sealpipe::proto::mlkem::EK_LEN]);
    hello.extend_from_slice(&[0x17; 16 + 32]);
    let tag = mac1(&FIRST_CONTACT, &hello);
    hello.extend_from_slice(&tag);
    assert_eq!(hello.len(), 3 + RESUME_HELLO_BODY);
    let mut s = TcpStream::connect(listener.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&hello).unwrap();
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back);
    assert!(back.is_empty(), "the listener answered: {back:?}");
    // Dropped before any work (no handshake slot, no X25519), as a bad mac1.
    let text = wait_value(
        lm,
        &series("sealpipe_mac1_rejected_total", "listener", ""),
        1,
    );
    assert_values(
        &text,
        "listener",
        &[(
            "sealpipe_handshakes_total",
            ",result=\"failed\",reason=\"bad_mac1\"",
            1,
        )],
    );
}

// ---------------------------------------------------------------------------------------------
// StreamInfo / PROXY v2 with resumption and Unix-socket clients

/// The PROXY v2 header (PROXY, TCP over IPv4) naming `src` and `dst`.
fn proxy_v4(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        panic!("IPv4 expected");
    };
    let mut h = PROXY_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&s.ip().octets());
    h.extend_from_slice(&d.ip().octets());
    h.extend_from_slice(&s.port().to_be_bytes());
    h.extend_from_slice(&d.port().to_be_bytes());
    h
}

/// Sends `msg` into `s`, half-closes, and expects exactly `msg` back.
fn echo_through(mut s: impl Duplex, msg: &[u8]) {
    s.write_all(msg).unwrap();
    s.shutdown_write().unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(back, msg);
}

#[test]
fn a_resumed_connection_carries_its_own_client_in_the_proxy_header() {
    let (target, headers) = proxy_target();
    let t = Tunnel::start(Site::new(), &proxy_v2_listener(target), |listener| {
        connector_for(listener, NO_POOL)
    });
    for i in 0..3u8 {
        let s = TcpStream::connect(t.entry).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let me = s.local_addr().unwrap();
        echo_through(s, &[b'p' + i; 100]);
        let (header, _) = headers.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(header, proxy_v4(me, t.entry), "connection {i}");
    }
    assert_eq!(t.listener.wait_opens(3), [false, true, true]);
}

#[test]
fn a_unix_socket_client_gets_a_local_proxy_header_full_and_resumed() {
    let (target, headers) = proxy_target();
    let site = Site::new();
    let listener = site.start("listener.toml", &proxy_v2_listener(target));
    let sock = site.path("app.sock");
    let _connector = site.start(
        "connector.toml",
        &connector_toml(format!("unix:{}", sock.display()), listener.addr(), NO_POOL),
    );
    // LOCAL command, UNSPEC family, no address block: a Unix client has no IP address to give.
    let mut local = PROXY_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    for i in 0..2u8 {
        let s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        echo_through(s, &[b'u' + i; 100]);
        let (header, _) = headers.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(header, local, "connection {i}");
    }
    assert_eq!(listener.wait_opens(2), [false, true]);
}

// ---------------------------------------------------------------------------------------------
// Config

#[test]
fn redirect_mode_on_a_unix_listen_socket_is_a_config_error() {
    let site = Site::new();
    let text = connector_toml("unix:app.sock", "127.0.0.1:7443", "mode = \"redirect\"\n");
    let cconf = site.write("connector.toml", &text);
    let check = ["check", "--config", cconf.to_str().unwrap()];
    let (code, _, err) = run_cli(&check);
    assert_ne!(code, 0, "check accepted it");
    let want = format!(
        "{}:9:8: connector \"test\": key `mode`: `mode = \"redirect\"` needs a TCP `listen`",
        cconf.display()
    );
    assert!(err.contains(&want), "{err}");
    // The same tunnel over TCP is fine.
    site.write(
        "connector.toml",
        &text.replace("unix:app.sock", "127.0.0.1:0"),
    );
    let (code, _, err) = run_cli(&check);
    assert_eq!(code, 0, "{err}");
}
