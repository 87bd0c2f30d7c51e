//! Pooled and reused sessions obey the connector's configuration in force (issue 30):
//! a reload that changes the connector's terms (`service`, pins, key, PSK, `connect`) keeps its
//! pooled sessions from carrying new clients; an authenticated refusal stops the pool's refills
//! (one handshake per client while refused); pooled sessions are made by resumption.

use crate::support;

use support::daemon::*;

#[test]
fn pooled_sessions_are_made_by_resumption_when_tickets_exist() {
    let service = Service::start(Behaviour::Echo);
    // Each client's session ends with its stream: every client needs a warm session of its own.
    let t = tunnel_to(service.addr, "session_reuse = false");
    for seed in 0..6u64 {
        assert_echoes(t.entry, seed, 1000);
        t.connector.wait_log_count("connection closed", seed as usize + 1);
    }
    let opens = t.listener.wait_opens(6);
    let resumed = opens.iter().filter(|r| **r).count();
    // The first session is a full handshake (no ticket yet); warm sessions made after it resume.
    assert!(resumed >= 3, "listener opens (resumed?): {opens:?}\n{}", t.listener.log_text());
}

#[test]
fn probe_default_pool_resumption() {
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, "");
    for seed in 0..3u64 {
        assert_echoes(t.entry, seed, 1000);
    }
    let hs: Vec<_> = (0..5u64)
        .map(|seed| {
            let e = t.entry;
            std::thread::spawn(move || assert_echoes(e, seed, 100_000))
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    let st = run_cli(&["status", "--config", t.site.path("listener.toml").to_str().unwrap()]);
    panic!("{st:?}\nLISTENER\n{}\nCONNECTOR\n{}", t.listener.log_text(), t.connector.log_text());
}
