//! Socket activation (`listen = "systemd:NAME"`; docs/operations.md, "Socket activation"): the test
//! plays systemd. It binds the listening sockets itself and starts `sealpipe run` with them as fds
//! 3 and 4, `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` set to the daemon's own pid, as
//! sd_listen_fds(3) describes. The pid is known only in the child, so a shell sets it and then
//! becomes sealpipe (`exec`); the sockets reach that shell as its stdin and stdout (the one safe
//! way std passes an fd to a child) and it moves them to 3 and 4 first.

use crate::support;

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use support::daemon::*;
use support::pseudo_random;

/// Moves stdin and stdout to fds 3 and 4 (then `$EXTRA` redirections), sets LISTEN_PID to its
/// own pid unless it is set, and becomes the command it is given.
const WRAPPER: &str = r#"eval "exec 3<&0 4<&1 $EXTRA </dev/null >/dev/null"
export LISTEN_PID="${LISTEN_PID:-$$}"
exec "$@""#;

/// `sealpipe run --config CONFIG` as systemd starts it: `fd3` and `fd4` as fds 3 and 4, named
/// in LISTEN_FDNAMES by `names` (which may name more fds: those `extra` opens, such as
/// `5</dev/null`).
fn activated(config: &Path, fd3: OwnedFd, fd4: OwnedFd, names: &[&str], extra: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        WRAPPER,
        "sh",
        bin(),
        "--log-level",
        "debug",
        "run",
        "--config",
    ])
    .arg(config)
    .stdin(Stdio::from(fd3))
    .stdout(Stdio::from(fd4))
    .env("EXTRA", extra)
    .env("LISTEN_FDS", names.len().to_string())
    .env("LISTEN_FDNAMES", names.join(":"))
    .env_remove("LISTEN_PID");
    cmd
}

/// A listening TCP socket on any loopback port, as a .socket unit's `ListenStream=` makes.
fn listening() -> (OwnedFd, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    (l.into(), addr)
}

/// One daemon, both ends of a tunnel to `service`: a listener on `systemd:sealed` and a
/// connector on `systemd:plain` that connects to `sealed`. It uses one key for both roles, so
/// the listener trusts its own key.
fn both_ends(sealed: SocketAddr, service: SocketAddr, extra: &str) -> String {
    let fp = listener_fp();
    format!(
        "[identity]\nprivate_key = \"listener.pem\"\n\n\
         [[listener]]\nname = \"test\"\nlisten = \"systemd:sealed\"\nforward = \"{service}\"\npeers = [\"{fp}\"]\n\n\
         [[connector]]\nname = \"test\"\nlisten = \"systemd:plain\"\nconnect = \"{sealed}\"\npeer = \"{fp}\"\n{extra}"
    )
}

/// The line and column (1-based) where the last `needle` starts in `text`.
fn at(text: &str, needle: &str) -> (usize, usize) {
    let offset = text
        .rfind(needle)
        .unwrap_or_else(|| panic!("{needle:?} in {text}"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// [`both_ends`] run as systemd would, on two sockets the test bound (fds 3 and 4), to an echo
/// service; `extra` goes at the end of the config, `names` and `redirections` to [`activated`].
struct Activated {
    d: Daemon,
    service: Service,
    sealed: SocketAddr,
    plain: SocketAddr,
    _site: Site,
}

fn start_both(extra: &str, names: &[&str], redirections: &str) -> Activated {
    let service = Service::start(Behaviour::Echo);
    let (sealed_fd, sealed) = listening();
    let (plain_fd, plain) = listening();
    let site = Site::new();
    let config = site.write("both.toml", &both_ends(sealed, service.addr, extra));
    let d = Daemon::start_command(
        &config,
        activated(&config, sealed_fd, plain_fd, names, redirections),
    );
    Activated {
        d,
        service,
        sealed,
        plain,
        _site: site,
    }
}

#[test]
fn both_ends_on_sockets_systemd_passed_carry_the_bytes() {
    let a = start_both("", &["sealed", "plain"], "");
    let (d, service, sealed_addr, plain_addr) = (&a.d, &a.service, a.sealed, a.plain);
    let log = d.log_text();
    for (role, name, addr) in [
        ("listener", "sealed", sealed_addr),
        ("connector", "plain", plain_addr),
    ] {
        let line = log
            .lines()
            .find(|l| l.contains("tunnel listening") && l.contains(&format!("role={role}")))
            .unwrap_or_else(|| panic!("{log}"));
        assert!(
            line.contains(&format!("listen=systemd:{name} local={addr}")),
            "{line}"
        );
    }
    assert!(!log.contains("no tunnel listens on"), "{log}");
    assert_echoes(plain_addr, 1, 3 << 20);
    assert_eq!(d.wait_opens(2).len(), 2, "connector and listener");
    assert_eq!(service.received.lock().unwrap().len(), 1);
}

#[test]
fn a_connector_listens_on_a_unix_socket_systemd_bound_and_leaves_its_file() {
    let service = Service::start(Behaviour::Echo);
    let (sealed, sealed_addr) = listening();
    let site = Site::new();
    let path = site.path("app.sock");
    let plain = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let config = site.write("both.toml", &both_ends(sealed_addr, service.addr, ""));
    let mut d = Daemon::start_command(
        &config,
        activated(&config, sealed, plain.into(), &["sealed", "plain"], ""),
    );
    assert!(
        d.log_text()
            .contains(&format!("listen=systemd:plain local={}", path.display())),
        "{}",
        d.log_text()
    );
    let len = 1 << 20;
    let (sent, received, n) = unix_echo_exchange(&path, Arc::new(pseudo_random(2, len)));
    assert_eq!((n, sent), (len, received));
    // One daemon runs both ends: the connector's line names the local client (`client=`, on
    // its span; its `peer=` is the listener).
    let line = d.wait_line("role=connector peer=");
    assert!(
        line.contains("connection open")
            && line.contains(&format!("client=unix:{}[uid=", path.display())),
        "{line}"
    );
    d.signal("TERM");
    d.child.wait().unwrap();
    assert!(
        path.exists(),
        "systemd's socket file is not the daemon's to remove"
    );
}

/// Starts `sealpipe run` on `config` as systemd would, with sockets named `sealed` and `plain`
/// (and `LISTEN_PID` set to `listen_pid`, if given): it must fail. Returns its stderr.
fn failed_start(config: &str, listen_pid: Option<u32>) -> String {
    let (sealed, _) = listening();
    let (plain, _) = listening();
    let site = Site::new();
    let config = site.write("sealpipe.toml", config);
    let mut cmd = activated(&config, sealed, plain, &["sealed", "plain"], "");
    if let Some(pid) = listen_pid {
        cmd.env("LISTEN_PID", pid.to_string());
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    err
}

#[test]
fn a_name_systemd_did_not_pass_fails_the_start_naming_those_it_did() {
    let config = listener_toml(any_port(), "127.0.0.1:9", "listener.pem", &trusted_peers())
        .replace("listen = \"127.0.0.1:0\"", "listen = \"systemd:wrong\"");
    let err = failed_start(&config, None);
    assert!(
        err.contains("sealpipe: error: listener \"test\": cannot take the socket systemd:wrong: no socket named \"wrong\" among those systemd passed at start (LISTEN_FDNAMES: sealed, plain)"),
        "{err}"
    );
}

#[test]
fn sockets_for_another_process_are_refused() {
    let dead = "127.0.0.1:9".parse().unwrap();
    // This test process is the other process.
    let other = std::process::id();
    let err = failed_start(&both_ends(dead, dead, ""), Some(other));
    assert!(
        err.contains(&format!(
            "listener \"test\": cannot take the socket systemd:sealed: the sockets in LISTEN_FDS are not for this process (LISTEN_PID={other}, this process is "
        )),
        "{err}"
    );
}

#[test]
fn a_reload_keeps_the_sockets_and_cannot_take_a_new_one() {
    // A third fd, named "spare", that no tunnel asks for: closed at start, with a warning.
    let a = start_both(METRICS, &["sealed", "plain", "spare"], "5</dev/null");
    let (d, service, plain_addr) = (&a.d, &a.service, a.plain);
    let pid = d.child.id();
    let warning = d.wait_line("no tunnel listens on");
    assert!(
        warning.contains("WARN") && warning.contains("spare (fd 5)"),
        "{warning}"
    );
    assert!(
        !warning.contains("sealed") && !warning.contains("plain"),
        "{warning}"
    );
    let fd5 = std::fs::read_link(format!("/proc/{pid}/fd/5"));
    assert!(
        fd5.as_ref().map_or(true, |p| p != Path::new("/dev/null")),
        "fd 5 still open: {fd5:?}"
    );
    assert_echoes(plain_addr, 3, 1 << 20);

    // The same `listen`: the sockets stay as they are.
    let log = d.reload();
    for role in ["listener", "connector"] {
        assert!(
            log.lines()
                .any(|l| l.contains("reload: kept the socket systemd passed")
                    && l.contains(&format!("role={role}"))),
            "{role}: {log}"
        );
    }
    assert_echoes(plain_addr, 4, 1 << 20);

    // Another name: systemd passes sockets at start only. The old socket stays.
    d.edit_config(|t| t.replace("systemd:sealed", "systemd:other"));
    d.signal("HUP");
    let line = d.wait_line("reload incomplete");
    assert!(
        line.contains("tunnel test still listens on systemd:sealed"),
        "{line}"
    );
    let log = d.log_text();
    assert!(
        log.contains("no socket named \"other\" among those systemd passed at start (LISTEN_FDNAMES: sealed, plain, spare)"),
        "{log}"
    );
    let text = scrape(metrics_addr(d));
    assert_eq!(
        value(&text, "sealpipe_reloads_total{outcome=\"ok\"}"),
        Some(1),
        "{text}"
    );
    assert_eq!(
        value(&text, "sealpipe_reloads_total{outcome=\"incomplete\"}"),
        Some(1),
        "{text}"
    );
    assert_echoes(plain_addr, 5, 1 << 20);
    assert_eq!(service.received.lock().unwrap().len(), 3);
}

#[test]
fn check_allows_systemd_only_for_a_tunnel_listen() {
    let site = Site::new();
    let check = |name: &str, text: &str, key_ctx: &str, needle: &str, problem: &str| {
        let path = site.write(name, text);
        let (code, out, err) = run_cli(&["check", "--config", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{name}: {out}");
        let (line, col) = at(text, needle);
        let want = format!("{}:{line}:{col}: {key_ctx}: {problem}", path.display());
        assert!(err.contains(&want), "{name}:\nwant {want}\ngot  {err}");
    };
    let listener =
        |forward: &str| listener_toml(any_port(), forward, "listener.pem", &trusted_peers());
    check(
        "forward.toml",
        &listener("systemd:app"),
        "listener \"test\": key `forward`",
        "\"systemd:app\"",
        "invalid address \"systemd:app\": a socket passed by systemd is for a tunnel's `listen` only; `forward` needs host:port or unix:PATH",
    );
    check(
        "connect.toml",
        &connector_toml(any_port(), "systemd:sealed", ""),
        "connector \"test\": key `connect`",
        "\"systemd:sealed\"",
        "invalid address \"systemd:sealed\": a socket passed by systemd is for a tunnel's `listen` only; `connect` needs host:port",
    );
    let metrics = listener("127.0.0.1:9") + "\n[metrics]\nlisten = \"systemd:metrics\"\n";
    check(
        "metrics.toml",
        &metrics,
        "[metrics]: key `listen`",
        "\"systemd:metrics\"",
        "invalid address \"systemd:metrics\": a socket passed by systemd is for a tunnel's `listen` only; the metrics endpoint needs host:port",
    );
    let empty = connector_toml("systemd:", "127.0.0.1:7443", "");
    check(
        "empty.toml",
        &empty,
        "connector \"test\": key `listen`",
        "\"systemd:\"",
        "invalid address \"systemd:\": empty socket name after `systemd:`",
    );
    let colon = connector_toml("systemd:a:b", "127.0.0.1:7443", "");
    check(
        "colon.toml",
        &colon,
        "connector \"test\": key `listen`",
        "\"systemd:a:b\"",
        "invalid address \"systemd:a:b\": `a:b` is not a valid systemd socket name: `:` separates the names in LISTEN_FDNAMES",
    );
    let twice = both_ends(
        "127.0.0.1:7443".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
        "",
    )
    .replace("systemd:plain", "systemd:sealed");
    check(
        "twice.toml",
        &twice,
        "connector \"test\": key `listen`",
        "\"systemd:sealed\"",
        "address systemd:sealed is already used by listener \"test\" (line 6)",
    );
    // And a `listen` of either role passes.
    let ok = site.write(
        "ok.toml",
        &both_ends(
            "127.0.0.1:7443".parse().unwrap(),
            "127.0.0.1:9".parse().unwrap(),
            "",
        ),
    );
    let (code, out, err) = run_cli(&["check", "--config", ok.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}
