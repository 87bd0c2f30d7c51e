//! `sealpipe check` tries what it can without side effects: it binds each listen address for a
//! moment (not with `--no-bind`, and not those the daemon running the config holds), checks a
//! `unix:` listen socket's directory, and warns about `forward`/`connect` names that do not
//! resolve.

use crate::support;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use support::daemon::*;

const IN_USE: &str = "address in use — another process (a running sealpipe for this config?) holds it; use --no-bind to skip this check";

fn check(config: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["check", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_cli(&args)
}

/// A loopback port that was free a moment ago.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn a_listen_port_held_by_another_socket_fails_unless_no_bind() {
    let site = Site::new();
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let conf = site.write(
        "listener.toml",
        &listener_toml(
            taken,
            "nosuchhost.invalid:6379",
            "listener.pem",
            &trusted_peers(),
        ),
    );
    let (code, out, err) = check(&conf, &[]);
    assert_eq!(code, 1, "{out}{err}");
    let want = format!(
        "{}:6:10: listener \"test\": key `listen`: {taken}: {IN_USE}",
        conf.display()
    );
    assert!(err.contains(&want), "expected {want:?} in:\n{err}");
    assert!(!out.contains("OK"), "{out}");

    // --no-bind: the same file is fine; the forward name that does not resolve is a warning.
    let (code, out, err) = check(&conf, &["--no-bind"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": OK (protocol 2)"), "{out}");
    assert!(
        err.contains(
            "warning: listener \"test\": forward nosuchhost.invalid:6379: does not resolve now"
        ),
        "{err}"
    );
    drop(holder);
    // The port free again: bound for a moment and let go.
    let (code, _, err) = check(&conf, &[]);
    assert_eq!(code, 0, "{err}");
    TcpListener::bind(taken).expect("check let the port go");
}

#[test]
fn the_ports_of_the_daemon_running_the_config_are_not_tried() {
    let site = Site::new();
    let service = Service::start(Behaviour::Echo);
    let (tunnel_port, metrics_port) = (free_port(), free_port());
    let text = format!(
        "{}\n[metrics]\nlisten = \"{metrics_port}\"\n",
        listener_toml(tunnel_port, service.addr, "listener.pem", &trusted_peers())
    );
    let daemon = site.start("listener.toml", &text);
    assert_eq!(daemon.addr(), tunnel_port);

    let (code, out, err) = check(&daemon.config, &[]);
    assert_eq!(code, 0, "the daemon's own ports failed the check: {err}");
    assert!(out.contains(": OK (protocol 2)"), "{out}");
    let pid = daemon.child.id();
    assert!(
        out.contains(&format!("held by the running daemon (pid {pid}), not tried: listener \"test\" {tunnel_port}, [metrics] {metrics_port}")),
        "{out}"
    );

    // A new listener on a port another socket holds is still caught while the daemon runs.
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    daemon.edit_config(|t| {
        format!(
            "{t}\n[[listener]]\nname = \"second\"\nlisten = \"{taken}\"\nforward = \"{}\"\n{}",
            service.addr,
            trusted_peers()
        )
    });
    let (code, _, err) = check(&daemon.config, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "listener \"second\": key `listen`: {taken}: {IN_USE}"
        )),
        "{err}"
    );
    assert!(!err.contains("listener \"test\""), "{err}");
}

#[test]
fn a_unix_listen_socket_in_a_missing_directory_fails() {
    let site = Site::new();
    let dead = dead_port();
    let conf = site.write(
        "connector.toml",
        &connector_toml("unix:missing/app.sock", dead.addr, ""),
    );
    for extra in [&[][..], &["--no-bind"][..]] {
        let (code, out, err) = check(&conf, extra);
        assert_eq!(code, 1, "{extra:?}: {out}{err}");
        let dir = site.path("missing");
        let want = format!(
            "{}:6:10: connector \"test\": key `listen`: unix:{}: the directory {} does not exist",
            conf.display(),
            dir.join("app.sock").display(),
            dir.display()
        );
        assert!(err.contains(&want), "expected {want:?} in:\n{err}");
    }
    std::fs::create_dir(site.path("missing")).unwrap();
    let (code, _, err) = check(&conf, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !site.path("missing/app.sock").exists(),
        "check made no socket"
    );
}
