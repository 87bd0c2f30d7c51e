//! Issue 35, the operator's paper cuts: what an operator types and what comes back, exactly
//! (stdout vs stderr, exit status): `keygen` for scripts, the global options and `-c`,
//! `trust list` of inline `peers`, a second `run` of a running config, the pid in `trust add`'s
//! hint; config values answered with what the key takes, every independent error of a file in
//! one `check`, the refused and the warned-about rekey and timeout values, a host's own key in
//! its trust lists, IPv6 zone ids, `peers` on a connector, the PSK's permission message; and
//! the manual (exit status 78, `sealpipe-run(1)`, `idle_timeout`'s default, the unit's
//! `Documentation=`, `bench --help`).

use crate::support;

use std::path::Path;

use support::daemon::*;

/// `sealpipe check -c FILE` of `text` written as `name` in `site`: (exit code, stdout, stderr).
fn check(site: &Site, name: &str, text: &str) -> (i32, String, String) {
    let path = site.write(name, text);
    run_cli(&["check", "-c", path.to_str().unwrap(), "--no-bind"])
}

/// A listener on any port with `body` after its `forward`, and `defaults` in `[defaults]`.
fn listener_text(defaults: &str, body: &str) -> String {
    format!(
        "[identity]\nprivate_key = \"listener.pem\"\n\n[defaults]\n{defaults}\n\n[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:6379\"\n{body}\n"
    )
}

#[test]
fn keygen_keeps_stdout_for_the_fingerprint() {
    let site = Site::new();
    let key = site.path("new.pem");
    let k = key.to_str().unwrap();
    let (code, out, err) = run_cli(&["keygen", "--out", k, "--bits", "2048"]);
    assert_eq!(code, 0, "{err}");
    let (_, fp, _) = run_cli(&["fingerprint", k]);
    assert!(fp.starts_with("SHA256:"), "{fp}");
    // `FP=$(sealpipe keygen --out k.pem)` captures the fingerprint and nothing else.
    assert_eq!(out, fp);
    assert_eq!(err, format!("wrote {k} (private, mode 0600) and {k}.pub\n"));
}

#[test]
fn global_options_are_listed_apart_and_config_has_a_short_form() {
    for args in [
        &["check", "--help"][..],
        &["run", "--help"],
        &["trust", "list", "--help"],
    ] {
        let (code, out, err) = run_cli(args);
        assert_eq!(code, 0, "{err}");
        let (own, global) = out
            .split_once("\nGlobal options:\n")
            .unwrap_or_else(|| panic!("{args:?}: no `Global options:` heading: {out}"));
        assert!(
            !own.contains("--log-format") && !own.contains("--log-level"),
            "{args:?}: {own}"
        );
        assert!(
            global.contains("--log-format") && global.contains("--log-level"),
            "{args:?}"
        );
        assert!(own.contains("-c, --config <CONFIG>"), "{args:?}: {own}");
    }
    // And `-c` works.
    let site = Site::new();
    let text = listener_text("", &format!("peers = [\"{}\"]", connector_fp()));
    let (code, out, err) = check(&site, "l.toml", &text);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": OK (protocol"), "{out}");
}

#[test]
fn trust_list_shows_a_listener_s_inline_peers() {
    let site = Site::new();
    let (c, u) = (connector_fp(), fingerprint_of("untrusted.pem"));
    let config = site.write(
        "l.toml",
        &listener_text("", &format!("peers = [\"{c} laptop\", \"{u}\"]")),
    );
    let path = config.to_str().unwrap();
    let (code, out, err) = run_cli(&["trust", "list", "--config", path]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        format!("{c}  laptop  ({path} `peers`)\n{u}  -  ({path} `peers`)\n")
    );
    // Editing is still for peers files: the config is edited by hand.
    let (code, _, err) = run_cli(&["trust", "add", "-c", path, &u.to_string()]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!("sealpipe: error: {path}: listener \"a\" has no `peers_file` (its keys are in `peers`, edit the config itself)\n")
    );
}

#[test]
fn a_second_run_and_trust_add_name_the_running_daemon_s_pid() {
    let site = Site::new();
    site.write("peers", &format!("{}\n", connector_fp()));
    let config = site.write("l.toml", &listener_text("", "peers_file = \"peers\""));
    let path = config.to_str().unwrap();
    let daemon = Daemon::start(&config);
    let pid = daemon.child.id();
    let (code, out, err) = run_cli(&["run", "-c", path]);
    assert_eq!((code, out.as_str()), (1, ""));
    let socket = err
        .split("control socket ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_default()
        .to_string();
    assert!(socket.ends_with(".sock"), "{err}");
    assert_eq!(
        err,
        format!(
            "sealpipe: error: {path}: another sealpipe (pid {pid}) runs this config already (it \
             answers on its control socket {socket}); stop it first, or send it SIGHUP (`kill \
             -HUP {pid}`) to reload the file\n"
        )
    );
    // The first one runs on.
    assert!(daemon.log_text().contains("sealpipe running"));
    let untrusted = fingerprint_of("untrusted.pem");
    let (code, out, err) = run_cli(&["trust", "add", "-c", path, &untrusted.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!(
            "added {untrusted} to {} (line 2); to apply it, send SIGHUP to the daemon running \
             {path} (pid {pid}): `kill -HUP {pid}`\n",
            site.path("peers").display()
        )
    );
}

#[test]
fn duration_and_size_values_are_answered_with_what_the_key_takes() {
    let site = Site::new();
    let peers = format!("peers = [\"{}\"]", connector_fp());
    let cases = [
        (
            "idle_timeout = \"forever\"",
            "5:16: [defaults]: key `idle_timeout`: invalid duration \"forever\": expected a duration such as \"30s\", \"1h 30m\" or \"500ms\", or \"off\"",
        ),
        (
            "rekey_interval = \"10 parsecs\"",
            "5:18: [defaults]: key `rekey_interval`: invalid duration \"10 parsecs\": expected a duration such as \"30s\", \"1h 30m\" or \"500ms\", or \"off\"",
        ),
        (
            "handshake_timeout = \"off\"",
            "5:21: [defaults]: key `handshake_timeout`: invalid duration \"off\": expected a duration such as \"30s\", \"1h 30m\" or \"500ms\"",
        ),
        (
            "connect_timeout = \"30\"",
            "5:19: [defaults]: key `connect_timeout`: invalid duration \"30\": no unit; write \"30s\" (or \"30ms\", \"30m\")",
        ),
        (
            "record_size = \"lots\"",
            "5:15: [defaults]: key `record_size`: invalid size \"lots\": expected a number with an optional unit, such as \"16KiB\", \"64 MiB\" or \"1048576\"",
        ),
    ];
    for (line, message) in cases {
        let config = site.write("l.toml", &listener_text(line, &peers));
        let c = config.to_str().unwrap();
        assert_cli_error(&["check", "-c", c], 1, &format!("{c}:{message}"));
    }
}

#[test]
fn rekey_and_timeout_values_that_cannot_work_are_refused_and_odd_ones_warned_about() {
    let site = Site::new();
    let peers = format!("peers = [\"{}\"]", connector_fp());
    let refused = [
        (
            "rekey_bytes = \"1\"",
            "5:15: [defaults]: key `rekey_bytes`: 1 bytes is too small: a rekey would go in front of every record; must be at least 1KiB (the sane range is 1MiB to 64GiB, default 1GiB)",
        ),
        (
            "rekey_bytes = \"1PiB\"",
            "5:15: [defaults]: key `rekey_bytes`: 1125899906842624 bytes is too large: a key is replaced after 2^31 records anyway, 128TiB at most; must be at most 128TiB (the sane range is 1MiB to 64GiB, default 1GiB)",
        ),
        (
            "rekey_bytes = 9223372036854775807",
            "5:15: [defaults]: key `rekey_bytes`: 9223372036854775807 bytes is too large: a key is replaced after 2^31 records anyway, 128TiB at most; must be at most 128TiB (the sane range is 1MiB to 64GiB, default 1GiB)",
        ),
        (
            "rekey_interval = \"1ms\"",
            "5:18: [defaults]: key `rekey_interval`: \"1ms\" is too short: a rekey would go in front of nearly every record (at least 1s)",
        ),
        (
            "handshake_timeout = \"5ms\"",
            "5:21: [defaults]: key `handshake_timeout`: \"5ms\" is too short: no handshake over a network completes that fast (at least 100ms)",
        ),
        (
            "idle_timeout = \"10ms\"",
            "5:16: [defaults]: key `idle_timeout`: \"10ms\" is too short: every connection would be reset before its first exchange (at least 100ms)",
        ),
    ];
    for (line, message) in refused {
        let config = site.write("l.toml", &listener_text(line, &peers));
        let c = config.to_str().unwrap();
        assert_cli_error(&["check", "-c", c], 1, &format!("{c}:{message}"));
        // `run` refuses it as a config error.
        let (code, _, err) = run_cli(&["run", "-c", c]);
        assert_eq!(code, 78, "{err}");
    }
    let warned = [
        (
            "rekey_bytes = \"3KiB\"",
            "5:15: [defaults]: key `rekey_bytes`: 3.0 KiB is unusually small: a rekey record every 3.0 KiB each way (the sane range is 1MiB to 64GiB, default 1GiB; a bare number is bytes)",
        ),
        (
            "rekey_bytes = \"1TiB\"",
            "5:15: [defaults]: key `rekey_bytes`: 1.0 TiB is unusually large: this much under one key weakens what a rekey is for (the sane range is 1MiB to 64GiB, default 1GiB)",
        ),
        (
            "rekey_interval = \"5s\"",
            "5:18: [defaults]: key `rekey_interval`: 5s is unusually short: a rekey that often costs more than it gives (the sane range starts at 1m)",
        ),
    ];
    for (line, message) in warned {
        let config = site.write("l.toml", &listener_text(line, &peers));
        let c = config.to_str().unwrap();
        let (code, out, err) = run_cli(&["check", "-c", c, "--no-bind"]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(": OK (protocol"), "{out}");
        assert_eq!(err, format!("sealpipe: warning: {c}:{message}\n"));
    }
}

#[test]
fn check_reports_every_independent_error_of_a_file_in_one_run() {
    let site = Site::new();
    let fp = listener_fp();
    let text = format!(
        r#"[identity]
private_key = "listener.pem"

[defaults]
idle_timeout = "forever"
rekey_byts = "1GiB"

[[listener]]
name = "a"
listen = "[fe80::1%lo]:7443"
forward = "127.0.0.1:6379"
peers = ["{}"]

[[connector]]
name = "b"
listen = "127.0.0.1:6380"
connect = "db.example:7443"
peers = ["{fp}"]

[[connector]]
name = "c"
listen = "127.0.0.1:6381"
connect = "db.example:0"
peer = "{fp}"
"#,
        connector_fp()
    );
    let config = site.write("three.toml", &text);
    let c = config.to_str().unwrap();
    let (code, out, err) = run_cli(&["check", "-c", c]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        format!(
            "sealpipe: error: {c}:5:16: [defaults]: key `idle_timeout`: invalid duration \"forever\": expected a duration such as \"30s\", \"1h 30m\" or \"500ms\", or \"off\"\n\
             sealpipe: error: {c}:6:1: unknown key `rekey_byts` in [defaults]: did you mean `rekey_bytes`?\n\
             sealpipe: error: {c}:10:10: listener \"a\": key `listen`: invalid address \"[fe80::1%lo]:7443\": `[fe80::1%lo]`: zone ids (`%lo`) are not supported; use a global or unique-local IPv6 address, or an IPv4 one\n\
             sealpipe: error: {c}:18:1: unknown key `peers` in connector \"b\": did you mean `peer`? A connector pins its listener's key: `peer = \"SHA256:...\"` (`peers` is a listener's list of trusted connector keys)\n\
             sealpipe: error: {c}:23:11: connector \"c\": key `connect`: invalid address \"db.example:0\": port 0 cannot be connected to\n"
        )
    );
    // `run` says the same and exits 78.
    let (code, _, run_err) = run_cli(&["run", "-c", c]);
    assert_eq!((code, run_err), (78, err));
}

#[test]
fn peer_on_a_listener_asks_for_peers() {
    let site = Site::new();
    let (code, _, err) = check(
        &site,
        "l.toml",
        &listener_text("", &format!("peer = \"{}\"", connector_fp())),
    );
    assert_eq!(code, 1);
    let c = site.path("l.toml");
    assert_eq!(
        err,
        format!(
            "sealpipe: error: {}:11:1: unknown key `peer` in listener \"a\": did you mean `peers`? A listener lists the connector keys it trusts: `peers = [\"SHA256:...\"]` or `peers_file` (`peer` is a connector's pin of its listener's key)\n",
            c.display()
        )
    );
}

#[test]
fn a_host_s_own_key_in_its_trust_lists_is_warned_about() {
    let site = Site::new();
    let own = listener_fp();
    let text = format!(
        "{}\n[[connector]]\nname = \"b\"\nlisten = \"127.0.0.1:0\"\nconnect = \"db.example:7443\"\npeer = \"{own}\"\n",
        listener_text("", &format!("peers = [\"{}\", \"{own}\"]", connector_fp()))
    );
    let (code, out, err) = check(&site, "l.toml", &text);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": OK (protocol"), "{out}");
    let c = site.path("l.toml");
    let c = c.display();
    let slip = "this host's own key (`[identity]`): a copy-paste slip? Paste the other host's fingerprint (`sealpipe fingerprint` there)";
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains("does not resolve"))
        .collect();
    assert_eq!(
        warnings,
        [
            format!("sealpipe: warning: {c}:11:9: listener \"a\": key `peers`: {own} is {slip}"),
            format!("sealpipe: warning: {c}:17:8: connector \"b\": key `peer`: {own} is {slip}"),
        ]
    );
}

#[test]
fn a_world_readable_psk_file_is_called_a_psk_file() {
    let site = Site::new();
    let psk = site.write("link.psk", &format!("{}\n", "ab".repeat(32)));
    set_mode(&psk, 0o644);
    let text = listener_text("", &format!("peers = [\"{}\"]", connector_fp())).replacen(
        "private_key = \"listener.pem\"\n",
        "private_key = \"listener.pem\"\npsk_file = \"link.psk\"\n",
        1,
    );
    let config = site.write("l.toml", &text);
    let c = config.to_str().unwrap();
    let p = psk.display();
    assert_cli_error(
        &["check", "-c", c],
        1,
        &format!("{c}:3:12: [identity]: key `psk_file`: {p}: PSK file is readable by group or others (mode 0644); run `chmod 600 {p}`"),
    );
}

/// The pages of `sealpipe man --out DIR`: (file name, text).
fn page(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

#[test]
fn the_manual_tells_run_s_exit_status_signals_and_defaults_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man");
    let (code, _, err) = run_cli(&["man", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let main = page(&out, "sealpipe.1");
    let exit = main.split(".SH \"EXIT STATUS\"").nth(1).unwrap_or_else(|| {
        main.split(".SH EXIT STATUS")
            .nth(1)
            .expect("an EXIT STATUS section")
    });
    let exit = exit.split("\n.SH ").next().unwrap();
    assert!(exit.contains("\n.TP\n\\fB78\\fR\n"), "{exit}");
    assert!(exit.contains("RestartPreventExitStatus=78"), "{exit}");
    let run = page(&out, "sealpipe-run.1");
    for needle in [
        "SIGHUP",
        "SIGTERM",
        "drain_timeout",
        "78 (EX_CONFIG)",
        "reload",
    ] {
        assert!(
            run.contains(needle),
            "sealpipe-run(1) lacks {needle}: {run}"
        );
    }
    let toml = page(&out, "sealpipe.toml.5");
    let idle = toml
        .split("\\fBidle_timeout\\fR")
        .nth(1)
        .expect("idle_timeout");
    let idle = idle.split(".TP").next().unwrap();
    assert!(!idle.contains("None"), "{idle}");
    assert!(idle.contains("\\fB\"off\"\\fR, the default"), "{idle}");
    // The unit's documentation exists wherever the binary does: its man pages.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for unit in ["systemd/sealpipe@.service", "systemd/sealpipe@.socket"] {
        let text = std::fs::read_to_string(root.join(unit)).unwrap();
        let docs: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("Documentation="))
            .collect();
        assert_eq!(
            docs,
            ["Documentation=man:sealpipe(1) man:sealpipe-run(1) man:sealpipe.toml(5)"],
            "{unit}"
        );
    }
    for page_name in ["sealpipe.1", "sealpipe-run.1", "sealpipe.toml.5"] {
        assert!(out.join(page_name).exists(), "{page_name}");
    }
}

#[test]
fn bench_help_stands_without_the_source_tree() {
    let (code, out, err) = run_cli(&["bench", "--help"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("README"), "{out}");
    for needle in [
        "--serve",
        "--target",
        "--relay",
        "--rtt",
        "aead",
        "throughput",
        "stdout",
    ] {
        assert!(out.contains(needle), "bench --help lacks {needle}");
    }
}

#[test]
fn a_truncated_key_file_is_said_to_be_cut_short() {
    let site = Site::new();
    let key = site.path("listener.pem");
    let full = std::fs::read_to_string(&key).unwrap();
    std::fs::write(&key, &full[..full.len() / 2]).unwrap();
    let config = site.write(
        "l.toml",
        &listener_text("", &format!("peers = [\"{}\"]", connector_fp())),
    );
    let c = config.to_str().unwrap();
    let k = key.display();
    assert_cli_error(
        &["check", "-c", c],
        1,
        &format!("{c}:2:15: [identity]: key `private_key`: {k}: a `BEGIN PRIVATE KEY` PEM, but damaged or cut short (no matching `-----END PRIVATE KEY-----` line, or invalid base64): copy the whole file again"),
    );
}

#[test]
fn a_value_of_the_wrong_type_says_how_to_write_it() {
    let site = Site::new();
    let peers = format!("peers = [\"{}\"]", connector_fp());
    let cases = [
        (
            "idle_timeout = 30",
            "11:16: listener \"a\": key `idle_timeout`: invalid type: integer `30`, expected a duration string such as \"10s\", \"500ms\" or \"1h 30m\" (a duration has a unit: write \"30s\")",
        ),
        (
            "max_connections = \"10\"",
            "11:19: listener \"a\": key `max_connections`: invalid type: string \"10\", expected an integer (write it without quotes: 10)",
        ),
        (
            "accept_unknown = \"true\"",
            "11:18: listener \"a\": key `accept_unknown`: invalid type: string \"true\", expected a boolean (write it without quotes: true)",
        ),
        (
            "allow_tofu = true\nrekey_bytes = 18446744073709551615",
            "13:15: listener \"a\": key `rekey_bytes`: 18446744073709551615 is too large for a size",
        ),
    ];
    for (line, message) in cases {
        let config = site.write("l.toml", &listener_text("", &format!("{peers}\n{line}")));
        let c = config.to_str().unwrap();
        let message = message.replacen("11:", "12:", 1);
        assert_cli_error(&["check", "-c", c], 1, &format!("{c}:{message}"));
    }
    let text = listener_text("", &peers).replace(
        "forward = \"127.0.0.1:6379\"",
        "allow_destinations = \"10.0.0.1:80\"",
    );
    let config = site.write("l.toml", &text);
    let c = config.to_str().unwrap();
    assert_cli_error(
        &["check", "-c", c],
        1,
        &format!("{c}:10:22: listener \"a\": key `allow_destinations`: invalid type: string \"10.0.0.1:80\", expected a list, such as [\"...\", \"...\"]"),
    );
}
