//! Enrollment files: the atomic rewrite both share, the connector's `known_peers` file (trust on
//! first use) and the edits of a listener's `peers_file` behind `sealpipe trust`.
//!
//! Every rewrite goes through [`atomic_write`]: a temporary file in the same directory, written
//! and fsynced, given the old file's mode and owner, renamed over the old one, and the directory
//! fsynced. Readers (a daemon reloading) see the old file or the new one, never a half-written
//! one. Writers of one directory are serialized by an advisory lock on the directory
//! ([`DirLock`]), so that two concurrent first contacts cannot record two different keys.
//!
//! The `known_peers` format is one entry per line, `ADDRESS SHA256:…`, with blank lines and
//! `#` comments (whole-line or trailing) ignored; `ADDRESS` is the connector's `connect` value
//! as written in the config.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::proto::identity::{Fingerprint, TrustList};

/// Why an enrollment file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The OS refused an operation on the file.
    #[error("{}: {what}: {error}", path.display())]
    Io {
        /// The file (or directory).
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        error: io::Error,
    },
    /// A line of the file is malformed.
    #[error("{}:{line}: {problem}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        problem: String,
    },
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> EnrollError + 'a {
    move |error| EnrollError::Io {
        path: path.to_path_buf(),
        what,
        error,
    }
}

/// The directory `path` is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// An exclusive advisory lock (`flock`) on the directory of a file, released on drop. Taken by
/// every writer of this module, around the read-check-write of one file.
pub(crate) struct DirLock {
    _dir: File,
}

impl DirLock {
    /// Locks the directory of `file`, waiting for another holder.
    pub(crate) fn acquire(file: &Path) -> Result<DirLock, EnrollError> {
        let dir = parent_dir(file);
        let handle =
            File::open(dir).map_err(io_err(dir, "cannot open the directory to lock it"))?;
        handle
            .lock()
            .map_err(io_err(dir, "cannot lock the directory"))?;
        Ok(DirLock { _dir: handle })
    }
}

/// Replaces `path` with `contents` atomically: a temporary file in the same directory (mode
/// `new_mode` when `path` does not exist yet, else the mode and owner of `path`), written and
/// fsynced, renamed over `path`, then the directory fsynced. Symbolic links are followed: the
/// file they point to is replaced.
pub(crate) fn atomic_write(path: &Path, contents: &[u8], new_mode: u32) -> Result<(), EnrollError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let target = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => path.to_path_buf(),
        Err(e) => return Err(io_err(path, "cannot resolve the path")(e)),
    };
    let old = match std::fs::metadata(&target) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(path, "cannot read the file's metadata")(e)),
    };
    let dir = parent_dir(&target);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp_path = None;
    let mut file = None;
    for attempt in 0..100u32 {
        let candidate = dir.join(format!(".{name}.tmp.{}.{attempt}", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&candidate)
        {
            Ok(f) => {
                tmp_path = Some(candidate);
                file = Some(f);
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(dir, "cannot create a temporary file")(e)),
        }
    }
    let (Some(tmp), Some(mut file)) = (tmp_path, file) else {
        return Err(EnrollError::Io {
            path: dir.to_path_buf(),
            what: "cannot create a temporary file",
            error: io::Error::from(io::ErrorKind::AlreadyExists),
        });
    };
    let result = (|| {
        file.write_all(contents)
            .map_err(io_err(&tmp, "cannot write"))?;
        let mode = old.as_ref().map_or(new_mode, |m| m.mode() & 0o7777);
        if let Some(m) = &old {
            let mine = file.metadata().map_err(io_err(&tmp, "cannot stat"))?;
            if (mine.uid(), mine.gid()) != (m.uid(), m.gid()) {
                std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid())).map_err(io_err(
                    &tmp,
                    "cannot give the new file the owner of the old one",
                ))?;
            }
        }
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io_err(&tmp, "cannot set the mode"))?;
        file.sync_all().map_err(io_err(&tmp, "cannot fsync"))?;
        std::fs::rename(&tmp, &target).map_err(io_err(&target, "cannot rename over"))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir, "cannot fsync the directory"))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads a text file; `Ok(None)` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, EnrollError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, "cannot read")(e)),
    }
}

/// The content of a line without its comment, trimmed.
fn content(line: &str) -> &str {
    line.split('#').next().unwrap_or_default().trim()
}

// ---------------------------------------------------------------------------------------------
// known_peers

/// One `known_peers` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownPeer {
    /// The `connect` address, as written in the config.
    pub address: String,
    /// The recorded listener key.
    pub fingerprint: Fingerprint,
    /// 1-based line in the file.
    pub line: usize,
}

/// Parses a `known_peers` file; every line must be blank, a comment or `ADDRESS SHA256:…`, and
/// an address may appear only once.
pub(crate) fn parse_known_peers(text: &str, path: &Path) -> Result<Vec<KnownPeer>, EnrollError> {
    let mut out: Vec<KnownPeer> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = content(raw);
        if line.is_empty() {
            continue;
        }
        let syntax = |problem: String| EnrollError::Syntax {
            path: path.to_path_buf(),
            line: i + 1,
            problem,
        };
        let mut words = line.split_whitespace();
        let (Some(address), Some(fp), None) = (words.next(), words.next(), words.next()) else {
            return Err(syntax(format!(
                "expected `ADDRESS SHA256:…`, found {line:?}"
            )));
        };
        let fingerprint = fp
            .parse::<Fingerprint>()
            .map_err(|e| syntax(format!("invalid fingerprint {fp:?}: {e}")))?;
        if let Some(first) = out.iter().find(|k| k.address == address) {
            return Err(syntax(format!(
                "{address} is listed twice (first on line {}); keep one line",
                first.line
            )));
        }
        out.push(KnownPeer {
            address: address.to_string(),
            fingerprint,
            line: i + 1,
        });
    }
    Ok(out)
}

/// Reads `path` (a missing file has no entries) and returns the entry for `address`.
pub(crate) fn lookup_known_peer(
    path: &Path,
    address: &str,
) -> Result<Option<KnownPeer>, EnrollError> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    Ok(parse_known_peers(&text, path)?
        .into_iter()
        .find(|k| k.address == address))
}

/// What [`record_known_peer`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The key was appended at this line.
    Added(KnownPeer),
    /// The same key was already there (another connection recorded it meanwhile).
    AlreadyKnown(KnownPeer),
    /// Another key was recorded meanwhile: refuse this one.
    Conflict(KnownPeer),
}

/// Records `fingerprint` for `address` in `path` unless an entry exists: under the directory
/// lock, re-reads the file, then appends a line with an atomic rewrite (a new file gets mode
/// 0644 and a comment header).
pub(crate) fn record_known_peer(
    path: &Path,
    address: &str,
    fingerprint: &Fingerprint,
) -> Result<Recorded, EnrollError> {
    let _lock = DirLock::acquire(path)?;
    let text = read_optional(path)?.unwrap_or_else(|| {
        "# sealpipe known_peers: the listener key first seen for each `connect` address.\n\
         # ADDRESS SHA256:FINGERPRINT; delete a line to accept a new key on the next connection.\n"
            .to_string()
    });
    let entries = parse_known_peers(&text, path)?;
    if let Some(e) = entries.into_iter().find(|k| k.address == address) {
        return Ok(if e.fingerprint.ct_eq(fingerprint) {
            Recorded::AlreadyKnown(e)
        } else {
            Recorded::Conflict(e)
        });
    }
    let mut new = text;
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(&format!("{address} {fingerprint}\n"));
    atomic_write(path, new.as_bytes(), 0o644)?;
    let line = new.lines().count();
    Ok(Recorded::Added(KnownPeer {
        address: address.to_string(),
        fingerprint: *fingerprint,
        line,
    }))
}

/// A TOFU connector's view of its `known_peers` entry: read from the file until found, then
/// cached (a reload builds a new one, so edits of the file take effect on SIGHUP).
#[derive(Debug)]
pub struct TofuStore {
    /// The `known_peers` file.
    pub path: PathBuf,
    /// The `connect` address, as written in the config: the key of the entry.
    pub address: String,
    cached: Mutex<Option<KnownPeer>>,
}

impl TofuStore {
    /// A store for `address` in `path`; reads and validates the file once (what `sealpipe check`
    /// sees).
    pub fn open(path: PathBuf, address: String) -> Result<TofuStore, EnrollError> {
        let found = lookup_known_peer(&path, &address)?;
        let dir = parent_dir(&path);
        if !dir.is_dir() {
            return Err(EnrollError::Io {
                path: dir.to_path_buf(),
                what: "the directory of known_peers must exist (the key is recorded there)",
                error: io::Error::from(io::ErrorKind::NotFound),
            });
        }
        Ok(TofuStore {
            path,
            address,
            cached: Mutex::new(found),
        })
    }

    /// The recorded entry, if any (the file is re-read while there is none).
    pub fn known(&self) -> Result<Option<KnownPeer>, EnrollError> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if cached.is_none() {
            *cached = lookup_known_peer(&self.path, &self.address)?;
        }
        Ok(cached.clone())
    }

    /// Records the key of a first contact (see [`record_known_peer`]); blocking.
    pub fn record(&self, fingerprint: &Fingerprint) -> Result<Recorded, EnrollError> {
        let result = record_known_peer(&self.path, &self.address, fingerprint)?;
        if let Recorded::Added(e) | Recorded::AlreadyKnown(e) = &result {
            *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
        }
        Ok(result)
    }
}

// ---------------------------------------------------------------------------------------------
// peers_file edits (`sealpipe trust`)

/// One entry of a peers file, with its line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeerLine {
    /// The trusted key.
    pub fingerprint: Fingerprint,
    /// Its name, if any.
    pub name: Option<String>,
    /// 1-based line.
    pub line: usize,
}

/// Parses a peers file with the daemon's parser ([`TrustList::parse`]) for validation, and
/// returns its entries with their lines.
pub(crate) fn parse_peers(text: &str, path: &Path) -> Result<Vec<PeerLine>, EnrollError> {
    TrustList::parse(text).map_err(|e| EnrollError::Syntax {
        path: path.to_path_buf(),
        line: e.line,
        problem: e.source.to_string(),
    })?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = content(raw);
        if line.is_empty() {
            continue;
        }
        let (fp, name) = match line.split_once(char::is_whitespace) {
            Some((fp, rest)) => (fp, rest.trim()),
            None => (line, ""),
        };
        let fingerprint = fp.parse::<Fingerprint>().map_err(|e| EnrollError::Syntax {
            path: path.to_path_buf(),
            line: i + 1,
            problem: e.to_string(),
        })?;
        out.push(PeerLine {
            fingerprint,
            name: (!name.is_empty()).then(|| name.to_string()),
            line: i + 1,
        });
    }
    Ok(out)
}

/// Checks a peer name for the peers file: one line, no `#` (it would start a comment).
pub(crate) fn check_peer_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("the name is empty".into());
    }
    if name.contains('#') {
        return Err(format!(
            "{name:?} contains `#`, which starts a comment in a peers file"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{name:?} contains control characters"));
    }
    Ok(())
}

/// `text` with `fingerprint name` appended as a new line.
pub(crate) fn with_peer_added(text: &str, fingerprint: &Fingerprint, name: Option<&str>) -> String {
    let mut new = text.to_string();
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    match name {
        Some(n) => new.push_str(&format!("{fingerprint}  {}\n", n.trim())),
        None => new.push_str(&format!("{fingerprint}\n")),
    }
    new
}

/// `text` without the lines (1-based) in `lines`; every other byte is kept.
pub(crate) fn without_lines(text: &str, lines: &[usize]) -> String {
    text.split_inclusive('\n')
        .enumerate()
        .filter(|(i, _)| !lines.contains(&(i + 1)))
        .map(|(_, l)| l)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP_A: &str = "SHA256:wVHjkspS1XP0W53oSvTloX9wH8Unch9YZOLuVqgFza0";
    const FP_B: &str = "SHA256:hpR9FK9WdJ/XhGhFjMPJh24iLQSzfd3mQ0e3F3a5to8";

    #[test]
    fn known_peers_parse_and_reject() {
        let p = Path::new("kp");
        let text = format!("# c\n\ndb.example:7443 {FP_A} # trailing\n[::1]:9 {FP_B}\n");
        let e = parse_known_peers(&text, p).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].line, 3);
        assert_eq!(e[1].address, "[::1]:9");
        let dup = format!("a:1 {FP_A}\na:1 {FP_B}\n");
        assert!(parse_known_peers(&dup, p)
            .unwrap_err()
            .to_string()
            .contains("kp:2: a:1 is listed twice"));
        assert!(parse_known_peers("a:1\n", p)
            .unwrap_err()
            .to_string()
            .starts_with("kp:1: expected"));
        assert!(parse_known_peers("a:1 SHA256:xx\n", p)
            .unwrap_err()
            .to_string()
            .contains("invalid fingerprint"));
    }

    #[test]
    fn record_keeps_first_key_and_reports_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_peers");
        let a: Fingerprint = FP_A.parse().unwrap();
        let b: Fingerprint = FP_B.parse().unwrap();
        assert!(matches!(
            record_known_peer(&path, "h:1", &a).unwrap(),
            Recorded::Added(KnownPeer { line: 3, .. })
        ));
        assert!(matches!(
            record_known_peer(&path, "h:1", &a).unwrap(),
            Recorded::AlreadyKnown(_)
        ));
        match record_known_peer(&path, "h:1", &b).unwrap() {
            Recorded::Conflict(e) => assert_eq!(e.fingerprint, a),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            record_known_peer(&path, "h:2", &b).unwrap(),
            Recorded::Added(KnownPeer { line: 4, .. })
        ));
        assert_eq!(
            lookup_known_peer(&path, "h:1")
                .unwrap()
                .unwrap()
                .fingerprint,
            a
        );
        // Nothing left behind but the file itself.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn concurrent_records_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_peers");
        let keys: Vec<Fingerprint> = vec![FP_A.parse().unwrap(), FP_B.parse().unwrap()];
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (path, fp) = (path.clone(), keys[i % 2]);
                std::thread::spawn(move || record_known_peer(&path, "h:1", &fp).unwrap())
            })
            .collect();
        let results: Vec<Recorded> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let added: Vec<_> = results
            .iter()
            .filter_map(|r| match r {
                Recorded::Added(e) => Some(e.fingerprint),
                _ => None,
            })
            .collect();
        assert_eq!(added.len(), 1, "{results:?}");
        let winner = lookup_known_peer(&path, "h:1")
            .unwrap()
            .unwrap()
            .fingerprint;
        assert_eq!(winner, added[0]);
        for r in &results {
            match r {
                Recorded::AlreadyKnown(e) | Recorded::Added(e) => assert_eq!(e.fingerprint, winner),
                Recorded::Conflict(e) => assert_eq!(e.fingerprint, winner),
            }
        }
    }

    #[test]
    fn atomic_write_keeps_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers");
        std::fs::write(&path, "x\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        atomic_write(&path, b"y\n", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "y\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
    }

    #[test]
    fn peer_line_edits_keep_the_rest() {
        let text = format!("# head\n{FP_A}  alice # note\n\n{FP_B}\n# tail");
        let p = Path::new("peers");
        let entries = parse_peers(&text, p).unwrap();
        assert_eq!(entries[0].name.as_deref(), Some("alice"));
        assert_eq!(entries[1].line, 4);
        assert_eq!(
            without_lines(&text, &[2]),
            format!("# head\n\n{FP_B}\n# tail")
        );
        let b: Fingerprint = FP_B.parse().unwrap();
        assert_eq!(
            with_peer_added("# tail", &b, Some("bob")),
            format!("# tail\n{FP_B}  bob\n")
        );
        assert!(check_peer_name("a#b").is_err());
        assert!(check_peer_name("a\nb").is_err());
        assert!(parse_peers("SHA256:nope\n", p)
            .unwrap_err()
            .to_string()
            .starts_with("peers:1: "));
    }
}
