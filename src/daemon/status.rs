//! What `sealpipe status` shows: a snapshot of every running tunnel and its open connections,
//! as the daemon serves it on its control socket (JSON, one object) and the command prints it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::daemon::metrics::{Registry, TunnelEntry};
use crate::proto::handshake::Role;

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
    /// Tunnels of the config that do not run: a reload could not start them.
    #[serde(default)]
    pub(crate) not_started: Vec<NotStartedStatus>,
    /// The last reload (SIGHUP), if there was one since the start.
    #[serde(default)]
    pub(crate) last_reload: Option<ReloadStatus>,
}

/// A tunnel of the config that does not run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct NotStartedStatus {
    pub(crate) name: String,
    /// `listener` or `connector`.
    pub(crate) role: String,
    /// The `listen` address as configured.
    pub(crate) listen: String,
    /// Why it could not start.
    pub(crate) error: String,
}

/// How the last reload went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReloadStatus {
    /// `ok`, `incomplete` (part of the config could not be applied) or `failed` (the config did
    /// not load; the running one stays).
    pub(crate) outcome: String,
    /// What could not be applied, or why the config did not load; empty when `ok`.
    pub(crate) problems: Vec<String>,
    /// When, in seconds since the Unix epoch.
    pub(crate) at_unix: u64,
    /// How long ago, in seconds.
    pub(crate) ago_secs: u64,
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
    /// Connector: sessions the listener refused after authenticating this connector, by
    /// reason (`untrusted`: this connector's key is not in its peers; `service`: it does not
    /// serve this `service`). Always 0 on a listener, which counts refusals in `failures`.
    #[serde(default)]
    pub(crate) refused: BTreeMap<String, u64>,
    /// Every live sealed session (warm, idle between streams, or carrying a stream), oldest
    /// first.
    #[serde(default)]
    pub(crate) sessions: Vec<SessionStatus>,
}

/// One live sealed session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SessionStatus {
    /// Its id, as on its log lines (`session=`).
    pub(crate) id: u64,
    /// `warm` (never carried a stream), `idle` (between streams) or `active` (carrying one).
    pub(crate) state: String,
    /// The peer's address: the connector's on a listener, the listener's on a connector.
    pub(crate) peer: String,
    /// The key the peer proved: the connector's on a listener, the listener's on a connector.
    pub(crate) fingerprint: String,
    /// Its name: the listener's peers list, or a connector's `pin N of M`.
    pub(crate) peer_name: Option<String>,
    /// Listener with a `next_private_key`: which of its own keys the session was made under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) key: Option<String>,
    pub(crate) age_secs: f64,
    /// Client streams carried, the one it carries included.
    pub(crate) streams: u64,
    /// Key generation: rekeys so far, both directions, all its streams.
    pub(crate) generation: u64,
    /// Plaintext bytes sent and received, all its streams.
    pub(crate) sent: u64,
    pub(crate) received: u64,
    /// Whether its handshake was a resumption (else a full handshake).
    pub(crate) resumed: bool,
    /// Seconds since a record last came from the peer (its handshake counts).
    pub(crate) last_heard_secs: f64,
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
        registry: &Registry,
        config: String,
        started: Instant,
        now: Instant,
    ) -> Status {
        let mut tunnels: Vec<TunnelStatus> =
            registry.tunnels().iter().map(|t| tunnel(t, now)).collect();
        tunnels.sort_by(|a, b| (b.role.as_str(), &a.name).cmp(&(a.role.as_str(), &b.name)));
        let mut not_started: Vec<NotStartedStatus> = registry
            .not_started()
            .into_iter()
            .map(|n| NotStartedStatus {
                name: n.name,
                role: n.role.to_string(),
                listen: n.listen,
                error: n.error,
            })
            .collect();
        not_started.sort_by(|a, b| (b.role.as_str(), &a.name).cmp(&(a.role.as_str(), &b.name)));
        let last_reload = registry.last_reload().map(|r| ReloadStatus {
            outcome: r.outcome.to_string(),
            problems: r.problems,
            at_unix: r
                .at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            ago_secs: now.saturating_duration_since(r.when).as_secs(),
        });
        Status {
            version: crate::VERSION.to_string(),
            pid: std::process::id(),
            config,
            uptime_secs: now.saturating_duration_since(started).as_secs(),
            tunnels,
            metrics: registry.metrics_local(),
            not_started,
            last_reload,
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
    let sessions = t
        .state
        .live
        .list()
        .iter()
        .map(|e| SessionStatus {
            id: e.id,
            state: e.state().as_str().to_string(),
            peer: e.peer.clone(),
            fingerprint: e.fingerprint.to_string(),
            peer_name: t
                .trust
                .as_ref()
                .and_then(|tl| tl.name_of(&e.fingerprint))
                .map(str::to_string),
            key: e.own_key.map(|k| k.to_string()),
            age_secs: now.saturating_duration_since(e.born).as_secs_f64(),
            streams: e.streams(),
            generation: load(&e.traffic.traffic.rekeys),
            sent: load(&e.traffic.traffic.sent),
            received: load(&e.traffic.traffic.received),
            resumed: e.resumed,
            last_heard_secs: e.last_heard(now).as_secs_f64(),
        })
        .collect();
    let refused = match t.role {
        Role::Connector => [
            ("untrusted", load(&c.refused_untrusted)),
            ("service", load(&c.refused_service)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        Role::Listener => BTreeMap::new(),
    };
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
        refused,
        sessions,
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
            if t.refused.values().any(|n| *n > 0) {
                let list: Vec<String> = t.refused.iter().map(|(k, v)| format!("{k} {v}")).collect();
                writeln!(f, "  refused by the listener: {}", list.join(", "))?;
            }
            let count = |state: &str| t.sessions.iter().filter(|s| s.state == state).count();
            writeln!(
                f,
                "  sessions {}: {} warm, {} idle, {} active",
                t.sessions.len(),
                count("warm"),
                count("idle"),
                count("active")
            )?;
            for s in &t.sessions {
                let name = s
                    .peer_name
                    .as_deref()
                    .map_or_else(String::new, |n| format!(" ({n})"));
                let key = s
                    .key
                    .as_deref()
                    .map_or_else(String::new, |k| format!("  key {k}"));
                writeln!(
                    f,
                    "    session {}  {:<6}  {}  {}{}{}  age {}  streams {}  generation {}  heard {} ago  {}",
                    s.id,
                    s.state,
                    s.peer,
                    s.fingerprint,
                    name,
                    key,
                    age(s.age_secs),
                    s.streams,
                    s.generation,
                    age(s.last_heard_secs),
                    if s.resumed { "resumed" } else { "full handshake" }
                )?;
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
        for n in &self.not_started {
            writeln!(f)?;
            writeln!(
                f,
                "{} {:?}: NOT STARTED (listen = {}): {}",
                n.role, n.name, n.listen, n.error
            )?;
        }
        if let Some(r) = &self.last_reload {
            writeln!(f)?;
            write!(
                f,
                "last reload {} ago: {}",
                age(r.ago_secs as f64),
                r.outcome
            )?;
            if !r.problems.is_empty() {
                write!(f, ": {}", r.problems.join("; "))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_human_form_shows_sessions_tunnels_not_started_and_the_last_reload() {
        let session = SessionStatus {
            id: 7,
            state: "warm".into(),
            peer: "192.0.2.1:4000".into(),
            fingerprint: "SHA256:abc".into(),
            peer_name: Some("site-a".into()),
            key: None,
            age_secs: 61.0,
            streams: 0,
            generation: 2,
            sent: 0,
            received: 0,
            resumed: true,
            last_heard_secs: 3.0,
        };
        let status = Status {
            version: "0".into(),
            pid: 1,
            config: "c.toml".into(),
            uptime_secs: 5,
            tunnels: vec![TunnelStatus {
                name: "web".into(),
                role: "listener".into(),
                listen: "0.0.0.0:443".into(),
                local: "0.0.0.0:443".into(),
                accepted: 1,
                handshakes_ok: 1,
                handshakes_failed: 0,
                resumed: 1,
                failures: BTreeMap::new(),
                connections: Vec::new(),
                refused: BTreeMap::new(),
                sessions: vec![session],
            }],
            metrics: None,
            not_started: vec![NotStartedStatus {
                name: "second".into(),
                role: "listener".into(),
                listen: "0.0.0.0:444".into(),
                error: "address in use".into(),
            }],
            last_reload: Some(ReloadStatus {
                outcome: "incomplete".into(),
                problems: vec!["tunnel second not started".into()],
                at_unix: 1_700_000_000,
                ago_secs: 90,
            }),
        };
        let text = status.to_string();
        for want in [
            "  sessions 1: 1 warm, 0 idle, 0 active\n",
            "    session 7  warm    192.0.2.1:4000  SHA256:abc (site-a)  age 1m 1s  streams 0  generation 2  heard 3s ago  resumed\n",
            "listener \"second\": NOT STARTED (listen = 0.0.0.0:444): address in use\n",
            "last reload 1m 30s ago: incomplete: tunnel second not started\n",
        ] {
            assert!(text.contains(want), "{want:?} in:\n{text}");
        }
        // An older daemon's answer, without the fields added since, still reads.
        let old = r#"{"version":"0","pid":1,"config":"c","uptime_secs":1,"tunnels":[{"name":"t","role":"listener","listen":"a","local":"a","accepted":0,"handshakes_ok":0,"handshakes_failed":0,"resumed":0,"failures":{},"connections":[]}]}"#;
        let parsed: Status = serde_json::from_str(old).unwrap();
        assert!(parsed.tunnels[0].sessions.is_empty() && parsed.last_reload.is_none());
    }

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
