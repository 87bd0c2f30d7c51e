//! The Prometheus endpoint of the real daemon: scraped during and after a transfer, counters
//! checked to the byte, a refused handshake counted with its reason, junk requests answered
//! with a 4xx, and counters kept across a reload.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::daemon::*;

const METRICS: &str = "\n[metrics]\nlisten = \"127.0.0.1:0\"\n";

/// Sends `request` raw and returns the whole response.
fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /metrics`: the body of a 200 answer.
fn scrape(addr: SocketAddr) -> String {
    let r = http(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    let (head, body) = r.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{r}"));
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// The value of the sample `series` (name and labels exactly), if present.
fn value(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `name{tunnel="test",role="ROLE"<more>}`.
fn series(name: &str, role: &str, more: &str) -> String {
    format!("{name}{{tunnel=\"test\",role=\"{role}\"{more}}}")
}

/// Scrapes until `series` has `want` (a counter may be updated just after the bytes it counts
/// are delivered), and returns the last scrape.
fn wait_value(addr: SocketAddr, series: &str, want: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(addr);
        if value(&text, series) == Some(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {want}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn echo_round(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).unwrap();
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, data);
}

#[test]
fn counters_move_by_the_right_amounts_during_and_after_a_transfer() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let lconf = site.write(
        "listener.toml",
        &(listener_config(any_port(), service.addr, &[connector_fp()], "") + METRICS),
    );
    let mut listener = Daemon::start(&lconf);
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

    // Nothing yet.
    let text = scrape(cm);
    assert_eq!(
        value(
            &text,
            &series("sealpipe_connections_total", "connector", "")
        ),
        Some(0)
    );
    assert_eq!(
        value(&text, &series("sealpipe_bytes_sent_total", "connector", "")),
        Some(0)
    );

    // During a transfer: the bytes so far are counted while the connection stays open.
    let first = pseudo_random(1, 300_001);
    let second = pseudo_random(2, 200_003);
    let mut s = TcpStream::connect(connector.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    echo_round(&mut s, &first);
    let n1 = first.len() as u64;
    let c = wait_value(
        cm,
        &series("sealpipe_bytes_received_total", "connector", ""),
        n1,
    );
    assert_eq!(
        value(&c, &series("sealpipe_bytes_sent_total", "connector", "")),
        Some(n1)
    );
    assert_eq!(
        value(&c, &series("sealpipe_connections_open", "connector", "")),
        Some(1)
    );
    assert_eq!(
        value(&c, &series("sealpipe_connections_total", "connector", "")),
        Some(1)
    );
    let l = wait_value(lm, &series("sealpipe_bytes_sent_total", "listener", ""), n1);
    assert_eq!(
        value(&l, &series("sealpipe_bytes_received_total", "listener", "")),
        Some(n1)
    );
    assert_eq!(
        value(&l, &series("sealpipe_connections_open", "listener", "")),
        Some(1)
    );

    // More data, a half-close, the end: the totals are exactly what went through.
    echo_round(&mut s, &second);
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let total = n1 + second.len() as u64;
    let c = wait_value(cm, &series("sealpipe_connections_open", "connector", ""), 0);
    for (name, want) in [
        ("sealpipe_bytes_sent_total", total),
        ("sealpipe_bytes_received_total", total),
        ("sealpipe_connections_total", 1),
        ("sealpipe_handshake_duration_seconds_count", 1),
        ("sealpipe_rekeys_total", 0),
        ("sealpipe_resumptions_total", 0),
    ] {
        assert_eq!(
            value(&c, &series(name, "connector", "")),
            Some(want),
            "{name}:\n{c}"
        );
    }
    assert_eq!(
        value(
            &c,
            &series("sealpipe_handshakes_total", "connector", ",result=\"ok\"")
        ),
        Some(1)
    );
    let l = wait_value(lm, &series("sealpipe_connections_open", "listener", ""), 0);
    for (name, want) in [
        ("sealpipe_bytes_sent_total", total),
        ("sealpipe_bytes_received_total", total),
        ("sealpipe_connections_total", 1),
        ("sealpipe_handshake_duration_seconds_count", 1),
        ("sealpipe_mac1_rejected_total", 0),
    ] {
        assert_eq!(
            value(&l, &series(name, "listener", "")),
            Some(want),
            "{name}:\n{l}"
        );
    }
    assert_eq!(
        value(
            &l,
            &series("sealpipe_handshakes_total", "listener", ",result=\"ok\"")
        ),
        Some(1)
    );
    assert_eq!(
        value(
            &l,
            &series(
                "sealpipe_handshake_duration_seconds_bucket",
                "listener",
                ",le=\"+Inf\""
            )
        ),
        Some(1)
    );
    assert!(
        l.contains("# TYPE sealpipe_handshake_duration_seconds histogram"),
        "{l}"
    );

    // A connector with an untrusted key: refused, and counted with its reason.
    let uconf = site.write(
        "untrusted.toml",
        &(connector_config(
            "untrusted.pem",
            any_port(),
            listener.addr(),
            &listener_fp(),
            "",
        ) + METRICS),
    );
    let untrusted = Daemon::start(&uconf);
    assert!(try_exchange(untrusted.addr(), b"let me in").is_err());
    let l = wait_value(
        lm,
        &series(
            "sealpipe_handshakes_total",
            "listener",
            ",result=\"failed\",reason=\"untrusted\"",
        ),
        1,
    );
    assert_eq!(
        value(
            &l,
            &series("sealpipe_handshakes_total", "listener", ",result=\"ok\"")
        ),
        Some(1)
    );
    assert_eq!(
        value(&l, &series("sealpipe_connections_total", "listener", "")),
        Some(2)
    );
    assert_eq!(
        value(&l, &series("sealpipe_bytes_sent_total", "listener", "")),
        Some(total)
    );
    // Counters survive a reload.
    listener.signal("HUP");
    listener.wait_log("configuration reloaded");
    let l = scrape(lm);
    assert_eq!(
        value(&l, &series("sealpipe_bytes_sent_total", "listener", "")),
        Some(total)
    );
    assert_eq!(
        value(&l, &series("sealpipe_connections_total", "listener", "")),
        Some(2)
    );
    listener.kill();
}

#[test]
fn junk_requests_get_a_4xx_and_the_endpoint_keeps_working() {
    let site = Site::new();
    let conf = site.write(
        "connector.toml",
        &(connector_config(
            "connector.pem",
            any_port(),
            dead_port().addr,
            &listener_fp(),
            "",
        ) + METRICS),
    );
    let d = Daemon::start(&conf);
    let m = metrics_addr(&d);
    for (request, status) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], "HTTP/1.1 404"),
        (b"GET /metricsX HTTP/1.1\r\n\r\n", "HTTP/1.1 404"),
        (b"POST /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405"),
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", "HTTP/1.1 400"),
        (b"GET /metrics\r\n\r\n", "HTTP/1.1 400"),
    ] {
        let r = http(m, request);
        assert!(r.starts_with(status), "{request:?}: {r}");
    }
    // A request head that never ends is cut at its size limit.
    let r = http(m, &vec![b'a'; 9000]);
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // A client that sends half a request and hangs up.
    drop(TcpStream::connect(m).unwrap());
    let text = scrape(m);
    assert!(
        text.contains("sealpipe_connections_total{tunnel=\"test\",role=\"connector\"} 0"),
        "{text}"
    );
}

#[test]
fn check_validates_the_metrics_address() {
    let site = Site::new();
    let conf = site.write(
        "connector.toml",
        &(connector_config(
            "connector.pem",
            any_port(),
            dead_port().addr,
            &listener_fp(),
            "",
        ) + "\n[metrics]\nlisten = \"localhost\"\n"),
    );
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:14:10: [metrics]: key `listen`: invalid address \"localhost\": missing `:port`",
            conf.display()
        )),
        "{err}"
    );
}
