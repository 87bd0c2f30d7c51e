//! Operator mistakes and what sealpipe says about them: each one is caught with a message that
//! names what is wrong, and a non-zero exit.

mod support;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use support::daemon::*;

#[test]
fn an_invalid_log_level_is_a_usage_error_naming_the_accepted_values() {
    for args in [
        &["--log-level", "loud", "demo", "--once"][..],
        &["--log-level", "info,loud", "check", "--config", "x.toml"][..],
        &["--log-level", "sealpipe=chatty", "demo", "--once"][..],
    ] {
        let (code, out, err) = run_cli(args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(
            err.contains("expected a level (off, error, warn, info, debug, trace)"),
            "{args:?}: {err}"
        );
    }
    let out = Command::new(bin())
        .args(["demo", "--once"])
        .env("RUST_LOG", "loud")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("RUST_LOG: invalid log filter `loud`"), "{err}");
    // Valid filters still work.
    let (code, _, err) = run_cli(&["--log-level", "info,sealpipe=debug", "demo", "--once"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn lines_written_to_the_journal_carry_no_second_timestamp() {
    let site = Site::new();
    let run = |journal: bool| {
        let log = site.path(if journal { "journal.log" } else { "plain.log" });
        let file = std::fs::File::create(&log).unwrap();
        let meta = file.metadata().unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["--log-level", "info", "demo", "--once"])
            .stdout(Stdio::null())
            .stderr(file);
        if journal {
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        } else {
            cmd.env("JOURNAL_STREAM", "1:1");
        }
        assert!(cmd.status().unwrap().success());
        let text = std::fs::read_to_string(&log).unwrap();
        let line = text
            .lines()
            .find(|l| l.contains("connection open"))
            .unwrap_or_else(|| panic!("{text}"))
            .to_string();
        line
    };
    let plain = run(false);
    assert!(plain.starts_with("20"), "a timestamp first: {plain}");
    let journal = run(true);
    assert!(
        journal.trim_start().starts_with("INFO"),
        "no timestamp: {journal}"
    );
}

#[test]
fn a_wrong_pin_is_explained_on_both_ends() {
    let service = Service::start(Behaviour::Echo);
    let wrong = fingerprint_of("untrusted.pem");
    let t = tunnel_with(service.addr, "connector.pem", &wrong, "");
    assert_eq!(
        try_exchange(t.entry, b"hello"),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    let clog = t.connector.wait_log("did not answer a hello");
    assert!(
        clog.contains(&format!(
            "the listener at {} did not answer a hello for key {wrong}: the `peer` pin is probably not its key \
             (compare with `sealpipe fingerprint` on the listener's private_key)",
            t.listener.addr()
        )),
        "{clog}"
    );
    let llog = t.listener.wait_log("hello without a valid mac1");
    let line = llog
        .lines()
        .find(|l| l.contains("hello without a valid mac1"))
        .unwrap();
    assert!(line.contains(" INFO "), "at INFO: {line}");
    assert!(
        line.contains("from 127.0.0.1:")
            && line.contains(&format!(
                "a connector whose `peer` pin is not this listener's key {}",
                listener_fp()
            )),
        "{line}"
    );
    // A flood of them is one line per interval, the rest counted.
    for _ in 0..5 {
        let _ = try_exchange(t.entry, b"again");
    }
    let llog = t.listener.log_text();
    let info_lines = llog
        .lines()
        .filter(|l| l.contains(" INFO ") && l.contains("hello without a valid mac1"))
        .count();
    assert_eq!(info_lines, 1, "{llog}");
}
