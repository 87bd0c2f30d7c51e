//! A listener and a connector in one process on loopback, with identities made in memory:
//! what `sealpipe demo` and `sealpipe bench` both run, and what the integration tests drive.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::addr::Address;
use crate::config::{ConnectorMode, ProxyProtocol, Revoke, Tuning};
use crate::proto::handshake::{ConnectorParams, ListenerParams};
use crate::proto::identity::{PrivateIdentity, Signer, TrustList};
use crate::tunnel::accept::spawn;
use crate::tunnel::connector::ConnectorTunnel;
use crate::tunnel::listener::ListenerTunnel;
use crate::tunnel::net::Bound;
use crate::tunnel::state::TunnelState;
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
    let state = Arc::new(TunnelState::default());
    spawn(
        Bound::Tcp(listener),
        Arc::new(tunnel),
        state.clone(),
        tracker,
        stop.clone(),
    );
    state
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
    spawn_pair_via(name, target, l_id, c_id, tuning, None, tracker, stop).await
}

/// [`spawn_pair`], with the connector connecting through a WAN relay of round-trip time `rtt`
/// (`sealpipe bench --rtt`) in front of the listener when given.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn spawn_pair_via(
    name: &str,
    target: SocketAddr,
    l_id: Arc<PrivateIdentity>,
    c_id: Arc<PrivateIdentity>,
    tuning: Tuning,
    rtt: Option<std::time::Duration>,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let (sealed, sealed_addr) = loopback().await?;
    let connect_addr = match rtt {
        Some(rtt) => super::bench::wan::spawn_relay(sealed_addr, rtt, stop).await?,
        None => sealed_addr,
    };
    let (plain, plain_addr) = loopback().await?;
    let mut trust = TrustList::new();
    trust.insert(c_id.fingerprint(), Some(format!("{name} connector")));
    spawn_tunnel(
        sealed,
        ListenerTunnel {
            name: name.into(),
            forward: Some(Address::Ip(target)),
            allow_destinations: Vec::new(),
            proxy_protocol: ProxyProtocol::Off,
            revoke: Revoke::Cut,
            params: ListenerParams {
                identity: l_id.clone() as Arc<dyn Signer>,
                next_identity: None,
                trust: Arc::new(trust),
                psk: None,
                accept_unknown: false,
                allow_tofu: false,
                service: "pair".into(),
            },
            tuning: tuning.clone(),
        },
        tracker,
        stop,
    );
    spawn_tunnel(
        plain,
        ConnectorTunnel {
            name: name.into(),
            connect: Address::Ip(connect_addr),
            params: ConnectorParams {
                identity: c_id as Arc<dyn Signer>,
                listener: l_id.fingerprint().into(),
                psk: None,
                service: "pair".into(),
            },
            fallback_pins: Vec::new(),
            socket: Default::default(),
            tofu: None,
            mode: ConnectorMode::Forward,
            tuning,
        },
        tracker,
        stop,
    );
    Ok((plain_addr, sealed_addr))
}
