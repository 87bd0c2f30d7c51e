//! What `sealpipe status` shows: a snapshot of every running tunnel and its open connections,
//! as the daemon serves it on its control socket (JSON, one object) and the command prints it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::daemon::metrics::TunnelEntry;

/// The whole daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Status {
    /// `sealpipe --version` of the daemon.
    pub(crate) version: String,
    /// Its process id.
    pub(crate) pid: u32,
    /// The config file it runs.
    pub(crate) config: String,
    /// Seconds since it started.
    pub(crate) uptime_secs: u64,
    /// Every running tunnel, listeners first.
    pub(crate) tunnels: Vec<TunnelStatus>,
    /// The address the metrics endpoint is bound to, if it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) metrics: Option<String>,
}

/// One tunnel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TunnelStatus {
    pub(crate) name: String,
    /// `listener` or `connector`.
    pub(crate) role: String,
    /// The `listen` address as configured.
    pub(crate) listen: String,
    /// The address actually bound.
    pub(crate) local: String,
    /// Connections accepted since start (carried across reloads).
    pub(crate) accepted: u64,
    pub(crate) handshakes_ok: u64,
    pub(crate) handshakes_failed: u64,
    pub(crate) resumed: u64,
    /// Failed handshakes by reason.
    pub(crate) failures: BTreeMap<String, u64>,
    /// The established connections, oldest first.
    pub(crate) connections: Vec<ConnStatus>,
}

/// One established connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ConnStatus {
    /// The peer address (or Unix client).
    pub(crate) peer: String,
    /// The other side's key.
    pub(crate) fingerprint: String,
    /// Its name in the peers list, if any.
    pub(crate) peer_name: Option<String>,
    pub(crate) age_secs: f64,
    /// Plaintext bytes sent to the peer and received from it.
    pub(crate) sent: u64,
    pub(crate) received: u64,
    /// Key generations (rekeys) each way: how many times each direction has ratcheted.
    pub(crate) generation_sent: u64,
    pub(crate) generation_received: u64,
    /// Whether the handshake was a resumption.
    pub(crate) resumed: bool,
}

impl Status {
    /// The snapshot of `tunnels` and the metrics endpoint's address at `now`.
    pub(crate) fn of(
        tunnels: &[TunnelEntry],
        metrics: Option<String>,
        config: String,
        started: Instant,
        now: Instant,
    ) -> Status {
        let mut tunnels: Vec<TunnelStatus> = tunnels.iter().map(|t| tunnel(t, now)).collect();
        tunnels.sort_by(|a, b| (b.role.as_str(), &a.name).cmp(&(a.role.as_str(), &b.name)));
        Status {
            version: crate::VERSION.to_string(),
            pid: std::process::id(),
            config,
            uptime_secs: now.saturating_duration_since(started).as_secs(),
            tunnels,
            metrics,
        }
    }
}

fn tunnel(t: &TunnelEntry, now: Instant) -> TunnelStatus {
    let c = &t.state.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let failures = t
        .state
        .failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    let connections = t
        .state
        .open
        .list()
        .iter()
        .map(|conn| ConnStatus {
            peer: conn.peer.clone(),
            fingerprint: conn.fingerprint.to_string(),
            peer_name: t
                .trust
                .as_ref()
                .and_then(|tl| tl.name_of(&conn.fingerprint))
                .map(str::to_string),
            age_secs: now.saturating_duration_since(conn.opened).as_secs_f64(),
            sent: load(&conn.stats.sent),
            received: load(&conn.stats.received),
            generation_sent: load(&conn.stats.rekeys_sent),
            generation_received: load(&conn.stats.rekeys_received),
            resumed: conn.resumed,
        })
        .collect();
    TunnelStatus {
        name: t.name.clone(),
        role: t.role.to_string(),
        listen: t.listen.clone(),
        local: t.local.clone(),
        accepted: load(&c.accepted),
        handshakes_ok: load(&c.handshakes_ok),
        handshakes_failed: load(&c.handshakes_failed),
        resumed: load(&c.resumed),
        failures,
        connections,
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `3.2 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// An age for people: `42s`, `5m 3s`, `2h 10m`, `3d 4h`.
fn age(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

impl std::fmt::Display for Status {
    /// The human form, in the manner of `wg show`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "sealpipe {} (pid {}), config {}, up {}",
            self.version,
            self.pid,
            self.config,
            age(self.uptime_secs as f64)
        )?;
        if let Some(m) = &self.metrics {
            writeln!(f, "metrics on {m}")?;
        }
        for t in &self.tunnels {
            writeln!(f)?;
            write!(f, "{} {:?}: listening on {}", t.role, t.name, t.local)?;
            if t.local != t.listen {
                write!(f, " (listen = {})", t.listen)?;
            }
            writeln!(f)?;
            writeln!(
                f,
                "  accepted {}, handshakes ok {} (resumed {}), failed {}",
                t.accepted, t.handshakes_ok, t.resumed, t.handshakes_failed
            )?;
            if !t.failures.is_empty() {
                let list: Vec<String> =
                    t.failures.iter().map(|(k, v)| format!("{k} {v}")).collect();
                writeln!(f, "  failures: {}", list.join(", "))?;
            }
            if t.connections.is_empty() {
                writeln!(f, "  no open connections")?;
            }
            for c in &t.connections {
                let name = c
                    .peer_name
                    .as_deref()
                    .map_or_else(String::new, |n| format!(" ({n})"));
                writeln!(
                    f,
                    "  {}  {}{}  age {}  sent {}  received {}  generation {}/{}{}",
                    c.peer,
                    c.fingerprint,
                    name,
                    age(c.age_secs),
                    bytes(c.sent),
                    bytes(c.received),
                    c.generation_sent,
                    c.generation_received,
                    if c.resumed { "  resumed" } else { "" }
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_well() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(age(59.9), "59s");
        assert_eq!(age(61.0), "1m 1s");
        assert_eq!(age(7300.0), "2h 1m");
        assert_eq!(age(90000.0), "1d 1h");
    }
}
