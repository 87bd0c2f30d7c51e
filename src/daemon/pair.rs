//! A listener and a connector in one process on loopback, with identities made in memory:
//! what `sealpipe demo` and `sealpipe bench` both run, and what the integration tests drive.
//! The command line reaches the runtime's tunnels through here (and the rest of the daemon),
//! never directly: what `bench`'s flood needs of the runtime besides (the randomness of a
//! hello, a tunnel's shared state) is re-exported here.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::addr::Address;
use crate::config::Tuning;
use crate::proto::handshake::{ConnectorParams, ListenerParams};
use crate::proto::identity::{PrivateIdentity, Signer, TrustList};
pub(crate) use crate::tunnel::accept::os_randomness;
use crate::tunnel::accept::spawn;
use crate::tunnel::connector::ConnectorTunnel;
use crate::tunnel::listener::ListenerTunnel;
use crate::tunnel::net::Bound;
use crate::tunnel::settings::{ConnectorMode, ProxyProtocol, Revoke};
pub(crate) use crate::tunnel::state::TunnelState;
use crate::tunnel::Tunnel;

/// Two RSA identities of `bits` made in memory, in parallel off the async workers: the
/// listener's and the connector's.
pub(crate) async fn identities(
    bits: usize,
) -> anyhow::Result<(Arc<PrivateIdentity>, Arc<PrivateIdentity>)> {
    let (l_id, c_id) = tokio::try_join!(
        tokio::task::spawn_blocking(move || PrivateIdentity::generate(bits)),
        tokio::task::spawn_blocking(move || PrivateIdentity::generate(bits)),
    )?;
    Ok((Arc::new(l_id?.0), Arc::new(c_id?.0)))
}

/// A plaintext echo service: every connection gets its bytes back, and EOF for EOF.
pub async fn echo_service(listener: TcpListener) {
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                let _ = w.shutdown().await;
            }
        });
    }
}

/// Starts `tunnel` on `listener` with its own accept loop.
pub fn spawn_tunnel<T: Tunnel>(
    listener: TcpListener,
    tunnel: T,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> Arc<TunnelState> {
    spawn_shared_tunnel(listener, Arc::new(tunnel), tracker, stop)
}

/// [`spawn_tunnel`] for a tunnel already shared (one of a built config's).
pub(crate) fn spawn_shared_tunnel<T: Tunnel>(
    listener: TcpListener,
    tunnel: Arc<T>,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> Arc<TunnelState> {
    let state = Arc::new(TunnelState::default());
    spawn(
        Bound::Tcp(listener),
        tunnel,
        state.clone(),
        tracker,
        stop.clone(),
    );
    state
}

/// The settings a listener tunnel runs with under `tuning` (as the config layer builds them).
#[cfg(feature = "testing")]
pub fn listener_settings(tuning: &Tuning) -> crate::tunnel::settings::ListenerSettings {
    tuning.listener()
}

/// The settings a connector tunnel runs with under `tuning` (as the config layer builds them).
#[cfg(feature = "testing")]
pub fn connector_settings(tuning: &Tuning) -> crate::tunnel::settings::ConnectorSettings {
    tuning.connector()
}

/// A listener tunnel named `name` that serves `service` with the in-memory identity `l_id`,
/// trusts the connector keys of `trust` and forwards to the plain `target`, with `tuning`.
pub(crate) fn listener_tunnel(
    name: &str,
    service: &str,
    target: SocketAddr,
    l_id: Arc<PrivateIdentity>,
    trust: TrustList,
    tuning: &Tuning,
) -> ListenerTunnel {
    ListenerTunnel {
        name: name.into(),
        forward: Some(Address::Ip(target)),
        allow_destinations: Vec::new(),
        proxy_protocol: ProxyProtocol::Off,
        revoke: Revoke::Cut,
        params: ListenerParams {
            identity: l_id as Arc<dyn Signer>,
            next_identity: None,
            trust: Arc::new(trust),
            psk: None,
            accept_unknown: false,
            allow_tofu: false,
            service: service.into(),
        },
        settings: tuning.listener(),
    }
}

/// A forward-mode connector tunnel named `name` that connects to the listener at `connect`
/// with `params`, with `tuning`.
pub(crate) fn connector_tunnel(
    name: &str,
    connect: SocketAddr,
    params: ConnectorParams,
    tuning: &Tuning,
) -> ConnectorTunnel {
    ConnectorTunnel {
        name: name.into(),
        connect: Address::Ip(connect),
        params,
        fallback_pins: Vec::new(),
        socket: Default::default(),
        tofu: None,
        mode: ConnectorMode::Forward,
        settings: tuning.connector(),
        terms_digest: Default::default(),
    }
}

/// A listener on an ephemeral loopback port, and its address.
pub async fn loopback() -> anyhow::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port")?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// One round trip through the connector: send, half-close, read the echo back.
pub async fn round_trip(connector: SocketAddr, message: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut s = TcpStream::connect(connector).await?;
    s.write_all(message).await?;
    s.shutdown().await?;
    let mut back = Vec::new();
    s.read_to_end(&mut back).await?;
    Ok(back)
}

/// A listener and a connector on ephemeral loopback ports, named `name`, carrying to the plain
/// `target`, with the in-memory identities `l_id` and `c_id` (each trusting or pinning the
/// other). Returns the connector's plaintext entry and the listener's sealed address.
pub async fn spawn_pair(
    name: &str,
    target: SocketAddr,
    l_id: Arc<PrivateIdentity>,
    c_id: Arc<PrivateIdentity>,
    tuning: Tuning,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let (sealed, sealed_addr) = loopback().await?;
    let plain_addr = spawn_pair_on(
        name,
        sealed,
        sealed_addr,
        target,
        l_id,
        c_id,
        tuning,
        tracker,
        stop,
    )
    .await?;
    Ok((plain_addr, sealed_addr))
}

/// [`spawn_pair`] with the listener on `sealed`, and the connector connecting to `connect`
/// (the listener's address, or a relay in front of it: `sealpipe bench --rtt`). Returns the
/// connector's plaintext entry.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn spawn_pair_on(
    name: &str,
    sealed: TcpListener,
    connect: SocketAddr,
    target: SocketAddr,
    l_id: Arc<PrivateIdentity>,
    c_id: Arc<PrivateIdentity>,
    tuning: Tuning,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let (plain, plain_addr) = loopback().await?;
    let mut trust = TrustList::new();
    trust.insert(c_id.fingerprint(), Some(format!("{name} connector")));
    let l_fp = l_id.fingerprint();
    spawn_tunnel(
        sealed,
        listener_tunnel(name, "pair", target, l_id, trust, &tuning),
        tracker,
        stop,
    );
    let params = ConnectorParams {
        identity: c_id as Arc<dyn Signer>,
        listener: l_fp.into(),
        psk: None,
        service: "pair".into(),
    };
    spawn_tunnel(
        plain,
        connector_tunnel(name, connect, params, &tuning),
        tracker,
        stop,
    );
    Ok(plain_addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::net::{Conn, Peer};
    use tokio::sync::watch;

    /// Memory per idle connection (bench/RESULTS.md, "Memory per idle established connection"):
    /// the task of every accepted connection holds its role's `handle` future for as long as
    /// the connection lives, so what a cold path (a handshake, a refusal and its drain buffer)
    /// keeps inline is paid by every idle connection. Bounds with room, not exact sizes.
    #[tokio::test]
    async fn the_per_connection_futures_stay_small() {
        let pem = |f: &str| {
            let path = format!("{}/tests/data/{f}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(path).unwrap();
            Arc::new(PrivateIdentity::from_pem(&text).unwrap())
        };
        let (l_id, c_id) = (pem("openssl-rsa2048.pem"), pem("peer-b.pem"));
        let (l, addr) = loopback().await.unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (a, from) = l.accept().await.unwrap();
        let _client2 = TcpStream::connect(addr).await.unwrap();
        let (b, from2) = l.accept().await.unwrap();
        let tuning = Tuning::default();
        let state = Arc::new(TunnelState::default());

        let listener = Arc::new(listener_tunnel(
            "t",
            "pair",
            addr,
            l_id.clone(),
            TrustList::new(),
            &tuning,
        ));
        let (_l_tx, l_rx) = watch::channel(listener.clone());
        let l_fut = listener.handle(l_rx, Conn::Tcp(a), Peer::Ip(from), state.clone());
        let l_size = std::mem::size_of_val(&l_fut);

        let params = ConnectorParams {
            identity: c_id as Arc<dyn Signer>,
            listener: l_id.fingerprint().into(),
            psk: None,
            service: "pair".into(),
        };
        let connector = Arc::new(connector_tunnel("t", addr, params, &tuning));
        let (_c_tx, c_rx) = watch::channel(connector.clone());
        let c_fut = connector.handle(c_rx, Conn::Tcp(b), Peer::Ip(from2), state);
        let c_size = std::mem::size_of_val(&c_fut);
        eprintln!("handle futures: listener {l_size} B, connector {c_size} B");
        // 3,960 and 3,824 B at 2026-12-08 (rustc 1.95); a refusal's 4 KiB drain buffer held
        // inline made the listener's 6 KiB. The keepalives of protocol 2.1 (the pump's timer
        // and liveness state) brought them to 4,720 and 4,576 B; the fresh hybrid exchange of
        // PROTOCOL.md §4.5 (its wake-up, its timer and the hard-limit timer in the pump, the
        // exchange between streams) to 5,504 and 5,488 B. One timer for the pump
        // (`tunnel::pump::watch`: the idle bound, the liveness rule, the keys' hard limit and
        // the exchange's wake-up behind one `Sleep`) brought them back to 5,008 and 4,992 B.
        assert!(l_size <= 5120, "listener's handle future: {l_size} B");
        assert!(c_size <= 5120, "connector's handle future: {c_size} B");
    }
}
