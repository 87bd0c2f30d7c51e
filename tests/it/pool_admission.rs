//! Pooled and reused sessions obey the connector's configuration in force (issue 30): a reload
//! that changes the connector's terms (`service`, the `peer` pins, its key, the PSK, `connect`)
//! keeps the sessions made before it from carrying new clients; an authenticated refusal stops
//! the pool's refills (one handshake per client while refused); pooled sessions are made by
//! resumption once a ticket exists; a PSK on the listener only is hinted on the connector.
//!
//! The rules that depend on time (the refusal backoff, one refill at a time without a ticket,
//! the terms digest) have unit tests in `src/tunnel/pool.rs` and `src/tunnel/terms.rs`.

use crate::support;

use std::time::Duration;

use support::daemon::*;

/// The listener's `handshakes ok N (resumed M)` and its `failures:` line, from `status`.
fn listener_status(d: &Daemon) -> String {
    let (code, out, err) = run_cli(&["status", "--config", d.config.to_str().unwrap()]);
    assert_eq!(code, 0, "status failed: {err}");
    out
}

/// The number after `word ` in `text` (0 if absent).
fn count_after(text: &str, word: &str) -> u64 {
    text.split(word)
        .nth(1)
        .and_then(|r| {
            r.trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// A client through `entry` that the tunnel does not serve: no echo, reset or closed.
fn assert_not_served(entry: std::net::SocketAddr, msg: &[u8]) {
    let r = try_exchange(entry, msg);
    assert!(r.as_deref() != Ok(msg), "served: {r:?}");
}

#[test]
fn a_connector_reload_with_another_service_gets_the_next_client_the_listeners_refusal() {
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, "");
    assert_echoes(t.entry, 1, 10_000);
    t.connector.wait_log_count("connection closed", 1);
    // The pool holds sessions made for `service = "test"` (the tunnel's name) now.
    t.connector
        .edit_config(|c| format!("{c}service = \"other\"\n"));
    t.connector.reload();
    assert_not_served(t.entry, b"for the other service");
    let line = t.connector.wait_line("this connector asked for \"other\"");
    assert!(line.contains("the listener serves \"test\""), "{line}");
    // The listener saw the new service asked for: the client rode no session of the old one.
    let l = t.listener.wait_log("\"other\"");
    assert!(!l.contains("stream=2"), "{l}");
}

#[test]
fn rotation_step_2_puts_new_clients_on_sessions_of_the_new_key() {
    let (old, new) = (listener_fp(), fingerprint_of("untrusted.pem"));
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    // Step 1 done: the listener holds the new key as `next_private_key`.
    let listener = site.start(
        "listener.toml",
        &format!(
            "[identity]\nprivate_key = \"listener.pem\"\nnext_private_key = \"untrusted.pem\"\n\n[[listener]]\nname = \"test\"\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\n{}",
            service.addr,
            trusted_peers()
        ),
    );
    let connector = site.start(
        "connector.toml",
        &connector_toml(any_port(), listener.addr(), ""),
    );
    let entry = connector.addr();
    assert_echoes(entry, 1, 10_000);
    connector.wait_log_count("connection closed", 1);
    let first = connector.wait_line("connection open");
    assert!(first.contains(&format!("fingerprint={old}")), "{first}");
    // Step 2: the connector pins both, the new key first; the pool holds sessions of the old.
    connector.edit_config(|c| {
        c.replace(
            &format!("peer = \"{old}\""),
            &format!("peer = [\"{new}\", \"{old}\"]"),
        )
    });
    connector.reload();
    for seed in 2..5 {
        assert_echoes(entry, seed, 10_000);
        connector.wait_log_count("connection closed", seed as usize);
    }
    let log = connector.log_text();
    let opens: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection open"))
        .collect();
    assert_eq!(opens.len(), 4, "{log}");
    for l in &opens[1..] {
        assert!(
            l.contains(&format!("fingerprint={new} pin=1")),
            "a client after step 2 on a session of the old key: {l}"
        );
    }
}

#[test]
fn an_untrusted_connectors_clients_cost_one_refused_handshake_each_and_trust_add_serves_the_next() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    // The listener trusts another key, not the test connector's.
    let listener = site.start(
        "listener.toml",
        &listener_config(
            any_port(),
            service.addr,
            &[fingerprint_of("untrusted.pem")],
            "",
        ),
    );
    let connector = start_connector(&site, listener.addr(), "");
    let entry = connector.addr();
    for n in 1..=3 {
        assert_not_served(entry, b"refused");
        // The refusal reaches the client's line, once per client.
        connector.wait_log_count("refused this connector's key", n);
    }
    // Refills in flight, if any, land before the count.
    std::thread::sleep(Duration::from_millis(500));
    let status = listener_status(&listener);
    let refused = count_after(&status, "untrusted");
    assert!(
        (1..=6).contains(&refused),
        "refused handshakes for 3 clients: {refused}\n{status}\n{}",
        connector.log_text()
    );
    let c = connector.log_text();
    assert_eq!(
        c.matches("refused this connector's key").count(),
        3,
        "one refusal line per client: {c}"
    );
    // The connector's own counters count the refusals (beside the handshakes completed on its
    // side, a counter that never goes down).
    let cs = listener_status(&connector);
    assert!(
        cs.lines()
            .find(|l| l.contains("refused by the listener"))
            .is_some_and(|l| count_after(l, "untrusted") == 3),
        "{cs}"
    );

    // `trust add` on the listener, and its reload: the next client is served at once.
    listener.edit_config(|c| {
        c.replace(
            &fingerprint_of("untrusted.pem").to_string(),
            &connector_fp().to_string(),
        )
    });
    listener.reload();
    assert_echoes(entry, 7, 10_000);
    connector.wait_log_count("connection closed", 1);
    std::thread::sleep(Duration::from_millis(500));
    let after = listener_status(&listener);
    assert_eq!(
        count_after(&after, "untrusted"),
        refused,
        "no further refusal after trust add: {after}"
    );
    assert_eq!(
        connector
            .log_text()
            .matches("refused this connector's key")
            .count(),
        3
    );
}

#[test]
fn pooled_sessions_are_made_by_resumption_once_a_ticket_exists() {
    let service = Service::start(Behaviour::Echo);
    // The default pool.
    let t = tunnel_to(service.addr, "");
    for seed in 1..=4 {
        assert_echoes(t.entry, seed, 1000);
        t.connector
            .wait_log_count("connection closed", seed as usize);
    }
    // The warm session made while the second client rode the first one's session.
    std::thread::sleep(Duration::from_millis(300));
    let status = listener_status(&t.listener);
    let ok = count_after(&status, "handshakes ok");
    let resumed = count_after(&status, "(resumed");
    // The first handshake is full (no ticket yet); the warm sessions made after it resume
    // (not a burst of full handshakes made at once for the first client, before any ticket).
    assert!(ok >= 2 && resumed >= 1, "{status}");
    assert!(
        ok - resumed <= 1,
        "full handshakes {} of {ok}: {status}\n{}",
        ok - resumed,
        t.listener.log_text()
    );
}

#[test]
fn a_psk_on_the_listener_only_is_hinted_on_the_connector() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let psk = site.write("psk", &"42".repeat(32));
    set_mode(&psk, 0o600);
    let listener = site.start(
        "listener.toml",
        &listener_config(any_port(), service.addr, &[connector_fp()], "").replace(
            "private_key = \"listener.pem\"\n",
            "private_key = \"listener.pem\"\npsk_file = \"psk\"\n",
        ),
    );
    let connector = start_connector(&site, listener.addr(), "");
    assert_not_served(connector.addr(), b"no psk here");
    let line = connector.wait_line("did not answer a hello");
    assert!(
        line.contains("or the listener has a psk_file and this connector has none"),
        "{line}"
    );
}

/// The `session=N` of a log line.
fn session_of(line: &str) -> &str {
    line.split("session=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .unwrap_or_else(|| panic!("no session= in {line}"))
}

#[test]
fn a_refills_refusal_reaches_the_next_clients_line_once_without_a_handshake_of_its_own() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let listener = site.start(
        "listener.toml",
        &listener_config(any_port(), service.addr, &[connector_fp()], ""),
    );
    // Sessions kept warm by the pool's sweeper, with no client asking.
    let connector = start_connector(&site, listener.addr(), "pool_min = 2");
    let entry = connector.addr();
    assert_echoes(entry, 1, 10_000);
    connector.wait_log_count("connection closed", 1);
    // The listener stops trusting the connector: its sessions are closed, and the pool's next
    // refills (made by the sweeper, in the background) are refused.
    listener.edit_config(|c| {
        c.replace(
            &connector_fp().to_string(),
            &fingerprint_of("untrusted.pem").to_string(),
        )
    });
    listener.reload();
    listener.wait_line("is not trusted");
    // The refusals of the refills in flight, all in before the client.
    std::thread::sleep(Duration::from_millis(1500));
    let refused_before = listener.log_text().matches("is not trusted").count();
    assert_not_served(entry, b"after the refill was refused");
    let line = connector.wait_line("refused this connector's key");
    let log = connector.wait_log_count("refused this connector's key", 2);
    // One warning for the refill, and the client's own line with the reason.
    let warning: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("a warm session made for the pool was refused"))
        .collect();
    assert_eq!(warning.len(), 1, "one warning for the refill: {log}");
    let client: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused this connector's key") && l.contains("ERROR"))
        .collect();
    assert_eq!(
        client.len(),
        1,
        "the refusal on the client's line, once: {log}"
    );
    assert!(client[0].contains("client=127.0.0.1:"), "{}", client[0]);
    assert!(line.contains("refused this connector's key"), "{line}");
    // The client rode the refill's answer: the same session, no handshake of its own.
    assert_eq!(session_of(warning[0]), session_of(client[0]), "{log}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        listener.log_text().matches("is not trusted").count(),
        refused_before,
        "the client made no handshake: {}",
        listener.log_text()
    );
    // The connector counts the refusal it read once, not again for the client it told.
    let cs = listener_status(&connector);
    assert!(
        cs.lines()
            .find(|l| l.contains("refused by the listener"))
            .is_some_and(|l| count_after(l, "untrusted") == 1),
        "{cs}"
    );
}

#[test]
fn a_pooled_session_of_a_listener_key_no_longer_in_known_peers_carries_no_new_client() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let listener = site.start(
        "listener.toml",
        &allow_tofu_listener(any_port(), service.addr, "listener.pem"),
    );
    // TOFU, with the pool on.
    let connector = site.start(
        "connector.toml",
        &tofu_connector_toml(listener.addr()).replace(NO_POOL, ""),
    );
    let entry = connector.addr();
    assert_echoes(entry, 1, 10_000);
    connector.wait_log_count("connection closed", 1);
    connector.wait_line("first contact: recorded listener key");
    // The operator replaces the recorded key (the listener's key changed, say) and reloads:
    // the pool's sessions, made with the key recorded before, carry no new client.
    let known_peers = site.dir.path().join("known_peers");
    let text = std::fs::read_to_string(&known_peers).unwrap();
    let old = listener_fp().to_string();
    assert!(text.contains(&old), "{text}");
    let other = fingerprint_of("untrusted.pem").to_string();
    std::fs::write(&known_peers, text.replace(&old, &other)).unwrap();
    connector.reload();
    assert_not_served(entry, b"not on a session of the old key");
    // The client's own handshake, pinned to the key recorded now, which the listener lacks.
    let line = connector.wait_line("LISTENER KEY CHANGED");
    assert!(
        !connector.log_text().contains("stream=2"),
        "a pooled session of the old key carried the client: {}",
        connector.log_text()
    );
    assert!(line.contains(&other), "{line}");
    assert_eq!(
        connector.log_text().matches("connection open").count(),
        1,
        "{}",
        connector.log_text()
    );
}
