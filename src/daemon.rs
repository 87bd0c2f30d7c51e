//! The daemon: builds every tunnel of a config file, runs them, reloads on SIGHUP and drains on
//! SIGTERM/SIGINT. Tells systemd (Type=notify) when it is ready, reloading and stopping.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Address, Config};
use crate::keyfile;
use crate::proto::handshake::{ConnectorParams, ListenerParams};
use crate::proto::identity::{Signer, TrustList};
use crate::proto::keys::Psk;
use crate::tunnel::connector::ConnectorTunnel;
use crate::tunnel::listener::ListenerTunnel;
use crate::tunnel::serve::{spawn, Tunnel, TunnelState};

/// A config file turned into runnable tunnels: keys loaded, trust lists built.
pub struct Built {
    /// The parsed configuration.
    pub config: Config,
    /// Listener tunnels with their listen addresses.
    pub listeners: Vec<(Address, Arc<ListenerTunnel>)>,
    /// Connector tunnels with their listen addresses.
    pub connectors: Vec<(Address, Arc<ConnectorTunnel>)>,
}

impl Built {
    /// The longest drain timeout of any tunnel.
    pub fn drain_timeout(&self) -> Duration {
        let l = self.listeners.iter().map(|(_, t)| t.tuning.drain_timeout);
        let c = self.connectors.iter().map(|(_, t)| t.tuning.drain_timeout);
        l.chain(c).max().unwrap_or(Duration::from_secs(30))
    }
}

/// Reads the config, the private key, the PSK and the peers files. What `check` validates.
pub fn build(path: &Path) -> anyhow::Result<Built> {
    let config = Config::load(path)?;
    let identity: Arc<dyn Signer> =
        Arc::new(keyfile::load_private_key(&config.identity.private_key)?);
    let psk: Option<Arc<Psk>> = match &config.identity.psk_file {
        Some(p) => Some(Arc::new(Psk::from_bytes(*keyfile::load_psk(p)?))),
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
                params: ListenerParams {
                    identity: identity.clone(),
                    trust: Arc::new(trust),
                    psk: psk.clone(),
                },
                tuning: l.tuning.clone(),
            };
            (l.listen.clone(), Arc::new(tunnel))
        })
        .collect();
    let connectors = config
        .connectors
        .iter()
        .map(|c| {
            let tunnel = ConnectorTunnel {
                name: c.name.clone(),
                connect: c.connect.clone(),
                params: ConnectorParams {
                    identity: identity.clone(),
                    listener: c.peer,
                    psk: psk.clone(),
                },
                mode: c.mode,
                tuning: c.tuning.clone(),
            };
            (c.listen.clone(), Arc::new(tunnel))
        })
        .collect();
    Ok(Built {
        config,
        listeners,
        connectors,
    })
}

/// Binds a listening socket on the first address `addr` resolves to.
pub async fn bind(addr: &Address) -> anyhow::Result<TcpListener> {
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

struct Running<T> {
    listen: Address,
    settings: watch::Sender<Arc<T>>,
    stop: CancellationToken,
    state: Arc<TunnelState>,
}

/// The running tunnels of one role, by name.
pub struct TunnelSet<T> {
    running: HashMap<String, Running<T>>,
}

impl<T: Tunnel> TunnelSet<T> {
    fn new() -> Self {
        TunnelSet {
            running: HashMap::new(),
        }
    }

    /// The state of a running tunnel (for tests and metrics).
    pub fn state(&self, name: &str) -> Option<Arc<TunnelState>> {
        self.running.get(name).map(|r| r.state.clone())
    }

    async fn start(
        &mut self,
        listen: Address,
        tunnel: Arc<T>,
        tracker: &TaskTracker,
    ) -> anyhow::Result<()> {
        let listener = bind(&listen)
            .await
            .with_context(|| format!("{} {:?}", tunnel.role(), tunnel.name()))?;
        self.start_on(listener, listen, tunnel, tracker);
        Ok(())
    }

    fn start_on(
        &mut self,
        listener: TcpListener,
        listen: Address,
        tunnel: Arc<T>,
        tracker: &TaskTracker,
    ) {
        let name = tunnel.name().to_string();
        let local = listener
            .local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string());
        tracing::info!(tunnel = %name, role = tunnel.role(), listen = %listen, local = %local, "tunnel listening");
        let stop = CancellationToken::new();
        let (tx, state) = spawn(listener, tunnel, tracker, stop.clone());
        self.running.insert(
            name,
            Running {
                listen,
                settings: tx,
                stop,
                state,
            },
        );
    }

    /// Moves to the tunnels of a new config: same name and address, new settings for new
    /// connections; new address, a new socket (the old one closes only once the new one is
    /// bound); gone, stop accepting. Established connections are never touched.
    async fn apply(&mut self, wanted: Vec<(Address, Arc<T>)>, tracker: &TaskTracker) {
        let names: Vec<String> = wanted.iter().map(|(_, t)| t.name().to_string()).collect();
        for (listen, tunnel) in wanted {
            let name = tunnel.name().to_string();
            match self.running.get(&name) {
                Some(r) if r.listen == listen => {
                    r.settings.send_replace(tunnel);
                }
                _ => match bind(&listen).await {
                    Ok(l) => {
                        if let Some(old) = self.running.remove(&name) {
                            old.stop.cancel();
                        }
                        self.start_on(l, listen, tunnel, tracker);
                    }
                    Err(e) => tracing::error!(tunnel = %name, error = %format!("{e:#}"),
                        "reload: cannot listen, keeping the previous socket if any"),
                },
            }
        }
        self.running.retain(|name, r| {
            let keep = names.contains(name);
            if !keep {
                tracing::info!(tunnel = %name, "reload: tunnel removed, no longer accepting");
                r.stop.cancel();
            }
            keep
        });
    }

    fn stop_all(&self) {
        for r in self.running.values() {
            r.stop.cancel();
        }
    }
}

/// All tunnels of one process.
pub struct Daemon {
    /// Listener tunnels.
    pub listeners: TunnelSet<ListenerTunnel>,
    /// Connector tunnels.
    pub connectors: TunnelSet<ConnectorTunnel>,
    tracker: TaskTracker,
    drain_timeout: Duration,
}

impl Daemon {
    /// Binds and starts every tunnel of `built`; fails if any listen address cannot be bound.
    pub async fn start(built: Built) -> anyhow::Result<Daemon> {
        let mut d = Daemon {
            listeners: TunnelSet::new(),
            connectors: TunnelSet::new(),
            tracker: TaskTracker::new(),
            drain_timeout: built.drain_timeout(),
        };
        for (listen, t) in built.listeners {
            d.listeners.start(listen, t, &d.tracker).await?;
        }
        for (listen, t) in built.connectors {
            d.connectors.start(listen, t, &d.tracker).await?;
        }
        Ok(d)
    }

    /// Applies a new configuration; the caller keeps the old one when building it failed.
    pub async fn reload(&mut self, built: Built) {
        self.drain_timeout = built.drain_timeout();
        self.listeners.apply(built.listeners, &self.tracker).await;
        self.connectors.apply(built.connectors, &self.tracker).await;
    }

    /// Stops accepting, then waits up to the drain timeout for open connections.
    pub async fn shutdown(self) {
        self.listeners.stop_all();
        self.connectors.stop_all();
        self.tracker.close();
        let open = self.tracker.len();
        if open > 0 {
            tracing::info!(open, timeout = ?self.drain_timeout, "draining open connections");
        }
        if tokio::time::timeout(self.drain_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.tracker.len(),
                "drain timeout reached, closing the rest"
            );
        }
    }
}

/// `sealpipe run`: runs until SIGTERM or SIGINT; SIGHUP reloads.
pub async fn run(path: &Path) -> anyhow::Result<()> {
    let built = build(path)?;
    let mut daemon = Daemon::start(built).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let _ = sd_notify::notify(&[NotifyState::Ready]);
    tracing::info!(config = %path.display(), "sealpipe running");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let mut states = vec![NotifyState::Reloading];
                if let Ok(now) = NotifyState::monotonic_usec_now() {
                    states.push(now);
                }
                let _ = sd_notify::notify(&states);
                match build(path) {
                    Ok(built) => {
                        daemon.reload(built).await;
                        tracing::info!(config = %path.display(), "configuration reloaded");
                    }
                    Err(e) => tracing::error!(config = %path.display(), error = %format!("{e:#}"),
                        "reload failed, keeping the running configuration"),
                }
                let _ = sd_notify::notify(&[NotifyState::Ready]);
            }
        }
    }
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    tracing::info!("stopping: no new connections");
    daemon.shutdown().await;
    Ok(())
}
