//! The connector's `known_peers` file: trust on first use, like SSH's `known_hosts`.
//!
//! One entry per line, `ADDRESS SHA256:…`, with blank lines and `#` comments (whole-line or
//! trailing) ignored; `ADDRESS` is the connector's `connect` value as written in the config, and
//! may appear only once. A first contact appends its line under the directory lock with an
//! atomic rewrite ([`crate::files::atomic`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::files::atomic::{atomic_write, parent_dir, DirLock, IoError};
use crate::files::{content, io_problem, utf8, with_line_appended, NotUtf8};
use crate::proto::identity::Fingerprint;

/// Why a `known_peers` file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KnownPeersError {
    /// The OS refused an operation on the file.
    #[error(transparent)]
    Io(#[from] IoError),
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
    /// The file could not be read (it is a directory, or not readable).
    #[error("{}: {problem}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The file is not UTF-8.
    #[error("{}:{}:{}: {at}", path.display(), at.line, at.column)]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// Where the first bad byte is.
        at: NotUtf8,
    },
    /// The directory the file is to be written in does not exist.
    #[error(
        "{}: the directory {} does not exist (the listener's key is recorded in this file at the \
         first contact)",
        path.display(),
        dir.display()
    )]
    NoDirectory {
        /// The file.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
}

/// Reads `path`; `Ok(None)` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, KnownPeersError> {
    match std::fs::read(path) {
        Ok(bytes) => utf8(bytes)
            .map(Some)
            .map_err(|at| KnownPeersError::NotUtf8 {
                path: path.to_path_buf(),
                at,
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KnownPeersError::Unreadable {
            path: path.to_path_buf(),
            problem: io_problem(&e, "a known_peers file"),
        }),
    }
}

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
pub(crate) fn parse_known_peers(
    text: &str,
    path: &Path,
) -> Result<Vec<KnownPeer>, KnownPeersError> {
    let mut out: Vec<KnownPeer> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = content(raw);
        if line.is_empty() {
            continue;
        }
        let syntax = |problem: String| KnownPeersError::Syntax {
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
            .map_err(|e| syntax(e.explain(fp, "the listener's key")))?;
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
) -> Result<Option<KnownPeer>, KnownPeersError> {
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
) -> Result<Recorded, KnownPeersError> {
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
    let new = with_line_appended(&text, &format!("{address} {fingerprint}"));
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
    pub fn open(path: PathBuf, address: String) -> Result<TofuStore, KnownPeersError> {
        let found = lookup_known_peer(&path, &address)?;
        let dir = parent_dir(&path);
        if !dir.is_dir() {
            return Err(KnownPeersError::NoDirectory {
                dir: dir.to_path_buf(),
                path,
            });
        }
        Ok(TofuStore {
            path,
            address,
            cached: Mutex::new(found),
        })
    }

    /// The recorded entry, if any (the file is re-read while there is none).
    pub fn known(&self) -> Result<Option<KnownPeer>, KnownPeersError> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if cached.is_none() {
            *cached = lookup_known_peer(&self.path, &self.address)?;
        }
        Ok(cached.clone())
    }

    /// The recorded key as last read or recorded here ([`TofuStore::known`],
    /// [`TofuStore::record`]), without reading the file: `None` if none was.
    pub fn recorded(&self) -> Option<Fingerprint> {
        self.cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|k| k.fingerprint)
    }

    /// Records the key of a first contact (see [`record_known_peer`]); blocking.
    pub fn record(&self, fingerprint: &Fingerprint) -> Result<Recorded, KnownPeersError> {
        let result = record_known_peer(&self.path, &self.address, fingerprint)?;
        if let Recorded::Added(e) | Recorded::AlreadyKnown(e) = &result {
            *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
        }
        Ok(result)
    }
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
}
