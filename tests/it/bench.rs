//! Smoke tests of `sealpipe bench` (tiny sizes, no timing assertions): every mode runs, the
//! JSON has its fields, the bytes the sink confirmed equal what was asked, and runs this tiny
//! are warned about (on stderr and in the notes).

use crate::support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;
use support::daemon::*;

fn sealpipe() -> Command {
    Command::new(bin())
}

fn bench_json(args: &[&str]) -> Value {
    bench_json_stderr(args).0
}

/// [`bench_json`] and what it printed on stderr.
fn bench_json_stderr(args: &[&str]) -> (Value, String) {
    let out = sealpipe()
        .arg("bench")
        .arg("--json")
        .args(args)
        .output()
        .expect("run sealpipe bench");
    assert!(
        out.status.success(),
        "sealpipe bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<_> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object on one line: {stdout}");
    let v = serde_json::from_str(lines[0]).expect("valid JSON");
    (v, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The notes of the report that are warnings.
fn warnings(v: &Value) -> Vec<String> {
    v["notes"]
        .as_array()
        .unwrap_or_else(|| panic!("no notes in {v}"))
        .iter()
        .filter_map(|n| n.as_str())
        .filter(|n| n.starts_with("warning: "))
        .map(str::to_string)
        .collect()
}

/// Asserts that a warning starting with `what` (`throughput`) is in the notes and on stderr.
fn assert_warned(v: &Value, stderr: &str, what: &str) {
    let w = warnings(v);
    let found = w
        .iter()
        .find(|n| n.starts_with(&format!("warning: {what}")))
        .unwrap_or_else(|| panic!("no warning about {what} in {w:?}"));
    assert!(found.contains("too "), "{found}");
    assert!(
        stderr.contains(&format!("sealpipe bench: {found}")),
        "{found:?} not on stderr:\n{stderr}"
    );
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

fn check_throughput(v: &Value, bytes: u64, streams: u64) {
    for key in ["throughput", "raw_tcp"] {
        assert_eq!(
            v[key]["bytes"].as_u64(),
            Some(bytes),
            "{key} moved all bytes: {v}"
        );
        assert_eq!(v[key]["streams"].as_u64(), Some(streams), "{v}");
        for f in ["seconds", "gbit_per_s", "cpu_seconds", "cpu_s_per_gib"] {
            num(v, &[key, f]);
        }
    }
    num(v, &["ratio_to_raw_tcp"]);
}

fn check_rate(v: &Value, connections: u64) {
    check_rates(v, connections, &["rate_sequential", "rate_concurrent"]);
    // The first-echo reference: the same client over raw TCP, as many clients.
    check_rates(
        v,
        connections,
        &["raw_tcp_rate_sequential", "raw_tcp_rate_concurrent"],
    );
    for (raw, tunnel) in [
        ("raw_tcp_rate_sequential", "rate_sequential"),
        ("raw_tcp_rate_concurrent", "rate_concurrent"),
    ] {
        assert_eq!(v[raw]["concurrency"], v[tunnel]["concurrency"], "{v}");
    }
}

fn check_rates(v: &Value, connections: u64, keys: &[&str]) {
    for &key in keys {
        assert_eq!(v[key]["connections"].as_u64(), Some(connections), "{v}");
        assert_eq!(v[key]["failures"].as_u64(), Some(0), "{v}");
        for f in ["seconds", "per_second", "ttfb_p50_ms", "ttfb_p99_ms"] {
            num(v, &[key, f]);
        }
    }
}

#[test]
fn in_process_bench_reports_every_figure_as_json() {
    let (v, stderr) = bench_json_stderr(&[
        "--bytes",
        "3MiB",
        "--streams",
        "3",
        "--connections",
        "6",
        "--concurrency",
        "3",
        "--idle",
        "5",
        "--record-size",
        "32KiB",
        "--exchanges",
        "100",
    ]);
    assert_eq!(v["mode"], "in-process");
    assert_eq!(v["record_size"].as_u64(), Some(32 * 1024));
    check_throughput(&v, 3 * 1024 * 1024, 3);
    check_rate(&v, 6);
    // In process, the same loads also run with resumption off (full handshakes).
    check_rates(&v, 6, &["rate_full_sequential", "rate_full_concurrent"]);
    assert_eq!(v["resumption"].as_bool(), Some(true), "{v}");
    assert_eq!(v["rate_concurrent"]["concurrency"].as_u64(), Some(3));
    assert_eq!(v["aead"]["record_size"].as_u64(), Some(32 * 1024));
    num(&v, &["aead", "gbit_per_s"]);
    num(&v, &["ratio_to_aead"]);
    num(&v, &["rsa_sign_ms"]);
    assert_eq!(v["idle"]["connections"].as_u64(), Some(5));
    num(&v, &["idle", "kib_per_connection"]);
    check_small(&v, 100);
    // A run this small means little, and says so: too few connections whatever the time, and
    // throughput under 1 s (as 3 MiB on loopback takes, unless the machine is very slow).
    if num(&v, &["throughput", "seconds"]) < 1.0 {
        assert_warned(&v, &stderr, "throughput");
    } else {
        assert!(!stderr.contains("warning: throughput"), "{stderr}");
    }
    for what in [
        "connection rate, sequential",
        "connection rate, concurrent",
        "connection rate, sequential, full handshakes",
        "memory per idle connection",
    ] {
        assert_warned(&v, &stderr, what);
    }
}

#[test]
fn the_table_ends_with_the_warnings_about_a_tiny_run() {
    let out = sealpipe()
        .args([
            "bench",
            "--only",
            "rate",
            "--connections",
            "5",
            "--concurrency",
            "2",
        ])
        .output()
        .expect("run sealpipe bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("\nwarning: connection rate, sequential: 5 connections in "),
        "{table}"
    );
    assert!(
        table.contains("| first echo p50 / p99, 1 client(s), resumed |"),
        "{table}"
    );
    assert!(table.contains("raw TCP"), "{table}");
    assert!(
        !table.contains("warning: throughput"),
        "no throughput run: {table}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sealpipe bench: warning: connection rate, sequential: 5 connections"),
        "{stderr}"
    );
}

/// A `sealpipe bench --serve` target (killed on drop) and its address.
fn target() -> (KillOnDrop, String) {
    let mut child = sealpipe()
        .args(["bench", "--serve", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the bench target");
    let mut line = String::new();
    BufReader::new(child.stderr.take().expect("stderr"))
        .read_line(&mut line)
        .expect("read the target's first line");
    let addr = line
        .trim()
        .strip_prefix("bench target listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (KillOnDrop(child), addr)
}

#[test]
fn load_only_mode_drives_a_separate_bench_target() {
    let (_target, addr) = target();
    let v = bench_json(&[
        "--target",
        &addr,
        "--bytes",
        "1000001",
        "--streams",
        "2",
        "--connections",
        "4",
        "--concurrency",
        "2",
        "--idle",
        "3",
        "--only",
        "throughput,rate,idle",
    ]);
    assert_eq!(v["mode"], "target");
    assert_eq!(v["entry"], addr.as_str());
    check_throughput(&v, 1_000_001, 2);
    check_rate(&v, 4);
    assert_eq!(v["idle"]["connections"].as_u64(), Some(3));
    assert!(v["aead"].is_null(), "--only leaves the cipher out: {v}");
}

#[test]
fn config_mode_runs_the_named_connector_against_a_real_listener() {
    let (_target, addr) = target();
    let target_addr = addr.parse().unwrap();
    let site = Site::new();
    let listener = site.start("listener.toml", &listener_for(target_addr, ""));
    let cconf = site.write("connector.toml", &connector_for(listener.addr(), ""));
    let cpath = cconf.to_str().unwrap();
    let v = bench_json(&[
        "--config",
        cpath,
        "--tunnel",
        "test",
        "--bytes",
        "2MiB",
        "--connections",
        "3",
        "--concurrency",
        "2",
        "--idle",
        "2",
    ]);
    assert_eq!(v["mode"], "config");
    check_throughput(&v, 2 * 1024 * 1024, 1);
    check_rate(&v, 3);
    assert_eq!(v["idle"]["connections"].as_u64(), Some(2));

    let out = sealpipe()
        .args(["bench", "--json", "--config", cpath, "--tunnel", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no [[connector]] named \"nope\""), "{err}");
    assert!(err.contains("connectors: test"), "{err}");
}

#[test]
fn across_a_wan_relay_the_rate_and_small_loads_run_against_raw_tcp_through_it() {
    let (v, _) = bench_json_stderr(&[
        "--rtt",
        "20ms",
        "--connections",
        "3",
        "--concurrency",
        "2",
        "--exchanges",
        "5",
    ]);
    assert_eq!(v["mode"], "in-process");
    assert_eq!(v["rtt_ms"].as_f64(), Some(20.0), "{v}");
    assert!(v["entry"].as_str().unwrap().contains("WAN relay"), "{v}");
    check_rate(&v, 3);
    // Across a WAN only the loads a round trip changes run, unless --only asks.
    assert!(v["throughput"].is_null() && v["idle"].is_null(), "{v}");
    check_small(&v, 5);
    // Connect to first echo over raw TCP through the relay costs two round trips at least.
    assert!(
        num(&v, &["raw_tcp_rate_sequential", "ttfb_p50_ms"]) >= 40.0,
        "{v}"
    );
}

#[test]
fn small_exchanges_run_over_one_connection_against_raw_tcp() {
    let (v, stderr) = bench_json_stderr(&["--only", "small", "--exchanges", "200"]);
    assert!(v["rate_sequential"].is_null(), "{v}");
    check_small(&v, 200);
    assert_warned(&v, &stderr, "1-byte exchanges");
}

fn check_small(v: &Value, exchanges: u64) {
    let small = v["small"].as_array().unwrap_or_else(|| panic!("{v}"));
    let sizes: Vec<_> = small.iter().map(|x| x["size"].as_u64()).collect();
    assert_eq!(sizes, [Some(1), Some(100)], "{v}");
    for x in small {
        assert_eq!(x["exchanges"].as_u64(), Some(exchanges), "{v}");
        for f in [
            "seconds",
            "per_second",
            "raw_tcp_seconds",
            "raw_tcp_per_second",
            "ratio_to_raw_tcp",
        ] {
            num(x, &[f]);
        }
    }
}

#[test]
fn the_relay_runs_alone_in_front_of_a_target() {
    let (_target, addr) = target();
    let mut child = sealpipe()
        .args([
            "bench",
            "--relay",
            "127.0.0.1:0",
            "--relay-to",
            &addr,
            "--rtt",
            "10ms",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the relay");
    let mut line = String::new();
    BufReader::new(child.stderr.take().expect("stderr"))
        .read_line(&mut line)
        .expect("read the relay's first line");
    let _relay = KillOnDrop(child);
    let relay = line
        .trim()
        .strip_prefix("bench relay listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let v = bench_json(&[
        "--target",
        &relay,
        "--bytes",
        "300000",
        "--connections",
        "3",
        "--concurrency",
        "1",
        "--exchanges",
        "3",
        "--only",
        "throughput,rate,small",
    ]);
    check_throughput(&v, 300_000, 1);
    check_rates(&v, 3, &["rate_sequential"]);
    check_small(&v, 3);
    assert!(num(&v, &["rate_sequential", "ttfb_p50_ms"]) >= 20.0, "{v}");
}
