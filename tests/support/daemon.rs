//! Running the real `sealpipe` binary against real sockets: key files, config files, processes
//! with their logs, plaintext services and clients. Blocking std sockets keep tests simple.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sealpipe::proto::identity::{Fingerprint, PrivateIdentity};
use sha2::{Digest, Sha256};

use super::{data, pem};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sealpipe")
}

/// A temporary directory with the test keys copied in at mode 0600.
pub struct Site {
    pub dir: tempfile::TempDir,
}

impl Site {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (from, to) in [
            ("openssl-rsa2048.pem", "listener.pem"),
            ("peer-b.pem", "connector.pem"),
            ("untrusted.pem", "untrusted.pem"),
        ] {
            let p = dir.path().join(to);
            std::fs::write(&p, pem(from)).unwrap();
            set_mode(&p, 0o600);
        }
        Site { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

pub fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn fingerprint_of(pem_name: &str) -> Fingerprint {
    PrivateIdentity::from_pem(&pem(pem_name))
        .unwrap()
        .fingerprint()
}

pub fn listener_fp() -> Fingerprint {
    fingerprint_of("openssl-rsa2048.pem")
}

pub fn connector_fp() -> Fingerprint {
    fingerprint_of("peer-b.pem")
}

/// Let the daemon pick its port (read back from its log with [`Daemon::addr`]).
pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A loopback address where connections are refused, held for as long as the value lives (a
/// bound socket that never listens), so that no other test can take the port meanwhile.
pub struct DeadPort {
    pub addr: SocketAddr,
    _socket: socket2::Socket,
}

pub fn dead_port() -> DeadPort {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&any_port().into()).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    DeadPort {
        addr,
        _socket: socket,
    }
}

/// A `sealpipe run` process; killed on drop. Its stderr goes to a log file.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    /// The addresses its tunnels listen on, in the order they were logged.
    pub addrs: Vec<SocketAddr>,
}

impl Daemon {
    /// Starts `sealpipe run` and waits until it has bound every tunnel.
    pub fn start(config: &Path) -> Daemon {
        Self::start_with(config, &[])
    }

    /// [`Daemon::start`] with extra global options (e.g. `--log-format json`).
    pub fn start_with(config: &Path, options: &[&str]) -> Daemon {
        let log = config.with_extension("log");
        let child = Command::new(bin())
            .args(options)
            .args(["--log-level", "debug", "run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child,
            log,
            addrs: Vec::new(),
        };
        d.wait_running();
        d.addrs = d
            .log_text()
            .lines()
            .filter(|l| l.contains("tunnel listening"))
            .filter_map(|l| {
                // `local=ADDR` in human logs, `"local":"ADDR"` in JSON ones.
                let rest = l
                    .split(" local=")
                    .nth(1)
                    .or_else(|| l.split("\"local\":\"").nth(1))?;
                rest.split(['"', ' ']).next()?.parse().ok()
            })
            .collect();
        d
    }

    /// The address of its (first) tunnel.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    fn wait_running(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("sealpipe exited with {status}: {}", self.log_text());
            }
            // The log line comes after every socket is bound; connecting to probe would open a
            // tunneled connection and disturb the test's counts.
            if self.log_text().contains("sealpipe running") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("sealpipe did not start: {}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (logs are written asynchronously to the events).
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.log_text();
            if text.contains(needle) || Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: &str) {
        use nix::sys::signal::Signal;
        let signo = match sig {
            "HUP" => Signal::SIGHUP,
            "TERM" => Signal::SIGTERM,
            "INT" => Signal::SIGINT,
            other => panic!("signal {other}"),
        };
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signo).unwrap_or_else(|e| panic!("kill -{sig}: {e}"));
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A listener and a connector started as real processes, the connector's entry for clients.
pub struct Tunnel {
    pub site: Site,
    pub listener: Daemon,
    pub connector: Daemon,
    pub entry: SocketAddr,
}

/// A listener forwarding to `target` that trusts the test connector key, and a connector with
/// `key` pinned to `pin`; `extra` lines go into both `[defaults]`.
pub fn tunnel_with(target: SocketAddr, key: &str, pin: &Fingerprint, extra: &str) -> Tunnel {
    let site = Site::new();
    let lconf = site.write(
        "listener.toml",
        &listener_config(any_port(), target, &[connector_fp()], extra),
    );
    let listener = Daemon::start(&lconf);
    let cconf = site.write(
        "connector.toml",
        &connector_config(key, any_port(), listener.addr(), pin, extra),
    );
    let connector = Daemon::start(&cconf);
    let entry = connector.addr();
    Tunnel {
        site,
        listener,
        connector,
        entry,
    }
}

/// Starts the test connector (`connector.pem`, pinned to the test listener key) in `site`,
/// connecting to `listener`, with `extra` in its `[defaults]`; returns it and its config path.
pub fn start_connector(site: &Site, listener: SocketAddr, extra: &str) -> (Daemon, PathBuf) {
    let cconf = site.write(
        "connector.toml",
        &connector_config("connector.pem", any_port(), listener, &listener_fp(), extra),
    );
    (Daemon::start(&cconf), cconf)
}

/// [`tunnel_with`] the test connector key, correctly pinned.
pub fn tunnel_to(target: SocketAddr, extra: &str) -> Tunnel {
    tunnel_with(target, "connector.pem", &listener_fp(), extra)
}

/// A listener config forwarding to `forward`, trusting `peers`.
pub fn listener_config(
    listen: SocketAddr,
    forward: SocketAddr,
    peers: &[Fingerprint],
    extra: &str,
) -> String {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "[identity]\nprivate_key = \"listener.pem\"\n\n[defaults]\n{extra}\n\n[[listener]]\nname = \"test\"\nlisten = \"{listen}\"\nforward = \"{forward}\"\npeers = [{}]\n",
        peers.join(", ")
    )
}

/// A connector config for `key` pinned to `peer`.
pub fn connector_config(
    key: &str,
    listen: SocketAddr,
    connect: SocketAddr,
    peer: &Fingerprint,
    extra: &str,
) -> String {
    format!(
        "[identity]\nprivate_key = \"{key}\"\n\n[defaults]\n{extra}\n\n[[connector]]\nname = \"test\"\nlisten = \"{listen}\"\nconnect = \"{connect}\"\npeer = \"{peer}\"\n"
    )
}

/// A plaintext service on loopback; counts connections and keeps the hash of each one's input.
pub struct Service {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub received: Arc<Mutex<Vec<[u8; 32]>>>,
}

/// What the service does with one connection.
#[derive(Clone, Copy)]
pub enum Behaviour {
    /// Sends back every byte as it arrives; EOF for EOF.
    Echo,
    /// Reads everything until EOF, then answers with the hash of it and closes.
    AnswerAfterEof,
}

impl Service {
    pub fn start(behaviour: Behaviour) -> Service {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (a, r) = (accepted.clone(), received.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                std::thread::spawn(move || {
                    let mut h = Sha256::new();
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut all = Vec::new();
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                h.update(&buf[..n]);
                                match behaviour {
                                    Behaviour::Echo => {
                                        if s.write_all(&buf[..n]).is_err() {
                                            return;
                                        }
                                    }
                                    Behaviour::AnswerAfterEof => all.extend_from_slice(&buf[..n]),
                                }
                            }
                        }
                    }
                    let digest: [u8; 32] = h.finalize().into();
                    r.lock().unwrap().push(digest);
                    if let Behaviour::AnswerAfterEof = behaviour {
                        let answer = format!("got {} bytes, sha256 {}\n", all.len(), hex(&digest))
                            .repeat(1000);
                        let _ = s.write_all(answer.as_bytes());
                    }
                    let _ = s.shutdown(Shutdown::Write);
                });
            }
        });
        Service {
            addr,
            accepted,
            received,
        }
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Random-looking bytes from a seed (SHA-256 in counter mode; fast enough for tests).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            &Sha256::new()
                .chain_update(seed.to_le_bytes())
                .chain_update(i.to_le_bytes())
                .finalize(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// Sends `data` through `addr` while reading the echo; returns (hash sent, hash received, bytes
/// received). Writes and reads at the same time, on two threads.
pub fn echo_exchange(addr: SocketAddr, data: Arc<Vec<u8>>) -> ([u8; 32], [u8; 32], usize) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = s.try_clone().unwrap();
    let d = data.clone();
    let writer = std::thread::spawn(move || {
        for chunk in d.chunks(100_003) {
            w.write_all(chunk).unwrap();
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut r = s;
    let mut h = Sha256::new();
    let mut n = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k;
            }
            Err(e) => panic!("read after {n} bytes: {e}"),
        }
    }
    writer.join().unwrap();
    (Sha256::digest(&data[..]).into(), h.finalize().into(), n)
}

/// Connects through `addr`, sends `msg`, and reads until the end: Ok(bytes) on a clean EOF,
/// Err(kind) on an error such as a reset.
pub fn try_exchange(addr: SocketAddr, msg: &[u8]) -> Result<Vec<u8>, std::io::ErrorKind> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.kind())?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // A reset may arrive before the write; the kernel reports it once, to whichever call comes
    // first, so the write's error is the answer too.
    s.write_all(msg).map_err(|e| e.kind())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.kind())?;
    Ok(out)
}

pub fn test_data_dir() -> PathBuf {
    data("")
}

/// Runs `sealpipe ARGS`; returns the exit code, stdout and stderr.
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A listener config whose `[[listener]]` has the `body` lines.
pub fn listener_toml(listen: SocketAddr, forward: SocketAddr, key: &str, body: &str) -> String {
    format!(
        "[identity]\nprivate_key = \"{key}\"\n\n[[listener]]\nname = \"test\"\nlisten = \"{listen}\"\nforward = \"{forward}\"\n{body}"
    )
}

/// A connector config with `peer = "tofu"` and `known_peers` in `site`, connecting to `connect`.
pub fn tofu_connector(site: &Site, connect: SocketAddr) -> PathBuf {
    site.write(
        "connector.toml",
        &format!(
            "[identity]\nprivate_key = \"connector.pem\"\n\n[[connector]]\nname = \"tofu\"\nlisten = \"127.0.0.1:0\"\nconnect = \"{connect}\"\npeer = \"tofu\"\nknown_peers = \"known_peers\"\n"
        ),
    )
}

/// The metrics address a daemon logged ("metrics listening … local=ADDR").
pub fn metrics_addr(d: &Daemon) -> SocketAddr {
    let log = d.log_text();
    log.lines()
        .filter(|l| l.contains("metrics listening"))
        .find_map(|l| l.split(" local=").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in:\n{log}"))
}

/// The `resumed=` value of each "connection open" line of `log`, in order.
pub fn opens(log: &str) -> Vec<bool> {
    log.lines()
        .filter(|l| l.contains("connection open"))
        .map(|l| {
            if l.contains("resumed=true") {
                true
            } else {
                assert!(l.contains("resumed=false"), "{l}");
                false
            }
        })
        .collect()
}

/// Sends `msg` through `entry` to an echo service, half-closes, and expects it back.
pub fn echo_ok(entry: SocketAddr, msg: &[u8]) {
    let mut s = TcpStream::connect(entry).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(msg).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    let r = s.read_to_end(&mut back);
    assert!(r.is_ok() && back == msg, "through {entry}: {r:?} {back:?}");
}
