//! The async shell on tokio: accept loops, the handshake driver and the full-duplex pump.
//!
//! Everything protocol-related is in [`crate::proto`]; this module only moves bytes between
//! sockets and that core, and applies timeouts and limits.
//!
//! * [`serve`] — the accept loop both roles share, limits, log lines.
//! * [`listener`] / [`connector`] — what each role does with one accepted socket.
//! * [`session`] — drives the sans-IO handshake over a socket under a deadline.
//! * [`stream`] — the StreamInfo record sent and read first, and redirect's original destination.
//! * [`pump`] — full-duplex copy with sealing, half-close and resets.
//! * [`net`] — socket options, outgoing connects, gauges.

pub mod connector;
pub mod listener;
pub mod net;
pub mod pump;
pub mod serve;
pub mod session;
pub mod stream;
