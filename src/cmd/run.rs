//! `sealpipe run --config FILE`: every tunnel of the file in the foreground, until SIGTERM or
//! SIGINT (see the daemon for reload and drain).

use std::path::Path;

pub(crate) async fn run(config: &Path) -> anyhow::Result<()> {
    crate::daemon::run(config).await
}
