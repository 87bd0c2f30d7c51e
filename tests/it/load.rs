//! Load: 10,000 concurrent tunneled connections, each moving data with hashes checked on both
//! ends, and the resident memory per established idle connection.
//!
//! Ignored by `cargo test`; CI runs it in its own step:
//! `cargo test --test it -- --ignored --exact load::ten_thousand_connections --nocapture`.
//! `SEALPIPE_LOAD_CONNECTIONS` changes the count; `SEALPIPE_LOAD_IDLE_SECS` holds the
//! connections idle that long once established and reports each process's CPU time meanwhile
//! (keepalives, PROTOCOL.md §4.4); `SEALPIPE_LOAD_EXTRA` adds `[defaults]` lines to both sides
//! (e.g. `dead_peer_timeout = "off"` for a baseline). The machines here cap open files at 20,000 per process (a hard limit that root cannot
//! raise), and a sealpipe process holds two sockets per tunneled connection, so the connections
//! are carried by two connector/listener pairs of half each; the echo target runs in a child
//! process (this test binary, re-run) and the clients in this one.

use crate::support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::daemon::*;
use support::{pseudo_random, raise_nofile, rss_kib};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The echo target, in its own process: echoes every byte, and after the client's EOF sends the
/// SHA-256 of everything it received, then closes. Runs only when re-executed by the load test.
#[test]
#[ignore = "helper process of `ten_thousand_connections`"]
fn echo_target_process() {
    assert!(
        std::env::var_os("SEALPIPE_ECHO_TARGET").is_some(),
        "the echo target runs only when the load test starts it"
    );
    raise_nofile(u64::MAX);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("LISTENING {}", l.local_addr().unwrap());
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            h.update(&buf[..n]);
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(&h.finalize()).await;
                let _ = s.shutdown().await;
            });
        }
    });
}

/// The echo target process (killed on drop) and its address.
fn start_target() -> (KillOnDrop, SocketAddr) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "load::echo_target_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SEALPIPE_ECHO_TARGET", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    for line in out.lines() {
        let line = line.unwrap();
        if let Some(addr) = line.split("LISTENING ").nth(1) {
            return (KillOnDrop(child), addr.parse().unwrap());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("echo target did not start");
}

/// One client: connect, a first echo to prove the tunnel, wait for `go`, then 16 KiB more,
/// half-close, and check the echo and the target's hash of what it received.
async fn client(
    entry: SocketAddr,
    seed: u64,
    established: Arc<AtomicUsize>,
    mut go: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let first = pseudo_random(seed, 1024);
    let rest = pseudo_random(seed + 1_000_000, 16 * 1024);
    let mut s = tokio::net::TcpStream::connect(entry)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(&first)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; first.len()];
    s.read_exact(&mut back)
        .await
        .map_err(|e| format!("first echo: {e}"))?;
    if back != first {
        return Err("first echo differs".into());
    }
    established.fetch_add(1, Ordering::SeqCst);
    let _ = go.wait_for(|g| *g).await;
    s.write_all(&rest)
        .await
        .map_err(|e| format!("write: {e}"))?;
    s.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
    let mut tail = Vec::new();
    s.read_to_end(&mut tail)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let sent: Vec<u8> = [first, rest].concat();
    let digest = Sha256::digest(&sent);
    if tail.len() != 16 * 1024 + 32
        || tail[..16 * 1024] != sent[1024..]
        || tail[16 * 1024..] != digest[..]
    {
        return Err(format!(
            "end-to-end check failed ({} bytes back)",
            tail.len()
        ));
    }
    Ok(())
}

#[test]
#[ignore = "load test: run in its own CI step"]
fn ten_thousand_connections() {
    let total: usize = std::env::var("SEALPIPE_LOAD_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let limit = raise_nofile(u64::MAX);
    assert!(
        limit as usize > total + 100,
        "need {total}+ open files, limit is {limit}"
    );
    let (_target, target) = start_target();
    // Cold connectors start 64 full handshakes at once and more while tickets run short: the
    // per-source limit of full handshakes (SECURITY.md, "Flooding the listener") is not what
    // this test measures.
    let extra = format!(
        "max_connections = 20000\nmax_handshakes = 64\nhandshake_timeout = \"300s\"\nsource_handshake_rate = 0\n{}",
        std::env::var("SEALPIPE_LOAD_EXTRA").unwrap_or_default()
    );
    let idle_secs: u64 = std::env::var("SEALPIPE_LOAD_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut pairs = Vec::new();
    for _ in 0..2 {
        pairs.push(tunnel_to(target, &extra));
    }
    let pids: Vec<u32> = pairs
        .iter()
        .flat_map(|t| [t.listener.child.id(), t.connector.child.id()])
        .collect();
    let rss_before: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
    let entries: Vec<SocketAddr> = pairs.iter().map(|t| t.entry).collect();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let established = Arc::new(AtomicUsize::new(0));
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let results = rt.block_on(async {
        let mut tasks = Vec::with_capacity(total);
        for i in 0..total {
            let entry = entries[i % entries.len()];
            tasks.push(tokio::spawn(client(entry, i as u64, established.clone(), go_rx.clone())));
            if i % 200 == 199 {
                // Pace the connects a little: the accept backlogs are finite.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // Wait until every connection is established (or some failed), then measure.
        let deadline = Instant::now() + Duration::from_secs(900);
        while established.load(Ordering::SeqCst) < total
            && tasks.iter().all(|t| !t.is_finished())
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let n = established.load(Ordering::SeqCst);
        let setup = started.elapsed();
        let rss_after: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
        let per_process = n as f64 / 2.0;
        eprintln!("{n} of {total} tunneled connections established and idle after {setup:.1?}");
        for (i, pid) in pids.iter().enumerate() {
            let role = if i % 2 == 0 { "listener " } else { "connector" };
            let grown = rss_after[i].saturating_sub(rss_before[i]);
            eprintln!(
                "  {role} pid {pid}: RSS {} KiB -> {} KiB, {:.1} KiB per idle connection ({per_process} connections)",
                rss_before[i],
                rss_after[i],
                grown as f64 / per_process
            );
        }
        if idle_secs > 0 {
            let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
            tokio::time::sleep(Duration::from_secs(idle_secs)).await;
            let ticks = clock_ticks();
            for (i, pid) in pids.iter().enumerate() {
                let role = if i % 2 == 0 { "listener " } else { "connector" };
                let used = cpu_ticks(*pid).saturating_sub(before[i]) as f64 / ticks;
                eprintln!(
                    "  {role} pid {pid}: {used:.2} s CPU (utime+stime) in {idle_secs} s idle, {:.3} % of one core, {per_process} idle connections",
                    100.0 * used / idle_secs as f64
                );
            }
        }
        let _ = go_tx.send(true);
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap_or_else(|e| Err(format!("task: {e}"))));
        }
        out
    });
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    eprintln!(
        "{} of {total} connections moved 17 KiB each with both hashes checked, in {:.1?}",
        total - failures.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failed, first: {:?}",
        failures.len(),
        failures.first()
    );
}

/// utime + stime of process `pid`, in clock ticks (`/proc/PID/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
