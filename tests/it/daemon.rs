//! The real daemon over real sockets: two `sealpipe run` processes (listener and connector),
//! real key files, a plaintext service, and hashes checked on both ends.

use crate::support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::daemon::*;
use support::{hex, pseudo_random, wait_for};

#[test]
fn sixty_four_mib_each_way_at_once_with_many_rekeys() {
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(
        service.addr,
        "rekey_bytes = \"1MiB\"\nrecord_size = \"64KiB\"",
    );
    let data = Arc::new(pseudo_random(1, 64 << 20));
    let (sent, received, n) = echo_exchange(t.entry, data);
    assert_eq!(n, 64 << 20);
    assert_eq!(sent, received, "echo through the tunnel differs");
    // The service saw exactly what the client sent.
    wait_for("the service's hash", || {
        !service.received.lock().unwrap().is_empty()
    });
    assert_eq!(service.received.lock().unwrap()[0], sent);
    // Both directions rekeyed many times, and the close line says so.
    let line = t.connector.wait_line("connection closed");
    let rekeys: u64 = line
        .split("rekeys=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rekeys >= 100, "{line}");
    assert!(line.contains(&format!("sent={}", 64 << 20)), "{line}");
}

#[test]
fn half_close_lets_the_service_answer_after_eof() {
    let service = Service::start(Behaviour::AnswerAfterEof);
    let t = tunnel_to(service.addr, "");
    let mut s = TcpStream::connect(t.entry).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let request = pseudo_random(7, 300_000);
    s.write_all(&request).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let expected = format!(
        "got 300000 bytes, sha256 {}\n",
        hex(&Sha256::digest(&request))
    )
    .repeat(1000);
    assert_eq!(answer, expected);
}

#[test]
fn two_hundred_concurrent_connections_each_hashed() {
    let service = Service::start(Behaviour::Echo);
    // A generous handshake timeout: 200 handshakes at once on a loaded 2-core machine.
    let t = tunnel_to(service.addr, "handshake_timeout = \"60s\"");
    let entry = t.entry;
    let handles: Vec<_> = (0..200u64)
        .map(|i| {
            std::thread::spawn(move || {
                let data = Arc::new(pseudo_random(i, 20_000 + (i as usize) * 997));
                let (sent, received, _) = echo_exchange(entry, data);
                assert_eq!(sent, received, "connection {i}");
            })
        })
        .collect();
    let failed = handles
        .into_iter()
        .map(|h| h.join())
        .filter(Result::is_err)
        .count();
    let warnings = |d: &Daemon| -> String {
        d.log_text()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        failed,
        0,
        "connector:\n{}\nlistener:\n{}",
        warnings(&t.connector),
        warnings(&t.listener)
    );
    assert_eq!(service.accepted.load(Ordering::SeqCst), 200);
}

#[test]
fn untrusted_connector_is_refused_and_the_target_never_contacted() {
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_with(service.addr, "untrusted.pem", &listener_fp(), "");
    let r = try_exchange(t.entry, b"let me in");
    assert_eq!(r, Err(ErrorKind::ConnectionReset));
    let untrusted = fingerprint_of("untrusted.pem").to_string();
    let log = t.listener.wait_log(&untrusted);
    assert!(
        log.contains(&format!("connector key {untrusted} is not trusted")),
        "{log}"
    );
    assert_eq!(service.accepted.load(Ordering::SeqCst), 0);
}

#[test]
fn wrong_pinned_key_at_the_connector_resets_the_client() {
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_with(
        service.addr,
        "connector.pem",
        &fingerprint_of("untrusted.pem"),
        "",
    );
    assert_eq!(
        try_exchange(t.entry, b"secret"),
        Err(ErrorKind::ConnectionReset)
    );
    // What the connector says about it is checked in tests/it/misconfiguration.rs.
    let log = t.connector.wait_log("did not answer a hello");
    assert!(
        log.contains("the `peer` pin is probably not its key"),
        "{log}"
    );
    assert_eq!(service.accepted.load(Ordering::SeqCst), 0);
}

#[test]
fn listener_down_or_target_down_resets_the_client_promptly() {
    // Listener down: nothing listens on the sealed port.
    let site = Site::new();
    let nowhere = dead_port();
    let connector = start_connector(&site, nowhere.addr, "");
    let t0 = Instant::now();
    assert_eq!(
        try_exchange(connector.addr(), b"hi"),
        Err(ErrorKind::ConnectionReset)
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    let log = connector.wait_log("Connection refused");
    assert!(
        log.contains("handshake failed") && log.contains("Connection refused"),
        "{log}"
    );

    // Target down: the listener has nowhere to forward.
    let dead = dead_port();
    let t = tunnel_with(dead.addr, "connector.pem", &listener_fp(), "");
    let t0 = Instant::now();
    assert_eq!(
        try_exchange(t.entry, b"hi"),
        Err(ErrorKind::ConnectionReset)
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    let log = t.listener.wait_log("forward target unreachable");
    assert!(
        log.contains("forward target unreachable") && log.contains("Connection refused"),
        "{log}"
    );
    let log = t.connector.wait_log("connection reset");
    assert!(log.contains("connection reset"), "{log}");
}

/// `check` and `run` both fail with exactly this message.
fn assert_config_error(config: &std::path::Path, expected: &str) {
    let c = config.to_str().unwrap();
    for cmd in ["check", "run"] {
        let (code, _, err) = run_cli(&[cmd, "--config", c]);
        assert_ne!(code, 0, "{cmd} accepted a bad config");
        assert!(
            err.contains(expected),
            "{cmd}: expected {expected:?} in:\n{err}"
        );
    }
}

#[test]
fn config_and_key_errors_are_exact_and_fail_check_and_run() {
    let site = Site::new();
    let svc: std::net::SocketAddr = "127.0.0.1:6379".parse().unwrap();
    let good = listener_for(svc, "");
    let p = site.write("good.toml", &good);
    let (code, out, err) = run_cli(&["check", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("OK") && out.contains(&listener_fp().to_string()),
        "{out}"
    );

    // Unknown key.
    let p = site.write(
        "unknown.toml",
        &good.replace("[defaults]\n", "[defaults]\nrekey_byts = \"1GiB\"\n"),
    );
    assert_config_error(
        &p,
        &format!(
            "{}:5:1: unknown key `rekey_byts` in [defaults]",
            p.display()
        ),
    );
    // Bad address.
    let p = site.write(
        "addr.toml",
        &good.replace(&format!("forward = \"{svc}\""), "forward = \"127.0.0.1\""),
    );
    assert_config_error(&p, &format!("{}:10:11: listener \"test\": key `forward`: invalid address \"127.0.0.1\": missing `:port`", p.display()));
    // Missing key file.
    let p = site.write("missing.toml", &good.replace("listener.pem", "nope.pem"));
    assert_config_error(&p, &format!("{}", site.path("nope.pem").display()));
    // Loose permissions.
    let loose = site.path("loose.pem");
    std::fs::copy(site.path("listener.pem"), &loose).unwrap();
    set_mode(&loose, 0o644);
    let p = site.write("loose.toml", &good.replace("listener.pem", "loose.pem"));
    assert_config_error(&p, &format!("chmod 600 {}", loose.display()));
    // Short key.
    let short = site.path("short.pem");
    std::fs::copy(test_data_dir().join("openssl-rsa1024.pem"), &short).unwrap();
    set_mode(&short, 0o600);
    let p = site.write("short.toml", &good.replace("listener.pem", "short.pem"));
    assert_config_error(&p, "1024 bits");
    // Missing config file.
    let missing = site.path("absent.toml");
    assert_config_error(
        &missing,
        &format!("cannot read config file {}", missing.display()),
    );
}

#[test]
fn sighup_with_revoke_new_only_refuses_a_removed_peer_and_keeps_its_open_connection() {
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, "");
    // An open connection, moving data.
    let mut open = TcpStream::connect(t.entry).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    echo_round(&mut open, b"before reload");
    // Rewrite the listener's trust list without the connector, keeping open connections of
    // removed keys (`revoke = "new-only"`; the default cuts them), and reload.
    t.listener.edit_config(|text| {
        text.replace(
            &connector_fp().to_string(),
            &fingerprint_of("untrusted.pem").to_string(),
        )
        .replace(
            "name = \"test\"\n",
            "name = \"test\"\nrevoke = \"new-only\"\n",
        )
    });
    t.listener.reload();
    // New connection refused; the open one still flows.
    assert_eq!(
        try_exchange(t.entry, b"new"),
        Err(ErrorKind::ConnectionReset)
    );
    echo_round(&mut open, b"after reload, still flowing");
    // A broken config on reload is refused and the running one kept.
    std::fs::write(&t.listener.config, "this is not toml [").unwrap();
    t.listener.signal("HUP");
    let log = t.listener.wait_log("reload failed");
    assert!(
        log.contains("reload failed, keeping the running configuration"),
        "{log}"
    );
    echo_round(&mut open, b"after a broken reload");
}

#[test]
fn sigterm_drains_open_connections() {
    let service = Service::start(Behaviour::Echo);
    let mut t = tunnel_to(service.addr, "drain_timeout = \"20s\"");
    let mut open = TcpStream::connect(t.entry).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    open.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    open.read_exact(&mut b).unwrap();
    t.listener.signal("TERM");
    t.listener.wait_log("draining open connections");
    // New connections are no longer accepted by the listener...
    let r = try_exchange(t.entry, b"new");
    assert_eq!(
        r,
        Err(ErrorKind::ConnectionReset),
        "connector:\n{}\nlistener:\n{}",
        t.connector.log_text(),
        t.listener.log_text()
    );
    // ...while the open one finishes cleanly, and then the process exits.
    let mut back = [0u8; 10];
    if let Err(e) = open
        .write_all(b"still here")
        .and_then(|()| open.read_exact(&mut back))
    {
        panic!(
            "echo during the drain: {e}\nconnector:\n{}\nlistener:\n{}",
            t.connector.log_text(),
            t.listener.log_text()
        );
    }
    assert_eq!(&back, b"still here");
    open.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).unwrap();
    let status = t.listener.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn demo_once_exits_zero() {
    let (code, out, err) = run_cli(&["demo", "--once"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("round trip:     ok"), "{out}");
}

#[test]
fn keygen_and_fingerprint_agree() {
    let site = Site::new();
    let key = site.path("new.pem");
    let (code, out, err) = run_cli(&["keygen", "--out", key.to_str().unwrap(), "--bits", "2048"]);
    assert_eq!(code, 0, "{err}");
    let printed = out.lines().last().unwrap().to_string();
    let (_, fp_priv, _) = run_cli(&["fingerprint", key.to_str().unwrap()]);
    let (_, fp_pub, _) = run_cli(&["fingerprint", &format!("{}.pub", key.display())]);
    assert_eq!(fp_priv.trim(), printed);
    assert_eq!(fp_pub.trim(), printed);
    // Refuses to overwrite.
    let (code, _, err) = run_cli(&["keygen", "--out", key.to_str().unwrap(), "--bits", "2048"]);
    assert_ne!(code, 0);
    assert!(err.contains(key.to_str().unwrap()), "{err}");
}

#[test]
fn per_source_rate_limit_drops_past_the_rate_and_warns_once() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let listener = site.start(
        "listener.toml",
        &listener_for(
            service.addr,
            "source_rate_limit = 2\nhandshake_timeout = \"2s\"",
        ),
    );
    // A burst of 40 connections from 127.0.0.1 straight to the sealed port.
    let socks: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(listener.addr()).unwrap())
        .collect();
    let mut dropped = 0;
    for mut s in socks {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 1];
        if let Err(e) = s.read(&mut b) {
            if e.kind() == ErrorKind::ConnectionReset {
                dropped += 1;
            }
        }
    }
    assert!(dropped >= 20, "only {dropped} of 40 dropped");
    let log = listener.wait_log("per-source rate limit reached");
    let warnings = log
        .lines()
        .filter(|l| l.contains("per-source rate limit reached"))
        .count();
    assert_eq!(warnings, 1, "{log}");
}

#[test]
fn ipv6_host_names_and_json_logs_work() {
    let service = Service::start(Behaviour::Echo);
    // IPv6: listener on [::1], connector to an IPv6 literal.
    assert!(
        std::net::TcpListener::bind("[::1]:0").is_ok(),
        "no IPv6 loopback on this machine (`--skip ipv6` leaves this test out)"
    );
    let v6: std::net::SocketAddr = "[::1]:0".parse().unwrap();
    let t = Tunnel::start(
        Site::new(),
        &listener_config(v6, service.addr, &[connector_fp()], ""),
        |listener| connector_config("connector.pem", v6, listener, &listener_fp(), ""),
    );
    assert!(t.listener.addr().is_ipv6());
    assert_echoes(t.entry, 4, 50_000);
    assert!(t
        .listener
        .wait_log("connection open")
        .contains("peer=[::1]:"));
    // Host names: the connector reaches the listener as `localhost:PORT` (resolved for every
    // connection), and logs JSON.
    let site = Site::new();
    let listener = site.start("listener.toml", &listener_for(service.addr, ""));
    let text = connector_for(listener.addr(), "").replace(
        &format!("connect = \"{}\"", listener.addr()),
        &format!("connect = \"localhost:{}\"", listener.addr().port()),
    );
    assert!(text.contains("connect = \"localhost:"));
    let cconf = site.write("connector.toml", &text);
    let connector = Daemon::start_with(&cconf, &["--log-format", "json"]);
    assert_echoes(connector.addr(), 3, 100_000);
    let closed = connector.wait_line("connection closed");
    let v: serde_json::Value = serde_json::from_str(&closed).expect("a JSON log line");
    assert_eq!(v["fields"]["sent"], 100_000);
    assert_eq!(v["fields"]["fingerprint"], listener_fp().to_string());
}

#[test]
fn version_completions_and_man_page() {
    let (code, out, _) = run_cli(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.contains("protocol 2"), "{out}");
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = run_cli(&["completions", shell]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("keygen") && out.contains("fingerprint"),
            "{shell}: {out}"
        );
    }
    let (code, out, err) = run_cli(&["man"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(".ie") || out.contains(".TH sealpipe"),
        "{out}"
    );
    assert!(out.contains("keygen"));
    let (code, _, err) = run_cli(&["completions", "nosuchshell"]);
    assert_ne!(code, 0);
    assert!(err.contains("nosuchshell"), "{err}");
}

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
        m.contains("sealpipe_reloads_total{outcome=\"incomplete\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("sealpipe_reloads_total{outcome=\"ok\"} 0"),
        "{m}"
    );

    // Once the port is free, the same config reloads whole.
    drop(taken);
    listener.signal("HUP");
    listener.wait_log("configuration reloaded");
    let m = scrape(metrics_at);
    assert!(
        m.contains("sealpipe_reloads_total{outcome=\"ok\"} 1"),
        "{m}"
    );
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

    // One connection open through the listener: it counts one (no warm session beside it).
    let connector = start_connector(&t.site, t.listener.addr(), "pool_max = 0");
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

#[test]
fn idle_timeout_resets_an_idle_connection_and_spares_a_busy_one() {
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, "idle_timeout = \"400ms\"");
    let mut idle = TcpStream::connect(t.entry).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    echo_round(&mut idle, b"once");
    // Opened only now and used at once: on a loaded machine the idle one's handshake may take
    // longer than the timeout, and the busy one must not wait through it.
    let mut busy = TcpStream::connect(t.entry).unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The busy one talks every 100 ms for well past the timeout.
    for i in 0..15u8 {
        echo_round(&mut busy, &[i; 10]);
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut rest = Vec::new();
    assert_eq!(
        idle.read_to_end(&mut rest).map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionReset)
    );
    // Whichever side's timer fires first resets the connection and says why; the other may
    // see the reset first.
    let deadline = Instant::now() + Duration::from_secs(20);
    let said_idle = |d: &Daemon| {
        d.log_text()
            .lines()
            .any(|l| l.contains("connection reset") && l.contains("idle for 400ms (idle_timeout)"))
    };
    while !said_idle(&t.listener) && !said_idle(&t.connector) {
        assert!(Instant::now() < deadline, "{}", t.connector.log_text());
        echo_round(&mut busy, b"meanwhile");
        std::thread::sleep(Duration::from_millis(50));
    }
    echo_round(&mut busy, b"still here");
}
