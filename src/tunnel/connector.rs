//! The connector side: plaintext connections in, each carried sealed to the listener.

use std::sync::Arc;
use std::time::Instant;

use crate::config::{Address, SocketPermissions, Tuning};
use crate::proto::handshake::{ConnectorParams, Handshake};
use crate::tunnel::net::{connect, Conn, Peer};
use crate::tunnel::serve::{carry, log_refusal, os_randomness, Tunnel, TunnelState};
use crate::tunnel::session::{self, SessionError};

/// Everything a connector tunnel needs; replaced as a whole on reload.
pub struct ConnectorTunnel {
    /// Name from the config.
    pub name: String,
    /// The listener side to connect to; resolved for each connection.
    pub connect: Address,
    /// Identity, pinned listener key, PSK.
    pub params: ConnectorParams,
    /// Mode and group of a `unix:` listen socket.
    pub socket: SocketPermissions,
    /// Timeouts and limits.
    pub tuning: Tuning,
}

impl Tunnel for ConnectorTunnel {
    fn name(&self) -> &str {
        &self.name
    }

    fn role(&self) -> &'static str {
        "connector"
    }

    fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    fn socket_permissions(&self) -> Option<&SocketPermissions> {
        Some(&self.socket)
    }

    async fn handle(self: Arc<Self>, plain: Conn, client: Peer, state: Arc<TunnelState>) {
        let started = Instant::now();
        let timeout = self.tuning.handshake_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let attempt = async {
            // Local clients past `max_handshakes` wait their turn rather than being dropped.
            let slot = state
                .handshake_slot(&self.tuning, deadline)
                .await
                .ok_or(SessionError::Timeout(timeout))?;
            let mut sealed = connect(&self.connect, self.tuning.connect_timeout)
                .await
                .map_err(SessionError::Io)?;
            let hs = Handshake::connector(self.params.clone(), os_randomness());
            let (est, leftover) =
                session::handshake(&mut sealed, hs, &[], deadline, timeout).await?;
            Ok::<_, SessionError>((sealed, est, leftover, slot))
        };
        let (sealed, est, leftover, handshake) = match attempt.await {
            Ok(x) => x,
            Err(e) => {
                state.handshake_failed(&e);
                log_refusal(&self.name, self.role(), &client, &e);
                // The local client learns that its connection failed, not that it ended (a
                // Unix socket client just sees it closed: Unix streams have no reset).
                plain.reset_on_close();
                return;
            }
        };
        drop(handshake);
        state.handshake_ok(started.elapsed());
        let fp = est.peer.fingerprint();
        tracing::info!(tunnel = %self.name, role = "connector", peer = %client, fingerprint = %fp,
            connect = %self.connect, "connection open");
        carry(
            self.as_ref(),
            plain,
            sealed,
            est,
            leftover,
            client,
            started,
            &state,
        )
        .await;
    }
}
