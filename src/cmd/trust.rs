//! `sealpipe trust add|remove|list`: edits a listener's `peers_file` safely.
//!
//! The file is named directly (`--peers-file`) or found through a config file's listener
//! (`--config`, with `--listener` when there are several). Every edit is validated with the
//! daemon's parser ([`crate::files::peers`]) before and after, done under the directory lock with
//! an atomic rewrite ([`crate::files::atomic::atomic_write`]) that keeps comments, the other
//! lines, the mode and the owner.
//! A running daemon reads the file again on reload (SIGHUP).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::config::{Config, ListenerConfig};
use crate::files::atomic::{atomic_write, parent_dir, DirLock};
use crate::files::peers::{check_peer_name, parse_peers, with_peer_added, without_lines};
use crate::files::{io_problem, keyfile, utf8};
use crate::proto::identity::{Fingerprint, FingerprintError, FINGERPRINT_PREFIX};

/// Where the systemd unit reads its configs: `sealpipe@NAME` runs `/etc/sealpipe/NAME.toml`.
const UNIT_CONFIG_DIR: &str = "/etc/sealpipe";

/// What to do after an edit so that the daemon reading the peers file applies it: for a config
/// in [`UNIT_CONFIG_DIR`], reload its systemd unit by name; for another, signal its daemon.
/// `pid`: the daemon that answers on the config's control socket, if one does.
fn reload_hint(config: Option<&Path>, pid: Option<u32>) -> String {
    let Some(config) = config else {
        return "to apply it, reload the daemon that reads it (`systemctl reload sealpipe@NAME`, \
                or send it SIGHUP)"
            .to_string();
    };
    // As written (systemd names /etc/sealpipe/NAME.toml), else with links resolved.
    let unit_name = |path: &Path| {
        let in_dir = path.parent() == Some(Path::new(UNIT_CONFIG_DIR));
        let toml = path.extension().is_some_and(|ext| ext == "toml");
        let stem = path.file_stem().and_then(|stem| stem.to_str());
        stem.filter(|_| in_dir && toml).map(str::to_string)
    };
    let unit = [std::path::absolute(config), std::fs::canonicalize(config)]
        .into_iter()
        .flatten()
        .find_map(|path| unit_name(&path));
    match unit {
        Some(name) => format!("to apply it: `systemctl reload sealpipe@{name}`"),
        None => match pid {
            Some(pid) => format!(
                "to apply it, send SIGHUP to the daemon running {} (pid {pid}): `kill -HUP {pid}`",
                config.display()
            ),
            None => format!(
                "to apply it, send SIGHUP to the daemon running {}",
                config.display()
            ),
        },
    }
}

/// The pid of the daemon running `config`, if one answers on its control socket.
fn running_pid(config: Option<&Path>) -> Option<u32> {
    let config = Config::load_for_enrollment(config?).ok()?;
    let socket = crate::daemon::control::socket_of(&config)?;
    let which = super::status::Which {
        config: None,
        socket: Some(&socket),
    };
    super::status::fetch(&which).ok().map(|status| status.pid)
}

/// Which peers file to work on.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// A config file: edit the `peers_file` of its listener (`list` also shows its `peers`).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// The peers file itself.
    #[arg(long)]
    peers_file: Option<PathBuf>,
}

/// With `--config`: the listener whose `peers_file` is meant (needed if there are several).
#[derive(Debug, Args)]
pub struct ListenerChoice {
    /// The `[[listener]]` name (with `--config`).
    #[arg(long, requires = "config")]
    listener: Option<String>,
}

/// `sealpipe trust` subcommands.
#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// List the connector keys a peers file trusts.
    List {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        listener: ListenerChoice,
    },
    /// Trust a connector key: append it to the peers file (already there: nothing changes).
    Add {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        listener: ListenerChoice,
        /// A fingerprint (`SHA256:…`) or a public or private key PEM file.
        key: String,
        /// A name for logs, written after the fingerprint.
        #[arg(long)]
        name: Option<String>,
    },
    /// Stop trusting a connector key: remove its line(s) from the peers file.
    Remove {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        listener: ListenerChoice,
        /// A fingerprint, a key PEM file, or the name of an entry.
        key: String,
    },
}

/// The peers file to edit, and the listener it belongs to if found through a config.
struct Resolved {
    /// `None` for `list` of a listener that has only inline `peers`.
    file: Option<PathBuf>,
    listener: Option<ListenerConfig>,
    config: Option<PathBuf>,
}

/// [`resolve_any`] for an edit: the listener must have a `peers_file`.
fn resolve(target: &Target, choice: &ListenerChoice) -> anyhow::Result<(PathBuf, Resolved)> {
    let r = resolve_any(target, choice)?;
    match &r.file {
        Some(file) => Ok((file.clone(), r)),
        None => bail!(
            "{}: listener {:?} has no `peers_file` (its keys are in `peers`, edit the config itself)",
            r.config.as_deref().unwrap_or(Path::new("")).display(),
            r.listener.as_ref().map_or("", |l| l.name.as_str())
        ),
    }
}

/// The peers file named, or the listener of a config and its `peers_file` if it has one.
fn resolve_any(target: &Target, choice: &ListenerChoice) -> anyhow::Result<Resolved> {
    if let Some(file) = &target.peers_file {
        return Ok(Resolved {
            file: Some(file.clone()),
            listener: None,
            config: None,
        });
    }
    let Some(path) = &target.config else {
        bail!("give --config FILE or --peers-file FILE");
    };
    // The listener's peers file may be missing or empty: that is what `trust add` is for.
    let config = Config::load_for_enrollment(path)?;
    let listener = match &choice.listener {
        Some(name) => config
            .listeners
            .iter()
            .find(|l| &l.name == name)
            .with_context(|| {
                format!(
                    "{}: no [[listener]] named {name:?} (listeners: {})",
                    path.display(),
                    names(&config)
                )
            })?,
        None => match config.listeners.as_slice() {
            [] => bail!(
                "{}: no [[listener]], so no peers_file to edit",
                path.display()
            ),
            [one] => one,
            _ => bail!(
                "{}: several listeners ({}); choose one with --listener NAME",
                path.display(),
                names(&config)
            ),
        },
    };
    Ok(Resolved {
        file: listener.peers_file.clone(),
        listener: Some(listener.clone()),
        config: Some(path.clone()),
    })
}

fn names(config: &Config) -> String {
    config
        .listeners
        .iter()
        .map(|l| format!("{:?}", l.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A KEY argument: a fingerprint or a key file; `None` if it is neither (for `remove`, it may
/// be an entry's name). Something meant as a fingerprint but mistyped is an error, with the
/// config's and the peers file's words for it.
fn key_fingerprint(key: &str) -> anyhow::Result<Option<Fingerprint>> {
    let refused = match key.parse::<Fingerprint>() {
        Ok(fp) => return Ok(Some(fp)),
        Err(e) => e,
    };
    if Path::new(key).exists() {
        return Ok(Some(
            keyfile::load_any_public(Path::new(key))?.fingerprint(),
        ));
    }
    let prefixed = key
        .get(..FINGERPRINT_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(FINGERPRINT_PREFIX));
    match refused {
        FingerprintError::MissingPrefix => Ok(None),
        FingerprintError::Placeholder if !prefixed => Ok(None),
        e => bail!("{}", e.explain(key, "a connector's key")),
    }
}

fn read(file: &Path, create: bool) -> anyhow::Result<String> {
    match std::fs::read(file) {
        Ok(bytes) => utf8(bytes)
            .map_err(|e| anyhow::anyhow!("{}:{}:{}: {e}", file.display(), e.line, e.column)),
        Err(e) if create && e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => bail!("{}: {}", file.display(), io_problem(&e, "a peers file")),
    }
}

/// Runs a `sealpipe trust` subcommand, printing what it did.
pub(super) fn run(cmd: TrustCommand) -> anyhow::Result<()> {
    match cmd {
        TrustCommand::List { target, listener } => {
            let r = resolve_any(&target, &listener)?;
            // A config's peers file that does not exist yet lists nobody.
            let entries = match &r.file {
                Some(file) => parse_peers(&read(file, r.config.is_some())?, file)?,
                None => Vec::new(),
            };
            for e in &entries {
                println!(
                    "{}  {}  ({}:{})",
                    e.fingerprint,
                    e.name.as_deref().unwrap_or("-"),
                    r.file.as_deref().unwrap_or(Path::new("")).display(),
                    e.line
                );
            }
            if let (Some(l), Some(config)) = (&r.listener, &r.config) {
                for (fp, name) in &l.peers {
                    if !entries.iter().any(|e| e.fingerprint == *fp) {
                        println!(
                            "{fp}  {}  ({} `peers`)",
                            name.as_deref().unwrap_or("-"),
                            config.display()
                        );
                    }
                }
                if l.accept_unknown {
                    println!("note: listener {:?} has accept_unknown = true: keys not listed here get in too", l.name);
                }
            }
            if entries.is_empty() {
                match (&r.file, &r.listener) {
                    (Some(file), _) => println!("{}: no trusted keys", file.display()),
                    (None, Some(l)) if l.peers.is_empty() => {
                        println!("listener {:?}: no trusted keys", l.name)
                    }
                    (None, _) => {}
                }
                if let Some(l) = r.listener.as_ref().filter(|l| l.peers.is_empty()) {
                    if !l.accept_unknown {
                        println!("note: listener {:?} trusts no key, which the daemon refuses: add one with `sealpipe trust add`", l.name);
                    }
                }
            }
        }
        TrustCommand::Add {
            target,
            listener,
            key,
            name,
        } => {
            let (file, r) = resolve(&target, &listener)?;
            let Some(fp) = key_fingerprint(&key)? else {
                bail!("{key:?} is neither a fingerprint (SHA256:…, as printed by `sealpipe fingerprint`) nor a key file");
            };
            if let Some(n) = &name {
                check_peer_name(n).map_err(|p| anyhow::anyhow!("invalid --name: {p}"))?;
            }
            let dir = parent_dir(&file);
            if !dir.is_dir() {
                bail!(
                    "{}: the directory {} does not exist",
                    file.display(),
                    dir.display()
                );
            }
            let _lock = DirLock::acquire(&file)?;
            // A missing file is created: it is how the first key gets in.
            let text = read(&file, true)?;
            let entries = parse_peers(&text, &file)?;
            if let Some(e) = entries.iter().find(|e| e.fingerprint == fp) {
                println!(
                    "already trusted: {fp}  {}  ({}:{}); file unchanged",
                    e.name.as_deref().unwrap_or("-"),
                    file.display(),
                    e.line
                );
                return Ok(());
            }
            let new = with_peer_added(&text, &fp, name.as_deref());
            let after = parse_peers(&new, &file).context("the edited file does not parse")?;
            atomic_write(&file, new.as_bytes(), 0o644)?;
            let line = after.last().map_or(0, |e| e.line);
            println!(
                "added {fp}{} to {} (line {line}); {}",
                name.map(|n| format!("  {}", n.trim())).unwrap_or_default(),
                file.display(),
                reload_hint(r.config.as_deref(), running_pid(r.config.as_deref()))
            );
            // Another listener of the config may still trust nobody.
            if let Some(config) = &r.config {
                if let Err(e) = Config::load(config) {
                    println!(
                        "warning: the daemon still refuses {}: {e}",
                        config.display()
                    );
                }
            }
        }
        TrustCommand::Remove {
            target,
            listener,
            key,
        } => {
            let (file, r) = resolve(&target, &listener)?;
            let fp = key_fingerprint(&key)?;
            let _lock = DirLock::acquire(&file)?;
            let text = read(&file, false)?;
            let entries = parse_peers(&text, &file)?;
            let matching: Vec<_> = entries
                .iter()
                .filter(|e| match &fp {
                    Some(fp) => e.fingerprint == *fp,
                    None => e.name.as_deref() == Some(key.trim()),
                })
                .collect();
            if matching.is_empty() {
                bail!(
                    "{}: no entry for {key:?} (a fingerprint, a key file or an entry's name); file unchanged",
                    file.display()
                );
            }
            let first = matching[0].fingerprint;
            if matching.iter().any(|e| e.fingerprint != first) {
                let list: Vec<String> = matching
                    .iter()
                    .map(|e| format!("{} (line {})", e.fingerprint, e.line))
                    .collect();
                bail!(
                    "{}: the name {key:?} is on several keys: {}; remove by fingerprint; file unchanged",
                    file.display(),
                    list.join(", ")
                );
            }
            let lines: Vec<usize> = matching.iter().map(|e| e.line).collect();
            let new = without_lines(&text, &lines);
            let left = parse_peers(&new, &file).context("the edited file does not parse")?;
            if let Some(l) = &r.listener {
                // The daemon refuses a listener with no trusted key: its reload would fail and
                // keep the old list, this key included. Refuse rather than pretend.
                let others = l.peers.iter().filter(|(f, _)| *f != first).count();
                if others == 0 && !l.accept_unknown {
                    bail!(
                        "{}: removing {first} would leave listener {:?} with no trusted key, which the daemon refuses on reload (it would keep trusting this key); \
                         remove the listener from the config instead, or add the new key first; file unchanged",
                        file.display(),
                        l.name
                    );
                }
            } else if left.is_empty() {
                println!("warning: {} has no keys left; a listener trusting only this file fails to reload (and keeps its old keys) unless it has accept_unknown = true", file.display());
            }
            atomic_write(&file, new.as_bytes(), 0o644)?;
            let hint = reload_hint(r.config.as_deref(), running_pid(r.config.as_deref()));
            for e in &matching {
                println!(
                    "removed {}  {}  ({}:{}); {}",
                    e.fingerprint,
                    e.name.as_deref().unwrap_or("-"),
                    file.display(),
                    e.line,
                    hint
                );
            }
            if let Some(l) = &r.listener {
                // Config::load merged the inline `peers` with the file: look at the config text.
                let config_text = r
                    .config
                    .as_deref()
                    .and_then(|c| std::fs::read_to_string(c).ok())
                    .unwrap_or_default();
                if config_text.contains(&first.to_string()) {
                    println!("warning: {first} is also in the config's `peers`: still trusted until removed there");
                }
                if l.accept_unknown {
                    println!(
                        "warning: listener {:?} has accept_unknown = true: this key still gets in",
                        l.name
                    );
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reload_hint_names_the_unit_of_a_config_in_etc_sealpipe() {
        assert_eq!(
            reload_hint(Some(Path::new("/etc/sealpipe/redis.toml")), None),
            "to apply it: `systemctl reload sealpipe@redis`"
        );
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("redis.toml");
        assert_eq!(
            reload_hint(Some(&other), None),
            format!(
                "to apply it, send SIGHUP to the daemon running {}",
                other.display()
            )
        );
        assert_eq!(
            reload_hint(Some(&other), Some(4242)),
            format!(
                "to apply it, send SIGHUP to the daemon running {} (pid 4242): `kill -HUP 4242`",
                other.display()
            )
        );
        assert!(reload_hint(None, None).contains("systemctl reload sealpipe@NAME"));
    }
}
