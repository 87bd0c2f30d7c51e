//! Socket plumbing shared by both roles: options, outgoing connects with fresh name resolution,
//! abortive close, per-tunnel limits, and the plaintext side's Unix domain sockets.
//!
//! The plaintext side of a tunnel (a connector's `listen`, a listener's `forward`) may be a Unix
//! socket ([`Conn`], [`Bound`]); the sealed side is always TCP. A Unix stream has no reset:
//! where a TCP socket would be closed with an RST ([`reset_on_close`]), a Unix one is simply
//! closed, and its peer sees an end of stream (a half-closed connection that ended early looks
//! the same as a clean close, so applications needing the difference must frame their data).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::addr::Address;
use crate::tunnel::settings::SocketPermissions;

/// TCP_NODELAY and keepalive on every socket we own.
pub(crate) fn configure(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let _ = SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// `TCP_USER_TIMEOUT` is this many `dead_peer_timeout`s (PROTOCOL.md §4.4): the keepalives
/// find a silent peer within one; the kernel's bound is for data that cannot leave (the peer's
/// window closed), where it also ends a connection whose far client merely stopped reading, so
/// it is given longer.
pub(crate) const USER_TIMEOUT_FACTOR: u32 = 3;

/// `TCP_USER_TIMEOUT` (Linux) on a sealed socket: data left unacknowledged for
/// [`USER_TIMEOUT_FACTOR`] × `dead_peer_timeout` (a peer whose kernel stopped acknowledging, or
/// a window that stayed closed that long) ends the connection with an error (PROTOCOL.md §4.4).
/// `None`: the kernel's default. Elsewhere, nothing.
pub(crate) fn set_user_timeout(stream: &TcpStream, timeout: Option<Duration>) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(t) = timeout {
        let t = t.saturating_mul(USER_TIMEOUT_FACTOR);
        let _ = SockRef::from(stream).set_tcp_user_timeout(Some(t));
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (stream, timeout);
}

/// Makes the coming close of `stream` a reset (RST) instead of a clean FIN.
pub(crate) fn reset_on_close(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Resolves `addr` anew (so a DNS change is followed) and connects to the first address that
/// answers within `timeout`.
pub(crate) async fn connect(addr: &Address, timeout: Duration) -> std::io::Result<TcpStream> {
    let attempt = async {
        let mut last = None;
        for sa in addr.resolve().await? {
            match TcpStream::connect(sa).await {
                Ok(s) => {
                    configure(&s);
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("{addr}: no address"))
        }))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out after {timeout:?}"),
            ))
        })
}

/// A plaintext-side connection: TCP, or a Unix domain socket.
#[derive(Debug)]
pub enum Conn {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix domain socket connection.
    Unix(UnixStream),
}

impl Conn {
    /// Makes the coming close abortive: an RST for TCP. A Unix stream has no such thing and is
    /// simply closed (its peer sees an end of stream).
    pub fn reset_on_close(&self) {
        if let Conn::Tcp(s) = self {
            reset_on_close(s);
        }
    }
}

/// Who connected to a tunnel: an IP address, or a client of a Unix socket (which has no
/// address of its own: the socket's path stands for it in logs, with the client's user and
/// process ids from the kernel, `unix:/run/app.sock[uid=1000,pid=4242]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A TCP peer.
    Ip(SocketAddr),
    /// A client of the Unix socket at `path`.
    Unix {
        /// The listening socket's path.
        path: Arc<Path>,
        /// The client's user id (SO_PEERCRED), if known.
        uid: Option<u32>,
        /// The client's process id at connect time, if known.
        pid: Option<i32>,
    },
}

impl Peer {
    /// The peer's IP address; `None` for a Unix socket client.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Peer::Ip(sa) => Some(sa.ip()),
            Peer::Unix { .. } => None,
        }
    }

    /// The peer's socket address; `None` for a Unix socket client.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Peer::Ip(sa) => Some(*sa),
            Peer::Unix { .. } => None,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Ip(sa) => write!(f, "{sa}"),
            Peer::Unix { path, uid, pid } => {
                write!(f, "unix:{}", path.display())?;
                match (uid, pid) {
                    (Some(u), Some(p)) => write!(f, "[uid={u},pid={p}]"),
                    (Some(u), None) => write!(f, "[uid={u}]"),
                    _ => Ok(()),
                }
            }
        }
    }
}

impl From<SocketAddr> for Peer {
    fn from(sa: SocketAddr) -> Self {
        Peer::Ip(sa)
    }
}

/// Connects to a plaintext target: a Unix socket path, or TCP as [`connect`].
pub(crate) async fn connect_local(addr: &Address, timeout: Duration) -> std::io::Result<Conn> {
    let Address::Unix(path) = addr else {
        return connect(addr, timeout).await.map(Conn::Tcp);
    };
    match tokio::time::timeout(timeout, UnixStream::connect(path)).await {
        Ok(Ok(s)) => Ok(Conn::Unix(s)),
        Ok(Err(e)) => Err(std::io::Error::new(e.kind(), format!("{addr}: {e}"))),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connect to {addr} timed out after {timeout:?}"),
        )),
    }
}

/// A listening socket of a tunnel: TCP, or a Unix socket whose file is removed when this is
/// dropped.
#[derive(Debug)]
pub(crate) enum Bound {
    /// A TCP listening socket.
    Tcp(TcpListener),
    /// A Unix listening socket and its file.
    Unix(UnixListener, SocketFile),
}

impl Bound {
    /// The bound address, for logs: `IP:PORT` or the socket path.
    pub(crate) fn local(&self) -> String {
        match self {
            Bound::Tcp(l) => l
                .local_addr()
                .map_or_else(|e| e.to_string(), |a| a.to_string()),
            Bound::Unix(_, f) => f.path.display().to_string(),
        }
    }

    /// Accepts one connection.
    pub(crate) async fn accept(&self) -> std::io::Result<(Conn, Peer)> {
        match self {
            Bound::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                Ok((Conn::Tcp(s), Peer::Ip(peer)))
            }
            Bound::Unix(l, f) => {
                let (s, _) = l.accept().await?;
                let cred = s.peer_cred().ok();
                let peer = Peer::Unix {
                    path: f.peer.clone(),
                    uid: cred.map(|c| c.uid()),
                    pid: cred.and_then(|c| c.pid()),
                };
                Ok((Conn::Unix(s), peer))
            }
        }
    }
}

/// The file of a Unix socket we bound; removed on drop if it is still the same file (not one
/// another process put there since). A socket systemd bound has its file left alone.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    peer: Arc<Path>,
    /// Device and inode of the file we made; `None` for a file that is not ours to remove.
    ours: Option<(u64, u64)>,
}

impl SocketFile {
    /// The path of a socket that another process bound (systemd, socket activation): named in
    /// logs, never removed.
    pub(crate) fn not_ours(path: PathBuf) -> SocketFile {
        SocketFile {
            peer: Arc::from(path.as_path()),
            path,
            ours: None,
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let Some((dev, ino)) = self.ours else {
            return;
        };
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if m.dev() == dev && m.ino() == ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Why a Unix socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UnixBindError {
    /// Something that is not a socket is at the path.
    #[error("{0} exists and is not a socket; sealpipe will not replace it")]
    NotASocket(PathBuf),
    /// Another process accepts connections on the socket.
    #[error("{0} is in use: another process is listening on it")]
    InUse(PathBuf),
    /// A system call failed.
    #[error("{path}: {what}: {error}", path = .0.display(), what = .1, error = .2)]
    Io(PathBuf, &'static str, std::io::Error),
}

/// Binds a Unix listening socket at `path` with `perms`. A stale socket file (nobody listening:
/// connecting is refused) is replaced; anything else at the path is refused. The mode and group
/// are set before `listen`, so no client can connect while they are still the default ones.
pub(crate) async fn bind_unix(
    path: &Path,
    perms: &SocketPermissions,
) -> Result<Bound, UnixBindError> {
    let io = |what: &'static str| {
        let p = path.to_path_buf();
        move |e| UnixBindError::Io(p, what, e)
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(UnixBindError::NotASocket(path.to_path_buf()))
        }
        Ok(_) => {
            let probe = tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(path));
            match probe.await {
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path).map_err(io("cannot remove stale socket"))?;
                    tracing::info!(path = %path.display(), "removed a stale socket file");
                }
                Ok(Err(e)) => return Err(io("cannot tell whether the socket is in use")(e)),
                Ok(Ok(_)) | Err(_) => return Err(UnixBindError::InUse(path.to_path_buf())),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot inspect")(e)),
    }
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
        .map_err(io("cannot create socket"))?;
    let addr = socket2::SockAddr::unix(path).map_err(io("invalid socket path"))?;
    socket.bind(&addr).map_err(io("cannot bind"))?;
    let meta = std::fs::symlink_metadata(path).map_err(io("cannot inspect"))?;
    let file = SocketFile {
        path: path.to_path_buf(),
        peer: Arc::from(path),
        ours: Some((meta.dev(), meta.ino())),
    };
    // From here on, `file` removes the socket file on any error.
    set_socket_permissions(path, perms)?;
    socket.listen(1024).map_err(io("cannot listen"))?;
    socket
        .set_nonblocking(true)
        .map_err(io("cannot set non-blocking"))?;
    let listener = UnixListener::from_std(std::os::unix::net::UnixListener::from(socket))
        .map_err(io("cannot register socket"))?;
    Ok(Bound::Unix(listener, file))
}

/// Sets the mode and group of a Unix socket file (at bind, and again on reload).
pub(crate) fn set_socket_permissions(
    path: &Path,
    perms: &SocketPermissions,
) -> Result<(), UnixBindError> {
    let io = |what: &'static str| {
        let p = path.to_path_buf();
        move |e| UnixBindError::Io(p, what, e)
    };
    if let Some((_, gid)) = &perms.group {
        std::os::unix::fs::chown(path, None, Some(*gid))
            .map_err(io("cannot set the group (socket_group)"))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(perms.mode))
        .map_err(io("cannot set the mode (socket_mode)"))?;
    if perms.mode & 0o002 != 0 {
        tracing::warn!(path = %path.display(), mode = %format!("{:04o}", perms.mode),
            "socket_mode lets every local user connect to this socket");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unix_bind_refuses_files_and_live_sockets_and_cleans_up_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let perms = SocketPermissions::default();
        std::fs::write(&path, "data").unwrap();
        assert!(matches!(
            bind_unix(&path, &perms).await,
            Err(UnixBindError::NotASocket(_))
        ));
        std::fs::remove_file(&path).unwrap();
        let bound = bind_unix(&path, &perms).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert!(matches!(
            bind_unix(&path, &perms).await,
            Err(UnixBindError::InUse(_))
        ));
        drop(bound);
        assert!(!path.exists(), "removed on drop");
        // A file that replaced ours since is not ours to remove.
        let bound = bind_unix(&path, &perms).await.unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "someone else's").unwrap();
        drop(bound);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "someone else's");
    }
}
