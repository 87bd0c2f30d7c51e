//! `sealpipe bench` (SPEC §6): throughput, CPU per GiB, connection rate, time to first echo
//! and memory per idle connection, each next to a reference measured in the same run.
//!
//! Three ways to run it:
//! * **in process** (default): a bench target, a listener and a connector on loopback in this
//!   process, with RSA-2048 identities made in memory;
//! * **`--config FILE --tunnel NAME`**: the `[[connector]]` named NAME from FILE runs in this
//!   process (its key, pinned peer, `connect` address and tuning) on an ephemeral loopback
//!   port instead of its `listen` address, so it never clashes with a running daemon; the
//!   remote listener must forward to a bench target (`sealpipe bench --serve ADDR`);
//! * **`--target ADDR`** (load only): the loads are driven at any tunnel entry point (stunnel,
//!   spiped, `ssh -L`, socat, a running sealpipe) whose far end is a bench target.
//!
//! The bench target (`--serve ADDR`) is an echo service, except that a connection whose first
//! byte is `s` is a sink: it reads to EOF and answers with the count of bytes after the `s`
//! (8 bytes, little endian), so that the throughput load checks every byte arrived. Plain echo
//! services work for the connection-rate and idle loads (they send one `e` and read it back).
//!
//! Raw loopback TCP to an in-process bench target is always measured as the reference, as is
//! the single-core ChaCha20-Poly1305 seal speed of this build at the record size.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cmd::pair::{identities, loopback, spawn_pair};
use crate::config::Tuning;
use crate::proto::aead::{Aead, KEY_LEN, NONCE_LEN};
use crate::proto::identity::{PrivateIdentity, Signer};

/// RSA size of the in-process identities (the issue compares RSA-2048 handshakes).
const BENCH_BITS: usize = 2048;
/// First byte that makes a bench-target connection a sink.
const SINK: u8 = b's';
/// The byte the echo loads send.
const PING: u8 = b'e';
/// Write and read size of the loads and the target.
const CHUNK: usize = 256 * 1024;

/// The measurements `--only` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Single-core ChaCha20-Poly1305 seal speed at the record size.
    Aead,
    /// Bulk throughput through the tunnel and over raw loopback TCP.
    Throughput,
    /// New connections per second and time to first echo, sequential and concurrent.
    Rate,
    /// Resident memory per idle established connection.
    Idle,
}

/// `sealpipe bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Bytes the throughput load moves, split over the streams.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub bytes: u64,
    /// Parallel connections of the throughput load.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Connections each connection-rate load opens (sequential, then concurrent).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Clients of the concurrent connection-rate load.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Idle established connections held open to measure memory per connection.
    #[arg(long, default_value_t = 1000)]
    pub idle: usize,
    /// With --target: keep the idle connections open this long (seconds) after printing
    /// "bench: N idle connections open" on stderr, so another tool can read the tunnel's memory.
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,
    /// Record size of the in-process pair (default: the `record_size` tuning default).
    #[arg(long, value_parser = parse_size)]
    pub record_size: Option<u64>,
    /// Run only these measurements (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Phase>,
    /// Print one JSON object on stdout instead of a table (and no progress bar).
    #[arg(long)]
    pub json: bool,
    /// Run the loads through the `[[connector]]` named by --tunnel in this config file.
    #[arg(long, requires = "tunnel", conflicts_with_all = ["target", "serve"])]
    pub config: Option<PathBuf>,
    /// The connector's name in --config.
    #[arg(long, requires = "config")]
    pub tunnel: Option<String>,
    /// Load only: drive the loads at this tunnel entry point (its far end a bench target).
    #[arg(long, conflicts_with = "serve")]
    pub target: Option<String>,
    /// Run only a bench target (echo; sink for connections starting with `s`) on ADDR, until
    /// killed. Port 0 picks a free port; the bound address is printed on stderr.
    #[arg(long)]
    pub serve: Option<SocketAddr>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size (e.g. 64KiB, 1GiB): {e}"))
}

/// One throughput run.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Throughput {
    /// Bytes the sink(s) confirmed receiving.
    pub bytes: u64,
    /// Parallel connections.
    pub streams: usize,
    /// Wall time, first connect to last confirmation.
    pub seconds: f64,
    /// 10⁹ bits per second.
    pub gbit_per_s: f64,
    /// User + system CPU of this whole process over the run.
    pub cpu_seconds: f64,
    /// `cpu_seconds` per GiB moved.
    pub cpu_s_per_gib: f64,
}

/// The cipher reference.
#[derive(Debug, Clone, Serialize)]
pub(super) struct AeadSpeed {
    /// Plaintext bytes per seal.
    pub record_size: usize,
    /// 10⁹ bits of plaintext sealed per second on one core.
    pub gbit_per_s: f64,
}

/// One connection-rate run.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Rate {
    /// Connections that got their echo.
    pub connections: usize,
    /// Connections that failed (refused, reset, wrong byte).
    pub failures: usize,
    /// Clients at once.
    pub concurrency: usize,
    /// Wall time.
    pub seconds: f64,
    /// Successful connections per second.
    pub per_second: f64,
    /// Connect to echo received, median, milliseconds.
    pub ttfb_p50_ms: f64,
    /// Connect to echo received, 99th percentile, milliseconds.
    pub ttfb_p99_ms: f64,
}

/// The idle-memory run.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Idle {
    /// Established connections held open.
    pub connections: usize,
    /// VmRSS before opening them.
    pub rss_before_kib: u64,
    /// VmRSS with all of them open and idle.
    pub rss_after_kib: u64,
    /// (after − before) / connections.
    pub kib_per_connection: f64,
}

/// Everything one `sealpipe bench` measured; the `--json` output.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct Report {
    /// "in-process", "config" or "target".
    pub mode: String,
    /// What the loads were driven at.
    pub entry: String,
    /// Record size of the in-process pair (`null` otherwise).
    pub record_size: Option<usize>,
    /// Whether resumption was on for the rate loads (`null`: not known, the tunnel is elsewhere).
    pub resumption: Option<bool>,
    /// Through the tunnel.
    pub throughput: Option<Throughput>,
    /// Raw loopback TCP to a bench target, same bytes and streams.
    pub raw_tcp: Option<Throughput>,
    /// throughput / raw_tcp.
    pub ratio_to_raw_tcp: Option<f64>,
    /// Single-core seal speed of this build.
    pub aead: Option<AeadSpeed>,
    /// throughput / aead.
    pub ratio_to_aead: Option<f64>,
    /// Milliseconds per RSA-2048 PSS signature (in-process identity), the handshake reference.
    pub rsa_sign_ms: Option<f64>,
    /// One connection after another.
    pub rate_sequential: Option<Rate>,
    /// `--concurrency` clients.
    pub rate_concurrent: Option<Rate>,
    /// In process: one connection after another through a second pair with resumption off
    /// (every connection a full RSA handshake).
    pub rate_full_sequential: Option<Rate>,
    /// In process: `--concurrency` clients through the pair with resumption off.
    pub rate_full_concurrent: Option<Rate>,
    /// Whole-process memory per idle connection.
    pub idle: Option<Idle>,
    /// What the figures include, for readers of the JSON.
    pub notes: Vec<String>,
}

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
fn rss_kib() -> u64 {
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
fn raise_nofile() -> u64 {
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
pub(super) async fn serve_target(listener: TcpListener) {
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

fn progress(enabled: bool, len: u64, what: &str, bytes: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    }
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let template = if bytes {
        "{prefix:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}"
    } else {
        "{prefix:>24} [{bar:30}] {pos}/{len} {per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(what.to_string());
    pb
}

/// Moves `bytes` over `streams` connections to a bench target at `addr`.
async fn throughput(
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
fn aead_speed(record_size: usize) -> AeadSpeed {
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
async fn rate(addr: SocketAddr, connections: usize, concurrency: usize, pb: ProgressBar) -> Rate {
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

/// Opens `n` established (one echo each) connections to `addr` and returns them.
async fn open_idle(addr: SocketAddr, n: usize, pb: &ProgressBar) -> anyhow::Result<Vec<TcpStream>> {
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

/// The in-process listener + connector pair in front of a bench target.
struct Pair {
    entry: SocketAddr,
    signer: Arc<PrivateIdentity>,
    stop: CancellationToken,
}

async fn in_process_pair(target: SocketAddr, tuning: Tuning) -> anyhow::Result<Pair> {
    let (l_id, c_id) = identities(BENCH_BITS).await?;
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let (plain_addr, _) =
        spawn_pair("bench", target, l_id.clone(), c_id, tuning, &tracker, &stop).await?;
    Ok(Pair {
        entry: plain_addr,
        signer: l_id,
        stop,
    })
}

/// The `[[connector]]` named `name` in `config`, run here on an ephemeral loopback port.
async fn configured_connector(
    config: &std::path::Path,
    name: &str,
) -> anyhow::Result<(SocketAddr, CancellationToken, String)> {
    let built = crate::daemon::build(config)?;
    let Some((_, tunnel)) = built.connectors.iter().find(|(_, t)| t.name == name) else {
        let names: Vec<_> = built
            .connectors
            .iter()
            .map(|(_, t)| t.name.clone())
            .collect();
        bail!(
            "{}: no [[connector]] named {name:?} (connectors: {})",
            config.display(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    };
    let (plain, plain_addr) = loopback().await?;
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let connect = tunnel.connect.to_string();
    crate::tunnel::accept::spawn(
        crate::tunnel::net::Bound::Tcp(plain),
        tunnel.clone(),
        Default::default(),
        &tracker,
        stop.clone(),
    );
    Ok((plain_addr, stop, connect))
}

async fn resolve(target: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(target)
        .await
        .with_context(|| format!("resolving {target}"))?
        .next()
        .with_context(|| format!("{target}: no address"))
}

/// Runs `sealpipe bench`; prints the table or the JSON object.
pub(super) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(addr) = args.serve {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        eprintln!("bench target listening on {}", l.local_addr()?);
        serve_target(l).await;
        return Ok(());
    }
    let report = measure(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// Runs the measurements `args` ask for and returns them.
pub(super) async fn measure(args: &BenchArgs) -> anyhow::Result<Report> {
    let want = |p: Phase| args.only.is_empty() || args.only.contains(&p);
    let show = !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let nofile = raise_nofile();

    let (reference, ref_addr) = loopback().await?;
    tokio::spawn(serve_target(reference));

    let mut report = Report::default();
    let mut tuning = Tuning::default();
    if let Some(r) = args.record_size {
        if !(crate::config::MIN_RECORD_SIZE as u64..=crate::config::MAX_RECORD_SIZE as u64)
            .contains(&r)
        {
            bail!("--record-size {r}: must be from 1KiB to 64KiB");
        }
        tuning.record_size = r as usize;
    }
    tuning.max_connections = tuning
        .max_connections
        .max(args.idle + args.concurrency + args.streams + 64);
    let mut stops = Vec::new();
    let mut signer = None;
    let mut in_process_target = None;
    let entry = if let Some(t) = &args.target {
        report.mode = "target".into();
        report.entry = t.clone();
        resolve(t).await?
    } else if let (Some(cfg), Some(name)) = (&args.config, &args.tunnel) {
        let (addr, stop, connect) = configured_connector(cfg, name).await?;
        stops.push(stop);
        report.mode = "config".into();
        report.entry = format!("connector {name:?} of {} → {connect}", cfg.display());
        addr
    } else {
        if show {
            eprintln!("sealpipe bench: making two {BENCH_BITS}-bit RSA identities in memory…");
        }
        let (target, target_addr) = loopback().await?;
        tokio::spawn(serve_target(target));
        in_process_target = Some(target_addr);
        let pair = in_process_pair(target_addr, tuning.clone()).await?;
        stops.push(pair.stop.clone());
        signer = Some(pair.signer);
        report.mode = "in-process".into();
        report.entry = "connector → listener → bench target, loopback, this process".into();
        report.record_size = Some(tuning.record_size);
        report.notes.push(
            "CPU and memory are of the whole process: load client, connector, listener and target"
                .into(),
        );
        pair.entry
    };
    let in_process = report.mode == "in-process";

    if want(Phase::Aead) {
        let size = if in_process {
            tuning.record_size
        } else {
            args.record_size.map_or(tuning.record_size, |r| r as usize)
        };
        report.aead = Some(tokio::task::spawn_blocking(move || aead_speed(size)).await?);
        if let Some(s) = &signer {
            let s = s.clone();
            report.rsa_sign_ms = Some(
                tokio::task::spawn_blocking(move || {
                    // The first signature on a thread seeds aws-lc's per-thread generator
                    // (tens of milliseconds): not part of a signature's cost.
                    let _ = s.sign(&[0u8; 64]);
                    let t0 = Instant::now();
                    let mut n = 0u32;
                    while n < 20 || t0.elapsed() < Duration::from_millis(300) {
                        n += 1;
                        let _ = s.sign(&[n as u8; 64]);
                    }
                    t0.elapsed().as_secs_f64() * 1e3 / f64::from(n)
                })
                .await?,
            );
        }
    }

    if want(Phase::Idle)
        && args.idle > 0
        && (in_process || args.target.is_some() || args.config.is_some())
    {
        // Sockets in this process per idle connection: client, plus (in process) connector
        // plain + sealed, listener sealed + plain, target.
        let per = if in_process { 6 } else { 2 };
        if (args.idle * per) as u64 + 256 > nofile {
            bail!(
                "--idle {}: needs about {} open files, the limit here is {nofile}",
                args.idle,
                args.idle * per + 256
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = rss_kib();
        let pb = progress(show, args.idle as u64, "idle connections", false);
        let open = open_idle(entry, args.idle, &pb).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = rss_kib();
        if args.target.is_some() || args.config.is_some() {
            eprintln!("bench: {} idle connections open", open.len());
            if args.hold > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
            }
        }
        report.idle = Some(Idle {
            connections: open.len(),
            rss_before_kib: before,
            rss_after_kib: after,
            kib_per_connection: after.saturating_sub(before) as f64 / open.len().max(1) as f64,
        });
        drop(open);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    if want(Phase::Rate) && args.connections > 0 {
        report.rate_sequential = Some(rate_pass(entry, args, 1, show, "").await);
        report.rate_concurrent = Some(rate_pass(entry, args, args.concurrency, show, "").await);
        if let Some(target_addr) = in_process_target {
            report.resumption = Some(tuning.resumption);
            // The same loads through a second pair that never resumes: full RSA handshakes.
            let full = Tuning {
                resumption: false,
                ..tuning.clone()
            };
            let pair = in_process_pair(target_addr, full).await?;
            report.rate_full_sequential =
                Some(rate_pass(pair.entry, args, 1, show, ", full handshakes").await);
            report.rate_full_concurrent = Some(
                rate_pass(
                    pair.entry,
                    args,
                    args.concurrency,
                    show,
                    ", full handshakes",
                )
                .await,
            );
            pair.stop.cancel();
            report.notes.push(
                "connection rate: first with session resumption (after one full handshake), \
                 then through a second pair with `resumption = false` (every connection a full \
                 RSA-2048 handshake)"
                    .into(),
            );
        }
    }

    if want(Phase::Throughput) && args.bytes > 0 {
        let pb = progress(show, args.bytes, "raw loopback TCP", true);
        let raw = throughput(ref_addr, args.bytes, args.streams, pb).await?;
        let pb = progress(show, args.bytes, "through the tunnel", true);
        let tun = throughput(entry, args.bytes, args.streams, pb).await?;
        report.ratio_to_raw_tcp = Some(tun.gbit_per_s / raw.gbit_per_s);
        if let Some(a) = &report.aead {
            report.ratio_to_aead = Some(tun.gbit_per_s / a.gbit_per_s);
        }
        report.raw_tcp = Some(raw);
        report.throughput = Some(tun);
    }
    for s in stops {
        s.cancel();
    }
    Ok(report)
}

/// One connection-rate load of `args.connections` with `concurrency` clients at `entry`.
async fn rate_pass(
    entry: SocketAddr,
    args: &BenchArgs,
    concurrency: usize,
    show: bool,
    what: &str,
) -> Rate {
    let kind = if concurrency == 1 {
        "sequential"
    } else {
        "concurrent"
    };
    let pb = progress(
        show,
        args.connections as u64,
        &format!("connections, {kind}{what}"),
        false,
    );
    rate(entry, args.connections, concurrency, pb).await
}

/// The report as a table (markdown, readable as plain text).
pub(super) fn table(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "sealpipe bench ({}): {}", r.mode, r.entry);
    if let Some(rs) = r.record_size {
        let _ = writeln!(o, "record size {rs} bytes");
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "| measurement | value | reference | ratio |");
    let _ = writeln!(o, "|---|---|---|---|");
    if let (Some(t), Some(raw)) = (&r.throughput, &r.raw_tcp) {
        let _ = writeln!(
            o,
            "| throughput, {} stream(s), {:.0} MiB | {:.2} Gb/s | raw loopback TCP {:.2} Gb/s | {:.2} |",
            t.streams,
            t.bytes as f64 / 1048576.0,
            t.gbit_per_s,
            raw.gbit_per_s,
            r.ratio_to_raw_tcp.unwrap_or(0.0)
        );
        if let (Some(a), Some(ratio)) = (&r.aead, r.ratio_to_aead) {
            let _ = writeln!(
                o,
                "| throughput vs cipher | {:.2} Gb/s | ChaCha20-Poly1305 seal, 1 core, {} B: {:.2} Gb/s | {:.2} |",
                t.gbit_per_s, a.record_size, a.gbit_per_s, ratio
            );
        }
        let _ = writeln!(
            o,
            "| CPU s per GiB (whole process) | {:.2} | raw loopback TCP {:.2} | +{:.2} for the tunnel |",
            t.cpu_s_per_gib,
            raw.cpu_s_per_gib,
            t.cpu_s_per_gib - raw.cpu_s_per_gib
        );
    } else if let Some(a) = &r.aead {
        let _ = writeln!(
            o,
            "| ChaCha20-Poly1305 seal, 1 core, {} B | {:.2} Gb/s | | |",
            a.record_size, a.gbit_per_s
        );
    }
    let resumed = match r.resumption {
        Some(true) => ", resumed",
        _ => "",
    };
    for (rt, how) in [
        (&r.rate_sequential, resumed),
        (&r.rate_concurrent, resumed),
        (&r.rate_full_sequential, ", full handshakes"),
        (&r.rate_full_concurrent, ", full handshakes"),
    ]
    .into_iter()
    .filter_map(|(rt, how)| rt.as_ref().map(|rt| (rt, how)))
    {
        let _ = writeln!(
            o,
            "| new connections/s, {} client(s){how} | {:.0} ({} failed) | | |",
            rt.concurrency, rt.per_second, rt.failures
        );
        let sign = r
            .rsa_sign_ms
            .map(|s| format!("RSA-2048 sign {s:.2} ms"))
            .unwrap_or_default();
        let ratio = r
            .rsa_sign_ms
            .map(|s| format!("{:.2}", rt.ttfb_p50_ms / s))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "| first echo p50 / p99, {} client(s){how} | {:.2} / {:.2} ms | {sign} | {ratio} |",
            rt.concurrency, rt.ttfb_p50_ms, rt.ttfb_p99_ms
        );
    }
    if let Some(i) = &r.idle {
        let _ = writeln!(
            o,
            "| memory per idle connection ({}) | {:.1} KiB | RSS {} → {} KiB | |",
            i.connections, i.kib_per_connection, i.rss_before_kib, i.rss_after_kib
        );
    }
    for n in &r.notes {
        let _ = writeln!(o, "\nnote: {n}");
    }
    o
}
