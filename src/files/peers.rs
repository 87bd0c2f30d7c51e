//! The peers file: the one parser and editor of the format a listener's `peers_file` is written
//! in. Config loading (`peers_file = …`, and each entry of an inline `peers = [...]` list),
//! `sealpipe trust add|remove|list` and enrollment all read it here.
//!
//! ```text
//! # laptops allowed to reach the database
//! SHA256:V1GUYe4eywPwl3yr/5K4Ds/5UDV2SNzCZf9ujhgoYwg  alice laptop
//! SHA256:Vh7Bz0mUd5hVr1mE8o5eA0o2Wn3q8xQpN4mB0v9sY0M  # no name
//! ```
//!
//! One entry per line: a fingerprint (`SHA256:…` as `sealpipe fingerprint` prints it; OpenSSL's
//! trailing `=` is accepted), optionally followed by whitespace and a name for logs (the rest of
//! the line, trimmed). Blank lines and `#` comments, whole-line or trailing, are ignored: base64
//! has no `#`. An entry of an inline `peers = [...]` list is the same text, without comments
//! ([`push_entry`] parses both).
//!
//! # A fingerprint listed twice
//!
//! Within one source — one peers file, or one `peers` list — a fingerprint may appear only once.
//! A second entry for it is an error at the second entry that names the line of the first
//! ([`PeerProblem::Repeated`]), and the whole file is refused: by config loading (so `sealpipe
//! check` fails and a reload keeps the old trust list) and by every `sealpipe trust` subcommand,
//! which leaves the file unchanged. The two entries may give different names, and letting either
//! one win silently would hide a mistake in the file that trusts keys.
//!
//! Between the two sources of one listener, a key in both `peers` and `peers_file` is trusted
//! once ([`union`]): where the `peers` entry stands, with its name, or the file's name when
//! `peers` gives none. Moving keys from the config into a file can so be done in two steps
//! without a moment where they are not trusted.

use std::path::{Path, PathBuf};

use crate::files::{content, with_line_appended};
use crate::proto::identity::{Fingerprint, FingerprintError};

/// One entry of a peers file or of a `peers` list, with its line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeerLine {
    /// The trusted key.
    pub fingerprint: Fingerprint,
    /// Its name, if any.
    pub name: Option<String>,
    /// 1-based line (of the peers file, or of the config file for a `peers` entry).
    pub line: usize,
}

/// What is wrong with one entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PeerProblem {
    /// The first word is not a fingerprint.
    #[error("{}", .reason.explain(.text, "a connector's key"))]
    Fingerprint {
        /// The first word, as written.
        text: String,
        /// Why it is not a fingerprint.
        reason: FingerprintError,
    },
    /// An earlier entry of the same file or list has this fingerprint.
    #[error("{fingerprint} is listed twice (first on line {first}); remove one of the two")]
    Repeated {
        /// The repeated key.
        fingerprint: Fingerprint,
        /// The line of the first entry.
        first: usize,
    },
}

/// A bad line of a peers file.
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}: {problem}", path.display())]
pub(crate) struct PeersError {
    /// The peers file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub problem: PeerProblem,
}

/// Parses one entry, `SHA256:… [name]` without a comment, found on `line`, and appends it to
/// `entries`: the entries before it in the same file or list.
pub(crate) fn push_entry(
    entries: &mut Vec<PeerLine>,
    entry: &str,
    line: usize,
) -> Result<(), PeerProblem> {
    let entry = entry.trim();
    let (fp, name) = match entry.split_once(char::is_whitespace) {
        Some((fp, name)) => (fp, name.trim()),
        None => (entry, ""),
    };
    let fingerprint = fp
        .parse::<Fingerprint>()
        .map_err(|reason| PeerProblem::Fingerprint {
            text: fp.to_string(),
            reason,
        })?;
    if let Some(first) = entries.iter().find(|e| e.fingerprint == fingerprint) {
        return Err(PeerProblem::Repeated {
            fingerprint,
            first: first.line,
        });
    }
    entries.push(PeerLine {
        fingerprint,
        name: (!name.is_empty()).then(|| name.to_string()),
        line,
    });
    Ok(())
}

/// Parses the peers file `text` (read from `path`, named in errors): its entries in file order.
pub(crate) fn parse_peers(text: &str, path: &Path) -> Result<Vec<PeerLine>, PeersError> {
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = content(raw);
        if line.is_empty() {
            continue;
        }
        push_entry(&mut entries, line, i + 1).map_err(|problem| PeersError {
            path: path.to_path_buf(),
            line: i + 1,
            problem,
        })?;
    }
    Ok(entries)
}

/// The trusted keys of a listener from its sources in order (`peers`, then `peers_file`): a key
/// in several is listed once, where it first stands, with the first name given for it.
pub(crate) fn union<'a>(
    sources: impl IntoIterator<Item = &'a PeerLine>,
) -> Vec<(Fingerprint, Option<String>)> {
    let mut out: Vec<(Fingerprint, Option<String>)> = Vec::new();
    for e in sources {
        match out.iter_mut().find(|(fp, _)| *fp == e.fingerprint) {
            Some((_, name)) => {
                if name.is_none() {
                    name.clone_from(&e.name);
                }
            }
            None => out.push((e.fingerprint, e.name.clone())),
        }
    }
    out
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
    match name {
        Some(n) => with_line_appended(text, &format!("{fingerprint}  {}", n.trim())),
        None => with_line_appended(text, &fingerprint.to_string()),
    }
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

    fn fp(s: &str) -> Fingerprint {
        s.parse().unwrap()
    }

    #[test]
    fn peers_file_parse() {
        let p = Path::new("peers");
        let text = format!(
            "# trusted connectors\n\n{FP_A}   alice  laptop # trailing comment\r\n  {FP_B}=\n# {FP_A} commented out\n"
        );
        let entries = parse_peers(&text, p).unwrap();
        assert_eq!(
            entries,
            vec![
                PeerLine {
                    fingerprint: fp(FP_A),
                    name: Some("alice  laptop".into()),
                    line: 3
                },
                PeerLine {
                    fingerprint: fp(FP_B),
                    name: None,
                    line: 4
                },
            ]
        );

        let bad = format!("# header\n{FP_A} ok\n\nSHA256:tooshort name\n");
        let err = parse_peers(&bad, p).unwrap_err();
        assert_eq!(err.line, 4);
        assert_eq!(
            err.problem,
            PeerProblem::Fingerprint {
                text: "SHA256:tooshort".into(),
                reason: FingerprintError::BadDigest
            }
        );
        assert!(err.to_string().starts_with("peers:4: "), "{err}");
        let err = parse_peers("md5:abc\n", p).unwrap_err();
        assert_eq!(err.line, 1);
        assert!(matches!(
            err.problem,
            PeerProblem::Fingerprint {
                reason: FingerprintError::MissingPrefix,
                ..
            }
        ));

        assert!(parse_peers("", p).unwrap().is_empty());
        assert!(parse_peers("# nothing\n\n   \n", p).unwrap().is_empty());
    }

    #[test]
    fn a_fingerprint_listed_twice_is_refused_naming_both_lines() {
        let p = Path::new("peers");
        // Also with another name, and with OpenSSL's padding: the key is the same.
        for second in [FP_A.to_string(), format!("{FP_A}  bob"), format!("{FP_A}=")] {
            let text = format!("# head\n{FP_A}  alice\n{FP_B}\n{second}\n");
            let err = parse_peers(&text, p).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("peers:4: {FP_A} is listed twice (first on line 2); remove one of the two"),
                "{second}"
            );
            assert_eq!(
                err.problem,
                PeerProblem::Repeated {
                    fingerprint: fp(FP_A),
                    first: 2
                }
            );
        }
        // One entry of a list at a time: the same rule.
        let mut list = Vec::new();
        push_entry(&mut list, &format!("{FP_B} x"), 7).unwrap();
        assert_eq!(
            push_entry(&mut list, FP_B, 7),
            Err(PeerProblem::Repeated {
                fingerprint: fp(FP_B),
                first: 7
            })
        );
        assert_eq!(list.len(), 1);
    }

    #[test]
    fn union_lists_a_key_once_with_the_first_name() {
        let line = |s: &str, name: Option<&str>, line| PeerLine {
            fingerprint: fp(s),
            name: name.map(String::from),
            line,
        };
        let inline = [line(FP_A, None, 5), line(FP_B, Some("b"), 5)];
        let file = [line(FP_B, Some("other"), 1), line(FP_A, Some("a"), 2)];
        assert_eq!(
            union(inline.iter().chain(&file)),
            vec![(fp(FP_A), Some("a".into())), (fp(FP_B), Some("b".into()))]
        );
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
