//! The daemon: builds every tunnel of a config file, runs them, reloads on SIGHUP and drains on
//! SIGTERM/SIGINT. Tells systemd (Type=notify) when it is ready, reloading and stopping.
//!
//! The command line reaches the runtime (`crate::tunnel`) only through here: [`run`], [`build()`]
//! (what `check` validates), [`take_systemd_sockets`], and [`pair`] (a listener and a connector
//! in one process, for `demo`, `bench` and the tests).

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

pub(crate) mod build;
pub(crate) mod control;
pub(crate) mod metrics;
pub(crate) mod pair;
pub(crate) mod responder;
pub(crate) mod status;

pub(crate) use build::{bind, bind_listen, build, Built};

use crate::addr::Address;
use crate::config::SocketPermissions;
use crate::daemon::metrics::{NotStarted, Registry, TunnelEntry};
use crate::proto::handshake::Role;
use crate::tunnel::accept::spawn;
use crate::tunnel::connector::ConnectorTunnel;
use crate::tunnel::listener::ListenerTunnel;
use crate::tunnel::net::{bind_unix, set_socket_permissions, Bound};
use crate::tunnel::state::TunnelState;
use crate::tunnel::Tunnel;

struct Running<T> {
    listen: Address,
    /// The address bound, for logs and `status`.
    local: String,
    settings: watch::Sender<Arc<T>>,
    stop: CancellationToken,
    state: Arc<TunnelState>,
}

/// The running tunnels of one role, by name.
pub(crate) struct TunnelSet<T> {
    running: HashMap<String, Running<T>>,
    /// Tunnels of the config a reload could not start, by name: their `listen` and why.
    not_started: HashMap<String, (Address, String)>,
}

impl<T: Tunnel> TunnelSet<T> {
    fn new() -> Self {
        TunnelSet {
            running: HashMap::new(),
            not_started: HashMap::new(),
        }
    }

    /// The running tunnels, for metrics.
    fn entries(&self) -> impl Iterator<Item = TunnelEntry> + '_ {
        self.running.iter().map(|(name, r)| TunnelEntry {
            role: r.settings.borrow().role(),
            name: name.clone(),
            state: r.state.clone(),
            listen: r.listen.to_string(),
            local: r.local.clone(),
            trust: r.settings.borrow().trust(),
        })
    }

    /// The tunnels of the config that do not run, for `status`.
    fn not_started(&self, role: Role) -> impl Iterator<Item = NotStarted> + '_ {
        self.not_started
            .iter()
            .map(move |(name, (listen, error))| NotStarted {
                role,
                name: name.clone(),
                listen: listen.to_string(),
                error: error.clone(),
            })
    }

    async fn start(
        &mut self,
        listen: Address,
        tunnel: Arc<T>,
        tracker: &TaskTracker,
    ) -> anyhow::Result<()> {
        let listener = bind_listen(&listen, tunnel.socket_permissions())
            .await
            .with_context(|| format!("{} {:?}", tunnel.role(), tunnel.name()))?;
        self.start_on(listener, listen, tunnel, tracker, None);
        Ok(())
    }

    fn start_on(
        &mut self,
        listener: Bound,
        listen: Address,
        tunnel: Arc<T>,
        tracker: &TaskTracker,
        state: Option<Arc<TunnelState>>,
    ) {
        let name = tunnel.name().to_string();
        let local = listener.local();
        tracing::info!(tunnel = %name, role = %tunnel.role(), listen = %listen, local = %local, "tunnel listening");
        let stop = CancellationToken::new();
        let state = state.unwrap_or_default();
        let tx = spawn(listener, tunnel, state.clone(), tracker, stop.clone());
        self.running.insert(
            name,
            Running {
                listen,
                local,
                settings: tx,
                stop,
                state,
            },
        );
    }

    /// Moves to the tunnels of a new config: same name and address, new settings for new
    /// connections (and a Unix socket's mode and group set anew; a `systemd:NAME` socket kept
    /// as it is); new address, a new socket (the old one closes only once the new one is bound;
    /// counters carry over; if it cannot be bound, or is a socket systemd did not pass at start,
    /// the old socket stays with the new settings); gone, stop accepting. Established
    /// connections stay, except those of a key the new settings no longer accept
    /// ([`Self::cut_revoked`]). Returns what could not be applied, one line each.
    async fn apply(
        &mut self,
        wanted: Vec<(Address, Arc<T>)>,
        tracker: &TaskTracker,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let names: Vec<String> = wanted.iter().map(|(_, t)| t.name().to_string()).collect();
        for (listen, tunnel) in wanted {
            let name = tunnel.name().to_string();
            match self.running.get(&name) {
                Some(r) if r.listen == listen => {
                    if let (Some(path), Some(perms)) =
                        (listen.unix_path(), tunnel.socket_permissions())
                    {
                        if let Err(e) = set_socket_permissions(path, perms) {
                            tracing::error!(tunnel = %name, error = %e, "reload: cannot change the socket's permissions");
                            problems.push(format!(
                                "tunnel {name} kept its socket's previous permissions"
                            ));
                        }
                    }
                    if listen.systemd_name().is_some() {
                        tracing::info!(tunnel = %name, role = %tunnel.role(), listen = %listen, local = %r.local,
                            "reload: kept the socket systemd passed");
                    }
                    r.settings.send_replace(tunnel);
                }
                _ => match bind_listen(&listen, tunnel.socket_permissions()).await {
                    Ok(l) => {
                        let state = self.running.remove(&name).map(|old| {
                            old.stop.cancel();
                            // The sessions accepted on the old socket keep the last settings
                            // sent there: these.
                            old.settings.send_replace(tunnel.clone());
                            old.state
                        });
                        self.start_on(l, listen, tunnel, tracker, state);
                    }
                    Err(e) => match self.running.get(&name) {
                        // The old socket stays, but under the new settings: a reload that
                        // revokes trust (peers, accept_unknown, allow_tofu, keys) must not be
                        // undone by a listen address that cannot be bound.
                        Some(r) => {
                            tracing::error!(tunnel = %name, error = %format!("{e:#}"), previous = %r.listen,
                                "reload: cannot listen on the new address; the previous socket stays, with the new settings");
                            r.settings.send_replace(tunnel);
                            problems.push(format!("tunnel {name} still listens on {}", r.listen));
                        }
                        None => {
                            tracing::error!(tunnel = %name, role = %tunnel.role(), error = %format!("{e:#}"),
                                "reload: cannot listen, tunnel not started");
                            problems.push(format!("tunnel {name} not started"));
                            self.not_started
                                .insert(name.clone(), (listen.clone(), format!("{e:#}")));
                        }
                    },
                },
            }
        }
        // A tunnel runs, or is gone from the config: no longer "not started".
        let running = &self.running;
        self.not_started
            .retain(|name, _| names.contains(name) && !running.contains_key(name));
        self.running.retain(|name, r| {
            let keep = names.contains(name);
            if !keep {
                tracing::info!(tunnel = %name, "reload: tunnel removed, no longer accepting");
                r.stop.cancel();
                // Its sessions carry no new stream (those between streams are closed now).
                r.state.sessions.close();
                r.state.pool.close();
            }
            keep
        });
        self.cut_revoked();
        problems
    }

    /// Cuts the open connections of every key that a tunnel's new settings no longer accept
    /// (each connection logs its own reset, "revoked at reload").
    fn cut_revoked(&self) {
        for (name, r) in &self.running {
            let settings = r.settings.borrow().clone();
            let cut = r.state.open.cut_unless(|fp| settings.keeps_open(fp));
            if cut > 0 {
                tracing::warn!(tunnel = %name, role = %settings.role(), connections = cut,
                    "reload: key no longer trusted, its open connections are cut (revoked at reload)");
            }
            // Sessions between streams, and warm sessions in a connector's pool, carry no new
            // client of a key the new settings refuse (whatever `revoke` says of open streams).
            let sessions = r
                .state
                .sessions
                .refuse_next_unless(|fp| settings.accepts_new(fp));
            let pooled = r.state.pool.retain(|fp| settings.accepts_new(fp));
            if sessions + pooled > 0 {
                tracing::warn!(tunnel = %name, role = %settings.role(), sessions, pooled,
                    "reload: key no longer trusted, its sessions carry no new stream (revoked at reload)");
            }
            // A connector's pooled sessions made under terms the reload changed (`service`,
            // pins, key, PSK, `connect`) are closed; those carrying a stream finish it and
            // carry no other. A refusal backoff ends.
            let retired = settings
                .pool_terms()
                .map_or(0, |terms| r.state.pool.retire(|s| s.terms == terms));
            if retired > 0 {
                tracing::info!(tunnel = %name, role = %settings.role(), pooled = retired,
                    "reload: the connector's terms changed, its pooled sessions are closed (sessions carrying a stream finish it, and carry no other)");
            }
            r.state.pool.reloaded();
        }
    }

    fn stop_all(&self) {
        for r in self.running.values() {
            r.stop.cancel();
            // Sessions between streams and warm sessions carry nothing to drain: closed now,
            // and so is every session whose handshake was still in flight.
            r.state.sessions.close();
            r.state.pool.close();
        }
    }
}

/// All tunnels of one process.
pub(crate) struct Daemon {
    /// Listener tunnels.
    pub listeners: TunnelSet<ListenerTunnel>,
    /// Connector tunnels.
    pub connectors: TunnelSet<ConnectorTunnel>,
    tracker: TaskTracker,
    drain_timeout: Duration,
    /// What the metrics endpoint reports.
    pub registry: Arc<Registry>,
    metrics: Option<(Address, CancellationToken)>,
    control: Option<CancellationToken>,
}

impl Daemon {
    /// Binds and starts every tunnel of `built`; fails if any listen address cannot be bound.
    pub(crate) async fn start(built: Built) -> anyhow::Result<Daemon> {
        let mut d = Daemon {
            listeners: TunnelSet::new(),
            connectors: TunnelSet::new(),
            tracker: TaskTracker::new(),
            drain_timeout: built.drain_timeout(),
            registry: Arc::default(),
            metrics: None,
            control: None,
        };
        if let Some(m) = &built.config.metrics {
            let l = bind(&m.listen).await.context("[metrics]")?;
            d.start_metrics(l, m.listen.clone());
        }
        for (listen, t) in built.listeners {
            warn_enrollment(&t, false, false);
            d.listeners.start(listen, t, &d.tracker).await?;
        }
        for (listen, t) in built.connectors {
            d.connectors.start(listen, t, &d.tracker).await?;
        }
        d.publish();
        Ok(d)
    }

    /// Serves `status` on the control socket at `path` (for the daemon of `config`).
    async fn start_control(&mut self, path: &Path, config: &Path) -> anyhow::Result<()> {
        control::ensure_dir(path).with_context(|| {
            format!(
                "control socket: cannot create the directory of {}",
                path.display()
            )
        })?;
        let perms = SocketPermissions {
            mode: control::CONTROL_MODE,
            group: None,
        };
        let bound = bind_unix(path, &perms)
            .await
            .with_context(|| format!("control socket {}", path.display()))?;
        tracing::info!(path = %path.display(), "control socket listening (sealpipe status)");
        let stop = CancellationToken::new();
        tokio::spawn(control::serve(
            bound,
            self.registry.clone(),
            std::path::absolute(config)
                .unwrap_or_else(|_| config.to_path_buf())
                .display()
                .to_string(),
            std::time::Instant::now(),
            stop.clone(),
        ));
        self.control = Some(stop);
        Ok(())
    }

    fn start_metrics(&mut self, listener: TcpListener, listen: Address) {
        let local = listener
            .local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string());
        tracing::info!(listen = %listen, local = %local, "metrics listening");
        self.registry.set_metrics_local(Some(local));
        let stop = CancellationToken::new();
        tokio::spawn(crate::daemon::metrics::serve(
            listener,
            self.registry.clone(),
            stop.clone(),
        ));
        if let Some((_, old)) = self.metrics.replace((listen, stop)) {
            old.cancel();
        }
    }

    /// Tells the metrics endpoint which tunnels run now.
    fn publish(&self) {
        let entries = self.listeners.entries().chain(self.connectors.entries());
        self.registry.set(entries.collect());
        let failed = (self.listeners.not_started(Role::Listener))
            .chain(self.connectors.not_started(Role::Connector));
        self.registry.set_not_started(failed.collect());
    }

    /// Follows a changed `[metrics]` section: a new address is bound before the old one closes.
    async fn apply_metrics(&mut self, wanted: Option<Address>) {
        match (wanted, &self.metrics) {
            (Some(w), Some((cur, _))) if *cur == w => {}
            (Some(w), _) => match bind(&w).await {
                Ok(l) => self.start_metrics(l, w),
                Err(e) => tracing::error!(error = %format!("{e:#}"),
                    "reload: cannot listen for metrics, keeping the previous socket if any"),
            },
            (None, _) => {
                if let Some((_, stop)) = self.metrics.take() {
                    tracing::info!("reload: metrics endpoint removed");
                    stop.cancel();
                    self.registry.set_metrics_local(None);
                }
            }
        }
    }

    /// Applies a new configuration (the caller keeps the old one when building it failed).
    /// Returns what could not be applied, one line each: empty when all of it was.
    pub(crate) async fn reload(&mut self, built: Built) -> Vec<String> {
        self.drain_timeout = built.drain_timeout();
        self.apply_metrics(built.config.metrics.map(|m| m.listen))
            .await;
        for (_, t) in &built.listeners {
            let (unknown, tofu) = self
                .listeners
                .running
                .get(&t.name)
                .map_or((false, false), |r| {
                    let old = r.settings.borrow();
                    (old.params.accept_unknown, old.params.allow_tofu)
                });
            warn_enrollment(t, unknown, tofu);
        }
        let mut problems = self.listeners.apply(built.listeners, &self.tracker).await;
        problems.extend(self.connectors.apply(built.connectors, &self.tracker).await);
        self.publish();
        problems
    }

    /// Connections open now (handshaking or established), over every tunnel.
    fn open_connections(&self) -> usize {
        let l = self.listeners.running.values();
        let c = self.connectors.running.values();
        let states = l.map(|r| &r.state).chain(c.map(|r| &r.state));
        states.map(|s| s.connections.current()).sum()
    }

    /// Stops accepting, then waits up to the drain timeout for open connections.
    pub(crate) async fn shutdown(self) {
        if let Some((_, stop)) = &self.metrics {
            stop.cancel();
        }
        if let Some(stop) = &self.control {
            stop.cancel();
        }
        self.listeners.stop_all();
        self.connectors.stop_all();
        self.tracker.close();
        let open = self.open_connections();
        if open > 0 {
            tracing::info!(open, timeout = ?self.drain_timeout, "draining open connections");
        }
        if tokio::time::timeout(self.drain_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.open_connections(),
                "drain timeout reached, closing the rest"
            );
        }
    }
}

/// Warns about a listener's enrollment options that weaken who gets in or who gets an answer,
/// unless they were already on (`was_*`, on reload).
fn warn_enrollment(t: &ListenerTunnel, was_unknown: bool, was_tofu: bool) {
    if t.params.accept_unknown && !was_unknown {
        tracing::warn!(tunnel = %t.name, role = %Role::Listener, trusted = t.params.trust.len(),
            "accept_unknown = true: ANY connector that holds a key is let in, trusted or not; only this listener is authenticated");
    }
    if t.params.allow_tofu && !was_tofu {
        tracing::warn!(tunnel = %t.name, role = %Role::Listener,
            "allow_tofu = true: this listener answers hellos from connectors that do not know its key (first contact), so scanners can see it is a sealpipe listener");
    }
}

/// Takes the listening sockets systemd passed, for `listen = "systemd:NAME"` (socket
/// activation), and unsets `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`. Before any thread
/// starts: it changes the environment.
pub(crate) fn take_systemd_sockets() {
    crate::tunnel::activation::take_from_env();
}

/// Logs the config's values that work but are almost surely a mistake (what `sealpipe check`
/// prints as warnings).
fn log_config_warnings(built: &Built) {
    for w in &built.config.warnings {
        tracing::warn!("{w}");
    }
}

/// `sealpipe run`: runs until SIGTERM or SIGINT; SIGHUP reloads.
pub(crate) async fn run(path: &Path) -> anyhow::Result<()> {
    let built = build(path)?;
    log_config_warnings(&built);
    let control = control::socket_of(&built.config);
    let mut daemon = Daemon::start(built).await?;
    crate::tunnel::activation::close_unused();
    if let Some(control) = control {
        if let Err(e) = daemon.start_control(&control, path).await {
            // The tunnels run all the same; only `sealpipe status` cannot reach this daemon.
            tracing::error!(error = %format!("{e:#}"), "control socket not started: `sealpipe status` cannot reach this daemon");
        }
    }
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
                let status = match build(path) {
                    Ok(built) => {
                        log_config_warnings(&built);
                        let problems = daemon.reload(built).await;
                        if problems.is_empty() {
                            daemon.registry.reloaded("ok", Vec::new());
                            tracing::info!(config = %path.display(), "configuration reloaded");
                            "running; configuration reloaded".to_string()
                        } else {
                            let what = problems.join("; ");
                            daemon.registry.reloaded("incomplete", problems);
                            tracing::error!(config = %path.display(), problems = %what,
                                "reload incomplete: {what}");
                            format!("running; reload incomplete: {what}")
                        }
                    }
                    Err(e) => {
                        daemon.registry.reloaded("failed", vec![format!("{e:#}")]);
                        tracing::error!(config = %path.display(), error = %format!("{e:#}"),
                            "reload failed, keeping the running configuration");
                        format!("running; reload failed, previous configuration kept: {e:#}")
                    }
                };
                let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
            }
        }
    }
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    tracing::info!("stopping: no new connections");
    daemon.shutdown().await;
    tracing::info!(config = %path.display(), "stopped");
    Ok(())
}
