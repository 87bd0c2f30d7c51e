//! The TOML configuration: model, validation and error locations.
//!
//! One file describes one process: its identity (`[identity]`), tuning defaults (`[defaults]`)
//! and any number of tunnels, `[[listener]]` (sealed in, plain out) and `[[connector]]` (plain
//! in, sealed out). See `etc/listener.toml` and `etc/connector.toml` for commented examples.
//!
//! Loading happens in three steps:
//!
//! 1. The text is parsed into a spanned TOML tree ([`toml::de::DeTable`]); syntax errors stop
//!    here.
//! 2. The tree is deserialized into private `Raw*` structs whose leaves are
//!    [`toml::Spanned`], with `deny_unknown_fields` everywhere. When serde fails (unknown key,
//!    missing key, wrong type), the error's byte span is looked up in the spanned tree to name the
//!    section, the tunnel and the key.
//! 3. The raw structs are validated and turned into the public types ([`Config`],
//!    [`ListenerConfig`], [`ConnectorConfig`], [`Tuning`]); every semantic error points at the
//!    span of the offending value.
//!
//! Every error therefore reads `FILE:LINE:COLUMN: CONTEXT: key `KEY`: PROBLEM`, on one line,
//! for example:
//!
//! ```text
//! /etc/sealpipe/b.toml:12:11: listener "redis": key `forward`: invalid address "127.0.0.1": missing `:port`
//! ```
//!
//! Sizes are parsed by [`bytesize`] (`"16KiB"`, `"64 MiB"`, `"1048576"`; a bare number is bytes)
//! and durations by [`humantime`] (`"10s"`, `"1h 30m"`, `"500ms"`). Addresses are not resolved
//! while loading: a host name is looked up anew for each connection ([`Address::resolve`]).

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub use crate::addr::{Address, AddressError, DestinationRule};
use crate::proto::identity::Fingerprint;

/// Smallest accepted `record_size` (1 KiB).
pub const MIN_RECORD_SIZE: usize = 1024;
/// Largest accepted `record_size` (64 KiB).
pub const MAX_RECORD_SIZE: usize = 64 * 1024;

/// A whole, validated configuration file.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file this was loaded from (as given; used in messages and to resolve relative paths).
    pub path: PathBuf,
    /// This host's long-term identity.
    pub identity: IdentityConfig,
    /// `[[listener]]` tunnels: sealed in, plain out; in file order.
    pub listeners: Vec<ListenerConfig>,
    /// `[[connector]]` tunnels: plain in, sealed out; in file order.
    pub connectors: Vec<ConnectorConfig>,
    /// `[metrics]`: the Prometheus endpoint, if enabled.
    pub metrics: Option<MetricsConfig>,
}

/// The `[metrics]` section: where `GET /metrics` is served (TCP only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    /// The address of the metrics HTTP server.
    pub listen: Address,
}

/// Default mode of a connector's Unix listening socket: owner and group may connect, others
/// not (connecting to a Unix socket needs write permission on it).
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;

/// Who may connect to a connector's `unix:` listen socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketPermissions {
    /// File mode bits (0..=0o777), `socket_mode`.
    pub mode: u32,
    /// Group owning the socket file, `socket_group` (name as written, resolved gid).
    pub group: Option<(String, u32)>,
}

impl Default for SocketPermissions {
    fn default() -> Self {
        SocketPermissions {
            mode: DEFAULT_SOCKET_MODE,
            group: None,
        }
    }
}

/// The `[identity]` section. Relative paths are resolved against the config file's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityConfig {
    /// The PKCS#8 PEM private key of this host.
    pub private_key: PathBuf,
    /// An optional pre-shared key file, mixed into the key schedule.
    pub psk_file: Option<PathBuf>,
}

/// Per-tunnel tuning: `[defaults]` merged with the tunnel's own overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct Tuning {
    /// Rekey each direction after this many bytes of plaintext (never zero).
    pub rekey_bytes: u64,
    /// Also rekey after this much time; `None` means by bytes only.
    pub rekey_interval: Option<Duration>,
    /// A handshake not complete after this long is dropped.
    pub handshake_timeout: Duration,
    /// Timeout of each outgoing TCP connect.
    pub connect_timeout: Duration,
    /// On SIGTERM, how long open connections may drain before they are cut.
    pub drain_timeout: Duration,
    /// Most established connections per tunnel.
    pub max_connections: usize,
    /// Most concurrent handshakes in progress per tunnel.
    pub max_handshakes: usize,
    /// New connections accepted per second from one source IP address (0: no limit). Past it,
    /// connections are dropped at accept and a warning is logged once per interval.
    pub source_rate_limit: u32,
    /// Largest plaintext per sealed record, in bytes ([`MIN_RECORD_SIZE`]..=[`MAX_RECORD_SIZE`]).
    pub record_size: usize,
    /// Session resumption: later connections between the same two peers skip the RSA work.
    pub resumption: bool,
    /// How long a resumption ticket lives (1 s ..= 24 h).
    pub resumption_lifetime: Duration,
    /// How many resumptions one ticket serves (1 ..= 1,000,000).
    pub resumption_uses: u32,
}

impl Default for Tuning {
    /// 1 GiB rekey, no rekey interval, 10 s handshake and connect timeouts, 30 s drain,
    /// 1024 connections, 128 handshakes, 64 KiB records (fewest system calls per byte; a
    /// record is only as large as the data at hand), resumption on with 1 h and 1000-use
    /// tickets.
    fn default() -> Self {
        Tuning {
            rekey_bytes: 1 << 30,
            rekey_interval: None,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_handshakes: 128,
            source_rate_limit: 0,
            record_size: 64 * 1024,
            resumption: true,
            resumption_lifetime: Duration::from_secs(3600),
            resumption_uses: 1000,
        }
    }
}

/// A `[[listener]]`: accepts sealed connections from trusted peers and forwards them in plaintext.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerConfig {
    /// Unique among listeners; used in logs.
    pub name: String,
    /// Where sealed connections arrive.
    pub listen: Address,
    /// Where plaintext goes (resolved for each connection); `None` when the listener serves
    /// redirect-mode connectors only (`allow_destinations`). Exactly one of the two is set.
    pub forward: Option<Address>,
    /// Destinations a redirect-mode connector may ask for (`allow_destinations`); empty: none,
    /// and a connection that names one is refused.
    pub allow_destinations: Vec<DestinationRule>,
    /// Write a PROXY protocol header to the target before any payload.
    pub proxy_protocol: ProxyProtocol,
    /// Trusted connector keys with optional names: the union of `peers` and `peers_file`,
    /// without duplicates; empty only with `accept_unknown`.
    pub peers: Vec<(Fingerprint, Option<String>)>,
    /// The `peers_file`, if any (resolved against the config file's directory).
    pub peers_file: Option<PathBuf>,
    /// `accept_unknown`: let in connectors outside `peers` (only the listener is authenticated).
    pub accept_unknown: bool,
    /// `allow_tofu`: answer first-contact hellos from TOFU connectors that do not know our key.
    pub allow_tofu: bool,
    /// `[defaults]` merged with this tunnel's overrides.
    pub tuning: Tuning,
}

/// A `[[connector]]`: accepts plaintext connections and carries them sealed to a listener.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectorConfig {
    /// Unique among connectors; used in logs.
    pub name: String,
    /// Where local applications connect in plaintext.
    pub listen: Address,
    /// The remote listener (resolved for each connection).
    pub connect: Address,
    /// Mode and group of the socket file when `listen` is a Unix socket.
    pub socket: SocketPermissions,
    /// The remote listener's key: pinned, or trust on first use.
    pub peer: PeerPin,
    /// `forward` (default) or `redirect` (transparent, original destination sent to the listener).
    pub mode: ConnectorMode,
    /// `[defaults]` merged with this tunnel's overrides.
    pub tuning: Tuning,
}

/// How a connector knows the listener's key (`peer`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerPin {
    /// `peer = "SHA256:…"`: only this key.
    Key(Fingerprint),
    /// `peer = "tofu"` with `known_peers`: the first key seen for the `connect` address is
    /// recorded in this file, later ones must match it.
    Tofu {
        /// The known-peers file (resolved against the config file's directory; may not exist
        /// yet).
        known_peers: PathBuf,
    },
}

/// How a connector treats its local clients (`mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConnectorMode {
    /// Every connection goes to the listener's `forward` target.
    #[default]
    Forward,
    /// Connections arrive through a NAT `REDIRECT` rule; each one's original destination is sent
    /// to the listener, which connects there if its `allow_destinations` allows it. A connection
    /// that was not redirected is refused.
    Redirect,
}

/// Whether a listener writes a PROXY protocol header to its target (`proxy_protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// No header (`"off"`, the default).
    #[default]
    Off,
    /// A PROXY protocol version 2 (binary) header (`"v2"`).
    V2,
}

/// Why a configuration could not be loaded. Every message is one line that names the file and,
/// where there is one, the line, column, section and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {error}", path.display())]
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

impl Config {
    /// Reads and validates the config file at `path`, and any `peers_file` it names.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Config::parse(&text, path)
    }

    /// Validates config `text` as if read from `path`: `path` is used in messages and to
    /// resolve relative paths. Any `peers_file` is read from disk.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let src = Source { text, path };
        let tree = DeTable::parse(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            src.error(
                span,
                format!("TOML syntax error: {}", one_line(e.message())),
            )
        })?;
        let raw: RawConfig = RawConfig::deserialize(toml::de::Deserializer::from(tree.clone()))
            .map_err(|e| src.serde_error(&tree, &e))?;
        src.build(raw)
    }
}

// ---------------------------------------------------------------------------------------------
// Raw, spanned model. Tuning keys are repeated in each struct by a macro because serde's
// `flatten` cannot be combined with `deny_unknown_fields`.

macro_rules! with_tuning {
    ($(#[$meta:meta])* struct $name:ident { $($field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        struct $name {
            $($field: $ty,)*
            rekey_bytes: Option<Spanned<SizeText>>,
            rekey_interval: Option<Spanned<DurationText>>,
            handshake_timeout: Option<Spanned<DurationText>>,
            connect_timeout: Option<Spanned<DurationText>>,
            drain_timeout: Option<Spanned<DurationText>>,
            max_connections: Option<Spanned<i64>>,
            max_handshakes: Option<Spanned<i64>>,
            source_rate_limit: Option<Spanned<i64>>,
            record_size: Option<Spanned<SizeText>>,
            resumption: Option<Spanned<bool>>,
            resumption_lifetime: Option<Spanned<DurationText>>,
            resumption_uses: Option<Spanned<i64>>,
        }

        impl $name {
            fn tuning(&self) -> RawTuning {
                RawTuning {
                    rekey_bytes: self.rekey_bytes.clone(),
                    rekey_interval: self.rekey_interval.clone(),
                    handshake_timeout: self.handshake_timeout.clone(),
                    connect_timeout: self.connect_timeout.clone(),
                    drain_timeout: self.drain_timeout.clone(),
                    max_connections: self.max_connections.clone(),
                    max_handshakes: self.max_handshakes.clone(),
                    source_rate_limit: self.source_rate_limit.clone(),
                    record_size: self.record_size.clone(),
                    resumption: self.resumption.clone(),
                    resumption_lifetime: self.resumption_lifetime.clone(),
                    resumption_uses: self.resumption_uses.clone(),
                }
            }
        }
    };
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    identity: Option<Spanned<RawIdentity>>,
    defaults: Option<RawTuning>,
    #[serde(default, rename = "listener")]
    listeners: Vec<Spanned<RawListener>>,
    #[serde(default, rename = "connector")]
    connectors: Vec<Spanned<RawConnector>>,
    metrics: Option<Spanned<RawMetrics>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawMetrics {
    listen: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawIdentity {
    private_key: Spanned<String>,
    psk_file: Option<Spanned<String>>,
}

with_tuning! {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, expecting = "a table")]
    struct RawTuning {}
}

with_tuning! {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, expecting = "a table")]
    struct RawListener {
        name: Spanned<String>,
        listen: Spanned<String>,
        forward: Option<Spanned<String>>,
        peers: Option<Spanned<Vec<Spanned<String>>>>,
        peers_file: Option<Spanned<String>>,
        accept_unknown: Option<Spanned<bool>>,
        allow_tofu: Option<Spanned<bool>>,
        allow_destinations: Option<Spanned<Vec<Spanned<String>>>>,
        proxy_protocol: Option<Spanned<String>>,
    }
}

with_tuning! {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, expecting = "a table")]
    struct RawConnector {
        name: Spanned<String>,
        listen: Spanned<String>,
        connect: Spanned<String>,
        peer: Spanned<String>,
        socket_mode: Option<Spanned<String>>,
        socket_group: Option<Spanned<String>>,
        known_peers: Option<Spanned<String>>,
        mode: Option<Spanned<String>>,
    }
}

/// A size: a string for `bytesize` or a bare integer (bytes). Kept as written until validated.
#[derive(Clone)]
enum SizeText {
    Int(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for SizeText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SizeText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"16KiB\" or \"1GiB\", or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SizeText, E> {
                Ok(SizeText::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SizeText, E> {
                i64::try_from(v)
                    .map(SizeText::Int)
                    .map_err(|_| E::custom("size too large"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SizeText, E> {
                Ok(SizeText::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration string for `humantime`, kept as written until validated.
#[derive(Clone)]
struct DurationText(String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"10s\", \"500ms\" or \"1h 30m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationText, E> {
                Ok(DurationText(v.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

/// Tuning values as given in one place; `None` = not set there.
#[derive(Default)]
struct TuningOverrides {
    rekey_bytes: Option<u64>,
    rekey_interval: Option<Option<Duration>>,
    handshake_timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    drain_timeout: Option<Duration>,
    max_connections: Option<usize>,
    max_handshakes: Option<usize>,
    source_rate_limit: Option<u32>,
    record_size: Option<usize>,
    resumption: Option<bool>,
    resumption_lifetime: Option<Duration>,
    resumption_uses: Option<u32>,
}

impl TuningOverrides {
    fn apply(&self, base: &Tuning) -> Tuning {
        Tuning {
            rekey_bytes: self.rekey_bytes.unwrap_or(base.rekey_bytes),
            rekey_interval: self.rekey_interval.unwrap_or(base.rekey_interval),
            handshake_timeout: self.handshake_timeout.unwrap_or(base.handshake_timeout),
            connect_timeout: self.connect_timeout.unwrap_or(base.connect_timeout),
            drain_timeout: self.drain_timeout.unwrap_or(base.drain_timeout),
            max_connections: self.max_connections.unwrap_or(base.max_connections),
            max_handshakes: self.max_handshakes.unwrap_or(base.max_handshakes),
            source_rate_limit: self.source_rate_limit.unwrap_or(base.source_rate_limit),
            record_size: self.record_size.unwrap_or(base.record_size),
            resumption: self.resumption.unwrap_or(base.resumption),
            resumption_lifetime: self.resumption_lifetime.unwrap_or(base.resumption_lifetime),
            resumption_uses: self.resumption_uses.unwrap_or(base.resumption_uses),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Locations and messages.

/// The text being loaded and where it came from.
struct Source<'a> {
    text: &'a str,
    path: &'a Path,
}

/// Collapses a possibly multi-line message into one line.
fn one_line(s: &str) -> String {
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
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.line_col(span.start);
        ConfigError::At {
            path: self.path.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    fn file_error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::File {
            path: self.path.to_path_buf(),
            message: message.into(),
        }
    }

    /// An error about `key` of the section `ctx`, at `span`.
    fn key_error(
        &self,
        ctx: &str,
        key: &str,
        span: Range<usize>,
        problem: impl fmt::Display,
    ) -> ConfigError {
        self.error(span, format!("{ctx}: key `{key}`: {problem}"))
    }

    /// Turns a serde error into a one-line message naming the section, tunnel and key.
    fn serde_error(&self, tree: &Spanned<DeTable<'_>>, e: &toml::de::Error) -> ConfigError {
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

    // -----------------------------------------------------------------------------------------
    // Validation.

    fn build(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let dir = self.path.parent().unwrap_or(Path::new("")).to_path_buf();
        let identity = raw.identity.ok_or_else(|| {
            self.file_error(
                "missing [identity] section (it names this host's `private_key`)".to_string(),
            )
        })?;
        let identity = identity.into_inner();
        let identity = IdentityConfig {
            private_key: self.path_value(
                "[identity]",
                "private_key",
                &identity.private_key,
                &dir,
            )?,
            psk_file: identity
                .psk_file
                .as_ref()
                .map(|p| self.path_value("[identity]", "psk_file", p, &dir))
                .transpose()?,
        };

        let base = match &raw.defaults {
            Some(d) => self
                .overrides("[defaults]", &d.tuning())?
                .apply(&Tuning::default()),
            None => Tuning::default(),
        };

        if raw.listeners.is_empty() && raw.connectors.is_empty() {
            return Err(
                self.file_error("no tunnels: add at least one [[listener]] or [[connector]]")
            );
        }

        // Listen addresses in use so far: address -> (description, line).
        let mut bound: Vec<(Address, String, usize)> = Vec::new();

        let mut listeners = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, l) in raw.listeners.iter().enumerate() {
            let header = l.span();
            let l = l.get_ref();
            let name = self.tunnel_name("listener", i, &l.name, &mut names)?;
            let ctx = format!("listener {name:?}");
            let listen = self.address(&ctx, "listen", &l.listen, Side::SealedListen, &dir)?;
            self.check_bound(&ctx, &l.listen, &listen, &mut bound)?;
            let forward = l
                .forward
                .as_ref()
                .map(|f| self.address(&ctx, "forward", f, Side::PlainConnect, &dir))
                .transpose()?;
            let mut allow_destinations = Vec::new();
            if let Some(list) = &l.allow_destinations {
                if list.get_ref().is_empty() {
                    return Err(self.key_error(
                        &ctx,
                        "allow_destinations",
                        list.span(),
                        "empty list: name at least one destination, or remove the key and set `forward`",
                    ));
                }
                for entry in list.get_ref() {
                    let rule = entry
                        .get_ref()
                        .parse::<DestinationRule>()
                        .map_err(|problem| {
                            self.key_error(
                                &ctx,
                                "allow_destinations",
                                entry.span(),
                                format!("invalid destination {:?}: {problem}", entry.get_ref()),
                            )
                        })?;
                    allow_destinations.push(rule);
                }
            }
            match (&l.forward, &l.allow_destinations) {
                (Some(_), Some(list)) => {
                    return Err(self.key_error(
                        &ctx,
                        "allow_destinations",
                        list.span(),
                        "set either `forward` (one target for every connection) or `allow_destinations` (redirect-mode connectors choose), not both",
                    ))
                }
                (None, None) => {
                    return Err(self.error(
                        header.clone(),
                        format!("{ctx}: missing key `forward` (or `allow_destinations`, for redirect-mode connectors)"),
                    ))
                }
                _ => {}
            }
            let proxy_protocol = match &l.proxy_protocol {
                None => ProxyProtocol::Off,
                Some(v) => match v.get_ref().as_str() {
                    "off" => ProxyProtocol::Off,
                    "v2" => ProxyProtocol::V2,
                    other => {
                        return Err(self.key_error(
                            &ctx,
                            "proxy_protocol",
                            v.span(),
                            format!("invalid value {other:?}: expected \"v2\" or \"off\""),
                        ))
                    }
                },
            };
            let mut peers: Vec<(Fingerprint, Option<String>)> = Vec::new();
            if let Some(list) = &l.peers {
                for entry in list.get_ref() {
                    let (fp, peer_name) = parse_peer(entry.get_ref())
                        .map_err(|problem| self.key_error(&ctx, "peers", entry.span(), problem))?;
                    add_peer(&mut peers, fp, peer_name);
                }
            }
            let mut peers_file = None;
            if let Some(file) = &l.peers_file {
                let file_path = self.path_value(&ctx, "peers_file", file, &dir)?;
                peers_file = Some(file_path.clone());
                let text = std::fs::read_to_string(&file_path).map_err(|e| {
                    self.key_error(
                        &ctx,
                        "peers_file",
                        file.span(),
                        format!("cannot read {}: {e}", file_path.display()),
                    )
                })?;
                for (fp, peer_name) in parse_peers_file(&text, &file_path, &ctx)? {
                    add_peer(&mut peers, fp, peer_name);
                }
            }
            let accept_unknown = l.accept_unknown.as_ref().is_some_and(|b| *b.get_ref());
            let allow_tofu = l.allow_tofu.as_ref().is_some_and(|b| *b.get_ref());
            // With accept_unknown the trust list only names known connectors; it may be empty.
            if peers.is_empty() && !accept_unknown {
                let problem = match (&l.peers, &l.peers_file) {
                    (None, None) => "no trusted peers: set `peers` or `peers_file`".to_string(),
                    _ => {
                        "no trusted peers: `peers` and `peers_file` list no fingerprint".to_string()
                    }
                };
                return Err(self.error(header, format!("{ctx}: {problem}")));
            }
            let tuning = self.overrides(&ctx, &l.tuning())?.apply(&base);
            listeners.push(ListenerConfig {
                name,
                listen,
                forward,
                allow_destinations,
                proxy_protocol,
                peers,
                peers_file,
                accept_unknown,
                allow_tofu,
                tuning,
            });
        }

        let mut connectors = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, c) in raw.connectors.iter().enumerate() {
            let c = c.get_ref();
            let name = self.tunnel_name("connector", i, &c.name, &mut names)?;
            let ctx = format!("connector {name:?}");
            let listen = self.address(&ctx, "listen", &c.listen, Side::PlainListen, &dir)?;
            self.check_bound(&ctx, &c.listen, &listen, &mut bound)?;
            let connect = self.address(&ctx, "connect", &c.connect, Side::SealedConnect, &dir)?;
            let socket = self.socket_permissions(&ctx, c, &listen)?;
            let peer = self.peer_pin(&ctx, c, &dir)?;
            let mode = match &c.mode {
                None => ConnectorMode::Forward,
                Some(v) => match v.get_ref().as_str() {
                    "forward" => ConnectorMode::Forward,
                    "redirect" => ConnectorMode::Redirect,
                    other => {
                        return Err(self.key_error(
                            &ctx,
                            "mode",
                            v.span(),
                            format!("invalid mode {other:?}: expected \"forward\" or \"redirect\""),
                        ))
                    }
                },
            };
            // A Unix-socket client was not redirected by a NAT rule: it has no original
            // destination to send, so every connection would be refused.
            if let (ConnectorMode::Redirect, Some(path), Some(v)) =
                (mode, listen.unix_path(), &c.mode)
            {
                return Err(self.key_error(
                    &ctx,
                    "mode",
                    v.span(),
                    format!(
                        "`mode = \"redirect\"` needs a TCP `listen` (connections redirected by a NAT rule); \
                         `listen = \"unix:{}\"` is a Unix socket, whose clients have no original destination",
                        path.display()
                    ),
                ));
            }
            let tuning = self.overrides(&ctx, &c.tuning())?.apply(&base);
            connectors.push(ConnectorConfig {
                name,
                listen,
                connect,
                peer,
                socket,
                mode,
                tuning,
            });
        }

        let metrics = match &raw.metrics {
            Some(m) => {
                let m = m.get_ref();
                let ctx = "[metrics]";
                let listen = self.address(ctx, "listen", &m.listen, Side::Metrics, &dir)?;
                self.check_bound(ctx, &m.listen, &listen, &mut bound)?;
                Some(MetricsConfig { listen })
            }
            None => None,
        };

        Ok(Config {
            path: self.path.to_path_buf(),
            identity,
            listeners,
            connectors,
            metrics,
        })
    }

    /// `socket_mode` and `socket_group` of a connector; only meaningful with a `unix:` listen.
    fn socket_permissions(
        &self,
        ctx: &str,
        c: &RawConnector,
        listen: &Address,
    ) -> Result<SocketPermissions, ConfigError> {
        let mut perms = SocketPermissions::default();
        for (key, value) in [
            ("socket_mode", &c.socket_mode),
            ("socket_group", &c.socket_group),
        ] {
            if let (Some(v), None) = (value, listen.unix_path()) {
                return Err(self.key_error(
                    ctx,
                    key,
                    v.span(),
                    "only applies to a Unix socket (`listen = \"unix:/path\"`)",
                ));
            }
        }
        if let Some(v) = &c.socket_mode {
            let s = v.get_ref().trim();
            let digits = s.strip_prefix("0o").unwrap_or(s);
            perms.mode = u32::from_str_radix(digits, 8)
                .ok()
                .filter(|m| !digits.is_empty() && *m <= 0o777)
                .ok_or_else(|| {
                    self.key_error(
                        ctx,
                        "socket_mode",
                        v.span(),
                        format!("invalid mode {s:?}: expected octal permission bits from \"0000\" to \"0777\", such as \"0660\""),
                    )
                })?;
            if perms.mode & 0o600 != 0o600 {
                return Err(self.key_error(
                    ctx,
                    "socket_mode",
                    v.span(),
                    format!("mode {s:?} does not let the owner read and write the socket (needs at least 0600)"),
                ));
            }
        }
        if let Some(v) = &c.socket_group {
            let name = v.get_ref().trim();
            let gid = lookup_group(name)
                .map_err(|problem| self.key_error(ctx, "socket_group", v.span(), problem))?;
            perms.group = Some((name.to_string(), gid));
        }
        Ok(perms)
    }

    /// A connector's `peer` and `known_peers`: a fingerprint without `known_peers`, or `"tofu"`
    /// with it.
    fn peer_pin(&self, ctx: &str, c: &RawConnector, dir: &Path) -> Result<PeerPin, ConfigError> {
        let text = c.peer.get_ref().trim();
        if text.eq_ignore_ascii_case("tofu") {
            let Some(file) = &c.known_peers else {
                return Err(self.key_error(
                    ctx,
                    "peer",
                    c.peer.span(),
                    "`peer = \"tofu\"` needs `known_peers = \"PATH\"`, the file where the listener's key is recorded",
                ));
            };
            return Ok(PeerPin::Tofu {
                known_peers: self.path_value(ctx, "known_peers", file, dir)?,
            });
        }
        let fp = text.parse::<Fingerprint>().map_err(|e| {
            self.key_error(
                ctx,
                "peer",
                c.peer.span(),
                format!("invalid fingerprint {:?}: {e}", c.peer.get_ref()),
            )
        })?;
        if let Some(file) = &c.known_peers {
            return Err(self.key_error(
                ctx,
                "known_peers",
                file.span(),
                "`known_peers` is only for `peer = \"tofu\"`; this connector pins its listener's key",
            ));
        }
        Ok(PeerPin::Key(fp))
    }

    /// Checks a tunnel name for emptiness and duplicates; `seen` maps names to their line.
    fn tunnel_name(
        &self,
        kind: &str,
        index: usize,
        name: &Spanned<String>,
        seen: &mut HashMap<String, usize>,
    ) -> Result<String, ConfigError> {
        let ctx = format!("{kind} #{}", index + 1);
        let n = name.get_ref();
        if n.trim().is_empty() {
            return Err(self.key_error(&ctx, "name", name.span(), "empty name"));
        }
        if n.chars().any(char::is_control) {
            return Err(self.key_error(
                &ctx,
                "name",
                name.span(),
                format!("{n:?} contains control characters"),
            ));
        }
        let line = self.line_col(name.span().start).0;
        if let Some(first) = seen.insert(n.clone(), line) {
            return Err(self.key_error(
                &format!("{kind} {n:?}"),
                "name",
                name.span(),
                format!("duplicate {kind} name {n:?} (first used on line {first})"),
            ));
        }
        Ok(n.clone())
    }

    fn address(
        &self,
        ctx: &str,
        key: &str,
        value: &Spanned<String>,
        side: Side,
        dir: &Path,
    ) -> Result<Address, ConfigError> {
        let s = value.get_ref();
        let addr = s.parse::<Address>().map_err(|e| {
            self.key_error(
                ctx,
                key,
                value.span(),
                format!("invalid address {s:?}: {e}"),
            )
        })?;
        if let Address::Unix(p) = addr {
            let why = match side {
                Side::PlainListen | Side::PlainConnect => None,
                Side::SealedListen | Side::SealedConnect => Some(
                    "the sealed side must be a TCP address (host:port); Unix sockets are for the plaintext side only (a connector's `listen`, a listener's `forward`)",
                ),
                Side::Metrics => Some("the metrics endpoint must be a TCP address (host:port)"),
            };
            if let Some(why) = why {
                return Err(self.key_error(
                    ctx,
                    key,
                    value.span(),
                    format!("invalid address {s:?}: {why}"),
                ));
            }
            let path = dir.join(p);
            // sun_path holds 108 bytes with the terminating NUL.
            let len = path.as_os_str().len();
            if len > MAX_UNIX_PATH {
                return Err(self.key_error(
                    ctx,
                    key,
                    value.span(),
                    format!(
                        "invalid address {s:?}: Unix socket path {} is {len} bytes long, the limit is {MAX_UNIX_PATH}",
                        path.display()
                    ),
                ));
            }
            if matches!(side, Side::PlainListen) {
                use std::os::unix::fs::FileTypeExt;
                if let Ok(m) = std::fs::symlink_metadata(&path) {
                    if !m.file_type().is_socket() {
                        return Err(self.key_error(
                            ctx,
                            key,
                            value.span(),
                            format!(
                                "{} exists and is not a socket; sealpipe will not replace it",
                                path.display()
                            ),
                        ));
                    }
                }
            }
            return Ok(Address::Unix(path));
        }
        let is_listen = matches!(side, Side::SealedListen | Side::PlainListen | Side::Metrics);
        if !is_listen && addr.port() == 0 {
            return Err(self.key_error(
                ctx,
                key,
                value.span(),
                format!("invalid address {s:?}: port 0 cannot be connected to"),
            ));
        }
        Ok(addr)
    }

    /// Refuses a listen address another tunnel in this file already binds.
    fn check_bound(
        &self,
        ctx: &str,
        value: &Spanned<String>,
        addr: &Address,
        bound: &mut Vec<(Address, String, usize)>,
    ) -> Result<(), ConfigError> {
        if addr.port() != 0 || addr.unix_path().is_some() {
            for (other, owner, line) in bound.iter() {
                if listen_conflict(addr, other) {
                    return Err(self.key_error(
                        ctx,
                        "listen",
                        value.span(),
                        format!("address {addr} is already used by {owner} (line {line})"),
                    ));
                }
            }
        }
        let line = self.line_col(value.span().start).0;
        bound.push((addr.clone(), ctx.to_string(), line));
        Ok(())
    }

    fn path_value(
        &self,
        ctx: &str,
        key: &str,
        value: &Spanned<String>,
        dir: &Path,
    ) -> Result<PathBuf, ConfigError> {
        let s = value.get_ref();
        if s.trim().is_empty() {
            return Err(self.key_error(ctx, key, value.span(), "empty path"));
        }
        Ok(dir.join(s))
    }

    fn overrides(&self, ctx: &str, raw: &RawTuning) -> Result<TuningOverrides, ConfigError> {
        let size = |key: &str, v: &Spanned<SizeText>| -> Result<u64, ConfigError> {
            let n = match v.get_ref() {
                SizeText::Int(n) => u64::try_from(*n).map_err(|_| {
                    self.key_error(ctx, key, v.span(), format!("invalid size {n}: negative"))
                })?,
                SizeText::Text(s) => s.trim().parse::<bytesize::ByteSize>().map(|b| b.as_u64()).map_err(|_| {
                    self.key_error(
                        ctx,
                        key,
                        v.span(),
                        format!("invalid size {s:?}: expected a number with an optional unit, such as \"16KiB\", \"64 MiB\" or \"1048576\""),
                    )
                })?,
            };
            Ok(n)
        };
        let duration = |key: &str, v: &Spanned<DurationText>| -> Result<Duration, ConfigError> {
            let s = &v.get_ref().0;
            let d = humantime::parse_duration(s.trim()).map_err(|e| {
                self.key_error(ctx, key, v.span(), format!("invalid duration {s:?}: {e}"))
            })?;
            if d.is_zero() {
                return Err(self.key_error(
                    ctx,
                    key,
                    v.span(),
                    format!("invalid duration {s:?}: must be more than zero"),
                ));
            }
            Ok(d)
        };
        let count = |key: &str, v: &Spanned<i64>| -> Result<usize, ConfigError> {
            let n = *v.get_ref();
            if n < 1 {
                return Err(self.key_error(
                    ctx,
                    key,
                    v.span(),
                    format!("{n} is too small: must be at least 1"),
                ));
            }
            usize::try_from(n)
                .map_err(|_| self.key_error(ctx, key, v.span(), format!("{n} is too large")))
        };

        let mut o = TuningOverrides::default();
        if let Some(v) = &raw.rekey_bytes {
            let n = size("rekey_bytes", v)?;
            if n == 0 {
                return Err(self.key_error(ctx, "rekey_bytes", v.span(), "must be more than zero"));
            }
            o.rekey_bytes = Some(n);
        }
        if let Some(v) = &raw.rekey_interval {
            let s = v.get_ref().0.trim();
            o.rekey_interval = Some(
                if s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("none") {
                    None
                } else {
                    Some(duration("rekey_interval", v)?)
                },
            );
        }
        if let Some(v) = &raw.handshake_timeout {
            o.handshake_timeout = Some(duration("handshake_timeout", v)?);
        }
        if let Some(v) = &raw.connect_timeout {
            o.connect_timeout = Some(duration("connect_timeout", v)?);
        }
        if let Some(v) = &raw.drain_timeout {
            o.drain_timeout = Some(duration("drain_timeout", v)?);
        }
        if let Some(v) = &raw.max_connections {
            o.max_connections = Some(count("max_connections", v)?);
        }
        if let Some(v) = &raw.max_handshakes {
            o.max_handshakes = Some(count("max_handshakes", v)?);
        }
        if let Some(v) = &raw.source_rate_limit {
            let n = *v.get_ref();
            if !(0..=1_000_000).contains(&n) {
                return Err(self.key_error(
                    ctx,
                    "source_rate_limit",
                    v.span(),
                    format!("{n} is out of range: connections per second per source, 0 (no limit) to 1000000"),
                ));
            }
            o.source_rate_limit = Some(n as u32);
        }
        if let Some(v) = &raw.record_size {
            let n = size("record_size", v)?;
            if !(MIN_RECORD_SIZE as u64..=MAX_RECORD_SIZE as u64).contains(&n) {
                return Err(self.key_error(
                    ctx,
                    "record_size",
                    v.span(),
                    format!("{n} bytes is out of range: must be from 1KiB (1024) to 64KiB (65536)"),
                ));
            }
            o.record_size = Some(n as usize);
        }
        if let Some(v) = &raw.resumption {
            o.resumption = Some(*v.get_ref());
        }
        if let Some(v) = &raw.resumption_lifetime {
            let d = duration("resumption_lifetime", v)?;
            if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&d) {
                return Err(self.key_error(
                    ctx,
                    "resumption_lifetime",
                    v.span(),
                    format!(
                        "{:?} is out of range: must be from 1s to 24h",
                        v.get_ref().0
                    ),
                ));
            }
            o.resumption_lifetime = Some(d);
        }
        if let Some(v) = &raw.resumption_uses {
            let n = *v.get_ref();
            if !(1..=1_000_000).contains(&n) {
                return Err(self.key_error(
                    ctx,
                    "resumption_uses",
                    v.span(),
                    format!("{n} is out of range: resumptions per ticket, 1 to 1000000"),
                ));
            }
            o.resumption_uses = Some(n as u32);
        }
        Ok(o)
    }
}

/// Longest Unix socket path (`sun_path` is 108 bytes, with the terminating NUL).
pub const MAX_UNIX_PATH: usize = 107;

/// Which end of a tunnel an address is, for the Unix-socket rules.
#[derive(Clone, Copy)]
enum Side {
    /// A listener's `listen`: sealed, TCP only.
    SealedListen,
    /// A connector's `connect`: sealed, TCP only.
    SealedConnect,
    /// A connector's `listen`: plaintext, TCP or Unix.
    PlainListen,
    /// A listener's `forward`: plaintext, TCP or Unix.
    PlainConnect,
    /// `[metrics] listen`: TCP only.
    Metrics,
}

/// Resolves a `socket_group`: a group name (through the system's group database, NSS included)
/// or a numeric gid.
fn lookup_group(name: &str) -> Result<u32, String> {
    if name.is_empty() {
        return Err("empty group name".to_string());
    }
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!("no group named {name:?} on this host")),
        Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
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

/// Whether two listen addresses would collide when bound on this host.
fn listen_conflict(a: &Address, b: &Address) -> bool {
    if a == b {
        return true;
    }
    match (a, b) {
        (Address::Ip(x), Address::Ip(y)) => {
            x.port() == y.port()
                && x.is_ipv4() == y.is_ipv4()
                && (x.ip().is_unspecified() || y.ip().is_unspecified())
        }
        (Address::Host { host: h1, port: p1 }, Address::Host { host: h2, port: p2 }) => {
            p1 == p2 && h1.eq_ignore_ascii_case(h2)
        }
        _ => false,
    }
}

/// Adds a trusted peer, ignoring a repeat (a name given later fills in a missing one).
fn add_peer(peers: &mut Vec<(Fingerprint, Option<String>)>, fp: Fingerprint, name: Option<String>) {
    match peers.iter_mut().find(|(f, _)| *f == fp) {
        Some((_, existing)) => {
            if existing.is_none() {
                *existing = name;
            }
        }
        None => peers.push((fp, name)),
    }
}

/// Parses `SHA256:<base64> [name]`.
fn parse_peer(entry: &str) -> Result<(Fingerprint, Option<String>), String> {
    let entry = entry.trim();
    let (fp, name) = match entry.split_once(char::is_whitespace) {
        Some((fp, name)) => (fp, Some(name.trim().to_string())),
        None => (entry, None),
    };
    let fp = fp
        .parse::<Fingerprint>()
        .map_err(|e| format!("invalid fingerprint {fp:?}: {e}"))?;
    Ok((fp, name.filter(|n| !n.is_empty())))
}

/// Parses a peers file: one fingerprint per line, optionally followed by whitespace and a name;
/// blank lines and `#` comments are ignored.
fn parse_peers_file(
    text: &str,
    path: &Path,
    ctx: &str,
) -> Result<Vec<(Fingerprint, Option<String>)>, ConfigError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        // Base64 has no `#`, so everything after one is a comment.
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let peer = parse_peer(line).map_err(|problem| ConfigError::PeersFile {
            path: path.to_path_buf(),
            line: i + 1,
            message: format!("{ctx}: {problem}"),
        })?;
        out.push(peer);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP_A: &str = "SHA256:wVHjkspS1XP0W53oSvTloX9wH8Unch9YZOLuVqgFza0";
    const FP_B: &str = "SHA256:hpR9FK9WdJ/XhGhFjMPJh24iLQSzfd3mQ0e3F3a5to8";
    const FP_C: &str = "SHA256:XuwNxBmqgze/cl8Cb9qceMHLHGQu6v+dbhES83eD6UI";

    fn fp(s: &str) -> Fingerprint {
        s.parse().unwrap()
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/sealpipe/b.toml"))
    }

    /// The full one-line message for `text`, which must fail.
    fn err(text: &str) -> String {
        match parse(text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// A valid file with `listener` appended; identity on lines 1-2.
    fn with_identity(rest: &str) -> String {
        format!("[identity]\nprivate_key = \"b.pem\"\n{rest}")
    }

    fn spec_example() -> String {
        format!(
            r#"[identity]
private_key = "/etc/sealpipe/host-b.pem"
# psk_file = "/etc/sealpipe/link.psk"        # optional

[defaults]
rekey_bytes = "1GiB"
handshake_timeout = "10s"

[[listener]]                     # sealed in, plain out
name = "redis"
listen = "0.0.0.0:7443"
forward = "127.0.0.1:6379"
peers = ["{FP_A}", "{FP_C} laptop"]   # trusted connector keys, or peers_file = "..."

[[connector]]                    # plain in, sealed out
name = "redis"
listen = "127.0.0.1:6380"
connect = "db.example.net:7443"
peer = "{FP_B}"            # pinned listener key
"#
        )
    }

    #[test]
    fn spec_example_parses() {
        let c = parse(&spec_example()).unwrap();
        assert_eq!(c.path, Path::new("/etc/sealpipe/b.toml"));
        assert_eq!(
            c.identity,
            IdentityConfig {
                private_key: PathBuf::from("/etc/sealpipe/host-b.pem"),
                psk_file: None
            }
        );
        assert_eq!(c.listeners.len(), 1);
        let l = &c.listeners[0];
        assert_eq!(l.name, "redis");
        assert_eq!(l.listen, Address::Ip("0.0.0.0:7443".parse().unwrap()));
        assert_eq!(
            l.forward,
            Some(Address::Ip("127.0.0.1:6379".parse().unwrap()))
        );
        assert_eq!(l.allow_destinations, vec![]);
        assert_eq!(l.proxy_protocol, ProxyProtocol::Off);
        assert_eq!(
            l.peers,
            vec![(fp(FP_A), None), (fp(FP_C), Some("laptop".to_string()))]
        );
        assert_eq!(l.tuning, Tuning::default());
        let k = &c.connectors[0];
        assert_eq!(k.name, "redis");
        assert_eq!(k.listen.to_string(), "127.0.0.1:6380");
        assert_eq!(
            k.connect,
            Address::Host {
                host: "db.example.net".into(),
                port: 7443
            }
        );
        assert_eq!(k.peer, PeerPin::Key(fp(FP_B)));
        assert_eq!(k.mode, ConnectorMode::Forward);
    }

    #[test]
    fn defaults_and_overrides_merge() {
        let c = parse(&with_identity(&format!(
            r#"psk_file = "keys/link.psk"
[defaults]
rekey_bytes = "64 MiB"
rekey_interval = "1h 30m"
connect_timeout = "500ms"
max_connections = 10
record_size = 4096

[[listener]]
name = "a"
listen = "[::]:7443"
forward = "[::1]:6379"
peers = ["{FP_A}"]
rekey_bytes = 1048576
rekey_interval = "off"
max_handshakes = 3
drain_timeout = "2m"

[[connector]]
name = "a"
listen = "127.0.0.1:6380"
connect = "localhost:7443"
peer = "{FP_B}"
record_size = "64KiB"
"#
        )))
        .unwrap();
        assert_eq!(
            c.identity.psk_file,
            Some(PathBuf::from("/etc/sealpipe/keys/link.psk"))
        );
        assert_eq!(c.identity.private_key, PathBuf::from("/etc/sealpipe/b.pem"));
        let base = Tuning {
            rekey_bytes: 64 << 20,
            rekey_interval: Some(Duration::from_secs(90 * 60)),
            connect_timeout: Duration::from_millis(500),
            max_connections: 10,
            record_size: 4096,
            ..Tuning::default()
        };
        assert_eq!(
            c.listeners[0].tuning,
            Tuning {
                rekey_bytes: 1 << 20,
                rekey_interval: None,
                max_handshakes: 3,
                drain_timeout: Duration::from_secs(120),
                ..base.clone()
            }
        );
        assert_eq!(
            c.connectors[0].tuning,
            Tuning {
                record_size: 65536,
                ..base
            }
        );
    }

    #[test]
    fn addresses_parse() {
        let ok = |s: &str| s.parse::<Address>().unwrap();
        assert_eq!(ok("1.2.3.4:80"), Address::Ip("1.2.3.4:80".parse().unwrap()));
        assert_eq!(ok("[::1]:80"), Address::Ip("[::1]:80".parse().unwrap()));
        assert_eq!(ok("[fe80::1]:80").to_string(), "[fe80::1]:80");
        assert_eq!(
            ok("db.example.net:7443"),
            Address::Host {
                host: "db.example.net".into(),
                port: 7443
            }
        );
        assert_eq!(ok("db.example.net:7443").to_string(), "db.example.net:7443");
        assert_eq!(ok("localhost:0").port(), 0);
        let bad = |s: &str| s.parse::<Address>().unwrap_err().to_string();
        assert_eq!(bad("127.0.0.1"), "missing `:port`");
        assert_eq!(bad("db:"), "missing `:port`");
        assert_eq!(bad("[::1]"), "missing `:port`");
        assert_eq!(
            bad("1.2.3.4:65536"),
            "port `65536` is not a number from 0 to 65535"
        );
        assert_eq!(
            bad("1.2.3.4:http"),
            "port `http` is not a number from 0 to 65535"
        );
        assert_eq!(bad(":80"), "empty host");
        assert_eq!(
            bad("::1:80"),
            "an IPv6 address needs brackets, as in `[::1]:443`"
        );
        assert_eq!(bad("[db]:80"), "`[db]` is not an IPv6 address");
        assert_eq!(bad("bad host:80"), "`bad host` is not a valid host name");
    }

    #[tokio::test]
    async fn addresses_resolve() {
        let ip = "127.0.0.1:9".parse::<Address>().unwrap();
        assert_eq!(
            ip.resolve().await.unwrap(),
            vec!["127.0.0.1:9".parse().unwrap()]
        );
        let host = "localhost:9".parse::<Address>().unwrap();
        let addrs = host.resolve().await.unwrap();
        assert!(addrs.iter().all(|a| a.port() == 9 && a.ip().is_loopback()));
    }

    #[test]
    fn missing_config_file_names_path_and_os_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        let e = Config::load(&path).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "cannot read config file {}: No such file or directory (os error 2)",
                path.display()
            )
        );
    }

    #[test]
    fn load_reads_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(&path, spec_example()).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.path, path);
        assert_eq!(c.listeners[0].name, "redis");
    }

    #[test]
    fn syntax_error_is_located() {
        assert_eq!(
            err("[identity]\nprivate_key = \"b.pem\n"),
            "/etc/sealpipe/b.toml:2:21: TOML syntax error: invalid basic string, expected `\"`"
        );
    }

    #[test]
    fn unknown_keys_are_located_and_named() {
        assert_eq!(
            err(&with_identity("\n[defaults]\nrekey_byts = \"1GiB\"\n")),
            "/etc/sealpipe/b.toml:5:1: unknown key `rekey_byts` in [defaults] (expected one of \
             `rekey_bytes`, `rekey_interval`, `handshake_timeout`, `connect_timeout`, \
             `drain_timeout`, `max_connections`, `max_handshakes`, `source_rate_limit`, `record_size`, \
             `resumption`, `resumption_lifetime`, `resumption_uses`)"
        );
        assert_eq!(
            err(&with_identity(&format!(
                "[[listener]]\nname = \"redis\"\nlisten = \"0.0.0.0:1\"\nforwad = \"x:1\"\npeers = [\"{FP_A}\"]\n"
            ))),
            "/etc/sealpipe/b.toml:6:1: unknown key `forwad` in listener \"redis\" (expected one of \
             `name`, `listen`, `forward`, `peers`, `peers_file`, `accept_unknown`, `allow_tofu`, \
             `allow_destinations`, `proxy_protocol`, `rekey_bytes`, `rekey_interval`, \
             `handshake_timeout`, `connect_timeout`, `drain_timeout`, `max_connections`, \
             `max_handshakes`, `source_rate_limit`, `record_size`, `resumption`, \
             `resumption_lifetime`, `resumption_uses`)"
        );
        assert_eq!(
            err(&format!("tunnel = 1\n{}", with_identity(""))),
            "/etc/sealpipe/b.toml:1:1: unknown key `tunnel` at the top level (expected one of \
             `identity`, `defaults`, `listener`, `connector`, `metrics`)"
        );
        assert_eq!(
            err("[identity]\nprivate_key = \"b.pem\"\nprivatekey = \"c.pem\"\n"),
            "/etc/sealpipe/b.toml:3:1: unknown key `privatekey` in [identity] (expected one of \
             `private_key` or `psk_file`)"
        );
    }

    #[test]
    fn missing_keys_and_wrong_types_are_located() {
        assert_eq!(
            err(&with_identity(
                "\n[[connector]]\nname = \"db\"\nlisten = \"127.0.0.1:1\"\nconnect = \"db:1\"\n"
            )),
            "/etc/sealpipe/b.toml:4:1: connector \"db\": missing key `peer`"
        );
        assert_eq!(
            err(&with_identity(&format!(
                "[[listener]]\nname = \"redis\"\nlisten = 7443\nforward = \"x:1\"\npeers = [\"{FP_A}\"]\n"
            ))),
            "/etc/sealpipe/b.toml:5:10: listener \"redis\": key `listen`: invalid type: integer `7443`, expected a string"
        );
        assert_eq!(
            err(&with_identity("[defaults]\nhandshake_timeout = 10\n")),
            "/etc/sealpipe/b.toml:4:21: [defaults]: key `handshake_timeout`: invalid type: \
             integer `10`, expected a duration string such as \"10s\", \"500ms\" or \"1h 30m\""
        );
        assert_eq!(
            err(&format!(
                "[[connector]]\nname = \"x\"\nlisten = \"127.0.0.1:1\"\nconnect = \"db:1\"\npeer = \"{FP_B}\"\n"
            )),
            "/etc/sealpipe/b.toml: missing [identity] section (it names this host's `private_key`)"
        );
        assert_eq!(
            err(&with_identity("[listener]\nname = \"a\"\n")),
            "/etc/sealpipe/b.toml:3:1: key `listener`: invalid type: map, expected a sequence \
             (tunnels are arrays of tables: write [[listener]] or [[connector]], with double brackets)"
        );
        assert_eq!(
            err("identity = 5\n"),
            "/etc/sealpipe/b.toml:1:12: [identity]: invalid type: integer `5`, expected a table"
        );
        assert_eq!(
            err(&with_identity("[defaults]\nmax_handshakes = \"5\"\n")),
            "/etc/sealpipe/b.toml:4:18: [defaults]: key `max_handshakes`: invalid type: \
             string \"5\", expected an integer"
        );
        assert_eq!(
            err(&with_identity("[defaults]\n")),
            "/etc/sealpipe/b.toml: no tunnels: add at least one [[listener]] or [[connector]]"
        );
    }

    fn listener(body: &str) -> String {
        // Lines: 1-2 identity, 3 header, 4 name, then `body`.
        with_identity(&format!("[[listener]]\nname = \"redis\"\n{body}"))
    }

    #[test]
    fn stream_options_parse() {
        let peers = format!("peers = [\"{FP_A}\"]\n");
        let c = parse(&listener(&format!(
            "listen = \"0.0.0.0:7443\"\nallow_destinations = [\"10.0.0.0/8:5432\", \"192.0.2.7:80-90\", \"[2001:db8::/32]:*\"]\nproxy_protocol = \"v2\"\n{peers}"
        )))
        .unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.forward, None);
        assert_eq!(l.proxy_protocol, ProxyProtocol::V2);
        let shown: Vec<String> = l.allow_destinations.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            shown,
            ["10.0.0.0/8:5432", "192.0.2.7/32:80-90", "[2001:db8::/32]:*"]
        );
        let ok = |r: &DestinationRule, a: &str| r.matches(&a.parse().unwrap());
        let r = &l.allow_destinations;
        assert!(ok(&r[0], "10.200.0.1:5432"));
        assert!(!ok(&r[0], "10.200.0.1:5433"));
        assert!(!ok(&r[0], "11.0.0.1:5432"));
        assert!(
            ok(&r[0], "[::ffff:10.0.0.1]:5432"),
            "mapped IPv4 matches as IPv4"
        );
        assert!(ok(&r[1], "192.0.2.7:80") && ok(&r[1], "192.0.2.7:90"));
        assert!(!ok(&r[1], "192.0.2.7:91") && !ok(&r[1], "192.0.2.8:85"));
        assert!(ok(&r[2], "[2001:db8:ffff::1]:1") && !ok(&r[2], "[2001:db9::1]:1"));
        assert!(!ok(&r[2], "10.0.0.1:1"));
        let c = parse(&with_identity(&format!(
            "[[connector]]\nname = \"db\"\nlisten = \"127.0.0.1:1\"\nconnect = \"db:1\"\npeer = \"{FP_B}\"\nmode = \"redirect\"\n"
        )))
        .unwrap();
        assert_eq!(c.connectors[0].mode, ConnectorMode::Redirect);
        let c = parse(&listener(&format!(
            "listen = \"0.0.0.0:7443\"\nforward = \"127.0.0.1:1\"\nproxy_protocol = \"off\"\n{peers}"
        )))
        .unwrap();
        assert_eq!(c.listeners[0].proxy_protocol, ProxyProtocol::Off);
    }

    #[test]
    fn bad_stream_options_are_located_and_named() {
        let peers = format!("peers = [\"{FP_A}\"]\n");
        let allow = |list: &str| {
            err(&listener(&format!(
                "listen = \"0.0.0.0:7443\"\nallow_destinations = [{list}]\n{peers}"
            )))
        };
        let at = "/etc/sealpipe/b.toml:6:23: listener \"redis\": key `allow_destinations`:";
        for (entry, problem) in [
            (
                "10.0.0.1/8:1",
                "network 10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)",
            ),
            (
                "10.0.0.0/8",
                "missing `:PORTS` (a port, a range like 80-90, or *)",
            ),
            (
                "10.0.0.0/33:1",
                "invalid network \"10.0.0.0/33\": expected an address or CIDR",
            ),
            ("10.0.0.0/8:0", "invalid port \"0\": expected 1 to 65535"),
            (
                "10.0.0.0/8:90-80",
                "invalid port range \"90-80\": 90 is above 80",
            ),
            ("10.0.0.0/8:x", "invalid port \"x\": expected 1 to 65535"),
            (
                "2001:db8::/32:1",
                "IPv6 networks are written in brackets, like [2001:db8::/32]:443",
            ),
            (
                "[2001:db8::/32]",
                "missing `:PORTS` after `]` (a port, a range like 80-90, or *)",
            ),
            (
                "[10.0.0.0/8]:1",
                "IPv4 networks are written without brackets",
            ),
            (
                "[::ffff:10.0.0.0/104]:1",
                "IPv4-mapped IPv6 networks are not allowed: write the IPv4 network",
            ),
            (
                "db.example:1",
                "invalid network \"db.example\": expected an address or CIDR",
            ),
        ] {
            assert_eq!(
                allow(&format!("{entry:?}")),
                format!("{at} invalid destination {entry:?}: {problem}"),
                "{entry}"
            );
        }
        assert_eq!(
            allow(""),
            "/etc/sealpipe/b.toml:6:22: listener \"redis\": key `allow_destinations`: empty list: name at least one destination, or remove the key and set `forward`"
        );
        assert_eq!(
            err(&listener(&format!(
                "listen = \"0.0.0.0:7443\"\nforward = \"127.0.0.1:1\"\nallow_destinations = [\"10.0.0.0/8:*\"]\n{peers}"
            ))),
            "/etc/sealpipe/b.toml:7:22: listener \"redis\": key `allow_destinations`: set either `forward` (one target for every connection) or `allow_destinations` (redirect-mode connectors choose), not both"
        );
        assert_eq!(
            err(&listener(&format!("listen = \"0.0.0.0:7443\"\n{peers}"))),
            "/etc/sealpipe/b.toml:3:1: listener \"redis\": missing key `forward` (or `allow_destinations`, for redirect-mode connectors)"
        );
        assert_eq!(
            err(&listener(&format!(
                "listen = \"0.0.0.0:7443\"\nforward = \"127.0.0.1:1\"\nproxy_protocol = \"v1\"\n{peers}"
            ))),
            "/etc/sealpipe/b.toml:7:18: listener \"redis\": key `proxy_protocol`: invalid value \"v1\": expected \"v2\" or \"off\""
        );
        assert_eq!(
            err(&with_identity(&format!(
                "[[connector]]\nname = \"db\"\nlisten = \"127.0.0.1:1\"\nconnect = \"db:1\"\npeer = \"{FP_B}\"\nmode = \"tproxy\"\n"
            ))),
            "/etc/sealpipe/b.toml:8:8: connector \"db\": key `mode`: invalid mode \"tproxy\": expected \"forward\" or \"redirect\""
        );
        assert_eq!(
            err(&with_identity(&format!(
                "[[connector]]\nname = \"db\"\nlisten = \"unix:/run/sealpipe-test/db.sock\"\nconnect = \"db:1\"\npeer = \"{FP_B}\"\nmode = \"redirect\"\n"
            ))),
            "/etc/sealpipe/b.toml:8:8: connector \"db\": key `mode`: `mode = \"redirect\"` needs a TCP `listen` (connections redirected by a NAT rule); `listen = \"unix:/run/sealpipe-test/db.sock\"` is a Unix socket, whose clients have no original destination"
        );
    }

    #[test]
    fn bad_values_are_located_and_named() {
        let peers = format!("peers = [\"{FP_A}\"]\n");
        assert_eq!(
            err(&listener(&format!("listen = \"0.0.0.0:7443\"\nforward = \"127.0.0.1\"\n{peers}"))),
            "/etc/sealpipe/b.toml:6:11: listener \"redis\": key `forward`: invalid address \"127.0.0.1\": missing `:port`"
        );
        assert_eq!(
            err(&listener(&format!("listen = \"::1:7443\"\nforward = \"127.0.0.1:1\"\n{peers}"))),
            "/etc/sealpipe/b.toml:5:10: listener \"redis\": key `listen`: invalid address \"::1:7443\": an IPv6 address needs brackets, as in `[::1]:443`"
        );
        assert_eq!(
            err(&listener(&format!("listen = \"0.0.0.0:99999\"\nforward = \"127.0.0.1:1\"\n{peers}"))),
            "/etc/sealpipe/b.toml:5:10: listener \"redis\": key `listen`: invalid address \"0.0.0.0:99999\": port `99999` is not a number from 0 to 65535"
        );
        assert_eq!(
            err(&listener(&format!("listen = \":7443\"\nforward = \"127.0.0.1:0\"\n{peers}"))),
            "/etc/sealpipe/b.toml:5:10: listener \"redis\": key `listen`: invalid address \":7443\": empty host"
        );
        assert_eq!(
            err(&listener(&format!("listen = \"0.0.0.0:7443\"\nforward = \"127.0.0.1:0\"\n{peers}"))),
            "/etc/sealpipe/b.toml:6:11: listener \"redis\": key `forward`: invalid address \"127.0.0.1:0\": port 0 cannot be connected to"
        );
        assert_eq!(
            err(&listener(&format!(
                "listen = \"0.0.0.0:7443\"\nforward = \"127.0.0.1:1\"\npeers = [\"{FP_A}\", \"SHA256:abc\"]\n"
            ))),
            "/etc/sealpipe/b.toml:7:64: listener \"redis\": key `peers`: invalid fingerprint \"SHA256:abc\": a fingerprint is `SHA256:` followed by the base64 of 32 bytes (43 characters)"
        );
        assert_eq!(
            err(&with_identity(
                "[[connector]]\nname = \"db\"\nlisten = \"127.0.0.1:1\"\nconnect = \"db:1\"\npeer = \"MD5:xx\"\n"
            )),
            "/etc/sealpipe/b.toml:7:8: connector \"db\": key `peer`: invalid fingerprint \"MD5:xx\": a fingerprint starts with `SHA256:` (as printed by `sealpipe fingerprint`)"
        );
        assert_eq!(
            err(&listener("listen = \"0.0.0.0:7443\"\nforward = \"127.0.0.1:1\"\n")),
            "/etc/sealpipe/b.toml:3:1: listener \"redis\": no trusted peers: set `peers` or `peers_file`"
        );
        assert_eq!(
            err(&listener("listen = \"0.0.0.0:7443\"\nforward = \"127.0.0.1:1\"\npeers = []\n")),
            "/etc/sealpipe/b.toml:3:1: listener \"redis\": no trusted peers: `peers` and `peers_file` list no fingerprint"
        );
    }

    #[test]
    fn resumption_keys_are_validated_and_merged() {
        let base = format!(
            "[[connector]]\nname = \"db\"\nlisten = \"127.0.0.1:1\"\nconnect = \"db:1\"\npeer = \"{FP_B}\"\n"
        );
        let one = |line: &str| err(&with_identity(&format!("[defaults]\n{line}\n{base}")));
        assert_eq!(
            one("resumption_lifetime = \"500ms\""),
            "/etc/sealpipe/b.toml:4:23: [defaults]: key `resumption_lifetime`: \"500ms\" is out of range: must be from 1s to 24h"
        );
        assert_eq!(
            one("resumption_lifetime = \"25h\""),
            "/etc/sealpipe/b.toml:4:23: [defaults]: key `resumption_lifetime`: \"25h\" is out of range: must be from 1s to 24h"
        );
        assert_eq!(
            one("resumption_uses = 0"),
            "/etc/sealpipe/b.toml:4:19: [defaults]: key `resumption_uses`: 0 is out of range: resumptions per ticket, 1 to 1000000"
        );
        assert_eq!(
            one("resumption_uses = 1000001"),
            "/etc/sealpipe/b.toml:4:19: [defaults]: key `resumption_uses`: 1000001 is out of range: resumptions per ticket, 1 to 1000000"
        );
        assert!(one("resumption = \"yes\"").starts_with("/etc/sealpipe/b.toml:4:14: "));
        let c = parse(&with_identity(&format!(
            "[defaults]\nresumption = false\nresumption_lifetime = \"24h\"\n{base}resumption = true\nresumption_uses = 1\n"
        )))
        .unwrap();
        let t = &c.connectors[0].tuning;
        assert!(t.resumption);
        assert_eq!(t.resumption_lifetime, Duration::from_secs(24 * 3600));
        assert_eq!(t.resumption_uses, 1);
        let d = Tuning::default();
        assert!(d.resumption && d.resumption_uses == 1000);
        assert_eq!(d.resumption_lifetime, Duration::from_secs(3600));
    }

    #[test]
    fn bad_tuning_is_located_and_named() {
        let base = format!(
            "[[connector]]\nname = \"db\"\nlisten = \"127.0.0.1:1\"\nconnect = \"db:1\"\npeer = \"{FP_B}\"\n"
        );
        // Lines: 1-2 identity, 3 [defaults], 4 the key under test.
        let one = |line: &str| err(&with_identity(&format!("[defaults]\n{line}\n{base}")));
        assert_eq!(
            one("rekey_bytes = \"1 GiBx\""),
            "/etc/sealpipe/b.toml:4:15: [defaults]: key `rekey_bytes`: invalid size \"1 GiBx\": expected a number with an optional unit, such as \"16KiB\", \"64 MiB\" or \"1048576\""
        );
        assert_eq!(
            one("rekey_bytes = 0"),
            "/etc/sealpipe/b.toml:4:15: [defaults]: key `rekey_bytes`: must be more than zero"
        );
        assert_eq!(
            one("rekey_bytes = -5"),
            "/etc/sealpipe/b.toml:4:15: [defaults]: key `rekey_bytes`: invalid size -5: negative"
        );
        assert_eq!(
            one("handshake_timeout = \"0s\""),
            "/etc/sealpipe/b.toml:4:21: [defaults]: key `handshake_timeout`: invalid duration \"0s\": must be more than zero"
        );
        assert_eq!(
            one("drain_timeout = \"10\""),
            "/etc/sealpipe/b.toml:4:17: [defaults]: key `drain_timeout`: invalid duration \"10\": time unit needed, for example 10sec or 10ms"
        );
        assert_eq!(
            one("record_size = \"512\""),
            "/etc/sealpipe/b.toml:4:15: [defaults]: key `record_size`: 512 bytes is out of range: must be from 1KiB (1024) to 64KiB (65536)"
        );
        assert_eq!(
            one("max_connections = 0"),
            "/etc/sealpipe/b.toml:4:19: [defaults]: key `max_connections`: 0 is too small: must be at least 1"
        );
        // The same check on a per-tunnel override names the tunnel.
        assert_eq!(
            err(&with_identity(&format!("{base}record_size = \"128KiB\"\n"))),
            "/etc/sealpipe/b.toml:8:15: connector \"db\": key `record_size`: 131072 bytes is out of range: must be from 1KiB (1024) to 64KiB (65536)"
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let c = |name: &str, listen: &str| {
            format!(
                "[[connector]]\nname = \"{name}\"\nlisten = \"{listen}\"\nconnect = \"db:1\"\npeer = \"{FP_B}\"\n"
            )
        };
        // Each connector takes 5 lines, the first starting on line 3.
        assert_eq!(
            err(&with_identity(&format!("{}{}", c("db", "127.0.0.1:1"), c("db", "127.0.0.1:2")))),
            "/etc/sealpipe/b.toml:9:8: connector \"db\": key `name`: duplicate connector name \"db\" (first used on line 4)"
        );
        assert_eq!(
            err(&with_identity(&format!("{}{}", c("a", "127.0.0.1:1"), c("b", "127.0.0.1:1")))),
            "/etc/sealpipe/b.toml:10:10: connector \"b\": key `listen`: address 127.0.0.1:1 is already used by connector \"a\" (line 5)"
        );
        // A wildcard listener and a connector on the same port collide too.
        let l = format!(
            "[[listener]]\nname = \"a\"\nlisten = \"0.0.0.0:7443\"\nforward = \"x:1\"\npeers = [\"{FP_A}\"]\n"
        );
        assert_eq!(
            err(&with_identity(&format!("{l}{}", c("a", "127.0.0.1:7443")))),
            "/etc/sealpipe/b.toml:10:10: connector \"a\": key `listen`: address 127.0.0.1:7443 is already used by listener \"a\" (line 5)"
        );
        // The same name for a listener and a connector is fine (a site-to-site pair).
        parse(&with_identity(&format!("{l}{}", c("a", "127.0.0.1:1")))).unwrap();
    }

    #[test]
    fn peers_file_with_comments_and_names_resolves_relative_to_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("peers")).unwrap();
        std::fs::write(
            dir.path().join("peers/redis.peers"),
            format!(
                "# trusted connectors\n\n{FP_A}   host-a   # the app server\n  {FP_C}\n{FP_B}=\n"
            ),
        )
        .unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(
            &path,
            with_identity(&format!(
                "[[listener]]\nname = \"redis\"\nlisten = \"0.0.0.0:7443\"\nforward = \"127.0.0.1:6379\"\npeers = [\"{FP_C} laptop\"]\npeers_file = \"peers/redis.peers\"\n"
            )),
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.identity.private_key, dir.path().join("b.pem"));
        assert_eq!(
            c.listeners[0].peers,
            vec![
                (fp(FP_C), Some("laptop".to_string())),
                (fp(FP_A), Some("host-a".to_string())),
                (fp(FP_B), None),
            ]
        );

        // A bad line names the peers file, its line and the listener.
        let peers_path = dir.path().join("peers/redis.peers");
        std::fs::write(&peers_path, format!("{FP_A}\n# ok\nSHA256:short bad\n")).unwrap();
        assert_eq!(
            Config::load(&path).unwrap_err().to_string(),
            format!(
                "{}:3: listener \"redis\": invalid fingerprint \"SHA256:short\": a fingerprint is `SHA256:` followed by the base64 of 32 bytes (43 characters)",
                peers_path.display()
            )
        );

        // A missing peers file names the config line, the key and the OS error.
        std::fs::remove_file(&peers_path).unwrap();
        assert_eq!(
            Config::load(&path).unwrap_err().to_string(),
            format!(
                "{}:8:14: listener \"redis\": key `peers_file`: cannot read {}: No such file or directory (os error 2)",
                path.display(),
                peers_path.display()
            )
        );
    }

    #[test]
    fn example_configs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for name in ["etc/listener.toml", "etc/connector.toml"] {
            let path = root.join(name);
            let text = std::fs::read_to_string(&path).unwrap();
            let c = Config::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.listeners.len() + c.connectors.len(), 1, "{name}");
        }
    }

    fn unix_connector(extra: &str) -> String {
        with_identity(&format!(
            "[[connector]]\nname = \"u\"\nlisten = \"unix:run/app.sock\"\nconnect = \"db:7443\"\npeer = \"{FP_B}\"\n{extra}"
        ))
    }

    #[test]
    fn unix_sockets_on_the_plaintext_side() {
        let c = parse(&unix_connector("")).unwrap();
        let k = &c.connectors[0];
        assert_eq!(
            k.listen,
            Address::Unix(PathBuf::from("/etc/sealpipe/run/app.sock"))
        );
        assert_eq!(k.listen.to_string(), "unix:/etc/sealpipe/run/app.sock");
        assert_eq!(
            k.socket,
            SocketPermissions {
                mode: 0o660,
                group: None
            }
        );
        let c = parse(&unix_connector(
            "socket_mode = \"0600\"\nsocket_group = \"0\"",
        ))
        .unwrap();
        assert_eq!(
            c.connectors[0].socket,
            SocketPermissions {
                mode: 0o600,
                group: Some(("0".into(), 0))
            }
        );
        // A group by name, through the system's group database.
        if let Ok(gid) = lookup_group("root") {
            let c = parse(&unix_connector("socket_group = \"root\"")).unwrap();
            assert_eq!(c.connectors[0].socket.group, Some(("root".into(), gid)));
        }
        let c = parse(&with_identity(&format!(
            "[[listener]]\nname = \"l\"\nlisten = \"0.0.0.0:7443\"\nforward = \"unix:/run/redis.sock\"\npeers = [\"{FP_A}\"]\n"
        )))
        .unwrap();
        assert_eq!(
            c.listeners[0].forward,
            Some(Address::Unix(PathBuf::from("/run/redis.sock")))
        );
    }

    #[test]
    fn unix_socket_errors_are_located() {
        let sealed = "the sealed side must be a TCP address (host:port)";
        let e = err(&with_identity(&format!(
            "[[listener]]\nname = \"l\"\nlisten = \"unix:/run/x.sock\"\nforward = \"127.0.0.1:1\"\npeers = [\"{FP_A}\"]\n"
        )));
        assert!(
            e.starts_with("/etc/sealpipe/b.toml:5:10: listener \"l\": key `listen`: invalid address \"unix:/run/x.sock\": ")
                && e.contains(sealed),
            "{e}"
        );
        let e = err(&with_identity(&format!(
            "[[connector]]\nname = \"c\"\nlisten = \"127.0.0.1:1\"\nconnect = \"unix:/run/x.sock\"\npeer = \"{FP_B}\"\n"
        )));
        assert!(
            e.starts_with("/etc/sealpipe/b.toml:6:11: connector \"c\": key `connect`: ")
                && e.contains(sealed),
            "{e}"
        );
        for (extra, col, problem) in [
            ("socket_mode = \"0999\"", 15, "invalid mode \"0999\""),
            ("socket_mode = \"1777\"", 15, "invalid mode \"1777\""),
            ("socket_mode = \"\"", 15, "invalid mode \"\""),
            (
                "socket_mode = \"0066\"",
                15,
                "does not let the owner read and write",
            ),
            (
                "socket_group = \"no-such-group-sealpipe\"",
                16,
                "no group named",
            ),
        ] {
            let e = err(&unix_connector(extra));
            let key = extra.split(' ').next().unwrap();
            let want = format!("/etc/sealpipe/b.toml:8:{col}: connector \"u\": key `{key}`: ");
            assert!(e.starts_with(&want) && e.contains(problem), "{extra}: {e}");
        }
        let e = err(&unix_connector("socket_mode = 660"));
        assert!(e.contains("key `socket_mode`"), "{e}");
        let e = err(&with_identity(&format!(
            "[[connector]]\nname = \"c\"\nlisten = \"127.0.0.1:1\"\nconnect = \"db:1\"\npeer = \"{FP_B}\"\nsocket_mode = \"0600\"\n"
        )));
        assert!(
            e.contains(":8:15: connector \"c\": key `socket_mode`: only applies to a Unix socket"),
            "{e}"
        );
        let e = err(&format!(
            "{}[[connector]]\nname = \"v\"\nlisten = \"unix:run/app.sock\"\nconnect = \"db:1\"\npeer = \"{FP_B}\"\n",
            unix_connector("")
        ));
        assert!(e.contains(":10:10: connector \"v\": key `listen`: address unix:/etc/sealpipe/run/app.sock is already used by connector \"u\" (line 5)"), "{e}");
        let long = format!("unix:/{}", "x".repeat(MAX_UNIX_PATH));
        let e = err(&unix_connector("").replace("unix:run/app.sock", &long));
        assert!(e.contains("the limit is 107"), "{e}");
        assert_eq!(
            "unix:".parse::<Address>().unwrap_err(),
            AddressError::EmptyUnixPath
        );
    }

    #[test]
    fn a_file_in_the_way_of_a_unix_socket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.sock"), "precious").unwrap();
        let path = dir.path().join("c.toml");
        let text = unix_connector("").replace("run/app.sock", "app.sock");
        let e = Config::parse(&text, &path).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}:5:10: connector \"u\": key `listen`: {} exists and is not a socket; sealpipe will not replace it",
                path.display(),
                dir.path().join("app.sock").display()
            )
        );
    }

    #[test]
    fn metrics_section() {
        let c = parse(&unix_connector("[metrics]\nlisten = \"127.0.0.1:9899\"")).unwrap();
        assert_eq!(
            c.metrics,
            Some(MetricsConfig {
                listen: Address::Ip("127.0.0.1:9899".parse().unwrap())
            })
        );
        assert_eq!(parse(&unix_connector("")).unwrap().metrics, None);
        let e = err(&unix_connector("[metrics]\nlisten = \"127.0.0.1\""));
        assert_eq!(
            e,
            "/etc/sealpipe/b.toml:9:10: [metrics]: key `listen`: invalid address \"127.0.0.1\": missing `:port`"
        );
        let e = err(&unix_connector("[metrics]\nlisten = \"unix:/run/m.sock\""));
        assert!(e.contains(":9:10: [metrics]: key `listen`: invalid address \"unix:/run/m.sock\": the metrics endpoint must be a TCP address"), "{e}");
        let e = err(&unix_connector(
            "[metrics]\nlisten = \"127.0.0.1:1\"\npath = \"/m\"",
        ));
        assert!(
            e.starts_with("/etc/sealpipe/b.toml:10:1: unknown key `path` in [metrics]"),
            "{e}"
        );
        let e = err(&unix_connector("[metrics]\nport = 1"));
        assert!(e.contains("unknown key `port` in [metrics]"), "{e}");
        let e = err(&format!(
            "{}[metrics]\nlisten = \"127.0.0.1:7443\"\n",
            with_identity(&format!(
                "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:7443\"\nforward = \"127.0.0.1:1\"\npeers = [\"{FP_A}\"]\n"
            ))
        ));
        assert!(
            e.contains(
                "[metrics]: key `listen`: address 127.0.0.1:7443 is already used by listener \"l\""
            ),
            "{e}"
        );
    }
}
