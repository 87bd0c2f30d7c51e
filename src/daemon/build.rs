//! A config file turned into runnable tunnels (keys loaded, trust lists built), and their
//! listening sockets bound. What `check` validates and what `run` and each reload start.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::addr::Address;
use crate::config::{Config, PeerPin, SocketPermissions};
use crate::files::keyfile;
use crate::files::known_peers::TofuStore;
use crate::proto::handshake::{ConnectorParams, ListenerParams, ListenerPin};
use crate::proto::identity::{Signer, TrustList};
use crate::proto::key_schedule::Psk;
use crate::tunnel::activation::{self, Want};
use crate::tunnel::connector::ConnectorTunnel;
use crate::tunnel::listener::ListenerTunnel;
use crate::tunnel::net::{bind_unix, Bound};

/// A config file turned into runnable tunnels: keys loaded, trust lists built.
pub(crate) struct Built {
    /// The parsed configuration.
    pub config: Config,
    /// Listener tunnels with their listen addresses.
    pub listeners: Vec<(Address, Arc<ListenerTunnel>)>,
    /// Connector tunnels with their listen addresses.
    pub connectors: Vec<(Address, Arc<ConnectorTunnel>)>,
}

impl Built {
    /// The longest drain timeout of any tunnel.
    pub(crate) fn drain_timeout(&self) -> Duration {
        let l = self.config.listeners.iter().map(|l| l.tuning.drain_timeout);
        let c = self
            .config
            .connectors
            .iter()
            .map(|c| c.tuning.drain_timeout);
        l.chain(c).max().unwrap_or(Duration::from_secs(30))
    }
}

/// Reads the config, the private key, the PSK and the peers files. What `check` validates.
/// Every error about the config or a file it names is a [`crate::config::ConfigError`] that names where the
/// config names the file (on which `sealpipe run` exits 78, `EX_CONFIG`).
pub(crate) fn build(path: &Path) -> anyhow::Result<Built> {
    let mut config = Config::load(path)?;
    let key = &config.identity.private_key;
    let identity: Arc<dyn Signer> =
        Arc::new(keyfile::load_private_key(key).map_err(|e| key.at.error(e))?);
    let next_identity = next_identity(&config, identity.as_ref())?;
    let own: Vec<_> = std::iter::once(identity.as_ref())
        .chain(next_identity.as_deref())
        .map(|signer| signer.public().fingerprint())
        .collect();
    let own_warnings = own_key_warnings(&config, &own);
    config.warnings.extend(own_warnings);
    let psk: Option<Arc<Psk>> = match &config.identity.psk_file {
        Some(p) => Some(Arc::new(Psk::from_bytes(
            *keyfile::load_psk(p).map_err(|e| p.at.error(e))?,
        ))),
        None => None,
    };
    let listeners = config
        .listeners
        .iter()
        .map(|l| {
            let mut trust = TrustList::new();
            for (fp, name) in &l.peers {
                trust.insert(*fp, name.clone());
            }
            let tunnel = ListenerTunnel {
                name: l.name.clone(),
                forward: l.forward.clone(),
                allow_destinations: l.allow_destinations.clone(),
                proxy_protocol: l.proxy_protocol,
                revoke: l.revoke,
                params: ListenerParams {
                    identity: identity.clone(),
                    next_identity: next_identity.clone(),
                    trust: Arc::new(trust),
                    psk: psk.clone(),
                    accept_unknown: l.accept_unknown,
                    allow_tofu: l.allow_tofu,
                    service: l.service.as_str().into(),
                },
                settings: l.settings(),
            };
            (l.listen.clone(), Arc::new(tunnel))
        })
        .collect();
    let connectors = config
        .connectors
        .iter()
        .map(|c| {
            // TOFU: the recorded key, if any, is looked up for each connection.
            let (listener, fallback_pins, tofu) = match &c.peer {
                PeerPin::Keys(pins) => match pins.split_first() {
                    Some((first, rest)) => (ListenerPin::Key(*first), rest.to_vec(), None),
                    None => anyhow::bail!("connector {:?}: `peer` pins no key", c.name),
                },
                PeerPin::Tofu { known_peers } => {
                    let store = TofuStore::open(known_peers.value.clone(), c.connect.to_string())
                        .map_err(|e| known_peers.at.error(e))?;
                    (ListenerPin::FirstContact, Vec::new(), Some(Arc::new(store)))
                }
            };
            let tunnel = ConnectorTunnel {
                name: c.name.clone(),
                connect: c.connect.clone(),
                params: ConnectorParams {
                    identity: identity.clone(),
                    listener,
                    psk: psk.clone(),
                    service: c.service.as_str().into(),
                },
                fallback_pins,
                socket: c.socket.clone(),
                tofu,
                mode: c.mode,
                settings: c.settings(),
                terms_digest: Default::default(),
            };
            Ok((c.listen.clone(), Arc::new(tunnel)))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Built {
        config,
        listeners,
        connectors,
    })
}

/// This host's own key (`own`: `private_key`, `next_private_key`) in a listener's `peers` or
/// `peers_file`, or in a connector's `peer`: almost always a copy-paste slip (the other host's
/// fingerprint was meant), so a warning. Not an error: a host may connect to its own listener,
/// or hosts may share one key, and then it is meant.
fn own_key_warnings(config: &Config, own: &[crate::proto::identity::Fingerprint]) -> Vec<String> {
    let slip = "this host's own key (`[identity]`): a copy-paste slip? Paste the other host's \
                fingerprint (`sealpipe fingerprint` there)";
    let mut warnings = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        for (fp, _) in l.peers.iter().filter(|(fp, _)| own.contains(fp)) {
            // Inline in `peers` if the config says it, else from the peers file.
            let inline = std::fs::read_to_string(&config.path)
                .is_ok_and(|text| text.contains(&fp.to_string()));
            let warning = match &l.peers_file {
                Some(file) if !inline => format!(
                    "{}: listener {:?}: key `peers_file`: {}: {fp} is {slip}",
                    config.location_of("listener", Some(i), "peers_file"),
                    l.name,
                    file.display()
                ),
                _ => format!(
                    "{}: listener {:?}: key `peers`: {fp} is {slip}",
                    config.location_of("listener", Some(i), "peers"),
                    l.name
                ),
            };
            warnings.push(warning);
        }
    }
    for (i, c) in config.connectors.iter().enumerate() {
        if let PeerPin::Keys(pins) = &c.peer {
            for fp in pins.iter().filter(|fp| own.contains(fp)) {
                warnings.push(format!(
                    "{}: connector {:?}: key `peer`: {fp} is {slip}",
                    config.location_of("connector", Some(i), "peer"),
                    c.name
                ));
            }
        }
    }
    warnings
}

/// `[identity] next_private_key`, loaded like `private_key`; refused if it holds the same key.
fn next_identity(
    config: &Config,
    identity: &dyn Signer,
) -> anyhow::Result<Option<Arc<dyn Signer>>> {
    let Some(path) = &config.identity.next_private_key else {
        return Ok(None);
    };
    let next = keyfile::load_private_key(path).map_err(|e| path.at.error(e))?;
    let fp = next.fingerprint();
    if fp == identity.public().fingerprint() {
        anyhow::bail!(
            "{}: [identity]: `next_private_key` {} holds the same key as `private_key` ({fp}): \
             the next key is a new one (`sealpipe keygen --out FILE`)",
            config.path.display(),
            path.value.display()
        );
    }
    Ok(Some(Arc::new(next)))
}

/// Binds a tunnel's listening socket: TCP as [`bind`], a Unix socket with `perms` (the default
/// ones if `None`), or takes the socket systemd passed for `systemd:NAME` (`perms` is `Some`
/// for the tunnels that may listen on a Unix socket, so only then may that socket be one).
pub(crate) async fn bind_listen(
    addr: &Address,
    perms: Option<&SocketPermissions>,
) -> anyhow::Result<Bound> {
    match addr {
        Address::Unix(path) => {
            let perms = perms.cloned().unwrap_or_default();
            Ok(bind_unix(path, &perms).await?)
        }
        Address::Systemd(name) => {
            let want = match perms {
                Some(_) => Want::TcpOrUnix,
                None => Want::Tcp,
            };
            activation::take(name, want).with_context(|| format!("cannot take the socket {addr}"))
        }
        _ => Ok(Bound::Tcp(bind(addr).await?)),
    }
}

/// Binds a TCP listening socket on the first address `addr` resolves to.
pub(crate) async fn bind(addr: &Address) -> anyhow::Result<TcpListener> {
    let addrs = addr
        .resolve()
        .await
        .with_context(|| format!("cannot resolve listen address {addr}"))?;
    let mut last = None;
    for sa in addrs {
        match TcpListener::bind(sa).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(e).with_context(|| format!("cannot listen on {addr}")),
        None => anyhow::bail!("listen address {addr} resolves to nothing"),
    }
}
