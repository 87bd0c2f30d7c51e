//! Naming where an error is: [`ConfigError`], byte spans turned into `FILE:LINE:COLUMN`, and
//! serde's messages turned into ones that name the section, the tunnel and the key.
//!
//! A serde error carries only a byte span; [`find_path`] finds the key or value of the spanned
//! TOML tree that contains it, and [`describe`] names that path (`listener "redis"`,
//! `[defaults]`, key `forward`).

use std::cell::RefCell;
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
    /// Several independent problems, in file order, one per line (as `sealpipe check` prints
    /// them: every one in one run, as rustc and `nginx -t` do). Never fewer than two.
    #[error("{}", several.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several {
        /// The problems.
        several: Vec<ConfigError>,
    },
}

impl ConfigError {
    /// The one error of `errors`, or all of them as [`ConfigError::Several`] (sorted by their
    /// place in the file); `None` if there is none.
    pub(crate) fn gather(mut errors: Vec<ConfigError>) -> Option<ConfigError> {
        errors.sort_by_key(|e| match e {
            ConfigError::At { line, column, .. } => (1, *line, *column),
            ConfigError::PeersFile { line, .. } => (2, *line, 0),
            _ => (0, 0, 0),
        });
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(ConfigError::Several { several: errors }),
        }
    }

    /// Each problem on its own, owned.
    pub(crate) fn into_each(self) -> Vec<ConfigError> {
        match self {
            ConfigError::Several { several } => several,
            one => vec![one],
        }
    }

    /// Each problem on its own: the problems of [`ConfigError::Several`], else this one.
    pub fn each(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Several { several } => several.iter().collect(),
            one => vec![one],
        }
    }
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
    /// A warning about the value written here, in the same form as an error.
    pub fn warning(&self, problem: impl fmt::Display) -> String {
        format!(
            "{}:{}:{}: {}: key `{}`: {problem}",
            self.path.display(),
            self.line,
            self.column,
            self.context,
            self.key
        )
    }

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
    /// The independent errors found so far (validation goes on after one, to report them all).
    pub(crate) errors: RefCell<Vec<ConfigError>>,
    /// Values that work but are almost surely a mistake, one line each.
    pub(crate) warnings: RefCell<Vec<String>>,
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

impl<'a> Source<'a> {
    pub(crate) fn new(text: &'a str, path: &'a Path, enrolling: bool) -> Self {
        Source {
            text,
            path,
            enrolling,
            errors: RefCell::new(Vec::new()),
            warnings: RefCell::new(Vec::new()),
        }
    }

    /// `result`'s value; its error is kept with the others (and `None` returned), so that
    /// validation goes on to what does not depend on it.
    pub(crate) fn keep<T>(&self, result: Result<T, ConfigError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.errors.borrow_mut().push(e);
                None
            }
        }
    }

    /// Keeps a warning about `key` of the section `ctx`, at `span`.
    pub(crate) fn warn(
        &self,
        ctx: &str,
        key: &str,
        span: Range<usize>,
        problem: impl fmt::Display,
    ) {
        let w = self.location(ctx, key, span).warning(problem);
        self.warnings.borrow_mut().push(w);
    }

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
            if let Some(advice) = did_you_mean(&ctx, field, expected) {
                return self.error(span, format!("unknown key `{field}` {where_}: {advice}"));
            }
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
        let tunnels = key
            .as_deref()
            .is_some_and(|k| k == "listener" || k == "connector");
        let msg = if tunnels {
            msg
        } else {
            msg.replace(
                "expected a sequence",
                "expected a list, such as [\"...\", \"...\"]",
            )
        };
        out.push_str(&msg);
        if tunnels && msg.contains("expected a sequence") {
            out.push_str(" (tunnels are arrays of tables: write [[listener]] or [[connector]], with double brackets)");
        }
        out.push_str(&quoting_hint(&msg));
        self.error(span, out)
    }
}

/// For an unknown key `field` in the section `ctx`, whose keys are `expected` (serde's "one of
/// `a`, `b`" list): the key of the other role it was meant for, or the one key it is a typo of.
fn did_you_mean(ctx: &str, field: &str, expected: &str) -> Option<String> {
    let connector = ctx.starts_with("connector");
    let listener = ctx.starts_with("listener");
    match field {
        "peers" if connector => return Some(
            "did you mean `peer`? A connector pins its listener's key: `peer = \"SHA256:...\"` \
                 (`peers` is a listener's list of trusted connector keys)"
                .to_string(),
        ),
        "peer" if listener => {
            return Some(
                "did you mean `peers`? A listener lists the connector keys it trusts: \
                 `peers = [\"SHA256:...\"]` or `peers_file` (`peer` is a connector's pin of its \
                 listener's key)"
                    .to_string(),
            )
        }
        _ => {}
    }
    let keys: Vec<&str> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|k| !k.is_empty())
        .collect();
    const LISTENER_ONLY: &[&str] = &[
        "forward",
        "peers",
        "peers_file",
        "accept_unknown",
        "allow_tofu",
        "allow_destinations",
        "proxy_protocol",
        "revoke",
    ];
    const CONNECTOR_ONLY: &[&str] = &[
        "connect",
        "peer",
        "known_peers",
        "socket_mode",
        "socket_group",
        "mode",
    ];
    if connector && LISTENER_ONLY.contains(&field) {
        return Some(format!(
            "`{field}` is a key of [[listener]] (sealed in, plain out); a [[connector]] (plain in, \
             sealed out) has `connect` and `peer`"
        ));
    }
    if listener && CONNECTOR_ONLY.contains(&field) {
        return Some(format!(
            "`{field}` is a key of [[connector]] (plain in, sealed out); a [[listener]] (sealed in, \
             plain out) has `forward` and `peers`"
        ));
    }
    let lower = field.to_ascii_lowercase().replace('-', "_");
    let mut close = keys
        .iter()
        .map(|k| (edit_distance(&lower, k), *k))
        .filter(|(d, k)| *d <= 2.min(k.len() / 3).max(1))
        .collect::<Vec<_>>();
    close.sort();
    match close.as_slice() {
        [(_, k)] => Some(format!("did you mean `{k}`?")),
        [(d0, k), (d1, _), ..] if d0 < d1 => Some(format!("did you mean `{k}`?")),
        _ => None,
    }
}

/// The Levenshtein distance between `a` and `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(row[j + 1])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// Most errors of one section or tunnel looked for before the serde layer gives up on it.
const MAX_ERRORS_PER_SECTION: usize = 32;

impl Source<'_> {
    /// The errors of the serde layer (unknown keys, missing keys, wrong types), every one
    /// that does not hide behind another: each top-level section and each tunnel is read on
    /// its own, and a key found wrong is taken out to look for the next one. A required key
    /// taken out for its wrong type (or that a misspelt key was surely meant as) is not
    /// reported missing as well. Also `tree` for the checks of the rest: without the sections
    /// and tunnels that have errors, but those whose only errors are unknown keys are kept
    /// without them, with the keys they were meant as ([`SerdePass::meant`]).
    pub(crate) fn serde_errors<'i>(&self, tree: &Spanned<DeTable<'i>>) -> SerdePass<'i> {
        let mut pass = SerdePass {
            errors: Vec::new(),
            rest: Spanned::new(tree.span(), DeTable::new()),
            meant: Vec::new(),
        };
        for (key, value) in tree.get_ref().iter() {
            match value.get_ref() {
                DeValue::Array(items)
                    if matches!(key.get_ref().as_ref(), "listener" | "connector") =>
                {
                    let mut good = toml::de::DeArray::new();
                    for item in items.iter() {
                        let mut one = toml::de::DeArray::new();
                        one.push(item.clone());
                        let wrapped = Spanned::new(value.span(), DeValue::Array(one));
                        if let Some(kept) = self.section_errors(tree, key, wrapped, &mut pass) {
                            if let DeValue::Array(one) = kept.get_ref() {
                                if let Some(item) = one.first() {
                                    good.push(item.clone());
                                }
                            }
                        }
                    }
                    let good = Spanned::new(value.span(), DeValue::Array(good));
                    pass.rest.get_mut().insert(key.clone(), good);
                }
                _ => {
                    if let Some(kept) = self.section_errors(tree, key, value.clone(), &mut pass) {
                        pass.rest.get_mut().insert(key.clone(), kept);
                    }
                }
            }
        }
        pass
    }

    /// The serde errors of the one top-level `key` = `value` (a tunnel in an array of one);
    /// `value` as the rest of the checks may see it: whole, or without its unknown keys.
    fn section_errors<'i>(
        &self,
        tree: &Spanned<DeTable<'i>>,
        key: &Spanned<toml::de::DeString<'i>>,
        mut value: Spanned<DeValue<'i>>,
        pass: &mut SerdePass<'i>,
    ) -> Option<Spanned<DeValue<'i>>> {
        use serde::Deserialize;
        let mut taken_out: Vec<String> = Vec::new();
        let mut meant: Vec<String> = Vec::new();
        let mut only_unknown_keys = true;
        for _ in 0..MAX_ERRORS_PER_SECTION {
            let mut alone = DeTable::new();
            alone.insert(key.clone(), value.clone());
            let alone = Spanned::new(tree.span(), alone);
            let Err(e) = super::raw::RawConfig::deserialize(toml::de::Deserializer::from(alone))
            else {
                if !only_unknown_keys {
                    return None;
                }
                if !meant.is_empty() {
                    let (first, _) = self.line_col(value.span().start);
                    let (last, _) = self.line_col(value.span().end);
                    pass.meant.push((first..=last, meant));
                }
                return Some(value);
            };
            let msg = one_line(e.message());
            if let Some(rest) = msg.strip_prefix("missing field `") {
                let field = rest.split('`').next().unwrap_or(rest);
                if taken_out
                    .iter()
                    .any(|k| k == field || edit_distance(k, field) <= 2)
                {
                    return None;
                }
            }
            only_unknown_keys &= msg.starts_with("unknown field `");
            let error = self.serde_error(tree, &e);
            if let Some(target) = error
                .to_string()
                .split("did you mean `")
                .nth(1)
                .and_then(|rest| rest.split('`').next())
            {
                meant.push(target.to_string());
            }
            pass.errors.push(error);
            let at = e.span()?;
            let k = take_out(&mut value, at.start)?;
            meant.push(k.clone());
            taken_out.push(k);
        }
        None
    }
}

/// What the serde layer found: its errors, and what the rest of the checks may look at.
pub(crate) struct SerdePass<'i> {
    /// The errors, in no particular order.
    pub(crate) errors: Vec<ConfigError>,
    /// The tree without the sections and tunnels that have errors other than unknown keys,
    /// and without the unknown keys.
    pub(crate) rest: Spanned<DeTable<'i>>,
    /// For each section kept without its unknown keys: its lines, and the keys those were
    /// meant as (a later error about one of them follows from the unknown key).
    pub(crate) meant: Vec<(std::ops::RangeInclusive<usize>, Vec<String>)>,
}

impl SerdePass<'_> {
    /// Whether `e`, found in [`SerdePass::rest`], follows from an unknown key already reported.
    pub(crate) fn follows(&self, e: &ConfigError) -> bool {
        match e {
            ConfigError::At { line, message, .. } => self.meant.iter().any(|(lines, keys)| {
                lines.contains(line) && keys.iter().any(|k| message.contains(&format!("`{k}`")))
            }),
            // The file as a whole (no tunnels left, say) may be so for those taken out.
            _ => true,
        }
    }
}

/// Removes the key of the section or tunnel `value` whose key or value holds byte `at`;
/// its name, or `None` if the error is not about one of its keys.
fn take_out(value: &mut Spanned<DeValue<'_>>, at: usize) -> Option<String> {
    let table = match value.get_mut() {
        DeValue::Table(t) => t,
        DeValue::Array(items) => match items.first_mut()?.get_mut() {
            DeValue::Table(t) => t,
            _ => return None,
        },
        _ => return None,
    };
    let key = table
        .iter()
        .find(|(k, v)| k.span().contains(&at) || v.span().contains(&at))
        .map(|(k, _)| k.clone())?;
    table.remove(&key);
    Some(key.get_ref().to_string())
}

/// For a value of the wrong TOML type that is the right one written the other way (a number or
/// a boolean in quotes, a duration without its unit): how to write it.
fn quoting_hint(msg: &str) -> String {
    let quoted = msg
        .strip_prefix("invalid type: string \"")
        .and_then(|rest| rest.split_once('"'));
    if let Some((text, expected)) = quoted {
        let number = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        if (expected.contains("an integer") && number)
            || (expected.contains("a boolean") && (text == "true" || text == "false"))
        {
            return format!(" (write it without quotes: {text})");
        }
    }
    if let Some(rest) = msg.strip_prefix("invalid type: integer `") {
        if msg.contains("expected a duration") {
            let n = rest.split('`').next().unwrap_or_default();
            return format!(" (a duration has a unit: write \"{n}s\")");
        }
    }
    String::new()
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
