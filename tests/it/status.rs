//! `sealpipe status` against real daemons: every tunnel and each open connection, with its
//! peer, fingerprint, name and live byte counts, read from the control socket.

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::daemon::*;
use support::pseudo_random;

/// `sealpipe status --config CONFIG --json`, parsed.
fn status_json(config: &std::path::Path) -> serde_json::Value {
    let (code, out, err) = run_cli(&["status", "--json", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "status failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The connections of the tunnel of `role` in `status`.
fn connections(status: &serde_json::Value, role: &str) -> Vec<serde_json::Value> {
    let tunnels = status["tunnels"].as_array().unwrap();
    let t = tunnels
        .iter()
        .find(|t| t["role"] == role)
        .unwrap_or_else(|| panic!("no {role} in {status}"));
    t["connections"].as_array().unwrap().clone()
}

/// Waits until `status` of `config` shows a `role` connection that has received at least `n`.
fn wait_received(config: &std::path::Path, role: &str, n: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status_json(config);
        let c = connections(&s, role);
        if c.len() == 1 && c[0]["received"].as_u64().unwrap() >= n {
            return c[0].clone();
        }
        assert!(Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn status_shows_a_live_connection_and_its_bytes_moving() {
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, "");
    let lconf = t.site.path("listener.toml");
    let cconf = t.site.path("connector.toml");

    let idle = status_json(&lconf);
    assert!(connections(&idle, "listener").is_empty(), "{idle}");
    assert_eq!(idle["tunnels"][0]["name"], "test");
    assert_eq!(
        idle["tunnels"][0]["local"],
        t.listener.addr().to_string(),
        "{idle}"
    );

    let mut client = TcpStream::connect(t.entry).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let chunk = pseudo_random(7, 256 * 1024);
    let mut back = vec![0u8; chunk.len()];
    client.write_all(&chunk).unwrap();
    client.read_exact(&mut back).unwrap();
    assert_eq!(back, chunk);

    let first = wait_received(&lconf, "listener", chunk.len() as u64);
    assert_eq!(first["fingerprint"], connector_fp().to_string(), "{first}");
    assert_eq!(first["sent"].as_u64().unwrap(), chunk.len() as u64);
    let on_connector = wait_received(&cconf, "connector", chunk.len() as u64);
    assert_eq!(
        on_connector["fingerprint"],
        listener_fp().to_string(),
        "{on_connector}"
    );

    // More bytes: the counts move while the connection stays open.
    client.write_all(&chunk).unwrap();
    client.read_exact(&mut back).unwrap();
    let second = wait_received(&lconf, "listener", 2 * chunk.len() as u64);
    assert_eq!(second["sent"].as_u64().unwrap(), 2 * chunk.len() as u64);

    // The human form names the tunnel, the peer's key and its bytes.
    let (code, out, err) = run_cli(&["status", "--config", lconf.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listener \"test\""), "{out}");
    assert!(out.contains(&connector_fp().to_string()), "{out}");
    assert!(out.contains("received 512.0 KiB"), "{out}");

    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !connections(&status_json(&lconf), "listener").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the closed connection is still listed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn status_without_a_daemon_says_so() {
    let site = Site::new();
    let conf = site.write(
        "listener.toml",
        &listener_config(any_port(), dead_port().addr, &[connector_fp()], ""),
    );
    let (code, _, err) = run_cli(&["status", "--config", conf.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach the sealpipe daemon for")
            && err.contains("no daemon runs there"),
        "{err}"
    );
    // `control = false`: said plainly.
    let off = site.write(
        "off.toml",
        &format!(
            "control = false\n{}",
            listener_config(any_port(), dead_port().addr, &[connector_fp()], "")
        ),
    );
    let (code, _, err) = run_cli(&["status", "--config", off.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("`control = false`: this daemon serves no control socket"),
        "{err}"
    );
}
