//! The async shell on tokio: accept loops, the handshake driver and the full-duplex pump.
//!
//! Everything protocol-related is in [`crate::proto`]; this module only moves bytes between
//! sockets and that core, and applies timeouts and limits. It imports nothing from the config,
//! the daemon or the command line: its settings are its own ([`settings`]), built by the config
//! layer.
//!
//! * [`settings`] — what a listener or a connector tunnel runs with, by role, and the values of
//!   its options.
//! * [`state`] — what one tunnel's connections share: gauges, counters, histogram, tickets.
//! * [`sessions`] — the live sealed sessions of a tunnel and what each is doing, for `status`.
//! * [`limits`] — gauges with a ceiling, per-source token buckets, a log-line limiter.
//! * [`accept`] — the [`Tunnel`] trait and the accept loop both roles share.
//! * [`listener`] / [`connector`] — what each role does with one accepted socket.
//! * [`handshake`] — drives the sans-IO handshake over a socket under a deadline; the record
//!   layer of an established session.
//! * [`signing`] — the listener's signed answers under a budget: inline when idle, else off the
//!   async workers, fair between sources.
//! * [`stream_info`] — the StreamInfo record sent and read first, and redirect's original
//!   destination.
//! * [`pool`] — a connector's warm sessions: established sessions waiting for a client.
//! * [`carry`] — an established session through the pump, and its close line.
//! * [`pump`] — full-duplex copy with sealing, half-close and resets.
//! * [`net`] — socket options, outgoing connects, Unix sockets, accepted peers.
//! * [`activation`] — the listening sockets systemd passes (`listen = "systemd:NAME"`).

pub(crate) mod accept;
pub(crate) mod activation;
pub(crate) mod admission;
pub(crate) mod carry;
pub(crate) mod connector;
pub(crate) mod handshake;
pub(crate) mod kex;
pub(crate) mod limits;
pub(crate) mod listener;
pub(crate) mod net;
pub(crate) mod pool;
pub(crate) mod pre_auth;
pub(crate) mod pump;
pub(crate) mod sessions;
pub(crate) mod settings;
pub(crate) mod signing;
pub(crate) mod state;
pub(crate) mod stream_info;
pub(crate) mod terms;

pub(crate) use accept::Tunnel;
