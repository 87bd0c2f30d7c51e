//! The StreamInfo record between real daemons: the PROXY protocol v2 header a listener writes
//! (parsed byte-exactly by the target, IPv4 and IPv6), and the refusals around destinations that
//! need no network namespace (tests/redirect.rs has the redirected ones).

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use support::daemon::*;

/// What the PROXY target parsed from one connection's header.
#[derive(Debug, PartialEq)]
struct ProxyHeader {
    src: SocketAddr,
    dst: SocketAddr,
}

/// Reads and checks a PROXY v2 header byte by byte (PROXY command over TCP only), or panics.
fn read_proxy_v2(s: &mut TcpStream) -> ProxyHeader {
    let mut fixed = [0u8; 16];
    s.read_exact(&mut fixed).unwrap();
    assert_eq!(&fixed[..12], b"\r\n\r\n\0\r\nQUIT\n", "signature");
    assert_eq!(fixed[12], 0x21, "version 2, command PROXY");
    let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    let mut addrs = vec![0u8; len];
    s.read_exact(&mut addrs).unwrap();
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

/// A target expecting a PROXY v2 header on each connection: it reports the header and the
/// SHA-256 of the payload that follows, and echoes the payload.
fn proxy_target() -> (SocketAddr, mpsc::Receiver<(ProxyHeader, [u8; 32])>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let header = read_proxy_v2(&mut s);
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            h.update(&buf[..n]);
                            s.write_all(&buf[..n]).unwrap();
                        }
                        Err(e) => panic!("target read: {e}"),
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
                let _ = tx.send((header, h.finalize().into()));
            });
        }
    });
    (addr, rx)
}

/// Sends `data` through `entry` from a fresh client, reads the echo; returns the client's own
/// address and whether the echo matched.
fn exchange(entry: SocketAddr, data: &[u8]) -> (SocketAddr, bool) {
    let s = TcpStream::connect(entry).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let me = s.local_addr().unwrap();
    let mut w = s.try_clone().unwrap();
    let d = data.to_vec();
    let writer = std::thread::spawn(move || {
        w.write_all(&d).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut r = s;
    let mut back = Vec::new();
    r.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    (me, back == data)
}

fn proxy_tunnel(target: SocketAddr, connector_listen: SocketAddr) -> Tunnel {
    let site = Site::new();
    let lconf = site.write(
        "listener.toml",
        &(listener_config(any_port(), target, &[connector_fp()], "") + "proxy_protocol = \"v2\"\n"),
    );
    let listener = Daemon::start(&lconf);
    let cconf = site.write(
        "connector.toml",
        &connector_config(
            "connector.pem",
            connector_listen,
            listener.addr(),
            &listener_fp(),
            "",
        ),
    );
    let connector = Daemon::start(&cconf);
    let entry = connector.addr();
    Tunnel {
        site,
        listener,
        connector,
        entry,
    }
}

fn check_proxy_v2(connector_listen: SocketAddr) {
    let (target, headers) = proxy_target();
    let t = proxy_tunnel(target, connector_listen);
    for seed in 0..2u64 {
        let data = pseudo_random(seed, 300_000 + seed as usize);
        let (me, echoed) = exchange(t.entry, &data);
        assert!(echoed, "echo through the tunnel differs");
        let (header, digest) = headers.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(
            header,
            ProxyHeader {
                src: me,
                dst: t.entry
            },
            "the PROXY header names the client and the address it connected to"
        );
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&data)));
    }
}

#[test]
fn proxy_v2_header_names_the_client_over_ipv4() {
    check_proxy_v2(any_port());
}

#[test]
fn proxy_v2_header_names_the_client_over_ipv6() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        println!("skipped: no IPv6 loopback on this machine");
        return;
    }
    check_proxy_v2("[::1]:0".parse().unwrap());
}

#[test]
fn without_proxy_protocol_the_target_gets_the_payload_only() {
    // The StreamInfo record never reaches the target as bytes.
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, "");
    let data = pseudo_random(9, 10_000);
    let (_, echoed) = exchange(t.entry, &data);
    assert!(echoed);
}

#[test]
fn redirect_mode_refuses_a_connection_that_was_not_redirected() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let lconf = site.write(
        "listener.toml",
        &listener_config(any_port(), service.addr, &[connector_fp()], ""),
    );
    let listener = Daemon::start(&lconf);
    let cconf = site.write(
        "connector.toml",
        &(connector_config(
            "connector.pem",
            any_port(),
            listener.addr(),
            &listener_fp(),
            "",
        ) + "mode = \"redirect\"\n"),
    );
    let connector = Daemon::start(&cconf);
    let r = try_exchange(connector.addr(), b"hello");
    assert_eq!(r, Err(ErrorKind::ConnectionReset));
    let log = connector.wait_log("has no original destination");
    assert!(log.contains("has no original destination"), "{log}");
    assert!(!listener.log_text().contains("connection open"));
    assert_eq!(
        service.accepted.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[test]
fn a_listener_with_only_allow_destinations_refuses_a_connection_without_one() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let lconf = site.write(
        "listener.toml",
        &listener_config(any_port(), service.addr, &[connector_fp()], "").replace(
            &format!("forward = \"{}\"", service.addr),
            "allow_destinations = [\"127.0.0.0/8:*\"]",
        ),
    );
    let listener = Daemon::start(&lconf);
    let (connector, _) = start_connector(&site, listener.addr(), "");
    let r = try_exchange(connector.addr(), b"hello");
    assert_eq!(r, Err(ErrorKind::ConnectionReset));
    let log = listener.wait_log("destination refused");
    let line = log
        .lines()
        .find(|l| l.contains("destination refused"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("named no destination"), "{line}");
    assert!(line.contains(&connector_fp().to_string()), "{line}");
    assert_eq!(
        service.accepted.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}
