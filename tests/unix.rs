//! Unix domain sockets on the plaintext side, with the real daemon: a connector listening on a
//! Unix socket, a listener forwarding to a Unix-socket service, the socket file's mode, stale
//! and foreign files at the path, reload, and `unix:` refused on the sealed side.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::daemon::*;

/// An echo service on a Unix socket: sends back every byte, EOF for EOF; records the hash of
/// each connection's input.
fn unix_echo(path: &Path) -> Arc<Mutex<Vec<[u8; 32]>>> {
    let l = UnixListener::bind(path).unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let r = received.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let r = r.clone();
            std::thread::spawn(move || {
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            h.update(&buf[..n]);
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                r.lock().unwrap().push(h.finalize().into());
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    received
}

/// Sends `data` into the Unix socket at `path` while reading the echo, then half-closes;
/// returns (hash sent, hash received).
fn unix_exchange(path: &Path, data: Arc<Vec<u8>>) -> ([u8; 32], [u8; 32]) {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = s.try_clone().unwrap();
    let d = data.clone();
    let writer = std::thread::spawn(move || {
        for chunk in d.chunks(100_003) {
            w.write_all(chunk).unwrap();
        }
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut r = s;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => h.update(&buf[..k]),
            Err(e) => panic!("read: {e}"),
        }
    }
    writer.join().unwrap();
    (Sha256::digest(&data[..]).into(), h.finalize().into())
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// A connector config listening on `listen` (a `unix:` address), with `extra` tunnel keys.
fn unix_connector_config(listen: &str, connect: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "[identity]\nprivate_key = \"connector.pem\"\n\n[[connector]]\nname = \"test\"\nlisten = \"{listen}\"\nconnect = \"{connect}\"\npeer = \"{}\"\n{extra}\n",
        listener_fp()
    )
}

/// A listener config forwarding to `forward` (any address syntax).
fn listener_to(forward: &str) -> String {
    format!(
        "[identity]\nprivate_key = \"listener.pem\"\n\n[[listener]]\nname = \"test\"\nlisten = \"127.0.0.1:0\"\nforward = \"{forward}\"\npeers = [\"{}\"]\n",
        connector_fp()
    )
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn unix_socket_on_both_plaintext_ends_with_half_close_mode_and_reload() {
    let site = Site::new();
    let target = site.path("target.sock");
    let received = unix_echo(&target);
    // The listener forwards to the Unix-socket service, by a path relative to its config.
    let lconf = site.write("listener.toml", &listener_to("unix:target.sock"));
    let listener = Daemon::start(&lconf);
    // The connector listens on a Unix socket, relative to its config too.
    let cconf = site.write(
        "connector.toml",
        &unix_connector_config("unix:app.sock", listener.addr(), "socket_mode = \"0640\""),
    );
    let mut connector = Daemon::start(&cconf);
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
    let (sent, back) = unix_exchange(&app, data.clone());
    assert_eq!(sent, back, "echo through two Unix sockets differs");
    wait_for("the service's hash", || {
        !received.lock().unwrap().is_empty()
    });
    assert_eq!(
        received.lock().unwrap()[0],
        sent,
        "the service saw exactly the input"
    );
    // The close line names the Unix client as the socket path.
    let log = connector.wait_log("connection closed");
    let line = log
        .lines()
        .find(|l| l.contains("connection closed"))
        .unwrap();
    let uid = nix::unistd::getuid();
    assert!(
        line.contains(&format!("peer=unix:{}[uid={uid},pid=", app.display()))
            && line.contains(&format!("sent={}", 3 << 20)),
        "{line}"
    );

    // A reload with another mode keeps the same socket file (same inode) and applies the mode.
    let ino = std::fs::symlink_metadata(&app).unwrap().ino();
    std::fs::write(
        &cconf,
        unix_connector_config("unix:app.sock", listener.addr(), "socket_mode = \"0600\""),
    )
    .unwrap();
    connector.signal("HUP");
    connector.wait_log("configuration reloaded");
    assert_eq!(std::fs::symlink_metadata(&app).unwrap().ino(), ino);
    assert_eq!(mode_of(&app), 0o600);
    let small = Arc::new(b"after reload".to_vec());
    let (sent, back) = unix_exchange(&app, small);
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
    let cconf = site.write(
        "connector.toml",
        &unix_connector_config(
            "unix:app.sock",
            dead.addr,
            &format!("socket_group = \"{gid}\""),
        ),
    );
    let _c = Daemon::start(&cconf);
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
    let cconf = site.write(
        "connector.toml",
        &unix_connector_config("unix:app.sock", dead.addr, ""),
    );
    let first = Daemon::start(&cconf);
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
        &unix_connector_config("unix:app.sock", dead.addr, ""),
    );
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&other)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
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

fn run_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_file_at_the_socket_path_is_refused_by_check_and_run() {
    let site = Site::new();
    let dead = dead_port();
    let app: PathBuf = site.write("app.sock", "not a socket");
    let cconf = site.write(
        "connector.toml",
        &unix_connector_config("unix:app.sock", dead.addr, ""),
    );
    for cmd in ["check", "run"] {
        let (ok, err) = run_cli(&[cmd, "--config", cconf.to_str().unwrap()]);
        assert!(!ok, "{cmd} accepted it");
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
    let (ok, err) = run_cli(&["check", "--config", lconf.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains(&format!("{}:6:10: listener \"test\": key `listen`: invalid address \"unix:l.sock\": the sealed side must be a TCP address", lconf.display())),
        "{err}"
    );
    let cconf = site.write(
        "connector.toml",
        &format!(
            "[identity]\nprivate_key = \"connector.pem\"\n\n[[connector]]\nname = \"test\"\nlisten = \"127.0.0.1:0\"\nconnect = \"unix:/run/l.sock\"\npeer = \"{}\"\n",
            listener_fp()
        ),
    );
    let (ok, err) = run_cli(&["check", "--config", cconf.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains(&format!("{}:7:11: connector \"test\": key `connect`: invalid address \"unix:/run/l.sock\": the sealed side must be a TCP address", cconf.display())),
        "{err}"
    );
}

#[test]
fn an_unreachable_unix_target_closes_the_client() {
    let site = Site::new();
    let lconf = site.write("listener.toml", &listener_to("unix:nobody.sock"));
    let listener = Daemon::start(&lconf);
    let (connector, _) = start_connector(&site, listener.addr(), "");
    let r = try_exchange(connector.addr(), b"hello");
    assert_eq!(r, Err(std::io::ErrorKind::ConnectionReset));
    let log = listener.wait_log("forward target unreachable");
    assert!(
        log.contains("forward target unreachable") && log.contains("nobody.sock"),
        "{log}"
    );
}
