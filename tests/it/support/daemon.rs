//! Running the real `sealpipe` binary against real sockets: key files, config files, processes
//! with their logs, plaintext services and clients, metrics scrapes. Blocking std sockets keep
//! tests simple.

use std::fmt::Display;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use sealpipe::proto::identity::{Fingerprint, PrivateIdentity};
use sha2::{Digest, Sha256};

use super::mitm::{Mitm, RecordingEcho};
use super::{data, hash_to_end, hex, pem, pseudo_random};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sealpipe")
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

/// Runs `sealpipe ARGS`, which must exit with `code` and print exactly `sealpipe: error:
/// MESSAGE` on stderr (said once, nothing after it).
pub fn assert_cli_error(args: &[&str], code: i32, message: &str) {
    let (got, out, err) = run_cli(args);
    assert_eq!(got, code, "{args:?}: {out}{err}");
    assert_eq!(err, format!("sealpipe: error: {message}\n"), "{args:?}");
}

/// A child process (other than a [`Daemon`]), killed on drop.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and config files

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

    /// Writes the config file `name` and starts a daemon on it ([`Daemon::start`]).
    pub fn start(&self, name: &str, config: &str) -> Daemon {
        Daemon::start(&self.write(name, config))
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

pub fn test_data_dir() -> PathBuf {
    data("")
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

/// A listener config forwarding to `forward`, trusting `peers`; `extra` lines in `[defaults]`.
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

/// A connector config for `key` pinned to `peer`; `extra` lines in `[defaults]`.
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

/// [`listener_config`] on any port, trusting the test connector key.
pub fn listener_for(forward: SocketAddr, extra: &str) -> String {
    listener_config(any_port(), forward, &[connector_fp()], extra)
}

/// [`connector_config`] for the test connector key on any port, pinned to the test listener key.
pub fn connector_for(connect: SocketAddr, extra: &str) -> String {
    connector_config("connector.pem", any_port(), connect, &listener_fp(), extra)
}

/// A listener config (no `[defaults]`) whose `[[listener]]` has the `body` lines.
pub fn listener_toml(listen: SocketAddr, forward: impl Display, key: &str, body: &str) -> String {
    format!(
        "[identity]\nprivate_key = \"{key}\"\n\n[[listener]]\nname = \"test\"\nlisten = \"{listen}\"\nforward = \"{forward}\"\n{body}"
    )
}

/// A connector config (no `[defaults]`) for the test connector key, pinned to the test listener
/// key, whose `[[connector]]` has the `body` lines (from line 9 on).
pub fn connector_toml(listen: impl Display, connect: impl Display, body: &str) -> String {
    format!(
        "[identity]\nprivate_key = \"connector.pem\"\n\n[[connector]]\nname = \"test\"\nlisten = \"{listen}\"\nconnect = \"{connect}\"\npeer = \"{}\"\n{body}",
        listener_fp()
    )
}

/// The `peers` line that trusts the test connector key.
pub fn trusted_peers() -> String {
    format!("peers = [\"{}\"]\n", connector_fp())
}

/// A listener config with `allow_tofu = true` that also trusts the test connector key.
pub fn allow_tofu_listener(listen: SocketAddr, forward: SocketAddr, key: &str) -> String {
    listener_toml(
        listen,
        forward,
        key,
        &format!("{}allow_tofu = true\n", trusted_peers()),
    )
}

/// A listener config that writes a PROXY protocol v2 header to `forward`.
pub fn proxy_v2_listener(forward: SocketAddr) -> String {
    listener_for(forward, "") + "proxy_protocol = \"v2\"\n"
}

/// A connector config with `peer = "tofu"` and `known_peers` (next to the config), connecting to
/// `connect`.
pub fn tofu_connector_toml(connect: SocketAddr) -> String {
    format!(
        "[identity]\nprivate_key = \"connector.pem\"\n\n[[connector]]\nname = \"tofu\"\nlisten = \"127.0.0.1:0\"\nconnect = \"{connect}\"\npeer = \"tofu\"\nknown_peers = \"known_peers\"\nservice = \"test\"\n{NO_POOL}"
    )
}

/// One session per client, for tests that count handshakes, resumptions or connections (warm
/// and reused sessions are tested in `tests/it/reuse.rs`).
pub const NO_POOL: &str = "pool_max = 0\n";

/// Writes [`tofu_connector_toml`] as `connector.toml` in `site`.
pub fn tofu_connector(site: &Site, connect: SocketAddr) -> PathBuf {
    site.write("connector.toml", &tofu_connector_toml(connect))
}

/// The `[metrics]` section that serves the metrics on any loopback port.
pub const METRICS: &str = "\n[metrics]\nlisten = \"127.0.0.1:0\"\n";

// ---------------------------------------------------------------------------------------------
// Daemons

/// A `sealpipe run` process; killed on drop. Its stderr goes to a log file.
pub struct Daemon {
    pub child: Child,
    /// Its config file.
    pub config: PathBuf,
    pub log: PathBuf,
    /// The addresses its tunnels listen on, in the order they were logged.
    pub addrs: Vec<SocketAddr>,
}

/// What a daemon logs once a SIGHUP's configuration is in force.
const RELOADED: &str = "configuration reloaded";

impl Daemon {
    /// Starts `sealpipe run` and waits until it has bound every tunnel.
    pub fn start(config: &Path) -> Daemon {
        Self::start_with(config, &[])
    }

    /// [`Daemon::start`] with extra global options (e.g. `--log-format json`).
    pub fn start_with(config: &Path, options: &[&str]) -> Daemon {
        let mut command = Command::new(bin());
        command
            .args(options)
            .args(["--log-level", "debug", "run", "--config"])
            .arg(config)
            .stdout(Stdio::null());
        Self::start_command(config, command)
    }

    /// [`Daemon::start`] of `command`, a `sealpipe run` on `config` (perhaps behind a wrapper)
    /// whose stderr goes to the log here.
    pub fn start_command(config: &Path, mut command: Command) -> Daemon {
        let log = config.with_extension("log");
        let child = command
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child,
            config: config.to_path_buf(),
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

    /// Polls the log (logs are written asynchronously to the events) until `done` holds of it
    /// or 20 s have passed; returns the last text read. It checks nothing itself.
    fn wait_until(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.log_text();
            if done(&text) || Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the log contains `needle`; returns the log.
    pub fn wait_log(&self, needle: &str) -> String {
        self.wait_until(|text| text.contains(needle))
    }

    /// Waits until `needle` occurs at least `n` times in the log; returns the log.
    pub fn wait_log_count(&self, needle: &str, n: usize) -> String {
        self.wait_until(|text| text.matches(needle).count() >= n)
    }

    /// Waits for a log line containing `needle` and returns the first such line; fails the test,
    /// with the log, if none comes.
    pub fn wait_line(&self, needle: &str) -> String {
        let log = self.wait_log(needle);
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{log}"))
            .to_string()
    }

    /// The `resumed=` value of each "connection open" line so far ([`opens`]).
    pub fn opens(&self) -> Vec<bool> {
        opens(&self.log_text())
    }

    /// Waits until it has logged `n` "connection open" lines; returns [`Daemon::opens`] (which
    /// has fewer if they never came).
    pub fn wait_opens(&self, n: usize) -> Vec<bool> {
        opens(&self.wait_until(|text| opens(text).len() >= n))
    }

    /// Rewrites its config file with `edit` of the current text, which must change it.
    pub fn edit_config(&self, edit: impl FnOnce(&str) -> String) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let edited = edit(&text);
        assert_ne!(edited, text, "the edit changes nothing");
        std::fs::write(&self.config, edited).unwrap();
    }

    /// Sends SIGHUP and waits until one more "configuration reloaded" than before is logged;
    /// returns the log.
    pub fn reload(&self) -> String {
        let before = self.log_text().matches(RELOADED).count();
        self.signal("HUP");
        self.wait_log_count(RELOADED, before + 1)
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

/// A listener and a connector started as real processes, the connector's entry for clients.
pub struct Tunnel {
    pub site: Site,
    pub listener: Daemon,
    pub connector: Daemon,
    pub entry: SocketAddr,
}

impl Tunnel {
    /// Starts a listener on the config `listener` (`listener.toml` in `site`), then a connector
    /// on the config that `connector` writes for the listener's address (`connector.toml`).
    pub fn start(site: Site, listener: &str, connector: impl FnOnce(SocketAddr) -> String) -> Self {
        let listener = site.start("listener.toml", listener);
        let connector = site.start("connector.toml", &connector(listener.addr()));
        let entry = connector.addr();
        Tunnel {
            site,
            listener,
            connector,
            entry,
        }
    }

    /// Waits until both daemons have logged `n` "connection open" lines; returns their
    /// `resumed=` values, connector's and listener's.
    pub fn wait_opens(&self, n: usize) -> (Vec<bool>, Vec<bool>) {
        (self.connector.wait_opens(n), self.listener.wait_opens(n))
    }
}

/// A listener forwarding to `target` that trusts the test connector key, and a connector with
/// `key` pinned to `pin`; `extra` lines go into both `[defaults]`.
pub fn tunnel_with(target: SocketAddr, key: &str, pin: &Fingerprint, extra: &str) -> Tunnel {
    Tunnel::start(Site::new(), &listener_for(target, extra), |listener| {
        connector_config(key, any_port(), listener, pin, extra)
    })
}

/// [`tunnel_with`] the test connector key, correctly pinned.
pub fn tunnel_to(target: SocketAddr, extra: &str) -> Tunnel {
    tunnel_with(target, "connector.pem", &listener_fp(), extra)
}

/// [`tunnel_to`] with the metrics served on both sides ([`METRICS`], [`metrics_addr`]).
pub fn metrics_tunnel(target: SocketAddr) -> Tunnel {
    Tunnel::start(
        Site::new(),
        &(listener_for(target, "") + METRICS),
        // One session per client: the metrics tests count connections on both sides.
        |listener| connector_for(listener, "pool_max = 0") + METRICS,
    )
}

/// An [`allow_tofu_listener`] forwarding to `target`, and a TOFU connector
/// ([`tofu_connector_toml`]) whose `known_peers` does not exist yet.
pub fn tofu_tunnel(target: SocketAddr) -> Tunnel {
    Tunnel::start(
        Site::new(),
        &allow_tofu_listener(any_port(), target, "listener.pem"),
        tofu_connector_toml,
    )
}

/// Starts a listener with the test listener key on any port ([`listener_toml`]) in `site` as
/// `listener.toml`, forwarding to `forward`, with the `body` lines in its `[[listener]]`.
pub fn start_listener(site: &Site, forward: SocketAddr, body: &str) -> Daemon {
    site.start(
        "listener.toml",
        &listener_toml(any_port(), forward, "listener.pem", body),
    )
}

/// Starts the test connector ([`connector_for`]) in `site` as `connector.toml`, connecting to
/// `listener`, with `extra` in its `[defaults]`.
pub fn start_connector(site: &Site, listener: SocketAddr, extra: &str) -> Daemon {
    site.start("connector.toml", &connector_for(listener, extra))
}

// ---------------------------------------------------------------------------------------------
// Plaintext services

/// A loopback server: its address and how many connections it accepted.
pub struct Listening {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
}

/// Accepts connections on `bind` (`"127.0.0.1:0"`: any loopback port) and runs `handle` on each,
/// on a thread of its own.
pub fn serve(bind: &str, handle: impl Fn(TcpStream) + Clone + Send + 'static) -> Listening {
    let l = TcpListener::bind(bind).unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            a.fetch_add(1, Ordering::SeqCst);
            let handle = handle.clone();
            std::thread::spawn(move || handle(s));
        }
    });
    Listening { addr, accepted }
}

/// A byte stream whose write half closes on its own: TCP or a Unix socket.
pub trait Duplex: Read + Write + Send + Sized + 'static {
    fn clone_stream(&self) -> std::io::Result<Self>;
    fn shutdown_write(&self) -> std::io::Result<()>;
}

impl Duplex for TcpStream {
    fn clone_stream(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl Duplex for UnixStream {
    fn clone_stream(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// The SHA-256 of each connection's input, in the order the connections ended.
pub type Hashes = Arc<Mutex<Vec<[u8; 32]>>>;

/// A plaintext service on loopback; counts connections and keeps the hash of each one's input.
pub struct Service {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub received: Hashes,
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
        Self::start_on("127.0.0.1:0", behaviour)
    }

    /// [`Service::start`] on the address `bind`.
    pub fn start_on(bind: &str, behaviour: Behaviour) -> Service {
        let received = Hashes::default();
        let r = received.clone();
        let Listening { addr, accepted } = serve(bind, move |s| answer(s, behaviour, &r));
        Service {
            addr,
            accepted,
            received,
        }
    }
}

/// An echo service ([`Behaviour::Echo`]) on a Unix socket at `path`.
pub fn unix_echo(path: &Path) -> Hashes {
    let l = UnixListener::bind(path).unwrap();
    let received = Hashes::default();
    let r = received.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let r = r.clone();
            std::thread::spawn(move || answer(s, Behaviour::Echo, &r));
        }
    });
    received
}

/// Serves one connection of a [`Service`].
fn answer(mut s: impl Duplex, behaviour: Behaviour, received: &Mutex<Vec<[u8; 32]>>) {
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
    received.lock().unwrap().push(digest);
    if let Behaviour::AnswerAfterEof = behaviour {
        let answer = format!("got {} bytes, sha256 {}\n", all.len(), hex(&digest)).repeat(1000);
        let _ = s.write_all(answer.as_bytes());
    }
    let _ = s.shutdown_write();
}

/// What a [`proxy_target`] reports of each connection: the PROXY header, whole, and the SHA-256
/// of the payload that followed it.
pub type ProxyReport = (Vec<u8>, [u8; 32]);

/// A target that reads a PROXY v2 header on each connection, then echoes the payload. Once the
/// client has half-closed and every byte went back, it reports the header (whole, as raw bytes)
/// and the SHA-256 of the payload; a connection that fails on the way reports nothing.
pub fn proxy_target() -> (SocketAddr, mpsc::Receiver<ProxyReport>) {
    let (tx, rx) = mpsc::channel();
    let target = serve("127.0.0.1:0", move |mut s| {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut header = vec![0u8; 16];
        if s.read_exact(&mut header).is_err() {
            return;
        }
        let len = u16::from_be_bytes([header[14], header[15]]) as usize;
        header.resize(16 + len, 0);
        if s.read_exact(&mut header[16..]).is_err() {
            return;
        }
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    h.update(&buf[..n]);
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        let _ = s.shutdown(Shutdown::Write);
        let _ = tx.send((header, h.finalize().into()));
    });
    (target.addr, rx)
}

// ---------------------------------------------------------------------------------------------
// Plaintext clients

/// Sends `data` into `s` while reading the echo, on two threads, then half-closes; returns
/// (hash sent, hash received, bytes received).
pub fn echo_hashed(s: impl Duplex, data: Arc<Vec<u8>>) -> ([u8; 32], [u8; 32], usize) {
    let mut w = s.clone_stream().unwrap();
    let d = data.clone();
    let writer = std::thread::spawn(move || {
        for chunk in d.chunks(100_003) {
            w.write_all(chunk).unwrap();
        }
        w.shutdown_write().unwrap();
    });
    let mut r = s;
    let (received, n) = hash_to_end(&mut r);
    writer.join().unwrap();
    (Sha256::digest(&data[..]).into(), received, n)
}

/// [`echo_hashed`] through a new TCP connection to `addr`.
pub fn echo_exchange(addr: SocketAddr, data: Arc<Vec<u8>>) -> ([u8; 32], [u8; 32], usize) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    echo_hashed(s, data)
}

/// [`echo_hashed`] through a new connection to the Unix socket at `path`.
pub fn unix_echo_exchange(path: &Path, data: Arc<Vec<u8>>) -> ([u8; 32], [u8; 32], usize) {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    echo_hashed(s, data)
}

/// Sends `len` pseudo-random bytes (from `seed`) through `entry` to an echo service and asserts
/// that exactly they come back: the length, and the hashes of both sides.
pub fn assert_echoes(entry: SocketAddr, seed: u64, len: usize) {
    let (sent, received, n) = echo_exchange(entry, Arc::new(pseudo_random(seed, len)));
    assert_eq!(n, len, "bytes echoed through {entry}");
    assert_eq!(sent, received, "echo through {entry} differs");
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

/// One echoed round trip of `data` on an open connection.
pub fn echo_round(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).unwrap();
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, data);
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// The metrics address a daemon logged ("metrics listening … local=ADDR").
pub fn metrics_addr(d: &Daemon) -> SocketAddr {
    let log = d.log_text();
    log.lines()
        .filter(|l| l.contains("metrics listening"))
        .find_map(|l| l.split(" local=").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in:\n{log}"))
}

/// Sends `request` raw and returns the whole response.
pub fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /metrics`: the body of the answer, which must be a 200 in the Prometheus text format.
pub fn scrape(addr: SocketAddr) -> String {
    let r = http(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    let (head, body) = r.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{r}"));
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// The value of the sample `series` (name and labels exactly), if present.
pub fn value(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `name{tunnel="test",role="ROLE"<more>}`.
pub fn series(name: &str, role: &str, more: &str) -> String {
    format!("{name}{{tunnel=\"test\",role=\"{role}\"{more}}}")
}

/// Asserts that the scrape `text` has each `(name, more labels, value)` of [`series`] for `role`.
pub fn assert_values(text: &str, role: &str, expected: &[(&str, &str, u64)]) {
    for &(name, more, want) in expected {
        assert_eq!(
            value(text, &series(name, role, more)),
            Some(want),
            "{role} {name}{more}:\n{text}"
        );
    }
}

/// Scrapes until `series` has `want` (a counter may be updated just after the bytes it counts
/// are delivered), and returns the last scrape; fails the test after 20 s.
pub fn wait_value(addr: SocketAddr, series: &str, want: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(addr);
        if value(&text, series) == Some(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {want}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last 40 lines of `d`'s log, for a failure message.
pub fn tail(d: &Daemon) -> String {
    let log = d.log_text();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A long-lived clean connection through the adversary, echoing a little after every attack.
pub struct Clean {
    s: TcpStream,
    sent: Vec<u8>,
    seed: u64,
}

impl Clean {
    pub fn open(entry: SocketAddr, seed: u64) -> Clean {
        let s = TcpStream::connect(entry).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Clean {
            s,
            sent: Vec::new(),
            seed,
        }
    }

    /// One echoed round trip of 3000 bytes.
    pub fn round(&mut self) {
        self.seed += 1;
        let chunk = pseudo_random(self.seed, 3000);
        self.s.write_all(&chunk).expect("clean connection: write");
        let mut back = vec![0u8; chunk.len()];
        self.s
            .read_exact(&mut back)
            .expect("clean connection: read");
        assert!(back == chunk, "clean connection: echo differs");
        self.sent.extend_from_slice(&chunk);
    }

    /// Half-closes and expects a clean end; returns everything sent.
    pub fn finish(mut self) -> Vec<u8> {
        self.s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        self.s
            .read_to_end(&mut rest)
            .expect("clean connection: clean end");
        assert!(rest.is_empty());
        self.sent
    }
}

/// A tunnel whose connector reaches the listener through an on-path adversary ([`Mitm`]), to a
/// service that records every connection, with one clean long-lived connection already echoing
/// (proxy connection 0, service connection 0, never attacked).
pub struct MitmRig {
    pub site: Site,
    pub service: RecordingEcho,
    pub listener: Daemon,
    pub connector: Daemon,
    pub mitm: Mitm,
    pub entry: SocketAddr,
    pub clean: Clean,
}

impl MitmRig {
    /// Both daemons with `tuning` in their tunnels.
    pub fn start(tuning: &str) -> MitmRig {
        let site = Site::new();
        let service = RecordingEcho::start();
        let listener = site.start("listener.toml", &listener_for(service.addr, tuning));
        let mitm = Mitm::start(listener.addr());
        let connector = start_connector(&site, mitm.addr, tuning);
        let entry = connector.addr();
        let mut clean = Clean::open(entry, 1000);
        clean.round();
        assert_eq!(service.count(), 1);
        MitmRig {
            site,
            service,
            listener,
            connector,
            mitm,
            entry,
            clean,
        }
    }
}
