//! The connector side: plaintext connections in, each carried sealed to the listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use crate::config::{Address, Tuning};
use crate::proto::handshake::{ConnectorParams, Handshake, Resumption};
use crate::tunnel::net::{connect, reset_on_close};
use crate::tunnel::serve::{
    carry, count_handshake, log_refusal, os_randomness, ticket_policy, Tunnel, TunnelState,
};
use crate::tunnel::session::{self, SessionError};

/// Everything a connector tunnel needs; replaced as a whole on reload.
pub struct ConnectorTunnel {
    /// Name from the config.
    pub name: String,
    /// The listener side to connect to; resolved for each connection.
    pub connect: Address,
    /// Identity, pinned listener key, PSK.
    pub params: ConnectorParams,
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

    async fn handle(
        self: Arc<Self>,
        plain: TcpStream,
        client: SocketAddr,
        state: Arc<TunnelState>,
    ) {
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
            let hs = if self.tuning.resumption {
                let resumption = Resumption {
                    store: state.connector_tickets.clone(),
                    policy: ticket_policy(&self.tuning),
                    now: Instant::now(),
                };
                Handshake::connector_resuming(self.params.clone(), os_randomness(), resumption)
            } else {
                Handshake::connector(self.params.clone(), os_randomness())
            };
            let (est, leftover) =
                session::handshake(&mut sealed, hs, &[], deadline, timeout).await?;
            Ok::<_, SessionError>((sealed, est, leftover, slot))
        };
        let (sealed, est, leftover, handshake) = match attempt.await {
            Ok(x) => x,
            Err(e) => {
                state
                    .counters
                    .handshakes_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                log_refusal(&self.name, self.role(), client, &e);
                // The local client learns that its connection failed, not that it ended.
                reset_on_close(&plain);
                return;
            }
        };
        drop(handshake);
        count_handshake(&state, &est);
        let fp = est.peer.fingerprint();
        tracing::info!(tunnel = %self.name, role = "connector", peer = %client, fingerprint = %fp,
            connect = %self.connect, resumed = est.resumed, "connection open");
        if est.ticket_refused.is_some() {
            tracing::debug!(tunnel = %self.name, role = "connector", peer = %client,
                "the listener refused the resumption ticket, full handshake done");
        }
        carry(self.as_ref(), plain, sealed, est, leftover, client, started).await;
    }
}
