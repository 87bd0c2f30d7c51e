//! What `sealpipe bench` reports: the measurement types (serialized as the `--json` output,
//! field names as they are), the warnings about measurements too short to mean much, the table
//! printed otherwise, and the progress bars on stderr.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde::Serialize;

/// A throughput run through the tunnel shorter than this is warned about.
const MIN_THROUGHPUT_SECONDS: f64 = 1.0;
/// A connection-rate run through the tunnel with fewer connections, or shorter, is warned
/// about.
const MIN_RATE_CONNECTIONS: usize = 100;
const MIN_RATE_SECONDS: f64 = 0.5;
/// A small-exchange run with fewer exchanges is warned about.
const MIN_EXCHANGES: usize = 1000;
/// An idle-memory run with fewer connections is warned about (the RSS is counted in pages).
const MIN_IDLE_CONNECTIONS: usize = 100;
/// How a warning starts among the notes.
const WARNING: &str = "warning: ";

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

/// One small-exchange run: sequential request/response exchanges of `size` bytes each way over
/// one established connection, through the tunnel and over raw TCP.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Small {
    /// Bytes of each request (and of its echo).
    pub(crate) size: usize,
    /// Exchanges, one after another.
    pub(crate) exchanges: usize,
    /// Wall time through the tunnel.
    pub(crate) seconds: f64,
    /// Exchanges per second through the tunnel.
    pub(crate) per_second: f64,
    /// Wall time over raw TCP (through the relay too with `--rtt`).
    pub(crate) raw_tcp_seconds: f64,
    /// Exchanges per second over raw TCP.
    pub(crate) raw_tcp_per_second: f64,
    /// per_second / raw_tcp_per_second.
    pub(crate) ratio_to_raw_tcp: f64,
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
    /// Round-trip time of the WAN relay between the tunnel ends and in front of the raw TCP
    /// references (`--rtt`), milliseconds; `null`: loopback only.
    pub(crate) rtt_ms: Option<f64>,
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
    /// The reference of the sequential connection rate and first echo: the same client over
    /// raw loopback TCP to a bench target.
    pub(crate) raw_tcp_rate_sequential: Option<Rate>,
    /// The same with `--concurrency` clients.
    pub(crate) raw_tcp_rate_concurrent: Option<Rate>,
    /// Whole-process memory per idle connection.
    pub(crate) idle: Option<Idle>,
    /// Small request/response exchanges, one entry per size (1 and 100 bytes).
    pub(crate) small: Vec<Small>,
    /// What the figures include, for readers of the JSON; warnings (measurements too short
    /// or too small to mean much) start with `warning: `.
    pub(crate) notes: Vec<String>,
}

impl Report {
    /// Adds a warning to the notes for each measurement through the tunnel that is too short or
    /// too small to mean much (the references are not judged: they are meant to be quick).
    pub(crate) fn warn_short_runs(&mut self) {
        let mut warnings = Vec::new();
        if let Some(t) = &self.throughput {
            if t.seconds < MIN_THROUGHPUT_SECONDS {
                warnings.push(format!(
                    "throughput: {} bytes took {:.3} s, under {MIN_THROUGHPUT_SECONDS} s: too short to mean much (raise --bytes)",
                    t.bytes, t.seconds
                ));
            }
        }
        for (what, rate) in [
            ("connection rate, sequential", &self.rate_sequential),
            ("connection rate, concurrent", &self.rate_concurrent),
            (
                "connection rate, sequential, full handshakes",
                &self.rate_full_sequential,
            ),
            (
                "connection rate, concurrent, full handshakes",
                &self.rate_full_concurrent,
            ),
        ] {
            let Some(r) = rate else { continue };
            let tried = r.connections + r.failures;
            if tried < MIN_RATE_CONNECTIONS || r.seconds < MIN_RATE_SECONDS {
                warnings.push(format!(
                    "{what}: {tried} connections in {:.3} s, under {MIN_RATE_CONNECTIONS} connections or {MIN_RATE_SECONDS} s: too few to mean much (raise --connections)",
                    r.seconds
                ));
            }
        }
        for x in &self.small {
            if x.exchanges < MIN_EXCHANGES {
                warnings.push(format!(
                    "{}-byte exchanges: {} exchanges, under {MIN_EXCHANGES}: too few to mean much (raise --exchanges)",
                    x.size, x.exchanges
                ));
            }
        }
        if let Some(i) = &self.idle {
            if i.connections < MIN_IDLE_CONNECTIONS {
                warnings.push(format!(
                    "memory per idle connection: {} connections, under {MIN_IDLE_CONNECTIONS}: too few to mean much (raise --idle)",
                    i.connections
                ));
            }
        }
        self.notes
            .extend(warnings.into_iter().map(|w| format!("{WARNING}{w}")));
    }

    /// The warnings among the notes.
    pub(crate) fn warnings(&self) -> impl Iterator<Item = &str> {
        self.notes
            .iter()
            .map(String::as_str)
            .filter(|n| n.starts_with(WARNING))
    }
}

/// The report as a table (markdown, readable as plain text).
pub(crate) fn table(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "sealpipe bench ({}): {}", r.mode, r.entry);
    if let Some(rs) = r.record_size {
        let _ = writeln!(o, "record size {rs} bytes");
    }
    if let Some(rtt) = r.rtt_ms {
        let _ = writeln!(
            o,
            "WAN relay, RTT {rtt} ms, between the tunnel ends and in front of the raw TCP references"
        );
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
    if let Some(ms) = r.rsa_sign_ms {
        let _ = writeln!(
            o,
            "| RSA-2048 PSS signature, 1 core (a full handshake makes two) | {ms:.2} ms | | |"
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
        // The reference with as many clients: the same client over raw TCP.
        let raw = [&r.raw_tcp_rate_sequential, &r.raw_tcp_rate_concurrent]
            .into_iter()
            .flatten()
            .find(|raw| raw.concurrency == rt.concurrency);
        let (rate_ref, rate_ratio, echo_ref, echo_ratio) = match raw {
            Some(raw) => (
                format!("raw TCP {:.0}", raw.per_second),
                format!("{:.2}", rt.per_second / raw.per_second),
                format!("raw TCP {:.2} / {:.2} ms", raw.ttfb_p50_ms, raw.ttfb_p99_ms),
                format!("{:.1}", rt.ttfb_p50_ms / raw.ttfb_p50_ms),
            ),
            None => Default::default(),
        };
        let _ = writeln!(
            o,
            "| new connections/s, {} client(s){how} | {:.0} ({} failed) | {rate_ref} | {rate_ratio} |",
            rt.concurrency, rt.per_second, rt.failures
        );
        let _ = writeln!(
            o,
            "| first echo p50 / p99, {} client(s){how} | {:.2} / {:.2} ms | {echo_ref} | {echo_ratio} |",
            rt.concurrency, rt.ttfb_p50_ms, rt.ttfb_p99_ms
        );
    }
    for x in &r.small {
        let _ = writeln!(
            o,
            "| {}-byte exchanges/s, one connection, {} in a row | {:.0} ({:.1} µs each) | raw TCP {:.0} ({:.1} µs) | {:.2} |",
            x.size,
            x.exchanges,
            x.per_second,
            x.seconds * 1e6 / x.exchanges.max(1) as f64,
            x.raw_tcp_per_second,
            x.raw_tcp_seconds * 1e6 / x.exchanges.max(1) as f64,
            x.ratio_to_raw_tcp
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
        if n.starts_with(WARNING) {
            let _ = writeln!(o, "\n{n}");
        } else {
            let _ = writeln!(o, "\nnote: {n}");
        }
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
        "{prefix:>24} [{bar:30}] {bytes}/{total_bytes} {bits_per_sec}"
    } else {
        "{prefix:>24} [{bar:30}] {pos}/{len} {per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        // Bits per second, as the table has them (indicatif's own key is bytes per second).
        let style = style.with_key(
            "bits_per_sec",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&bits_per_second(state.per_sec() * 8.0));
            },
        );
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(what.to_string());
    pb
}

/// A rate in bits per second for the progress bar: `3.21 Gb/s`, `45.6 Mb/s` (10⁹, 10⁶).
fn bits_per_second(bits: f64) -> String {
    if bits >= 1e9 {
        format!("{:.2} Gb/s", bits / 1e9)
    } else {
        format!("{:.1} Mb/s", bits / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_in_bits_per_second() {
        assert_eq!(bits_per_second(3.214e9), "3.21 Gb/s");
        assert_eq!(bits_per_second(45.64e6), "45.6 Mb/s");
    }
}
