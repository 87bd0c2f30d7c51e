//! Session resumption between real daemons: after one full handshake, later connections
//! through the same connector/listener pair resume (no RSA), survive a reload, and carry the
//! same bytes; with `resumption = false` nothing resumes.

mod support;

use std::sync::Arc;

use support::daemon::*;

/// Waits until both daemons have logged `n` "connection open" lines and returns their values.
fn wait_opens(t: &Tunnel, n: usize) -> (Vec<bool>, Vec<bool>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (c, l) = (
            opens(&t.connector.log_text()),
            opens(&t.listener.log_text()),
        );
        if (c.len() >= n && l.len() >= n) || std::time::Instant::now() > deadline {
            return (c, l);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn exchange(t: &Tunnel, seed: u64) {
    let data = Arc::new(pseudo_random(seed, 300_000 + seed as usize));
    let (sent, received, n) = echo_exchange(t.entry, data.clone());
    assert_eq!(n, data.len());
    assert_eq!(sent, received, "echo through the tunnel differs");
}

#[test]
fn later_connections_resume_and_survive_a_reload() {
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, "");
    for seed in 0..3 {
        exchange(&t, seed);
    }
    let (c, l) = wait_opens(&t, 3);
    assert_eq!(c, [false, true, true], "connector");
    assert_eq!(l, [false, true, true], "listener");

    // The tickets live in the tunnel's state, which a reload keeps.
    t.listener.signal("HUP");
    t.listener.wait_log("configuration reloaded");
    t.connector.signal("HUP");
    t.connector.wait_log("configuration reloaded");
    exchange(&t, 3);
    let (c, l) = wait_opens(&t, 4);
    assert_eq!((c[3], l[3]), (true, true), "after a reload");
}

#[test]
fn tickets_are_used_up_then_renewed_by_a_full_handshake() {
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, "resumption_uses = 2");
    for seed in 0..5 {
        exchange(&t, seed);
    }
    let (c, l) = wait_opens(&t, 5);
    assert_eq!(c, [false, true, true, false, true], "connector");
    assert_eq!(l, c, "listener");
}

#[test]
fn resumption_off_means_full_handshakes_only() {
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, "resumption = false");
    for seed in 0..3 {
        exchange(&t, seed);
    }
    let (c, l) = wait_opens(&t, 3);
    assert_eq!(c, [false, false, false]);
    assert_eq!(l, [false, false, false]);
}

#[test]
fn a_listener_without_resumption_answers_a_resuming_connector_in_full() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let lconf = site.write(
        "listener.toml",
        &listener_config(any_port(), service.addr, &[connector_fp()], ""),
    );
    let listener = Daemon::start(&lconf);
    let (connector, _) = start_connector(&site, listener.addr(), "");
    let entry = connector.addr();
    let mut t = Tunnel {
        site,
        listener,
        connector,
        entry,
    };
    exchange(&t, 0);
    wait_opens(&t, 1);
    // The listener turns resumption off: the connector's ticket is refused and a full handshake
    // follows in the same connection (which gives the connector a new ticket, refused in turn).
    let text = std::fs::read_to_string(&lconf).unwrap();
    let off = text.replace("[defaults]\n", "[defaults]\nresumption = false\n");
    assert_ne!(off, text);
    std::fs::write(&lconf, off).unwrap();
    t.listener.signal("HUP");
    t.listener.wait_log("configuration reloaded");
    exchange(&t, 1);
    exchange(&t, 2);
    let (c, l) = wait_opens(&t, 3);
    assert_eq!(c, [false, false, false]);
    assert_eq!(l, [false, false, false]);
    let refusals = |log: &str| log.matches("refused the resumption ticket").count();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while refusals(&t.connector.log_text()) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = t.connector.log_text();
    assert_eq!(refusals(&log), 2, "{log}");
    t.listener.kill();
}
