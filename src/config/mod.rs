//! The TOML configuration: model, validation and error locations.
//!
//! One file describes one process: its identity (`[identity]`), tuning defaults (`[defaults]`)
//! and any number of tunnels, `[[listener]]` (sealed in, plain out) and `[[connector]]` (plain
//! in, sealed out). See `etc/listener.toml` and `etc/connector.toml` for commented examples.
//!
//! Loading happens in three steps, each in its own file:
//!
//! 1. The text is parsed into a spanned TOML tree ([`toml::de::DeTable`]); syntax errors stop
//!    here.
//! 2. The tree is deserialized into private `Raw*` structs whose leaves are
//!    [`toml::Spanned`], with `deny_unknown_fields` everywhere (`raw.rs`). When serde fails
//!    (unknown key, missing key, wrong type), the error's byte span is looked up in the spanned
//!    tree to name the section, the tunnel and the key (`error.rs`).
//! 3. The raw structs are validated and turned into the public types ([`Config`],
//!    [`ListenerConfig`], [`ConnectorConfig`], [`Tuning`]); every semantic error points at the
//!    span of the offending value (`validate.rs`; the tuning keys are written once in
//!    `tuning_fields.rs` and checked in `tuning.rs`, the peers-file format is in
//!    `crate::files::peers`).
//!
//! Every error therefore reads `FILE:LINE:COLUMN: CONTEXT: key `KEY`: PROBLEM`, on one line,
//! for example:
//!
//! ```text
//! /etc/sealpipe/b.toml:12:11: listener "redis": key `forward`: invalid address "127.0.0.1": missing `:port`
//! ```
//!
//! The files a config names and loading does not read (the private key, the PSK, a
//! `known_peers` file) are read later; their paths are kept [`Located`], so that an error about
//! one starts at the config line that names it, then says what is wrong with the file:
//!
//! ```text
//! /etc/sealpipe/b.toml:2:15: [identity]: key `private_key`: /etc/sealpipe/b.pem: no such file
//! ```
//!
//! Sizes are parsed by [`bytesize`] (`"16KiB"`, `"64 MiB"`, `"1048576"`; a bare number is bytes)
//! and durations by [`humantime`] (`"10s"`, `"1h 30m"`, `"500ms"`). Addresses are not resolved
//! while loading: a host name is looked up anew for each connection ([`Address::resolve`]).

mod error;
mod raw;
pub(crate) mod schema;
mod settings;
mod tuning;
mod tuning_fields;
mod validate;

use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml::de::DeTable;

pub use crate::addr::{Address, AddressError, DestinationRule};
use crate::proto::identity::Fingerprint;
pub use crate::tunnel::settings::{
    ConnectorMode, ProxyProtocol, Revoke, SocketPermissions, DEFAULT_SOCKET_MODE,
};
use error::{one_line, Source};
pub use error::{ConfigError, Located, Location};
use raw::RawConfig;
pub use tuning::Tuning;

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
    /// The top-level `control` key: where `sealpipe status` reads this daemon.
    pub control: Control,
    /// Values that work but are almost surely a mistake (`rekey_bytes = "1"`), each a line
    /// `FILE:LINE:COLUMN: SECTION: key `KEY`: PROBLEM`: `sealpipe check` prints them, `run`
    /// logs them.
    pub warnings: Vec<String>,
}

/// The control socket that `sealpipe status` reads (top-level key `control`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Control {
    /// `control = true` or no key: a path derived from the config file's path (see
    /// docs/operations.md, "`sealpipe status` and the control socket").
    #[default]
    Default,
    /// `control = false`: no control socket.
    Off,
    /// `control = "PATH"`.
    Socket(PathBuf),
}

/// The `[metrics]` section: where `GET /metrics` is served (TCP only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    /// The address of the metrics HTTP server.
    pub listen: Address,
}

/// The `[identity]` section. Relative paths are resolved against the config file's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityConfig {
    /// The PKCS#8 or PKCS#1 PEM private key of this host.
    pub private_key: Located<PathBuf>,
    /// `next_private_key`: a second key a listener answers for while its key is rotated
    /// ("Rotating a listener key" in docs/operations.md); refused in a file without listeners.
    pub next_private_key: Option<Located<PathBuf>>,
    /// An optional pre-shared key file, mixed into the key schedule.
    pub psk_file: Option<Located<PathBuf>>,
}

/// Longest Unix socket path (`sun_path` is 108 bytes, with the terminating NUL).
pub const MAX_UNIX_PATH: usize = 107;

/// A `[[listener]]`: accepts sealed connections from trusted peers and forwards them in plaintext.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerConfig {
    /// Unique among listeners; used in logs.
    pub name: String,
    /// The service this listener serves (`service`, default `name`): a connector asking for
    /// another is refused (PROTOCOL.md §6).
    pub service: String,
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
    /// What a reload does to open connections of a key it stops trusting (`revoke`).
    pub revoke: Revoke,
    /// Trusted connector keys with optional names: the union of `peers` and `peers_file`,
    /// each key once (a key listed twice in one of them is refused; `crate::files::peers` has
    /// the rule); empty only with `accept_unknown`.
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
    /// The service this connector asks the listener for (`service`, default `name`).
    pub service: String,
    /// Where local applications connect in plaintext.
    pub listen: Address,
    /// The remote listener (resolved for each connection).
    pub connect: Address,
    /// Mode and group of the socket file when `listen` is a Unix socket.
    pub socket: SocketPermissions,
    /// The remote listener's key: pinned (one or two keys), or trust on first use.
    pub peer: PeerPin,
    /// `forward` (default) or `redirect` (transparent, original destination sent to the listener).
    pub mode: ConnectorMode,
    /// `[defaults]` merged with this tunnel's overrides.
    pub tuning: Tuning,
}

/// How a connector knows the listener's key (`peer`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerPin {
    /// `peer = "SHA256:…"` or `peer = ["SHA256:…", "SHA256:…"]`: only these keys (one or two,
    /// distinct). Hellos are keyed for the first; a hello the listener does not answer is tried
    /// again for the next, within the same `handshake_timeout`.
    Keys(Vec<Fingerprint>),
    /// `peer = "tofu"` with `known_peers`: the first key seen for the `connect` address is
    /// recorded in this file, later ones must match it.
    Tofu {
        /// The known-peers file (resolved against the config file's directory; may not exist
        /// yet).
        known_peers: Located<PathBuf>,
    },
}

impl Config {
    /// Reads and validates the config file at `path`, and any `peers_file` it names.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::read(path, false)
    }

    /// [`Config::load`] for `sealpipe trust`: a listener's `peers_file` may be missing or list
    /// no key (the daemon refuses both), so that its first key can be added; every other
    /// error is still one.
    pub(crate) fn load_for_enrollment(path: &Path) -> Result<Config, ConfigError> {
        Config::read(path, true)
    }

    fn read(path: &Path, enrolling: bool) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let text = crate::files::utf8(bytes).map_err(|e| ConfigError::At {
            path: path.to_path_buf(),
            line: e.line,
            column: e.column,
            message: e.to_string(),
        })?;
        Config::parse_as(&text, path, enrolling)
    }

    /// `FILE:LINE:COLUMN` of the value of `key` in the table `table` (`"metrics"`), or in its
    /// `index`-th entry for an array of tables (`"listener"`, `"connector"`), as the file is on
    /// disk now: for messages about a value made after loading (`sealpipe check`'s binds).
    /// Just `FILE` if it is not found.
    pub(crate) fn location_of(&self, table: &str, index: Option<usize>, key: &str) -> String {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let src = Source::new(&text, &self.path, false);
        match src.value_span(table, index, key) {
            Some(span) => {
                let (line, column) = src.line_col(span.start);
                format!("{}:{line}:{column}", self.path.display())
            }
            None => self.path.display().to_string(),
        }
    }

    /// Validates config `text` as if read from `path`: `path` is used in messages and to
    /// resolve relative paths. Any `peers_file` is read from disk.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_as(text, path, false)
    }

    fn parse_as(text: &str, path: &Path, enrolling: bool) -> Result<Config, ConfigError> {
        let src = Source::new(text, path, enrolling);
        let tree = DeTable::parse(text).map_err(|e| {
            if text.trim_start().starts_with("-----BEGIN ") {
                return src.file_error(
                    "this is a PEM file (a key?), not a config file: give the TOML config, \
                     whose `[identity] private_key` names the key file",
                );
            }
            let span = e.span().unwrap_or(0..0);
            src.error(
                span,
                format!("TOML syntax error: {}", one_line(e.message())),
            )
        })?;
        let pass = src.serde_errors(&tree);
        if !pass.errors.is_empty() {
            // The sections and tunnels without such errors are checked too.
            let mut errors = Vec::new();
            let rest = RawConfig::deserialize(toml::de::Deserializer::from(pass.rest.clone()));
            if let Ok(raw) = rest {
                if let Err(e) = src.build(raw) {
                    errors.extend(e.into_each().into_iter().filter(|e| !pass.follows(e)));
                }
            }
            errors.extend(pass.errors);
            return Err(ConfigError::gather(errors)
                .unwrap_or_else(|| src.file_error("invalid configuration")));
        }
        let raw: RawConfig = RawConfig::deserialize(toml::de::Deserializer::from(tree.clone()))
            .map_err(|e| src.serde_error(&tree, &e))?;
        src.build(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::validate::lookup_group;
    use super::*;
    use std::time::Duration;

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

    fn two_host_example() -> String {
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
    fn two_host_example_parses() {
        let c = parse(&two_host_example()).unwrap();
        assert_eq!(c.path, Path::new("/etc/sealpipe/b.toml"));
        assert_eq!(
            c.identity,
            IdentityConfig {
                private_key: Located {
                    value: PathBuf::from("/etc/sealpipe/host-b.pem"),
                    // Where errors about the key file will point.
                    at: Location {
                        path: PathBuf::from("/etc/sealpipe/b.toml"),
                        line: 2,
                        column: 15,
                        context: "[identity]".into(),
                        key: "private_key".into(),
                    },
                },
                next_private_key: None,
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
        assert_eq!(k.peer, PeerPin::Keys(vec![fp(FP_B)]));
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
            c.identity.psk_file.as_deref(),
            Some(&PathBuf::from("/etc/sealpipe/keys/link.psk"))
        );
        assert_eq!(
            c.identity.psk_file.unwrap().at.error("problem").to_string(),
            "/etc/sealpipe/b.toml:3:12: [identity]: key `psk_file`: problem"
        );
        assert_eq!(
            *c.identity.private_key,
            PathBuf::from("/etc/sealpipe/b.pem")
        );
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
    fn missing_config_file_names_path_and_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        let e = Config::load(&path).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("cannot read config file {}: no such file", path.display())
        );
    }

    #[test]
    fn load_reads_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(&path, two_host_example()).unwrap();
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
            "/etc/sealpipe/b.toml:5:1: unknown key `rekey_byts` in [defaults]: did you mean `rekey_bytes`?"
        );
        assert_eq!(
            err(&with_identity(&format!(
                "[[listener]]\nname = \"redis\"\nlisten = \"0.0.0.0:1\"\nforwad = \"x:1\"\npeers = [\"{FP_A}\"]\n"
            ))),
            "/etc/sealpipe/b.toml:6:1: unknown key `forwad` in listener \"redis\": did you mean `forward`?"
        );
        assert_eq!(
            err(&format!("tunnel = 1\n{}", with_identity(""))),
            "/etc/sealpipe/b.toml:1:1: unknown key `tunnel` at the top level (expected one of \
             `identity`, `defaults`, `listener`, `connector`, `metrics`, `control`)"
        );
        assert_eq!(
            err("[identity]\nprivate_key = \"b.pem\"\nprivatekey = \"c.pem\"\n"),
            "/etc/sealpipe/b.toml:3:1: unknown key `privatekey` in [identity]: did you mean `private_key`?"
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
             integer `10`, expected a duration string such as \"10s\", \"500ms\" or \"1h 30m\" \
             (a duration has a unit: write \"10s\")"
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
             string \"5\", expected an integer (write it without quotes: 5)"
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
            "/etc/sealpipe/b.toml:5:10: listener \"redis\": key `listen`: invalid address \":7443\": empty host\n\
             /etc/sealpipe/b.toml:6:11: listener \"redis\": key `forward`: invalid address \"127.0.0.1:0\": port 0 cannot be connected to"
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
            "/etc/sealpipe/b.toml:4:19: [defaults]: key `resumption_uses`: 0 is out of range: resumptions in a row after a full handshake, 1 to 1000000"
        );
        assert_eq!(
            one("resumption_uses = 1000001"),
            "/etc/sealpipe/b.toml:4:19: [defaults]: key `resumption_uses`: 1000001 is out of range: resumptions in a row after a full handshake, 1 to 1000000"
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
            "/etc/sealpipe/b.toml:4:17: [defaults]: key `drain_timeout`: invalid duration \"10\": no unit; write \"10s\" (or \"10ms\", \"10m\")"
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
        assert_eq!(*c.identity.private_key, dir.path().join("b.pem"));
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

        // A missing peers file names the config line, the key and the problem.
        std::fs::remove_file(&peers_path).unwrap();
        assert_eq!(
            Config::load(&path).unwrap_err().to_string(),
            format!(
                "{}:8:14: listener \"redis\": key `peers_file`: {}: no such file",
                path.display(),
                peers_path.display()
            )
        );
    }

    #[test]
    fn a_fingerprint_listed_twice_in_one_source_is_refused() {
        // In `peers`: at the second entry, naming the line of the first.
        assert_eq!(
            err(&listener(&format!(
                "listen = \"0.0.0.0:7443\"\nforward = \"127.0.0.1:1\"\npeers = [\"{FP_A} a\",\n  \"{FP_A}\"]\n"
            ))),
            format!("/etc/sealpipe/b.toml:8:3: listener \"redis\": key `peers`: {FP_A} is listed twice (first on line 7); remove one of the two")
        );
        // In a peers file: the file and line of the second entry, the line of the first.
        let dir = tempfile::tempdir().unwrap();
        let peers_path = dir.path().join("redis.peers");
        std::fs::write(
            &peers_path,
            format!("# head\n{FP_A}  a\n{FP_B}\n{FP_A}  other name\n"),
        )
        .unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(
            &path,
            listener("listen = \"0.0.0.0:7443\"\nforward = \"127.0.0.1:1\"\npeers_file = \"redis.peers\"\n"),
        )
        .unwrap();
        assert_eq!(
            Config::load(&path).unwrap_err().to_string(),
            format!(
                "{}:4: listener \"redis\": {FP_A} is listed twice (first on line 2); remove one of the two",
                peers_path.display()
            )
        );
        // Once in each source is no repeat: trusted once, named as in `peers`.
        std::fs::write(&peers_path, format!("{FP_A}  from file\n{FP_B}  b\n")).unwrap();
        std::fs::write(
            &path,
            listener(&format!("listen = \"0.0.0.0:7443\"\nforward = \"127.0.0.1:1\"\npeers = [\"{FP_A} inline\"]\npeers_file = \"redis.peers\"\n")),
        )
        .unwrap();
        assert_eq!(
            Config::load(&path).unwrap().listeners[0].peers,
            vec![
                (fp(FP_A), Some("inline".to_string())),
                (fp(FP_B), Some("b".to_string())),
            ]
        );
    }

    #[test]
    fn example_configs_parse_once_their_placeholders_are_replaced() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for (name, placeholder, whose) in [
            (
                "etc/listener.toml",
                "SHA256:<host A's fingerprint>",
                "a connector's key",
            ),
            (
                "etc/connector.toml",
                "SHA256:<host B's fingerprint>",
                "the listener's key",
            ),
        ] {
            let path = root.join(name);
            let text = std::fs::read_to_string(&path).unwrap();
            // As shipped, the placeholder is refused by name.
            let e = Config::parse(&text, &path).unwrap_err().to_string();
            assert!(
                e.ends_with(&format!(
                    "replace the placeholder with the fingerprint of {whose} \
                     (`sealpipe fingerprint KEYFILE` on its host prints it)"
                )),
                "{name}: {e}"
            );
            assert!(text.contains(placeholder), "{name}");
            let c = Config::parse(&text.replace(placeholder, FP_A), &path)
                .unwrap_or_else(|e| panic!("{e}"));
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
