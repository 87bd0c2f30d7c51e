//! Prometheus metrics: the per-tunnel numbers in text exposition format 0.0.4, served by a
//! minimal HTTP/1.x responder on the opt-in `[metrics] listen` address.
//!
//! Only `GET /metrics` is answered (200); any other path is a 404, another method a 405, and a
//! request that is malformed, too large (over [`MAX_REQUEST`] bytes) or too slow (over
//! [`REQUEST_TIMEOUT`]) a 400 or a plain close. Each connection carries one request and is
//! closed after the answer; at most [`MAX_SCRAPERS`] are served at once, more are closed at
//! once. Every metric has the labels `tunnel` (its name) and `role` (`listener` or
//! `connector`); counters live in [`TunnelState`] and survive reloads.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::daemon::responder;
use crate::proto::handshake::Role;
use crate::proto::identity::TrustList;
use crate::tunnel::state::{TunnelState, HANDSHAKE_BUCKETS};

/// Largest request head read (request line and headers).
pub(crate) const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request and read the answer.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrape connections served at once.
pub(crate) const MAX_SCRAPERS: usize = 16;

/// A running tunnel as the metrics see it.
#[derive(Debug, Clone)]
pub(crate) struct TunnelEntry {
    /// `listener` or `connector`.
    pub role: Role,
    /// The tunnel's name.
    pub name: String,
    /// Its counters.
    pub state: Arc<TunnelState>,
    /// Its `listen` address as configured, and the address bound.
    pub listen: String,
    pub local: String,
    /// A listener's trust list, for the names of its peers.
    pub trust: Option<Arc<TrustList>>,
}

/// The tunnels to report, replaced by the daemon after its start and each reload.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    tunnels: RwLock<Vec<TunnelEntry>>,
    /// The address the metrics endpoint is bound to, if it runs (for `status`).
    metrics_local: RwLock<Option<String>>,
    /// Reloads (SIGHUP) by outcome.
    pub(crate) reloads: Reloads,
}

/// Reloads by outcome: applied whole, applied in part (a tunnel could not be started or moved),
/// or refused (the new config did not load; the running one stays).
#[derive(Debug, Default)]
pub(crate) struct Reloads {
    pub(crate) ok: AtomicU64,
    pub(crate) incomplete: AtomicU64,
    pub(crate) failed: AtomicU64,
}

impl Registry {
    /// Replaces the list of tunnels.
    pub(crate) fn set(&self, tunnels: Vec<TunnelEntry>) {
        *self.tunnels.write().unwrap_or_else(|e| e.into_inner()) = tunnels;
    }

    /// Records where the metrics endpoint listens now (`None`: it does not run).
    pub(crate) fn set_metrics_local(&self, local: Option<String>) {
        *self
            .metrics_local
            .write()
            .unwrap_or_else(|e| e.into_inner()) = local;
    }

    /// Where the metrics endpoint listens now.
    pub(crate) fn metrics_local(&self) -> Option<String> {
        self.metrics_local
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The tunnels now.
    pub(crate) fn tunnels(&self) -> Vec<TunnelEntry> {
        self.tunnels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The exposition text of every tunnel, and of the daemon's reloads.
    pub(crate) fn render(&self) -> String {
        let mut out = render(&self.tunnels());
        let r = &self.reloads;
        let _ = writeln!(out, "# HELP sealpipe_reloads_total Reloads (SIGHUP) by outcome: ok, incomplete (part of the config could not be applied), failed (the config did not load).");
        let _ = writeln!(out, "# TYPE sealpipe_reloads_total counter");
        for (result, n) in [
            ("ok", &r.ok),
            ("incomplete", &r.incomplete),
            ("failed", &r.failed),
        ] {
            let _ = writeln!(
                out,
                "sealpipe_reloads_total{{outcome=\"{result}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        out
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Prometheus text for `tunnels`.
pub(crate) fn render(tunnels: &[TunnelEntry]) -> String {
    let mut out = String::new();
    let labels = |t: &TunnelEntry| format!("tunnel=\"{}\",role=\"{}\"", escape(&t.name), t.role);
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    type Get = fn(&TunnelState) -> u64;
    let simple: [(&str, &str, &str, Get); 16] = [
        (
            "sealpipe_connections_open",
            "gauge",
            "Connections open (handshaking or established).",
            |s| s.connections.current() as u64,
        ),
        (
            "sealpipe_handshakes_in_progress",
            "gauge",
            "Handshakes holding a handshake slot.",
            |s| s.handshakes.current() as u64,
        ),
        (
            "sealpipe_handshakes_awaiting_auth",
            "gauge",
            "Listener: connections whose handshake answer is sent, waiting for the connector's last message (no handshake slot held).",
            |s| s.awaiting_auth.current() as u64,
        ),
        (
            "sealpipe_signing_queued",
            "gauge",
            "Listener: hellos waiting for a signature in the signing queue.",
            |s| s.signing.queued() as u64,
        ),
        (
            "sealpipe_signatures_total",
            "counter",
            "Listener: RSA signatures made for full handshakes.",
            |s| s.counters.signatures.load(Ordering::Relaxed),
        ),
        (
            "sealpipe_connections_total",
            "counter",
            "Connections accepted, including those then dropped by a limit.",
            |s| s.counters.accepted.load(Ordering::Relaxed),
        ),
        (
            "sealpipe_bytes_sent_total",
            "counter",
            "Plaintext bytes sealed and sent to the peer (local clients or target to peer).",
            |s| s.traffic.sent.load(Ordering::Relaxed),
        ),
        (
            "sealpipe_bytes_received_total",
            "counter",
            "Plaintext bytes received from the peer and delivered locally.",
            |s| s.traffic.received.load(Ordering::Relaxed),
        ),
        (
            "sealpipe_rekeys_total",
            "counter",
            "Rekey records sent and received.",
            |s| s.traffic.rekeys.load(Ordering::Relaxed),
        ),
        (
            "sealpipe_resumptions_total",
            "counter",
            "Handshakes that resumed an earlier session.",
            |s| s.counters.resumed.load(Ordering::Relaxed),
        ),
        (
            "sealpipe_mac1_rejected_total",
            "counter",
            "Connector hellos without a valid mac1, dropped before any work (listener).",
            |s| s.counters.mac1_rejected.load(Ordering::Relaxed),
        ),
        (
            "sealpipe_streams_total",
            "counter",
            "Client streams carried (one per client connection; with session reuse, several per session: streams per session = this / sealpipe_handshakes_total ok).",
            |s| s.counters.streams.load(Ordering::Relaxed),
        ),
        (
            "sealpipe_streams_reused_total",
            "counter",
            "Streams carried by a session that had carried another before (session reuse).",
            |s| s.counters.streams_reused.load(Ordering::Relaxed),
        ),
        (
            "sealpipe_pool_hits_total",
            "counter",
            "Clients served by a warm session from the pool, with no handshake on their path (connector).",
            |s| s.counters.pool_hits.load(Ordering::Relaxed),
        ),
        (
            "sealpipe_pool_misses_total",
            "counter",
            "Clients that found the pool empty and waited for a handshake of their own (connector).",
            |s| s.counters.pool_misses.load(Ordering::Relaxed),
        ),
        (
            "sealpipe_pool_sessions",
            "gauge",
            "Warm sessions waiting in the pool (connector).",
            |s| s.pool.len() as u64,
        ),
    ];
    for (name, kind, help, get) in simple {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for t in tunnels {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(t), get(&t.state));
        }
    }

    let name = "sealpipe_connections_dropped_total";
    let _ = writeln!(
        out,
        "# HELP {name} Connections dropped at accept, by limit.\n# TYPE {name} counter"
    );
    for t in tunnels {
        let c = &t.state.counters;
        for (reason, v) in [
            ("rate_limit", load(&c.rate_limited)),
            ("max_connections", load(&c.over_limit)),
        ] {
            let _ = writeln!(out, "{name}{{{},reason=\"{reason}\"}} {v}", labels(t));
        }
    }

    let name = "sealpipe_handshakes_total";
    let _ = writeln!(
        out,
        "# HELP {name} Handshakes by result, and failures by reason.\n# TYPE {name} counter"
    );
    for t in tunnels {
        let ok = load(&t.state.counters.handshakes_ok);
        let _ = writeln!(out, "{name}{{{},result=\"ok\"}} {ok}", labels(t));
        let failures = t
            .state
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (reason, v) in failures {
            let _ = writeln!(
                out,
                "{name}{{{},result=\"failed\",reason=\"{reason}\"}} {v}",
                labels(t)
            );
        }
    }

    let name = "sealpipe_handshake_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time from accept to an established session, of successful handshakes.\n# TYPE {name} histogram"
    );
    for t in tunnels {
        let h = &t.state.handshake_seconds;
        let l = labels(t);
        let mut cumulative = 0;
        for (bound, b) in HANDSHAKE_BUCKETS.iter().zip(&h.buckets) {
            cumulative += load(b);
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"{bound}\"}} {cumulative}");
        }
        let count = load(&h.count);
        let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {count}");
        let sum = load(&h.sum_nanos) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{l}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{l}}} {count}");
    }
    out
}

/// Serves `registry` on `listener` until `stop`.
pub(crate) async fn serve(listener: TcpListener, registry: Arc<Registry>, stop: CancellationToken) {
    responder::serve(
        listener,
        "metrics",
        MAX_SCRAPERS,
        REQUEST_TIMEOUT,
        stop,
        move |stream| {
            let registry = registry.clone();
            async move {
                let _ = answer(stream, &registry).await;
            }
        },
    )
    .await
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let head_end = loop {
        if let Some(i) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            break Some(i);
        }
        if len == buf.len() {
            break None;
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break None;
        }
        len += n;
    };
    let (status, body) = match head_end {
        None => ("400 Bad Request", String::from("bad request\n")),
        Some(end) => route(&buf[..end], registry),
    };
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    // Lingering close: read what the client still sends (a request cut at the size limit)
    // until it closes, so that closing with unread data does not reset the connection before
    // the client has read the answer. Bounded by the caller's timeout and here by size.
    let mut discarded = 0;
    while discarded < 64 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => discarded += n,
        }
    }
    Ok(())
}

/// The status and body for a request head.
fn route(head: &[u8], registry: &Registry) -> (&'static str, String) {
    let Ok(head) = std::str::from_utf8(head) else {
        return ("400 Bad Request", "bad request\n".into());
    };
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return ("400 Bad Request", "bad request\n".into());
    };
    if !version.starts_with("HTTP/1.") {
        return ("400 Bad Request", "bad request\n".into());
    }
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return ("404 Not Found", "not found: try /metrics\n".into());
    }
    if method != "GET" {
        return ("405 Method Not Allowed", "only GET\n".into());
    }
    ("200 OK", registry.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_labels_escaped() {
        let state = Arc::new(TunnelState::default());
        state.handshake_ok(Duration::from_micros(50));
        state.handshake_ok(Duration::from_millis(3));
        state.handshake_ok(Duration::from_secs(20));
        let text = render(&[TunnelEntry {
            role: Role::Listener,
            name: "a\"b\\c".into(),
            state,
            listen: String::new(),
            local: String::new(),
            trust: None,
        }]);
        let l = r#"tunnel="a\"b\\c",role="listener""#;
        for (le, n) in [
            ("0.0001", 1),
            ("0.0025", 1),
            ("0.005", 2),
            ("10", 2),
            ("+Inf", 3),
        ] {
            let line = format!("sealpipe_handshake_duration_seconds_bucket{{{l},le=\"{le}\"}} {n}");
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        assert!(text.contains(&format!("sealpipe_handshakes_total{{{l},result=\"ok\"}} 3")));
        assert!(text.contains(&format!(
            "sealpipe_handshake_duration_seconds_count{{{l}}} 3"
        )));
    }

    #[test]
    fn routes() {
        let r = Registry::default();
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x", &r).0, "200 OK");
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0", &r).0, "200 OK");
        assert_eq!(route(b"GET / HTTP/1.1", &r).0, "404 Not Found");
        assert_eq!(
            route(b"POST /metrics HTTP/1.1", &r).0,
            "405 Method Not Allowed"
        );
        assert_eq!(route(b"junk", &r).0, "400 Bad Request");
        assert_eq!(route(b"GET /metrics SSH-2.0", &r).0, "400 Bad Request");
        assert_eq!(route(&[0xff, 0xfe], &r).0, "400 Bad Request");
    }
}
