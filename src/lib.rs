//! sealpipe: a transparent encrypting tunnel proxy.
//!
//! # Layout
//!
//! Each folder is one layer, and a layer imports only from the layers below it: `cmd` →
//! `daemon` → `config` → `tunnel` → `files` → `proto`, with `addr` (addresses and destination
//! rules) at the bottom beside `proto`. `cmd` reaches the runtime only through `daemon`,
//! `config` knows only `tunnel::settings` of the runtime (it builds them), and there is no
//! import cycle between files (a `mod.rs` and its own children aside); `tests/it/layers.rs`
//! fails if any of that stops being true. ARCHITECTURE.md is the map: what each layer holds,
//! the path of one connection, where each concern lives.
//!
//! * [`proto`] — the sans-IO protocol core (PROTOCOL.md): identities, messages, the handshake
//!   state machine of each role, the key schedule, the record layer, resumption and the
//!   StreamInfo record. No I/O, no clock, nothing else from this crate.
//! * `addr` — addresses (`host:port`, `unix:PATH`, `systemd:NAME`) and redirect destination
//!   rules, shared by config and tunnel.
//! * `files` — key files, atomic writes, the `known_peers` store, the peers-file format.
//! * `tunnel` — the async shell on tokio: its own settings types, the accept loop, limits, each
//!   role, the handshake driver, the warm pool, the pump, the sockets systemd passes.
//! * [`config`] — the TOML model, its serde layer, the key table, tuning fields, validation
//!   (which builds the runtime's settings), error locations.
//! * `daemon` — runs the tunnels of a config file: build, reload, drain, metrics, the control
//!   socket, and the in-process listener + connector pair of `demo`, `bench` and the tests.
//! * `cmd` — the command line: clap definitions and one file per subcommand.
//!
//! The public surface is deliberate: [`proto`] (the core, as a library: the types its
//! `mod.rs` re-exports), [`config::Config`] and [`cmd`] (for the binary). The `testing` cargo
//! feature adds the hidden `testing` module (what the integration tests drive from outside) and
//! makes `proto`'s internal modules public (for the tests, the benchmarks and the fuzz targets,
//! which build messages and records by hand); this crate's own tests and benchmarks get it
//! through a dev-dependency on itself, the fuzz crate enables it in `fuzz/Cargo.toml`.
//! Everything else is `pub(crate)`.

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub(crate) mod addr;
pub mod cmd;
pub mod config;
// Without the `testing` feature, the `pub` items that only `testing` re-exports (the tunnel
// types and what their signatures name, the pair helpers of `daemon`) are not reachable from
// outside the crate: their `pub` is for the tests.
#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
pub(crate) mod daemon;
#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
pub(crate) mod files;
pub mod proto;
/// What the integration tests (`tests/`) drive from outside the crate, beyond the public
/// [`proto`] core and [`config::Config`]: a listener and a connector in one process, the tunnel
/// types and their shared state. Not a stable API; only with the `testing` feature.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing {
    pub use crate::addr::Address;
    pub use crate::config::Tuning;
    pub use crate::daemon::pair::{
        connector_settings, echo_service, listener_settings, loopback, round_trip, spawn_pair,
        spawn_tunnel,
    };
    pub use crate::tunnel::connector::ConnectorTunnel;
    pub use crate::tunnel::listener::ListenerTunnel;
    pub use crate::tunnel::settings::{
        ConnectorMode, ConnectorSettings, ListenerSettings, ProxyProtocol, Revoke, SharedSettings,
    };
    pub use crate::tunnel::state::TunnelState;
}
#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
pub(crate) mod tunnel;

/// The version line: crate version and protocol version. `concat!` takes literals only, so the
/// protocol version is written out here; a unit test checks it is
/// [`PROTOCOL_VERSION`](proto::PROTOCOL_VERSION), the one on the wire.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (protocol 2)");
