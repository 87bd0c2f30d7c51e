//! The Prometheus endpoint of the real daemon: scraped during and after a transfer, counters
//! checked to the byte, a refused handshake counted with its reason, junk requests answered
//! with a 4xx, and counters kept across a reload.

use crate::support;

use std::io::Read;
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use support::daemon::*;
use support::pseudo_random;

#[test]
fn counters_move_by_the_right_amounts_during_and_after_a_transfer() {
    let service = Service::start(Behaviour::Echo);
    let mut t = metrics_tunnel(service.addr);
    let (lm, cm) = (metrics_addr(&t.listener), metrics_addr(&t.connector));
    let ok = ",result=\"ok\"";

    // Nothing yet.
    assert_values(
        &scrape(cm),
        "connector",
        &[
            ("sealpipe_connections_total", "", 0),
            ("sealpipe_bytes_sent_total", "", 0),
        ],
    );

    // During a transfer: the bytes so far are counted while the connection stays open.
    let first = pseudo_random(1, 300_001);
    let second = pseudo_random(2, 200_003);
    let mut s = TcpStream::connect(t.entry).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    echo_round(&mut s, &first);
    let n1 = first.len() as u64;
    let c = wait_value(
        cm,
        &series("sealpipe_bytes_received_total", "connector", ""),
        n1,
    );
    assert_values(
        &c,
        "connector",
        &[
            ("sealpipe_bytes_sent_total", "", n1),
            ("sealpipe_connections_open", "", 1),
            ("sealpipe_connections_total", "", 1),
        ],
    );
    let l = wait_value(lm, &series("sealpipe_bytes_sent_total", "listener", ""), n1);
    assert_values(
        &l,
        "listener",
        &[
            ("sealpipe_bytes_received_total", "", n1),
            ("sealpipe_connections_open", "", 1),
        ],
    );

    // More data, a half-close, the end: the totals are exactly what went through.
    echo_round(&mut s, &second);
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let total = n1 + second.len() as u64;
    let c = wait_value(cm, &series("sealpipe_connections_open", "connector", ""), 0);
    assert_values(
        &c,
        "connector",
        &[
            ("sealpipe_bytes_sent_total", "", total),
            ("sealpipe_bytes_received_total", "", total),
            ("sealpipe_connections_total", "", 1),
            ("sealpipe_handshake_duration_seconds_count", "", 1),
            ("sealpipe_rekeys_total", "", 0),
            ("sealpipe_resumptions_total", "", 0),
            ("sealpipe_handshakes_total", ok, 1),
        ],
    );
    let l = wait_value(lm, &series("sealpipe_connections_open", "listener", ""), 0);
    assert_values(
        &l,
        "listener",
        &[
            ("sealpipe_bytes_sent_total", "", total),
            ("sealpipe_bytes_received_total", "", total),
            ("sealpipe_connections_total", "", 1),
            ("sealpipe_handshake_duration_seconds_count", "", 1),
            ("sealpipe_mac1_rejected_total", "", 0),
            ("sealpipe_handshakes_total", ok, 1),
            (
                "sealpipe_handshake_duration_seconds_bucket",
                ",le=\"+Inf\"",
                1,
            ),
        ],
    );
    assert!(
        l.contains("# TYPE sealpipe_handshake_duration_seconds histogram"),
        "{l}"
    );

    // A connector with an untrusted key: refused, and counted with its reason.
    let untrusted = t.site.start(
        "untrusted.toml",
        &(connector_config(
            "untrusted.pem",
            any_port(),
            t.listener.addr(),
            &listener_fp(),
            "pool_max = 0",
        ) + METRICS),
    );
    assert_eq!(
        try_exchange(untrusted.addr(), b"let me in"),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    let l = wait_value(
        lm,
        &series(
            "sealpipe_handshakes_total",
            "listener",
            ",result=\"failed\",reason=\"untrusted\"",
        ),
        1,
    );
    assert_values(
        &l,
        "listener",
        &[
            ("sealpipe_handshakes_total", ok, 1),
            ("sealpipe_connections_total", "", 2),
            ("sealpipe_bytes_sent_total", "", total),
        ],
    );
    // Counters survive a reload.
    t.listener.reload();
    assert_values(
        &scrape(lm),
        "listener",
        &[
            ("sealpipe_bytes_sent_total", "", total),
            ("sealpipe_connections_total", "", 2),
        ],
    );
    t.listener.kill();
}

#[test]
fn junk_requests_get_a_4xx_and_the_endpoint_keeps_working() {
    let site = Site::new();
    let d = site.start(
        "connector.toml",
        &(connector_for(dead_port().addr, "") + METRICS),
    );
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
        &(connector_for(dead_port().addr, "") + "\n[metrics]\nlisten = \"localhost\"\n"),
    );
    let (code, _, err) = run_cli(&["check", "--config", conf.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!(
            "{}:14:10: [metrics]: key `listen`: invalid address \"localhost\": missing `:port`",
            conf.display()
        )),
        "{err}"
    );
}
