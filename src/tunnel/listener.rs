//! The listener side: sealed connections in, plaintext to the forward target out.
//!
//! After the handshake, and before any target is contacted, the connector's first record of each
//! stream (StreamInfo; a session may carry several streams one after the other, PROTOCOL.md §4.3)
//! is read: it names the client and, from a redirect-mode connector, the original
//! destination, which is connected to only if `allow_destinations` allows it. With
//! `proxy_protocol = "v2"` a PROXY header with the client's address goes to the target first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::addr::{Address, DestinationRule};
use crate::proto::handshake::Role;
use crate::proto::handshake::{
    check_hello_mac1, Contact, Handshake, HandshakeError, ListenerParams, Resumption,
};
use crate::proto::identity::{Fingerprint, TrustList};
use crate::proto::messages::{
    check_first_header, hello_ephemeral, MAX_FIRST_MESSAGE_LEN, MSG_HEADER_LEN,
};
use crate::proto::record::{Alert, AlertCode};
use crate::proto::stream::{proxy_v2_header, StreamInfo};
use crate::tunnel::accept::{log_refusal, os_randomness, Current};
use crate::tunnel::admission::{Admits, Made, Retired, Terms};
use crate::tunnel::carry::{carry, StreamEnd};
use crate::tunnel::handshake::{self, Records, SessionError};
use crate::tunnel::limits::Source;
use crate::tunnel::net::{connect_local, reset_on_close, set_user_timeout, Conn, Peer};
use crate::tunnel::pre_auth::{Place, PRE_AUTH_PER_SOURCE, SILENT_SHARE_PER_KEY};
use crate::tunnel::pump::FinAfterClose;
use crate::tunnel::sessions::{next_id, SessionEntry};
use crate::tunnel::settings::{ListenerSettings, ProxyProtocol, Revoke, SharedSettings};
use crate::tunnel::signing::{self, NotSigned};
use crate::tunnel::state::{count_resumption, ticket_policy, OpenConn, TunnelState};
use crate::tunnel::stream_info::{read_stream_info, StreamError, Waiting};
use crate::tunnel::Tunnel;

/// Everything a listener tunnel needs; replaced as a whole on reload.
pub struct ListenerTunnel {
    /// Name from the config.
    pub name: String,
    /// The plaintext service for connections that name no destination.
    pub forward: Option<Address>,
    /// Destinations redirect-mode connectors may name; empty: none may.
    pub allow_destinations: Vec<DestinationRule>,
    /// Header written to the target before any payload.
    pub proxy_protocol: ProxyProtocol,
    /// What a reload does to open connections of a key it stops trusting.
    pub revoke: Revoke,
    /// Identity, trusted connectors, PSK.
    pub params: ListenerParams,
    /// Timeouts, limits and the settings of this role.
    pub settings: ListenerSettings,
}

impl ListenerTunnel {
    /// From accept to an established session: the hello read and checked, then [`Self::admit`];
    /// every refusal logged and counted. Returns the session, the bytes read after the
    /// handshake and how the connector knew our key.
    async fn open_session(
        &self,
        sealed: &mut tokio::net::TcpStream,
        peer: &Peer,
        state: &Arc<TunnelState>,
    ) -> Option<(crate::proto::handshake::Established, Vec<u8>, Contact)> {
        let timeout = self.settings.shared.handshake_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let refused = |e: SessionError| {
            state.handshake_failed(&e);
            log_refusal(&self.name, self.role(), peer, &e);
            None
        };
        // Before any work, and holding no handshake slot: the fixed-size hello (ConnectorHello,
        // or ResumeHello, as its header says) and its mac1. A scanner, a slow sender or a peer
        // without our fingerprint costs a socket and at most 1,317 bytes (the largest first message).
        // Until its hello passes mac1, the connection is one of the source's few places and the
        // first to go when the tunnel is full (`tunnel::pre_auth`).
        let source = peer.ip().map(Source::of);
        let pre_auth = state.pre_auth.enter(source, PRE_AUTH_PER_SOURCE);
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
        let read_hello = async {
            tokio::select! {
                biased;
                () = pre_auth.evicted().cancelled() => None,
                r = tokio::time::timeout_at(deadline, read_hello) => Some(r),
            }
        };
        let Some(read) = read_hello.await else {
            return refused(SessionError::Evicted);
        };
        let len = match read {
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
        let contact = match check_hello_mac1(&self.params, hello) {
            Ok(c) => c,
            Err(e) => {
                let total = state.counters.mac1_rejected.fetch_add(1, Ordering::Relaxed) + 1;
                if matches!(e, HandshakeError::BadMac1) {
                    if let Some(held_back) = state.mac1_log.check(Instant::now()) {
                        let own = match &self.params.next_identity {
                            None => self.params.identity.public().fingerprint().to_string(),
                            Some(next) => format!(
                                "{} nor its next_private_key {}",
                                self.params.identity.public().fingerprint(),
                                next.public().fingerprint()
                            ),
                        };
                        let psk = if self.params.psk.is_some() {
                            " (or whose psk_file differs)"
                        } else {
                            ""
                        };
                        tracing::info!(tunnel = %self.name, role = %Role::Listener, %peer,
                            fingerprint = %own, held_back, total,
                            "hello without a valid mac1 from {peer}, not answered: a scanner, or a connector whose `peer` pin is not this listener's key {own}{psk}");
                    }
                }
                return refused(e.into());
            }
        };
        // A valid hello: no longer evictable, nor counted against its source's cap.
        drop(pre_auth);
        let (est, leftover) = match self.admit(sealed, peer, hello, state, deadline).await {
            Ok(x) => x,
            Err(e) => {
                // A connector that proved its key but is refused (key not trusted, another
                // service) is told why, in an Alert only it can open (PROTOCOL.md §6).
                if let SessionError::Handshake(h) = &e {
                    if let Some(alert) = h.alert() {
                        send_alert(sealed, alert, deadline).await;
                    }
                }
                return refused(e);
            }
        };
        Some((est, leftover, contact))
    }

    /// From a hello with a valid mac1 to an established session (SECURITY.md, "Flooding the
    /// listener"): a replayed hello is refused before any work; a resumption with a valid
    /// ticket is answered inline; a full handshake waits for its signed answer in the signing
    /// queue, fair between sources and under `signature_rate`, holding no handshake slot. A
    /// handshake slot (`max_handshakes`) is held only while a hello is worked on here and its
    /// answer written; then the connection waits for the connector's last message under the
    /// `awaiting_auth` gauge (at most `max_connections`).
    async fn admit(
        &self,
        sealed: &mut tokio::net::TcpStream,
        peer: &Peer,
        hello: &[u8],
        state: &Arc<TunnelState>,
        deadline: tokio::time::Instant,
    ) -> Result<(crate::proto::handshake::Established, Vec<u8>), SessionError> {
        let timeout = self.settings.shared.handshake_timeout;
        let source = peer.ip().map(Source::of);
        // A captured hello sent again: no answer, whatever its ticket or source.
        if let Some(e_c) = hello_ephemeral(hello) {
            if !state.replays.first_sight(e_c, Instant::now()) {
                return Err(SessionError::Replay);
            }
        }
        let Some(slot) = state.handshake_slot(&self.settings.shared, deadline).await else {
            return Err(SessionError::Timeout(timeout));
        };
        let mut hs = if self.settings.shared.resumption {
            let resumption = Resumption {
                store: state.tickets.clone(),
                policy: ticket_policy(&self.settings.shared),
                now: Instant::now(),
            };
            Handshake::listener_resuming(self.params.clone(), os_randomness(), resumption)
                .defer_replies()
        } else {
            Handshake::listener(self.params.clone(), os_randomness()).defer_replies()
        };
        if hs.read(hello)? != hello.len() {
            return Err(SessionError::Handshake(HandshakeError::State));
        }
        let slot = if hs.reply_pending() {
            // A full handshake: its answer costs a signature. No slot while it waits.
            drop(slot);
            if let Some(ip) = peer.ip() {
                let rate = self.settings.source_handshake_rate;
                if !state.handshake_sources.allow(ip, rate, Instant::now()) {
                    self.log_overload(state, "source_handshake_rate", Some(ip));
                    return Err(SessionError::SourceLimited);
                }
            }
            // Unix peers do not come here (the sealed side is TCP); one source for all of them.
            let source = source.unwrap_or(Source::Overflow);
            // A connector that goes while its hello waits takes its hello out of the queue:
            // no signature is made for a connection that is gone. The answer is polled first,
            // so that a hello signed inline at once costs no look at the socket.
            let signed = tokio::select! {
                biased;
                signed = tokio::time::timeout_at(
                    deadline,
                    signing::sign(
                        &state.signing,
                        &state.counters.signatures,
                        source,
                        hs,
                        &self.settings,
                    ),
                ) => signed,
                () = gone(sealed) => return Err(SessionError::Eof),
            };
            hs = match signed {
                Err(_) => return Err(SessionError::Timeout(timeout)),
                Ok(Ok(hs)) => hs,
                Ok(Err(NotSigned::Failed(e))) => return Err(e.into()),
                Ok(Err(NotSigned::Overloaded)) => {
                    self.log_overload(state, "signing queue", None);
                    return Err(SessionError::Overloaded);
                }
            };
            let Some(slot) = state.handshake_slot(&self.settings.shared, deadline).await else {
                return Err(SessionError::Timeout(timeout));
            };
            slot
        } else {
            slot
        };
        handshake::send_output(sealed, &mut hs, deadline, timeout).await?;
        drop(slot);
        // Our flight is out: what is left costs one verification, when the connector answers.
        let Some(_waiting) = state
            .awaiting_auth
            .try_acquire(self.settings.shared.max_connections)
        else {
            return Err(SessionError::Overloaded);
        };
        // A listener's last handshake message is never pending at the end (it reads last).
        // Its work — for a full handshake, the ConnectorAuth's RSA verification, made only for
        // a key in the trust list or with `accept_unknown` (PROTOCOL.md §2) — is charged to the
        // time budget of the answers (`signature_cpu`), whatever the outcome: each verification
        // follows one answer made under that budget, so answers and verifications together
        // stay within it.
        let mut work = Duration::ZERO;
        let result = handshake::handshake(sealed, hs, &[], deadline, timeout, &mut work).await;
        state
            .signing
            .charge(work, self.settings.signature_cpu, Instant::now());
        match result? {
            (est, leftover, unsent) if unsent.is_empty() => Ok((est, leftover)),
            _ => Err(SessionError::Handshake(HandshakeError::State)),
        }
    }

    /// Warns, at most once per interval, that hellos go unanswered for `why`.
    fn log_overload(&self, state: &TunnelState, why: &str, source: Option<std::net::IpAddr>) {
        if let Some(held_back) = state.overload_log.check(Instant::now()) {
            let c = &state.counters;
            tracing::warn!(tunnel = %self.name, role = %Role::Listener,
                source = %OptIp(source), limit = why, held_back,
                signatures = c.signatures.load(Ordering::Relaxed),
                signature_rate = self.settings.signature_rate,
                source_handshake_rate = self.settings.source_handshake_rate,
                "hellos not answered: {why} reached (a flood of hellos, or a load past the limits)");
        }
    }
}

/// Resolves when the connector has gone (the end of its stream, or a reset) while its hello
/// waits for an answer. Never if bytes come early: they are left for the handshake to read.
async fn gone(sealed: &tokio::net::TcpStream) {
    let mut byte = [0u8; 1];
    match sealed.peek(&mut byte).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// An optional IP address for logs: `-` for none.
struct OptIp(Option<std::net::IpAddr>);

impl std::fmt::Display for OptIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => write!(f, "-"),
        }
    }
}

impl Admits for ListenerTunnel {
    fn params(&self) -> &ListenerParams {
        &self.params
    }

    fn session_max_age(&self) -> Duration {
        self.settings.session_max_age
    }
}

impl Tunnel for ListenerTunnel {
    fn name(&self) -> &str {
        &self.name
    }

    fn role(&self) -> Role {
        Role::Listener
    }

    fn shared(&self) -> &SharedSettings {
        &self.settings.shared
    }

    fn trust(&self) -> Option<Arc<TrustList>> {
        Some(self.params.trust.clone())
    }

    fn keeps_open(&self, fp: &Fingerprint) -> bool {
        self.revoke == Revoke::NewOnly || self.accepts_new(fp)
    }

    fn accepts_new(&self, fp: &Fingerprint) -> bool {
        self.params.accept_unknown || self.params.trust.contains(fp)
    }

    async fn handle(
        self: Arc<Self>,
        mut current: Current<Self>,
        sealed: Conn,
        peer: Peer,
        state: Arc<TunnelState>,
    ) {
        // The sealed side is TCP only (the config refuses `unix:` there).
        let Conn::Tcp(mut sealed) = sealed else {
            return;
        };
        set_user_timeout(&sealed, self.settings.shared.dead_peer_timeout);
        let started = Instant::now();
        let id = next_id();
        tracing::Span::current().record("session", id);
        // The handshake runs in a future of its own, on the heap only while it runs: the hello
        // buffer and the handshake's state are no part of the task that then carries the
        // session's streams for as long as it lives (memory per idle connection).
        let Some((est, leftover, contact)) =
            Box::pin(self.open_session(&mut sealed, &peer, &state)).await
        else {
            return;
        };
        state.handshake_ok(started.elapsed());
        count_resumption(&state, &est);
        let (resumed, ticket_refused) = (est.resumed, est.ticket_refused);
        // With two keys (a rotation), which one this connector's hello was for.
        let own = est.own;
        let key = (self.params.next_identity.is_some()).then(|| tracing::field::display(own));
        let mut records = Records::new(est, Role::Listener, self.settings.shared.rekey_bytes);
        let fp = records.fingerprint;
        let mut live = SessionEntry::new(id, peer.to_string(), fp, resumed, Instant::now());
        live.own_key = self.params.next_identity.is_some().then_some(own);
        records.register(&state.live, live);
        if contact == Contact::FirstContact {
            tracing::info!(tunnel = %self.name, role = %Role::Listener, %peer, fingerprint = %fp,
                "first contact from a TOFU connector (allow_tofu): it did not know this listener's key");
        }
        if !self.params.trust.contains(&fp) {
            log_unknown_connector(&self.name, &peer, &fp);
        }
        // The streams of the session, one after the other (PROTOCOL.md §4.3). The session is
        // listed for reloads as long as it lives: one that stops trusting its key refuses the
        // next stream (and ends the session at once if it is between streams).
        let entry = state.sessions.register(OpenConn::new(
            peer.to_string(),
            fp,
            started,
            resumed,
            Arc::default(),
        ));
        if let Some(why) = ticket_refused {
            tracing::debug!(tunnel = %self.name, role = %Role::Listener, %peer, reason = %why,
                "resumption ticket refused, full handshake done");
        }
        // Each stream is admitted against the settings in force when it starts (PROTOCOL.md
        // §4.3, tunnel/admission.rs): a reload reaches the next stream of every session.
        let made = Made {
            peer: fp,
            own,
            service: self.params.service.clone(),
            psk: self.params.psk.clone(),
            born: Instant::now(),
        };
        let mut terms = Terms::new(&mut current, &made);
        let mut leftover = leftover;
        let mut stream: u64 = 0;
        // Until its first stream, the session is evictable (`tunnel::pre_auth`, PROTOCOL.md
        // §4.1): a warm session waits for its client, an attacker's never sends one.
        let per_key = self.settings.shared.max_connections / SILENT_SHARE_PER_KEY;
        let mut silent = Some(state.silent.enter(Some(fp), per_key));
        loop {
            stream += 1;
            let bound = session_idle(&terms.tunnel.settings.shared);
            let read = {
                let (mut sealed_r, mut sealed_w) = sealed.split();
                let waiting = Waiting {
                    reply: &mut sealed_w,
                    opener: &mut records.opener,
                    sealer: &mut records.sealer,
                    dead_peer_timeout: terms.tunnel.settings.shared.dead_peer_timeout,
                    kex: Some(&records.kex),
                };
                let next = read_stream_info(
                    &mut sealed_r,
                    waiting,
                    std::mem::take(&mut leftover),
                    tokio::time::Instant::now() + bound,
                    bound,
                );
                let mut next = std::pin::pin!(next);
                // Between streams: a reload that retires the session, or its age, closes it now;
                // a StreamInfo already read is served (as the session's last stream if its age is
                // reached meanwhile).
                loop {
                    // A key no longer trusted: the reload resets the session (`next_refused`).
                    let refused = terms.refused().filter(|w| *w != Retired::Untrusted);
                    if let Some(why) = refused {
                        break Err(why);
                    }
                    if terms.aged(&made, Instant::now()) {
                        break Err(Retired::MaxAge);
                    }
                    // Hybrid keys past their limit (PROTOCOL.md §4.5): closed, a clean end.
                    let keys = records
                        .kex
                        .clock(terms.tunnel.settings.shared.rekey_interval);
                    if keys.expired(Instant::now()) {
                        break Err(Retired::StaleKeys);
                    }
                    let end_of_life = terms.end_of_life(&made);
                    let end_of_life = keys.limit_at().map_or(end_of_life, |t| t.min(end_of_life));
                    let end_of_life = tokio::time::Instant::from_std(end_of_life);
                    tokio::select! {
                        biased;
                        r = &mut next => break Ok(Some(r)),
                        () = entry.conn.next_refused() => break Ok(None),
                        () = evicted(silent.as_ref()) => break Ok(None),
                        r = Terms::next_reload(terms.following(), &mut current) => {
                            terms.changed(&mut current, &made, r)
                        }
                        () = tokio::time::sleep_until(end_of_life) => {}
                    }
                }
            };
            let (info, rest) = match read {
                Ok(Some(Ok(x))) => {
                    // A stream: no longer a silent session.
                    silent = None;
                    x
                }
                // The connector ended the session between streams (or retired a warm session
                // before its first): a clean end.
                Ok(Some(Err(StreamError::Eof))) => {
                    tracing::debug!(tunnel = %self.name, role = %Role::Listener, %peer,
                        fingerprint = %fp, streams = stream - 1, "session ended by the connector");
                    return;
                }
                Ok(Some(Err(StreamError::PeerSilent(d)))) => {
                    tracing::warn!(tunnel = %self.name, role = %Role::Listener, %peer,
                        fingerprint = %fp, streams = stream - 1, reason = %StreamError::PeerSilent(d),
                        "session between streams reset: peer silent for {d:?}");
                    reset_on_close(&sealed);
                    return;
                }
                Ok(Some(Err(StreamError::Timeout(d)))) => {
                    tracing::debug!(tunnel = %self.name, role = %Role::Listener, %peer,
                        fingerprint = %fp, streams = stream - 1,
                        "no stream for {d:?}, session closed");
                    return;
                }
                Ok(Some(Err(e))) => {
                    tracing::warn!(tunnel = %self.name, role = %Role::Listener, %peer, fingerprint = %fp,
                        reason = %e, "no valid StreamInfo record from the connector, connection reset");
                    reset_on_close(&sealed);
                    return;
                }
                Ok(None) if silent.as_ref().is_some_and(|p| p.evicted().is_cancelled()) => {
                    tracing::debug!(tunnel = %self.name, role = %Role::Listener, %peer,
                        fingerprint = %fp,
                        "session without a stream yet closed to make room at max_connections (evicted)");
                    return;
                }
                Ok(None) => {
                    tracing::info!(tunnel = %self.name, role = %Role::Listener, %peer, fingerprint = %fp,
                    streams = stream - 1,
                    "{}", if state.sessions.is_closed() {
                        "session closed between streams: shutdown"
                    } else {
                        "session closed between streams: its key is no longer trusted after a reload (revoked at reload)"
                    });
                    reset_on_close(&sealed);
                    return;
                }
                // A clean end between streams (a TCP FIN, PROTOCOL.md §4.3): the connector's
                // pool drops the session and its next client gets another.
                Err(why) => {
                    tracing::info!(tunnel = %self.name, role = %Role::Listener, %peer, fingerprint = %fp,
                        streams = stream - 1, reason = %why,
                        "session closed between streams: {why}");
                    let _ = sealed.shutdown().await;
                    return;
                }
            };
            records.heard();
            // The listener's direction carries the new stream too (closed at the last one's end).
            if let Err(e) = records.sealer.begin_stream() {
                tracing::warn!(tunnel = %self.name, role = %Role::Listener, %peer, fingerprint = %fp,
                    reason = %e, "StreamInfo record out of place, connection reset");
                reset_on_close(&sealed);
                return;
            }
            // The settings of now, not of the accept: a reload during the handshake swept the
            // session table before this session was in it.
            terms.refresh(&mut current, &made);
            let timeout = terms.tunnel.settings.shared.handshake_timeout;
            if entry.conn.no_next() || terms.refused() == Some(Retired::Untrusted) {
                tracing::warn!(tunnel = %self.name, role = %Role::Listener, %peer, fingerprint = %fp,
                    client = %OptAddr(info.client),
                    "connector key no longer trusted: new stream refused, connection reset (revoked at reload)");
                // Told why (an Alert) when the settings of now refuse the key; a reset if only
                // the shutdown does.
                let untrusted = terms.refused() == Some(Retired::Untrusted);
                let code = untrusted.then_some((AlertCode::Untrusted, &b""[..]));
                refuse_stream(&mut sealed, &mut records, code, timeout).await;
                return;
            }
            // The session's other terms, taken away by a reload as its StreamInfo came: another
            // service is told as at a handshake; another key or PSK gets a reset.
            if let Some(why) = terms.refused() {
                tracing::warn!(tunnel = %self.name, role = %Role::Listener, %peer, fingerprint = %fp,
                    client = %OptAddr(info.client), reason = %why,
                    "new stream refused: {why}; connection reset");
                let service = terms.tunnel.params.service.clone();
                let code = (why == Retired::Service)
                    .then_some((AlertCode::ServiceMismatch, service.as_bytes()));
                refuse_stream(&mut sealed, &mut records, code, timeout).await;
                return;
            }
            if stream > 1 {
                state
                    .counters
                    .streams_reused
                    .fetch_add(1, Ordering::Relaxed);
            }
            let tunnel = terms.tunnel.clone();
            let target = match tunnel.open_target(&peer, &fp, &info).await {
                Ok(t) => t,
                Err(code) => {
                    refuse_stream(
                        &mut sealed,
                        &mut records,
                        code.map(|c| (c, &b""[..])),
                        timeout,
                    )
                    .await;
                    return;
                }
            };
            tracing::info!(tunnel = %tunnel.name, role = %Role::Listener, %peer, fingerprint = %fp,
                peer_name = tunnel.params.trust.name_of(&fp).unwrap_or(""), key, forward = %target.1,
                client = %OptAddr(info.client), resumed, stream, "connection open");
            let end = carry(
                tunnel.as_ref(),
                &current,
                target.0,
                &mut sealed,
                &mut records,
                rest,
                &peer,
                Instant::now(),
                resumed,
                // Past `session_max_age` when our close record goes, the session ends with it.
                FinAfterClose::From(terms.end_of_life(&made)),
                &state,
            )
            .await;
            match end {
                StreamEnd::Clean(rest) => leftover = rest,
                StreamEnd::Failed => return,
            }
            if entry.conn.no_next() {
                tracing::info!(tunnel = %self.name, role = %Role::Listener, %peer, fingerprint = %fp,
                    "connector key no longer trusted: session closed after its stream (revoked at reload)");
                return;
            }
        }
    }
}

/// Fires when `place` (a session's place among those without a stream yet) is evicted; never
/// for a session that has carried one.
async fn evicted(place: Option<&Place<Fingerprint>>) {
    match place {
        Some(p) => p.evicted().cancelled().await,
        None => std::future::pending().await,
    }
}

/// How long a listener waits for the next stream of a session (and for the first one, which a
/// warm session sends only when a client comes): 120 s, or `idle_timeout` if shorter. Past it
/// the session is closed (a TCP FIN: the connector retires its warm sessions well before).
pub(crate) const SESSION_IDLE: Duration = Duration::from_secs(120);

fn session_idle(shared: &SharedSettings) -> Duration {
    shared
        .idle_timeout
        .map_or(SESSION_IDLE, |t| t.min(SESSION_IDLE))
}

impl ListenerTunnel {
    /// The target of one stream: the destination chosen for `info`, connected, with the PROXY
    /// header written. If it cannot be (after a log line): the code of the Alert that tells the
    /// connector why, or `None` for a reset.
    async fn open_target(
        &self,
        peer: &Peer,
        fp: &Fingerprint,
        info: &StreamInfo,
    ) -> Result<(Conn, Address), Option<AlertCode>> {
        let target_addr = match choose_destination(
            self.forward.as_ref(),
            &self.allow_destinations,
            info,
        ) {
            Ok(a) => a,
            Err(why) => {
                tracing::warn!(tunnel = %self.name, role = %Role::Listener, %peer, fingerprint = %fp,
                    peer_name = self.params.trust.name_of(fp).unwrap_or(""),
                    client = %OptAddr(info.client),
                    destination = %OptAddr(info.destination), reason = why,
                    "destination refused, the connector is told (alert)");
                return Err(Some(AlertCode::DestinationNotAllowed));
            }
        };
        // Only now, with the peer verified and the destination allowed, is the target contacted.
        let mut target = match connect_local(&target_addr, self.settings.shared.connect_timeout)
            .await
        {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(tunnel = %self.name, role = %Role::Listener, %peer, fingerprint = %fp,
                    forward = %target_addr, reason = %e, "forward target unreachable, the connector is told (alert)");
                return Err(Some(AlertCode::ForwardUnreachable));
            }
        };
        if self.proxy_protocol == ProxyProtocol::V2 {
            let header = proxy_v2_header(info);
            let written = match &mut target {
                Conn::Tcp(t) => t.write_all(&header).await,
                Conn::Unix(u) => u.write_all(&header).await,
            };
            if let Err(e) = written {
                tracing::warn!(tunnel = %self.name, role = %Role::Listener, %peer, fingerprint = %fp,
                    forward = %target_addr, reason = %e, "cannot write the PROXY header, connection reset");
                target.reset_on_close();
                return Err(None);
            }
        }
        Ok((target, target_addr))
    }
}

/// Refuses the stream that just began on `sealed`: with an Alert of `code` (PROTOCOL.md §4.2),
/// the listener's first record of the stream and its last, then the session ends; without a
/// code, a reset.
async fn refuse_stream(
    sealed: &mut tokio::net::TcpStream,
    records: &mut Records,
    code: Option<(AlertCode, &[u8])>,
    timeout: Duration,
) {
    // A resumed handshake never ends in an Alert (PROTOCOL.md §4.2): a resumed session whose
    // first stream a reload refuses (key or service taken away) gets a reset, as its connector
    // would refuse codes 1 and 2 there.
    let handshake_refusal =
        |c: &AlertCode| matches!(c, AlertCode::Untrusted | AlertCode::ServiceMismatch);
    let code = code.filter(|(c, _)| {
        !(records.resumed && records.sealer.streams() == 0 && handshake_refusal(c))
    });
    let record =
        code.and_then(|(code, detail)| records.sealer.seal_alert(&Alert::new(code, detail)).ok());
    match record {
        // On the heap while it runs: its drain buffer is no part of the task that carries the
        // session's streams (memory per idle connection; `daemon::pair`'s size test).
        Some(r) => {
            Box::pin(send_alert(
                sealed,
                &r,
                tokio::time::Instant::now() + timeout,
            ))
            .await
        }
        None => reset_on_close(sealed),
    }
}

/// Most connector keys remembered as already seen by [`log_unknown_connector`]; past it, the
/// oldest is forgotten (and would be announced again).
const SEEN_CAPACITY: usize = 4096;

/// Connector keys outside the trust list seen by this process, oldest first.
static SEEN_UNKNOWN: std::sync::Mutex<std::collections::VecDeque<Fingerprint>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

/// Logs a connection by a key outside the trust list (let in by `accept_unknown`): prominently
/// the first time this process sees the key, as an info line afterwards.
fn log_unknown_connector(tunnel: &str, peer: &Peer, fp: &Fingerprint) {
    let first = {
        let mut seen = SEEN_UNKNOWN.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(fp) {
            false
        } else {
            if seen.len() >= SEEN_CAPACITY {
                seen.pop_front();
            }
            seen.push_back(*fp);
            true
        }
    };
    if first {
        tracing::warn!(tunnel = %tunnel, role = %Role::Listener, %peer, fingerprint = %fp,
            "new connector key {fp} (not in peers; accepted because accept_unknown = true)");
    } else {
        tracing::info!(tunnel = %tunnel, role = %Role::Listener, %peer, fingerprint = %fp,
            "connector key not in peers, accepted because accept_unknown = true");
    }
}

/// Where the connection described by `info` goes: the destination it names if `allow` allows
/// it, else `forward`. A destination is never ignored: one this listener cannot serve is refused,
/// and so is a connection without one when there is no `forward`.
fn choose_destination(
    forward: Option<&Address>,
    allow: &[DestinationRule],
    info: &StreamInfo,
) -> Result<Address, &'static str> {
    match (info.destination, forward) {
        (Some(_), _) if allow.is_empty() => Err(
            "the connector is in redirect mode but this listener has no `allow_destinations`",
        ),
        (Some(d), _) => {
            if allow.iter().any(|r| r.matches(&d)) {
                Ok(Address::Ip(d))
            } else {
                Err("destination not in `allow_destinations`")
            }
        }
        (None, Some(f)) => Ok(f.clone()),
        (None, None) => Err(
            "the connector named no destination (not in redirect mode) and this listener has no `forward`",
        ),
    }
}

/// An optional address for logs: `-` for none.
struct OptAddr(Option<std::net::SocketAddr>);

impl std::fmt::Display for OptAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => write!(f, "-"),
        }
    }
}

/// Sends the Alert record of a refusal to the authenticated connector, then ends our direction
/// and reads (and drops) what the connector had sent until its end of stream, within the
/// handshake deadline: closing with unread bytes would send a reset, which can make the
/// connector's kernel drop the alert before it is read.
async fn send_alert(
    sealed: &mut tokio::net::TcpStream,
    alert: &[u8],
    deadline: tokio::time::Instant,
) {
    let send = async {
        sealed.write_all(alert).await?;
        sealed.shutdown().await?;
        let mut sink = [0u8; 4096];
        // Bounded by the deadline; the connector closes on reading the alert.
        while sealed.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout_at(deadline, send).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_never_ignored() {
        let forward: Address = "127.0.0.1:6379".parse().unwrap();
        let allow: Vec<DestinationRule> = vec!["10.0.0.0/8:5432".parse().unwrap()];
        let info = |d: Option<&str>| StreamInfo {
            client: Some("192.0.2.1:1".parse().unwrap()),
            local: None,
            destination: d.map(|d| d.parse().unwrap()),
        };
        // Forward mode: the forward target, and a named destination is refused.
        assert_eq!(
            choose_destination(Some(&forward), &[], &info(None)),
            Ok(forward.clone())
        );
        assert!(choose_destination(Some(&forward), &[], &info(Some("10.0.0.1:5432"))).is_err());
        // allow_destinations: only what matches; nothing without a destination.
        assert_eq!(
            choose_destination(None, &allow, &info(Some("10.0.0.1:5432"))),
            Ok(Address::Ip("10.0.0.1:5432".parse().unwrap()))
        );
        assert!(choose_destination(None, &allow, &info(Some("10.0.0.1:5433"))).is_err());
        assert!(choose_destination(None, &allow, &info(Some("11.0.0.1:5432"))).is_err());
        assert!(choose_destination(None, &allow, &info(None)).is_err());
    }
}
