//! The list of tuning keys, written once: each key's field, type, default, the type serde reads
//! it as and the function that checks it. `super::tuning` makes the [`super::Tuning`] struct and
//! its checks from it, `super::raw` the keys of each raw section, `super::schema` their rows in
//! the table of keys. On its own so that none of them imports another for it.

/// The tuning keys, in file order (the order of the "expected one of" list of an unknown key,
/// and of the checks). Each is written
///
/// ```text
/// /// DOC
/// KEY: TYPE = DEFAULT, parsed from RAW by CHECK;
/// ```
///
/// where `RAW` is what serde reads the value as and `CHECK` turns a `&RAW` into a `TYPE`, or
/// into the problem to report at the value. `tuning_fields!(callback! { ARGS })` calls
/// `callback! { { ARGS } KEYS… }`.
macro_rules! tuning_fields {
    ($callback:ident ! { $($args:tt)* }) => {
        $callback! {
            { $($args)* }
            /// Rekey each direction after this many bytes of plaintext, from 1 KiB to 128 TiB
            /// (2^31 records of 64 KiB, after which a key is replaced anyway); 1 MiB to 64 GiB is
            /// the sane range, outside it a warning. A bare number is bytes.
            rekey_bytes: u64 = 1 << 30, parsed from SizeText by rekey_bytes;
            /// Fresh hybrid keys (X25519 + ML-KEM-768) inside a long-lived session this often,
            /// at least 1 s (under a minute: a warning): the connector starts a key exchange
            /// once its session's keys are this old, and both sides refuse keys 1.5 times as old
            /// (the session ends), so a key stolen from memory stops opening traffic by then.
            /// Set it alike on both ends. `"off"`: no exchange by time and no age limit (HKDF
            /// rekeys by `rekey_bytes` only). Default 2 min (was off before protocol 2.1).
            rekey_interval: Option<Duration> = Some(Duration::from_secs(120)),
                parsed from DurationText by rekey_interval;
            /// A handshake not complete after this long is dropped; at least 100 ms (under a
            /// second: a warning).
            handshake_timeout: Duration = Duration::from_secs(10),
                parsed from DurationText by handshake_timeout;
            /// Timeout of each outgoing TCP connect; at least 100 ms (under a second: a
            /// warning).
            connect_timeout: Duration = Duration::from_secs(10),
                parsed from DurationText by connect_timeout;
            /// On SIGTERM or SIGINT, how long open connections may drain before they are cut.
            drain_timeout: Duration = Duration::from_secs(30),
                parsed from DurationText by duration;
            /// Most connections per tunnel at once (handshaking or established); past it new ones
            /// are dropped.
            max_connections: usize = 1024, parsed from i64 by count;
            /// Most handshakes worked on at once per tunnel; more wait their turn (within
            /// `handshake_timeout`). A listener's hello holds one only while it is read and
            /// answered, not while it waits for a signature or for the connector's answer.
            max_handshakes: usize = 128, parsed from i64 by count;
            /// New connections accepted per second from one source IP address (0: no limit). Past
            /// it, connections are dropped at accept and a warning is logged once per interval.
            source_rate_limit: u32 = 0, parsed from i64 by source_rate_limit;
            /// Listener: full handshakes (those that need an RSA signature; resumptions do not
            /// count) started per second from one source, an IPv4 address or an IPv6 /64, with
            /// bursts of as many, and at most 128 of its hellos queued for a signature at once
            /// (0: neither limit). Past it, hellos get no answer.
            source_handshake_rate: u32 = 256, parsed from i64 by source_handshake_rate;
            /// Listener: RSA signatures made per second for full handshakes, all sources together,
            /// with bursts of as many (0: no budget). Hellos wait their turn in a queue that is
            /// fair between sources; `signature_cpu` caps the time they take.
            signature_rate: u32 = 700, parsed from i64 by signature_rate;
            /// Listener: percent of one core's time that answering full handshakes (signing,
            /// X25519, ML-KEM) may take, all sources together, with bursts of one second's
            /// worth (0: no cap). It holds whatever the key size and the machine's speed, where
            /// `signature_rate` counts signatures.
            signature_cpu: u32 = 10, parsed from i64 by signature_cpu;
            /// Largest plaintext per sealed record, from 1 KiB to 64 KiB; a record is only as
            /// large as the data at hand.
            record_size: usize = 64 * 1024, parsed from SizeText by record_size;
            /// Session resumption (PROTOCOL.md §9): later connections between the same two peers
            /// skip the RSA work; `false`: a full handshake every time.
            resumption: bool = true, parsed from bool by flag;
            /// How long the tickets of one full handshake serve (through every resumption after
            /// it), from 1 s to 24 h.
            resumption_lifetime: Duration = Duration::from_secs(3600),
                parsed from DurationText by resumption_lifetime;
            /// How many resumptions in a row may follow one full handshake, from 1 to 1000000;
            /// then a full handshake starts a new chain. It bounds a chain's depth, not its
            /// sessions: each ticket serves one connection and hands on two, so a chain may
            /// yield up to 2^(n+1) - 2 resumed sessions; `resumption_lifetime` bounds its time.
            resumption_uses: u32 = 1000, parsed from i64 by resumption_uses;
            /// An established connection that moves no byte either way for this long (at least
            /// 100 ms; under 10 s: a warning) is reset (logged `idle for …`); `"off"`, the default,
            /// keeps idle connections.
            idle_timeout: Option<Duration> = None, parsed from DurationText by idle_timeout;
            /// A sealed session whose peer is not heard from for this long is reset and its
            /// client with it (logged `peer silent for …`): an authenticated keepalive (a Ping
            /// after half of it in silence) keeps a live peer heard, and the kernel's
            /// `TCP_USER_TIMEOUT` is set to three times it on sealed sockets. At least 1 s (under 5 s: a
            /// warning); `"off"`: no keepalive (a hung peer then holds its sessions).
            dead_peer_timeout: Option<Duration> = Some(Duration::from_secs(20)),
                parsed from DurationText by dead_peer_timeout;
            /// Listener: the longest a sealed session lives, reused or not, from 1 s to 24 h,
            /// counted from its handshake: past it, the session finishes the stream it carries and
            /// is closed, so that the connector's next client gets a fresh (or resumed) session.
            /// Keep it above the connectors' `session_reuse_age`, which retires sessions first.
            session_max_age: Duration = Duration::from_secs(3600),
                parsed from DurationText by session_max_age;
            /// Connector: a session whose stream ended cleanly both ways may carry the next client
            /// (PROTOCOL.md §4.3); `false`: one session per client. A listener ignores it.
            session_reuse: bool = true, parsed from bool by flag;
            /// Connector: most streams (clients) one session carries, 1 to 1000000.
            session_reuse_streams: u32 = 1000, parsed from i64 by session_reuse_streams;
            /// Connector: a session this old carries no new client (it is closed after its
            /// stream).
            session_reuse_age: Duration = Duration::from_secs(600),
                parsed from DurationText by duration;
            /// Connector: warm sessions kept ready for new clients, at least (0 to 4096; at most
            /// `pool_max`), while clients came within the last 10 minutes.
            pool_min: usize = 1, parsed from i64 by pool_size;
            /// Connector: warm sessions kept ready, at most (0 to 4096); `0` turns warm sessions
            /// (and so reuse) off. Between the two the pool follows the recent demand.
            pool_max: usize = 64, parsed from i64 by pool_size;
        }
    };
}
pub(crate) use tuning_fields;
