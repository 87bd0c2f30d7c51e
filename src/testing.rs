//! What the integration tests (`tests/`) and the fuzz targets (`fuzz/`) drive from outside the
//! crate, beyond the public [`crate::proto`] core and [`crate::config::Config`]: a listener and a
//! connector in one process, the tunnel types and their shared state. Not a stable API.

pub use crate::cmd::pair::{echo_service, loopback, round_trip, spawn_pair, spawn_tunnel};
pub use crate::config::{Address, ConnectorMode, ProxyProtocol, Revoke, Tuning};
pub use crate::tunnel::connector::ConnectorTunnel;
pub use crate::tunnel::listener::ListenerTunnel;
pub use crate::tunnel::state::TunnelState;
