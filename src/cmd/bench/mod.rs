//! `sealpipe bench`: throughput, CPU per GiB, connection rate, time to first echo and memory
//! per idle connection, each next to a reference measured in the same run.
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
//! Raw loopback TCP is always measured as the reference, with the same client code as through
//! the tunnel (the throughput load; connect, one byte out, its echo back for the connection
//! rate and first echo) against the same bench target in process, or a bench target of this
//! process otherwise; so is the single-core ChaCha20-Poly1305 seal speed of this build at the
//! record size. A measurement through the tunnel too short or too small to mean much is
//! warned about on stderr and in the report's notes.
//!
//! This file holds the options and the orchestration (what runs, in which order, through
//! which entry point); `loads` the bench target, the loads and the references; `report` the
//! report (the `--json` output), its table and the progress bars.

mod flood;
mod loads;
mod report;
pub(crate) mod wan;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::loads::{
    aead_speed, exchanges, open_idle, raise_nofile, rate, rsa_sign_ms, rss_kib, serve_target,
    throughput,
};
use self::report::{progress, table, Idle, Rate, Report, Small};
use crate::config::Tuning;
use crate::daemon::pair::{identities, loopback, spawn_pair_on, spawn_shared_tunnel};
use crate::proto::identity::PrivateIdentity;

/// RSA size of the in-process identities: the size `bench/compare.sh` uses for every tunnel it
/// compares (sealpipe's keys and stunnel's certificate alike).
const BENCH_BITS: usize = 2048;

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
    /// A listener under floods of hellos (only when asked for: `--only flood`).
    Flood,
    /// Sequential 1-byte and 100-byte request/response exchanges over one established
    /// connection: exchanges per second (the per-record cost of the pump).
    Small,
}

/// Sizes of the `small` phase's requests (each answered by as many bytes).
const SMALL_SIZES: [usize; 2] = [1, 100];

/// `sealpipe bench --help` and the DESCRIPTION of `sealpipe-bench(1)`: enough to use it from an
/// installed binary, without the source tree's bench/README.md.
pub(crate) const ABOUT: &str = "\
Benchmark: throughput, CPU per GiB, connection rate, first-echo time and memory per idle \
connection, each next to its reference measured in the same run (raw loopback TCP, the \
cipher's own speed, one RSA signature).

By default everything runs in this one process on loopback: a bench target (an echo service), \
a listener and a connector with in-memory RSA-2048 keys and the default tuning. The phases, in \
order (--only picks some): aead (ChaCha20-Poly1305 seal speed at the record size, one RSA \
signature); idle (--idle connections held open: memory per connection, an upper bound for both \
tunnel ends together); rate (--connections new connections, one echo each, sequential then \
with --concurrency clients; with resumption, then with full RSA handshakes); small (--exchanges \
1-byte and 100-byte request/response exchanges over one connection); throughput (--bytes over \
--streams connections to a sink that confirms the byte count). flood (a listener under floods \
of hellos) runs only when asked for. CPU figures include the load client and both tunnel ends: \
the tunnel's own cost is the difference with the raw TCP run, which the table prints. A run too \
short or too small to mean much is warned about.

Other modes: --rtt 20ms puts a user-space relay of that round-trip time (latency only: no loss, \
no bandwidth cap) between the connector and the listener and in front of the raw TCP \
references. --config FILE --tunnel NAME runs that file's [[connector]] here, on an ephemeral \
loopback port; its remote listener must forward to a bench target. --target HOST:PORT only \
drives the loads at any tunnel entry point whose far end is a bench target. --serve ADDR runs \
only a bench target (it echoes; a connection whose first byte is `s` is a sink that answers \
with the byte count, 8 bytes little endian). --relay ADDR --relay-to HOST:PORT --rtt D runs \
only the relay.

The table goes to stdout (--json: one JSON object), progress to stderr. Numbers depend on the \
machine and what else runs on it: compare ratios measured in the same run.";

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
    /// Request/response exchanges of each `small` load (one connection, one after another).
    #[arg(long, default_value_t = 10_000)]
    pub exchanges: usize,
    /// In process: put a WAN relay of this round-trip time between the connector and the
    /// listener, and in front of the raw TCP references (e.g. 20ms; latency only);
    /// without --only, runs only `rate` and `small`. With --relay: the relay's round-trip time.
    #[arg(long, value_parser = parse_duration, conflicts_with_all = ["target", "config"])]
    pub rtt: Option<Duration>,
    /// In process: no warm sessions and no session reuse, so that every client connection
    /// makes its own (resumed) handshake: the handshake rate rather than the tunnel's.
    #[arg(long, conflicts_with_all = ["target", "config"])]
    pub no_pool: bool,
    /// Run only a WAN relay (latency only) on ADDR to --relay-to with round-trip time --rtt,
    /// until killed. Port 0 picks a free port; the bound address is printed on stderr.
    #[arg(long, requires_all = ["relay_to", "rtt"], conflicts_with = "serve")]
    pub relay: Option<SocketAddr>,
    /// The address the --relay forwards to.
    #[arg(long, requires = "relay")]
    pub relay_to: Option<String>,
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

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration (e.g. 20ms): {e}"))
}

fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size (e.g. 64KiB, 1GiB): {e}"))
}

/// The in-process listener + connector pair in front of a bench target.
struct Pair {
    entry: SocketAddr,
    signer: Arc<PrivateIdentity>,
    stop: CancellationToken,
}

async fn in_process_pair(
    target: SocketAddr,
    tuning: Tuning,
    rtt: Option<Duration>,
) -> anyhow::Result<Pair> {
    let (l_id, c_id) = identities(BENCH_BITS).await?;
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let (sealed, sealed_addr) = loopback().await?;
    let connect = match rtt {
        Some(rtt) => wan::spawn_relay(sealed_addr, rtt, &stop).await?,
        None => sealed_addr,
    };
    let plain_addr = spawn_pair_on(
        "bench",
        sealed,
        connect,
        target,
        l_id.clone(),
        c_id,
        tuning,
        &tracker,
        &stop,
    )
    .await?;
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
    spawn_shared_tunnel(plain, tunnel.clone(), &tracker, &stop);
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
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(addr) = args.serve {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        eprintln!("bench target listening on {}", l.local_addr()?);
        serve_target(l).await;
        return Ok(());
    }
    if args.only.contains(&Phase::Flood) {
        flood::run(args.json).await?;
        if args.only.iter().all(|p| *p == Phase::Flood) {
            return Ok(());
        }
    }
    if let (Some(addr), Some(to), Some(rtt)) = (args.relay, &args.relay_to, args.rtt) {
        let to = resolve(to).await?;
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        eprintln!("bench relay listening on {}", l.local_addr()?);
        wan::relay(l, to, rtt, CancellationToken::new()).await;
        return Ok(());
    }
    let report = measure(&args).await?;
    for w in report.warnings() {
        eprintln!("sealpipe bench: {w}");
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// Runs the measurements `args` ask for and returns them.
pub(crate) async fn measure(args: &BenchArgs) -> anyhow::Result<Report> {
    // Across a WAN, the loads that a round-trip time changes (throughput and memory are the
    // loopback figures' business).
    let want = |p: Phase| {
        if args.only.is_empty() {
            args.rtt.is_none() || matches!(p, Phase::Rate | Phase::Small)
        } else {
            args.only.contains(&p)
        }
    };
    let show = !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let nofile = raise_nofile();

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
    // The connection-rate loads measure what a full handshake costs, not the flood limits
    // (SECURITY.md, "Flooding the listener"; `--only flood` measures those).
    tuning.signature_rate = 0;
    tuning.signature_cpu = 0;
    tuning.source_handshake_rate = 0;
    if args.no_pool {
        tuning.pool_min = 0;
        tuning.pool_max = 0;
        tuning.session_reuse = false;
    }
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
        let pair = in_process_pair(target_addr, tuning.clone(), args.rtt).await?;
        stops.push(pair.stop.clone());
        signer = Some(pair.signer);
        report.mode = "in-process".into();
        report.entry = match args.rtt {
            None => "connector → listener → bench target, loopback, this process".into(),
            Some(rtt) => format!(
                "connector → WAN relay (RTT {rtt:?}) → listener → bench target, loopback, \
                 this process"
            ),
        };
        report.rtt_ms = args.rtt.map(|d| d.as_secs_f64() * 1e3);
        report.record_size = Some(tuning.record_size);
        report.notes.push(
            "CPU and memory are of the whole process: load client, connector, listener and target"
                .into(),
        );
        pair.entry
    };
    let in_process = report.mode == "in-process";
    // The raw TCP references: the tunnel's own bench target in process, else one here.
    let ref_addr = match in_process_target {
        Some(t) => match args.rtt {
            Some(rtt) => {
                let relay_stop = CancellationToken::new();
                let addr = wan::spawn_relay(t, rtt, &relay_stop).await?;
                stops.push(relay_stop);
                report.notes.push(format!(
                    "WAN: a user-space relay of round-trip time {rtt:?} between the connector \
                     and the listener, and between the raw TCP client and the bench target \
                     (no loss, no bandwidth cap)"
                ));
                addr
            }
            None => t,
        },
        None => {
            let (reference, addr) = loopback().await?;
            tokio::spawn(serve_target(reference));
            report.notes.push(
                "raw TCP references: a bench target in this process on loopback, not the one \
                 behind the tunnel"
                    .into(),
            );
            addr
        }
    };

    if want(Phase::Aead) {
        let size = if in_process {
            tuning.record_size
        } else {
            args.record_size.map_or(tuning.record_size, |r| r as usize)
        };
        report.aead = Some(tokio::task::spawn_blocking(move || aead_speed(size)).await?);
        if let Some(s) = &signer {
            let s = s.clone();
            report.rsa_sign_ms = Some(tokio::task::spawn_blocking(move || rsa_sign_ms(&s)).await?);
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
        // The reference: the same client (connect, one byte, its echo) over raw TCP.
        report.raw_tcp_rate_sequential =
            Some(rate_pass(ref_addr, args, 1, show, ", raw TCP").await);
        report.raw_tcp_rate_concurrent =
            Some(rate_pass(ref_addr, args, args.concurrency, show, ", raw TCP").await);
        report.rate_sequential = Some(rate_pass(entry, args, 1, show, "").await);
        report.rate_concurrent = Some(rate_pass(entry, args, args.concurrency, show, "").await);
        if let Some(target_addr) = in_process_target {
            report.resumption = Some(tuning.resumption);
            // The same loads through a second pair that never resumes: full RSA handshakes.
            // (No warm or reused sessions either: each client connection is one handshake.)
            let full = Tuning {
                resumption: false,
                pool_min: 0,
                pool_max: 0,
                session_reuse: false,
                ..tuning.clone()
            };
            let pair = in_process_pair(target_addr, full, args.rtt).await?;
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

    if want(Phase::Small) && args.exchanges > 0 {
        for size in SMALL_SIZES {
            let pb = progress(
                show,
                args.exchanges as u64,
                &format!("{size}-byte exchanges, raw TCP"),
                false,
            );
            let raw = exchanges(ref_addr, args.exchanges, size, pb).await?;
            let pb = progress(
                show,
                args.exchanges as u64,
                &format!("{size}-byte exchanges"),
                false,
            );
            let tun = exchanges(entry, args.exchanges, size, pb).await?;
            report.small.push(Small {
                size,
                exchanges: args.exchanges,
                seconds: tun,
                per_second: args.exchanges as f64 / tun,
                raw_tcp_seconds: raw,
                raw_tcp_per_second: args.exchanges as f64 / raw,
                ratio_to_raw_tcp: raw / tun,
            });
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
    if let Some(rtt) = args.rtt {
        // Closes still crossing the relay reach the tunnel ends before the relay stops.
        tokio::time::sleep(rtt * 2).await;
    }
    for s in stops {
        s.cancel();
    }
    report.warn_short_runs();
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
