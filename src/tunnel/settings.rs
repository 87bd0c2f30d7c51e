//! The runtime's own settings: what one listener or connector tunnel runs with, grouped by
//! role, and the value types its options take.
//!
//! The config layer builds these from a validated file (`[defaults]` merged with a tunnel's own
//! keys; the keys, their defaults and checks are the config layer's, and `sealpipe.toml(5)`
//! documents them); the runtime reads nothing else. A listener ignores the connector-only keys
//! and a connector the listener-only ones, so each role's settings hold only its own.

use std::time::Duration;

/// What both roles use: timeouts, connection limits, the record layer and resumption.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedSettings {
    /// A handshake not complete after this long is dropped (`handshake_timeout`).
    pub handshake_timeout: Duration,
    /// Timeout of each outgoing TCP connect (`connect_timeout`).
    pub connect_timeout: Duration,
    /// An established connection that moves no byte either way for this long is reset;
    /// `None`: idle connections are kept (`idle_timeout`).
    pub idle_timeout: Option<Duration>,
    /// A session whose peer is not heard from for this long is closed, its client reset; a
    /// Ping goes after half of it in silence (PROTOCOL.md §4.4). `None`: no keepalive
    /// (`dead_peer_timeout`).
    pub dead_peer_timeout: Option<Duration>,
    /// Most connections at once, handshaking or established; past it new ones are dropped
    /// (`max_connections`).
    pub max_connections: usize,
    /// Most handshakes worked on at once; more wait their turn (`max_handshakes`).
    pub max_handshakes: usize,
    /// New connections accepted per second from one source address; 0: no limit
    /// (`source_rate_limit`).
    pub source_rate_limit: u32,
    /// Rekey each direction after this many bytes of plaintext (`rekey_bytes`).
    pub rekey_bytes: u64,
    /// Fresh hybrid keys this often, refused at 1.5 times as old (`rekey_interval`,
    /// `tunnel::kex`); `None`: neither.
    pub rekey_interval: Option<Duration>,
    /// Largest plaintext per sealed record (`record_size`).
    pub record_size: usize,
    /// Session resumption on (`resumption`).
    pub resumption: bool,
    /// How long the tickets of one full handshake serve (`resumption_lifetime`).
    pub resumption_lifetime: Duration,
    /// How many resumptions in a row may follow one full handshake (`resumption_uses`).
    pub resumption_uses: u32,
}

/// A listener tunnel's settings: the shared ones and the budget of its full-handshake answers
/// (SECURITY.md, "Flooding the listener").
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerSettings {
    /// What both roles use.
    pub shared: SharedSettings,
    /// Full handshakes started per second from one source (an IPv4 address or an IPv6 /64),
    /// with bursts of as many, and a bound on its hellos queued for a signature; 0: neither
    /// (`source_handshake_rate`).
    pub source_handshake_rate: u32,
    /// RSA signatures per second for full handshakes, all sources together; 0: no budget
    /// (`signature_rate`).
    pub signature_rate: u32,
    /// Percent of one core's time that answering full handshakes may take; 0: no cap
    /// (`signature_cpu`).
    pub signature_cpu: u32,
    /// A sealed session this old carries no new stream: it finishes the one it carries and is
    /// closed (`session_max_age`).
    pub session_max_age: Duration,
}

/// A connector tunnel's settings: the shared ones, session reuse and the warm-session pool
/// (PROTOCOL.md §4.3).
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectorSettings {
    /// What both roles use.
    pub shared: SharedSettings,
    /// A session whose stream ended cleanly both ways may carry the next client
    /// (`session_reuse`).
    pub session_reuse: bool,
    /// Most streams (clients) one session carries (`session_reuse_streams`).
    pub session_reuse_streams: u32,
    /// A session this old carries no new client (`session_reuse_age`).
    pub session_reuse_age: Duration,
    /// Warm sessions kept ready, at least, while clients came recently (`pool_min`).
    pub pool_min: usize,
    /// Warm sessions kept ready, at most; 0: no warm sessions and no reuse (`pool_max`).
    pub pool_max: usize,
}

/// What a reload does to the open connections of a key a listener no longer trusts (`revoke`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Revoke {
    /// `revoke = "cut"` (the default): they are reset at the reload.
    #[default]
    Cut,
    /// `revoke = "new-only"`: they run until they end; only new connections are refused.
    NewOnly,
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
