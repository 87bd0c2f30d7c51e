//! Session resumption between real daemons: after one full handshake, later connections
//! through the same connector/listener pair resume (no RSA), survive a reload, and carry the
//! same bytes; with `resumption = false` nothing resumes.

use crate::support;

use support::daemon::*;

/// A 300 KB exchange (a little more for each seed) through `t`, both sides hashed.
/// One session per client: these tests count handshakes (warm sessions are tested in
/// `tests/it/reuse.rs`).
const NO_POOL: &str = "pool_max = 0";

fn exchange(t: &Tunnel, seed: u64) {
    assert_echoes(t.entry, seed, 300_000 + seed as usize);
}

#[test]
fn later_connections_resume_and_survive_a_reload() {
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, NO_POOL);
    for seed in 0..3 {
        exchange(&t, seed);
    }
    let (c, l) = t.wait_opens(3);
    assert_eq!(c, [false, true, true], "connector");
    assert_eq!(l, [false, true, true], "listener");

    // The tickets live in the tunnel's state, which a reload keeps.
    t.listener.reload();
    t.connector.reload();
    exchange(&t, 3);
    let (c, l) = t.wait_opens(4);
    assert_eq!((c[3], l[3]), (true, true), "after a reload");
}

#[test]
fn tickets_are_used_up_then_renewed_by_a_full_handshake() {
    // Each session hands on two single-use tickets; `resumption_uses = 2` lets a chain go two
    // resumptions deep: the full handshake's two tickets, then their sessions' two each (whose
    // own successors are not filed), six resumptions in all before the next full handshake.
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, "resumption_uses = 2\npool_max = 0");
    for seed in 0..9 {
        exchange(&t, seed);
    }
    let (c, l) = t.wait_opens(9);
    assert_eq!(
        c,
        [false, true, true, true, true, true, true, false, true],
        "connector"
    );
    assert_eq!(l, c, "listener");
}

#[test]
fn resumption_off_means_full_handshakes_only() {
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, "resumption = false\npool_max = 0");
    for seed in 0..3 {
        exchange(&t, seed);
    }
    let (c, l) = t.wait_opens(3);
    assert_eq!(c, [false, false, false]);
    assert_eq!(l, [false, false, false]);
}

#[test]
fn a_listener_without_resumption_answers_a_resuming_connector_in_full() {
    let service = Service::start(Behaviour::Echo);
    let mut t = tunnel_to(service.addr, NO_POOL);
    exchange(&t, 0);
    t.wait_opens(1);
    // The listener turns resumption off: the connector's ticket is refused and a full handshake
    // follows in the same connection (which gives the connector a new ticket, refused in turn).
    t.listener
        .edit_config(|text| text.replace("[defaults]\n", "[defaults]\nresumption = false\n"));
    t.listener.reload();
    exchange(&t, 1);
    exchange(&t, 2);
    let (c, l) = t.wait_opens(3);
    assert_eq!(c, [false, false, false]);
    assert_eq!(l, [false, false, false]);
    let refused = "refused the resumption ticket";
    let log = t.connector.wait_log_count(refused, 2);
    assert_eq!(log.matches(refused).count(), 2, "{log}");
    t.listener.kill();
}
