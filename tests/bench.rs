//! Smoke tests of `sealpipe bench` (tiny sizes, no timing assertions): every mode runs, the
//! JSON has its fields, and the bytes the sink confirmed equal what was asked.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;
use support::daemon::*;

fn sealpipe() -> Command {
    Command::new(bin())
}

fn bench_json(args: &[&str]) -> Value {
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
    serde_json::from_str(lines[0]).expect("valid JSON")
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
    let v = bench_json(&[
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
