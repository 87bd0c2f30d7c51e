//! `sealpipe check --config FILE [--no-bind]`: loads the config and every key and peers file it
//! names, as `run` would, then tries what it can without side effects, and says OK or what is
//! wrong (exit status 1):
//!
//! * each `listen` address (the tunnels' and `[metrics]`): its host name resolved, and the
//!   address bound for a moment and let go (with SO_REUSEADDR, as the daemon binds), so that a
//!   port in use or a privileged port without the capability shows now rather than at start.
//!   `--no-bind` skips the binding. The addresses that the daemon running this config holds
//!   (as its control socket reports them: `sealpipe status`) are not tried, so that the unit's
//!   `ExecReload=` check passes while the daemon runs;
//! * a `unix:` listen socket: its directory exists and this user may create files in it;
//! * `forward` and `connect` host names resolve, and a `unix:` forward target exists: a
//!   warning only, since they are looked up anew for every connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::addr::Address;
use crate::cmd::status::{fetch, Which};
use crate::config::{Config, Control};
use crate::daemon::{self, control};
use crate::proto::messages::PROTOCOL_VERSION;

/// How long one host name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The listening sockets of the daemon that runs this config, from its control socket.
struct Held {
    pid: u32,
    tcp: Vec<SocketAddr>,
}

/// What the probes found: errors fail the check, warnings do not.
#[derive(Default)]
struct Findings {
    errors: Vec<String>,
    warnings: Vec<String>,
    /// Listen addresses not bound because the running daemon holds them.
    skipped: Vec<String>,
}

pub(crate) fn run(config: &Path, no_bind: bool) -> anyhow::Result<bool> {
    let built = daemon::build(config)?;
    let held = if no_bind {
        None
    } else {
        held_by_running_daemon(&built.config)
    };
    let runtime = super::runtime()?;
    let found = runtime.block_on(probe(&built.config, no_bind, held.as_ref()));
    // A lookup that timed out still holds a blocking thread: do not wait for it.
    runtime.shutdown_background();
    for w in built.config.warnings.iter().chain(&found.warnings) {
        eprintln!("sealpipe: warning: {w}");
    }
    for e in &found.errors {
        eprintln!("sealpipe: error: {e}");
    }
    if !found.errors.is_empty() {
        return Ok(false);
    }
    if let (Some(h), false) = (&held, found.skipped.is_empty()) {
        println!(
            "{}: held by the running daemon (pid {}), not tried: {}",
            config.display(),
            h.pid,
            found.skipped.join(", ")
        );
    }
    println!(
        "{}: OK (protocol {PROTOCOL_VERSION}): {} listener(s), {} connector(s); identity {}",
        config.display(),
        built.listeners.len(),
        built.connectors.len(),
        identity(&built)
    );
    Ok(true)
}

/// The TCP addresses the daemon of `config` listens on, if one answers on its control socket.
fn held_by_running_daemon(config: &Config) -> Option<Held> {
    let socket = control::socket_of(config)?;
    let status = fetch(&Which {
        config: None,
        socket: Some(&socket),
    })
    .ok()?;
    let locals = status.tunnels.iter().map(|t| t.local.as_str());
    let tcp = locals
        .chain(status.metrics.as_deref())
        .filter_map(|l| l.parse().ok())
        .collect();
    Some(Held {
        pid: status.pid,
        tcp,
    })
}

/// A listen address to try, with what to call it in messages.
struct Listen<'a> {
    /// `listener "x"`, `[metrics]`.
    ctx: String,
    addr: &'a Address,
    /// Where its value is in the file.
    table: &'static str,
    index: Option<usize>,
}

async fn probe(config: &Config, no_bind: bool, held: Option<&Held>) -> Findings {
    let mut found = Findings::default();
    let mut listens = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let ctx = format!("listener {:?}", l.name);
        listens.push(Listen {
            ctx: ctx.clone(),
            addr: &l.listen,
            table: "listener",
            index: Some(i),
        });
        if let Some(forward) = &l.forward {
            later_target(&mut found, &ctx, "forward", forward).await;
        }
    }
    for (i, c) in config.connectors.iter().enumerate() {
        let ctx = format!("connector {:?}", c.name);
        listens.push(Listen {
            ctx: ctx.clone(),
            addr: &c.listen,
            table: "connector",
            index: Some(i),
        });
        later_target(&mut found, &ctx, "connect", &c.connect).await;
    }
    if let Some(m) = &config.metrics {
        listens.push(Listen {
            ctx: "[metrics]".to_string(),
            addr: &m.listen,
            table: "metrics",
            index: None,
        });
    }
    for l in &listens {
        let at = |problem: String| {
            format!(
                "{}: {}: key `listen`: {}: {problem}",
                config.location_of(l.table, l.index, "listen"),
                l.ctx,
                l.addr
            )
        };
        if let Address::Systemd(_) = l.addr {
            // systemd binds it and passes it at start: nothing to try here.
            continue;
        }
        if let Address::Unix(path) = l.addr {
            if let Err(problem) = socket_directory(path) {
                found.errors.push(at(problem));
            }
            continue;
        }
        let addrs = match resolve(l.addr).await {
            Ok(a) => a,
            Err(e) => {
                found.errors.push(at(format!("cannot resolve: {e}")));
                continue;
            }
        };
        if no_bind {
            continue;
        }
        if held.is_some_and(|h| addrs.iter().any(|a| h.tcp.contains(a))) {
            found.skipped.push(format!("{} {}", l.ctx, l.addr));
            continue;
        }
        if let Err(e) = bind_briefly(&addrs) {
            let control_off = matches!(config.control, Control::Off);
            found.errors.push(at(bind_problem(&e, l.addr, control_off)));
        }
    }
    found
}

/// Resolves `addr` as the daemon does, within [`RESOLVE_TIMEOUT`].
async fn resolve(addr: &Address) -> std::io::Result<Vec<SocketAddr>> {
    tokio::time::timeout(RESOLVE_TIMEOUT, addr.resolve())
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {RESOLVE_TIMEOUT:?}"),
            ))
        })
}

/// A `forward` or `connect` target, looked up for each connection: a warning if it cannot be
/// reached by name (or, for a Unix socket, does not exist) now.
async fn later_target(found: &mut Findings, ctx: &str, key: &str, addr: &Address) {
    match addr {
        Address::Host { .. } => {
            if let Err(e) = resolve(addr).await {
                found.warnings.push(format!(
                    "{ctx}: {key} {addr}: does not resolve now ({e}); it is looked up again for each connection"
                ));
            }
        }
        Address::Unix(path) if !path.exists() => found.warnings.push(format!(
            "{ctx}: {key} {addr}: no socket there yet; connections fail until it exists"
        )),
        _ => {}
    }
}

/// Binds the first of `addrs` that can be bound, as the daemon would, and lets it go at once:
/// no `listen`, so no connection can arrive meanwhile. Returns the last error if none can.
fn bind_briefly(addrs: &[SocketAddr]) -> std::io::Result<()> {
    let mut last = None;
    for sa in addrs {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(*sa),
            socket2::Type::STREAM,
            None,
        )?;
        // tokio's TcpListener::bind, which the daemon uses, sets SO_REUSEADDR.
        socket.set_reuse_address(true)?;
        match socket.bind(&(*sa).into()) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("resolves to no address")))
}

/// What a failed bind of `addr` means, and what to do about it.
fn bind_problem(e: &std::io::Error, addr: &Address, control_off: bool) -> String {
    use std::io::ErrorKind;
    let what = match e.kind() {
        ErrorKind::AddrInUse => {
            let hint = if control_off {
                " (with `control = false`, check cannot ask a running daemon which ports it holds)"
            } else {
                ""
            };
            format!(
                "address in use — another process (a running sealpipe for this config?) holds it{hint}"
            )
        }
        ErrorKind::PermissionDenied if addr.port() < 1024 => {
            "permission denied — a port below 1024 needs root or CAP_NET_BIND_SERVICE (see the systemd unit)".to_string()
        }
        ErrorKind::AddrNotAvailable => {
            "address not available — no interface of this host has that address".to_string()
        }
        _ => e.to_string(),
    };
    format!("{what}; use --no-bind to skip this check")
}

/// The directory of a `unix:` listen socket must exist and let this user create the socket.
fn socket_directory(path: &Path) -> Result<(), String> {
    use nix::unistd::{access, AccessFlags};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "the directory {} does not exist (under systemd, RuntimeDirectory= can make it)",
            dir.display()
        ));
    }
    access(&dir, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|e| {
        format!(
            "cannot create the socket in {}: {} (uid {})",
            dir.display(),
            e.desc(),
            nix::unistd::geteuid()
        )
    })
}

/// The fingerprint of `private_key` and, on a listener that also holds a `next_private_key`,
/// that one's too.
fn identity(built: &daemon::Built) -> String {
    if let Some((_, t)) = built.listeners.first() {
        let own = t.params.identity.public().fingerprint();
        return match &t.params.next_identity {
            Some(next) => format!("{own}; next_private_key {}", next.public().fingerprint()),
            None => own.to_string(),
        };
    }
    built
        .connectors
        .first()
        .map(|(_, t)| t.params.identity.public().fingerprint().to_string())
        .unwrap_or_default()
}
