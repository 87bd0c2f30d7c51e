//! Prometheus metrics: the per-tunnel numbers in text exposition format 0.0.4, encoded by
//! `prometheus-client` and served by a minimal HTTP/1.x responder on the opt-in
//! `[metrics] listen` address.
//!
//! The numbers stay where the connections count them, in the atomics of [`TunnelState`] and
//! [`Reloads`]: nothing is registered with `prometheus-client` ahead of time, and the data path
//! does no work for the metrics beyond those atomics. Each scrape takes a [`Scrape`] (the
//! tunnels running then) and hands it to `prometheus-client` as a [`Collector`], which reads
//! the atomics while it encodes.
//!
//! Only `GET /metrics` is answered (200); any other path is a 404, another method a 405, and a
//! request head that `httparse` refuses, that is too large (over [`MAX_REQUEST`] bytes or
//! [`MAX_HEADERS`] headers) or too slow (over [`REQUEST_TIMEOUT`]) a 400 or a plain close. Each
//! connection carries one request and is closed after the answer; at most [`MAX_SCRAPERS`] are
//! served at once, more are closed at once. Every metric has the labels `tunnel` (its name)
//! and `role` (`listener` or `connector`), except `sealpipe_reloads_total`; counters live in
//! [`TunnelState`] and survive reloads. The table of metrics in docs/operations.md is checked
//! against the HELP lines below by a unit test.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::daemon::responder;
use crate::proto::handshake::Role;
use crate::proto::identity::TrustList;
use crate::tunnel::sessions::SessionState;
use crate::tunnel::state::{TunnelState, HANDSHAKE_BUCKETS};

/// Largest request head read (request line and headers).
pub(crate) const MAX_REQUEST: usize = 8 * 1024;
/// Most header lines in a request head.
pub(crate) const MAX_HEADERS: usize = 32;
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
    pub(crate) reloads: Arc<Reloads>,
    /// The tunnels of the config that do not run (a reload could not start them), for `status`.
    not_started: RwLock<Vec<NotStarted>>,
    /// The last reload's outcome, for `status`.
    last_reload: RwLock<Option<LastReload>>,
}

/// A tunnel of the config that does not run: a reload could not start it.
#[derive(Debug, Clone)]
pub(crate) struct NotStarted {
    pub(crate) role: Role,
    pub(crate) name: String,
    /// Its `listen` address as configured.
    pub(crate) listen: String,
    /// Why it could not start.
    pub(crate) error: String,
}

/// How the last reload went, and when.
#[derive(Debug, Clone)]
pub(crate) struct LastReload {
    /// `ok`, `incomplete` or `failed` (the outcomes of `sealpipe_reloads_total`).
    pub(crate) outcome: &'static str,
    /// What could not be applied (incomplete), or why the config did not load (failed).
    pub(crate) problems: Vec<String>,
    pub(crate) at: std::time::SystemTime,
    pub(crate) when: std::time::Instant,
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

    /// Replaces the list of tunnels that do not run.
    pub(crate) fn set_not_started(&self, tunnels: Vec<NotStarted>) {
        *self.not_started.write().unwrap_or_else(|e| e.into_inner()) = tunnels;
    }

    /// The tunnels of the config that do not run.
    pub(crate) fn not_started(&self) -> Vec<NotStarted> {
        self.not_started
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counts a reload by its outcome and remembers it as the last one.
    pub(crate) fn reloaded(&self, outcome: &'static str, problems: Vec<String>) {
        let counter = match outcome {
            "ok" => &self.reloads.ok,
            "incomplete" => &self.reloads.incomplete,
            _ => &self.reloads.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        *self.last_reload.write().unwrap_or_else(|e| e.into_inner()) = Some(LastReload {
            outcome,
            problems,
            at: std::time::SystemTime::now(),
            when: std::time::Instant::now(),
        });
    }

    /// The last reload, if there was one.
    pub(crate) fn last_reload(&self) -> Option<LastReload> {
        self.last_reload
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
    pub(crate) fn render(&self) -> Result<String, fmt::Error> {
        let scrape = Scrape {
            tunnels: self.tunnels(),
            reloads: self.reloads.clone(),
        };
        let mut exposition = prometheus_client::registry::Registry::default();
        exposition.register_collector(Box::new(scrape));
        let mut out = String::new();
        prometheus_text::encode(&mut out, &exposition)?;
        Ok(out)
    }
}

/// A metric with one series per tunnel, read from its [`TunnelState`] at each scrape.
struct PerTunnel {
    /// The name of its series (a counter's ends in `_total`).
    name: &'static str,
    kind: MetricType,
    help: &'static str,
    get: fn(&TunnelState) -> u64,
}

/// The metrics with one plain series per tunnel, in the order of the exposition.
const PER_TUNNEL: [PerTunnel; 16] = [
    PerTunnel {
        name: "sealpipe_connections_open",
        kind: MetricType::Gauge,
        help: "Connections open (handshaking or established).",
        get: |s| s.connections.current() as u64,
    },
    PerTunnel {
        name: "sealpipe_handshakes_in_progress",
        kind: MetricType::Gauge,
        help: "Handshakes holding a handshake slot.",
        get: |s| s.handshakes.current() as u64,
    },
    PerTunnel {
        name: "sealpipe_handshakes_awaiting_auth",
        kind: MetricType::Gauge,
        help: "Listener: connections whose handshake answer is sent, waiting for the connector's last message (no handshake slot held).",
        get: |s| s.awaiting_auth.current() as u64,
    },
    PerTunnel {
        name: "sealpipe_signing_queued",
        kind: MetricType::Gauge,
        help: "Listener: hellos waiting for a signature in the signing queue.",
        get: |s| s.signing.queued() as u64,
    },
    PerTunnel {
        name: "sealpipe_signatures_total",
        kind: MetricType::Counter,
        help: "Listener: RSA signatures made for full handshakes.",
        get: |s| s.counters.signatures.load(Ordering::Relaxed),
    },
    PerTunnel {
        name: "sealpipe_connections_total",
        kind: MetricType::Counter,
        help: "Connections accepted, including those then dropped by a limit.",
        get: |s| s.counters.accepted.load(Ordering::Relaxed),
    },
    PerTunnel {
        name: "sealpipe_bytes_sent_total",
        kind: MetricType::Counter,
        help: "Plaintext bytes sealed and sent to the peer (local clients or target to peer).",
        get: |s| s.traffic.sent.load(Ordering::Relaxed),
    },
    PerTunnel {
        name: "sealpipe_bytes_received_total",
        kind: MetricType::Counter,
        help: "Plaintext bytes received from the peer and delivered locally.",
        get: |s| s.traffic.received.load(Ordering::Relaxed),
    },
    PerTunnel {
        name: "sealpipe_rekeys_total",
        kind: MetricType::Counter,
        help: "Rekey records sent and received.",
        get: |s| s.traffic.rekeys.load(Ordering::Relaxed),
    },
    PerTunnel {
        name: "sealpipe_resumptions_total",
        kind: MetricType::Counter,
        help: "Handshakes that resumed an earlier session.",
        get: |s| s.counters.resumed.load(Ordering::Relaxed),
    },
    PerTunnel {
        name: "sealpipe_mac1_rejected_total",
        kind: MetricType::Counter,
        help: "Connector hellos without a valid mac1, dropped before any work (listener).",
        get: |s| s.counters.mac1_rejected.load(Ordering::Relaxed),
    },
    PerTunnel {
        name: "sealpipe_streams_total",
        kind: MetricType::Counter,
        help: "Client streams carried (one per client connection; with session reuse, several per session: streams per session = this / sealpipe_handshakes_total ok).",
        get: |s| s.counters.streams.load(Ordering::Relaxed),
    },
    PerTunnel {
        name: "sealpipe_streams_reused_total",
        kind: MetricType::Counter,
        help: "Streams carried by a session that had carried another before (session reuse).",
        get: |s| s.counters.streams_reused.load(Ordering::Relaxed),
    },
    PerTunnel {
        name: "sealpipe_pool_hits_total",
        kind: MetricType::Counter,
        help: "Clients served by a warm session from the pool, with no handshake on their path (connector).",
        get: |s| s.counters.pool_hits.load(Ordering::Relaxed),
    },
    PerTunnel {
        name: "sealpipe_pool_misses_total",
        kind: MetricType::Counter,
        help: "Clients that found the pool empty and waited for a handshake of their own (connector).",
        get: |s| s.counters.pool_misses.load(Ordering::Relaxed),
    },
    PerTunnel {
        name: "sealpipe_pool_sessions",
        kind: MetricType::Gauge,
        help: "Warm sessions waiting in the pool (connector).",
        get: |s| s.pool.len() as u64,
    },
];

/// One scrape: the tunnels running when it came, and the daemon's reload counts.
#[derive(Debug)]
struct Scrape {
    tunnels: Vec<TunnelEntry>,
    reloads: Arc<Reloads>,
}

/// Writes the HELP and TYPE lines of the metric whose series are named `name`.
/// `prometheus-client` adds `_total` to a counter's name itself, so a counter's family name is
/// its series name without it.
fn describe<'s>(
    encoder: &'s mut DescriptorEncoder<'_>,
    name: &'static str,
    help: &str,
    kind: MetricType,
) -> Result<MetricEncoder<'s>, fmt::Error> {
    let family = match kind {
        MetricType::Counter => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    };
    encoder.encode_descriptor(family, help, None, kind)
}

/// Writes one series of a counter.
fn counter(m: &mut MetricEncoder<'_>, labels: &impl EncodeLabelSet, v: u64) -> fmt::Result {
    m.encode_family(labels)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

/// The labels of every series of tunnel `t`.
fn labels(t: &TunnelEntry) -> [(&'static str, &str); 2] {
    [("tunnel", t.name.as_str()), ("role", t.role.as_str())]
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

        for metric in &PER_TUNNEL {
            let mut m = describe(&mut encoder, metric.name, metric.help, metric.kind)?;
            for t in &self.tunnels {
                let v = (metric.get)(&t.state);
                match metric.kind {
                    MetricType::Counter => counter(&mut m, &labels(t), v)?,
                    _ => m.encode_family(&labels(t))?.encode_gauge(&v)?,
                }
            }
        }

        let mut m = describe(
            &mut encoder,
            "sealpipe_sessions",
            "Sealed sessions by state: warm (never carried a stream), idle (between streams), active (carrying one).",
            MetricType::Gauge,
        )?;
        for t in &self.tunnels {
            let counts = t.state.live.counts();
            for (state, n) in SessionState::ALL.iter().zip(counts) {
                let [tunnel, role] = labels(t);
                let labels = [tunnel, role, ("state", state.as_str())];
                m.encode_family(&labels)?.encode_gauge(&n)?;
            }
        }

        let mut m = describe(
            &mut encoder,
            "sealpipe_connections_dropped_total",
            "Connections dropped at accept, by limit.",
            MetricType::Counter,
        )?;
        for t in &self.tunnels {
            let c = &t.state.counters;
            for (reason, v) in [
                ("rate_limit", load(&c.rate_limited)),
                ("max_connections", load(&c.over_limit)),
            ] {
                let [tunnel, role] = labels(t);
                counter(&mut m, &[tunnel, role, ("reason", reason)], v)?;
            }
        }

        let mut m = describe(
            &mut encoder,
            "sealpipe_refusals_total",
            "Connector: authenticated refusals by the listener (its Alert), by reason: untrusted (this connector's key is not in its peers), service (it serves another service).",
            MetricType::Counter,
        )?;
        for t in self.tunnels.iter().filter(|t| t.role == Role::Connector) {
            let c = &t.state.counters;
            for (reason, v) in [
                ("untrusted", load(&c.refused_untrusted)),
                ("service", load(&c.refused_service)),
            ] {
                let [tunnel, role] = labels(t);
                counter(&mut m, &[tunnel, role, ("reason", reason)], v)?;
            }
        }

        let mut m = describe(
            &mut encoder,
            "sealpipe_handshakes_total",
            "Handshakes by result, and failures by reason.",
            MetricType::Counter,
        )?;
        for t in &self.tunnels {
            let [tunnel, role] = labels(t);
            let ok = load(&t.state.counters.handshakes_ok);
            counter(&mut m, &[tunnel, role, ("result", "ok")], ok)?;
            let failures = t
                .state
                .failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            for (reason, v) in failures {
                let labels = [tunnel, role, ("result", "failed"), ("reason", reason)];
                counter(&mut m, &labels, v)?;
            }
        }

        let mut m = describe(
            &mut encoder,
            "sealpipe_handshake_duration_seconds",
            "Time from accept to an established session, of successful handshakes.",
            MetricType::Histogram,
        )?;
        for t in &self.tunnels {
            let h = &t.state.handshake_seconds;
            // Observations per bucket, not cumulative: the encoder adds them up.
            let buckets: Vec<(f64, u64)> = HANDSHAKE_BUCKETS
                .iter()
                .zip(&h.buckets)
                .map(|(bound, n)| (*bound, load(n)))
                .collect();
            let sum = load(&h.sum_nanos) as f64 / 1e9;
            m.encode_family(&labels(t))?
                .encode_histogram::<NoLabelSet>(sum, load(&h.count), &buckets, None)?;
        }

        let mut m = describe(
            &mut encoder,
            "sealpipe_reloads_total",
            "Reloads (SIGHUP) by outcome: ok, incomplete (part of the config could not be applied), failed (the config did not load).",
            MetricType::Counter,
        )?;
        let r = &self.reloads;
        for (outcome, n) in [
            ("ok", &r.ok),
            ("incomplete", &r.incomplete),
            ("failed", &r.failed),
        ] {
            counter(&mut m, &[("outcome", outcome)], load(n))?;
        }
        Ok(())
    }
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

/// What a request head asks for, as far as it has come.
#[derive(Debug, PartialEq, Eq)]
enum Head<'a> {
    /// A whole head: its method and target.
    Request { method: &'a str, target: &'a str },
    /// More bytes are needed.
    Partial,
    /// Not an HTTP/1.x request head (or over [`MAX_HEADERS`] headers).
    Bad,
}

/// Parses the request head at the start of `buf`.
fn parse_head(buf: &[u8]) -> Head<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => match (request.method, request.path) {
            (Some(method), Some(target)) => Head::Request { method, target },
            _ => Head::Bad,
        },
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(_) => Head::Bad,
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let (status, body) = loop {
        match parse_head(&buf[..len]) {
            Head::Request { method, target } => break route(method, target, registry),
            Head::Bad => break bad_request(),
            Head::Partial if len == buf.len() => break bad_request(),
            Head::Partial => {}
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break bad_request();
        }
        len += n;
    };
    let content_type = if status.starts_with("200") {
        prometheus_text::CONTENT_TYPE
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

/// The answer to a request that is not one.
fn bad_request() -> (&'static str, String) {
    ("400 Bad Request", "bad request\n".into())
}

/// The status and body for a request for `target` by `method`.
fn route(method: &str, target: &str, registry: &Registry) -> (&'static str, String) {
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return ("404 Not Found", "not found: try /metrics\n".into());
    }
    if method != "GET" {
        return ("405 Method Not Allowed", "only GET\n".into());
    }
    match registry.render() {
        Ok(text) => ("200 OK", text),
        Err(_) => (
            "500 Internal Server Error",
            "cannot encode the metrics\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// A registry with one tunnel of `role` named `name` and counters `state`.
    fn one_tunnel(role: Role, name: &str, state: Arc<TunnelState>) -> Registry {
        let r = Registry::default();
        r.set(vec![TunnelEntry {
            role,
            name: name.into(),
            state,
            listen: String::new(),
            local: String::new(),
            trust: None,
        }]);
        r
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_labels_escaped() {
        let state = Arc::new(TunnelState::default());
        state.handshake_ok(Duration::from_micros(50));
        state.handshake_ok(Duration::from_millis(3));
        state.handshake_ok(Duration::from_secs(20));
        let text = one_tunnel(Role::Listener, "a\"b\\c", state)
            .render()
            .unwrap();
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

    /// The status `answer` gives to the request head `head` (a head not yet whole would wait
    /// for more bytes there; here it is a 400, as at the size limit or the end of the stream).
    fn status(head: &[u8], r: &Registry) -> &'static str {
        match parse_head(head) {
            Head::Request { method, target } => route(method, target, r).0,
            Head::Partial | Head::Bad => bad_request().0,
        }
    }

    #[test]
    fn routes() {
        let r = Registry::default();
        assert_eq!(
            status(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &r),
            "200 OK"
        );
        assert_eq!(status(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", &r), "200 OK");
        assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n", &r), "404 Not Found");
        assert_eq!(
            status(b"POST /metrics HTTP/1.1\r\n\r\n", &r),
            "405 Method Not Allowed"
        );
        assert_eq!(status(b"junk\r\n\r\n", &r), "400 Bad Request");
        assert_eq!(
            status(b"GET /metrics SSH-2.0\r\n\r\n", &r),
            "400 Bad Request"
        );
        assert_eq!(status(&[0xff, 0xfe], &r), "400 Bad Request");
        // A head is whole only at its empty line; before it, more bytes are read.
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Head::Partial
        );
        assert_eq!(parse_head(b""), Head::Partial);
        let many = format!(
            "GET /metrics HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(parse_head(many.as_bytes()), Head::Bad);
    }

    /// One metric as the exposition describes it, or as a row of the table in
    /// docs/operations.md: its type, its help and its labels beyond `tunnel` and `role`.
    #[derive(Debug, PartialEq, Eq)]
    struct Described {
        kind: String,
        help: String,
        labels: BTreeSet<String>,
    }

    /// The metrics of an exposition `text`, by series name (a histogram's without its
    /// `_bucket`, `_sum` and `_count`).
    fn exposed(text: &str) -> BTreeMap<String, Described> {
        let mut out = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                out.insert(
                    name.to_string(),
                    Described {
                        kind: String::new(),
                        help: help.to_string(),
                        labels: BTreeSet::new(),
                    },
                );
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                out.get_mut(name).unwrap().kind = kind.to_string();
            } else {
                let (series, labels) = line.split_once('{').unwrap();
                let name = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| series.strip_suffix(s).filter(|n| out.contains_key(*n)))
                    .unwrap_or(series);
                let labels = labels.rsplit_once('}').unwrap().0;
                let names = labels.split(',').map(|l| l.split_once('=').unwrap().0);
                out.get_mut(name)
                    .unwrap_or_else(|| panic!("{line}: no HELP before it"))
                    .labels
                    .extend(
                        names
                            .filter(|n| !["tunnel", "role", "le"].contains(n))
                            .map(String::from),
                    );
            }
        }
        out
    }

    /// The table of metrics in docs/operations.md: rows `| `NAME{LABELS}` | TYPE | HELP |`.
    fn documented(doc: &str) -> BTreeMap<String, Described> {
        let mut out = BTreeMap::new();
        for row in doc.lines().filter(|l| l.starts_with("| `sealpipe_")) {
            let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
            assert_eq!(cells.len(), 3, "{row}");
            let metric = cells[0].trim_matches('`');
            let (name, labels) = match metric.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (metric, ""),
            };
            let labels = labels
                .split(',')
                .filter(|l| !l.is_empty())
                .map(String::from);
            let d = Described {
                kind: cells[1].to_string(),
                help: cells[2].to_string(),
                labels: labels.collect(),
            };
            assert!(out.insert(name.to_string(), d).is_none(), "{name} twice");
        }
        out
    }

    #[test]
    fn the_table_of_metrics_in_docs_operations_md_matches_the_code() {
        let state = Arc::new(TunnelState::default());
        state.handshake_ok(Duration::from_millis(3));
        // A failed handshake, so that the `reason` of `sealpipe_handshakes_total` shows.
        state.failures.lock().unwrap().insert("timeout", 1);
        let text = one_tunnel(Role::Connector, "t", state).render().unwrap();
        let code = exposed(&text);
        let doc = documented(include_str!("../../docs/operations.md"));
        assert_eq!(code.len(), PER_TUNNEL.len() + 6, "{text}");
        for (name, d) in &code {
            assert_eq!(
                doc.get(name),
                Some(d),
                "{name}: the row in docs/operations.md"
            );
        }
        for name in doc.keys() {
            assert!(
                code.contains_key(name),
                "{name} is in docs/operations.md, not in the code"
            );
        }
    }
}
