//! Logging to stderr through `tracing`: the level or filter (`--log-level`, else `RUST_LOG`,
//! checked so that a typo is an error instead of silence), human or JSON lines, and no second
//! timestamp when stderr is the systemd journal.

use std::os::unix::fs::MetadataExt;

use tracing_subscriber::EnvFilter;

use crate::cmd::LogFormat;

/// The level names a filter directive may use.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// What `--log-level` and `RUST_LOG` accept, for messages.
pub(crate) const ACCEPTED: &str = "a level (off, error, warn, info, debug, trace) or comma-separated directives TARGET=LEVEL (e.g. `info,sealpipe=debug`)";

/// Checks a filter: comma-separated directives, each a level or `TARGET[SPAN]=LEVEL`. A bare
/// word that is not a level (`loud`) would be read by `tracing` as a target name and silently
/// turn every other line off, so it is refused here.
pub(crate) fn check_filter(text: &str) -> Result<String, String> {
    let is_level = |s: &str| LEVELS.contains(&s.trim().to_ascii_lowercase().as_str());
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let ok = match directive.rsplit_once('=') {
            Some((target, level)) => !target.trim().is_empty() && is_level(level),
            None => is_level(directive),
        };
        if !ok {
            return Err(format!(
                "invalid log filter `{directive}`: expected {ACCEPTED}"
            ));
        }
    }
    EnvFilter::builder()
        .parse(text)
        .map_err(|e| format!("invalid log filter `{text}`: {e}; expected {ACCEPTED}"))?;
    Ok(text.to_string())
}

/// True when stderr is the systemd journal (`JOURNAL_STREAM` names its device and inode), which
/// stamps every line itself.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Installs the subscriber: `level` (already checked) if given, else `RUST_LOG`, else
/// `default`. Fails when `RUST_LOG` is set but not a valid filter.
pub(crate) fn init(format: LogFormat, level: Option<&str>, default: &str) -> Result<(), String> {
    let text = match level {
        Some(l) => l.to_string(),
        None => match std::env::var("RUST_LOG") {
            Ok(env) if !env.trim().is_empty() => {
                check_filter(&env).map_err(|e| format!("RUST_LOG: {e}"))?
            }
            _ => default.to_string(),
        },
    };
    let filter = EnvFilter::builder()
        .parse(&text)
        .map_err(|e| format!("invalid log filter `{text}`: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match (format, stderr_is_journal()) {
        (LogFormat::Human, false) => builder.init(),
        (LogFormat::Human, true) => builder.without_time().init(),
        (LogFormat::Json, _) => builder.json().init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_levels_or_target_directives() {
        for ok in [
            "info",
            "DEBUG",
            "off",
            "sealpipe=trace",
            "info,sealpipe::daemon=debug",
            "",
        ] {
            assert_eq!(check_filter(ok).as_deref(), Ok(ok), "{ok}");
        }
        for bad in ["loud", "info,loud", "sealpipe=loud", "=debug", "verbose"] {
            let err = check_filter(bad).unwrap_err();
            assert!(err.contains("expected a level (off, error"), "{bad}: {err}");
        }
    }
}
