//! The listener side: sealed connections in, plaintext to the forward target out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use std::sync::atomic::Ordering;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::{Address, Tuning};
use crate::proto::handshake::{check_connector_hello, Handshake, ListenerParams, Resumption};
use crate::proto::messages::{check_first_header, MAX_FIRST_MESSAGE_LEN, MSG_HEADER_LEN};
use crate::tunnel::net::{connect, reset_on_close};
use crate::tunnel::serve::{
    carry, count_handshake, log_refusal, os_randomness, ticket_policy, Tunnel, TunnelState,
};
use crate::tunnel::session::{self, SessionError};

/// Everything a listener tunnel needs; replaced as a whole on reload.
pub struct ListenerTunnel {
    /// Name from the config.
    pub name: String,
    /// The plaintext service.
    pub forward: Address,
    /// Identity, trusted connectors, PSK.
    pub params: ListenerParams,
    /// Timeouts and limits.
    pub tuning: Tuning,
}

impl Tunnel for ListenerTunnel {
    fn name(&self) -> &str {
        &self.name
    }

    fn role(&self) -> &'static str {
        "listener"
    }

    fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    async fn handle(
        self: Arc<Self>,
        mut sealed: TcpStream,
        peer: SocketAddr,
        state: Arc<TunnelState>,
    ) {
        let started = Instant::now();
        let timeout = self.tuning.handshake_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let refused = |e: SessionError| {
            state
                .counters
                .handshakes_failed
                .fetch_add(1, Ordering::Relaxed);
            log_refusal(&self.name, self.role(), peer, &e);
        };
        // Before any work, and holding no handshake slot: the fixed-size hello (ConnectorHello,
        // or ResumeHello, as its header says) and its mac1. A scanner, a slow sender or a peer
        // without our fingerprint costs a socket and at most 133 bytes.
        let mut buf = [0u8; MAX_FIRST_MESSAGE_LEN];
        let read_hello = async {
            sealed.read_exact(&mut buf[..MSG_HEADER_LEN]).await?;
            let mut header = [0u8; MSG_HEADER_LEN];
            header.copy_from_slice(&buf[..MSG_HEADER_LEN]);
            let len = match check_first_header(&header) {
                Ok((_, len)) => MSG_HEADER_LEN + len,
                Err(e) => return Ok(Err(e)),
            };
            sealed.read_exact(&mut buf[MSG_HEADER_LEN..len]).await?;
            Ok::<_, std::io::Error>(Ok(len))
        };
        let len = match tokio::time::timeout_at(deadline, read_hello).await {
            Ok(Ok(Ok(len))) => len,
            Ok(Ok(Err(e))) => {
                state.counters.mac1_rejected.fetch_add(1, Ordering::Relaxed);
                return refused(SessionError::Handshake(e.into()));
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return refused(SessionError::Eof)
            }
            Ok(Err(e)) => return refused(SessionError::Io(e)),
            Err(_) => return refused(SessionError::Timeout(timeout)),
        };
        let hello = &buf[..len];
        let own = self.params.identity.public().fingerprint();
        if let Err(e) = check_connector_hello(&own, hello) {
            state.counters.mac1_rejected.fetch_add(1, Ordering::Relaxed);
            return refused(e.into());
        }
        // The costly part (X25519, an RSA signature and a verification) under the cap.
        let Some(handshake) = state.handshake_slot(&self.tuning, deadline).await else {
            return refused(SessionError::Timeout(timeout));
        };
        let hs = if self.tuning.resumption {
            let resumption = Resumption {
                store: state.tickets.clone(),
                policy: ticket_policy(&self.tuning),
                now: Instant::now(),
            };
            Handshake::listener_resuming(self.params.clone(), os_randomness(), resumption)
        } else {
            Handshake::listener(self.params.clone(), os_randomness())
        };
        let (est, leftover) =
            match session::handshake(&mut sealed, hs, hello, deadline, timeout).await {
                Ok(x) => x,
                Err(e) => return refused(e),
            };
        drop(handshake);
        count_handshake(&state, &est);
        let fp = est.peer.fingerprint();
        // Only now, with the peer verified, is the target contacted.
        let target = match connect(&self.forward, self.tuning.connect_timeout).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(tunnel = %self.name, role = "listener", %peer, fingerprint = %fp,
                    forward = %self.forward, reason = %e, "forward target unreachable, connection reset");
                reset_on_close(&sealed);
                return;
            }
        };
        tracing::info!(tunnel = %self.name, role = "listener", %peer, fingerprint = %fp,
            peer_name = self.params.trust.name_of(&fp).unwrap_or(""), forward = %self.forward,
            resumed = est.resumed, "connection open");
        if let Some(why) = est.ticket_refused {
            tracing::debug!(tunnel = %self.name, role = "listener", %peer, reason = %why,
                "resumption ticket refused, full handshake done");
        }
        carry(self.as_ref(), target, sealed, est, leftover, peer, started).await;
    }
}
