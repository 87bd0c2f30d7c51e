//! Per-tunnel tuning: the [`Tuning`] model, its defaults, and how the keys are checked and
//! merged (`[defaults]` over the built-in defaults, a tunnel's own keys over `[defaults]`).
//!
//! The tuning keys are written once, in `tuning_fields!` (`super::tuning_fields`): a key's
//! field, type, default, the type serde reads it as and the function that checks it. From that
//! one list come the [`Tuning`] struct and its `Default` and [`Tuning::merged`] (here), the keys
//! of the raw sections (`super::raw`) and the rows of the table of keys (`super::schema`).
//! Adding a key is one line in that list (and a check function, unless an existing one fits).

use std::ops::RangeInclusive;
use std::time::Duration;

use toml::Spanned;

use super::error::{ConfigError, Source};
use super::raw::{DurationText, RawTuning, SizeText};
use super::tuning_fields::tuning_fields;
use super::{MAX_RECORD_SIZE, MIN_RECORD_SIZE};

/// The [`Tuning`] struct, its `Default` and [`Tuning::merged`], from the list of keys.
macro_rules! define_tuning {
    (
        {}
        $(
            $(#[$doc:meta])*
            $field:ident : $ty:ty = $default:expr, parsed from $raw:ident by $check:ident;
        )*
    ) => {
        /// Per-tunnel tuning: `[defaults]` merged with the tunnel's own overrides.
        #[derive(Clone, Debug, PartialEq)]
        pub struct Tuning {
            $($(#[$doc])* pub $field: $ty,)*
        }

        impl Default for Tuning {
            /// 1 GiB rekey, no rekey interval, 10 s handshake and connect timeouts, 30 s drain,
            /// 1024 connections, 128 handshakes, 256 full handshakes per second per source, 700
            /// listener signatures per second, 64 KiB records (fewest system calls per byte; a
            /// record is only as large as the data at hand), resumption on with 1 h and 1000-use
            /// tickets.
            fn default() -> Self {
                Tuning {
                    $($field: $default,)*
                }
            }
        }

        impl Tuning {
            /// `self` with the keys set in `raw` (a section named `ctx` of `src`) in place of its
            /// values. Each bad value is kept as an error of `src`, at its span (and the value
            /// of `self` used in its place); a value that works but is almost surely a mistake
            /// is kept as a warning.
            pub(crate) fn merged(
                &self,
                raw: &RawTuning,
                src: &Source<'_>,
                ctx: &str,
            ) -> Tuning {
                let mut merged = self.clone();
                $(if let Some(v) = &raw.$field {
                    let key = stringify!($field);
                    if let Some(value) = src.keep(checked(src, ctx, key, v, $check)) {
                        merged.$field = value;
                        if let Some(advice) = advice(key, &merged) {
                            src.warn(ctx, key, v.span(), advice);
                        }
                    }
                })*
                merged
            }
        }
    };
}

tuning_fields!(define_tuning! {});

/// Runs `check` on the value of `key`, locating its problem at the value.
fn checked<R, T>(
    src: &Source<'_>,
    ctx: &str,
    key: &str,
    value: &Spanned<R>,
    check: fn(&R) -> Result<T, String>,
) -> Result<T, ConfigError> {
    check(value.get_ref()).map_err(|problem| src.key_error(ctx, key, value.span(), problem))
}

/// A size in bytes, a bare integer or a `bytesize` string.
fn size(v: &SizeText) -> Result<u64, String> {
    match v {
        SizeText::Int(n) => u64::try_from(*n).map_err(|_| format!("invalid size {n}: negative")),
        SizeText::Text(s) => s
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|_| {
                format!("invalid size {s:?}: expected a number with an optional unit, such as \"16KiB\", \"64 MiB\" or \"1048576\"")
            }),
    }
}

/// What a duration key takes, for messages.
const A_DURATION: &str = "a duration such as \"30s\", \"1h 30m\" or \"500ms\"";

/// A `humantime` duration, more than zero. A value that does not parse is answered with what
/// the key takes (the library's own list of units is no help).
fn duration(v: &DurationText) -> Result<Duration, String> {
    parse_duration(v, "")
}

/// [`duration`], for a key that also takes `or_else` (`, or "off"`) in messages.
fn parse_duration(v: &DurationText, or_else: &str) -> Result<Duration, String> {
    let s = &v.0;
    let t = s.trim();
    let d = humantime::parse_duration(t).map_err(|_| {
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            format!("invalid duration {s:?}: no unit; write \"{t}s\" (or \"{t}ms\", \"{t}m\")")
        } else {
            format!("invalid duration {s:?}: expected {A_DURATION}{or_else}")
        }
    })?;
    if d.is_zero() {
        return Err(format!("invalid duration {s:?}: must be more than zero"));
    }
    Ok(d)
}

/// `d` if it is at least `min`, else "TEXT is too short: WHY; the sane range is RANGE".
fn at_least(v: &DurationText, d: Duration, min: Duration, why: &str) -> Result<Duration, String> {
    if d < min {
        return Err(format!(
            "{:?} is too short: {why} (at least {})",
            v.0,
            humantime::format_duration(min)
        ));
    }
    Ok(d)
}

/// `handshake_timeout`: a full handshake is two round trips and an RSA signature.
fn handshake_timeout(v: &DurationText) -> Result<Duration, String> {
    let d = duration(v)?;
    at_least(
        v,
        d,
        MIN_NETWORK_TIMEOUT,
        "no handshake over a network completes that fast",
    )
}

/// `connect_timeout`: one round trip, at least.
fn connect_timeout(v: &DurationText) -> Result<Duration, String> {
    let d = duration(v)?;
    at_least(
        v,
        d,
        MIN_NETWORK_TIMEOUT,
        "a connection over a network takes a round trip",
    )
}

/// The shortest `handshake_timeout` and `connect_timeout`.
const MIN_NETWORK_TIMEOUT: Duration = Duration::from_millis(100);

/// `rekey_interval`: a duration of at least a second, or off.
fn rekey_interval(v: &DurationText) -> Result<Option<Duration>, String> {
    let Some(d) = duration_or_off(v)? else {
        return Ok(None);
    };
    at_least(
        v,
        d,
        Duration::from_secs(1),
        "a rekey would go in front of nearly every record",
    )
    .map(Some)
}

/// `idle_timeout`: a duration of at least a second, or off.
fn idle_timeout(v: &DurationText) -> Result<Option<Duration>, String> {
    let Some(d) = duration_or_off(v)? else {
        return Ok(None);
    };
    at_least(
        v,
        d,
        Duration::from_millis(100),
        "every connection would be reset before its first exchange",
    )
    .map(Some)
}

/// `dead_peer_timeout`: a duration of at least a second, or off.
fn dead_peer_timeout(v: &DurationText) -> Result<Option<Duration>, String> {
    let Some(d) = duration_or_off(v)? else {
        return Ok(None);
    };
    at_least(
        v,
        d,
        Duration::from_secs(1),
        "a peer across any network would be taken for dead between two keepalives",
    )
    .map(Some)
}

/// A count of at least one.
fn count(v: &i64) -> Result<usize, String> {
    let n = *v;
    if n < 1 {
        return Err(format!("{n} is too small: must be at least 1"));
    }
    usize::try_from(n).map_err(|_| format!("{n} is too large"))
}

/// A boolean, as TOML has it.
fn flag(v: &bool) -> Result<bool, String> {
    Ok(*v)
}

/// The least `rekey_bytes`: less rekeys after every record, or more often than that.
const MIN_REKEY_BYTES: u64 = 1024;
/// The most `rekey_bytes`: past 2^31 records a key is replaced anyway (PROTOCOL.md §4), which
/// at the largest records is 128 TiB; more cannot be honoured.
const MAX_REKEY_BYTES: u64 = (1 << 31) * MAX_RECORD_SIZE as u64;

fn rekey_bytes(v: &SizeText) -> Result<u64, String> {
    match size(v)? {
        0 => Err("must be more than zero".to_string()),
        n if n < MIN_REKEY_BYTES => Err(format!(
            "{n} bytes is too small: a rekey would go in front of every record; must be at \
             least 1KiB (the sane range is 1MiB to 64GiB, default 1GiB)"
        )),
        n if n > MAX_REKEY_BYTES => Err(format!(
            "{n} bytes is too large: a key is replaced after 2^31 records anyway, 128TiB at \
             most; must be at most 128TiB (the sane range is 1MiB to 64GiB, default 1GiB)"
        )),
        n => Ok(n),
    }
}

/// A warning for a value of `key` (now in `t`) that works but is almost surely a mistake.
fn advice(key: &str, t: &Tuning) -> Option<String> {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    let short = |d: Option<Duration>, min: u64, what: &str| -> Option<String> {
        d.filter(|d| *d < Duration::from_secs(min)).map(|d| {
            format!(
                "{} is unusually short: {what} (the sane range starts at {})",
                humantime::format_duration(d),
                humantime::format_duration(Duration::from_secs(min))
            )
        })
    };
    match key {
        "rekey_bytes" if t.rekey_bytes < MIB => Some(format!(
            "{} is unusually small: a rekey record every {} each way (the sane range is 1MiB \
             to 64GiB, default 1GiB; a bare number is bytes)",
            bytesize::ByteSize(t.rekey_bytes),
            bytesize::ByteSize(t.rekey_bytes)
        )),
        "rekey_bytes" if t.rekey_bytes > 64 * GIB => Some(format!(
            "{} is unusually large: this much under one key weakens what a rekey is for \
             (the sane range is 1MiB to 64GiB, default 1GiB)",
            bytesize::ByteSize(t.rekey_bytes)
        )),
        "rekey_interval" => short(
            t.rekey_interval,
            60,
            "a rekey that often costs more than it gives",
        ),
        "handshake_timeout" => short(
            Some(t.handshake_timeout),
            1,
            "handshakes across a slow link or a busy listener will time out",
        ),
        "connect_timeout" => short(
            Some(t.connect_timeout),
            1,
            "connections across a slow link will time out",
        ),
        "idle_timeout" => short(
            t.idle_timeout,
            10,
            "connections that pause between requests will be reset",
        ),
        "dead_peer_timeout" => short(
            t.dead_peer_timeout,
            5,
            "a peer that is slow to answer a keepalive (a busy host, a lossy link, a connector \
             whose warm sessions answer at its next 5 s pool sweep) will be taken for dead",
        ),
        _ => None,
    }
}

/// A duration, or `"off"` / `"none"`: not at all.
fn duration_or_off(v: &DurationText) -> Result<Option<Duration>, String> {
    let s = v.0.trim();
    if s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("none") {
        Ok(None)
    } else {
        parse_duration(v, ", or \"off\"").map(Some)
    }
}

/// `n` if it is in `range`, else "N is out of range: WHAT".
fn within(n: i64, range: RangeInclusive<i64>, what: &str) -> Result<u32, String> {
    u32::try_from(n)
        .ok()
        .filter(|_| range.contains(&n))
        .ok_or_else(|| format!("{n} is out of range: {what}"))
}

fn source_rate_limit(v: &i64) -> Result<u32, String> {
    within(
        *v,
        0..=1_000_000,
        "connections per second per source, 0 (no limit) to 1000000",
    )
}

fn source_handshake_rate(v: &i64) -> Result<u32, String> {
    within(
        *v,
        0..=1_000_000,
        "full handshakes per second per source, 0 (no limit) to 1000000",
    )
}

fn signature_rate(v: &i64) -> Result<u32, String> {
    within(
        *v,
        0..=1_000_000,
        "signatures per second, 0 (no budget) to 1000000",
    )
}

fn signature_cpu(v: &i64) -> Result<u32, String> {
    within(*v, 0..=100, "percent of one core, 0 (no cap) to 100")
}

fn record_size(v: &SizeText) -> Result<usize, String> {
    let n = size(v)?;
    if !(MIN_RECORD_SIZE as u64..=MAX_RECORD_SIZE as u64).contains(&n) {
        return Err(format!(
            "{n} bytes is out of range: must be from 1KiB (1024) to 64KiB (65536)"
        ));
    }
    Ok(n as usize)
}

fn resumption_lifetime(v: &DurationText) -> Result<Duration, String> {
    let d = duration(v)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&d) {
        return Err(format!("{:?} is out of range: must be from 1s to 24h", v.0));
    }
    Ok(d)
}

fn session_max_age(v: &DurationText) -> Result<Duration, String> {
    let d = duration(v)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&d) {
        return Err(format!("{:?} is out of range: must be from 1s to 24h", v.0));
    }
    Ok(d)
}

fn session_reuse_streams(v: &i64) -> Result<u32, String> {
    within(*v, 1..=1_000_000, "streams per session, 1 to 1000000")
}

fn pool_size(v: &i64) -> Result<usize, String> {
    within(*v, 0..=4096, "sessions, 0 to 4096").map(|n| n as usize)
}

fn resumption_uses(v: &i64) -> Result<u32, String> {
    within(
        *v,
        1..=1_000_000,
        "resumptions in a row after a full handshake, 1 to 1000000",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        assert_eq!(
            Tuning::default(),
            Tuning {
                rekey_bytes: 1 << 30,
                rekey_interval: Some(Duration::from_secs(120)),
                handshake_timeout: Duration::from_secs(10),
                connect_timeout: Duration::from_secs(10),
                drain_timeout: Duration::from_secs(30),
                max_connections: 1024,
                max_handshakes: 128,
                source_rate_limit: 0,
                source_handshake_rate: 256,
                signature_rate: 700,
                signature_cpu: 10,
                record_size: 64 * 1024,
                resumption: true,
                resumption_lifetime: Duration::from_secs(3600),
                resumption_uses: 1000,
                idle_timeout: None,
                dead_peer_timeout: Some(Duration::from_secs(20)),
                session_max_age: Duration::from_secs(3600),
                session_reuse: true,
                session_reuse_streams: 1000,
                session_reuse_age: Duration::from_secs(600),
                pool_min: 1,
                pool_max: 64,
            }
        );
    }

    #[test]
    fn checks_take_what_the_file_says() {
        let text = |s: &str| DurationText(s.to_string());
        assert_eq!(duration_or_off(&text(" Off ")), Ok(None));
        assert_eq!(duration_or_off(&text("none")), Ok(None));
        assert_eq!(
            duration_or_off(&text("1h 30m")),
            Ok(Some(Duration::from_secs(90 * 60)))
        );
        assert_eq!(size(&SizeText::Text(" 16KiB ".into())), Ok(16 * 1024));
        assert_eq!(size(&SizeText::Int(7)), Ok(7));
        assert_eq!(source_rate_limit(&0), Ok(0));
        assert_eq!(count(&1), Ok(1));
        assert_eq!(record_size(&SizeText::Int(1024)), Ok(MIN_RECORD_SIZE));
        assert_eq!(resumption_uses(&1_000_000), Ok(1_000_000));
    }
}
