//! What `sealpipe bench` measures: the bench target it drives the loads at, the loads
//! (throughput, connection rate, idle connections) and the references (the single-core AEAD
//! seal speed, one RSA signature), and the process CPU, memory and open-file helpers they use.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::ProgressBar;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::report::{AeadSpeed, Rate, Throughput};
use crate::proto::aead::{Aead, KEY_LEN, NONCE_LEN};
use crate::proto::identity::PrivateIdentity;

/// First byte that makes a bench-target connection a sink.
const SINK: u8 = b's';
/// The byte the echo loads send.
const PING: u8 = b'e';
/// Write and read size of the loads and the target.
const CHUNK: usize = 256 * 1024;

/// User + system CPU seconds of this process.
fn cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeValLike;
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(ru) => {
            (ru.user_time().num_microseconds() + ru.system_time().num_microseconds()) as f64 / 1e6
        }
        Err(_) => 0.0,
    }
}

/// VmRSS of this process in KiB (0 where /proc is missing).
pub(crate) fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Raises the soft open-file limit to the hard one; returns the limit now in force.
pub(crate) fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// The bench target: echo, or sink for connections whose first byte is [`SINK`].
pub(crate) async fn serve_target(listener: TcpListener) {
    while let Ok((s, _)) = listener.accept().await {
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let _ = target_conn(s).await;
        });
    }
}

async fn target_conn(mut s: TcpStream) -> std::io::Result<()> {
    let mut first = [0u8; 1];
    if s.read(&mut first).await? == 0 {
        return Ok(());
    }
    if first[0] == SINK {
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        s.write_all(&total.to_le_bytes()).await?;
        s.shutdown().await
    } else {
        s.write_all(&first).await?;
        // Echo with a buffer only while bytes move, so that idle connections cost the target
        // (and the in-process memory figure) nothing but the socket and this task.
        loop {
            s.readable().await?;
            let mut buf = vec![0u8; 16 * 1024];
            match s.try_read(&mut buf) {
                Ok(0) => return s.shutdown().await,
                Ok(n) => s.write_all(&buf[..n]).await?,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Moves `bytes` over `streams` connections to a bench target at `addr`.
pub(crate) async fn throughput(
    addr: SocketAddr,
    bytes: u64,
    streams: usize,
    pb: ProgressBar,
) -> anyhow::Result<Throughput> {
    let streams = streams.max(1);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..streams {
        let share = bytes / streams as u64 + u64::from((i as u64) < bytes % streams as u64);
        let pb = pb.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            s.write_all(&[SINK]).await?;
            let buf = vec![0x5au8; CHUNK];
            let mut left = share;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                s.write_all(&buf[..n]).await?;
                left -= n as u64;
                pb.inc(n as u64);
            }
            s.shutdown().await?;
            let mut count = [0u8; 8];
            s.read_exact(&mut count).await.context(
                "the target sent no byte count: is it a `sealpipe bench --serve` target?",
            )?;
            let got = u64::from_le_bytes(count);
            if got != share {
                bail!("the sink received {got} bytes of the {share} sent");
            }
            anyhow::Ok(got)
        }));
    }
    let mut moved = 0;
    for t in tasks {
        moved += t.await??;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    pb.finish_and_clear();
    Ok(Throughput {
        bytes: moved,
        streams,
        seconds,
        gbit_per_s: moved as f64 * 8.0 / seconds / 1e9,
        cpu_seconds: cpu,
        cpu_s_per_gib: cpu / (moved as f64 / (1u64 << 30) as f64),
    })
}

/// Seals `record_size`-byte records on this thread for about half a second.
pub(crate) fn aead_speed(record_size: usize) -> AeadSpeed {
    let aead = Aead::new(&[7u8; KEY_LEN]);
    let mut buf = vec![0u8; record_size];
    let mut nonce = [0u8; NONCE_LEN];
    let t0 = Instant::now();
    let mut sealed = 0u64;
    let mut counter = 0u64;
    while t0.elapsed() < Duration::from_millis(500) {
        for _ in 0..16 {
            counter += 1;
            nonce[4..].copy_from_slice(&counter.to_be_bytes());
            if let Ok(tag) = aead.seal_in_place(&nonce, &[], &mut buf) {
                std::hint::black_box(tag);
            }
            sealed += record_size as u64;
        }
    }
    AeadSpeed {
        record_size,
        gbit_per_s: sealed as f64 * 8.0 / t0.elapsed().as_secs_f64() / 1e9,
    }
}

/// Milliseconds per RSA PSS signature with `signer`, over at least 20 signatures and 300 ms;
/// blocks the thread.
pub(crate) fn rsa_sign_ms(signer: &PrivateIdentity) -> f64 {
    // The first signature on a thread seeds aws-lc's per-thread generator
    // (tens of milliseconds): not part of a signature's cost.
    let _ = signer.sign(&[0u8; 64]);
    let t0 = Instant::now();
    let mut n = 0u32;
    while n < 20 || t0.elapsed() < Duration::from_millis(300) {
        n += 1;
        let _ = signer.sign(&[n as u8; 64]);
    }
    t0.elapsed().as_secs_f64() * 1e3 / f64::from(n)
}

/// One connect, one byte out, the same byte back: the time to first echo.
async fn one_echo(addr: SocketAddr) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(&[PING]).await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    if b[0] != PING {
        bail!("the echo sent back {:#04x}", b[0]);
    }
    Ok(t0.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

/// `connections` echo connections with `concurrency` clients at once.
pub(crate) async fn rate(
    addr: SocketAddr,
    connections: usize,
    concurrency: usize,
    pb: ProgressBar,
) -> Rate {
    let concurrency = concurrency.clamp(1, connections.max(1));
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, failures, pb) = (next.clone(), failures.clone(), pb.clone());
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < connections {
                match one_echo(addr).await {
                    Ok(d) => times.push(d),
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                pb.inc(1);
            }
            times
        }));
    }
    let mut times = Vec::new();
    for t in tasks {
        times.extend(t.await.unwrap_or_default());
    }
    let seconds = t0.elapsed().as_secs_f64();
    pb.finish_and_clear();
    times.sort();
    Rate {
        connections: times.len(),
        failures: failures.load(Ordering::Relaxed),
        concurrency,
        seconds,
        per_second: times.len() as f64 / seconds,
        ttfb_p50_ms: percentile(&times, 0.50),
        ttfb_p99_ms: percentile(&times, 0.99),
    }
}

/// `n` exchanges of `size` bytes out and their echo back, one after another, over one
/// connection to a bench target at `addr` (established first with one echo, untimed); returns
/// the seconds the exchanges took.
pub(crate) async fn exchanges(
    addr: SocketAddr,
    n: usize,
    size: usize,
    pb: ProgressBar,
) -> anyhow::Result<f64> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(&[PING]).await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    let out: Vec<u8> = (0..size).map(|i| i as u8 ^ PING).collect();
    let mut back = vec![0u8; size];
    let t0 = Instant::now();
    for i in 0..n {
        s.write_all(&out).await?;
        s.read_exact(&mut back)
            .await
            .with_context(|| format!("the echo of exchange {i}"))?;
        if back != out {
            bail!("exchange {i}: the echo differs from what was sent");
        }
        if i % 256 == 0 {
            pb.set_position(i as u64);
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    // A clean end (our EOF, the target's back), so the tunnel closes it as a finished stream.
    s.shutdown().await?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await?;
    pb.finish_and_clear();
    Ok(seconds)
}

/// Opens `n` established (one echo each) connections to `addr` and returns them.
pub(crate) async fn open_idle(
    addr: SocketAddr,
    n: usize,
    pb: &ProgressBar,
) -> anyhow::Result<Vec<TcpStream>> {
    let mut open = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("idle connection {i}"))?;
        s.write_all(&[PING]).await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .await
            .with_context(|| format!("echo on idle connection {i}"))?;
        open.push(s);
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(open)
}
