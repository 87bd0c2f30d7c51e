//! The control socket: a Unix socket (mode 0600) on which the daemon answers every connection
//! with one JSON [`Status`] snapshot and closes. It reads nothing from the client, so nothing on
//! it can change the daemon. `sealpipe status` is its client.
//!
//! Its path is `control = "PATH"` in the config, or derived from the config file's path so that
//! several daemons on one host do not clash: `DIR/NAME.sock` for `/etc/sealpipe/NAME.toml` (the
//! packaged layout, `sealpipe@NAME`), and `DIR/NAME-HASH.sock` for any other `NAME.toml`, HASH
//! being 8 hex digits of the SHA-256 of its absolute path. DIR is systemd's `$RUNTIME_DIRECTORY`
//! (the unit's `RuntimeDirectory=sealpipe`), else `/run/sealpipe` for root, else
//! `$XDG_RUNTIME_DIR/sealpipe` (or `/tmp/sealpipe-UID`). `sealpipe status --config FILE`
//! derives the same path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Control};
use crate::daemon::metrics::Registry;
use crate::daemon::responder;
use crate::daemon::status::Status;
use crate::tunnel::net::Bound;

/// Mode of the control socket: the daemon's user (and root) only.
pub(crate) const CONTROL_MODE: u32 = 0o600;
/// Time a client has to take its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients answered at once; more are closed at once.
const MAX_CLIENTS: usize = 8;

/// The directory of the default control sockets, for this process's user and environment.
pub(crate) fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY") {
        // systemd may list several, separated by ':'; ours is the first.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        if !first.is_empty() {
            return PathBuf::from(first);
        }
    }
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/sealpipe");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("sealpipe"),
        _ => PathBuf::from(format!("/tmp/sealpipe-{uid}")),
    }
}

/// Where packaged configs live: their sockets are named by the config's name alone.
const PACKAGED_DIR: &str = "/etc/sealpipe";

/// The default control socket of the daemon that runs `config`.
pub(crate) fn default_path(config: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let absolute = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
    let stem = absolute
        .file_stem()
        .map_or_else(|| "sealpipe".into(), |s| s.to_string_lossy().into_owned());
    let name = if absolute.parent() == Some(Path::new(PACKAGED_DIR)) {
        format!("{stem}.sock")
    } else {
        let hash = Sha256::digest(absolute.as_os_str().as_encoded_bytes());
        let hex: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
        format!("{stem}-{hex}.sock")
    };
    default_dir().join(name)
}

/// The control socket of the daemon that runs `config`; `None` with `control = false`.
pub(crate) fn socket_of(config: &Config) -> Option<PathBuf> {
    match &config.control {
        Control::Default => Some(default_path(&config.path)),
        Control::Off => None,
        Control::Socket(p) => Some(p.clone()),
    }
}

/// Creates the directory of `path` if it is missing (mode 0700).
pub(crate) fn ensure_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir),
        _ => Ok(()),
    }
}

/// Answers status requests on `listener` until `stop`.
pub(crate) async fn serve(
    listener: Bound,
    registry: Arc<Registry>,
    config: String,
    started: Instant,
    stop: CancellationToken,
) {
    let Bound::Unix(listener, _file) = listener else {
        return;
    };
    responder::serve(
        listener,
        "control socket",
        MAX_CLIENTS,
        ANSWER_TIMEOUT,
        stop,
        move |stream| {
            let status = Status::of(&registry, config.clone(), started, Instant::now());
            async move {
                let _ = answer(stream, &status).await;
            }
        },
    )
    .await
}

async fn answer(mut stream: UnixStream, status: &Status) -> std::io::Result<()> {
    let mut text = serde_json::to_vec(status).map_err(std::io::Error::other)?;
    text.push(b'\n');
    stream.write_all(&text).await?;
    stream.shutdown().await
}
