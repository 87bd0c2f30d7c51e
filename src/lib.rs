//! sealpipe: a transparent encrypting tunnel proxy.
//!
//! Layout, from the inside out:
//!
//! * [`proto`] is the sans-IO protocol core: identities, handshake messages, the handshake
//!   state machine for both roles, the key schedule and the record layer. It does no I/O, reads
//!   no clock and imports nothing else from this crate, so it is deterministic in tests.
//! * [`keyfile`] and [`config`] turn files into the core's types, with errors that name the file,
//!   line and key; [`enroll`] edits the `known_peers` and peers files atomically.
//! * [`tunnel`] is the async shell on tokio: accept loops, the session driver that feeds socket
//!   bytes to the core, and the full-duplex pump.
//! * [`daemon`] runs the tunnels of a config file with reload and drain; [`demo`] runs a whole
//!   tunnel in one process; [`cli`] has one function per subcommand; [`metrics`] serves the
//!   Prometheus endpoint.

pub mod bench;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod enroll;
pub mod keyfile;
pub mod metrics;
pub mod proto;
pub mod trust;
pub mod tunnel;
