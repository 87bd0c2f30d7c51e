//! Pre-authentication denial-of-service bounds, in process with real sockets: junk, slowloris
//! and hellos from peers that do not know the listener's key cost no RSA signature, bounded
//! memory, and are closed at the handshake timeout, while a legitimate connection completes.

mod support;

use std::sync::Arc;
use std::time::Duration;

use sealpipe::proto::handshake::Handshake;
use sealpipe::proto::identity::Signer;
use sealpipe::testing::{
    echo_service, round_trip, spawn_tunnel, Address, ConnectorMode, ConnectorTunnel,
    ListenerTunnel, ProxyProtocol, Revoke, Tuning,
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
            tuning: tuning.clone(),
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
            tuning: Tuning {
                pool_max: 0,
                ..tuning.clone()
            },
        },
        &tracker,
        &stop,
    );

    // A hello from a connector pinned to another key: well formed, wrong mac1.
    let wrong_pin = Handshake::connector(
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
    // ...without waiting for the abusive ones to time out: a silent one is still open. (If
    // pre-mac1 connections held handshake slots, the legit one would have queued behind 16
    // slowloris connections until their timeout, and this socket would be closed by now.)
    let mut probe = [0u8; 1];
    assert!(
        matches!(abusive[0].try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
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
