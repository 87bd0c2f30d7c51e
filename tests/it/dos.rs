//! Pre-authentication denial-of-service bounds, in process with real sockets: junk, slowloris
//! and hellos from peers that do not know the listener's key cost no RSA signature, bounded
//! memory, and are closed at the handshake timeout, while a legitimate connection completes.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use sealpipe::proto::identity::Signer;
use sealpipe::proto::ConnectorHandshake;
use sealpipe::testing::{
    connector_settings, echo_service, listener_settings, round_trip, spawn_tunnel, Address,
    ConnectorMode, ConnectorTunnel, ListenerTunnel, ProxyProtocol, Revoke, Tuning,
};
use std::sync::atomic::Ordering;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_abusive_connections_cost_no_signature_and_do_not_block_a_legit_one() {
    raise_nofile(16384);
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    tokio::spawn(echo_service(target));

    let signer = CountingSigner::new(listener_key());
    let connector_id = Arc::new(connector_key());
    let tuning = Tuning {
        handshake_timeout: Duration::from_secs(3),
        max_connections: 4096,
        max_handshakes: 16,
        ..Tuning::default()
    };
    let sealed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sealed_addr = sealed.local_addr().unwrap();
    let lstate = spawn_tunnel(
        sealed,
        ListenerTunnel {
            name: "dos".into(),
            forward: Some(Address::Ip(target_addr)),
            allow_destinations: Vec::new(),
            proxy_protocol: ProxyProtocol::Off,
            revoke: Revoke::Cut,
            params: listener_params(signer.clone(), &[connector_id.fingerprint()]),
            settings: listener_settings(&tuning),
        },
        &tracker,
        &stop,
    );
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain.local_addr().unwrap();
    spawn_tunnel(
        plain,
        ConnectorTunnel {
            name: "dos".into(),
            connect: Address::Ip(sealed_addr),
            params: connector_params(connector_id.clone(), signer.public().fingerprint()),
            fallback_pins: Vec::new(),
            socket: Default::default(),
            tofu: None,
            mode: ConnectorMode::Forward,
            // One session per client: the handshakes are counted below.
            settings: connector_settings(&Tuning {
                pool_max: 0,
                ..tuning.clone()
            }),
            terms_digest: Default::default(),
        },
        &tracker,
        &stop,
    );

    // A hello from a connector pinned to another key: well formed, wrong mac1.
    let wrong_pin = ConnectorHandshake::new(
        connector_params(connector_id.clone(), connector_id.fingerprint()),
        det_randomness("wrong pin"),
    )
    .take_output();
    let rss_before = rss_kib(std::process::id()) * 1024;
    let mut abusive = Vec::new();
    for i in 0..1000usize {
        let mut s = TcpStream::connect(sealed_addr).await.unwrap();
        match i % 4 {
            0 => {} // silent
            1 => s
                .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00].repeat(20))
                .await
                .unwrap(), // junk
            2 => s.write_all(&wrong_pin[..40]).await.unwrap(), // slowloris: half a hello
            _ => s.write_all(&wrong_pin).await.unwrap(), // no fingerprint
        }
        abusive.push(s);
    }
    // Meanwhile a legitimate connection completes.
    let back = tokio::time::timeout(Duration::from_secs(10), round_trip(plain_addr, b"legit"))
        .await
        .expect("legit connection stalled")
        .unwrap();
    assert_eq!(back, b"legit");
    // ...without waiting for the abusive ones to time out: a recent silent one is still open.
    // (If pre-mac1 connections held handshake slots, the legit one would have queued behind 16
    // slowloris connections until their timeout, and this socket would be closed by now. The
    // oldest ones are closed already: one source keeps at most its 128 newest connections
    // without a valid hello, `tunnel::pre_auth`.)
    let mut probe = [0u8; 1];
    assert!(
        matches!(abusive[996].try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the legitimate connection waited for the handshake timeout"
    );
    let rss_after = rss_kib(std::process::id()) * 1024;
    let growth = rss_after.saturating_sub(rss_before);
    eprintln!(
        "1,000 abusive connections (+ their 1,000 client sockets in this process): RSS {} KiB -> {} KiB, {} bytes per connection",
        rss_before / 1024,
        rss_after / 1024,
        growth / 1000
    );
    assert!(growth < 64 << 20, "memory grew by {growth} bytes");

    // Every abusive connection is closed by the listener, at the latest at the handshake timeout.
    let closes = abusive.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(8), s.read(&mut buf)).await;
        matches!(r, Ok(Ok(0)) | Ok(Err(_)))
    });
    let closed = futures_join_all(closes).await;
    assert!(
        closed.iter().all(|c| *c),
        "{} connections not closed",
        closed.iter().filter(|c| !**c).count()
    );

    // Not one signature for them: only for the legitimate connection.
    assert_eq!(signer.signatures(), 1);
    assert_eq!(lstate.counters.handshakes_ok.load(Ordering::Relaxed), 1);
    assert!(lstate.counters.mac1_rejected.load(Ordering::Relaxed) >= 500);
    stop.cancel();
}

async fn futures_join_all<F: std::future::Future<Output = bool> + Send + 'static>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<bool> {
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap_or(false));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Floods of hellos with a valid mac1 against real daemons (SECURITY.md, "Flooding the
// listener"): one captured hello replayed, or fresh hellos (they need only the listener's
// public key fingerprint), from one source or from 256 (the flood clients bind to 127.0.1.1
// and up before they connect). Meanwhile a connector with a ticket and one
// without (`resumption = false`) still get through, bytes hashed end to end, and the listener's
// signatures stay within its budget.

/// The budget the flooded listener runs with: small, so that the bound means something.
const FLOOD_SIGNATURE_RATE: u64 = 100;
/// Legitimate round trips per connector during a flood.
const LEGIT_ROUNDS: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flood {
    /// One captured hello, sent again and again.
    Replay,
    /// A new hello every time.
    Fresh,
}

#[test]
fn a_replayed_hello_from_one_source_costs_one_signature_and_locks_nobody_out() {
    flood_case(Flood::Replay, 1);
}

#[test]
fn a_replayed_hello_from_256_sources_costs_one_signature_and_locks_nobody_out() {
    flood_case(Flood::Replay, 256);
}

#[test]
fn fresh_hellos_from_one_source_stay_within_the_budget_and_lock_nobody_out() {
    flood_case(Flood::Fresh, 1);
}

#[test]
fn fresh_hellos_from_256_sources_stay_within_the_budget_and_lock_nobody_out() {
    flood_case(Flood::Fresh, 256);
}

/// The clients' runtime of a test against real daemons: two workers.
fn two_workers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The listener's `sealpipe_signatures_total`.
fn signatures(metrics: std::net::SocketAddr) -> u64 {
    let text = support::daemon::scrape(metrics);
    support::daemon::value(
        &text,
        &support::daemon::series("sealpipe_signatures_total", "listener", ""),
    )
    .unwrap_or_else(|| panic!("no sealpipe_signatures_total in\n{text}"))
}

fn resumptions(metrics: std::net::SocketAddr) -> u64 {
    let text = support::daemon::scrape(metrics);
    support::daemon::value(
        &text,
        &support::daemon::series("sealpipe_resumptions_total", "listener", ""),
    )
    .unwrap_or(0)
}

/// Sends `seed`'s 64 KiB through the connector entry `entry` and checks the echo by hash;
/// retried (a new connection) until `deadline`. Returns the attempts it took.
async fn echo_through(
    entry: std::net::SocketAddr,
    seed: u64,
    deadline: std::time::Instant,
) -> usize {
    use sha2::{Digest, Sha256};
    let data = pseudo_random(seed, 64 * 1024);
    let want: [u8; 32] = Sha256::digest(&data).into();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let once = async {
            let mut s = TcpStream::connect(entry).await?;
            let (mut r, mut w) = s.split();
            let send = async {
                w.write_all(&data).await?;
                w.shutdown().await
            };
            let mut back = Vec::new();
            let (sent, got) = tokio::join!(send, r.read_to_end(&mut back));
            sent?;
            got?;
            Ok::<_, std::io::Error>(<[u8; 32]>::from(Sha256::digest(&back)))
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match tokio::time::timeout(left, once).await {
            Ok(Ok(h)) if h == want => return attempts,
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            _ => panic!("no echo through {entry} within the deadline ({attempts} attempts)"),
        }
    }
}

fn flood_case(kind: Flood, sources: u32) {
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::time::Instant;
    use support::daemon::*;

    raise_nofile(16384);
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let extra = format!(
        "signature_rate = {FLOOD_SIGNATURE_RATE}\nhandshake_timeout = \"5s\"\nmax_connections = 4096"
    );
    let listener = site.start(
        "listener.toml",
        &(listener_for(service.addr, &extra) + METRICS),
    );
    let metrics = metrics_addr(&listener);
    let sealed = listener.addr();
    // No warm sessions: every legitimate client must make its own handshake through the flood
    // (resumed, or full without a ticket).
    let with_ticket = site.start("a.toml", &connector_for(sealed, NO_POOL));
    let without = site.start(
        "b.toml",
        &connector_for(sealed, &format!("resumption = false\n{NO_POOL}")),
    );

    let rt = two_workers();
    rt.block_on(async {
        let generous = || Instant::now() + Duration::from_secs(60);
        // The connector with a ticket gets it before the flood.
        echo_through(with_ticket.addr(), 1, generous()).await;
        let before = signatures(metrics);
        let resumed_before = resumptions(metrics);

        let connector = Arc::new(connector_key());
        let params = connector_params(connector.clone(), listener_fp());
        let captured = Arc::new(ConnectorHandshake::new(params.clone(), det_randomness("captured")).take_output());
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let answered = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut flooders = Vec::new();
        for worker in 0..64u64 {
            let (stop, sent, answered) = (stop.clone(), sent.clone(), answered.clone());
            let (params, captured) = (params.clone(), captured.clone());
            flooders.push(tokio::spawn(async move {
                let mut i = worker;
                while !stop.load(Ordering::Relaxed) {
                    i += 64;
                    let hello = match kind {
                        Flood::Replay => captured.as_ref().clone(),
                        Flood::Fresh => ConnectorHandshake::new(
                            params.clone(),
                            det_randomness(&format!("flood {i}")),
                        )
                        .take_output(),
                    };
                    // 127.0.1.1 onwards (the 256th is 127.0.2.0).
                    let n = (i % u64::from(sources)) as u32;
                    let from = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(127, 0, 1, 1)) + n);
                    let Ok(socket) = tokio::net::TcpSocket::new_v4() else { continue };
                    if socket.bind((from, 0).into()).is_err() {
                        continue;
                    }
                    let Ok(mut s) = socket.connect(sealed).await else { continue };
                    if s.write_all(&hello).await.is_err() {
                        continue;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    // Hold the connection a little (an answer, if any, is read); then go.
                    let mut buf = [0u8; 4096];
                    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                        if n > 0 {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        // Let the flood build up, then the legitimate connections, one after the other.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut attempts = Vec::new();
        for round in 0..LEGIT_ROUNDS {
            attempts.push(echo_through(with_ticket.addr(), 10 + round as u64, generous()).await);
            attempts.push(echo_through(without.addr(), 20 + round as u64, generous()).await);
        }
        let signed = signatures(metrics) - before;
        let elapsed = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        for f in flooders {
            let _ = f.await;
        }
        let resumed = resumptions(metrics) - resumed_before;
        let legit_attempts: usize = attempts.iter().sum();
        eprintln!(
            "{kind:?} flood from {sources} source(s): {} hellos sent in {elapsed:.1?}, {} answered; {signed} signatures; legitimate attempts {attempts:?}; {resumed} resumptions",
            sent.load(Ordering::Relaxed),
            answered.load(Ordering::Relaxed)
        );
        assert!(sent.load(Ordering::Relaxed) > 100, "the flood did not run");
        assert!(resumed >= LEGIT_ROUNDS as u64, "the connector with a ticket resumed");
        // Every legitimate attempt may have needed a signature (the one without a ticket's
        // always do).
        let legit = legit_attempts as u64;
        let allowed = match kind {
            // The captured hello is answered once; its replays never.
            Flood::Replay => 1 + legit,
            Flood::Fresh => {
                FLOOD_SIGNATURE_RATE * (elapsed.as_millis() as u64 + 999) / 1000
                    + FLOOD_SIGNATURE_RATE
                    + legit
            }
        };
        assert!(
            signed <= allowed,
            "{signed} signatures in {elapsed:?}, more than the {allowed} the budget allows"
        );
    });
}

/// A connector that goes while its hello waits in the signing queue costs no signature: its
/// hello leaves the queue with it. A hello that stays is still answered once the budget allows.
#[test]
fn a_hello_whose_connector_goes_while_it_waits_costs_no_signature() {
    use support::daemon::*;

    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    // One signature per second: the first hello is answered at once, the next ones wait.
    let listener = site.start(
        "listener.toml",
        &(listener_for(
            service.addr,
            "signature_rate = 1\nhandshake_timeout = \"20s\"",
        ) + METRICS),
    );
    let metrics = metrics_addr(&listener);
    let sealed = listener.addr();
    let params = connector_params(Arc::new(connector_key()), listener_fp());
    let hello =
        |label: &str| ConnectorHandshake::new(params.clone(), det_randomness(label)).take_output();
    let rt = two_workers();
    rt.block_on(async {
        let before = signatures(metrics);
        let send = |bytes: Vec<u8>| async move {
            let mut s = TcpStream::connect(sealed).await.unwrap();
            s.write_all(&bytes).await.unwrap();
            s
        };
        let hellos: Vec<_> = (0..20).map(|i| hello(&format!("gone {i}"))).collect();
        // Takes the budget's one signature (its answer read, so that it is this one that
        // took it), and stays.
        let mut first = send(hello("first")).await;
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), first.read(&mut buf))
            .await
            .expect("the first hello is answered")
            .unwrap();
        assert!(n > 0, "the first hello is answered");
        let mut gone = Vec::new();
        for h in hellos {
            gone.push(send(h).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(gone);
        // The budget refills three times meanwhile.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let signed = signatures(metrics) - before;
        assert_eq!(
            signed, 1,
            "hellos whose connectors had gone were signed ({signed} signatures, 1 expected)"
        );
        let mut stays = send(hello("stays")).await;
        let n = tokio::time::timeout(Duration::from_secs(10), stays.read(&mut buf))
            .await
            .expect("a waiting hello is answered once the budget allows")
            .unwrap();
        assert!(n > 0, "the listener closed a hello it should answer");
        assert_eq!(signatures(metrics) - before, 2);
    });
}
