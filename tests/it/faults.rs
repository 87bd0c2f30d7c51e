//! Faults around the real daemons: a listener killed mid-transfer and restarted, a forward
//! target that refuses or resets, a receiver that stops reading (backpressure, bounded memory),
//! and a reload with a broken config.

use crate::support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::daemon::*;
use support::mitm::{client_exchange, End};
use support::{hash_to_end, pseudo_random, rss_kib};

const PROMPT: Duration = Duration::from_secs(5);

/// A service that sends pseudo-random bytes to every connection until the connection fails.
fn source_service() -> SocketAddr {
    serve("127.0.0.1:0", |mut s| {
        let chunk = pseudo_random(5, 64 * 1024);
        while s.write_all(&chunk).is_ok() {}
    })
    .addr
}

#[test]
fn listener_killed_mid_transfer_resets_the_clients_promptly() {
    let t = tunnel_to(source_service(), "");
    let (tx, rx) = mpsc::channel();
    let progress: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::default()).collect();
    for p in &progress {
        let mut s = TcpStream::connect(t.entry).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"go").unwrap();
        let (tx, p) = (tx.clone(), p.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break tx.send((Ok(()), Instant::now())).unwrap(),
                    Ok(k) => {
                        p.fetch_add(k as u64, Ordering::SeqCst);
                    }
                    Err(e) => break tx.send((Err(e.kind()), Instant::now())).unwrap(),
                }
            }
        });
    }
    // Both streams are moving.
    let deadline = Instant::now() + Duration::from_secs(20);
    while progress.iter().any(|p| p.load(Ordering::SeqCst) < 1 << 20) {
        assert!(Instant::now() < deadline, "no data through the tunnel");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut listener = t.listener;
    let killed = Instant::now();
    listener.kill(); // SIGKILL
    for _ in 0..2 {
        let (end, at) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(end, Err(ErrorKind::ConnectionReset), "client end");
        assert!(at - killed < PROMPT, "reset only after {:?}", at - killed);
        eprintln!(
            "FAULT listener SIGKILL: client reset after {:?}",
            at - killed
        );
    }
    // The connector survives and logs why.
    let log = t.connector.wait_log("connection reset");
    assert!(log.contains("connection reset"), "{log}");
    drop(t.site);
}

/// A loopback port free right now.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Starts a daemon, or `None` if it exited at startup (e.g. its port was taken).
fn try_start(config: &std::path::Path) -> Option<Daemon> {
    // Daemon::start panics (with the log) when the process exits at startup.
    std::panic::catch_unwind(|| Daemon::start(config)).ok()
}

#[test]
fn listener_restarted_on_the_same_port_serves_the_running_connector() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let lconf = site.path("listener.toml");
    let (port, mut listener) = (0..10)
        .find_map(|_| {
            let port = free_port();
            site.write(
                "listener.toml",
                &listener_config(port, service.addr, &[connector_fp()], ""),
            );
            try_start(&lconf).map(|d| (port, d))
        })
        .expect("no free port for the listener");
    let connector = start_connector(&site, port, "");
    let exchange = |seed| assert_echoes(connector.addr(), seed, 200_000);
    exchange(1);
    listener.kill();
    // Listener down: the client is reset.
    let r = try_exchange(connector.addr(), b"anyone?");
    assert_eq!(r, Err(ErrorKind::ConnectionReset));
    // Same port, new process; the connector is not restarted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listener = loop {
        if let Some(d) = try_start(&lconf) {
            break d;
        }
        assert!(Instant::now() < deadline, "listener cannot rebind {port}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(listener.addr(), port);
    exchange(2);
    exchange(3);
    assert_eq!(service.accepted.load(Ordering::SeqCst), 3);
}

#[test]
fn forward_target_refusing_or_resetting_mid_stream_resets_the_client() {
    // Refusing.
    let dead = dead_port();
    let t = tunnel_to(dead.addr, "");
    let out = client_exchange(t.entry, b"hello?");
    assert_eq!(out.end, End::Reset, "target refuses: {out:?}");
    assert!(out.elapsed < PROMPT);
    eprintln!("FAULT target refuses: client reset after {:?}", out.elapsed);

    // Accepting, reading a little, then resetting (SO_LINGER 0).
    let (tx, rx) = mpsc::channel();
    let target = serve("127.0.0.1:0", move |mut s| {
        let mut buf = vec![0u8; 1000];
        s.read_exact(&mut buf).unwrap();
        let _ = s.write_all(b"partial answer");
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
        tx.send(buf).unwrap();
    })
    .addr;
    let t = tunnel_to(target, "");
    let data = pseudo_random(9, 2 << 20);
    let out = client_exchange(t.entry, &data);
    assert_eq!(out.end, End::Reset, "target resets mid-stream: {out:?}");
    assert!(out.elapsed < PROMPT);
    let got = rx.recv_timeout(PROMPT).unwrap();
    assert_eq!(&got[..], &data[..1000]);
    assert!(b"partial answer".starts_with(&out.read));
    eprintln!(
        "FAULT target resets mid-stream: client reset at {} after {:?}",
        out.at, out.elapsed
    );
    let log = t.listener.wait_log("connection reset");
    assert!(log.contains("reason=local socket"), "{log}");
}

/// The most a kernel's TCP buffers can hold along the tunnel's three connections (client →
/// connector, connector → listener, listener → target): three send buffers and two receive
/// buffers at their autotuning maximum (`tcp_wmem`, `tcp_rmem`), and the target's receive
/// buffer at its default (autotuning grows a buffer only while its reader reads).
fn kernel_buffering() -> u64 {
    let field = |file: &str, i: usize, default: u64| -> u64 {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.split_whitespace().nth(i)?.parse().ok())
            .unwrap_or(default)
    };
    let (rmem_default, rmem_max) = (
        field("/proc/sys/net/ipv4/tcp_rmem", 1, 128 << 10),
        field("/proc/sys/net/ipv4/tcp_rmem", 2, 6 << 20),
    );
    let wmem_max = field("/proc/sys/net/ipv4/tcp_wmem", 2, 4 << 20);
    3 * wmem_max + 2 * rmem_max + rmem_default
}

/// The sender offers `SEALPIPE_BACKPRESSURE_MIB` (default 64; 200 for the full figure), or more
/// where the kernel's socket buffers could hold that much, to a receiver that reads nothing: it
/// must block once those buffers are full (and a few records more), with both daemons' memory
/// flat; then the receiver resumes and every byte arrives. The default is kept small because a
/// debug build moves only some MiB/s.
#[test]
fn a_receiver_that_stops_reading_blocks_the_sender_with_bounded_memory() {
    let mib: u64 = std::env::var("SEALPIPE_BACKPRESSURE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    // What the kernel may buffer, and what the tunnel may (records in flight at both ends).
    let bound = kernel_buffering() + (8 << 20);
    let mib = mib.max((bound >> 20) + 32);
    let total: u64 = mib << 20;
    const CHUNK: usize = 1 << 20;
    // A sink that waits for the gate before reading anything, then hashes everything.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = l.local_addr().unwrap();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        gate_rx.recv().unwrap();
        let (digest, n) = hash_to_end(&mut s);
        done_tx.send((n as u64, digest)).unwrap();
    });
    let t = tunnel_to(target, "record_size = \"64KiB\"");
    let pids = [t.listener.child.id(), t.connector.child.id()];
    let base: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect();

    let written = Arc::new(AtomicU64::new(0));
    let w = written.clone();
    let entry = t.entry;
    let writer = std::thread::spawn(move || {
        let mut s = TcpStream::connect(entry).unwrap();
        let base = pseudo_random(77, CHUNK);
        let mut chunk = base.clone();
        let mut h = Sha256::new();
        for i in 0..total / CHUNK as u64 {
            chunk[..8].copy_from_slice(&i.to_le_bytes());
            s.write_all(&chunk).unwrap();
            h.update(&chunk);
            w.fetch_add(CHUNK as u64, Ordering::SeqCst);
        }
        s.shutdown(Shutdown::Write).unwrap();
        let digest: [u8; 32] = h.finalize().into();
        // Keep the socket until the far end has everything.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        digest
    });

    let peak = |peak: &mut [u64]| {
        for (i, &p) in pids.iter().enumerate() {
            peak[i] = peak[i].max(rss_kib(p));
        }
    };
    let mut peaks = base.clone();
    // Wait for the sender to block: no progress for a whole second.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (u64::MAX, Instant::now());
    let stalled = loop {
        assert!(Instant::now() < deadline, "the sender never blocked");
        std::thread::sleep(Duration::from_millis(100));
        peak(&mut peaks);
        let now = written.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break now;
        }
    };
    assert!(
        stalled <= bound,
        "the sender wrote {stalled} bytes into a receiver that does not read (the kernel's \
         buffers and the tunnel's hold at most {bound})"
    );
    let growth_mib = |peaks: &[u64]| -> Vec<u64> {
        peaks
            .iter()
            .zip(&base)
            .map(|(p, b)| p.saturating_sub(*b) / 1024)
            .collect()
    };
    let blocked_growth = growth_mib(&peaks);
    eprintln!(
        "FAULT backpressure: sender blocked after {} MiB; RSS growth listener {} MiB, connector {} MiB",
        stalled >> 20,
        blocked_growth[0],
        blocked_growth[1]
    );
    // The receiver resumes: everything arrives, in order.
    gate_tx.send(()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30 + mib);
    let (n, got) = loop {
        if let Ok(r) = done_rx.recv_timeout(Duration::from_millis(200)) {
            break r;
        }
        peak(&mut peaks);
        assert!(
            Instant::now() < deadline,
            "transfer did not finish\nlistener:\n{}\nconnector:\n{}",
            t.listener.log_text(),
            t.connector.log_text()
        );
    };
    let sent = writer.join().unwrap();
    assert_eq!(n, total);
    assert_eq!(got, sent, "hashes differ");
    let growth = growth_mib(&peaks);
    eprintln!(
        "FAULT backpressure: {mib} MiB delivered; peak RSS growth listener {} MiB, connector {} MiB",
        growth[0], growth[1]
    );
    for (role, g) in ["listener", "connector"].iter().zip(&growth) {
        assert!(*g < 100, "{role} RSS grew by {g} MiB");
    }
}

#[test]
fn reload_with_a_broken_config_keeps_the_running_one() {
    let service = Service::start(Behaviour::Echo);
    let t = tunnel_to(service.addr, "");
    let exchange = |seed| assert_echoes(t.entry, seed, 100_000);
    exchange(1);
    for (name, broken) in [
        ("listener.toml", "this is not toml ["),
        ("connector.toml", "[identity]\nprivate_key = \"nope.pem\"\n"),
    ] {
        std::fs::write(t.site.path(name), broken).unwrap();
    }
    t.listener.signal("HUP");
    t.connector.signal("HUP");
    for d in [&t.listener, &t.connector] {
        let log = d.wait_log("reload failed");
        assert!(
            log.contains("reload failed, keeping the running configuration"),
            "{log}"
        );
    }
    exchange(2);
    exchange(3);
    assert_eq!(service.accepted.load(Ordering::SeqCst), 3);
}
