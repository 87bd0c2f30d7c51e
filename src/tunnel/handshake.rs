//! Drives the sans-IO handshake over a socket, under a deadline, and holds what an established
//! session runs on ([`Records`]: its record layer and the peer's key).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::proto::handshake::{Established, Handshake, HandshakeError, Role};
use crate::proto::identity::Fingerprint;
use crate::proto::messages::MAX_MESSAGE_LEN;
use crate::proto::record::{Opener, Sealer};
use crate::tunnel::kex::SessionKex;
use crate::tunnel::sessions::{SessionEntry, SessionGuard, Sessions};

/// An established session's record layer and the peer it is with: what the pump runs on.
pub(crate) struct Records {
    /// The peer's verified fingerprint.
    pub fingerprint: Fingerprint,
    /// Our direction.
    pub sealer: Sealer,
    /// The peer's direction.
    pub opener: Opener,
    /// Its entry among the tunnel's live sessions, once registered ([`Records::register`]).
    pub(crate) session: Option<SessionGuard>,
    /// The session was resumed (no Alert code 1 or 2 as its first record, PROTOCOL.md §4.2).
    pub(crate) resumed: bool,
    /// The fresh hybrid exchanges inside the session (PROTOCOL.md §4.5) and their clock.
    pub(crate) kex: SessionKex,
}

impl Records {
    /// The record layer of `est` on the `role` side, rekeying our direction after
    /// `rekey_bytes`; its hybrid keys made now.
    pub(crate) fn new(est: Established, role: Role, rekey_bytes: u64) -> Self {
        let fingerprint = est.peer.fingerprint();
        let resumed = est.resumed;
        let (sealer, opener) = est.into_record_layer(rekey_bytes);
        Records {
            fingerprint,
            sealer,
            opener,
            session: None,
            resumed,
            kex: SessionKex::new(role, std::time::Instant::now()),
        }
    }

    /// Lists this session among `table`'s live sessions for as long as it lives.
    pub(crate) fn register(&mut self, table: &Arc<Sessions>, entry: SessionEntry) {
        self.session = Some(table.register(entry));
    }

    /// The peer was heard from now (a record opened outside the pump: between streams).
    pub(crate) fn heard(&self) {
        if let Some(s) = &self.session {
            s.entry.traffic.heard();
        }
    }

    /// Its id among the live sessions (0 before [`Records::register`]).
    pub(crate) fn session_id(&self) -> u64 {
        self.session.as_ref().map_or(0, |s| s.entry.id)
    }
}

/// Why a handshake over a socket failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The peer did not finish within `handshake_timeout`.
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection during the handshake (a refusal looks like this).
    #[error("peer closed the connection during the handshake")]
    Eof,
    /// The peer closed the connection without sending a byte in answer to our first message: a
    /// listener does this to a hello whose mac1 is keyed for none of its keys (or whose PSK
    /// option differs). A connector with another pin tries it next.
    #[error("peer closed the connection without answering the hello")]
    Unanswered,
    /// The socket failed.
    #[error("i/o error during the handshake: {0}")]
    Io(#[from] std::io::Error),
    /// A connector could not reach its listener (no answer, or a `connect` host name that does
    /// not resolve).
    #[error("cannot connect to the listener at {address}: {error}")]
    Connect {
        /// The `connect` address, as configured.
        address: String,
        /// Why.
        error: std::io::Error,
    },
    /// The protocol refused the peer.
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    /// Listener: a hello whose ephemeral key was seen before (a captured hello sent again); not
    /// answered.
    #[error("replayed hello (its ephemeral key was seen before), not answered")]
    Replay,
    /// Listener: a hello from a source past `source_handshake_rate` full handshakes per second;
    /// not answered.
    #[error("source over its full-handshake rate (source_handshake_rate), hello not answered")]
    SourceLimited,
    /// Listener: a connection without a valid hello yet, closed to make room for a newer one
    /// (at `max_connections`, or past its source's share: `tunnel::pre_auth`).
    #[error("closed without a valid hello to make room for a newer connection (the oldest such goes first)")]
    Evicted,
    /// Listener: a hello that found no place in the signing queue (or was pushed out of it by
    /// hellos of less busy sources); not answered.
    #[error("too many hellos waiting for a signature, hello not answered")]
    Overloaded,
}

impl SessionError {
    /// A short, stable label for metrics: `timeout`, `eof`, `io`, or the handshake's
    /// [`HandshakeError::reason`].
    pub fn reason(&self) -> &'static str {
        match self {
            SessionError::Timeout(_) => "timeout",
            SessionError::Eof | SessionError::Unanswered => "eof",
            SessionError::Io(_) | SessionError::Connect { .. } => "io",
            SessionError::Handshake(h) => h.reason(),
            SessionError::Replay => "replay",
            SessionError::SourceLimited => "source_limit",
            SessionError::Overloaded => "overloaded",
            SessionError::Evicted => "evicted",
        }
    }
}

/// Runs `hs` over `stream` until it completes or `deadline` passes (`timeout` is what the
/// deadline was set from, for the message). `already_read` is fed first (a hello the caller read
/// to check it). Returns the session, the bytes that arrived after the last handshake message
/// (the first records) and our last handshake message, **not yet sent** (a connector's
/// ConnectorAuth or ResumeFinished; empty for a listener), so that the caller sends it in one
/// write with its first record. `work` adds up the time the state machine spent on what it read
/// (a listener charges a ConnectorAuth's RSA verification to its `signature_cpu` budget).
pub(crate) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    hs: Handshake,
    already_read: &[u8],
    deadline: Instant,
    timeout: Duration,
    work: &mut Duration,
) -> Result<(Established, Vec<u8>, Vec<u8>), SessionError> {
    match tokio::time::timeout_at(deadline, run(stream, hs, already_read, work)).await {
        Ok(result) => result,
        Err(_) => Err(SessionError::Timeout(timeout)),
    }
}

/// Writes what `hs` has to send now (a listener's answer) within `deadline`.
pub(crate) async fn send_output<S: AsyncWrite + Unpin>(
    stream: &mut S,
    hs: &mut Handshake,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), SessionError> {
    let out = hs.take_output();
    if out.is_empty() {
        return Ok(());
    }
    match tokio::time::timeout_at(deadline, stream.write_all(&out)).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(SessionError::Timeout(timeout)),
    }
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    mut hs: Handshake,
    already_read: &[u8],
    work: &mut Duration,
) -> Result<(Established, Vec<u8>, Vec<u8>), SessionError> {
    if !already_read.is_empty() {
        let used = hs.read(already_read)?;
        // A listener's deferred answer is made by its caller (the signing threads); none is
        // made here.
        if hs.reply_pending() || used != already_read.len() {
            return Err(SessionError::Handshake(HandshakeError::State));
        }
    }
    // Never more than one handshake message is buffered: the state machine reads exactly up to
    // the end of each message, and bounds each by its header.
    let mut buf = vec![0u8; MAX_MESSAGE_LEN];
    // A listener has read the hello before it gets here.
    let mut answered = !already_read.is_empty() || hs.role() == Role::Listener;
    loop {
        let out = hs.take_output();
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
        if hs.is_done() {
            return Ok((hs.finish()?, Vec::new(), Vec::new()));
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(if answered {
                SessionError::Eof
            } else {
                SessionError::Unanswered
            });
        }
        answered = true;
        let started = std::time::Instant::now();
        let used = hs.read(&buf[..n]);
        *work += started.elapsed();
        let used = used?;
        if hs.is_done() {
            let unsent = hs.take_output();
            let rest = buf[used..n].to_vec();
            return Ok((hs.finish()?, rest, unsent));
        }
    }
}
