//! The StreamInfo record between real daemons: the PROXY protocol v2 header a listener writes
//! (as the target received it, checked byte by byte, IPv4 and IPv6), and the refusals around
//! destinations that need no network namespace (tests/it/redirect.rs has the redirected ones).

use crate::support;

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use support::daemon::*;
use support::pseudo_random;

/// What the PROXY target parsed from one connection's header.
#[derive(Debug, PartialEq)]
struct ProxyHeader {
    src: SocketAddr,
    dst: SocketAddr,
}

/// Checks a PROXY v2 header byte by byte (PROXY command over TCP only), or panics.
fn parse_proxy_v2(header: &[u8]) -> ProxyHeader {
    let (fixed, addrs) = header.split_at(16);
    assert_eq!(&fixed[..12], b"\r\n\r\n\0\r\nQUIT\n", "signature");
    assert_eq!(fixed[12], 0x21, "version 2, command PROXY");
    let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    assert_eq!(addrs.len(), len);
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match fixed[13] {
        0x11 => {
            assert_eq!(len, 12, "TCP over IPv4 carries 12 bytes of addresses");
            let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            ProxyHeader {
                src: SocketAddr::new(ip(&addrs[0..4]), port(&addrs[8..10])),
                dst: SocketAddr::new(ip(&addrs[4..8]), port(&addrs[10..12])),
            }
        }
        0x21 => {
            assert_eq!(len, 36, "TCP over IPv6 carries 36 bytes of addresses");
            let ip = |b: &[u8]| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap()));
            ProxyHeader {
                src: SocketAddr::new(ip(&addrs[0..16]), port(&addrs[32..34])),
                dst: SocketAddr::new(ip(&addrs[16..32]), port(&addrs[34..36])),
            }
        }
        other => panic!("family/protocol byte {other:#04x}"),
    }
}

fn check_proxy_v2(connector_listen: SocketAddr) {
    let (target, headers) = proxy_target();
    let t = Tunnel::start(Site::new(), &proxy_v2_listener(target), |listener| {
        connector_config(
            "connector.pem",
            connector_listen,
            listener,
            &listener_fp(),
            "",
        )
    });
    for seed in 0..2u64 {
        let data = Arc::new(pseudo_random(seed, 300_000 + seed as usize));
        let s = TcpStream::connect(t.entry).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let me = s.local_addr().unwrap();
        let (sent, echoed, n) = echo_hashed(s, data.clone());
        assert_eq!(n, data.len());
        assert_eq!(sent, echoed, "echo through the tunnel differs");
        let (header, digest) = headers.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(
            parse_proxy_v2(&header),
            ProxyHeader {
                src: me,
                dst: t.entry
            },
            "the PROXY header names the client and the address it connected to"
        );
        assert_eq!(digest, sent, "the target got exactly the client's bytes");
    }
}

#[test]
fn proxy_v2_header_names_the_client_over_ipv4() {
    check_proxy_v2(any_port());
}

#[test]
fn proxy_v2_header_names_the_client_over_ipv6() {
    assert!(
        std::net::TcpListener::bind("[::1]:0").is_ok(),
        "no IPv6 loopback on this machine (`--skip ipv6` leaves this test out)"
    );
    check_proxy_v2("[::1]:0".parse().unwrap());
}

#[test]
fn without_proxy_protocol_the_target_gets_the_payload_only() {
    // The StreamInfo record never reaches the target as bytes.
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, "");
    assert_echoes(t.entry, 9, 10_000);
}

#[test]
fn redirect_mode_refuses_a_connection_that_was_not_redirected() {
    let service = Service::start(Behaviour::Echo);
    let t = Tunnel::start(Site::new(), &listener_for(service.addr, ""), |listener| {
        connector_for(listener, "") + "mode = \"redirect\"\n"
    });
    let r = try_exchange(t.entry, b"hello");
    assert_eq!(r, Err(ErrorKind::ConnectionReset));
    let log = t.connector.wait_log("has no original destination");
    assert!(log.contains("has no original destination"), "{log}");
    assert!(!t.listener.log_text().contains("connection open"));
    assert_eq!(service.accepted.load(Ordering::SeqCst), 0);
}

#[test]
fn a_listener_with_only_allow_destinations_refuses_a_connection_without_one() {
    let service = Service::start(Behaviour::Echo);
    let only_destinations = listener_for(service.addr, "").replace(
        &format!("forward = \"{}\"", service.addr),
        "allow_destinations = [\"127.0.0.0/8:*\"]",
    );
    let t = Tunnel::start(Site::new(), &only_destinations, |listener| {
        connector_for(listener, "")
    });
    let r = try_exchange(t.entry, b"hello");
    assert_eq!(r, Err(ErrorKind::ConnectionReset));
    let line = t.listener.wait_line("destination refused");
    assert!(line.contains("named no destination"), "{line}");
    assert!(line.contains(&connector_fp().to_string()), "{line}");
    assert_eq!(service.accepted.load(Ordering::SeqCst), 0);
}

/// The value of `field=` in a log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
}

/// One reused session, several clients one after the other (PROTOCOL.md §4.3): every stream is
/// checked as a new connection, so each client gets its own StreamInfo and its own PROXY v2
/// header, with its own source port, on the same sealed session.
#[test]
fn each_stream_of_a_reused_session_gets_its_own_proxy_v2_header() {
    let (target, headers) = proxy_target();
    let t = Tunnel::start(Site::new(), &proxy_v2_listener(target), |listener| {
        connector_for(listener, "")
    });
    let mut clients = Vec::new();
    // Clients until one session has carried two of them (a warm session made in the background
    // may take a client's first stream; a second stream comes within a few clients).
    let reused = 'found: {
        for seed in 0..16u64 {
            let data = Arc::new(pseudo_random(seed, 20_000 + seed as usize));
            let s = TcpStream::connect(t.entry).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let me = s.local_addr().unwrap();
            let (sent, echoed, n) = echo_hashed(s, data.clone());
            assert_eq!((n, sent), (data.len(), echoed), "echo through the tunnel");
            let (header, digest) = headers.recv_timeout(Duration::from_secs(30)).unwrap();
            assert_eq!(
                parse_proxy_v2(&header),
                ProxyHeader {
                    src: me,
                    dst: t.entry
                },
                "client {seed}: its own PROXY header"
            );
            assert_eq!(digest, sent, "client {seed}: the target got its bytes");
            clients.push(me);
            // Sequential for the connector too: its stream has ended, the session is back.
            t.connector
                .wait_log_count("connection closed", clients.len());
            let log = t.listener.wait_log_count("connection open", clients.len());
            let opens: Vec<String> = log
                .lines()
                .filter(|l| l.contains("connection open"))
                .map(str::to_string)
                .collect();
            let last = opens[clients.len() - 1].clone();
            if field(&last, "stream") == Some("2") {
                break 'found (opens, last);
            }
        }
        panic!(
            "no session carried a second client:\n{}",
            t.listener.log_text()
        );
    };
    let (opens, second) = reused;
    // The same sealed session (its `peer` on the listener) carried the client before, as its
    // first stream; the two StreamInfo records named each client, and the connector sent the
    // second on a pooled session.
    let peer = field(&second, "peer").unwrap();
    let first = opens
        .iter()
        .find(|l| field(l, "peer") == Some(peer) && field(l, "stream") == Some("1"))
        .unwrap_or_else(|| panic!("no first stream of {peer}: {opens:?}"));
    let named = |l: &str| field(l, "client").unwrap().parse::<SocketAddr>().unwrap();
    let (c1, c2) = (named(first), named(&second));
    assert_ne!(c1, c2);
    assert!(
        clients.contains(&c1) && clients.contains(&c2),
        "{clients:?}"
    );
    assert_eq!(c2, *clients.last().unwrap());
    assert_ne!(c1.port(), c2.port());
    let line = t
        .connector
        .log_text()
        .lines()
        .rfind(|l| l.contains("connection open"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("pooled=true") && line.contains("stream=2"),
        "{line}"
    );
}
