//! `sealpipe run --config FILE`: every tunnel of the file in the foreground, until SIGTERM or
//! SIGINT (see the daemon for reload and drain).

use std::path::Path;

use crate::config::Config;

/// Takes the listening sockets systemd passed, for `listen = "systemd:NAME"` (socket
/// activation): [`crate::daemon::take_systemd_sockets`]. Before any thread starts: it changes
/// the environment.
pub(crate) fn take_systemd_sockets() {
    crate::daemon::take_systemd_sockets();
}

pub(crate) async fn run(config: &Path) -> anyhow::Result<()> {
    crate::daemon::run(config).await
}

/// Refuses to run `config` a second time: if a daemon answers on the control socket of this
/// config, it runs it already, and its listen addresses (and control socket) are taken. Said
/// before anything is bound, with its pid, rather than as the first address found in use. A
/// config that does not load is left to [`run`] to report.
pub(crate) fn refuse_second(config: &Path) -> anyhow::Result<()> {
    let Ok(loaded) = Config::load(config) else {
        return Ok(());
    };
    let Some(socket) = crate::daemon::control::socket_of(&loaded) else {
        return Ok(());
    };
    let which = super::status::Which {
        config: None,
        socket: Some(&socket),
    };
    if let Ok(status) = super::status::fetch(&which) {
        anyhow::bail!(
            "{}: another sealpipe (pid {pid}) runs this config already (it answers on its \
             control socket {}); stop it first, or send it SIGHUP (`kill -HUP {pid}`) to \
             reload the file",
            config.display(),
            socket.display(),
            pid = status.pid
        );
    }
    Ok(())
}
