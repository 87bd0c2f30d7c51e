//! `sealpipe bench --only flood`: what a flood of hellos with a valid mac1 does to a listener
//! with the default limits (SECURITY.md, "Flooding the listener").
//!
//! In this process: an echo target, a listener with default tuning, a connector that holds a
//! ticket and one without (`resumption = false`). Each flood (one captured hello replayed, or
//! fresh hellos; from 1 source or from 256, the flood clients binding to 127.0.1.1 and up) runs
//! at [`FLOOD_RATE`] connections per second for [`FLOOD_SECONDS`], each flood connection held
//! open up to [`HOLD`]. Meanwhile: connect-to-first-echo of each connector, sequentially
//! (p50/p99), the throughput of a bulk echo stream established before the flood (as a ratio of
//! the same stream without a flood), and the listener's signatures per second. A first round
//! without a flood is the reference.
//!
//! The flood clients run in this process too: the listener is not flooded any harder than it
//! would be from elsewhere, but it shares the cores. Two things keep their cost apart from the
//! listener's. Fresh hellos are made before the rounds that send them (a flood from elsewhere
//! costs this machine no key generation), and each flood is aimed at a sink (a plain TCP server
//! that reads what comes and closes at once) as well as at the listener, in the order sink,
//! listener, listener, sink, so that a drift of the machine's speed over the four rounds falls
//! on both sides alike. What the listener itself costs the established stream is its
//! throughput under the two listener rounds over its throughput under the two sink rounds.
//!
//! Last, two **idle** floods (from 1 source and from 256): sockets that connect and send
//! nothing, each held up to [`IDLE_HOLD`] (the default `handshake_timeout`), so that at
//! [`FLOOD_RATE`] they would hold every one of the listener's `max_connections` without the
//! pre-authentication bounds of `tunnel::pre_auth` (PROTOCOL.md §5.3). Their figures are the
//! connectors' time to first echo; they run at the listener only (a sink would hold the sockets).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Tuning;
use crate::daemon::pair::{
    connector_tunnel, echo_service, identities, listener_tunnel, loopback, os_randomness,
    spawn_tunnel, TunnelState,
};
use crate::proto::handshake::{ConnectorParams, Handshake};
use crate::proto::identity::{PrivateIdentity, Signer, TrustList};

/// New flood connections per second.
pub(crate) const FLOOD_RATE: u64 = 2000;
/// How long each flood (and the reference round) runs.
pub(crate) const FLOOD_SECONDS: u64 = 4;
/// Longest a flood connection stays open (waiting for an answer, or for the listener to close).
const HOLD: Duration = Duration::from_secs(1);
/// Longest an idle flood connection stays open: the default `handshake_timeout`.
const IDLE_HOLD: Duration = Duration::from_secs(10);

/// One round's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct FloodRound {
    /// `none`, `replay`, `fresh` or `idle`.
    pub flood: &'static str,
    /// What the flood was aimed at: `listener`, or `sink` (the reference for the flood's own
    /// cost).
    pub at: &'static str,
    /// Flood sources (0 for none).
    pub sources: u32,
    /// Flood connections opened, per second.
    pub flood_per_second: f64,
    /// Connect-to-first-echo of the connector with a ticket, p50 and p99, ms.
    pub resumed_p50_ms: f64,
    pub resumed_p99_ms: f64,
    /// The same for the connector without one (`resumption = false`).
    pub full_p50_ms: f64,
    pub full_p99_ms: f64,
    /// Connections of either connector that failed (no echo).
    pub failed: u64,
    /// Bulk echo stream, MiB/s, and as a ratio of the reference round.
    pub bulk_mib_s: f64,
    pub bulk_ratio: f64,
    /// Listener rounds: the bulk stream's MiB/s as a ratio of the mean of the same flood's two
    /// sink rounds.
    pub bulk_vs_sink: Option<f64>,
    /// Listener rounds: the bulk stream's MiB/s over both listener rounds of this flood as a
    /// ratio of the same over both its sink rounds (what the listener itself costs it).
    pub block_vs_sink: Option<f64>,
    /// Listener signatures per second.
    pub signatures_per_second: f64,
}

/// Runs every round and prints the table (or, with `json`, one JSON array).
pub(crate) async fn run(json: bool) -> anyhow::Result<()> {
    let rounds = measure().await?;
    if json {
        println!("{}", serde_json::to_string(&rounds)?);
        return Ok(());
    }
    println!(
        "flood ({FLOOD_RATE} conn/s, {FLOOD_SECONDS} s each; default listener tuning: signature_rate {}, signature_cpu {} %, source_handshake_rate {})",
        Tuning::default().signature_rate,
        Tuning::default().signature_cpu,
        Tuning::default().source_handshake_rate
    );
    println!(
        "{:<8} {:<8} {:>7} {:>9} {:>22} {:>22} {:>6} {:>15} {:>9} {:>8}",
        "flood",
        "at",
        "sources",
        "conn/s",
        "ticket p50/p99 ms",
        "no ticket p50/p99 ms",
        "failed",
        "bulk MiB/s",
        "vs sink",
        "sigs/s"
    );
    for r in &rounds {
        println!(
            "{:<8} {:<8} {:>7} {:>9.0} {:>22} {:>22} {:>6} {:>15} {:>9} {:>8.0}",
            r.flood,
            r.at,
            r.sources,
            r.flood_per_second,
            format!("{:.2} / {:.2}", r.resumed_p50_ms, r.resumed_p99_ms),
            format!("{:.2} / {:.2}", r.full_p50_ms, r.full_p99_ms),
            r.failed,
            format!("{:.0} ({:.2}×)", r.bulk_mib_s, r.bulk_ratio),
            r.bulk_vs_sink
                .map_or_else(|| "–".to_owned(), |v| format!("{v:.2}×")),
            r.signatures_per_second
        );
    }
    println!("bulk throughput under the listener's floods over the same under the sink's (two rounds each):");
    // The two listener rounds of a flood are next to each other and carry the same figure.
    for r in rounds
        .iter()
        .filter(|r| r.block_vs_sink.is_some())
        .step_by(2)
    {
        println!(
            "  {:<8} from {:>3} sources: {:.2}×",
            r.flood,
            r.sources,
            r.block_vs_sink.unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

struct Setup {
    listener: Arc<TunnelState>,
    sealed: SocketAddr,
    sink: SocketAddr,
    with_ticket: SocketAddr,
    without: SocketAddr,
    flood_params: ConnectorParams,
}

async fn setup(tracker: &TaskTracker, stop: &CancellationToken) -> anyhow::Result<Setup> {
    let (l_id, c_id) = identities(super::BENCH_BITS).await?;
    let (target, target_addr) = loopback().await?;
    tokio::spawn(echo_service(target));
    let tuning = Tuning {
        max_connections: 16 * 1024,
        ..Tuning::default()
    };
    let mut trust = TrustList::new();
    trust.insert(c_id.fingerprint(), Some("bench connector".into()));
    let (sealed_l, sealed) = loopback().await?;
    let listener = spawn_tunnel(
        sealed_l,
        listener_tunnel("flood", "flood", target_addr, l_id.clone(), trust, &tuning),
        tracker,
        stop,
    );
    let connector = |resumption: bool| {
        let tuning = Tuning {
            resumption,
            ..tuning.clone()
        };
        connector_tunnel("flood", sealed, connector_params(&c_id, &l_id), &tuning)
    };
    let (a, with_ticket) = loopback().await?;
    spawn_tunnel(a, connector(true), tracker, stop);
    let (b, without) = loopback().await?;
    spawn_tunnel(b, connector(false), tracker, stop);
    let (sink_l, sink) = loopback().await?;
    tokio::spawn(sink_service(sink_l));
    Ok(Setup {
        listener,
        sealed,
        sink,
        with_ticket,
        without,
        flood_params: connector_params(&c_id, &l_id),
    })
}

fn connector_params(c_id: &Arc<PrivateIdentity>, l_id: &Arc<PrivateIdentity>) -> ConnectorParams {
    ConnectorParams {
        identity: c_id.clone() as Arc<dyn Signer>,
        listener: l_id.fingerprint().into(),
        psk: None,
        service: "flood".into(),
    }
}

/// One flood: what it sends, from how many source addresses.
#[derive(Clone)]
struct Flood {
    hellos: Hellos,
    sources: u32,
    /// Send nothing: hold an idle socket up to [`IDLE_HOLD`].
    idle: bool,
}

/// What a round's flood sends: each hello once (fresh ones, made before the round; the flood
/// stops when they run out, which the round's `conn/s` would show), or the first one again and
/// again (a captured hello replayed).
#[derive(Clone)]
struct Hellos {
    all: Arc<Vec<Vec<u8>>>,
    replay: bool,
}

/// Fresh hellos for one round: enough for [`FLOOD_SECONDS`] plus one second at [`FLOOD_RATE`],
/// made on every core before the round starts.
async fn fresh_hellos(params: &ConnectorParams) -> anyhow::Result<Hellos> {
    let count = (FLOOD_RATE * (FLOOD_SECONDS + 1)) as usize;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut parts = Vec::new();
    for t in 0..threads {
        let params = params.clone();
        let n = count / threads + usize::from(t < count % threads);
        parts.push(tokio::task::spawn_blocking(move || {
            (0..n)
                .map(|_| Handshake::connector(params.clone(), os_randomness()).take_output())
                .collect::<Vec<_>>()
        }));
    }
    let mut hellos = Vec::with_capacity(count);
    for part in parts {
        hellos.extend(part.await?);
    }
    Ok(Hellos {
        all: Arc::new(hellos),
        replay: false,
    })
}

async fn measure() -> anyhow::Result<Vec<FloodRound>> {
    super::loads::raise_nofile();
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let s = setup(&tracker, &stop).await?;
    // The connector with a ticket gets one; the bulk stream is established.
    first_echo(s.with_ticket).await?;
    let bulk = Bulk::start(s.with_ticket).await?;
    let captured = Hellos {
        all: Arc::new(vec![Handshake::connector(
            s.flood_params.clone(),
            os_randomness(),
        )
        .take_output()]),
        replay: true,
    };
    let mut rounds = vec![round(&s, &bulk, None, false).await];
    let reference = rounds[0].bulk_mib_s;
    let floods = [(false, 1), (false, 256), (true, 1), (true, 256)];
    for (fresh, sources) in floods {
        // Sink, listener, listener, sink. A fresh hello reaches the listener once: each
        // listener round has hellos of its own, which its neighbouring sink round sends too.
        let (first, second) = if fresh {
            (
                fresh_hellos(&s.flood_params).await?,
                fresh_hellos(&s.flood_params).await?,
            )
        } else {
            (captured.clone(), captured.clone())
        };
        let mut block = Vec::new();
        for (hellos, at_sink) in [
            (&first, true),
            (&first, false),
            (&second, false),
            (&second, true),
        ] {
            let flood = Flood {
                hellos: hellos.clone(),
                sources,
                idle: false,
            };
            let r = round(&s, &bulk, Some(flood), at_sink).await;
            eprintln!(
                "sealpipe bench: flood {} from {sources} at {}: done",
                r.flood, r.at
            );
            block.push(r);
            // Let the held flood connections go before the next round.
            tokio::time::sleep(HOLD + Duration::from_millis(500)).await;
        }
        let mib_s = |sink: bool| -> f64 {
            block
                .iter()
                .filter(|r| (r.at == "sink") == sink)
                .map(|r| r.bulk_mib_s)
                .sum()
        };
        let (at_sink, at_listener) = (mib_s(true), mib_s(false));
        for r in &mut block {
            if r.at == "listener" && at_sink > 0.0 {
                r.bulk_vs_sink = Some(2.0 * r.bulk_mib_s / at_sink);
                r.block_vs_sink = Some(at_listener / at_sink);
            }
        }
        rounds.extend(block);
    }
    for sources in [1, 256] {
        let flood = Flood {
            hellos: captured.clone(),
            sources,
            idle: true,
        };
        let r = round(&s, &bulk, Some(flood), false).await;
        eprintln!("sealpipe bench: flood idle from {sources} at listener: done");
        rounds.push(r);
        tokio::time::sleep(IDLE_HOLD + Duration::from_millis(500)).await;
    }
    for r in &mut rounds {
        r.bulk_ratio = if reference > 0.0 {
            r.bulk_mib_s / reference
        } else {
            0.0
        };
    }
    stop.cancel();
    Ok(rounds)
}

/// One round: no flood (the reference), or `flood` sending `hellos`, aimed at the listener or
/// the sink.
async fn round(s: &Setup, bulk: &Bulk, flood: Option<Flood>, at_sink: bool) -> FloodRound {
    let period = Duration::from_secs(FLOOD_SECONDS);
    let done = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let (name, sources) = match &flood {
        None => ("none", 0),
        Some(f) if f.idle => ("idle", f.sources),
        Some(f) if f.hellos.replay => ("replay", f.sources),
        Some(f) => ("fresh", f.sources),
    };
    let flooder = flood.map(|f| {
        let (done, opened) = (done.clone(), opened.clone());
        let aim = if at_sink { s.sink } else { s.sealed };
        tokio::spawn(run_flood(aim, f, done, opened))
    });
    let sigs0 = s.listener.counters.signatures.load(Ordering::Relaxed);
    let bytes0 = bulk.received.load(Ordering::Relaxed);
    let started = Instant::now();
    let until = started + period;
    let (ticket, full) = tokio::join!(latencies(s.with_ticket, until), latencies(s.without, until));
    let elapsed = started.elapsed().as_secs_f64();
    let bytes = bulk.received.load(Ordering::Relaxed) - bytes0;
    let sigs = s.listener.counters.signatures.load(Ordering::Relaxed) - sigs0;
    done.store(true, Ordering::Relaxed);
    if let Some(f) = flooder {
        let _ = f.await;
    }
    let (ticket, t_failed) = ticket;
    let (full, f_failed) = full;
    FloodRound {
        flood: name,
        at: if at_sink { "sink" } else { "listener" },
        sources,
        flood_per_second: opened.load(Ordering::Relaxed) as f64 / elapsed,
        resumed_p50_ms: percentile(&ticket, 0.50),
        resumed_p99_ms: percentile(&ticket, 0.99),
        full_p50_ms: percentile(&full, 0.50),
        full_p99_ms: percentile(&full, 0.99),
        failed: t_failed + f_failed,
        bulk_mib_s: bytes as f64 / elapsed / (1024.0 * 1024.0),
        bulk_ratio: 1.0,
        bulk_vs_sink: None,
        block_vs_sink: None,
        signatures_per_second: sigs as f64 / elapsed,
    }
}

fn percentile(sorted_ms: &[f64], q: f64) -> f64 {
    if sorted_ms.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_ms.len() as f64 - 1.0) * q).round() as usize;
    sorted_ms[i.min(sorted_ms.len() - 1)]
}

/// Sequential connect-to-first-echo through `entry` until `until`: sorted times in ms, and
/// how many failed.
async fn latencies(entry: SocketAddr, until: Instant) -> (Vec<f64>, u64) {
    let mut times = Vec::new();
    let mut failed = 0;
    while Instant::now() < until {
        let t = Instant::now();
        match tokio::time::timeout(Duration::from_secs(15), first_echo(entry)).await {
            Ok(Ok(())) => times.push(t.elapsed().as_secs_f64() * 1000.0),
            _ => failed += 1,
        }
        // A modest pace: this measures latency, not rate.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    times.sort_by(f64::total_cmp);
    (times, failed)
}

/// Connect, one byte, its echo back.
async fn first_echo(entry: SocketAddr) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(entry).await?;
    s.set_nodelay(true)?;
    s.write_all(b"e").await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    anyhow::ensure!(&b == b"e", "wrong echo");
    Ok(())
}

/// The flood: `FLOOD_RATE` connections per second from `flood.sources` addresses, each sending
/// one hello of `flood.hellos` and held up to [`HOLD`].
async fn run_flood(
    sealed: SocketAddr,
    flood: Flood,
    done: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
) {
    let Flood {
        hellos,
        sources,
        idle,
    } = flood;
    let tick = Duration::from_millis(10);
    let per_tick = FLOOD_RATE / 100;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Flood connections opened so far.
    let mut n: u32 = 0;
    while !done.load(Ordering::Relaxed) {
        interval.tick().await;
        for _ in 0..per_tick {
            let from = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 1, 1)) + n % sources);
            let i = if hellos.replay { 0 } else { n as usize };
            if i >= hellos.all.len() {
                return;
            }
            n = n.wrapping_add(1);
            let all = hellos.all.clone();
            let opened = opened.clone();
            tokio::spawn(async move {
                let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                    return;
                };
                if socket.bind((from, 0).into()).is_err() {
                    return;
                }
                let Ok(mut s) = socket.connect(sealed).await else {
                    return;
                };
                opened.fetch_add(1, Ordering::Relaxed);
                if !idle && s.write_all(&all[i]).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                let hold = if idle { IDLE_HOLD } else { HOLD };
                let _ = tokio::time::timeout(hold, async {
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
            });
        }
    }
}

/// The flood's reference target: reads what each connection sends (a hello) and closes it, as
/// a listener closes a hello it does not answer, at the least cost a server can have.
async fn sink_service(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            // Out of descriptors, say: let the held connections go.
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
        });
    }
}

/// A bulk echo stream through the tunnel: a writer sending as fast as it can and a reader
/// counting what comes back.
struct Bulk {
    received: Arc<AtomicU64>,
}

impl Bulk {
    async fn start(entry: SocketAddr) -> anyhow::Result<Bulk> {
        let s = TcpStream::connect(entry).await?;
        let (mut r, mut w) = s.into_split();
        let received = Arc::new(AtomicU64::new(0));
        tokio::spawn(async move {
            let chunk = vec![0x5a; 64 * 1024];
            while w.write_all(&chunk).await.is_ok() {}
        });
        let counted = received.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                counted.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        Ok(Bulk { received })
    }
}
