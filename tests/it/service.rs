//! Service binding and authenticated refusals (PROTOCOL.md §2, §6), against real daemons: a
//! connection moved to another listener tunnel by an on-path port swap reaches no service, and a
//! connector the listener refuses after authenticating it logs why.

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::daemon::*;
use support::mitm::Mitm;

/// Sends `msg` through the connector at `entry` and reads until the connection ends; returns
/// what came back (nothing, for a refused connection).
fn send_through(entry: std::net::SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(entry).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(msg);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back);
    back
}

#[test]
fn a_port_swap_between_two_listener_tunnels_reaches_no_service() {
    let redis = Service::start(Behaviour::Echo);
    let postgres = Service::start(Behaviour::Echo);
    let site = Site::new();
    let peers = format!("peers = [\"{}\"]", connector_fp());
    let listener = site.start(
        "listener.toml",
        &format!(
            "[identity]\nprivate_key = \"listener.pem\"\n\n\
             [[listener]]\nname = \"redis\"\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\n{peers}\n\n\
             [[listener]]\nname = \"postgres\"\nlisten = \"127.0.0.1:0\"\nforward = \"{}\"\n{peers}\n",
            redis.addr, postgres.addr
        ),
    );
    let (redis_port, postgres_port) = (listener.addrs[0], listener.addrs[1]);
    // The on-path attacker: everything the connector sends to the redis port goes to the
    // postgres port instead.
    let swap = Mitm::start(postgres_port);
    let connector = site.start(
        "connector.toml",
        &format!(
            "[identity]\nprivate_key = \"connector.pem\"\n\n\
             [[connector]]\nname = \"redis\"\nlisten = \"{}\"\nconnect = \"{}\"\npeer = \"{}\"\n{NO_POOL}",
            any_port(),
            swap.addr,
            listener_fp()
        ),
    );
    let back = send_through(connector.addr(), b"SET key value\r\n");
    assert!(
        back.is_empty(),
        "the swapped connection was answered: {back:?}"
    );
    let line = listener.wait_line("asked for service");
    assert!(
        line.contains("\"redis\"")
            && line.contains("\"postgres\"")
            && line.contains(&connector_fp().to_string()),
        "{line}"
    );
    let line = connector.wait_line("the listener serves");
    assert!(
        line.contains("the listener serves \"postgres\", this connector asked for \"redis\""),
        "{line}"
    );
    assert_eq!(
        postgres.accepted.load(Ordering::SeqCst),
        0,
        "bytes reached the wrong service"
    );
    assert_eq!(redis.accepted.load(Ordering::SeqCst), 0);

    // Without the swap, the same connector reaches its own service (the test is not vacuous).
    let direct = site.start(
        "direct.toml",
        &format!(
            "[identity]\nprivate_key = \"connector.pem\"\n\n\
             [[connector]]\nname = \"redis\"\nlisten = \"{}\"\nconnect = \"{redis_port}\"\npeer = \"{}\"\n{NO_POOL}",
            any_port(),
            listener_fp()
        ),
    );
    assert_eq!(send_through(direct.addr(), b"PING\r\n"), b"PING\r\n");
    assert_eq!(redis.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(postgres.accepted.load(Ordering::SeqCst), 0);
}

#[test]
fn a_connector_whose_key_the_listener_does_not_trust_is_told_why() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    // The listener trusts some other key, not the connector's.
    let listener = site.start(
        "listener.toml",
        &listener_config(any_port(), service.addr, &[listener_fp()], ""),
    );
    let connector = site.start("connector.toml", &connector_for(listener.addr(), NO_POOL));
    assert!(send_through(connector.addr(), b"hello").is_empty());
    let line = connector.wait_line("the listener refused this connector's key");
    assert!(
        line.contains(&format!(
            "the listener refused this connector's key {} (not in its peers)",
            connector_fp()
        )),
        "{line}"
    );
    assert!(
        !connector.log_text().contains("truncated"),
        "{}",
        connector.log_text()
    );
    let line = listener.wait_line("is not trusted");
    assert!(line.contains(&connector_fp().to_string()), "{line}");
    assert_eq!(service.accepted.load(Ordering::SeqCst), 0);
}

#[test]
fn a_wrong_pin_and_a_scanner_still_get_silence() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let listener = site.start("listener.toml", &listener_for(service.addr, ""));
    // A scanner: junk gets no byte back.
    let mut s = TcpStream::connect(listener.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back);
    assert!(back.is_empty(), "a scanner was answered: {back:?}");
    // A connector pinned to another key: its hello's mac1 is wrong, it gets no byte (no alert).
    let wrong_pin = site.start(
        "connector.toml",
        &connector_config(
            "connector.pem",
            any_port(),
            listener.addr(),
            &connector_fp(),
            NO_POOL,
        ),
    );
    assert!(send_through(wrong_pin.addr(), b"hello").is_empty());
    let log = wrong_pin.wait_log("did not answer a hello");
    assert!(!log.contains("the listener refused"), "{log}");
    assert_eq!(service.accepted.load(Ordering::SeqCst), 0);
}
