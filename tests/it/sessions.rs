//! Sealed sessions seen from outside, with real daemons: `sealpipe status` on both ends lists
//! every live session (warm, idle between streams, carrying a stream) with its peer and key, and
//! the tunnels a reload could not start with the last reload's outcome; the
//! `sealpipe_sessions{state}` gauges count them; a connector's failure is logged once.

use crate::support;

use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use support::daemon::*;

/// `sealpipe status --config CONFIG --json`, parsed.
fn status_json(config: &Path) -> serde_json::Value {
    let (code, out, err) = run_cli(&["status", "--json", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "status failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The sessions of the tunnel named "test" in `status`.
fn sessions(status: &serde_json::Value) -> Vec<serde_json::Value> {
    let t = status["tunnels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "test")
        .unwrap_or_else(|| panic!("no tunnel test in {status}"));
    t["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("no sessions in {status}"))
        .clone()
}

/// Polls `status` of `config` until `ok` holds of it; returns it. Fails after 20 s.
fn wait_status(config: &Path, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status_json(config);
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never reached: {s:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn has_warm(status: &serde_json::Value) -> bool {
    sessions(status).iter().any(|s| s["state"] == "warm")
}

#[test]
fn status_and_the_gauges_show_warm_and_idle_sessions_on_both_ends() {
    let service = Service::start(Behaviour::Echo);
    let t = Tunnel::start(
        Site::new(),
        &(listener_for(service.addr, "") + METRICS),
        |listener| connector_for(listener, "") + METRICS,
    );
    let lconf = t.site.path("listener.toml");
    let cconf = t.site.path("connector.toml");
    // Before any client: no session at either end (warm sessions are made once clients come).
    assert!(sessions(&status_json(&lconf)).is_empty());
    assert!(sessions(&status_json(&cconf)).is_empty());

    // One client: the pool then keeps sessions warm, and the client's session goes back to it.
    let mut c = Clean::open(t.entry, 1);
    c.round();
    c.finish();
    let on_connector = wait_status(&cconf, |s| {
        has_warm(s) && sessions(s).iter().any(|s| s["state"] == "idle")
    });
    let listener_addr = t.listener.addr().to_string();
    for s in sessions(&on_connector) {
        assert_eq!(s["fingerprint"], listener_fp().to_string(), "{s}");
        assert_eq!(s["peer"], listener_addr, "the listener's address: {s}");
        let want = if s["state"] == "idle" { 1 } else { 0 };
        assert_eq!(s["streams"], want, "{s}");
        assert!(s["id"].as_u64().unwrap() > 0, "{s}");
        assert!(s["resumed"].is_boolean() && s["last_heard_secs"].is_number());
    }
    // The listener lists the same sessions, warm ones included, though no client stream is
    // open: it is not blind to established sessions.
    let on_listener = wait_status(&lconf, |s| {
        has_warm(s) && sessions(s).iter().any(|s| s["state"] == "idle")
    });
    assert!(
        on_listener["tunnels"][0]["connections"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{on_listener:#}"
    );
    for s in sessions(&on_listener) {
        assert_eq!(s["fingerprint"], connector_fp().to_string(), "{s}");
        assert!(s["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{s}");
    }
    // The human table shows them, and whether each resumed.
    let (code, out, err) = run_cli(&["status", "--config", lconf.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(" warm ") && out.contains(" idle "), "{out}");
    assert!(
        out.contains("resumed") || out.contains("full handshake"),
        "{out}"
    );

    // The gauges count the warm sessions the status lists, at both ends.
    for (d, role, conf) in [
        (&t.connector, "connector", &cconf),
        (&t.listener, "listener", &lconf),
    ] {
        let text = scrape(metrics_addr(d));
        let warm = value(&text, &series("sealpipe_sessions", role, ",state=\"warm\""))
            .unwrap_or_else(|| panic!("no sealpipe_sessions for {role}:\n{text}"));
        assert!(warm >= 1, "{role}:\n{text}");
        let listed = sessions(&status_json(conf))
            .iter()
            .filter(|s| s["state"] == "warm")
            .count() as u64;
        // Both read a moment apart: a refill may land between them.
        assert!(
            listed >= warm.min(1),
            "{role}: {listed} listed, {warm} counted"
        );
        assert!(
            value(
                &text,
                &series("sealpipe_sessions", role, ",state=\"active\"")
            )
            .is_some(),
            "{text}"
        );
    }
}

/// Adds a second tunnel on `busy` (a port in use) to the config of `d`, reloads, and checks that
/// `status` lists it as not started and the reload as incomplete.
fn a_tunnel_that_cannot_bind_is_listed(d: &Daemon, section: &str, busy: std::net::SocketAddr) {
    let before = status_json(&d.config);
    assert!(before["last_reload"].is_null(), "no reload yet: {before:#}");
    let second = match section {
        "listener" => format!(
            "\n[[listener]]\nname = \"second\"\nlisten = \"{busy}\"\nforward = \"127.0.0.1:9\"\npeers = [\"{}\"]\n",
            connector_fp()
        ),
        _ => format!(
            "\n[[connector]]\nname = \"second\"\nlisten = \"{busy}\"\nconnect = \"127.0.0.1:9\"\npeer = \"{}\"\n",
            listener_fp()
        ),
    };
    d.edit_config(|text| format!("{text}{second}"));
    d.signal("HUP");
    d.wait_log("reload incomplete");
    let s = status_json(&d.config);
    let not_started = s["not_started"]
        .as_array()
        .unwrap_or_else(|| panic!("{s:#}"));
    assert_eq!(not_started.len(), 1, "{s:#}");
    assert_eq!(not_started[0]["name"], "second", "{s:#}");
    assert_eq!(not_started[0]["role"], section, "{s:#}");
    assert_eq!(not_started[0]["listen"], busy.to_string(), "{s:#}");
    assert!(
        not_started[0]["error"].as_str().unwrap().contains("in use"),
        "{s:#}"
    );
    let reload = &s["last_reload"];
    assert_eq!(reload["outcome"], "incomplete", "{s:#}");
    assert!(
        reload["problems"][0]
            .as_str()
            .unwrap()
            .contains("tunnel second not started"),
        "{s:#}"
    );
    assert!(reload["at_unix"].as_u64().unwrap() > 1_600_000_000, "{s:#}");
    // The running tunnel is still there, and the human form names both.
    assert_eq!(s["tunnels"].as_array().unwrap().len(), 1, "{s:#}");
    let (code, out, err) = run_cli(&["status", "--config", d.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{section} \"second\": NOT STARTED")),
        "{out}"
    );
    assert!(
        out.contains("last reload") && out.contains("incomplete"),
        "{out}"
    );
}

#[test]
fn status_lists_tunnels_a_reload_could_not_start_and_the_reload_outcome_on_both_ends() {
    let busy = [(); 2].map(|()| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, "");
    a_tunnel_that_cannot_bind_is_listed(&t.listener, "listener", busy[0].local_addr().unwrap());
    a_tunnel_that_cannot_bind_is_listed(&t.connector, "connector", busy[1].local_addr().unwrap());
    // The ports freed and the config reloaded: both run, nothing is listed as not started, and
    // the reload is `ok`.
    drop(busy);
    for d in [&t.listener, &t.connector] {
        d.reload();
        let s = status_json(&d.config);
        assert!(s["not_started"].as_array().unwrap().is_empty(), "{s:#}");
        assert_eq!(s["last_reload"]["outcome"], "ok", "{s:#}");
        assert_eq!(s["tunnels"].as_array().unwrap().len(), 2, "{s:#}");
    }
}

#[test]
fn a_connector_failure_is_logged_once_with_its_cause() {
    // A listener that is down: the pool's refills fail, and so does the client's own handshake.
    let dead = dead_port();
    let site = Site::new();
    let connector = start_connector(&site, dead.addr, "");
    let mut client = TcpStream::connect(connector.addr()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        !matches!(std::io::Read::read(&mut client, &mut byte), Ok(1)),
        "the client gets no byte"
    );
    // Wait until the refills started for this client have failed as well.
    let s = wait_status(&connector.config, |s| {
        s["tunnels"][0]["handshakes_failed"].as_u64().unwrap() >= 2
    });
    std::thread::sleep(Duration::from_millis(300));
    let log = connector.log_text();
    let loud: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .filter(|l| l.contains(&dead.addr.to_string()) || l.contains("handshake"))
        .collect();
    assert_eq!(loud.len(), 1, "one failure, one line ({s}):\n{log}");
    let line = loud[0];
    // Its cause, the listener's address as `peer`, the client on its own field, a session id.
    assert!(line.contains("reason="), "{line}");
    assert!(
        line.contains(&format!("peer={}", dead.addr)),
        "the peer is the listener: {line}"
    );
    assert!(
        line.contains(&format!("client={}", client.local_addr().unwrap())),
        "{line}"
    );
    assert!(line.contains("session="), "{line}");
    assert!(!log.contains("peer=warm session"), "{log}");
}

#[test]
fn a_session_closed_by_a_shutdown_is_logged_as_a_shutdown() {
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, "");
    let mut c = Clean::open(t.entry, 2);
    c.round();
    c.finish();
    // The listener holds sessions between streams (the client's, given back to the pool, and
    // warm ones); its stop closes them, and says that it was the stop.
    let lconf = t.site.path("listener.toml");
    wait_status(&lconf, |s| !sessions(s).is_empty());
    t.listener.signal("TERM");
    let log = t.listener.wait_log("session closed between streams");
    let line = log
        .lines()
        .find(|l| l.contains("session closed between streams"))
        .unwrap();
    assert!(line.contains("between streams: shutdown"), "{line}");
    assert!(!line.contains("trusted"), "not a revocation: {line}");
    assert!(line.contains("session="), "{line}");
}
