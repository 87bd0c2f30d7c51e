//! Where the features merged together meet, with real daemons over real sockets: resumption
//! and the metrics, resumption and `accept_unknown` (and its reload), resumption and TOFU,
//! resumption and the StreamInfo record / PROXY header, Unix-socket clients and PROXY v2, and
//! Unix sockets and redirect mode in the config.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::daemon::*;

const METRICS: &str = "\n[metrics]\nlisten = \"127.0.0.1:0\"\n";
const PROXY_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Waits until `d` has logged `n` "connection open" lines and returns their `resumed=` values.
fn wait_opens(d: &Daemon, n: usize) -> Vec<bool> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = opens(&d.log_text());
        if o.len() >= n || Instant::now() > deadline {
            return o;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// `GET /metrics`: the whole response.
fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    text
}

/// The value of `name{tunnel="test",role="ROLE"<more>}`.
fn value(text: &str, name: &str, role: &str, more: &str) -> Option<u64> {
    let series = format!("{name}{{tunnel=\"test\",role=\"{role}\"{more}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
}

/// Scrapes until `name` reaches `want` (counters move just after the bytes they count), then
/// returns the scrape.
fn wait_value(addr: SocketAddr, name: &str, role: &str, more: &str, want: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(addr);
        if value(&text, name, role, more) == Some(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never reached {want}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn resumptions_and_handshakes_are_each_counted_once_on_both_sides() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let lconf = site.write(
        "listener.toml",
        &(listener_config(any_port(), service.addr, &[connector_fp()], "") + METRICS),
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
        ) + METRICS),
    );
    let connector = Daemon::start(&cconf);
    let (lm, cm) = (metrics_addr(&listener), metrics_addr(&connector));

    // One full handshake, then three resumed ones.
    for i in 0..4u8 {
        echo_ok(connector.addr(), &[b'a' + i; 1000]);
    }
    assert_eq!(wait_opens(&connector, 4), [false, true, true, true]);
    assert_eq!(wait_opens(&listener, 4), [false, true, true, true]);
    for (addr, role) in [(cm, "connector"), (lm, "listener")] {
        let text = wait_value(addr, "sealpipe_connections_open", role, "", 0);
        let text = if value(&text, "sealpipe_bytes_received_total", role, "") == Some(4000) {
            text
        } else {
            wait_value(addr, "sealpipe_bytes_received_total", role, "", 4000)
        };
        for (name, more, want) in [
            ("sealpipe_resumptions_total", "", 3),
            ("sealpipe_handshakes_total", ",result=\"ok\"", 4),
            ("sealpipe_handshake_duration_seconds_count", "", 4),
            ("sealpipe_connections_total", "", 4),
        ] {
            assert_eq!(
                value(&text, name, role, more),
                Some(want),
                "{role} {name}:\n{text}"
            );
        }
        assert!(!text.contains("result=\"failed\""), "{role}:\n{text}");
    }

    // A refused ticket (the listener turned resumption off): a full handshake in the same
    // connection, counted once as ok, and not as a resumption.
    let text = std::fs::read_to_string(&lconf).unwrap();
    let off = text.replace("[defaults]\n", "[defaults]\nresumption = false\n");
    assert_ne!(off, text);
    std::fs::write(&lconf, off).unwrap();
    listener.signal("HUP");
    listener.wait_log("configuration reloaded");
    echo_ok(connector.addr(), b"full again");
    assert!(
        !wait_opens(&connector, 5)[4],
        "the refused ticket is not a resumption"
    );
    for (addr, role) in [(cm, "connector"), (lm, "listener")] {
        let text = wait_value(addr, "sealpipe_handshakes_total", role, ",result=\"ok\"", 5);
        assert_eq!(
            value(&text, "sealpipe_resumptions_total", role, ""),
            Some(3),
            "{role}:\n{text}"
        );
        assert!(!text.contains("result=\"failed\""), "{role}:\n{text}");
    }
    assert_eq!(service.accepted.load(Ordering::SeqCst), 5);
}

// ---------------------------------------------------------------------------------------------
// accept_unknown

#[test]
fn an_accept_unknown_connector_resumes_until_a_reload_turns_accept_unknown_off() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let trusted = format!("peers = [\"{}\"]\n", connector_fp());
    let lconf = site.write(
        "listener.toml",
        &listener_toml(
            any_port(),
            service.addr,
            "listener.pem",
            &format!("{trusted}accept_unknown = true\n"),
        ),
    );
    let listener = Daemon::start(&lconf);
    // A connector whose key is not in `peers`.
    let cconf = site.write(
        "connector.toml",
        &connector_config(
            "untrusted.pem",
            any_port(),
            listener.addr(),
            &listener_fp(),
            "",
        ),
    );
    let connector = Daemon::start(&cconf);
    for msg in [&b"one"[..], b"two", b"three"] {
        echo_ok(connector.addr(), msg);
    }
    assert_eq!(wait_opens(&listener, 3), [false, true, true]);
    assert_eq!(wait_opens(&connector, 3), [false, true, true]);

    // accept_unknown off: the connector still holds a ticket with uses left, but the listener
    // refuses it (its peer is no longer let in) and then the full handshake too.
    // (The config text is edited, not rewritten: `listen` stays `127.0.0.1:0`, the same socket.)
    let text = std::fs::read_to_string(&lconf).unwrap();
    let off = text.replace("accept_unknown = true\n", "");
    assert_ne!(off, text);
    std::fs::write(&lconf, off).unwrap();
    listener.signal("HUP");
    listener.wait_log("configuration reloaded");
    for _ in 0..2 {
        assert!(try_exchange(connector.addr(), b"let me in").is_err());
    }
    let log = listener.wait_log("is not trusted");
    let untrusted = fingerprint_of("untrusted.pem");
    assert!(
        log.contains(&format!("connector key {untrusted} is not trusted")),
        "{log}"
    );
    assert_eq!(opens(&listener.log_text()).len(), 3, "{log}");
    assert_eq!(service.accepted.load(Ordering::SeqCst), 3);
}

#[test]
fn turning_accept_unknown_off_holds_even_if_the_new_listen_address_cannot_be_bound() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let trusted = format!("peers = [\"{}\"]\n", connector_fp());
    let lconf = site.write(
        "listener.toml",
        &listener_toml(
            any_port(),
            service.addr,
            "listener.pem",
            &format!("{trusted}accept_unknown = true\n"),
        ),
    );
    let listener = Daemon::start(&lconf);
    let cconf = site.write(
        "connector.toml",
        &connector_config(
            "untrusted.pem",
            any_port(),
            listener.addr(),
            &listener_fp(),
            "",
        ),
    );
    let connector = Daemon::start(&cconf);
    echo_ok(connector.addr(), b"in");
    assert_eq!(wait_opens(&listener, 1), [false]);

    // The reload moves the listener to an address already taken, and turns accept_unknown off:
    // the old socket stays (nothing else can serve), but under the new settings.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let text = std::fs::read_to_string(&lconf).unwrap();
    let moved = text
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{}\"", taken.local_addr().unwrap()),
        )
        .replace("accept_unknown = true\n", "");
    std::fs::write(&lconf, moved).unwrap();
    listener.signal("HUP");
    let log = listener.wait_log("configuration reloaded");
    assert!(
        log.contains("the previous socket stays, with the new settings"),
        "{log}"
    );
    assert!(try_exchange(connector.addr(), b"let me in").is_err());
    listener.wait_log("is not trusted");
    assert_eq!(opens(&listener.log_text()).len(), 1);
    assert_eq!(service.accepted.load(Ordering::SeqCst), 1);
    drop(taken);
}

// ---------------------------------------------------------------------------------------------
// TOFU

#[test]
fn a_tofu_connector_resumes_from_its_second_connection_and_a_key_change_stays_loud() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let trusted = format!("peers = [\"{}\"]\nallow_tofu = true\n", connector_fp());
    let lconf = site.write(
        "listener.toml",
        &listener_toml(any_port(), service.addr, "listener.pem", &trusted),
    );
    let listener = Daemon::start(&lconf);
    let addr = listener.addr();
    let connector = Daemon::start(&tofu_connector(&site, addr));
    let known = site.path("known_peers");

    // First contact: a full handshake and the key recorded; the ticket of that handshake is
    // bound to the recorded key, so the very next connection (pinned to it) resumes.
    echo_ok(connector.addr(), b"first");
    let recorded = std::fs::read_to_string(&known).unwrap();
    assert!(
        recorded.ends_with(&format!("\n{addr} {}\n", listener_fp())),
        "{recorded}"
    );
    echo_ok(connector.addr(), b"second");
    echo_ok(connector.addr(), b"third");
    assert_eq!(wait_opens(&connector, 3), [false, true, true]);
    assert_eq!(wait_opens(&listener, 3), [false, true, true]);

    // The listener's key changes at a reload (its ticket store survives): the connector offers
    // its ticket, which the listener refuses (other keys), and the full handshake that follows
    // presents the new key: refused, loudly.
    let text = std::fs::read_to_string(&lconf).unwrap();
    let rekeyed = text.replace("\"listener.pem\"", "\"untrusted.pem\"");
    assert_ne!(rekeyed, text);
    std::fs::write(&lconf, rekeyed).unwrap();
    listener.signal("HUP");
    listener.wait_log("configuration reloaded");
    assert!(try_exchange(connector.addr(), b"x").is_err());
    let clog = connector.wait_log("LISTENER KEY CHANGED");
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
    assert_eq!(opens(&connector.log_text()).len(), 3);
    assert_eq!(service.accepted.load(Ordering::SeqCst), 3);
}

// ---------------------------------------------------------------------------------------------
// StreamInfo / PROXY v2 with resumption and Unix-socket clients

/// A TCP target that reads a PROXY v2 header (whole, as raw bytes) on each connection, reports
/// it, then echoes the payload.
fn proxy_target() -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut header = vec![0u8; 16];
                if s.read_exact(&mut header).is_err() {
                    return;
                }
                let len = u16::from_be_bytes([header[14], header[15]]) as usize;
                header.resize(16 + len, 0);
                if s.read_exact(&mut header[16..]).is_err() {
                    return;
                }
                let _ = tx.send(header);
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    (addr, rx)
}

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

fn proxy_listener(site: &Site, target: SocketAddr) -> Daemon {
    let lconf = site.write(
        "listener.toml",
        &(listener_config(any_port(), target, &[connector_fp()], "") + "proxy_protocol = \"v2\"\n"),
    );
    Daemon::start(&lconf)
}

#[test]
fn a_resumed_connection_carries_its_own_client_in_the_proxy_header() {
    let (target, headers) = proxy_target();
    let site = Site::new();
    let listener = proxy_listener(&site, target);
    let (connector, _) = start_connector(&site, listener.addr(), "");
    for i in 0..3u8 {
        let mut s = TcpStream::connect(connector.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let me = s.local_addr().unwrap();
        let msg = [b'p' + i; 100];
        s.write_all(&msg).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back, msg);
        let header = headers.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(header, proxy_v4(me, connector.addr()), "connection {i}");
    }
    assert_eq!(wait_opens(&listener, 3), [false, true, true]);
}

#[test]
fn a_unix_socket_client_gets_a_local_proxy_header_full_and_resumed() {
    let (target, headers) = proxy_target();
    let site = Site::new();
    let listener = proxy_listener(&site, target);
    let sock = site.path("app.sock");
    let cconf = site.write(
        "connector.toml",
        &format!(
            "[identity]\nprivate_key = \"connector.pem\"\n\n[[connector]]\nname = \"test\"\nlisten = \"unix:{}\"\nconnect = \"{}\"\npeer = \"{}\"\n",
            sock.display(),
            listener.addr(),
            listener_fp()
        ),
    );
    let _connector = Daemon::start(&cconf);
    // LOCAL command, UNSPEC family, no address block: a Unix client has no IP address to give.
    let mut local = PROXY_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    for i in 0..2u8 {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let msg = [b'u' + i; 100];
        s.write_all(&msg).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back, msg);
        let header = headers.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(header, local, "connection {i}");
    }
    assert_eq!(wait_opens(&listener, 2), [false, true]);
}

// ---------------------------------------------------------------------------------------------
// Config

fn check(config: &Path) -> (bool, String) {
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn redirect_mode_on_a_unix_listen_socket_is_a_config_error() {
    let site = Site::new();
    let text = format!(
        "[identity]\nprivate_key = \"connector.pem\"\n\n[[connector]]\nname = \"test\"\nlisten = \"unix:app.sock\"\nconnect = \"127.0.0.1:7443\"\npeer = \"{}\"\nmode = \"redirect\"\n",
        listener_fp()
    );
    let cconf = site.write("connector.toml", &text);
    let (ok, err) = check(&cconf);
    assert!(!ok, "check accepted it");
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
    let (ok, err) = check(&cconf);
    assert!(ok, "{err}");
}

#[test]
fn a_first_contact_resume_hello_is_dropped_at_mac1_by_an_allow_tofu_listener() {
    use sealpipe::proto::handshake::{mac1, FIRST_CONTACT};
    use sealpipe::proto::messages::{header, MessageType, RESUME_HELLO_BODY};
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let lconf = site.write(
        "listener.toml",
        &(listener_toml(
            any_port(),
            service.addr,
            "listener.pem",
            &format!("peers = [\"{}\"]\nallow_tofu = true\n", connector_fp()),
        ) + METRICS),
    );
    let listener = Daemon::start(&lconf);
    let lm = metrics_addr(&listener);
    // A ResumeHello (version 1, no options, a valid X25519 point, some ticket) whose mac1 is
    // keyed by the public first-contact constant: anybody can make one, no connector sends one.
    let mut hello = header(MessageType::ResumeHello, RESUME_HELLO_BODY).to_vec();
    hello.extend_from_slice(&[1, 0]);
    hello.extend_from_slice(&[0x42; 32]);
    let mut e = [0u8; 32];
    e[0] = 9;
    hello.extend_from_slice(&e);
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
    let text = wait_value(lm, "sealpipe_mac1_rejected_total", "listener", "", 1);
    assert_eq!(
        value(
            &text,
            "sealpipe_handshakes_total",
            "listener",
            ",result=\"failed\",reason=\"bad_mac1\""
        ),
        Some(1),
        "{text}"
    );
}
