//! The one way from the config model into the runtime: a tunnel's [`Tuning`] turned into the
//! settings of its role ([`crate::tunnel::settings`]), which `daemon` hands to the tunnels it
//! builds and reloads.

use super::{ConnectorConfig, ListenerConfig, Tuning};
use crate::tunnel::settings::{ConnectorSettings, ListenerSettings, SharedSettings};

/// The runtime's settings of a tunnel with this tuning: the config layer's one way into
/// `crate::tunnel::settings`. A listener takes the shared and listener-only keys, a connector
/// the shared and connector-only ones; `drain_timeout` is the daemon's (read from the config).
impl Tuning {
    fn shared(&self) -> SharedSettings {
        SharedSettings {
            handshake_timeout: self.handshake_timeout,
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
            dead_peer_timeout: self.dead_peer_timeout,
            max_connections: self.max_connections,
            max_handshakes: self.max_handshakes,
            source_rate_limit: self.source_rate_limit,
            rekey_bytes: self.rekey_bytes,
            rekey_interval: self.rekey_interval,
            record_size: self.record_size,
            resumption: self.resumption,
            resumption_lifetime: self.resumption_lifetime,
            resumption_uses: self.resumption_uses,
        }
    }

    /// A listener tunnel's settings.
    pub(crate) fn listener(&self) -> ListenerSettings {
        ListenerSettings {
            shared: self.shared(),
            source_handshake_rate: self.source_handshake_rate,
            signature_rate: self.signature_rate,
            signature_cpu: self.signature_cpu,
            session_max_age: self.session_max_age,
        }
    }

    /// A connector tunnel's settings.
    pub(crate) fn connector(&self) -> ConnectorSettings {
        ConnectorSettings {
            shared: self.shared(),
            session_reuse: self.session_reuse,
            session_reuse_streams: self.session_reuse_streams,
            session_reuse_age: self.session_reuse_age,
            pool_min: self.pool_min,
            pool_max: self.pool_max,
        }
    }
}

impl ListenerConfig {
    /// The runtime's settings of this listener.
    pub(crate) fn settings(&self) -> ListenerSettings {
        self.tuning.listener()
    }
}

impl ConnectorConfig {
    /// The runtime's settings of this connector.
    pub(crate) fn settings(&self) -> ConnectorSettings {
        self.tuning.connector()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Every tuning key reaches the role that uses it, unchanged.
    #[test]
    fn the_runtime_settings_carry_each_key_to_its_role() {
        let t = Tuning {
            rekey_bytes: 1,
            rekey_interval: Some(Duration::from_secs(2)),
            handshake_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(4),
            drain_timeout: Duration::from_secs(5),
            max_connections: 6,
            max_handshakes: 7,
            source_rate_limit: 8,
            source_handshake_rate: 9,
            signature_rate: 10,
            signature_cpu: 11,
            record_size: 12,
            resumption: false,
            resumption_lifetime: Duration::from_secs(13),
            resumption_uses: 14,
            idle_timeout: Some(Duration::from_secs(15)),
            dead_peer_timeout: Some(Duration::from_secs(21)),
            session_max_age: Duration::from_secs(20),
            session_reuse: false,
            session_reuse_streams: 16,
            session_reuse_age: Duration::from_secs(17),
            pool_min: 18,
            pool_max: 19,
        };
        let shared = SharedSettings {
            handshake_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(4),
            idle_timeout: Some(Duration::from_secs(15)),
            dead_peer_timeout: Some(Duration::from_secs(21)),
            max_connections: 6,
            max_handshakes: 7,
            source_rate_limit: 8,
            rekey_bytes: 1,
            rekey_interval: Some(Duration::from_secs(2)),
            record_size: 12,
            resumption: false,
            resumption_lifetime: Duration::from_secs(13),
            resumption_uses: 14,
        };
        assert_eq!(
            t.listener(),
            ListenerSettings {
                shared: shared.clone(),
                source_handshake_rate: 9,
                signature_rate: 10,
                signature_cpu: 11,
                session_max_age: Duration::from_secs(20),
            }
        );
        assert_eq!(
            t.connector(),
            ConnectorSettings {
                shared,
                session_reuse: false,
                session_reuse_streams: 16,
                session_reuse_age: Duration::from_secs(17),
                pool_min: 18,
                pool_max: 19,
            }
        );
    }
}
