//! The listener side: sealed connections in, plaintext to the forward target out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use crate::config::{Address, Tuning};
use crate::proto::handshake::{Handshake, ListenerParams};
use crate::tunnel::net::{connect, reset_on_close, Slot};
use crate::tunnel::pump::{pump, PumpOptions, PumpStats};
use crate::tunnel::serve::{log_close, log_refusal, os_randomness, Tunnel, TunnelState};
use crate::tunnel::session;

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
        handshake: Slot,
        state: Arc<TunnelState>,
    ) {
        let started = Instant::now();
        let hs = Handshake::listener(self.params.clone(), os_randomness());
        let (est, leftover) =
            match session::handshake(&mut sealed, hs, self.tuning.handshake_timeout).await {
                Ok(x) => x,
                Err(e) => {
                    state
                        .counters
                        .handshakes_failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    log_refusal(&self.name, self.role(), peer, &e);
                    return;
                }
            };
        drop(handshake);
        state
            .counters
            .handshakes_ok
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let fp = est.peer.fingerprint();
        // Only now, with the peer verified, is the target contacted.
        let mut target = match connect(&self.forward, self.tuning.connect_timeout).await {
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
            "connection open");
        let (sealer, opener) = est.into_record_layer(self.tuning.rekey_bytes);
        let stats = PumpStats::default();
        let opts = PumpOptions {
            record_size: self.tuning.record_size,
            rekey_interval: self.tuning.rekey_interval,
        };
        let result = {
            let (mut tr, mut tw) = target.split();
            let (mut sr, mut sw) = sealed.split();
            pump(
                &mut tr, &mut tw, &mut sr, &mut sw, sealer, opener, leftover, opts, &stats,
            )
            .await
        };
        if result.is_err() {
            reset_on_close(&target);
            reset_on_close(&sealed);
        }
        log_close(&self.name, self.role(), peer, &fp, &stats, started, &result);
    }
}
