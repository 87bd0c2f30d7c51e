//! Every key a config file may hold: its section, type, default and meaning, in the order the
//! parser lists them. `sealpipe.toml(5)` (`sealpipe man`) is rendered from this table.
//!
//! The tuning keys' rows come from `tuning_fields!` itself (their doc comments, and their
//! defaults from [`Tuning::default`]); the other rows are written here, and a unit test parses
//! a config with an unknown key in each section and compares the keys the parser says it
//! expects with this table, so that a key added to `raw.rs` and not here (or the other way
//! round) fails the build's tests.

use std::time::Duration;

use super::raw::{DurationText, SizeText};
use super::tuning_fields::tuning_fields;
use super::{Tuning, DEFAULT_SOCKET_MODE};

/// A part of the file: the top level, or one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Section {
    Top,
    Identity,
    Defaults,
    Listener,
    Connector,
    Metrics,
}

impl Section {
    /// Every section, in file order (the order of the top level's "expected one of" list).
    pub(crate) const ALL: [Section; 6] = [
        Section::Top,
        Section::Identity,
        Section::Defaults,
        Section::Listener,
        Section::Connector,
        Section::Metrics,
    ];

    /// The table's name at the top level (`None` for the top level itself).
    #[cfg(test)]
    pub(crate) fn table(self) -> Option<&'static str> {
        match self {
            Section::Top => None,
            Section::Identity => Some("identity"),
            Section::Defaults => Some("defaults"),
            Section::Listener => Some("listener"),
            Section::Connector => Some("connector"),
            Section::Metrics => Some("metrics"),
        }
    }

    /// The header as written in a file.
    pub(crate) fn header(self) -> &'static str {
        match self {
            Section::Top => "top level",
            Section::Identity => "[identity]",
            Section::Defaults => "[defaults]",
            Section::Listener => "[[listener]]",
            Section::Connector => "[[connector]]",
            Section::Metrics => "[metrics]",
        }
    }

    /// What the section is for.
    pub(crate) fn about(self) -> &'static str {
        match self {
            Section::Top => "Keys before the first table.",
            Section::Identity => "This host's long-term identity. Required.",
            Section::Defaults => {
                "Tuning for every tunnel of the file. Every key is optional, and each one may be \
                 set again in a `[[listener]]` or `[[connector]]` table, for that tunnel only."
            }
            Section::Listener => {
                "A listener tunnel: sealed in, plain out. It accepts connections from connectors \
                 whose keys it trusts and forwards each one in plaintext. Any number of them; \
                 each also takes the keys of `[defaults]`."
            }
            Section::Connector => {
                "A connector tunnel: plain in, sealed out. It accepts local plaintext connections \
                 and carries each one sealed to a listener whose key it knows. Any number of \
                 them; each also takes the keys of `[defaults]`."
            }
            Section::Metrics => {
                "Optional: serve Prometheus metrics (`GET /metrics`, text format 0.0.4) for every \
                 tunnel of the file. It has no authentication: keep it on loopback or a \
                 management network."
            }
        }
    }

    /// Whether the section also takes the tuning keys.
    pub(crate) fn takes_tuning(self) -> bool {
        matches!(
            self,
            Section::Defaults | Section::Listener | Section::Connector
        )
    }
}

/// One key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) section: Section,
    pub(crate) name: &'static str,
    /// The TOML type and the form of its value.
    pub(crate) kind: &'static str,
    /// The value when the key is absent, as it would be written (`"10s"`), or what absence
    /// means (`required`, `none`).
    pub(crate) default: String,
    /// What it does.
    pub(crate) doc: &'static str,
}

/// Written when a key must be given.
pub(crate) const REQUIRED: &str = "required";
/// Written when an absent key means "not used".
pub(crate) const NONE: &str = "none";

const PATH: &str = "path";

/// The keys of `section` that are its own (not the tuning keys), in parser order.
fn own_keys(section: Section) -> Vec<Key> {
    let key = |name, kind, default: &str, doc| Key {
        section,
        name,
        kind,
        default: default.to_string(),
        doc,
    };
    // The same constant the parser defaults to.
    let socket_mode = format!("\"{DEFAULT_SOCKET_MODE:04o}\"");
    match section {
        Section::Top => vec![key(
            "control",
            "boolean or path",
            "true",
            "The control socket that `sealpipe status` reads (mode 0600, answered with one JSON \
             snapshot per connection, read-only): `true`, the default path (see FILES in \
             sealpipe(1)); `false`, none; a path, that socket.",
        )],
        Section::Identity => vec![
            key(
                "private_key",
                PATH,
                REQUIRED,
                "This host's RSA private key (2048 to 8192 bits), PKCS#8 or PKCS#1 PEM, which \
                 group and others may not access (mode 0600 or 0400), owned by the user the \
                 daemon runs as. `sealpipe keygen` makes one. Re-read on reload.",
            ),
            key(
                "psk_file",
                PATH,
                NONE,
                "A pre-shared key mixed into every session's key schedule: 32 bytes written as \
                 64 hex digits or base64, mode 0600. Both ends of a link must use the same one.",
            ),
            key(
                "next_private_key",
                PATH,
                NONE,
                "Listeners only: a second private key, checked like `private_key`, held while \
                 the listener's key is rotated: hellos keyed for either key are answered, each \
                 with that key. See \"Rotating a listener key\" in docs/operations.md.",
            ),
        ],
        Section::Defaults => vec![],
        Section::Listener => vec![
            key(
                "name",
                "string",
                REQUIRED,
                "The tunnel's name in logs, metrics and `sealpipe status`; unique among the \
                 listeners of the file.",
            ),
            key(
                "service",
                "string",
                "the tunnel's `name`",
                "The service this listener serves: a connector must ask for the same one (its \
                 `service`), or it is refused after the handshake with an alert naming this \
                 service, and the refusal is logged with both names. Keeps a connection meant \
                 for one listener from reaching another that trusts the same key (a swapped \
                 port). 1 to 64 bytes of printable ASCII, no spaces.",
            ),
            key(
                "listen",
                "address",
                REQUIRED,
                "Where sealed connections arrive (TCP only). A port below 1024 needs \
                 CAP_NET_BIND_SERVICE. `systemd:NAME`: the socket systemd passes under that \
                 `FileDescriptorName=` (socket activation).",
            ),
            key(
                "forward",
                "address or unix:PATH",
                NONE,
                "Where each authenticated connection is forwarded in plaintext, resolved anew \
                 for each connection. Exactly one of `forward` and `allow_destinations` is \
                 required.",
            ),
            key(
                "peers",
                "array of strings",
                "[]",
                "Trusted connector keys: each a fingerprint (`SHA256:` and 43 base64 \
                 characters), optionally followed by a space and a name used in logs. A \
                 fingerprint listed twice is an error.",
            ),
            key(
                "peers_file",
                PATH,
                NONE,
                "More trusted keys, from a file: one fingerprint per line, optionally followed \
                 by a name; blank lines and `#` comments are ignored. With `peers` the union is \
                 trusted. Re-read on reload; `sealpipe trust` edits it.",
            ),
            key(
                "accept_unknown",
                "boolean",
                "false",
                "Let in any connector that proves possession of its key, trusted or not: only \
                 the listener is authenticated. `peers` then only names keys. Logged as a \
                 warning at start.",
            ),
            key(
                "allow_tofu",
                "boolean",
                "false",
                "Answer first-contact hellos from connectors that do not know this listener's \
                 key yet (`peer = \"tofu\"`). Anybody can then make the listener sign and see \
                 that it runs sealpipe. Logged as a warning at start.",
            ),
            key(
                "allow_destinations",
                "array of strings",
                NONE,
                "Instead of `forward`, for connectors in `mode = \"redirect\"`: the original \
                 destinations they may ask for, each an address or CIDR network (IPv6 in \
                 brackets) and a port, a range `80-90` or `*`. Any other destination is reset.",
            ),
            key(
                "proxy_protocol",
                "\"off\" or \"v2\"",
                "\"off\"",
                "`\"v2\"`: write a PROXY protocol version 2 header to the target before any \
                 payload, naming the client as the connector saw it.",
            ),
            key(
                "revoke",
                "\"cut\" or \"new-only\"",
                "\"cut\"",
                "What a reload that stops trusting a key does to its open connections: \
                 `\"cut\"` resets them, `\"new-only\"` lets them run and refuses only new ones.",
            ),
        ],
        Section::Connector => vec![
            key(
                "name",
                "string",
                REQUIRED,
                "The tunnel's name in logs, metrics and `sealpipe status`; unique among the \
                 connectors of the file (a listener may have the same name).",
            ),
            key(
                "service",
                "string",
                "the tunnel's `name`",
                "The service this connector asks the listener for, signed in the handshake; the \
                 listener's `service` must be the same. 1 to 64 bytes of printable ASCII, no \
                 spaces.",
            ),
            key(
                "listen",
                "address or unix:PATH",
                REQUIRED,
                "Where local applications connect in plaintext. Keep it on loopback, or use a \
                 Unix socket: whoever can connect can use the tunnel. A stale socket file is \
                 replaced at start; a live one or any other file is refused. `systemd:NAME`: \
                 the socket systemd passes under that `FileDescriptorName=`.",
            ),
            key(
                "connect",
                "address",
                REQUIRED,
                "The listener to carry connections to (TCP only), resolved anew for each \
                 connection.",
            ),
            key(
                "peer",
                "string or array of strings",
                REQUIRED,
                "The listener's key: its fingerprint, pinned; a list of two during a key \
                 rotation (the hello is keyed for the first, the second is tried if the \
                 listener does not answer); or `\"tofu\"`, trust on first use with \
                 `known_peers` (the first contact is not authenticated).",
            ),
            key(
                "socket_mode",
                "string",
                &socket_mode,
                "Mode of a `unix:` listen socket's file (connecting needs write permission); at \
                 least 0600. Only with a `unix:` listen.",
            ),
            key(
                "socket_group",
                "string",
                NONE,
                "Group of a `unix:` listen socket's file. Only with a `unix:` listen.",
            ),
            key(
                "known_peers",
                PATH,
                NONE,
                "With `peer = \"tofu\"` (and only then), where the listener key first seen for \
                 the `connect` address is recorded; later connections must present that key.",
            ),
            key(
                "mode",
                "\"forward\" or \"redirect\"",
                "\"forward\"",
                "`\"redirect\"`: accept connections sent here by a NAT REDIRECT rule and carry \
                 each one's original destination to the listener, which connects there if its \
                 `allow_destinations` allow it. Needs a TCP `listen`.",
            ),
        ],
        Section::Metrics => vec![key(
            "listen",
            "address",
            REQUIRED,
            "The address of the metrics HTTP server (TCP only).",
        )],
    }
}

/// How a tuning key's type is named and its default written, by the type serde reads
/// (`RAW`) and the type of the [`Tuning`] field.
trait Shown<Raw> {
    const KIND: &'static str;
    fn show(&self) -> String;
}

/// A size as it would be written: `"64KiB"`, `"1GiB"`, or bytes.
fn size_text(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    match UNITS.iter().find(|(u, _)| n >= *u && n.is_multiple_of(*u)) {
        Some((u, unit)) => format!("\"{}{unit}\"", n / u),
        None => n.to_string(),
    }
}

impl Shown<SizeText> for u64 {
    const KIND: &'static str = "size";
    fn show(&self) -> String {
        size_text(*self)
    }
}

impl Shown<SizeText> for usize {
    const KIND: &'static str = <u64 as Shown<SizeText>>::KIND;
    fn show(&self) -> String {
        size_text(*self as u64)
    }
}

impl Shown<DurationText> for Duration {
    const KIND: &'static str = "duration";
    fn show(&self) -> String {
        format!("\"{}\"", humantime::format_duration(*self))
    }
}

impl Shown<DurationText> for Option<Duration> {
    const KIND: &'static str = "duration, or \"off\"";
    fn show(&self) -> String {
        self.as_ref()
            .map_or_else(|| "\"off\"".to_string(), Shown::<DurationText>::show)
    }
}

impl Shown<i64> for usize {
    const KIND: &'static str = "integer";
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Shown<i64> for u32 {
    const KIND: &'static str = "integer";
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Shown<bool> for bool {
    const KIND: &'static str = "boolean";
    fn show(&self) -> String {
        self.to_string()
    }
}

/// The rows of the tuning keys (section [`Section::Defaults`]), from the one list of them.
macro_rules! tuning_rows {
    (
        {}
        $(
            $(#[doc = $doc:literal])*
            $field:ident : $ty:ty = $default:expr, parsed from $raw:ident by $check:ident;
        )*
    ) => {
        /// The tuning keys, as written in `[defaults]` (and in each tunnel), in parser order.
        pub(crate) fn tuning_keys() -> Vec<Key> {
            let defaults = Tuning::default();
            vec![$(Key {
                section: Section::Defaults,
                name: stringify!($field),
                kind: <$ty as Shown<$raw>>::KIND,
                default: <$ty as Shown<$raw>>::show(&defaults.$field),
                doc: concat!($($doc),*).trim_start(),
            },)*]
        }
    };
}

tuning_fields!(tuning_rows! {});

/// The keys of `section` as the parser takes them: its own, then the tuning keys if it takes
/// them (as `[defaults]` rows).
pub(crate) fn keys(section: Section) -> Vec<Key> {
    let mut keys = own_keys(section);
    if section.takes_tuning() {
        keys.extend(tuning_keys());
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    /// The keys the parser says it expects where `text` has the unknown key `zzz_unknown`.
    fn expected_by_parser(text: &str) -> Vec<String> {
        let e = Config::parse(text, Path::new("/etc/sealpipe/k.toml"))
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{text}"))
            .to_string();
        assert!(e.contains("unknown key `zzz_unknown`"), "{e}");
        let list = e
            .split_once("(expected ")
            .and_then(|(_, l)| l.strip_suffix(')'))
            .unwrap_or_else(|| panic!("no list in {e}"));
        let list = list.strip_prefix("one of ").unwrap_or(list);
        list.replace(" or ", ", ")
            .split(", ")
            .map(|k| k.trim_matches('`').to_string())
            .collect()
    }

    #[test]
    fn the_table_has_every_key_the_parser_takes_in_its_order() {
        let identity = "[identity]\nprivate_key = \"k.pem\"\n";
        for section in Section::ALL {
            let text = match section.table() {
                None => format!("zzz_unknown = 1\n{identity}"),
                Some("identity") => format!("{identity}zzz_unknown = 1\n"),
                Some(t) if section.header().starts_with("[[") => {
                    format!("{identity}[[{t}]]\nzzz_unknown = 1\n")
                }
                Some(t) => format!("{identity}[{t}]\nzzz_unknown = 1\n"),
            };
            let mut table: Vec<String> = keys(section).iter().map(|k| k.name.to_string()).collect();
            if section == Section::Top {
                // The tables are keys of the top level too, before its own keys.
                let tables = Section::ALL.iter().filter_map(|s| s.table());
                table.splice(0..0, tables.map(str::to_string));
            }
            assert_eq!(
                expected_by_parser(&text),
                table,
                "{}: src/config/schema.rs and the parser disagree",
                section.header()
            );
        }
    }

    #[test]
    fn tuning_rows_come_from_the_tuning_list_with_its_defaults() {
        let rows = tuning_keys();
        let row = |name: &str| {
            rows.iter()
                .find(|k| k.name == name)
                .unwrap_or_else(|| panic!("no row {name}"))
                .clone()
        };
        assert_eq!(row("rekey_bytes").default, "\"1GiB\"");
        assert_eq!(row("rekey_interval").default, "\"2m\"");
        assert_eq!(row("handshake_timeout").default, "\"10s\"");
        assert_eq!(row("resumption_lifetime").default, "\"1h\"");
        assert_eq!(row("record_size").default, "\"64KiB\"");
        assert_eq!(row("max_connections").default, "1024");
        assert_eq!(row("resumption").default, "true");
        assert_eq!(row("max_connections").kind, "integer");
        assert!(
            row("drain_timeout").doc.starts_with("On SIGTERM or SIGINT"),
            "{:?}",
            row("drain_timeout").doc
        );
        for k in &rows {
            assert!(!k.doc.is_empty() && !k.doc.contains("  "), "{k:?}");
        }
        assert_eq!(size_text(1024), "\"1KiB\"");
        assert_eq!(size_text(1500), "1500");
    }
}
