//! The connector side: plaintext connections in, each carried sealed to the listener.
//!
//! Every stream starts with a StreamInfo record (the client's address, the address it connected
//! to and, in redirect mode, its original destination), sent right after the handshake or, on a
//! warm session from the pool (`tunnel::pool`), at once. A stream that ends cleanly both ways
//! gives its session back to the pool for the next client (PROTOCOL.md §4.3).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tracing::Instrument;

use crate::addr::Address;
use crate::files::known_peers::{Recorded, TofuStore};
use crate::proto::handshake::Role;
use crate::proto::handshake::{
    ConnectorEphemerals, ConnectorParams, Established, Handshake, HandshakeError, ListenerPin,
    Resumption,
};
use crate::proto::identity::{Fingerprint, TrustList};
use crate::proto::record::{Alert, AlertCode};
use crate::proto::stream::{canonical, StreamInfo};
use crate::tunnel::accept::{log_refusal, os_randomness, Current};
use crate::tunnel::carry::{carry, StreamEnd};
use crate::tunnel::handshake::{self, Records, SessionError};
use crate::tunnel::limits::Slot;
use crate::tunnel::net::{connect, reset_on_close, set_user_timeout, Conn, Peer};
use crate::tunnel::pool::{sweep_every, Refusal, Session, Take};
use crate::tunnel::sessions::{next_id, SessionEntry};
use crate::tunnel::settings::{
    ConnectorMode, ConnectorSettings, SharedSettings, SocketPermissions,
};
use crate::tunnel::state::{count_resumption, ticket_policy, TunnelState};
use crate::tunnel::stream_info::{original_destination, send_stream_info};
use crate::tunnel::terms::{Terms, TermsOf};
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
    /// Timeouts, limits and the settings of this role.
    pub settings: ConnectorSettings,
    /// The digest of [`ConnectorTunnel::terms`], made at its first use: a tunnel's settings
    /// never change (a reload makes a new tunnel), so each client compares, never rehashes.
    pub terms_digest: std::sync::OnceLock<Terms>,
}

impl Tunnel for ConnectorTunnel {
    fn name(&self) -> &str {
        &self.name
    }

    fn role(&self) -> Role {
        Role::Connector
    }

    fn shared(&self) -> &SharedSettings {
        &self.settings.shared
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

    /// The listener proved its key and refused ours after authenticating it, or refused one
    /// stream (PROTOCOL.md §4.2, §6).
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
            AlertCode::ForwardUnreachable => "the listener could not connect to its forward \
                target for this client (its log says why), client connection reset"
                .to_string(),
            AlertCode::DestinationNotAllowed => "the listener refused this client's destination \
                (not in its `allow_destinations`), client connection reset"
                .to_string(),
        }
    }

    fn pool_terms(&self) -> Option<Terms> {
        Some(self.terms())
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

    async fn handle(
        self: Arc<Self>,
        current: Current<Self>,
        plain: Conn,
        client: Peer,
        state: Arc<TunnelState>,
    ) {
        let started = Instant::now();
        // However long it waits for a warm session, a client gets a session within one
        // `handshake_timeout` or none: its own handshake has what the wait left of it.
        let deadline = tokio::time::Instant::now() + self.settings.shared.handshake_timeout;
        let plain_tcp = match &plain {
            Conn::Tcp(t) => Some(t),
            Conn::Unix(_) => None,
        };
        let destination = match self.mode {
            ConnectorMode::Forward => None,
            ConnectorMode::Redirect => match plain_tcp.and_then(original_destination) {
                Some(d) => Some(d),
                None => {
                    tracing::warn!(tunnel = %self.name, role = %Role::Connector,
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
        let connect = self.connect.to_string();
        let pool_on = self.settings.pool_max > 0;
        let mut pooled = None;
        if pool_on {
            // The settings of now (under the pool's lock): a session that a refill or another
            // client put back after a reload swept the pool is checked here, its terms (one
            // digest, computed once per client) against those in force.
            let live = current.borrow().clone();
            let terms = live.terms();
            let usable = |s: &Session| live.reusable(s, &terms, Instant::now());
            let next = match state.pool.take_or_wait(&connect, usable, Instant::now()) {
                Take::Session(s) => {
                    pooled = Some(s);
                    None
                }
                Take::Wait(next) => Some(next),
                Take::Miss => None,
                Take::Refused(r) => {
                    // The listener refused a session made for the pool: this client gets its
                    // answer, without a handshake of its own.
                    state.counters.pool_misses.fetch_add(1, Ordering::Relaxed);
                    tracing::Span::current().record("session", r.session);
                    if !r.reported {
                        self.report_refill_refusal(&state, &r);
                    }
                    tracing::error!(tunnel = %self.name, role = %Role::Connector, peer = %r.peer,
                        fingerprint = %r.fingerprint, "{}", self.describe_refusal(&r.alert));
                    plain.reset_on_close();
                    return;
                }
            };
            let counter = if pooled.is_some() {
                &state.counters.pool_hits
            } else {
                &state.counters.pool_misses
            };
            counter.fetch_add(1, Ordering::Relaxed);
            // Also the refill that serves this client if it waits; made under the settings of
            // now.
            live.clone().refill(&state);
            if let Some(next) = next {
                // The first session free: a refill's or one another client gave back. Without
                // one in time, or with one a reload made unusable meanwhile, a handshake of
                // its own.
                pooled = match tokio::time::timeout_at(deadline, next).await {
                    Ok(Ok(Some(s))) if s.connect == connect && usable(&s) => Some(s),
                    _ => None,
                };
            }
        }
        // On the heap while it runs (as the handshake): the session is then held once, by this
        // task, for as long as the stream lasts (memory per idle connection).
        let Some((mut session, from_pool)) =
            Box::pin(self.stream_session(pooled, &info, &state, deadline)).await
        else {
            plain.reset_on_close();
            return;
        };
        if session.streams > 0 {
            state
                .counters
                .streams_reused
                .fetch_add(1, Ordering::Relaxed);
        }
        let fp = session.records.fingerprint;
        let (resumed, stream, pin) = (session.resumed, session.streams + 1, session.pin);
        match destination {
            Some(d) => {
                tracing::info!(tunnel = %self.name, role = %Role::Connector, peer = %session.peer(),
                fingerprint = %fp, pin, connect = %self.connect, destination = %d, resumed,
                pooled = from_pool, stream, "connection open")
            }
            None => {
                tracing::info!(tunnel = %self.name, role = %Role::Connector, peer = %session.peer(),
                fingerprint = %fp, pin, connect = %self.connect, resumed, pooled = from_pool, stream,
                "connection open")
            }
        }
        let leftover = std::mem::take(&mut session.leftover);
        // Known to be the session's last stream: a FIN follows our close record at once.
        let last = !self.settings.session_reuse
            || self.settings.pool_max == 0
            || session.streams + 1 >= u64::from(self.settings.session_reuse_streams);
        let end = carry(
            self.as_ref(),
            &current,
            plain,
            &mut session.sealed,
            &mut session.records,
            leftover,
            client,
            started,
            resumed,
            last,
            &state,
        )
        .await;
        session.streams += 1;
        match end {
            // Both close records passed and nothing followed: back to the pool, if the session
            // may carry another client and there is room; else the session ends (TCP FIN).
            // (What followed the listener's close record can only be keepalives: the pool
            // opens them, and refuses the session for anything else.)
            StreamEnd::Clean(rest) => {
                session.leftover = rest;
                // The listener accepted this connector: a refusal backoff ends.
                state.pool.accepted();
                // Otherwise (or with the pool full, or with other terms in force since a
                // reload) the drop closes it: a FIN after both close records, a clean end of
                // the session.
                let live = current.borrow().clone();
                if !last && live.reusable(&session, &live.terms(), Instant::now()) {
                    state
                        .pool
                        .put(session, self.settings.pool_max, Instant::now());
                }
            }
            StreamEnd::Failed => {}
        }
    }
}

impl ConnectorTunnel {
    /// The session that carries a client's stream, its StreamInfo record sent: `pooled` (a
    /// warm session) if it takes the record, else a fresh one. `None` (logged) if there is none.
    async fn stream_session(
        &self,
        mut pooled: Option<Session>,
        info: &StreamInfo,
        state: &Arc<TunnelState>,
        deadline: tokio::time::Instant,
    ) -> Option<(Session, bool)> {
        // A warm session first; a fresh handshake if there is none, or if the warm one fails
        // before any byte of this client went out (PROTOCOL.md §4.3: the listener cannot have
        // forwarded anything of this client then).
        loop {
            let (mut session, unsent, from_pool) = match pooled.take() {
                Some(s) => {
                    tracing::Span::current().record("session", s.records.session_id());
                    (s, Vec::new(), true)
                }
                // On the heap while it runs: the handshake's state is no part of the task that
                // then carries the stream (memory per idle connection).
                None => match Box::pin(self.establish(Some(deadline), state)).await {
                    Some((s, unsent)) => (s, unsent, false),
                    None => return None,
                },
            };
            let sent = send_stream_info(
                &mut session.sealed,
                &mut session.records.sealer,
                info,
                unsent,
            )
            .await
            .and_then(|()| Ok(session.records.opener.begin_stream()?));
            match sent {
                Ok(()) => return Some((session, from_pool)),
                Err(e) if from_pool => {
                    tracing::debug!(tunnel = %self.name, role = %Role::Connector,
                        peer = %session.peer(), reason = %e,
                        "a warm session failed before use; a fresh one is made");
                    reset_on_close(&session.sealed);
                }
                Err(e) => {
                    tracing::warn!(tunnel = %self.name, role = %Role::Connector,
                        peer = %session.peer(), fingerprint = %session.records.fingerprint,
                        reason = %e, "cannot send the StreamInfo record, connection reset");
                    reset_on_close(&session.sealed);
                    return None;
                }
            }
        }
    }

    /// The one warning, and the count, of a refusal the listener sent to a session made for the
    /// pool (`tunnel::pool`, [`Refusal`]); the next client's line says it too.
    fn report_refill_refusal(&self, state: &TunnelState, r: &Refusal) {
        let counter = match r.alert.code() {
            AlertCode::Untrusted => &state.counters.refused_untrusted,
            _ => &state.counters.refused_service,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(tunnel = %self.name, role = %Role::Connector, peer = %r.peer,
            fingerprint = %r.fingerprint,
            "a warm session made for the pool was refused: {}; refills stop for a while, the next client is told",
            self.describe_refusal(&r.alert));
    }

    /// Whether `session` may carry a new client at `now` under these settings, whose terms
    /// are `terms`: made under them, its key still pinned (or, with TOFU, still the one
    /// recorded), under `session_reuse_streams` streams, younger than `session_reuse_age`, and
    /// its hybrid keys younger than `rekey_interval` (PROTOCOL.md §4.5: its stream then starts
    /// an exchange in time, well before the listener's limit of 1.5 × `rekey_interval`).
    fn reusable(&self, session: &Session, terms: &Terms, now: Instant) -> bool {
        session.terms == *terms
            && !session
                .records
                .kex
                .clock(self.settings.shared.rekey_interval)
                .older_than_interval(now)
            && self.keeps_open(&session.records.fingerprint)
            && self.still_recorded(&session.records.fingerprint)
            && session.within_bounds(
                self.settings.session_reuse_streams,
                self.settings.session_reuse_age,
                now,
            )
    }

    /// TOFU: whether `fp` is the listener key `known_peers` records now (as this tunnel last
    /// read or recorded it: no file is read here, under the pool's lock). A session made with a
    /// key since replaced or removed (and the connector reloaded) carries no new client; the
    /// client's own handshake then checks the entry. True without TOFU (the pins decide).
    fn still_recorded(&self, fp: &Fingerprint) -> bool {
        self.tofu.as_ref().is_none_or(|t| t.recorded() == Some(*fp))
    }

    /// The terms of these settings (`tunnel::terms`), digested once per tunnel.
    pub(crate) fn terms(&self) -> Terms {
        *self.terms_digest.get_or_init(|| self.digest_terms())
    }

    fn digest_terms(&self) -> Terms {
        let own = self.params.identity.public().fingerprint();
        let pins = self.pins();
        TermsOf {
            connect: &self.connect.to_string(),
            service: &self.params.service,
            own,
            pins: &pins,
            tofu: self
                .tofu
                .as_deref()
                .map(|t| (t.path.as_path(), t.address.as_str())),
            psk: self.params.psk.as_deref(),
        }
        .digest()
    }

    /// Starts the background refills the pool wants now, and its sweeper if none runs.
    fn refill(self: Arc<Self>, state: &Arc<TunnelState>) {
        let (min, max) = (self.settings.pool_min, self.settings.pool_max);
        if max == 0 {
            return;
        }
        // Until the listener accepted a stream: one refill at a time (`tunnel::pool`).
        let cold = !state.pool.proven();
        for _ in 0..state.pool.refills_due(min, max, cold, Instant::now()) {
            let (tunnel, state) = (self.clone(), state.clone());
            let span = tracing::error_span!("conn", session = tracing::field::Empty);
            tokio::spawn(
                async move {
                    let ok = match tunnel.establish(None, &state).await {
                        Some((mut s, unsent)) => {
                            // The handshake's last message goes now, so that the listener holds an
                            // established session rather than a handshake in progress.
                            let sent = tokio::io::AsyncWriteExt::write_all(&mut s.sealed, &unsent)
                                .await
                                .is_ok();
                            sent && state.pool.put(s, tunnel.settings.pool_max, Instant::now())
                        }
                        None => false,
                    };
                    state.pool.refilled(ok, Instant::now());
                }
                .instrument(span),
            );
        }
        if state.pool.start_sweeping() {
            let self_keepalive = self.settings.shared.dead_peer_timeout;
            let weak = Arc::downgrade(&self);
            let state = state.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(sweep_every(self_keepalive)).await;
                    let Some(tunnel) = weak.upgrade() else {
                        // Settings replaced by a reload: the next client starts a new sweeper.
                        state.pool.stop_sweeping();
                        return;
                    };
                    let (busy, refusal) =
                        state.pool.sweep(tunnel.settings.pool_min, Instant::now());
                    if let Some(r) = refusal {
                        let span = tracing::error_span!("conn", session = r.session);
                        span.in_scope(|| tunnel.report_refill_refusal(&state, &r));
                    }
                    if !busy {
                        return;
                    }
                    tunnel.refill(&state);
                }
            });
        }
    }

    /// A new session with the listener: the handshake (with `peer` pin fallback, the TOFU probe
    /// and first-contact recording), every failure counted, and logged once: by the client's
    /// own handshake (a `refill` for the pool logs its failure at debug level only: the next
    /// client then makes its own handshake, which reports why). The session gets an id of its
    /// own, recorded on the current span. Returns the session and the handshake's last
    /// message, not yet sent. `client`: the deadline of the client it is for (who may have
    /// waited for a warm session first); `None`: a refill, with a `handshake_timeout` of its
    /// own.
    async fn establish(
        &self,
        client: Option<tokio::time::Instant>,
        state: &Arc<TunnelState>,
    ) -> Option<(Session, Vec<u8>)> {
        let refill = client.is_none();
        let started = Instant::now();
        let id = next_id();
        tracing::Span::current().record("session", id);
        let peer: &(dyn std::fmt::Display + Sync) = &self.connect;
        let timeout = self.settings.shared.handshake_timeout;
        let deadline = client.unwrap_or_else(|| tokio::time::Instant::now() + timeout);
        let params = match self.tofu_params().await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(tunnel = %self.name, role = %Role::Connector, %peer,
                    error = %e, "cannot read known_peers: connection refused");
                return None;
            }
        };
        let first_contact = params.listener == ListenerPin::FirstContact;
        let pin = params.listener;
        let mut result = self.attempt(params.clone(), state, deadline).await;
        // `peer = [first, next]`: a hello the listener did not answer (closed without a byte:
        // not its key) is sent again on a new connection, keyed for the next pin.
        let mut tried = 1;
        for next in &self.fallback_pins {
            if !matches!(result, Err(SessionError::Unanswered)) {
                break;
            }
            tracing::debug!(tunnel = %self.name, role = %Role::Connector, %peer,
                connect = %self.connect, pin = tried, next = %next,
                "the listener did not answer the hello for pin {tried}; trying pin {}", tried + 1);
            tried += 1;
            let next = ConnectorParams {
                listener: ListenerPin::Key(*next),
                ..params.clone()
            };
            result = self.attempt(next, state, deadline).await;
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
            result = self.attempt(probe, state, deadline).await;
        }
        let (sealed, est, leftover, unsent, handshake) = match result {
            Ok(x) => x,
            Err(e) => {
                state.handshake_failed(&e);
                if refill {
                    tracing::debug!(tunnel = %self.name, role = %Role::Connector, %peer,
                        reason = %e, "warm session not made (the next client's handshake reports why)");
                    return None;
                }
                if !self.log_tofu_failure(peer, first_contact, &e)
                    && !self.log_unanswered(peer, pin, &e)
                {
                    log_refusal(&self.name, self.role(), peer, &e);
                }
                return None;
            }
        };
        drop(handshake);
        state.handshake_ok(started.elapsed());
        count_resumption(state, &est);
        let (resumed, ticket_refused) = (est.resumed, est.ticket_refused);
        let mut records = Records::new(est, Role::Connector, self.settings.shared.rekey_bytes);
        let fp = records.fingerprint;
        let address = sealed
            .peer_addr()
            .map_or_else(|_| self.connect.to_string(), |a| a.to_string());
        let live = SessionEntry::new(id, address, fp, resumed, Instant::now());
        records.register(&state.live, live);
        if first_contact && !self.record_first_contact(peer, fp).await {
            reset_on_close(&sealed);
            return None;
        }
        if ticket_refused.is_some() {
            tracing::debug!(tunnel = %self.name, role = %Role::Connector, %peer,
                "the listener refused the resumption ticket, full handshake done");
        }
        let session = Session {
            sealed,
            records,
            leftover,
            resumed,
            born: Instant::now(),
            streams: 0,
            connect: self.connect.to_string(),
            terms: self.terms(),
            // Which of several pins matched (`fingerprint` is the key the listener proved).
            pin: (!self.fallback_pins.is_empty()).then_some(tried),
            keepalive: self.settings.shared.dead_peer_timeout,
        };
        Some((session, unsent))
    }
    /// Connects to the listener and runs one handshake, holding a handshake slot.
    async fn attempt(
        &self,
        params: ConnectorParams,
        state: &TunnelState,
        deadline: tokio::time::Instant,
    ) -> Result<(TcpStream, Established, Vec<u8>, Vec<u8>, Slot), SessionError> {
        let timeout = self.settings.shared.handshake_timeout;
        // Local clients past `max_handshakes` wait their turn rather than being dropped.
        let slot = state
            .handshake_slot(&self.settings.shared, deadline)
            .await
            .ok_or(SessionError::Timeout(timeout))?;
        let connecting = connect(&self.connect, self.settings.shared.connect_timeout);
        let mut sealed = tokio::time::timeout_at(deadline, connecting)
            .await
            .map_err(|_| SessionError::Timeout(timeout))?
            .map_err(|error| SessionError::Connect {
                address: self.connect.to_string(),
                error,
            })?;
        set_user_timeout(&sealed, self.settings.shared.dead_peer_timeout);
        let resumption = self.settings.shared.resumption.then(|| Resumption {
            store: state.connector_tickets.clone(),
            policy: ticket_policy(&self.settings.shared),
            now: Instant::now(),
        });
        let mut hs = Handshake::connector_prepared(params, next_ephemerals(state), resumption);
        handshake::send_output(&mut sealed, &mut hs, deadline, timeout).await?;
        // The listener works on the hello meanwhile: the next hello's key generations are done
        // now, off that connection's path.
        prepare_ephemerals(state);
        // A connector's work is not budgeted.
        let mut work = std::time::Duration::ZERO;
        let (est, leftover, unsent) =
            handshake::handshake(&mut sealed, hs, &[], deadline, timeout, &mut work).await?;
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
    fn log_unanswered(
        &self,
        peer: &(dyn std::fmt::Display + Sync),
        pin: ListenerPin,
        e: &SessionError,
    ) -> bool {
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
        // A listener also leaves a hello unanswered when the PSKs differ, or only one side has
        // one (the hello's mac1 is keyed with it).
        let (psk, no_psk) = if self.params.psk.is_some() {
            (", or its psk_file differs from this connector's", "")
        } else {
            (
                "",
                "; or the listener has a psk_file and this connector has none",
            )
        };
        tracing::error!(tunnel = %self.name, role = %Role::Connector, %peer,
            connect = %self.connect, pin = %list(",", &|p| p.to_string()), reason = "unanswered",
            "the listener at {} did not answer a hello for {keys}: {which}{psk} \
             (compare with `sealpipe fingerprint` on the listener's private_key){no_psk}", self.connect);
        true
    }

    /// Logs the TOFU-specific failures loudly; returns false for the others.
    fn log_tofu_failure(
        &self,
        peer: &(dyn std::fmt::Display + Sync),
        first_contact: bool,
        e: &SessionError,
    ) -> bool {
        let Some(store) = &self.tofu else {
            return false;
        };
        match e {
            SessionError::Handshake(HandshakeError::WrongListenerKey { expected, got }) => {
                let line = store.known().ok().flatten().map_or(0, |k| k.line);
                tracing::error!(tunnel = %self.name, role = %Role::Connector, %peer,
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
                tracing::error!(tunnel = %self.name, role = %Role::Connector, %peer,
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
                tracing::error!(tunnel = %self.name, role = %Role::Connector, %peer,
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
    async fn record_first_contact(
        &self,
        peer: &(dyn std::fmt::Display + Sync),
        fp: Fingerprint,
    ) -> bool {
        let Some(store) = self.tofu.clone() else {
            return false;
        };
        let s = store.clone();
        let result = tokio::task::spawn_blocking(move || s.record(&fp)).await;
        match result {
            Ok(Ok(Recorded::Added(k))) => {
                tracing::warn!(tunnel = %self.name, role = %Role::Connector, %peer,
                    connect = %self.connect, fingerprint = %fp, known_peers = %store.path.display(), line = k.line,
                    "first contact: recorded listener key {fp} for {} (trust on first use; later connections must present this key)",
                    store.address);
                true
            }
            Ok(Ok(Recorded::AlreadyKnown(_))) => true,
            Ok(Ok(Recorded::Conflict(k))) => {
                tracing::error!(tunnel = %self.name, role = %Role::Connector, %peer,
                    connect = %self.connect, expected = %k.fingerprint, presented = %fp,
                    known_peers = %store.path.display(), line = k.line,
                    "LISTENER KEY CHANGED for {}: known_peers has {} (recorded meanwhile), the listener presented {fp}; connection refused. \
                     If the listener's key was replaced on purpose, delete line {} of {} and reload",
                    store.address, k.fingerprint, k.line, store.path.display());
                false
            }
            Ok(Err(e)) => {
                tracing::error!(tunnel = %self.name, role = %Role::Connector, %peer,
                    error = %e, "cannot record the listener key in known_peers: connection refused");
                false
            }
            Err(e) => {
                tracing::error!(tunnel = %self.name, role = %Role::Connector, %peer,
                    error = %e, "cannot record the listener key in known_peers: connection refused");
                false
            }
        }
    }
}

/// The ephemerals for a hello: the spare ones if [`prepare_ephemerals`] made them, fresh ones
/// otherwise. Each serves one handshake only.
fn next_ephemerals(state: &TunnelState) -> ConnectorEphemerals {
    let spare = lock(&state.spare_ephemerals).take();
    spare.unwrap_or_else(|| ConnectorEphemerals::new(os_randomness()))
}

/// Makes the spare ephemerals of the tunnel's next hello, if there are none.
fn prepare_ephemerals(state: &TunnelState) {
    if lock(&state.spare_ephemerals).is_none() {
        let fresh = ConnectorEphemerals::new(os_randomness());
        lock(&state.spare_ephemerals).get_or_insert(fresh);
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_ephemerals_serve_one_hello_only() {
        let state = TunnelState::default();
        prepare_ephemerals(&state);
        let spare = lock(&state.spare_ephemerals).as_ref().map(|e| *e.public());
        let first = next_ephemerals(&state);
        assert_eq!(Some(*first.public()), spare, "the spare is used");
        assert!(lock(&state.spare_ephemerals).is_none(), "and taken");
        let second = next_ephemerals(&state);
        assert_ne!(second.public(), first.public(), "a fresh one after it");
        prepare_ephemerals(&state);
        let third = next_ephemerals(&state);
        assert_ne!(third.public(), first.public());
        assert_ne!(third.public(), second.public());
    }
}
