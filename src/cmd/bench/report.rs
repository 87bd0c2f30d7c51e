//! What `sealpipe bench` reports: the measurement types (serialized as the `--json` output,
//! field names as they are), the table printed otherwise, and the progress bars on stderr.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// One throughput run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Throughput {
    /// Bytes the sink(s) confirmed receiving.
    pub(crate) bytes: u64,
    /// Parallel connections.
    pub(crate) streams: usize,
    /// Wall time, first connect to last confirmation.
    pub(crate) seconds: f64,
    /// 10⁹ bits per second.
    pub(crate) gbit_per_s: f64,
    /// User + system CPU of this whole process over the run.
    pub(crate) cpu_seconds: f64,
    /// `cpu_seconds` per GiB moved.
    pub(crate) cpu_s_per_gib: f64,
}

/// The cipher reference.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AeadSpeed {
    /// Plaintext bytes per seal.
    pub(crate) record_size: usize,
    /// 10⁹ bits of plaintext sealed per second on one core.
    pub(crate) gbit_per_s: f64,
}

/// One connection-rate run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Rate {
    /// Connections that got their echo.
    pub(crate) connections: usize,
    /// Connections that failed (refused, reset, wrong byte).
    pub(crate) failures: usize,
    /// Clients at once.
    pub(crate) concurrency: usize,
    /// Wall time.
    pub(crate) seconds: f64,
    /// Successful connections per second.
    pub(crate) per_second: f64,
    /// Connect to echo received, median, milliseconds.
    pub(crate) ttfb_p50_ms: f64,
    /// Connect to echo received, 99th percentile, milliseconds.
    pub(crate) ttfb_p99_ms: f64,
}

/// The idle-memory run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Idle {
    /// Established connections held open.
    pub(crate) connections: usize,
    /// VmRSS before opening them.
    pub(crate) rss_before_kib: u64,
    /// VmRSS with all of them open and idle.
    pub(crate) rss_after_kib: u64,
    /// (after − before) / connections.
    pub(crate) kib_per_connection: f64,
}

/// Everything one `sealpipe bench` measured; the `--json` output.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Report {
    /// "in-process", "config" or "target".
    pub(crate) mode: String,
    /// What the loads were driven at.
    pub(crate) entry: String,
    /// Record size of the in-process pair (`null` otherwise).
    pub(crate) record_size: Option<usize>,
    /// Whether resumption was on for the rate loads (`null`: not known, the tunnel is elsewhere).
    pub(crate) resumption: Option<bool>,
    /// Through the tunnel.
    pub(crate) throughput: Option<Throughput>,
    /// Raw loopback TCP to a bench target, same bytes and streams.
    pub(crate) raw_tcp: Option<Throughput>,
    /// throughput / raw_tcp.
    pub(crate) ratio_to_raw_tcp: Option<f64>,
    /// Single-core seal speed of this build.
    pub(crate) aead: Option<AeadSpeed>,
    /// throughput / aead.
    pub(crate) ratio_to_aead: Option<f64>,
    /// Milliseconds per RSA-2048 PSS signature (in-process identity), the handshake reference.
    pub(crate) rsa_sign_ms: Option<f64>,
    /// One connection after another.
    pub(crate) rate_sequential: Option<Rate>,
    /// `--concurrency` clients.
    pub(crate) rate_concurrent: Option<Rate>,
    /// In process: one connection after another through a second pair with resumption off
    /// (every connection a full RSA handshake).
    pub(crate) rate_full_sequential: Option<Rate>,
    /// In process: `--concurrency` clients through the pair with resumption off.
    pub(crate) rate_full_concurrent: Option<Rate>,
    /// Whole-process memory per idle connection.
    pub(crate) idle: Option<Idle>,
    /// What the figures include, for readers of the JSON.
    pub(crate) notes: Vec<String>,
}

/// The report as a table (markdown, readable as plain text).
pub(crate) fn table(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "sealpipe bench ({}): {}", r.mode, r.entry);
    if let Some(rs) = r.record_size {
        let _ = writeln!(o, "record size {rs} bytes");
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "| measurement | value | reference | ratio |");
    let _ = writeln!(o, "|---|---|---|---|");
    if let (Some(t), Some(raw)) = (&r.throughput, &r.raw_tcp) {
        let _ = writeln!(
            o,
            "| throughput, {} stream(s), {:.0} MiB | {:.2} Gb/s | raw loopback TCP {:.2} Gb/s | {:.2} |",
            t.streams,
            t.bytes as f64 / 1048576.0,
            t.gbit_per_s,
            raw.gbit_per_s,
            r.ratio_to_raw_tcp.unwrap_or(0.0)
        );
        if let (Some(a), Some(ratio)) = (&r.aead, r.ratio_to_aead) {
            let _ = writeln!(
                o,
                "| throughput vs cipher | {:.2} Gb/s | ChaCha20-Poly1305 seal, 1 core, {} B: {:.2} Gb/s | {:.2} |",
                t.gbit_per_s, a.record_size, a.gbit_per_s, ratio
            );
        }
        let _ = writeln!(
            o,
            "| CPU s per GiB (whole process) | {:.2} | raw loopback TCP {:.2} | +{:.2} for the tunnel |",
            t.cpu_s_per_gib,
            raw.cpu_s_per_gib,
            t.cpu_s_per_gib - raw.cpu_s_per_gib
        );
    } else if let Some(a) = &r.aead {
        let _ = writeln!(
            o,
            "| ChaCha20-Poly1305 seal, 1 core, {} B | {:.2} Gb/s | | |",
            a.record_size, a.gbit_per_s
        );
    }
    let resumed = match r.resumption {
        Some(true) => ", resumed",
        _ => "",
    };
    for (rt, how) in [
        (&r.rate_sequential, resumed),
        (&r.rate_concurrent, resumed),
        (&r.rate_full_sequential, ", full handshakes"),
        (&r.rate_full_concurrent, ", full handshakes"),
    ]
    .into_iter()
    .filter_map(|(rt, how)| rt.as_ref().map(|rt| (rt, how)))
    {
        let _ = writeln!(
            o,
            "| new connections/s, {} client(s){how} | {:.0} ({} failed) | | |",
            rt.concurrency, rt.per_second, rt.failures
        );
        let sign = r
            .rsa_sign_ms
            .map(|s| format!("RSA-2048 sign {s:.2} ms"))
            .unwrap_or_default();
        let ratio = r
            .rsa_sign_ms
            .map(|s| format!("{:.2}", rt.ttfb_p50_ms / s))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "| first echo p50 / p99, {} client(s){how} | {:.2} / {:.2} ms | {sign} | {ratio} |",
            rt.concurrency, rt.ttfb_p50_ms, rt.ttfb_p99_ms
        );
    }
    if let Some(i) = &r.idle {
        let _ = writeln!(
            o,
            "| memory per idle connection ({}) | {:.1} KiB | RSS {} → {} KiB | |",
            i.connections, i.kib_per_connection, i.rss_before_kib, i.rss_after_kib
        );
    }
    for n in &r.notes {
        let _ = writeln!(o, "\nnote: {n}");
    }
    o
}

/// A progress bar on stderr for `len` items (or bytes) of `what`; hidden unless `enabled`.
pub(crate) fn progress(enabled: bool, len: u64, what: &str, bytes: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    }
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let template = if bytes {
        "{prefix:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}"
    } else {
        "{prefix:>24} [{bar:30}] {pos}/{len} {per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(what.to_string());
    pb
}
