//! Unix domain sockets on the plaintext side, with the real daemon: a connector listening on a
//! Unix socket, a listener forwarding to a Unix-socket service, the socket file's mode, stale
//! and foreign files at the path, reload, and `unix:` refused on the sealed side.

use crate::support;

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use support::daemon::*;
use support::{pseudo_random, wait_for};

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// A listener config forwarding to `forward` (any address syntax).
fn listener_to(forward: &str) -> String {
    listener_toml(any_port(), forward, "listener.pem", &trusted_peers())
}

#[test]
fn unix_socket_on_both_plaintext_ends_with_half_close_mode_and_reload() {
    let site = Site::new();
    let target = site.path("target.sock");
    let received = unix_echo(&target);
    // The listener forwards to the Unix-socket service, by a path relative to its config.
    let listener = site.start("listener.toml", &listener_to("unix:target.sock"));
    // The connector listens on a Unix socket, relative to its config too.
    let mut connector = site.start(
        "connector.toml",
        &connector_toml("unix:app.sock", listener.addr(), "socket_mode = \"0640\""),
    );
    let app = site.path("app.sock");
    assert!(
        connector
            .log_text()
            .contains(&format!("local={}", app.display())),
        "{}",
        connector.log_text()
    );
    assert_eq!(mode_of(&app), 0o640, "socket_mode is applied");

    // 3 MiB each way at once, then a half-close each way.
    let data = Arc::new(pseudo_random(7, 3 << 20));
    let (sent, back, _) = unix_echo_exchange(&app, data.clone());
    assert_eq!(sent, back, "echo through two Unix sockets differs");
    wait_for("the service's hash", || {
        !received.lock().unwrap().is_empty()
    });
    assert_eq!(
        received.lock().unwrap()[0],
        sent,
        "the service saw exactly the input"
    );
    // The close line names the Unix client as the socket path (`client=`: its `peer=` is the
    // listener).
    let line = connector.wait_line("connection closed");
    let uid = nix::unistd::getuid();
    assert!(
        line.contains(&format!("client=unix:{}[uid={uid},pid=", app.display()))
            && line.contains(&format!("sent={}", 3 << 20)),
        "{line}"
    );

    // A reload with another mode keeps the same socket file (same inode) and applies the mode.
    let ino = std::fs::symlink_metadata(&app).unwrap().ino();
    std::fs::write(
        &connector.config,
        connector_toml("unix:app.sock", listener.addr(), "socket_mode = \"0600\""),
    )
    .unwrap();
    connector.reload();
    assert_eq!(std::fs::symlink_metadata(&app).unwrap().ino(), ino);
    assert_eq!(mode_of(&app), 0o600);
    let small = Arc::new(b"after reload".to_vec());
    let (sent, back, _) = unix_echo_exchange(&app, small);
    assert_eq!(sent, back);

    // The socket file is removed on shutdown.
    connector.signal("TERM");
    let status = connector.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!app.exists(), "socket file left behind");
    connector.kill();
}

#[test]
fn default_mode_is_0660_and_group_is_set() {
    let site = Site::new();
    let dead = dead_port();
    // Our own primary group, which an unprivileged process may always set.
    let gid = std::fs::metadata(site.dir.path()).unwrap().gid();
    let _c = site.start(
        "connector.toml",
        &connector_toml(
            "unix:app.sock",
            dead.addr,
            &format!("socket_group = \"{gid}\""),
        ),
    );
    let app = site.path("app.sock");
    assert_eq!(mode_of(&app), 0o660);
    assert_eq!(std::fs::symlink_metadata(&app).unwrap().gid(), gid);
}

#[test]
fn stale_socket_is_replaced_and_a_live_one_refused() {
    let site = Site::new();
    let dead = dead_port();
    let app = site.path("app.sock");
    // A socket file nobody listens on any more (a crashed daemon's leftover).
    drop(UnixListener::bind(&app).unwrap());
    assert!(app.exists());
    let first = site.start(
        "connector.toml",
        &connector_toml("unix:app.sock", dead.addr, ""),
    );
    assert!(
        first.log_text().contains("removed a stale socket file"),
        "{}",
        first.log_text()
    );
    // It accepts: the connection is taken (then closed, the listener being down).
    let mut s = UnixStream::connect(&app).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty());

    // A second daemon on the same path refuses to start and leaves the socket alone.
    let other = site.write(
        "other.toml",
        &connector_toml("unix:app.sock", dead.addr, ""),
    );
    let (code, _, err) = run_cli(&["run", "--config", other.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!(
            "{} is in use: another process is listening on it",
            app.display()
        )),
        "{err}"
    );
    assert!(
        UnixStream::connect(&app).is_ok(),
        "the first daemon's socket is intact"
    );
}

#[test]
fn a_file_at_the_socket_path_is_refused_by_check_and_run() {
    let site = Site::new();
    let dead = dead_port();
    let app: PathBuf = site.write("app.sock", "not a socket");
    let cconf = site.write(
        "connector.toml",
        &connector_toml("unix:app.sock", dead.addr, ""),
    );
    for cmd in ["check", "run"] {
        let (code, _, err) = run_cli(&[cmd, "--config", cconf.to_str().unwrap()]);
        assert_ne!(code, 0, "{cmd} accepted it");
        let want = format!(
            "{}:6:10: connector \"test\": key `listen`: {} exists and is not a socket; sealpipe will not replace it",
            cconf.display(),
            app.display()
        );
        assert!(err.contains(&want), "{cmd}: {err}");
    }
    assert_eq!(std::fs::read_to_string(&app).unwrap(), "not a socket");
}

#[test]
fn unix_on_the_sealed_side_is_refused() {
    let site = Site::new();
    let lconf = site.write(
        "listener.toml",
        &listener_to("127.0.0.1:1").replace("listen = \"127.0.0.1:0\"", "listen = \"unix:l.sock\""),
    );
    let (code, _, err) = run_cli(&["check", "--config", lconf.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("{}:6:10: listener \"test\": key `listen`: invalid address \"unix:l.sock\": the sealed side must be a TCP address", lconf.display())),
        "{err}"
    );
    let cconf = site.write(
        "connector.toml",
        &connector_toml(any_port(), "unix:/run/l.sock", ""),
    );
    let (code, _, err) = run_cli(&["check", "--config", cconf.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("{}:7:11: connector \"test\": key `connect`: invalid address \"unix:/run/l.sock\": the sealed side must be a TCP address", cconf.display())),
        "{err}"
    );
}

#[test]
fn an_unreachable_unix_target_closes_the_client() {
    let site = Site::new();
    let listener = site.start("listener.toml", &listener_to("unix:nobody.sock"));
    let connector = start_connector(&site, listener.addr(), "");
    let r = try_exchange(connector.addr(), b"hello");
    assert_eq!(r, Err(std::io::ErrorKind::ConnectionReset));
    let log = listener.wait_log("forward target unreachable");
    assert!(
        log.contains("forward target unreachable") && log.contains("nobody.sock"),
        "{log}"
    );
}
