//! `sealpipe run --config FILE`: every tunnel of the file in the foreground, until SIGTERM or
//! SIGINT (see the daemon for reload and drain).

use std::path::Path;

/// Takes the listening sockets systemd passed, for `listen = "systemd:NAME"` (socket
/// activation): [`crate::daemon::take_systemd_sockets`]. Before any thread starts: it changes
/// the environment.
pub(crate) fn take_systemd_sockets() {
    crate::daemon::take_systemd_sockets();
}

pub(crate) async fn run(config: &Path) -> anyhow::Result<()> {
    crate::daemon::run(config).await
}
