//! The connector side: plaintext connections in, each carried sealed to the listener.
//!
//! Every session starts with a StreamInfo record (the client's address, the address it connected
//! to and, in redirect mode, its original destination), sent right after the handshake.

use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use crate::config::{Address, ConnectorMode, SocketPermissions, Tuning};
use crate::files::known_peers::{Recorded, TofuStore};
use crate::proto::handshake::Role;
use crate::proto::handshake::{
    ConnectorParams, Established, Handshake, HandshakeError, ListenerPin, Resumption,
};
use crate::proto::identity::{Fingerprint, TrustList};
use crate::proto::record::{Alert, AlertCode};
use crate::proto::stream::{canonical, StreamInfo};
use crate::tunnel::accept::{log_refusal, os_randomness};
use crate::tunnel::carry::carry;
use crate::tunnel::limits::Slot;
use crate::tunnel::net::{connect, reset_on_close, Conn, Peer};
use crate::tunnel::session::{self, Records, SessionError};
use crate::tunnel::state::{count_resumption, ticket_policy, TunnelState};
use crate::tunnel::stream_info::{original_destination, send_stream_info};
use crate::tunnel::Tunnel;

/// Everything a connector tunnel needs; replaced as a whole on reload.
pub struct ConnectorTunnel {
    /// Name from the config.
    pub name: String,
    /// The listener side to connect to; resolved for each connection.
    pub connect: Address,
    /// Identity, pinned listener key (the first of `peer`), PSK.
    pub params: ConnectorParams,
    /// The keys `peer` pins after the first (`peer = [new, old]`), in order: a hello the
    /// listener leaves unanswered is sent again, keyed for the next one, within the same
    /// `handshake_timeout` (PROTOCOL.md §2). Empty for one pin and for TOFU.
    pub fallback_pins: Vec<Fingerprint>,
    /// Mode and group of a `unix:` listen socket.
    pub socket: SocketPermissions,
    /// `peer = "tofu"`: the `known_peers` entry that gives the pin (`params.listener` is then
    /// only a default).
    pub tofu: Option<Arc<TofuStore>>,
    /// `forward`, or `redirect`: send each connection's original destination.
    pub mode: ConnectorMode,
    /// Timeouts and limits.
    pub tuning: Tuning,
}

impl Tunnel for ConnectorTunnel {
    fn name(&self) -> &str {
        &self.name
    }

    fn role(&self) -> Role {
        Role::Connector
    }

    fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    fn keeps_open(&self, fp: &Fingerprint) -> bool {
        match &self.params.listener {
            ListenerPin::Key(pinned) | ListenerPin::Probe(pinned) => {
                pinned == fp || self.fallback_pins.contains(fp)
            }
            // TOFU: the recorded key is checked anew by every handshake.
            ListenerPin::FirstContact => true,
        }
    }

    /// The listener proved its key and refused ours after authenticating it (PROTOCOL.md §6).
    fn describe_refusal(&self, alert: &Alert) -> String {
        match alert.code() {
            AlertCode::Untrusted => format!(
                "the listener refused this connector's key {} (not in its peers)",
                self.params.identity.public().fingerprint()
            ),
            AlertCode::ServiceMismatch => format!(
                "the listener serves {:?}, this connector asked for {:?} (`service`)",
                String::from_utf8_lossy(alert.detail()),
                &*self.params.service
            ),
        }
    }

    /// With several pins, their names in `status`: `pin 1 of 2`, `pin 2 of 2`.
    fn trust(&self) -> Option<Arc<TrustList>> {
        let pins = self.pins();
        (pins.len() > 1).then(|| {
            let n = pins.len();
            Arc::new(
                pins.iter()
                    .enumerate()
                    .map(|(i, fp)| (*fp, Some(format!("pin {} of {n}", i + 1))))
                    .collect(),
            )
        })
    }

    /// None in redirect mode, which listens on TCP only (a socket systemd passes is checked
    /// against that).
    fn socket_permissions(&self) -> Option<&SocketPermissions> {
        match self.mode {
            ConnectorMode::Forward => Some(&self.socket),
            ConnectorMode::Redirect => None,
        }
    }

    async fn handle(self: Arc<Self>, plain: Conn, client: Peer, state: Arc<TunnelState>) {
        let started = Instant::now();
        let plain_tcp = match &plain {
            Conn::Tcp(t) => Some(t),
            Conn::Unix(_) => None,
        };
        let destination = match self.mode {
            ConnectorMode::Forward => None,
            ConnectorMode::Redirect => match plain_tcp.and_then(original_destination) {
                Some(d) => Some(d),
                None => {
                    tracing::warn!(tunnel = %self.name, role = %Role::Connector, peer = %client,
                        local = %plain_tcp.and_then(|t| t.local_addr().ok()).map(|a| a.to_string()).unwrap_or_default(),
                        "redirect mode: connection has no original destination (it was not redirected here by a NAT REDIRECT rule), connection reset");
                    plain.reset_on_close();
                    return;
                }
            },
        };
        let info = StreamInfo {
            client: client.socket_addr().map(canonical),
            local: plain_tcp.and_then(|t| t.local_addr().ok()).map(canonical),
            destination,
        };
        let timeout = self.tuning.handshake_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let params = match self.tofu_params().await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(tunnel = %self.name, role = %Role::Connector, peer = %client,
                    error = %e, "cannot read known_peers: connection refused");
                plain.reset_on_close();
                return;
            }
        };
        let first_contact = params.listener == ListenerPin::FirstContact;
        let pin = params.listener;
        let mut result = self.attempt(params.clone(), &state, deadline).await;
        // `peer = [first, next]`: a hello the listener did not answer (closed without a byte:
        // not its key) is sent again on a new connection, keyed for the next pin.
        let mut tried = 1;
        for next in &self.fallback_pins {
            if !matches!(result, Err(SessionError::Unanswered)) {
                break;
            }
            tracing::debug!(tunnel = %self.name, role = %Role::Connector, peer = %client,
                connect = %self.connect, pin = tried, next = %next,
                "the listener did not answer the hello for pin {tried}; trying pin {}", tried + 1);
            tried += 1;
            let next = ConnectorParams {
                listener: ListenerPin::Key(*next),
                ..params.clone()
            };
            result = self.attempt(next, &state, deadline).await;
        }
        if let (Some(_), ListenerPin::Key(recorded), Err(SessionError::Unanswered)) =
            (&self.tofu, pin, &result)
        {
            // TOFU, key recorded, and the listener did not answer the pinned hello: if its key
            // changed, a first-contact hello that accepts only the recorded key tells us which
            // key it presents now (refused before we sign anything).
            let probe = ConnectorParams {
                listener: ListenerPin::Probe(recorded),
                ..params
            };
            result = self.attempt(probe, &state, deadline).await;
        }
        let (sealed, est, leftover, unsent, handshake) = match result {
            Ok(x) => x,
            Err(e) => {
                state.handshake_failed(&e);
                if !self.log_tofu_failure(&client, first_contact, &e)
                    && !self.log_unanswered(&client, pin, &e)
                {
                    log_refusal(&self.name, self.role(), &client, &e);
                }
                // The local client learns that its connection failed, not that it ended (a
                // Unix socket client just sees it closed: Unix streams have no reset).
                plain.reset_on_close();
                return;
            }
        };
        drop(handshake);
        state.handshake_ok(started.elapsed());
        count_resumption(&state, &est);
        let (resumed, ticket_refused) = (est.resumed, est.ticket_refused);
        let mut records = Records::new(est, self.tuning.rekey_bytes);
        let fp = records.fingerprint;
        if first_contact && !self.record_first_contact(&client, fp).await {
            plain.reset_on_close();
            reset_on_close(&sealed);
            return;
        }
        let mut sealed = sealed;
        if let Err(e) = send_stream_info(&mut sealed, &mut records.sealer, &info, unsent).await {
            tracing::warn!(tunnel = %self.name, role = %Role::Connector, peer = %client, fingerprint = %fp,
                reason = %e, "cannot send the StreamInfo record, connection reset");
            plain.reset_on_close();
            reset_on_close(&sealed);
            return;
        }
        // Which of several pins matched (`fingerprint` is the key the listener proved).
        let pin = (!self.fallback_pins.is_empty()).then_some(tried);
        match destination {
            Some(d) => tracing::info!(tunnel = %self.name, role = %Role::Connector, peer = %client,
                fingerprint = %fp, pin, connect = %self.connect, destination = %d, resumed,
                "connection open"),
            None => tracing::info!(tunnel = %self.name, role = %Role::Connector, peer = %client,
                fingerprint = %fp, pin, connect = %self.connect, resumed, "connection open"),
        }
        if ticket_refused.is_some() {
            tracing::debug!(tunnel = %self.name, role = %Role::Connector, peer = %client,
                "the listener refused the resumption ticket, full handshake done");
        }
        carry(
            self.as_ref(),
            plain,
            sealed,
            records,
            leftover,
            client,
            started,
            resumed,
            &state,
        )
        .await;
    }
}

impl ConnectorTunnel {
    /// Connects to the listener and runs one handshake, holding a handshake slot.
    async fn attempt(
        &self,
        params: ConnectorParams,
        state: &TunnelState,
        deadline: tokio::time::Instant,
    ) -> Result<(TcpStream, Established, Vec<u8>, Vec<u8>, Slot), SessionError> {
        let timeout = self.tuning.handshake_timeout;
        // Local clients past `max_handshakes` wait their turn rather than being dropped.
        let slot = state
            .handshake_slot(&self.tuning, deadline)
            .await
            .ok_or(SessionError::Timeout(timeout))?;
        let mut sealed = connect(&self.connect, self.tuning.connect_timeout)
            .await
            .map_err(|error| SessionError::Connect {
                address: self.connect.to_string(),
                error,
            })?;
        let hs = if self.tuning.resumption {
            let resumption = Resumption {
                store: state.connector_tickets.clone(),
                policy: ticket_policy(&self.tuning),
                now: Instant::now(),
            };
            Handshake::connector_resuming(params, os_randomness(), resumption)
        } else {
            Handshake::connector(params, os_randomness())
        };
        let (est, leftover, unsent) =
            session::handshake(&mut sealed, hs, &[], deadline, timeout).await?;
        Ok((sealed, est, leftover, unsent, slot))
    }

    /// The handshake parameters for one connection: with TOFU, pinned to the recorded key or, if
    /// none is recorded yet, a first contact.
    async fn tofu_params(&self) -> Result<ConnectorParams, String> {
        let mut params = self.params.clone();
        if let Some(store) = &self.tofu {
            let store = store.clone();
            let known = tokio::task::spawn_blocking(move || store.known())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            params.listener = match known {
                Some(k) => ListenerPin::Key(k.fingerprint),
                None => ListenerPin::FirstContact,
            };
        }
        Ok(params)
    }

    /// The pinned listener keys, in the order hellos are keyed for them (empty for TOFU).
    fn pins(&self) -> Vec<Fingerprint> {
        match self.params.listener {
            ListenerPin::Key(first) => std::iter::once(first)
                .chain(self.fallback_pins.iter().copied())
                .collect(),
            ListenerPin::FirstContact | ListenerPin::Probe(_) => Vec::new(),
        }
    }

    /// Explains a hello the listener closed without answering (a pinned key, not TOFU): what a
    /// listener does when the pin is not its key. Returns false for the other failures.
    fn log_unanswered(&self, client: &Peer, pin: ListenerPin, e: &SessionError) -> bool {
        let (SessionError::Unanswered, ListenerPin::Key(_)) = (e, pin) else {
            return false;
        };
        let pins = self.pins();
        let list = |sep: &str, each: &dyn Fn(&Fingerprint) -> String| {
            pins.iter().map(each).collect::<Vec<_>>().join(sep)
        };
        let keys = list(" nor for ", &|p| format!("key {p}"));
        let which = if pins.len() > 1 {
            "probably none of the `peer` pins is its key"
        } else {
            "the `peer` pin is probably not its key"
        };
        let psk = if self.params.psk.is_some() {
            ", or its psk_file differs from this connector's"
        } else {
            ""
        };
        tracing::error!(tunnel = %self.name, role = %Role::Connector, peer = %client,
            connect = %self.connect, pin = %list(",", &|p| p.to_string()), reason = "unanswered",
            "the listener at {} did not answer a hello for {keys}: {which}{psk} \
             (compare with `sealpipe fingerprint` on the listener's private_key)", self.connect);
        true
    }

    /// Logs the TOFU-specific failures loudly; returns false for the others.
    fn log_tofu_failure(&self, client: &Peer, first_contact: bool, e: &SessionError) -> bool {
        let Some(store) = &self.tofu else {
            return false;
        };
        match e {
            SessionError::Handshake(HandshakeError::WrongListenerKey { expected, got }) => {
                let line = store.known().ok().flatten().map_or(0, |k| k.line);
                tracing::error!(tunnel = %self.name, role = %Role::Connector, peer = %client,
                    connect = %self.connect, expected = %expected, presented = %got,
                    known_peers = %store.path.display(), line,
                    "LISTENER KEY CHANGED for {}: known_peers has {expected}, the listener presented {got}; connection refused. \
                     This may be a man in the middle. If the listener's key was replaced on purpose, delete line {line} of {} and reload",
                    store.address, store.path.display());
                true
            }
            SessionError::Unanswered if !first_contact => {
                let known = store.known().ok().flatten();
                let (fp, line) =
                    known.map_or((String::new(), 0), |k| (k.fingerprint.to_string(), k.line));
                tracing::error!(tunnel = %self.name, role = %Role::Connector, peer = %client,
                    connect = %self.connect, expected = %fp, known_peers = %store.path.display(), line,
                    "the listener at {} answers neither a hello for the key recorded in known_peers ({fp}) nor a first contact: \
                     its key may have changed (it does not allow_tofu, so its new key cannot be shown), or it refuses this connector. \
                     If its key was replaced on purpose, delete line {line} of {} and reload",
                    store.address, store.path.display());
                true
            }
            SessionError::Unanswered
            | SessionError::Eof
            | SessionError::Timeout(_)
            | SessionError::Io(_)
            | SessionError::Connect { .. }
                if first_contact =>
            {
                tracing::error!(tunnel = %self.name, role = %Role::Connector, peer = %client,
                    connect = %self.connect, reason = %e,
                    "first contact (peer = \"tofu\", no key recorded yet in {}) got no answer: \
                     the listener answers connectors that do not know its key only with `allow_tofu = true`; \
                     set it there, or pin the listener's key with `peer = \"SHA256:...\"`",
                    store.path.display());
                true
            }
            _ => false,
        }
    }

    /// Records the listener key of a first contact in `known_peers`; false (after an error log)
    /// if the connection must be refused.
    async fn record_first_contact(&self, client: &Peer, fp: Fingerprint) -> bool {
        let Some(store) = self.tofu.clone() else {
            return false;
        };
        let s = store.clone();
        let result = tokio::task::spawn_blocking(move || s.record(&fp)).await;
        match result {
            Ok(Ok(Recorded::Added(k))) => {
                tracing::warn!(tunnel = %self.name, role = %Role::Connector, peer = %client,
                    connect = %self.connect, fingerprint = %fp, known_peers = %store.path.display(), line = k.line,
                    "first contact: recorded listener key {fp} for {} (trust on first use; later connections must present this key)",
                    store.address);
                true
            }
            Ok(Ok(Recorded::AlreadyKnown(_))) => true,
            Ok(Ok(Recorded::Conflict(k))) => {
                tracing::error!(tunnel = %self.name, role = %Role::Connector, peer = %client,
                    connect = %self.connect, expected = %k.fingerprint, presented = %fp,
                    known_peers = %store.path.display(), line = k.line,
                    "LISTENER KEY CHANGED for {}: known_peers has {} (recorded meanwhile), the listener presented {fp}; connection refused. \
                     If the listener's key was replaced on purpose, delete line {} of {} and reload",
                    store.address, k.fingerprint, k.line, store.path.display());
                false
            }
            Ok(Err(e)) => {
                tracing::error!(tunnel = %self.name, role = %Role::Connector, peer = %client,
                    error = %e, "cannot record the listener key in known_peers: connection refused");
                false
            }
            Err(e) => {
                tracing::error!(tunnel = %self.name, role = %Role::Connector, peer = %client,
                    error = %e, "cannot record the listener key in known_peers: connection refused");
                false
            }
        }
    }
}
