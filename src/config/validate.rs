//! Validation: the raw, spanned structs turned into the model ([`Config`] and the types in it).
//! Every semantic error points at the span of the offending value, through [`Source`]. The way
//! from the model into the runtime's settings is `super::settings`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

use super::error::{ConfigError, Source};
use super::raw::{RawConfig, RawConnector, RawControl, RawIdentity, RawListener, RawPeer};
use super::{
    Address, Config, ConnectorConfig, ConnectorMode, Control, DestinationRule, IdentityConfig,
    ListenerConfig, Located, MetricsConfig, PeerPin, ProxyProtocol, Revoke, SocketPermissions,
    Tuning, MAX_UNIX_PATH,
};
use crate::files::{io_problem, peers, utf8};
use crate::proto::identity::Fingerprint;

/// A listener's trusted keys and their names, as in [`ListenerConfig::peers`].
type TrustedPeers = Vec<(Fingerprint, Option<String>)>;

/// Most keys a connector's `peer` list pins: a listener holds at most two
/// (`private_key` and `next_private_key`), and each pin may cost the connector one more
/// connection attempt.
const MAX_PINS: usize = 2;

impl Source<'_> {
    /// Validates `raw` and turns it into the model. Every independent error is reported, in
    /// file order ([`ConfigError::Several`] when there are more than one): a key whose value
    /// is wrong is left out of what depends on it, and validation goes on.
    pub(crate) fn build(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let built = self.build_parts(&raw);
        let errors = std::mem::take(&mut *self.errors.borrow_mut());
        match (ConfigError::gather(errors), built) {
            (None, Some(config)) => Ok(config),
            (Some(e), _) => Err(e),
            // Every part that failed left its error.
            (None, None) => Err(self.file_error("invalid configuration")),
        }
    }

    fn build_parts(&self, raw: &RawConfig) -> Option<Config> {
        let dir = self.path.parent().unwrap_or(Path::new("")).to_path_buf();
        let identity = self.keep(raw.identity.as_ref().ok_or_else(|| {
            self.file_error(
                "missing [identity] section (it names this host's `private_key`)".to_string(),
            )
        }));
        let identity = identity
            .map(|identity| identity.get_ref())
            .and_then(|identity| {
                let private_key = self.keep(self.located_path(
                    "[identity]",
                    "private_key",
                    &identity.private_key,
                    &dir,
                ));
                let next_private_key =
                    self.keep(self.next_private_key(identity, raw.listeners.is_empty(), &dir));
                let psk_file = self.keep(
                    identity
                        .psk_file
                        .as_ref()
                        .map(|p| self.located_path("[identity]", "psk_file", p, &dir))
                        .transpose(),
                );
                Some(IdentityConfig {
                    private_key: private_key?,
                    next_private_key: next_private_key?,
                    psk_file: psk_file?,
                })
            });

        // A bad key of `[defaults]` is reported once, here; the tunnels go on with the others.
        let base = match &raw.defaults {
            Some(d) => Tuning::default().merged(&d.tuning(), self, "[defaults]"),
            None => Tuning::default(),
        };

        if raw.listeners.is_empty() && raw.connectors.is_empty() {
            self.keep::<()>(Err(self.file_error(
                "no tunnels: add at least one [[listener]] or [[connector]]",
            )));
        }

        // Listen addresses in use so far: address -> (description, line).
        let mut bound: Vec<(Address, String, usize)> = Vec::new();

        let mut listeners = Some(Vec::new());
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, l) in raw.listeners.iter().enumerate() {
            let built = self.listener(i, l, &base, &mut bound, &mut names, &dir);
            match (&mut listeners, built) {
                (Some(all), Some(l)) => all.push(l),
                _ => listeners = None,
            }
        }

        let mut connectors = Some(Vec::new());
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, c) in raw.connectors.iter().enumerate() {
            let built = self.connector(i, c.get_ref(), &base, &mut bound, &mut names, &dir);
            match (&mut connectors, built) {
                (Some(all), Some(c)) => all.push(c),
                _ => connectors = None,
            }
        }

        let metrics = match &raw.metrics {
            Some(m) => {
                let m = m.get_ref();
                let ctx = "[metrics]";
                let listen = self.keep(self.address(ctx, "listen", &m.listen, Side::Metrics, &dir));
                let listen = listen.and_then(|listen| {
                    self.keep(self.check_bound(ctx, &m.listen, &listen, &mut bound))?;
                    Some(listen)
                });
                Some(listen.map(|listen| MetricsConfig { listen }))
            }
            None => Some(None),
        };

        let control = match &raw.control {
            None => Some(Control::Default),
            Some(c) => match c.get_ref() {
                RawControl::On(true) => Some(Control::Default),
                RawControl::On(false) => Some(Control::Off),
                RawControl::Socket(s) => self
                    .keep(self.path_value(
                        "top level",
                        "control",
                        &Spanned::new(c.span(), s.clone()),
                        &dir,
                    ))
                    .map(Control::Socket),
            },
        };

        Some(Config {
            path: self.path.to_path_buf(),
            identity: identity?,
            listeners: listeners?,
            connectors: connectors?,
            metrics: metrics?,
            control: control?,
            warnings: std::mem::take(&mut *self.warnings.borrow_mut()),
        })
    }

    /// One `[[listener]]`, its errors kept; `None` if it has any.
    fn listener(
        &self,
        i: usize,
        l: &Spanned<RawListener>,
        base: &Tuning,
        bound: &mut Vec<(Address, String, usize)>,
        names: &mut HashMap<String, usize>,
        dir: &Path,
    ) -> Option<ListenerConfig> {
        let header = l.span();
        let l = l.get_ref();
        let errors_before = self.errors.borrow().len();
        let name = self.keep(self.tunnel_name("listener", i, &l.name, names));
        let ctx = tunnel_context("listener", i, l.name.get_ref());
        let ctx = ctx.as_str();
        let listen = self.keep(self.address(ctx, "listen", &l.listen, Side::SealedListen, dir));
        if let Some(listen) = &listen {
            self.keep(self.check_bound(ctx, &l.listen, listen, bound));
        }
        let forward = l
            .forward
            .as_ref()
            .map(|f| self.keep(self.address(ctx, "forward", f, Side::PlainConnect, dir)));
        if let (Some(Some(f)), Some(text), Some(listen)) = (&forward, &l.forward, &listen) {
            self.keep(self.check_no_loop(ctx, ("forward", text, f), (&l.listen, listen)));
        }
        let mut allow_destinations = Vec::new();
        if let Some(list) = &l.allow_destinations {
            if list.get_ref().is_empty() {
                self.keep::<()>(Err(self.key_error(
                    ctx,
                    "allow_destinations",
                    list.span(),
                    "empty list: name at least one destination, or remove the key and set `forward`",
                )));
            }
            for entry in list.get_ref() {
                let rule = entry
                    .get_ref()
                    .parse::<DestinationRule>()
                    .map_err(|problem| {
                        self.key_error(
                            ctx,
                            "allow_destinations",
                            entry.span(),
                            format!("invalid destination {:?}: {problem}", entry.get_ref()),
                        )
                    });
                if let Some(rule) = self.keep(rule) {
                    allow_destinations.push(rule);
                }
            }
        }
        match (&l.forward, &l.allow_destinations) {
            (Some(_), Some(list)) => {
                self.keep::<()>(Err(self.key_error(
                    ctx,
                    "allow_destinations",
                    list.span(),
                    "set either `forward` (one target for every connection) or `allow_destinations` (redirect-mode connectors choose), not both",
                )));
            }
            (None, None) => {
                self.keep::<()>(Err(self.error(
                    header.clone(),
                    format!("{ctx}: missing key `forward` (or `allow_destinations`, for redirect-mode connectors)"),
                )));
            }
            _ => {}
        }
        let proxy_protocol = self.keep(self.keyword(
            ctx,
            "proxy_protocol",
            &l.proxy_protocol,
            ProxyProtocol::Off,
            &[("off", ProxyProtocol::Off), ("v2", ProxyProtocol::V2)],
            ("value", "\"v2\" or \"off\""),
        ));
        let revoke = self.keep(self.keyword(
            ctx,
            "revoke",
            &l.revoke,
            Revoke::Cut,
            &[("cut", Revoke::Cut), ("new-only", Revoke::NewOnly)],
            ("value", "\"cut\" or \"new-only\""),
        ));
        let trusted = self.keep(self.trusted_peers(ctx, l, dir));
        let accept_unknown = l.accept_unknown.as_ref().is_some_and(|b| *b.get_ref());
        let allow_tofu = l.allow_tofu.as_ref().is_some_and(|b| *b.get_ref());
        // With accept_unknown the trust list only names known connectors; it may be empty.
        // While enrolling, a peers file is about to get its first key.
        let enrolling = self.enrolling && l.peers_file.is_some();
        if let Some((peers, _)) = &trusted {
            if peers.is_empty() && !accept_unknown && !enrolling {
                let problem = match (&l.peers, &l.peers_file) {
                    (None, None) => "no trusted peers: set `peers` or `peers_file`".to_string(),
                    _ => {
                        "no trusted peers: `peers` and `peers_file` list no fingerprint".to_string()
                    }
                };
                self.keep::<()>(Err(self.error(header, format!("{ctx}: {problem}"))));
            }
        }
        let tuning = base.merged(&l.tuning(), self, ctx);
        let service = self.keep(self.service(ctx, &l.name, &l.service));
        if self.errors.borrow().len() > errors_before {
            return None;
        }
        let (peers, peers_file) = trusted?;
        Some(ListenerConfig {
            name: name?,
            service: service?,
            listen: listen?,
            forward: forward.flatten(),
            allow_destinations,
            proxy_protocol: proxy_protocol?,
            revoke: revoke?,
            peers,
            peers_file,
            accept_unknown,
            allow_tofu,
            tuning,
        })
    }

    /// One `[[connector]]`, its errors kept; `None` if it has any.
    fn connector(
        &self,
        i: usize,
        c: &RawConnector,
        base: &Tuning,
        bound: &mut Vec<(Address, String, usize)>,
        names: &mut HashMap<String, usize>,
        dir: &Path,
    ) -> Option<ConnectorConfig> {
        let errors_before = self.errors.borrow().len();
        let name = self.keep(self.tunnel_name("connector", i, &c.name, names));
        let ctx = tunnel_context("connector", i, c.name.get_ref());
        let ctx = ctx.as_str();
        let listen = self.keep(self.address(ctx, "listen", &c.listen, Side::PlainListen, dir));
        if let Some(listen) = &listen {
            self.keep(self.check_bound(ctx, &c.listen, listen, bound));
        }
        let connect = self.keep(self.address(ctx, "connect", &c.connect, Side::SealedConnect, dir));
        if let (Some(connect), Some(listen)) = (&connect, &listen) {
            self.keep(self.check_no_loop(
                ctx,
                ("connect", &c.connect, connect),
                (&c.listen, listen),
            ));
        }
        let socket = listen
            .as_ref()
            .and_then(|listen| self.keep(self.socket_permissions(ctx, c, listen)));
        let peer = self.keep(self.peer_pin(ctx, c, dir));
        let mode = self.keep(self.keyword(
            ctx,
            "mode",
            &c.mode,
            ConnectorMode::Forward,
            &[
                ("forward", ConnectorMode::Forward),
                ("redirect", ConnectorMode::Redirect),
            ],
            ("mode", "\"forward\" or \"redirect\""),
        ));
        // A Unix-socket client was not redirected by a NAT rule: it has no original
        // destination to send, so every connection would be refused.
        if let (Some(ConnectorMode::Redirect), Some(path), Some(v)) =
            (mode, listen.as_ref().and_then(Address::unix_path), &c.mode)
        {
            self.keep::<()>(Err(self.key_error(
                ctx,
                "mode",
                v.span(),
                format!(
                    "`mode = \"redirect\"` needs a TCP `listen` (connections redirected by a NAT rule); \
                     `listen = \"unix:{}\"` is a Unix socket, whose clients have no original destination",
                    path.display()
                ),
            )));
        }
        let tuning = base.merged(&c.tuning(), self, ctx);
        let service = self.keep(self.service(ctx, &c.name, &c.service));
        if self.errors.borrow().len() > errors_before {
            return None;
        }
        Some(ConnectorConfig {
            name: name?,
            service: service?,
            listen: listen?,
            connect: connect?,
            peer: peer?,
            socket: socket?,
            mode: mode?,
            tuning,
        })
    }

    /// A listener's `peers` and `peers_file` (read here), and their union. One rule for both
    /// sources and their union: see `crate::files::peers`.
    fn trusted_peers(
        &self,
        ctx: &str,
        l: &RawListener,
        dir: &Path,
    ) -> Result<(TrustedPeers, Option<PathBuf>), ConfigError> {
        let mut inline = Vec::new();
        if let Some(list) = &l.peers {
            for entry in list.get_ref() {
                let line = self.line_col(entry.span().start).0;
                peers::push_entry(&mut inline, entry.get_ref(), line)
                    .map_err(|problem| self.key_error(ctx, "peers", entry.span(), problem))?;
            }
        }
        let mut peers_file = None;
        let mut from_file = Vec::new();
        if let Some(file) = &l.peers_file {
            let file_path = self.path_value(ctx, "peers_file", file, dir)?;
            let bytes = match std::fs::read(&file_path) {
                Ok(bytes) => bytes,
                Err(e) if self.enrolling && e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => {
                    return Err(self.key_error(
                        ctx,
                        "peers_file",
                        file.span(),
                        format!(
                            "{}: {}",
                            file_path.display(),
                            io_problem(&e, "a peers file")
                        ),
                    ))
                }
            };
            let text = utf8(bytes).map_err(|e| ConfigError::At {
                path: file_path.clone(),
                line: e.line,
                column: e.column,
                message: format!("{ctx}: {e}"),
            })?;
            from_file =
                peers::parse_peers(&text, &file_path).map_err(|e| ConfigError::PeersFile {
                    path: e.path,
                    line: e.line,
                    message: format!("{ctx}: {}", e.problem),
                })?;
            peers_file = Some(file_path);
        }
        Ok((peers::union(inline.iter().chain(&from_file)), peers_file))
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

    /// `[identity] next_private_key`: a listener's second key during a rotation. A connector
    /// presents one key, so a file without listeners refuses it.
    fn next_private_key(
        &self,
        identity: &RawIdentity,
        no_listeners: bool,
        dir: &Path,
    ) -> Result<Option<Located<PathBuf>>, ConfigError> {
        let Some(next) = &identity.next_private_key else {
            return Ok(None);
        };
        if no_listeners {
            return Err(self.key_error(
                "[identity]",
                "next_private_key",
                next.span(),
                "is for listeners: a connector presents one key (`private_key`), and this file has no [[listener]]",
            ));
        }
        let path = self.located_path("[identity]", "next_private_key", next, dir)?;
        let own = self.path_value("[identity]", "private_key", &identity.private_key, dir)?;
        if path.value == own {
            return Err(self.key_error(
                "[identity]",
                "next_private_key",
                next.span(),
                "is the same file as `private_key`: the next key is a second, new key",
            ));
        }
        Ok(Some(path))
    }

    /// A connector's `peer` and `known_peers`: one or two fingerprints without `known_peers`,
    /// or `"tofu"` with it.
    fn peer_pin(&self, ctx: &str, c: &RawConnector, dir: &Path) -> Result<PeerPin, ConfigError> {
        let entries: Vec<Spanned<String>> = match c.peer.get_ref() {
            RawPeer::One(text) if text.trim().eq_ignore_ascii_case("tofu") => {
                let Some(file) = &c.known_peers else {
                    return Err(self.key_error(
                        ctx,
                        "peer",
                        c.peer.span(),
                        "`peer = \"tofu\"` needs `known_peers = \"PATH\"`, the file where the listener's key is recorded",
                    ));
                };
                return Ok(PeerPin::Tofu {
                    known_peers: self.located_path(ctx, "known_peers", file, dir)?,
                });
            }
            RawPeer::One(text) => vec![Spanned::new(c.peer.span(), text.clone())],
            RawPeer::List(list) if list.is_empty() => {
                return Err(self.key_error(
                    ctx,
                    "peer",
                    c.peer.span(),
                    "empty list: pin the listener's key, `peer = \"SHA256:...\"`",
                ))
            }
            RawPeer::List(list) => list.clone(),
        };
        let mut pins: Vec<(Fingerprint, usize)> = Vec::new();
        for entry in &entries {
            let text = entry.get_ref().trim();
            let problem = if text.eq_ignore_ascii_case("tofu") {
                Some("\"tofu\" is a value of its own (`peer = \"tofu\"`), not an entry of a list of pins".to_string())
            } else if pins.len() == MAX_PINS {
                Some(format!("more than {MAX_PINS} keys: a listener holds at most two (`private_key` and `next_private_key`), so pin at most the new key and the old one"))
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(self.key_error(ctx, "peer", entry.span(), problem));
            }
            let fp = text.parse::<Fingerprint>().map_err(|e| {
                self.key_error(
                    ctx,
                    "peer",
                    entry.span(),
                    e.explain(entry.get_ref(), "the listener's key"),
                )
            })?;
            let line = self.line_col(entry.span().start).0;
            if let Some((_, first)) = pins.iter().find(|(p, _)| *p == fp) {
                return Err(self.key_error(
                    ctx,
                    "peer",
                    entry.span(),
                    format!("{fp} is listed twice (first on line {first}); remove one of the two"),
                ));
            }
            pins.push((fp, line));
        }
        if let Some(file) = &c.known_peers {
            return Err(self.key_error(
                ctx,
                "known_peers",
                file.span(),
                "`known_peers` is only for `peer = \"tofu\"`; this connector pins its listener's key",
            ));
        }
        Ok(PeerPin::Keys(pins.into_iter().map(|(fp, _)| fp).collect()))
    }

    /// A tunnel's `service`: as written, or the tunnel's name; 1 to 64 bytes of printable ASCII
    /// either way (it goes on the wire in ConnectorAuth).
    fn service(
        &self,
        ctx: &str,
        name: &Spanned<String>,
        service: &Option<Spanned<String>>,
    ) -> Result<String, ConfigError> {
        let (value, key, span) = match service {
            Some(s) => (s.get_ref(), "service", s.span()),
            None => (name.get_ref(), "name", name.span()),
        };
        if crate::proto::messages::valid_service(value.as_bytes()) {
            return Ok(value.clone());
        }
        let mut problem = format!(
            "{value:?} is not a valid service name (1 to {} bytes of printable ASCII, no spaces)",
            crate::proto::messages::MAX_SERVICE_LEN
        );
        if service.is_none() {
            problem.push_str("; the name is the default `service`: set `service`");
        }
        Err(self.key_error(ctx, key, span, problem))
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
        if addr.systemd_name().is_some() {
            // Socket activation: systemd binds the socket, so only a tunnel's `listen` can be one.
            let needs = match side {
                Side::SealedListen | Side::PlainListen => return Ok(addr),
                Side::SealedConnect => "`connect` needs host:port",
                Side::PlainConnect => "`forward` needs host:port or unix:PATH",
                Side::Metrics => "the metrics endpoint needs host:port",
            };
            return Err(self.key_error(
                ctx,
                key,
                value.span(),
                format!("invalid address {s:?}: a socket passed by systemd is for a tunnel's `listen` only; {needs}"),
            ));
        }
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

    /// Refuses a tunnel whose target (`forward`, `connect`) is its own `listen` address: each
    /// connection would open another one to itself, until `max_connections`.
    fn check_no_loop(
        &self,
        ctx: &str,
        (key, text, target): (&str, &Spanned<String>, &Address),
        (listen_text, listen): (&Spanned<String>, &Address),
    ) -> Result<(), ConfigError> {
        if !loops_back(listen, target) {
            return Ok(());
        }
        Err(self.key_error(
            ctx,
            key,
            text.span(),
            format!(
                "{target} is this tunnel's own `listen` address (line {}): every connection \
                 would come back to it",
                self.line_col(listen_text.span().start).0
            ),
        ))
    }

    /// Refuses a listen address another tunnel in this file already binds.
    fn check_bound(
        &self,
        ctx: &str,
        value: &Spanned<String>,
        addr: &Address,
        bound: &mut Vec<(Address, String, usize)>,
    ) -> Result<(), ConfigError> {
        if addr.port() != 0 || addr.unix_path().is_some() || addr.systemd_name().is_some() {
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

    /// An optional keyword-valued key: `default` when absent, else the value `choices` pairs
    /// with the text; anything else is "invalid WHAT "TEXT": expected EXPECTED".
    fn keyword<T: Copy>(
        &self,
        ctx: &str,
        key: &str,
        value: &Option<Spanned<String>>,
        default: T,
        choices: &[(&str, T)],
        (what, expected): (&str, &str),
    ) -> Result<T, ConfigError> {
        let Some(v) = value else {
            return Ok(default);
        };
        let text = v.get_ref().as_str();
        match choices.iter().find(|(name, _)| *name == text) {
            Some((_, chosen)) => Ok(*chosen),
            None => Err(self.key_error(
                ctx,
                key,
                v.span(),
                format!("invalid {what} {text:?}: expected {expected}"),
            )),
        }
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

    /// [`Self::path_value`] with where it was written, for errors about the file it names.
    fn located_path(
        &self,
        ctx: &str,
        key: &str,
        value: &Spanned<String>,
        dir: &Path,
    ) -> Result<Located<PathBuf>, ConfigError> {
        Ok(Located {
            value: self.path_value(ctx, key, value, dir)?,
            at: self.location(ctx, key, value.span()),
        })
    }
}

/// How messages name a tunnel: `listener "NAME"`, or `listener #N` for a name that cannot be
/// shown (empty, control characters); a duplicate name still names it.
fn tunnel_context(kind: &str, index: usize, name: &str) -> String {
    if name.trim().is_empty() || name.chars().any(char::is_control) {
        format!("{kind} #{}", index + 1)
    } else {
        format!("{kind} {name:?}")
    }
}

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
pub(crate) fn lookup_group(name: &str) -> Result<u32, String> {
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

/// Whether connecting to `target` reaches the socket bound at `listen` on this host: the same
/// address, or a loopback (or unspecified) one on the port of a wildcard `listen` of its family,
/// or `localhost` on the port of a loopback or wildcard `listen`.
fn loops_back(listen: &Address, target: &Address) -> bool {
    match (listen, target) {
        (Address::Ip(l), Address::Ip(t)) => {
            let local = t.ip().is_loopback() || t.ip().is_unspecified();
            l.port() == t.port()
                && l.port() != 0
                && (l.ip() == t.ip()
                    || (l.ip().is_unspecified() && l.is_ipv4() == t.is_ipv4() && local))
        }
        (Address::Ip(l), Address::Host { host, port }) => {
            *port == l.port()
                && host.eq_ignore_ascii_case("localhost")
                && (l.ip().is_loopback() || l.ip().is_unspecified())
        }
        (Address::Host { .. }, Address::Host { .. }) => listen == target,
        _ => false,
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
