//! The liveness rule of a session (PROTOCOL.md §4.4), with time as a parameter.
//!
//! Every record opened from the peer is "heard". A side that has heard nothing from its peer
//! for half the `dead_peer_timeout` sends one Ping (and waits); one that has still heard nothing
//! a whole `dead_peer_timeout` after the last record heard takes the session for dead. The
//! caller supplies the time of every call, so tests step it.

use std::time::{Duration, Instant};

/// What the caller must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Send one Ping record.
    SendPing,
    /// The peer has been silent for the whole timeout (given): close the session.
    Dead(Duration),
}

/// One session's liveness: when the peer was last heard from, and whether a Ping is out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    timeout: Duration,
    last_heard: Instant,
    ping_sent: bool,
}

impl Liveness {
    /// A session whose peer was last heard from at `heard`, dead after `timeout` of silence.
    pub fn new(timeout: Duration, heard: Instant) -> Self {
        Liveness {
            timeout: timeout.max(Duration::from_millis(2)),
            last_heard: heard,
            ping_sent: false,
        }
    }

    /// A record from the peer was opened at `at` (a time earlier than the last one heard
    /// changes nothing).
    pub fn heard(&mut self, at: Instant) {
        if at > self.last_heard {
            self.last_heard = at;
            self.ping_sent = false;
        }
    }

    /// When the peer was last heard from.
    pub fn last_heard(&self) -> Instant {
        self.last_heard
    }

    /// How long the peer has been silent at `now`.
    pub fn silent(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_heard)
    }

    /// Whether the peer was heard from within `within` of `now`.
    pub fn heard_within(&self, within: Duration, now: Instant) -> bool {
        self.silent(now) <= within
    }

    /// The rule at `now`: [`Action::SendPing`] once per silence of half the timeout (the
    /// caller sends it), [`Action::Dead`] once the whole timeout has passed.
    pub fn poll(&mut self, now: Instant) -> Action {
        let silent = self.silent(now);
        if silent >= self.timeout {
            Action::Dead(self.timeout)
        } else if silent >= self.timeout / 2 && !self.ping_sent {
            self.ping_sent = true;
            Action::SendPing
        } else {
            Action::None
        }
    }

    /// When [`Liveness::poll`] may next have something to do (if nothing is heard meanwhile).
    pub fn next_due(&self) -> Instant {
        if self.ping_sent {
            self.last_heard + self.timeout
        } else {
            self.last_heard + self.timeout / 2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(20);

    #[test]
    fn a_silent_peer_gets_one_ping_then_is_dead() {
        let t0 = Instant::now();
        let mut l = Liveness::new(T, t0);
        assert_eq!(l.poll(t0), Action::None);
        assert_eq!(l.next_due(), t0 + T / 2);
        assert_eq!(l.poll(t0 + Duration::from_millis(9_999)), Action::None);
        assert_eq!(l.poll(t0 + T / 2), Action::SendPing);
        // One Ping per silence, however often it is polled.
        assert_eq!(l.poll(t0 + T / 2), Action::None);
        assert_eq!(l.poll(t0 + Duration::from_secs(19)), Action::None);
        assert_eq!(l.next_due(), t0 + T);
        assert_eq!(l.poll(t0 + T), Action::Dead(T));
        assert_eq!(l.poll(t0 + 3 * T), Action::Dead(T));
    }

    #[test]
    fn anything_heard_starts_the_silence_again() {
        let t0 = Instant::now();
        let mut l = Liveness::new(T, t0);
        assert_eq!(l.poll(t0 + T / 2), Action::SendPing);
        // The Pong (or any record) comes: alive, and the next silence gets its own Ping.
        l.heard(t0 + Duration::from_secs(11));
        assert_eq!(l.poll(t0 + Duration::from_secs(20)), Action::None);
        assert_eq!(l.poll(t0 + Duration::from_secs(21)), Action::SendPing);
        assert_eq!(l.poll(t0 + Duration::from_secs(30)), Action::None);
        assert_eq!(l.poll(t0 + Duration::from_secs(31)), Action::Dead(T));
        // A stale "heard" does not move the clock back.
        let mut l = Liveness::new(T, t0 + T);
        l.heard(t0);
        assert_eq!(l.last_heard(), t0 + T);
        assert!(l.heard_within(Duration::ZERO, t0 + T));
        assert!(!l.heard_within(T / 2, t0 + T + T / 2 + Duration::from_millis(1)));
    }

    #[test]
    fn a_peer_that_keeps_talking_is_never_pinged_nor_dead() {
        let t0 = Instant::now();
        let mut l = Liveness::new(T, t0);
        for s in 1..1000 {
            let now = t0 + Duration::from_secs(s);
            l.heard(now - Duration::from_secs(1));
            assert_eq!(l.poll(now), Action::None);
        }
    }
}
