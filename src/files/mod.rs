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

use std::io;

/// An OS error about a file, in the words an operator needs: "no such file", "is a directory,
/// not KIND" (`kind`: "a key file", "a peers file"…), "permission denied"; any other error as
/// the OS says it.
pub(crate) fn io_problem(error: &io::Error, kind: &str) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "no such file".to_string(),
        io::ErrorKind::IsADirectory => format!("is a directory, not {kind}"),
        io::ErrorKind::PermissionDenied => {
            "permission denied (for the user sealpipe runs as)".to_string()
        }
        _ => error.to_string(),
    }
}

/// Text that is not UTF-8: where the first bad byte is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not valid UTF-8 (byte 0x{byte:02x}); save the file as UTF-8")]
pub struct NotUtf8 {
    /// 1-based line of the first bad byte.
    pub line: usize,
    /// 1-based column of the first bad byte, in characters.
    pub column: usize,
    /// The byte.
    pub byte: u8,
}

/// `bytes` as a string, or where the first byte that is not UTF-8 stands.
pub(crate) fn utf8(bytes: Vec<u8>) -> Result<String, NotUtf8> {
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let at = e.utf8_error().valid_up_to();
        // Valid up to `at`, by definition.
        let before = std::str::from_utf8(&bytes[..at]).unwrap_or_default();
        let (line, column) = line_col(before, at);
        NotUtf8 {
            line,
            column,
            byte: bytes[at],
        }
    })
}

/// 1-based line and column (in characters) of byte `offset` of `text` (at most its end, and
/// moved back to a character boundary).
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The content of a line of a `known_peers` or peers file without its comment, trimmed (and
/// without the byte order mark some editors put at the start of a file).
fn content(line: &str) -> &str {
    let line = line.trim_start_matches('\u{feff}');
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
