//! Naming where an error is: [`ConfigError`], byte spans turned into `FILE:LINE:COLUMN`, and
//! serde's messages turned into ones that name the section, the tunnel and the key.
//!
//! A serde error carries only a byte span; [`find_path`] finds the key or value of the spanned
//! TOML tree that contains it, and [`describe`] names that path (`listener "redis"`,
//! `[defaults]`, key `forward`).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Why a configuration could not be loaded. Every message is one line that names the file and,
/// where there is one, the line, column, section and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error(
        "cannot read config file {}: {}",
        path.display(),
        crate::files::io_problem(error, "a config file")
    )]
    Read {
        /// The config file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A problem at a place in the config file.
    #[error("{}:{line}:{column}: {message}", path.display())]
    At {
        /// The config file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// What is wrong, naming the section and key.
        message: String,
    },
    /// A problem with the file as a whole (no line to point at).
    #[error("{}: {message}", path.display())]
    File {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A problem on a line of a peers file.
    #[error("{}:{line}: {message}", path.display())]
    PeersFile {
        /// The peers file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Where a value was written in a config file: errors about the file it names (a key, a
/// pre-shared key, a `known_peers` file) start there, `FILE:LINE:COLUMN: SECTION: key `KEY`: `.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The config file.
    pub path: PathBuf,
    /// 1-based line of the value.
    pub line: usize,
    /// 1-based column of the value, in characters.
    pub column: usize,
    /// The section: `[identity]`, `listener "NAME"`, `connector "NAME"`.
    pub context: String,
    /// The key.
    pub key: String,
}

impl Location {
    /// `problem`, about the value written here.
    pub fn error(&self, problem: impl fmt::Display) -> ConfigError {
        ConfigError::At {
            path: self.path.clone(),
            line: self.line,
            column: self.column,
            message: format!("{}: key `{}`: {problem}", self.context, self.key),
        }
    }
}

/// A value of the model with the [`Location`] it was written at; it derefs to the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub at: Location,
}

impl<T> std::ops::Deref for Located<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

/// The text being loaded and where it came from.
pub(crate) struct Source<'a> {
    pub(crate) text: &'a str,
    pub(crate) path: &'a Path,
    /// For `sealpipe trust`: a listener's `peers_file` may be missing and list no key, so
    /// that the first one can be added to it.
    pub(crate) enrolling: bool,
}

/// Collapses a possibly multi-line message into one line.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A step in a path through the TOML tree.
enum Seg<'t> {
    Key(&'t str),
    Index(usize),
}

/// The deepest key or value in `table` whose span contains `at`, as a path from the root.
fn find_path<'t>(table: &'t DeTable<'_>, at: usize, path: &mut Vec<Seg<'t>>) -> bool {
    for (key, value) in table.iter() {
        path.push(Seg::Key(key.get_ref()));
        if find_in_value(value, at, path) || key.span().contains(&at) {
            return true;
        }
        path.pop();
    }
    false
}

fn find_in_value<'t>(value: &'t Spanned<DeValue<'_>>, at: usize, path: &mut Vec<Seg<'t>>) -> bool {
    match value.get_ref() {
        DeValue::Table(t) if find_path(t, at, path) => return true,
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                path.push(Seg::Index(i));
                if find_in_value(item, at, path) {
                    return true;
                }
                path.pop();
            }
        }
        _ => {}
    }
    let span = value.span();
    span.contains(&at) || (span.is_empty() && span.start == at)
}

impl Source<'_> {
    /// 1-based line and column (in characters) of byte `offset`.
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        crate::files::line_col(self.text, offset)
    }

    /// The span of the value of `key` in `table` (its `index`-th entry, for an array of
    /// tables), if the text parses and has it.
    pub(crate) fn value_span(
        &self,
        table: &str,
        index: Option<usize>,
        key: &str,
    ) -> Option<Range<usize>> {
        let tree = DeTable::parse(self.text).ok()?;
        let mut value = tree.get_ref().get(table)?;
        if let Some(i) = index {
            value = value.get_ref().get(i)?;
        }
        Some(value.get_ref().get(key)?.span())
    }

    pub(crate) fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.line_col(span.start);
        ConfigError::At {
            path: self.path.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    pub(crate) fn file_error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::File {
            path: self.path.to_path_buf(),
            message: message.into(),
        }
    }

    /// An error about `key` of the section `ctx`, at `span`.
    pub(crate) fn key_error(
        &self,
        ctx: &str,
        key: &str,
        span: Range<usize>,
        problem: impl fmt::Display,
    ) -> ConfigError {
        self.location(ctx, key, span).error(problem)
    }

    /// Where `key` of the section `ctx` is written, at `span`.
    pub(crate) fn location(&self, ctx: &str, key: &str, span: Range<usize>) -> Location {
        let (line, column) = self.line_col(span.start);
        Location {
            path: self.path.to_path_buf(),
            line,
            column,
            context: ctx.to_string(),
            key: key.to_string(),
        }
    }

    /// Turns a serde error into a one-line message naming the section, tunnel and key.
    pub(crate) fn serde_error(
        &self,
        tree: &Spanned<DeTable<'_>>,
        e: &toml::de::Error,
    ) -> ConfigError {
        let msg = one_line(e.message());
        let Some(span) = e.span() else {
            return self.file_error(msg);
        };
        let mut path = Vec::new();
        find_path(tree.get_ref(), span.start, &mut path);
        let (ctx, key) = describe(tree.get_ref(), &path);
        if let Some(rest) = msg.strip_prefix("unknown field `") {
            let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
            let expected = expected.trim_start_matches(',').trim();
            let expected = expected.strip_prefix("expected ").unwrap_or(expected);
            let where_ = if ctx.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in {ctx}")
            };
            let hint = if expected.starts_with("one of") || expected.is_empty() {
                expected.to_string()
            } else {
                format!("one of {expected}")
            };
            let hint = if hint.is_empty() {
                String::new()
            } else {
                format!(" (expected {hint})")
            };
            return self.error(span, format!("unknown key `{field}` {where_}{hint}"));
        }
        if let Some(rest) = msg.strip_prefix("missing field `") {
            let field = rest.split('`').next().unwrap_or(rest);
            let ctx = if ctx.is_empty() { "top level" } else { &ctx };
            return self.error(span, format!("{ctx}: missing key `{field}`"));
        }
        let mut out = String::new();
        if !ctx.is_empty() {
            out.push_str(&ctx);
            out.push_str(": ");
        }
        if let Some(key) = &key {
            out.push_str(&format!("key `{key}`: "));
        }
        // Name TOML types, not Rust ones.
        let msg = msg
            .replace("expected i64", "expected an integer")
            .replace("expected usize", "expected an integer");
        out.push_str(&msg);
        if key
            .as_deref()
            .is_some_and(|k| k == "listener" || k == "connector")
            && msg.contains("expected a sequence")
        {
            out.push_str(" (tunnels are arrays of tables: write [[listener]] or [[connector]], with double brackets)");
        }
        self.error(span, out)
    }
}

/// Names the section (and tunnel) and key that `path` leads to, for messages.
fn describe(root: &DeTable<'_>, path: &[Seg<'_>]) -> (String, Option<String>) {
    let key_at = |i: usize| match path.get(i) {
        Some(Seg::Key(k)) => Some(k.to_string()),
        _ => None,
    };
    match path.first() {
        Some(Seg::Key(section @ ("listener" | "connector"))) => {
            let Some(Seg::Index(i)) = path.get(1) else {
                return (String::new(), Some(section.to_string()));
            };
            let name = root
                .get(*section)
                .and_then(|v| v.get_ref().get(*i))
                .and_then(|t| t.get_ref().get("name"))
                .and_then(|n| n.get_ref().as_str());
            let ctx = match name {
                Some(n) => format!("{section} {n:?}"),
                None => format!("{section} #{}", i + 1),
            };
            (ctx, key_at(2))
        }
        Some(Seg::Key(section @ ("identity" | "defaults" | "metrics"))) => {
            (format!("[{section}]"), key_at(1))
        }
        Some(Seg::Key(k)) => (String::new(), Some(k.to_string())),
        _ => (String::new(), None),
    }
}
