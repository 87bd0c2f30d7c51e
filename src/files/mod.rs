//! Files on disk: key files, atomic writes under a directory lock, the connector's
//! `known_peers` store and the listener's peers file.
//!
//! * [`keyfile`] — private keys, public keys and the pre-shared key.
//! * [`atomic`] — atomic rewrites and the directory lock every writer takes.
//! * [`known_peers`] — the connector's trust-on-first-use store.
//! * [`peers`] — the peers-file format: its one parser, and the edits behind `sealpipe trust`.

pub(crate) mod atomic;
pub(crate) mod keyfile;
pub(crate) mod known_peers;
pub(crate) mod peers;

/// The content of a line of a `known_peers` or peers file without its comment, trimmed.
fn content(line: &str) -> &str {
    line.split('#').next().unwrap_or_default().trim()
}

/// `text` with `line` appended on a line of its own (after a newline if `text` lacks one).
fn with_line_appended(text: &str, line: &str) -> String {
    let mut new = text.to_string();
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(line);
    new.push('\n');
    new
}
