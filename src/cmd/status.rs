//! `sealpipe status [--config FILE | --socket PATH] [--json]`: what a running daemon is doing,
//! read from its control socket (read-only).

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::config::Config;
use crate::daemon::control;
use crate::daemon::status::Status;

/// Largest answer read.
const MAX_ANSWER: u64 = 64 << 20;

/// Which daemon to ask.
pub(crate) struct Which<'a> {
    pub(crate) config: Option<&'a Path>,
    pub(crate) socket: Option<&'a Path>,
}

/// The control socket named by `which`, or the only one in the default directory.
fn socket_path(which: &Which<'_>) -> anyhow::Result<PathBuf> {
    if let Some(s) = which.socket {
        return Ok(s.to_path_buf());
    }
    if let Some(c) = which.config {
        let config = Config::load(c)?;
        return control::socket_of(&config).with_context(|| {
            format!(
                "{}: `control = false`: this daemon serves no control socket",
                c.display()
            )
        });
    }
    let dir = control::default_dir();
    let live: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .filter(|p| UnixStream::connect(p).is_ok())
                .collect()
        })
        .unwrap_or_default();
    match live.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no running sealpipe daemon found (no live control socket in {}); name one with --config FILE or --socket PATH",
            dir.display()
        ),
        many => bail!(
            "several sealpipe daemons run; name one with --config FILE or --socket PATH: {}",
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Reads the status from the daemon's control socket.
pub(crate) fn fetch(which: &Which<'_>) -> anyhow::Result<Status> {
    let path = socket_path(which)?;
    let for_config = which
        .config
        .map(|c| format!(" for {}", c.display()))
        .unwrap_or_default();
    let stream = UnixStream::connect(&path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                "no daemon runs there".to_string()
            }
            _ => e.to_string(),
        };
        anyhow::anyhow!(
            "cannot reach the sealpipe daemon{for_config} at its control socket {}: {why}",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut text = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut text)
        .with_context(|| format!("reading the control socket {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| {
        format!(
            "the answer of the control socket {} is not a status",
            path.display()
        )
    })
}

pub(crate) fn run(which: Which<'_>, json: bool) -> anyhow::Result<()> {
    let status = fetch(&which)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{status}");
    }
    Ok(())
}
