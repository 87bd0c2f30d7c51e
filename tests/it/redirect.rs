//! Transparent redirect mode for real, in a network namespace of its own: an nftables `redirect`
//! rule sends a client's connections to a `mode = "redirect"` connector, which reads the original
//! destination (`SO_ORIGINAL_DST`, `IP6T_SO_ORIGINAL_DST`) and sends it in its StreamInfo record;
//! the listener connects there only if `allow_destinations` allows it, as in force when each
//! stream starts (a reload that narrows it refuses the next stream of a reused session).
//!
//! Needs root, `unshare`, `ip` and `nft`: the test re-runs itself under `unshare --net` (so no
//! rule ever touches the host's network). It is `#[ignore]`d for a plain `cargo test`; `.ci/run`
//! installs nftables and runs it with `--ignored` where a network namespace can be made, and it
//! fails, naming what is missing, when run without what it needs.

use crate::support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};
use support::daemon::*;
use support::pseudo_random;

/// Set in the environment of the copy of this test binary that runs inside the namespace.
const INSIDE: &str = "SEALPIPE_TEST_INSIDE_NETNS";

fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
#[ignore = "needs root, unshare, ip and nft (a network namespace); .ci/run runs it"]
fn redirect_mode_in_a_network_namespace() {
    assert!(
        support::is_root(),
        "the redirect-mode namespace test needs root (unshare --net, nft)"
    );
    for (tool, arg) in [("unshare", "--version"), ("nft", "--version"), ("ip", "-V")] {
        assert!(
            have(tool, arg),
            "the redirect-mode namespace test needs `{tool}` (Debian: nftables util-linux iproute2)"
        );
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(&exe)
        .args([
            "redirect::inside_the_namespace",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INSIDE, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "inside the namespace:\n{text}");
    assert!(text.contains("REDIRECT CHECKS PASSED"), "{text}");
}

/// Runs only inside the namespace made by [`redirect_mode_in_a_network_namespace`].
#[test]
#[ignore = "run by redirect_mode_in_a_network_namespace inside `unshare --net`"]
fn inside_the_namespace() {
    assert!(
        std::env::var_os(INSIDE).is_some(),
        "this test only runs inside the namespace that redirect_mode_in_a_network_namespace makes"
    );
    run(&["ip", "link", "set", "lo", "up"]);
    // A target, a client, and one outside `[fd00::/120]` for a refused destination.
    for addr in ["fd00::5/128", "fd00::9/128", "fd00::1:5/128"] {
        run(&["ip", "-6", "addr", "add", addr, "dev", "lo", "nodad"]);
    }

    let target4 = Service::start_on("127.0.0.5:0", Behaviour::Echo).addr;
    let target6 = Service::start_on("[fd00::5]:0", Behaviour::Echo).addr;
    let site = Site::new();
    let lconf = site.write(
        "listener.toml",
        &format!(
            "[identity]\nprivate_key = \"listener.pem\"\n\n[[listener]]\nname = \"redirect\"\nlisten = \"127.0.0.1:0\"\n\
             allow_destinations = [\"127.0.0.4/30:{}\", \"[fd00::/120]:{}\"]\npeers = [\"{}\"]\n",
            target4.port(),
            target6.port(),
            connector_fp()
        ),
    );
    let listener = Daemon::start(&lconf);
    let cconf = site.write(
        "connector.toml",
        &format!(
            "[identity]\nprivate_key = \"connector.pem\"\n\n\
             [[connector]]\nname = \"v4\"\nservice = \"redirect\"\nlisten = \"127.0.0.1:0\"\nconnect = \"{l}\"\npeer = \"{p}\"\nmode = \"redirect\"\n\n\
             [[connector]]\nname = \"v6\"\nservice = \"redirect\"\nlisten = \"[::1]:0\"\nconnect = \"{l}\"\npeer = \"{p}\"\nmode = \"redirect\"\n",
            l = listener.addr(),
            p = listener_fp()
        ),
    );
    let connector = Daemon::start(&cconf);
    let c4 = *connector.addrs.iter().find(|a| a.is_ipv4()).unwrap();
    let c6 = *connector.addrs.iter().find(|a| a.is_ipv6()).unwrap();

    // The rule an operator writes (docs/operations.md), limited here to the test clients' source addresses
    // so that the listener's own connections to the targets are not redirected back.
    let rules = format!(
        "table ip sealpipe_test {{\n chain output {{\n  type nat hook output priority -100; policy accept;\n  \
         ip saddr 127.0.0.9 meta l4proto tcp redirect to :{}\n }}\n}}\n\
         table ip6 sealpipe_test {{\n chain output {{\n  type nat hook output priority -100; policy accept;\n  \
         ip6 saddr fd00::9 meta l4proto tcp redirect to :{}\n }}\n}}\n",
        c4.port(),
        c6.port()
    );
    let mut nft = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    nft.stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(nft.wait().unwrap().success(), "nft -f: {rules}");

    // Allowed destinations: the bytes go there and back, and the connector logs where.
    for (from, to) in [("127.0.0.9:0", target4), ("[fd00::9]:0", target6)] {
        let data = pseudo_random(to.port().into(), 200_000);
        let back = exchange(from, to, &data).expect("allowed destination");
        assert!(back == data, "echo to {to} differs");
        let log = connector.wait_log(&format!("destination={to}"));
        assert!(log.contains(&format!("destination={to}")), "{log}");
    }

    // Per stream (PROTOCOL.md §4.3): one reused session carries clients for two destinations
    // one after the other, and each stream goes to its own. Clients alternate between two
    // targets until the listener shows one session whose consecutive streams went to both.
    let target4b = Service::start_on(&format!("127.0.0.6:{}", target4.port()), Behaviour::Echo);
    let mut mine: Vec<(SocketAddr, [u8; 32])> = Vec::new();
    let closed0 = connector.log_text().matches("connection closed").count();
    let opened0 = listener.log_text().matches("connection open").count();
    let reused = (0..16u64).find_map(|i| {
        let to = if i % 2 == 0 { target4 } else { target4b.addr };
        let data = pseudo_random(1000 + i, 30_000);
        let back = exchange("127.0.0.9:0", to, &data).expect("allowed destination");
        assert!(back == data, "echo to {to} differs");
        mine.push((to, Sha256::digest(&data).into()));
        connector.wait_log_count("connection closed", closed0 + mine.len());
        let log = listener.wait_log_count("connection open", opened0 + mine.len());
        let opens: Vec<(String, String, String)> = log
            .lines()
            .filter(|l| l.contains("connection open"))
            .map(|l| (field(l, "peer"), field(l, "stream"), field(l, "forward")))
            .collect();
        let (peer, stream, forward) = opens.last()?.clone();
        let n: u64 = stream.parse().ok()?;
        let before = opens
            .iter()
            .find(|(p, s, _)| *p == peer && s.parse::<u64>().ok() == Some(n - 1))?;
        (before.2 != forward).then_some((before.2.clone(), forward))
    });
    let (one, two) = reused.expect("no session carried streams to both destinations");
    assert_ne!(one, two);
    // Each target got exactly its own clients' bytes.
    let to_b = mine.iter().filter(|(to, _)| *to == target4b.addr).count();
    support::wait_for("the second target's connections to end", || {
        target4b.received.lock().unwrap().len() >= to_b
    });
    let b = target4b.received.lock().unwrap().clone();
    for (to, digest) in &mine {
        assert_eq!(b.contains(digest), *to == target4b.addr, "{to}");
    }

    // Refused destinations: outside the networks, or another port. Reset, and the listener says
    // which destination and which connector.
    let other_port = if target4.port() == 65535 {
        1
    } else {
        target4.port() + 1
    };
    for (from, to) in [
        ("127.0.0.9:0", format!("127.0.0.8:{}", target4.port())),
        ("127.0.0.9:0", format!("127.0.0.5:{other_port}")),
        ("[fd00::9]:0", format!("[fd00::1:5]:{}", target6.port())),
    ] {
        let to: SocketAddr = to.parse().unwrap();
        let r = exchange(from, to, b"not allowed");
        assert_eq!(r.err(), Some(ErrorKind::ConnectionReset), "to {to}");
        let needle = format!("destination={to}");
        let log = listener.wait_log(&needle);
        let line = log
            .lines()
            .find(|l| l.contains("destination refused") && l.contains(&needle))
            .unwrap_or_else(|| panic!("no refusal logged for {to}:\n{log}"));
        assert!(line.contains(&connector_fp().to_string()), "{line}");
    }

    // Narrowed at reload (PROTOCOL.md §4.3): the next stream of a reused session is admitted
    // against the new `allow_destinations`, not the list of its session's accept. A client to
    // an allowed target, then one to the destination taken out, until the refused one rides a
    // session that carried a stream before the reload.
    listener.edit_config(|text| text.replace("127.0.0.4/30", "127.0.0.5/32"));
    listener.reload();
    let refused_on_reused = (0..8u64).any(|i| {
        let data = pseudo_random(2000 + i, 1000);
        let back = exchange("127.0.0.9:0", target4, &data).expect("still allowed");
        assert!(back == data, "echo to {target4} differs");
        let served_b = target4b.accepted.load(std::sync::atomic::Ordering::SeqCst);
        let r = exchange("127.0.0.9:0", target4b.addr, b"taken out at reload");
        assert_eq!(
            r.err(),
            Some(ErrorKind::ConnectionReset),
            "to {}",
            target4b.addr
        );
        assert_eq!(
            target4b.accepted.load(std::sync::atomic::Ordering::SeqCst),
            served_b,
            "no connection to a destination taken out"
        );
        let needle = format!("destination={}", target4b.addr);
        let log = listener.wait_log_count(&needle, (i + 1) as usize);
        let refusal = log
            .lines()
            .filter(|l| l.contains("destination refused") && l.contains(&needle))
            .nth(i as usize)
            .unwrap_or_else(|| panic!("no refusal logged:\n{log}"))
            .to_string();
        let peer = field(&refusal, "peer");
        log.lines()
            .any(|l| l.contains("connection open") && field(l, "peer") == peer)
    });
    assert!(
        refused_on_reused,
        "no refused client rode a reused session:\n{}",
        listener.log_text()
    );

    // Not redirected (straight to the connector): refused by the connector itself.
    let r = exchange("127.0.0.1:0", c4, b"direct");
    assert_eq!(r.err(), Some(ErrorKind::ConnectionReset));
    let log = connector.wait_log("has no original destination");
    assert!(log.contains("has no original destination"), "{log}");

    println!("REDIRECT CHECKS PASSED");
}

/// The value of `name=` in a log line (empty if none).
fn field(line: &str, name: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .unwrap_or_default()
        .to_string()
}

fn run(cmd: &[&str]) {
    let st = Command::new(cmd[0]).args(&cmd[1..]).status().unwrap();
    assert!(st.success(), "{cmd:?}");
}

/// Connects from `from` to `to`, sends `data`, half-closes, reads to the end.
fn exchange(from: &str, to: SocketAddr, data: &[u8]) -> Result<Vec<u8>, ErrorKind> {
    let from: SocketAddr = from.parse().unwrap();
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    sock.bind(&from.into()).unwrap();
    sock.connect_timeout(&to.into(), Duration::from_secs(10))
        .map_err(|e| e.kind())?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let d = data.to_vec();
    let writer = std::thread::spawn(move || {
        let r = w.write_all(&d);
        let _ = w.shutdown(Shutdown::Write);
        r
    });
    let mut r = s;
    let mut out = Vec::new();
    let read = r.read_to_end(&mut out).map_err(|e| e.kind());
    let wrote = writer.join().unwrap().map_err(|e| e.kind());
    read?;
    wrote?;
    Ok(out)
}
