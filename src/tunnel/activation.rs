//! Socket activation (sd_listen_fds(3)): the listening sockets systemd passes as fds 3, 4, …
//! with `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`, for the tunnels whose `listen` is
//! `systemd:NAME` (docs/operations.md, "Socket activation").
//!
//! [`take_from_env`] takes them once, before the runtime starts its threads, and unsets the
//! variables so that no child inherits them. The process keeps each socket until it exits, as
//! systemd keeps its own copy: a tunnel listens on a duplicate ([`take`]), so a reload that
//! renames a tunnel or moves a name to another tunnel finds the socket again, but it can never
//! get one systemd did not pass at start. Sockets no tunnel asked for at start are closed
//! ([`close_unused`]).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpListener, UnixListener};

use crate::tunnel::net::{Bound, SocketFile};

const LISTEN_PID: &str = "LISTEN_PID";
const LISTEN_FDS: &str = "LISTEN_FDS";
const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";

/// More fds than anyone passes: a larger `LISTEN_FDS` is refused as malformed.
const MAX_FDS: u32 = 4096;

/// What the tunnel asking for a socket can listen on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Want {
    /// TCP only: a listener (the sealed side), or a connector in redirect mode.
    Tcp,
    /// TCP or a Unix stream socket: a connector in forward mode (the plaintext side).
    TcpOrUnix,
}

/// Why a `systemd:NAME` socket cannot be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ActivationError {
    /// No `LISTEN_FDS`: not started by a .socket unit.
    #[error("systemd passed no sockets (LISTEN_FDS is not set): start the service through its .socket unit (systemd/sealpipe@.socket), or listen on host:port")]
    NothingPassed,
    /// `LISTEN_PID` names another process.
    #[error("the sockets in LISTEN_FDS are not for this process (LISTEN_PID={listen_pid}, this process is {pid}); they were left alone")]
    NotForUs {
        /// The value of `LISTEN_PID`.
        listen_pid: String,
        /// Our process id.
        pid: u32,
    },
    /// The variables are malformed.
    #[error("cannot take the sockets systemd passed: {0}")]
    Malformed(String),
    /// No fd has the name.
    #[error("no socket named {name:?} among those systemd passed at start (LISTEN_FDNAMES: {passed}); FileDescriptorName= in the .socket unit names them, and a socket not passed at start needs a restart")]
    NotPassed {
        /// The name asked for.
        name: String,
        /// The names passed, comma-separated.
        passed: String,
    },
    /// Several fds have the name.
    #[error("systemd passed {count} sockets named {name:?} (fds {fds}); a tunnel listens on one: give each its own FileDescriptorName= (a .socket unit names all its sockets alike)")]
    Ambiguous {
        /// The name asked for.
        name: String,
        /// How many fds have it.
        count: usize,
        /// Their numbers, comma-separated.
        fds: String,
    },
    /// The fd was closed at start, when no tunnel asked for it.
    #[error("fd {fd} ({name:?}) was closed at start, as no tunnel listened on it; a restart takes it again")]
    Closed {
        /// Its name.
        name: String,
        /// Its number.
        fd: RawFd,
    },
    /// The fd is not one a tunnel can listen on.
    #[error("fd {fd} ({name:?}) {problem}")]
    Unusable {
        /// Its name.
        name: String,
        /// Its number.
        fd: RawFd,
        /// What is wrong with it.
        problem: String,
    },
}

/// One fd systemd passed.
#[derive(Debug)]
struct PassedFd {
    /// Its `LISTEN_FDNAMES` entry (`unknown` without one, as sd_listen_fds(3) names it).
    name: String,
    /// Its number, for messages.
    number: RawFd,
    what: Held,
    /// Whether a tunnel took it.
    taken: bool,
}

#[derive(Debug)]
enum Held {
    /// A socket (checked further when a tunnel asks for it).
    Socket(Socket),
    /// Something else (a FIFO, a file): refused when asked for, closed otherwise (held open
    /// until then).
    Other { _open: OwnedFd },
    /// Closed at start by [`close_unused`].
    Closed,
}

/// What this process received from systemd.
#[derive(Debug)]
enum Received {
    /// No `LISTEN_FDS`.
    Nothing,
    /// `LISTEN_PID` names another process: the fds are not ours to touch.
    NotForUs { listen_pid: String, pid: u32 },
    /// The variables cannot be read.
    Malformed(String),
    /// The fds, in order.
    Fds(Vec<PassedFd>),
}

static RECEIVED: Mutex<Received> = Mutex::new(Received::Nothing);

fn received() -> std::sync::MutexGuard<'static, Received> {
    // A panic elsewhere while holding the lock leaves the fds as they were.
    RECEIVED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes the fds systemd passed, if they are for this process, and unsets `LISTEN_PID`,
/// `LISTEN_FDS` and `LISTEN_FDNAMES`. Call it once, before any thread is started: it changes
/// the environment.
pub(crate) fn take_from_env() {
    let var = |k| std::env::var(k).ok();
    let state = match check_env(
        var(LISTEN_PID).as_deref(),
        var(LISTEN_FDS).as_deref(),
        std::process::id(),
    ) {
        Err(state) => state,
        Ok(()) => match sd_listen_fds::get() {
            Ok(fds) => Received::Fds(inspect(
                fds.into_iter().map(|(name, fd)| (name, fd.into_std())),
            )),
            Err(e) => Received::Malformed(e.to_string()),
        },
    };
    for k in [LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES] {
        std::env::remove_var(k);
    }
    match &state {
        Received::Nothing => {}
        Received::NotForUs { listen_pid, pid } => {
            tracing::debug!(listen_pid = %listen_pid, pid, "LISTEN_FDS is for another process, left alone")
        }
        Received::Malformed(why) => {
            tracing::warn!(problem = %why, "systemd socket activation: cannot take the sockets passed")
        }
        Received::Fds(fds) => {
            tracing::debug!(sockets = %list(fds), "systemd passed sockets");
        }
    }
    *received() = state;
}

/// Whether `LISTEN_PID` and `LISTEN_FDS` pass fds to the process `pid`: `Ok` if they do, else
/// what was received instead.
fn check_env(listen_pid: Option<&str>, listen_fds: Option<&str>, pid: u32) -> Result<(), Received> {
    let Some(count) = listen_fds else {
        return Err(Received::Nothing);
    };
    let Some(listen_pid) = listen_pid else {
        return Err(Received::Malformed(
            "LISTEN_FDS is set without LISTEN_PID".to_string(),
        ));
    };
    match listen_pid.parse::<u32>() {
        Ok(p) if p == pid => {}
        Ok(_) => {
            return Err(Received::NotForUs {
                listen_pid: listen_pid.to_string(),
                pid,
            })
        }
        Err(_) => {
            return Err(Received::Malformed(format!(
                "LISTEN_PID={listen_pid:?} is not a process id"
            )))
        }
    }
    match count.parse::<u32>() {
        Ok(n) if n <= MAX_FDS => Ok(()),
        _ => Err(Received::Malformed(format!(
            "LISTEN_FDS={count:?} is not a number of fds from 0 to {MAX_FDS}"
        ))),
    }
}

/// Sorts the fds passed into sockets and other files. A number that is not open (LISTEN_FDS
/// counting more fds than were passed) is forgotten, never closed: it is not ours.
fn inspect(fds: impl Iterator<Item = (Option<String>, OwnedFd)>) -> Vec<PassedFd> {
    let mut passed = Vec::new();
    for (name, fd) in fds {
        // sd_listen_fds_with_names(3) names an fd without a LISTEN_FDNAMES entry "unknown".
        let name = name.unwrap_or_else(|| "unknown".to_string());
        let number = fd.as_raw_fd();
        let what = match SockRef::from(&fd).r#type() {
            Ok(_) => {
                let socket = Socket::from(fd);
                // Not to be inherited by anything this process starts.
                if let Err(e) = socket.set_cloexec(true) {
                    tracing::warn!(fd = number, name = %name, error = %e, "cannot set close-on-exec on a socket systemd passed");
                }
                Held::Socket(socket)
            }
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EBADF as i32) => {
                tracing::warn!(fd = number, name = %name, "LISTEN_FDS counts an fd that is not open: ignored");
                std::mem::forget(fd);
                continue;
            }
            Err(_) => Held::Other { _open: fd },
        };
        passed.push(PassedFd {
            name,
            number,
            what,
            taken: false,
        });
    }
    passed
}

/// `name (fd N)`, comma-separated, for logs.
fn list<'a>(fds: impl IntoIterator<Item = &'a PassedFd>) -> String {
    let items: Vec<String> = fds
        .into_iter()
        .map(|f| format!("{} (fd {})", f.name, f.number))
        .collect();
    items.join(", ")
}

/// A duplicate of the listening socket systemd passed as `name`, non-blocking, for a tunnel that
/// can listen on `want`.
pub(crate) fn take(name: &str, want: Want) -> Result<Bound, ActivationError> {
    received().take(name, want)
}

/// Closes every socket systemd passed that no tunnel took, with a warning naming them.
pub(crate) fn close_unused() {
    received().close_unused();
}

impl Received {
    fn take(&mut self, name: &str, want: Want) -> Result<Bound, ActivationError> {
        let fds = match self {
            Received::Nothing => return Err(ActivationError::NothingPassed),
            Received::NotForUs { listen_pid, pid } => {
                return Err(ActivationError::NotForUs {
                    listen_pid: listen_pid.clone(),
                    pid: *pid,
                })
            }
            Received::Malformed(why) => return Err(ActivationError::Malformed(why.clone())),
            Received::Fds(fds) => fds,
        };
        let mut named: Vec<&mut PassedFd> = fds.iter_mut().filter(|f| f.name == name).collect();
        let passed = match named.len() {
            1 => named.remove(0),
            0 => {
                let names: Vec<&str> = fds.iter().map(|f| f.name.as_str()).collect();
                return Err(ActivationError::NotPassed {
                    name: name.to_string(),
                    passed: if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    },
                });
            }
            count => {
                let numbers: Vec<String> = named.iter().map(|f| f.number.to_string()).collect();
                return Err(ActivationError::Ambiguous {
                    name: name.to_string(),
                    count,
                    fds: numbers.join(", "),
                });
            }
        };
        let unusable = |problem: String| ActivationError::Unusable {
            name: passed.name.clone(),
            fd: passed.number,
            problem,
        };
        let socket = match &passed.what {
            Held::Socket(s) => s,
            Held::Other { .. } => return Err(unusable("is not a socket".to_string())),
            Held::Closed => {
                return Err(ActivationError::Closed {
                    name: passed.name.clone(),
                    fd: passed.number,
                })
            }
        };
        let bound = listening(socket, want).map_err(unusable)?;
        passed.taken = true;
        Ok(bound)
    }

    fn close_unused(&mut self) {
        let Received::Fds(fds) = self else {
            return;
        };
        let unused: Vec<&mut PassedFd> = fds
            .iter_mut()
            .filter(|f| !f.taken && !matches!(f.what, Held::Closed))
            .collect();
        if unused.is_empty() {
            return;
        }
        tracing::warn!(sockets = %list(unused.iter().map(|f| &**f)),
            "systemd passed sockets that no tunnel listens on (no `listen = \"systemd:NAME\"` names them): closed");
        for f in unused {
            f.what = Held::Closed;
        }
    }
}

/// Checks that `socket` is a listening stream socket of a family `want` allows, and returns a
/// non-blocking duplicate of it registered with tokio.
fn listening(socket: &Socket, want: Want) -> Result<Bound, String> {
    let os = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
    if socket.r#type().map_err(os("cannot read its type"))? != Type::STREAM {
        return Err(
            "is not a stream socket: sealpipe listens on ListenStream= sockets".to_string(),
        );
    }
    if !socket
        .is_listener()
        .map_err(os("cannot tell whether it listens"))?
    {
        return Err(
            "is not a listening socket (a .socket unit with Accept=yes passes connections; sealpipe needs Accept=no)"
                .to_string(),
        );
    }
    let domain = socket
        .domain()
        .map_err(os("cannot read its address family"))?;
    let unix = if domain == Domain::IPV4 || domain == Domain::IPV6 {
        false
    } else if domain == Domain::UNIX {
        if want == Want::Tcp {
            return Err("is a Unix socket; only a connector in forward mode listens on one (a listener's sealed side and a redirect-mode connector need TCP: ListenStream=PORT)".to_string());
        }
        true
    } else {
        return Err(format!(
            "is neither a TCP nor a Unix socket (address family {domain:?})"
        ));
    };
    let dup = socket.try_clone().map_err(os("cannot duplicate it"))?;
    dup.set_nonblocking(true)
        .map_err(os("cannot make it non-blocking"))?;
    if unix {
        let std = std::os::unix::net::UnixListener::from(dup);
        let path = std
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.to_path_buf()))
            .unwrap_or_else(|| "(unnamed)".into());
        let l = UnixListener::from_std(std).map_err(os("cannot register it"))?;
        Ok(Bound::Unix(l, SocketFile::not_ours(path)))
    } else {
        let l = TcpListener::from_std(std::net::TcpListener::from(dup))
            .map_err(os("cannot register it"))?;
        Ok(Bound::Tcp(l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fds(list: Vec<(&str, OwnedFd)>) -> Received {
        Received::Fds(inspect(
            list.into_iter().map(|(n, fd)| (Some(n.to_string()), fd)),
        ))
    }

    fn tcp_listener() -> (OwnedFd, std::net::SocketAddr) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        (l.into(), addr)
    }

    fn refusal(r: &mut Received, name: &str, want: Want) -> String {
        r.take(name, want).unwrap_err().to_string()
    }

    #[test]
    fn env_is_ours_only_with_our_pid_and_a_sane_count() {
        assert!(matches!(check_env(None, None, 7), Err(Received::Nothing)));
        assert!(matches!(
            check_env(Some("7"), None, 7),
            Err(Received::Nothing)
        ));
        assert!(check_env(Some("7"), Some("2"), 7).is_ok());
        assert!(matches!(
            check_env(Some("8"), Some("2"), 7),
            Err(Received::NotForUs { pid: 7, .. })
        ));
        for (pid, count) in [
            (None, Some("2")),
            (Some("x"), Some("2")),
            (Some("7"), Some("-1")),
            (Some("7"), Some("99999")),
        ] {
            assert!(
                matches!(check_env(pid, count, 7), Err(Received::Malformed(_))),
                "{pid:?} {count:?}"
            );
        }
        let e = Received::NotForUs {
            listen_pid: "8".into(),
            pid: 7,
        }
        .take("sealed", Want::Tcp)
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("not for this process (LISTEN_PID=8, this process is 7)"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn takes_a_named_tcp_listener_again_and_again() {
        let (fd, addr) = tcp_listener();
        let mut r = fds(vec![("sealed", fd)]);
        for _ in 0..2 {
            let Bound::Tcp(l) = r.take("sealed", Want::Tcp).unwrap() else {
                panic!("not TCP");
            };
            assert_eq!(l.local_addr().unwrap(), addr);
            let client = tokio::net::TcpStream::connect(addr);
            let (accepted, _) = tokio::join!(l.accept(), client);
            accepted.unwrap();
        }
    }

    #[tokio::test]
    async fn unix_sockets_only_where_wanted_and_their_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut r = fds(vec![("plain", l.into())]);
        let e = refusal(&mut r, "plain", Want::Tcp);
        assert!(
            e.starts_with("fd ") && e.contains("(\"plain\") is a Unix socket"),
            "{e}"
        );
        let bound = r.take("plain", Want::TcpOrUnix).unwrap();
        assert_eq!(bound.local(), path.display().to_string());
        drop(bound);
        assert!(path.exists(), "systemd's socket file is not ours to remove");
    }

    #[test]
    fn refuses_what_is_not_a_listening_stream_socket() {
        let unlistened = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let mut r = fds(vec![
            ("unlistened", unlistened.into()),
            ("udp", udp.into()),
            ("file", file.into()),
        ]);
        for (name, problem) in [
            ("unlistened", "is not a listening socket"),
            ("udp", "is not a stream socket"),
            ("file", "is not a socket"),
        ] {
            let e = refusal(&mut r, name, Want::TcpOrUnix);
            assert!(e.contains(&format!("(\"{name}\") {problem}")), "{e}");
        }
    }

    #[tokio::test]
    async fn missing_duplicate_and_closed_names_are_explained() {
        let (a, _) = tcp_listener();
        let (b, _) = tcp_listener();
        let (c, _) = tcp_listener();
        let mut r = fds(vec![("sealed", a), ("twice", b), ("twice", c)]);
        let e = refusal(&mut r, "wrong", Want::Tcp);
        assert!(
            e.contains("no socket named \"wrong\"")
                && e.contains("(LISTEN_FDNAMES: sealed, twice, twice)"),
            "{e}"
        );
        let e = refusal(&mut r, "twice", Want::Tcp);
        assert!(
            e.starts_with("systemd passed 2 sockets named \"twice\" (fds "),
            "{e}"
        );
        r.take("sealed", Want::Tcp).unwrap();
        r.close_unused();
        let e = refusal(&mut r, "twice", Want::Tcp);
        assert!(e.contains("sockets named \"twice\""), "{e}");
        r.take("sealed", Want::Tcp).unwrap();
        assert!(matches!(
            Received::Fds(Vec::new()).take("x", Want::Tcp),
            Err(ActivationError::NotPassed { passed, .. }) if passed == "none"
        ));
        assert!(matches!(
            Received::Nothing.take("x", Want::Tcp),
            Err(ActivationError::NothingPassed)
        ));
    }

    #[test]
    fn an_unused_socket_is_closed_and_says_so() {
        let (a, addr) = tcp_listener();
        let (b, _) = tcp_listener();
        let mut r = fds(vec![("sealed", a), ("spare", b)]);
        r.close_unused();
        let e = refusal(&mut r, "sealed", Want::Tcp);
        assert!(
            e.contains("was closed at start, as no tunnel listened on it"),
            "{e}"
        );
        assert!(std::net::TcpStream::connect(addr).is_err(), "closed");
    }
}
