//! The connector side: plaintext connections in, each carried sealed to the listener.
//!
//! Every session starts with a StreamInfo record (the client's address, the address it connected
//! to and, in redirect mode, its original destination), sent right after the handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use crate::config::{Address, ConnectorMode, Tuning};
use crate::proto::handshake::{ConnectorParams, Handshake};
use crate::proto::stream::{canonical, StreamInfo};
use crate::tunnel::net::{connect, reset_on_close};
use crate::tunnel::serve::{carry, log_refusal, os_randomness, Tunnel, TunnelState};
use crate::tunnel::session::{self, Records, SessionError};
use crate::tunnel::stream::{original_destination, send_stream_info};

/// Everything a connector tunnel needs; replaced as a whole on reload.
pub struct ConnectorTunnel {
    /// Name from the config.
    pub name: String,
    /// The listener side to connect to; resolved for each connection.
    pub connect: Address,
    /// Identity, pinned listener key, PSK.
    pub params: ConnectorParams,
    /// `forward`, or `redirect`: send each connection's original destination.
    pub mode: ConnectorMode,
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
        let destination = match self.mode {
            ConnectorMode::Forward => None,
            ConnectorMode::Redirect => match original_destination(&plain) {
                Some(d) => Some(d),
                None => {
                    tracing::warn!(tunnel = %self.name, role = "connector", peer = %client,
                        local = %plain.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                        "redirect mode: connection has no original destination (it was not redirected here by a NAT REDIRECT rule), connection reset");
                    reset_on_close(&plain);
                    return;
                }
            },
        };
        let info = StreamInfo {
            client: Some(canonical(client)),
            local: plain.local_addr().ok().map(canonical),
            destination,
        };
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
        state
            .counters
            .handshakes_ok
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut records = Records::new(est, self.tuning.rekey_bytes);
        let fp = records.fingerprint;
        let mut sealed = sealed;
        if let Err(e) = send_stream_info(&mut sealed, &mut records.sealer, &info).await {
            tracing::warn!(tunnel = %self.name, role = "connector", peer = %client, fingerprint = %fp,
                reason = %e, "cannot send the StreamInfo record, connection reset");
            reset_on_close(&plain);
            reset_on_close(&sealed);
            return;
        }
        match destination {
            Some(d) => tracing::info!(tunnel = %self.name, role = "connector", peer = %client,
                fingerprint = %fp, connect = %self.connect, destination = %d, "connection open"),
            None => tracing::info!(tunnel = %self.name, role = "connector", peer = %client,
                fingerprint = %fp, connect = %self.connect, "connection open"),
        }
        carry(
            self.as_ref(),
            plain,
            sealed,
            records,
            leftover,
            client,
            started,
        )
        .await;
    }
}
