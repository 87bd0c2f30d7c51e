//! After the handshake: carry one stream of an established session through the pump and log
//! its close.

use std::fmt::Display;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use crate::proto::handshake::Role;
use crate::proto::identity::Fingerprint;
use crate::proto::record::{AlertCode, RecordError};
use crate::tunnel::accept::{Current, Tunnel};
use crate::tunnel::handshake::Records;
use crate::tunnel::net::{reset_on_close, Conn};
use crate::tunnel::pump::{pump, FinAfterClose, PumpError, PumpOptions, PumpStats};
use crate::tunnel::state::{OpenConn, TunnelState};

/// How one stream ended, for the session that carried it.
#[derive(Debug)]
pub(crate) enum StreamEnd {
    /// Both close records passed: the session may carry the next stream. The bytes read after
    /// the peer's close record (the start of the next stream, if any).
    Clean(Vec<u8>),
    /// Failed (both sockets are set to reset when dropped); the session is over.
    Failed,
}

/// Carries one stream of an established session between `plain` and `sealed` until both
/// directions have ended, resets both sockets if it fails (a Unix socket is just closed), and
/// logs the close line. What both roles do after the StreamInfo record that starts each stream
/// (sent by the connector, read by the listener). Bytes and rekeys are added to `state` live,
/// and the stream is listed in `state.open` while it runs (one connection per client stream);
/// a reload that revokes its key cuts it there (reset, logged as "revoked at reload"), or
/// `current` (the settings of now) refuses it at the start.
/// `last_stream`: whether the session will carry no other stream (a connector that will not
/// reuse it; a listener's session that reaches `session_max_age` by the stream's end), so our
/// close record is followed by a TCP half-close.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn carry<T: Tunnel>(
    tunnel: &T,
    current: &Current<T>,
    mut plain: Conn,
    sealed: &mut TcpStream,
    records: &mut Records,
    leftover: Vec<u8>,
    peer: impl Display,
    started: Instant,
    resumed: bool,
    last_stream: impl Into<FinAfterClose>,
    state: &TunnelState,
) -> StreamEnd {
    let Records {
        fingerprint,
        sealer,
        opener,
        session,
        kex,
        ..
    } = records;
    let fingerprint = *fingerprint;
    let shared = tunnel.shared();
    let session = session.as_ref().map(|g| g.entry.clone());
    if let Some(s) = &session {
        s.begin_stream();
    }
    let stats = Arc::new(PumpStats {
        tunnel: Some(state.traffic.clone()),
        session: session.as_ref().map(|s| s.traffic.clone()),
        ..PumpStats::default()
    });
    let entry = state.open.register(OpenConn::new(
        peer.to_string(),
        fingerprint,
        started,
        resumed,
        stats.clone(),
    ));
    let opts = PumpOptions {
        record_size: shared.record_size,
        rekey_interval: shared.rekey_interval,
        idle_timeout: shared.idle_timeout,
        dead_peer_timeout: shared.dead_peer_timeout,
        fin_after_close: last_stream.into(),
    };
    let fin_after_close = opts.fin_after_close;
    // A reload between this stream's admission and its registration swept the table without
    // it: the settings of now decide (a reload sends them before it sweeps).
    let revoked_meanwhile = !current.borrow().keeps_open(&fingerprint);
    let result = if revoked_meanwhile {
        Err(PumpError::Revoked)
    } else {
        let (sr, mut sw) = sealed.split();
        let cut = entry.conn.cut();
        match &mut plain {
            Conn::Tcp(p) => {
                let (pr, mut pw) = p.split();
                tokio::select! {
                    r = pump(&pr, &mut pw, &sr, &mut sw, sealer, opener, kex, leftover, opts, &stats) => r,
                    () = cut => Err(PumpError::Revoked),
                }
            }
            Conn::Unix(p) => {
                let (pr, mut pw) = p.split();
                tokio::select! {
                    r = pump(&pr, &mut pw, &sr, &mut sw, sealer, opener, kex, leftover, opts, &stats) => r,
                    () = cut => Err(PumpError::Revoked),
                }
            }
        }
    };
    // An exchange still in flight at the stream's end finishes between streams (PROTOCOL.md
    // §4.5): before the connector's next StreamInfo (or its return to the pool), before the
    // listener's wait for it. Not on a session that ends with this stream.
    let result = match result {
        // On the heap, and only then: no part of every connection's task (memory per idle
        // connection).
        Ok(rest) if kex.in_flight() && !fin_after_close.at(Instant::now()) => {
            Box::pin(kex.settle(sealed, sealer, opener, rest, shared.handshake_timeout))
                .await
                .map(Option::unwrap_or_default)
                .map_err(PumpError::Kex)
        }
        other => other,
    };
    drop(entry);
    if let Some(s) = &session {
        s.end_stream();
    }
    state.counters.streams.fetch_add(1, Ordering::Relaxed);
    if result.is_err() {
        plain.reset_on_close();
        reset_on_close(sealed);
    }
    // On the connector, `peer` is the local client (on the line's span, `client=`): the line
    // names the listener's address.
    let peer: &dyn Display = match (&session, tunnel.role()) {
        (Some(s), Role::Connector) => &s.peer,
        _ => &peer,
    };
    if let Err(PumpError::Record(RecordError::Refused(alert))) = &result {
        // The listener authenticated this connector and refused it: its reason, not a reset.
        // Counted when it refuses the connector; a stream it could not carry (its target down,
        // its destination refused) is no refusal of the connector.
        let counter = match alert.code() {
            AlertCode::Untrusted => Some(&state.counters.refused_untrusted),
            AlertCode::ServiceMismatch => Some(&state.counters.refused_service),
            AlertCode::ForwardUnreachable | AlertCode::DestinationNotAllowed => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        tracing::error!(tunnel = %tunnel.name(), role = %tunnel.role(), %peer,
            fingerprint = %fingerprint, "{}", tunnel.describe_refusal(alert));
        state.refused_by_listener(alert, Instant::now());
        return StreamEnd::Failed;
    }
    log_close(
        tunnel.name(),
        tunnel.role(),
        peer,
        &fingerprint,
        &stats,
        started,
        kex.completed(),
        &result,
    );
    match result {
        Ok(rest) => StreamEnd::Clean(rest),
        Err(_) => StreamEnd::Failed,
    }
}

/// The line logged when an established connection ends.
#[allow(clippy::too_many_arguments)]
fn log_close(
    tunnel: &str,
    role: Role,
    peer: impl Display,
    fingerprint: &Fingerprint,
    stats: &PumpStats,
    started: Instant,
    key_exchanges: u64,
    result: &Result<Vec<u8>, PumpError>,
) {
    let (sent, received, rekeys) = stats.snapshot();
    let duration_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(_) => tracing::info!(
            tunnel = %tunnel, role = %role, %peer, fingerprint = %fingerprint, sent, received, rekeys, key_exchanges, duration_ms,
            reason = "closed by both ends", "connection closed"
        ),
        Err(e) => tracing::warn!(
            tunnel = %tunnel, role = %role, %peer, fingerprint = %fingerprint, sent, received, rekeys, key_exchanges, duration_ms,
            reason = %e, "connection reset"
        ),
    }
}
