//! The listener's admission of each stream of a session (PROTOCOL.md §4.3): every stream is
//! admitted against the settings in force when it starts, not those of the session's accept.
//!
//! A session is made under terms that a reload may take away: the connector's key trusted, the
//! service it asked for, the listener key its hello was keyed for, the PSK. While they hold, each
//! new stream simply takes the tunnel's current `forward`, `allow_destinations`,
//! `proxy_protocol` and idle bounds. Once one of them no longer holds (or the tunnel is gone
//! from the configuration), or once the session is `session_max_age` old, the session carries no
//! new stream: it finishes the one it carries and is closed, cleanly, between streams.
//!
//! A key no longer trusted is the daemon's to act on between streams (a reload resets such
//! sessions, `revoke`); here it refuses the next stream.
//!
//! The settings are followed through the tunnel's `watch` channel: per stream, one atomic load
//! tells whether a reload sent new ones since the last look; only then are they taken (one
//! `Arc` clone) and the session's terms checked against them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proto::handshake::ListenerParams;
use crate::proto::identity::Fingerprint;
use crate::proto::Psk;
use crate::tunnel::accept::{Current, Tunnel};

/// What a listener tunnel's settings tell the admission of a stream (implemented by
/// `tunnel::listener::ListenerTunnel`).
pub(crate) trait Admits: Tunnel {
    /// Identity, trusted connectors, PSK, service.
    fn params(&self) -> &ListenerParams;
    /// `session_max_age`.
    fn session_max_age(&self) -> Duration;
}

/// Why a session carries no new stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retired {
    /// A reload removed the connector's key from the trust list.
    Untrusted,
    /// A reload changed the listener's `service`.
    Service,
    /// A reload took away the listener key the session's hello was keyed for.
    Key,
    /// A reload changed (or added, or removed) the PSK.
    Psk,
    /// The session is `session_max_age` old.
    MaxAge,
    /// Its hybrid keys are past 1.5 × `rekey_interval` (PROTOCOL.md §4.5).
    StaleKeys,
}

impl std::fmt::Display for Retired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Retired::Untrusted => "its connector key is no longer trusted after a reload",
            Retired::Service => "a reload changed this listener's service",
            Retired::Key => "a reload took away the listener key it was made under",
            Retired::Psk => "a reload changed the psk",
            Retired::MaxAge => "it reached session_max_age",
            Retired::StaleKeys => {
                "its hybrid keys are older than 1.5 x rekey_interval (no fresh key exchange)"
            }
        })
    }
}

/// What a session was made under: what every later stream's settings must still grant.
pub(crate) struct Made {
    /// The connector's key.
    pub(crate) peer: Fingerprint,
    /// The listener key its hello was keyed for.
    pub(crate) own: Fingerprint,
    /// The service of its handshake.
    pub(crate) service: Arc<str>,
    /// The PSK of its handshake.
    pub(crate) psk: Option<Arc<Psk>>,
    /// When its handshake completed.
    pub(crate) born: Instant,
}

/// The settings in force for one session, refreshed when a reload sends new ones.
pub(crate) struct Terms<T> {
    /// The tunnel's settings as the last reload left them.
    pub(crate) tunnel: Arc<T>,
    /// Whether the session's terms still hold under them (the age aside).
    verdict: Option<Retired>,
    /// False once no reload can come (the tunnel's channel is closed: the tunnel was removed,
    /// or stopped; an in-process pair has none): the last settings stay.
    following: bool,
}

impl<T: Admits> Terms<T> {
    /// The settings in force now, marked as seen in `current`.
    pub(crate) fn new(current: &mut Current<T>, made: &Made) -> Terms<T> {
        let mut t = Terms {
            tunnel: current.borrow().clone(),
            verdict: None,
            following: true,
        };
        let r = if current.has_changed().is_err() {
            Err(())
        } else {
            Ok(())
        };
        t.take(current, made, r);
        t
    }

    /// Takes the settings a reload sent since the last look, if any: one atomic load when
    /// there were none.
    pub(crate) fn refresh(&mut self, current: &mut Current<T>, made: &Made) {
        if self.following {
            match current.has_changed() {
                Ok(false) => {}
                Ok(true) => self.take(current, made, Ok(())),
                Err(_) => self.take(current, made, Err(())),
            }
        }
    }

    /// Resolves when a reload sends new settings (or the channel closes), never if no reload
    /// can come; then pass its result to [`Terms::changed`].
    pub(crate) async fn next_reload(following: bool, current: &mut Current<T>) -> Result<(), ()> {
        if !following {
            return std::future::pending().await;
        }
        current.changed().await.map_err(|_| ())
    }

    /// Whether a reload may still come (the argument of [`Terms::next_reload`]).
    pub(crate) fn following(&self) -> bool {
        self.following
    }

    /// After [`Terms::next_reload`]: the settings it sent.
    pub(crate) fn changed(
        &mut self,
        current: &mut Current<T>,
        made: &Made,
        result: Result<(), ()>,
    ) {
        self.take(current, made, result);
    }

    /// Takes the settings in `current`; `Err`: the last ones, as the channel is closed.
    fn take(&mut self, current: &mut Current<T>, made: &Made, r: Result<(), ()>) {
        self.tunnel = current.borrow_and_update().clone();
        self.following = r.is_ok();
        let t = &self.tunnel;
        self.verdict = if !t.accepts_new(&made.peer) {
            Some(Retired::Untrusted)
        } else if t.params().service != made.service {
            Some(Retired::Service)
        } else if !t
            .params()
            .identities()
            .any(|k| k.public().fingerprint() == made.own)
        {
            Some(Retired::Key)
        } else if t.params().psk != made.psk {
            Some(Retired::Psk)
        } else {
            None
        };
    }

    /// Why a reload took away the session's terms, if it did (its age aside).
    pub(crate) fn refused(&self) -> Option<Retired> {
        self.verdict
    }

    /// Whether the session has reached its `session_max_age` (under these settings) at `now`.
    pub(crate) fn aged(&self, made: &Made, now: Instant) -> bool {
        past_max_age(made.born, self.max_age(), now)
    }

    /// The session's `session_max_age` under these settings.
    pub(crate) fn max_age(&self) -> Duration {
        self.tunnel.session_max_age()
    }

    /// The instant the session reaches its `session_max_age`.
    pub(crate) fn end_of_life(&self, made: &Made) -> Instant {
        end_of_life(made.born, self.max_age())
    }
}

/// Whether a session made at `born` has reached `max_age` at `now`.
pub(crate) fn past_max_age(born: Instant, max_age: Duration, now: Instant) -> bool {
    now.saturating_duration_since(born) >= max_age
}

/// When a session made at `born` reaches `max_age` (far in the future if that overflows).
fn end_of_life(born: Instant, max_age: Duration) -> Instant {
    born.checked_add(max_age)
        .unwrap_or_else(|| born + Duration::from_secs(365 * 24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_past_its_max_age_from_the_instant_it_reaches_it() {
        let born = Instant::now();
        let max = Duration::from_secs(3600);
        assert!(!past_max_age(born, max, born));
        assert!(!past_max_age(
            born,
            max,
            born + max - Duration::from_millis(1)
        ));
        assert!(past_max_age(born, max, born + max));
        assert!(past_max_age(born, max, born + max + Duration::from_secs(1)));
        // A clock read before the session's birth (another thread's `now`) is not past it.
        assert!(!past_max_age(born + Duration::from_secs(1), max, born));
        assert_eq!(end_of_life(born, max), born + max);
        // A reload that shortens it applies to sessions already open.
        assert!(past_max_age(
            born,
            Duration::from_secs(60),
            born + Duration::from_secs(61)
        ));
    }
}
