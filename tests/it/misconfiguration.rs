//! Operator mistakes and what sealpipe says about them: each one is caught with a message that
//! names what is wrong, and a non-zero exit.

use crate::support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use sealpipe::proto::identity::Fingerprint;
use support::daemon::*;
use support::{data, pem};

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

// ---------------------------------------------------------------------------------------------
// Config files, key files and the files they name

/// Runs `sealpipe check` and `sealpipe run` on `config`: both must fail, `check` with status 1
/// and `run` with 78 (EX_CONFIG: the unit does not restart it), and print exactly
/// `sealpipe: error: MESSAGE` (once: nothing repeated after it).
fn assert_refused(config: &Path, message: &str) {
    let c = config.to_str().unwrap();
    for (cmd, code) in [("check", 1), ("run", 78)] {
        assert_cli_error(&[cmd, "--config", c], code, message);
    }
}

/// What a placeholder where the fingerprint of `whose` belongs is told.
fn replace_placeholder(whose: &str) -> String {
    format!(
        "replace the placeholder with the fingerprint of {whose} (`sealpipe fingerprint KEYFILE` \
         on its host prints it)"
    )
}

/// `text` with every `SHA256:<…>` placeholder replaced by `fp`.
fn fill_placeholders(text: &str, fp: &Fingerprint) -> String {
    let mut text = text.to_string();
    while let Some(start) = text.find("SHA256:<") {
        let end = start + text[start..].find('>').unwrap() + 1;
        text.replace_range(start..end, &fp.to_string());
    }
    text
}

/// 1-based line and column of the first `needle` in `text`.
fn line_col(text: &str, needle: &str) -> (usize, usize) {
    let at = text.find(needle).unwrap_or_else(|| panic!("no {needle:?}"));
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    (
        text[..at].matches('\n').count() + 1,
        text[line_start..at].chars().count() + 1,
    )
}

#[test]
fn the_shipped_examples_fail_check_until_their_placeholders_are_replaced() {
    let site = Site::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc");
    for (name, host_key, key, whose, ctx, fill) in [
        (
            "listener.toml",
            "/etc/sealpipe/host-b.pem",
            "listener.pem",
            "a connector's key",
            "listener \"redis\": key `peers`",
            connector_fp(),
        ),
        (
            "connector.toml",
            "/etc/sealpipe/host-a.pem",
            "connector.pem",
            "the listener's key",
            "connector \"redis\": key `peer`",
            listener_fp(),
        ),
    ] {
        // Only the placeholders are wrong: the keys exist, the addresses are free.
        let shipped = std::fs::read_to_string(root.join(name)).unwrap();
        let text = shipped
            .replace(host_key, key)
            .replace("\"0.0.0.0:7443\"", "\"127.0.0.1:0\"")
            .replace("\"127.0.0.1:6379\"\n\n# Or", "\"127.0.0.1:0\"\n\n# Or");
        let config = site.write(name, &text);
        let (line, column) = line_col(&text, "\"SHA256:<");
        let (code, _, err) = run_cli(&["check", "--config", config.to_str().unwrap()]);
        assert_eq!(code, 1, "{name}: {err}");
        assert_eq!(
            err,
            format!(
                "sealpipe: error: {}:{line}:{column}: {ctx}: {}\n",
                config.display(),
                replace_placeholder(whose)
            ),
            "{name}"
        );
        // With the fingerprint filled in, the same file passes.
        site.write(name, &fill_placeholders(&text, &fill));
        let (code, out, err) = run_cli(&["check", "--config", config.to_str().unwrap()]);
        assert_eq!(code, 0, "{name}: {err}");
        assert!(out.contains(": OK "), "{out}");
    }
    // The placeholder the examples used to ship is valid base64 of 32 bytes: refused too.
    let old = site.write(
        "old.toml",
        &connector_toml(any_port(), "127.0.0.1:7443", "").replace(
            &listener_fp().to_string(),
            "SHA256:REPLACE+ME+with+the+fingerprint+of+host+B00",
        ),
    );
    assert_refused(
        &old,
        &format!(
            "{}:8:8: connector \"test\": key `peer`: {}",
            old.display(),
            replace_placeholder("the listener's key")
        ),
    );
}

#[test]
fn a_fingerprint_without_its_prefix_is_named_the_same_by_config_peers_files_and_trust() {
    let site = Site::new();
    let fp = listener_fp().to_string();
    let bare = fp.strip_prefix("SHA256:").unwrap().to_string();
    let write = |name: &str, peer: &str| {
        site.write(
            name,
            &connector_toml(any_port(), "127.0.0.1:7443", "").replace(&fp, peer),
        )
    };
    // What the OpenSSL pipeline prints, with or without its `=`, and a lower-case prefix.
    for (peer, problem) in [
        (
            bare.clone(),
            format!("missing the `SHA256:` prefix: write \"SHA256:{bare}\""),
        ),
        (
            format!("{bare}="),
            format!("missing the `SHA256:` prefix: write \"SHA256:{bare}\""),
        ),
        (
            format!("sha256:{bare}"),
            format!("the prefix is `SHA256:`, in capitals: write \"SHA256:{bare}\""),
        ),
    ] {
        let config = write("c.toml", &peer);
        assert_refused(
            &config,
            &format!(
                "{}:8:8: connector \"test\": key `peer`: invalid fingerprint \"{peer}\": {problem}",
                config.display()
            ),
        );
        // A peers file and `sealpipe trust add` say the same.
        let peers = site.write("peers", &format!("# trusted\n{peer}  host-a\n"));
        let p = peers.to_str().unwrap();
        let invalid = format!("invalid fingerprint \"{peer}\": {problem}");
        assert_cli_error(
            &["trust", "list", "--peers-file", p],
            1,
            &format!("{p}:2: {invalid}"),
        );
        assert_cli_error(&["trust", "add", "--peers-file", p, &peer], 1, &invalid);
    }
    // With its prefix, OpenSSL's trailing `=` is accepted.
    let config = write("padded.toml", &format!("{fp}="));
    let (code, _, err) = run_cli(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn key_psk_peers_and_known_peers_file_errors_name_the_config_line_once() {
    let site = Site::new();
    let svc: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let good = listener_for(svc, "");
    let ec = site.path("ec.pem");
    std::fs::write(&ec, pem("openssl-ec-p256.pem")).unwrap();
    set_mode(&ec, 0o600);
    let dir = site.path("keys.d");
    std::fs::create_dir(&dir).unwrap();
    let key = |name: &str| site.write("key.toml", &good.replace("listener.pem", name));
    let at = |config: &Path, rest: &str| {
        format!(
            "{}:2:15: [identity]: key `private_key`: {rest}",
            config.display()
        )
    };

    let config = key("ec.pem");
    assert_refused(
        &config,
        &at(
            &config,
            &format!(
                "{}: not an RSA key (algorithm EC, OID 1.2.840.10045.2.1)",
                ec.display()
            ),
        ),
    );
    let config = key("nope.pem");
    assert_refused(
        &config,
        &at(
            &config,
            &format!("{}: no such file", site.path("nope.pem").display()),
        ),
    );
    let config = key("keys.d");
    assert_refused(
        &config,
        &at(
            &config,
            &format!("{}: is a directory, not a key file", dir.display()),
        ),
    );
    // PKCS#1 (`BEGIN RSA PRIVATE KEY`) is accepted.
    let pkcs1 = site.path("pkcs1.pem");
    std::fs::write(&pkcs1, pem("openssl-rsa2048-pkcs1.pem")).unwrap();
    set_mode(&pkcs1, 0o600);
    let (code, out, err) = run_cli(&["check", "--config", key("pkcs1.pem").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&listener_fp().to_string()), "{out}");

    // psk_file, on line 3.
    let psk = |name: &str| {
        site.write(
            "psk.toml",
            &good.replace(
                "private_key = \"listener.pem\"\n",
                &format!("private_key = \"listener.pem\"\npsk_file = \"{name}\"\n"),
            ),
        )
    };
    let config = psk("link.psk");
    assert_refused(
        &config,
        &format!(
            "{}:3:12: [identity]: key `psk_file`: {}: no such file",
            config.display(),
            site.path("link.psk").display()
        ),
    );
    let config = psk("keys.d");
    assert_refused(
        &config,
        &format!(
            "{}:3:12: [identity]: key `psk_file`: {}: is a directory, not a key file",
            config.display(),
            dir.display()
        ),
    );

    // peers_file, on line 11 (after `peers`).
    let peers_file =
        |name: &str| site.write("peers.toml", &format!("{good}peers_file = \"{name}\"\n"));
    let config = peers_file("keys.d");
    assert_refused(
        &config,
        &format!(
            "{}:12:14: listener \"test\": key `peers_file`: {}: is a directory, not a peers file",
            config.display(),
            dir.display()
        ),
    );
    let config = peers_file("absent.peers");
    assert_refused(
        &config,
        &format!(
            "{}:12:14: listener \"test\": key `peers_file`: {}: no such file",
            config.display(),
            site.path("absent.peers").display()
        ),
    );
    let latin1 = site.path("latin1.peers");
    let mut bytes = format!("{}\n# caf", connector_fp()).into_bytes();
    bytes.extend_from_slice(b"\xe9 au lait\n");
    std::fs::write(&latin1, bytes).unwrap();
    let config = peers_file("latin1.peers");
    assert_refused(
        &config,
        &format!(
            "{}:2:6: listener \"test\": not valid UTF-8 (byte 0xe9); save the file as UTF-8",
            latin1.display()
        ),
    );

    // known_peers of a TOFU connector, on line 9.
    let tofu = |name: &str| {
        site.write(
            "tofu.toml",
            &tofu_connector_toml("127.0.0.1:7443".parse().unwrap()).replace(
                "known_peers = \"known_peers\"",
                &format!("known_peers = \"{name}\""),
            ),
        )
    };
    let config = tofu("keys.d");
    assert_refused(
        &config,
        &format!("{}:9:15: connector \"tofu\": key `known_peers`: {}: is a directory, not a known_peers file", config.display(), dir.display()),
    );
    let config = tofu("state/known_peers");
    assert_refused(
        &config,
        &format!(
            "{}:9:15: connector \"tofu\": key `known_peers`: {}: the directory {} does not exist (the listener's key is recorded in this file at the first contact)",
            config.display(),
            site.path("state/known_peers").display(),
            site.path("state").display()
        ),
    );
    let kp = site.path("kp");
    std::fs::write(&kp, b"# \xff\n").unwrap();
    let config = tofu("kp");
    assert_refused(
        &config,
        &format!(
            "{}:9:15: connector \"tofu\": key `known_peers`: {}:1:3: not valid UTF-8 (byte 0xff); save the file as UTF-8",
            config.display(),
            kp.display()
        ),
    );
}

#[test]
fn config_files_that_cannot_be_read_are_named_plainly() {
    let site = Site::new();
    let missing = site.path("absent.toml");
    assert_refused(
        &missing,
        &format!(
            "cannot read config file {}: no such file",
            missing.display()
        ),
    );
    let dir = site.path("conf.d");
    std::fs::create_dir(&dir).unwrap();
    assert_refused(
        &dir,
        &format!(
            "cannot read config file {}: is a directory, not a config file",
            dir.display()
        ),
    );
    // A key file given as the config.
    let key = site.path("listener.pem");
    assert_refused(
        &key,
        &format!(
            "{}: this is a PEM file (a key?), not a config file: give the TOML config, whose \
             `[identity] private_key` names the key file",
            key.display()
        ),
    );
    // Not UTF-8: the line and column of the first bad byte.
    let mut bytes = b"[identity]\nprivate_key = \"li".to_vec();
    bytes.extend_from_slice(b"\xffstener.pem\"\n");
    let latin1 = site.path("latin1.toml");
    std::fs::write(&latin1, bytes).unwrap();
    assert_refused(
        &latin1,
        &format!(
            "{}:2:18: not valid UTF-8 (byte 0xff); save the file as UTF-8",
            latin1.display()
        ),
    );
}

#[test]
fn run_exits_78_on_a_config_error_and_1_when_it_cannot_listen() {
    let site = Site::new();
    let broken = site.write(
        "broken.toml",
        &listener_for("127.0.0.1:9".parse().unwrap(), "").replace("listener.pem", "gone.pem"),
    );
    let (code, _, err) = run_cli(&["run", "--config", broken.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
    let (code, _, err) = run_cli(&["check", "--config", broken.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = site.write(
        "busy.toml",
        &listener_config(
            busy.local_addr().unwrap(),
            "127.0.0.1:9".parse().unwrap(),
            &[connector_fp()],
            "",
        ),
    );
    let (code, _, err) = run_cli(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot listen on"), "{err}");
    // The unit does not restart a config error, and gives up after a burst of failures.
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/sealpipe@.service"),
    )
    .unwrap();
    let section = |name: &str| {
        let start = unit.find(&format!("\n[{name}]\n")).unwrap();
        let rest = &unit[start + 1..];
        rest[..rest[1..].find("\n[").map_or(rest.len(), |i| i + 1)].to_string()
    };
    let (unit_section, service) = (section("Unit"), section("Service"));
    for line in ["StartLimitIntervalSec=60s", "StartLimitBurst=5"] {
        assert!(
            unit_section.lines().any(|l| l == line),
            "[Unit] lacks {line}:\n{unit_section}"
        );
    }
    assert!(
        service.lines().any(|l| l == "RestartPreventExitStatus=78"),
        "{service}"
    );
    // systemd accepts it (with the binary where the unit expects it: the one under test).
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let unit_dir = site.path("units");
        std::fs::create_dir(&unit_dir).unwrap();
        let path = unit_dir.join("sealpipe@example.service");
        std::fs::write(&path, unit.replace("/usr/local/bin/sealpipe", bin())).unwrap();
        // Its Documentation= names man pages, which verify looks up: installed as the unit's
        // header says (`sealpipe man --out`, then man1/ and man5/).
        let pages = site.path("pages");
        let (code, _, err) = run_cli(&["man", "--out", pages.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        let manpath = site.path("share-man");
        for section in ["1", "5"] {
            let dir = manpath.join(format!("man{section}"));
            std::fs::create_dir_all(&dir).unwrap();
            for page in std::fs::read_dir(&pages).unwrap() {
                let page = page.unwrap().path();
                if page.extension().is_some_and(|e| e == section) {
                    std::fs::copy(&page, dir.join(page.file_name().unwrap())).unwrap();
                }
            }
        }
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .env("MANPATH", &manpath)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.trim().is_empty(),
            "systemd-analyze verify: {text}"
        );
    }
}

#[test]
fn keygen_and_fingerprint_explain_bad_paths_and_sizes() {
    let site = Site::new();
    let dir = site.path("keys.d");
    std::fs::create_dir(&dir).unwrap();
    let keygen_fails = |out: &Path, message: String| {
        let args = ["keygen", "--out", out.to_str().unwrap(), "--bits", "2048"];
        assert_cli_error(&args, 1, &message);
    };
    // Into a directory that does not exist: said before the (slow) generation.
    let out = site.path("missing/host.pem");
    let missing = site.path("missing");
    keygen_fails(
        &out,
        format!(
            "{}: the directory {} does not exist; create it first",
            out.display(),
            missing.display()
        ),
    );
    assert!(!missing.exists());
    // Into a "directory" that is a file.
    let file = site.path("listener.pem");
    let out = file.join("host.pem");
    keygen_fails(
        &out,
        format!(
            "{}: the directory {} is not a directory",
            out.display(),
            file.display()
        ),
    );
    // A directory as --out.
    keygen_fails(
        &dir,
        format!(
            "{}: is a directory; --out names the key file to write, such as {}",
            dir.display(),
            dir.join("host.pem").display()
        ),
    );
    // Over an existing file, which stays as it was.
    let before = std::fs::read_to_string(&file).unwrap();
    keygen_fails(
        &file,
        format!(
            "{}: already exists; refusing to overwrite it (remove it or choose another --out)",
            file.display()
        ),
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
    // A size out of range is a usage error, before anything is written.
    let small = site.path("small.pem");
    let (code, _, err) = run_cli(&["keygen", "--out", small.to_str().unwrap(), "--bits", "1024"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(
            "invalid value '1024' for '--bits <BITS>': RSA keys must have from 2048 to 8192 bits"
        ),
        "{err}"
    );
    assert!(!small.exists());

    // fingerprint: a directory, a missing file, a file that is not a key, a key that is not RSA.
    let config = site.write("c.toml", "[identity]\n");
    let ec = data("openssl-ec-p256.pub.pem");
    for (file, problem) in [
        (dir.clone(), "is a directory, not a key file"),
        (site.path("absent.pem"), "no such file"),
        (
            config,
            "not a key file: expected `BEGIN PUBLIC KEY`, `BEGIN PRIVATE KEY` or `BEGIN RSA \
             PRIVATE KEY`",
        ),
        (ec, "not an RSA key (algorithm EC, OID 1.2.840.10045.2.1)"),
    ] {
        let f = file.to_str().unwrap();
        assert_cli_error(&["fingerprint", f], 1, &format!("{f}: {problem}"));
    }
}

#[test]
fn a_host_name_that_does_not_resolve_is_named_in_the_log_line_of_its_tunnel() {
    let site = Site::new();
    let listener = site.start(
        "listener.toml",
        &listener_toml(
            any_port(),
            "nosuchhost.invalid:6379",
            "listener.pem",
            &trusted_peers(),
        ),
    );
    let connector = start_connector(&site, listener.addr(), "");
    // The client's connection is reset; `logger` logs why, in the line of `needle`.
    let reset_and_logged = |entry: std::net::SocketAddr, logger: &Daemon, needle: &str| {
        assert_eq!(
            try_exchange(entry, b"hello"),
            Err(std::io::ErrorKind::ConnectionReset)
        );
        logger.wait_line(needle)
    };
    let line = reset_and_logged(connector.addr(), &listener, "forward target unreachable");
    assert!(
        line.contains("tunnel=test")
            && line.contains("forward=nosuchhost.invalid:6379")
            && line.contains("reason=cannot resolve host name nosuchhost.invalid: "),
        "{line}"
    );
    // A connector whose `connect` does not resolve.
    let lost = site.start(
        "lost.toml",
        &connector_toml(any_port(), "nosuchhost.invalid:7443", ""),
    );
    let line = reset_and_logged(lost.addr(), &lost, "handshake failed");
    assert!(
        line.contains("tunnel=test ")
            && line.contains("reason=cannot connect to the listener at nosuchhost.invalid:7443: cannot resolve host name nosuchhost.invalid: "),
        "{line}"
    );
}

#[test]
fn peers_files_saved_with_a_byte_order_mark_or_aimed_at_a_missing_directory() {
    let site = Site::new();
    // Some editors start a UTF-8 file with a byte order mark: it is not part of the first line.
    site.write("peers", &format!("\u{feff}{}  host-a\n", connector_fp()));
    let config = site.write(
        "listener.toml",
        &listener_toml(
            any_port(),
            "127.0.0.1:9",
            "listener.pem",
            "peers_file = \"peers\"\n",
        ),
    );
    let (code, _, err) = run_cli(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // `trust add` into a directory that does not exist.
    let missing = site.path("state/peers");
    let fp = connector_fp().to_string();
    assert_cli_error(
        &[
            "trust",
            "add",
            "--peers-file",
            missing.to_str().unwrap(),
            &fp,
        ],
        1,
        &format!(
            "{}: the directory {} does not exist",
            missing.display(),
            site.path("state").display()
        ),
    );
}

#[test]
fn a_tunnel_aimed_at_its_own_listen_address_is_refused() {
    let site = Site::new();
    // A connector told to connect where it listens (a copied line).
    let config = site.write(
        "connector.toml",
        &connector_toml("127.0.0.1:7443", "127.0.0.1:7443", ""),
    );
    assert_refused(
        &config,
        &format!(
            "{}:7:11: connector \"test\": key `connect`: 127.0.0.1:7443 is this tunnel's own \
             `listen` address (line 6): every connection would come back to it",
            config.display()
        ),
    );
    // A listener on every address forwarding to its own port on loopback. (A port that was
    // free a moment ago: the last `check` must not find it taken.)
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let wildcard: std::net::SocketAddr = format!("0.0.0.0:{port}").parse().unwrap();
    for forward in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let config = site.write(
            "listener.toml",
            &listener_toml(wildcard, &forward, "listener.pem", &trusted_peers()),
        );
        assert_refused(
            &config,
            &format!(
                "{}:7:11: listener \"test\": key `forward`: {forward} is this tunnel's own \
                 `listen` address (line 6): every connection would come back to it",
                config.display()
            ),
        );
    }
    // The same port on another host is no loop.
    let config = site.write(
        "listener.toml",
        &listener_toml(
            wildcard,
            format!("192.0.2.7:{port}"),
            "listener.pem",
            &trusted_peers(),
        ),
    );
    let (code, _, err) = run_cli(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
}
