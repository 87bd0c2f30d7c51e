//! A daemon's life as an operator sees it in its log and metrics: reloads that apply whole, in
//! part or not at all, keys revoked at reload, and the drain and stop lines at shutdown.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use support::daemon::*;

#[test]
fn a_reload_that_cannot_start_a_tunnel_says_reload_incomplete_and_counts_it() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let metrics = "\n[metrics]\nlisten = \"127.0.0.1:0\"\n";
    let base = listener_config(any_port(), service.addr, &[connector_fp()], "");
    let conf = site.write("listener.toml", &format!("{base}{metrics}"));
    let listener = Daemon::start(&conf);
    let metrics_at = metrics_addr(&listener);
    // Keep the first tunnel as it is and add one whose port another socket holds.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let text = format!(
        "{}{metrics}\n[[listener]]\nname = \"clash\"\nlisten = \"{}\"\nforward = \"{}\"\npeers = [\"{}\"]\n",
        base,
        taken.local_addr().unwrap(),
        service.addr,
        connector_fp()
    );
    std::fs::write(&conf, text).unwrap();
    listener.signal("HUP");
    let log = listener.wait_log("reload incomplete");
    assert!(
        log.contains("reload incomplete: tunnel clash not started"),
        "{log}"
    );
    assert!(!log.contains("configuration reloaded"), "{log}");
    let m = scrape(metrics_at);
    assert!(
        m.contains("sealpipe_reloads_total{result=\"incomplete\"} 1"),
        "{m}"
    );
    assert!(m.contains("sealpipe_reloads_total{result=\"ok\"} 0"), "{m}");

    // Once the port is free, the same config reloads whole.
    drop(taken);
    listener.signal("HUP");
    listener.wait_log("configuration reloaded");
    let m = scrape(metrics_at);
    assert!(m.contains("sealpipe_reloads_total{result=\"ok\"} 1"), "{m}");
}

#[test]
fn a_reload_that_removes_a_key_cuts_its_open_connections() {
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, "");
    let mut open = TcpStream::connect(t.entry).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    open.write_all(b"before").unwrap();
    let mut back = [0u8; 6];
    open.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"before");

    let lconf = t.site.path("listener.toml");
    let text = std::fs::read_to_string(&lconf).unwrap().replace(
        &connector_fp().to_string(),
        &fingerprint_of("untrusted.pem").to_string(),
    );
    std::fs::write(&lconf, text).unwrap();
    t.listener.signal("HUP");
    let log = t.listener.wait_log("reason=revoked at reload");
    assert!(
        log.contains("key no longer trusted, its open connections are cut"),
        "{log}"
    );
    // The client's connection is reset, not closed as if the stream had ended.
    let mut rest = Vec::new();
    let r = open.read_to_end(&mut rest);
    assert_eq!(
        r.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "{rest:?}"
    );
    // And a new connection of that key is refused.
    assert_eq!(
        try_exchange(t.entry, b"new"),
        Err(std::io::ErrorKind::ConnectionReset)
    );
}

#[test]
fn shutdown_counts_real_connections_and_says_stopped() {
    let service = Service::start(Behaviour::Echo);
    let mut t = tunnel_to(service.addr, "drain_timeout = \"1s\"");
    // Nothing open: no drain line, a final line.
    t.connector.signal("TERM");
    let status = t.connector.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let log = t.connector.log_text();
    assert!(!log.contains("draining open connections"), "{log}");
    assert!(log.contains("stopped"), "{log}");

    // One connection open through the listener: it counts one.
    let connector = start_connector(&t.site, t.listener.addr(), "");
    let mut open = TcpStream::connect(connector.addr()).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    open.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    open.read_exact(&mut b).unwrap();
    t.listener.signal("TERM");
    let log = t.listener.wait_log("stopped");
    assert!(log.contains("draining open connections open=1"), "{log}");
}
