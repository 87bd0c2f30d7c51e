//! The parsed public keys of recent peers, so that a key seen again is not parsed again.
//!
//! [`PublicIdentity::from_spki_der`] costs about 10 µs of big-number work (the `rsa` crate's
//! checks and the canonical re-encoding), once per side of every full handshake. The same
//! connector and listener keys come back on every connection, so the handshake looks a key up
//! here by its exact DER first. Parsing is a pure function of the DER, so a hit is exactly what
//! a parse would give. Only keys that completed a handshake (trusted, or accepted by the pin)
//! are added, and at most [`CAPACITY`] are kept: a crowd of keys can only make the others be
//! parsed again, never change a result. This memory is the one state the protocol core shares
//! between handshakes.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use crate::proto::identity::{IdentityError, PublicIdentity};

/// Keys kept by the process.
pub(crate) const CAPACITY: usize = 32;

static RECENT: KeyMemo = KeyMemo::new(CAPACITY);

/// The key of `der`: the one kept if it is the same DER, else parsed.
pub(crate) fn parse(der: &[u8]) -> Result<PublicIdentity, IdentityError> {
    RECENT.parse(der)
}

/// Keeps `key` (a peer that completed a handshake) as the most recently used.
pub(crate) fn remember(key: &PublicIdentity) {
    RECENT.remember(key);
}

/// At most `capacity` keys, most recently used first.
struct KeyMemo {
    capacity: usize,
    keys: Mutex<VecDeque<PublicIdentity>>,
}

impl KeyMemo {
    const fn new(capacity: usize) -> Self {
        KeyMemo {
            capacity,
            keys: Mutex::new(VecDeque::new()),
        }
    }

    fn keys(&self) -> MutexGuard<'_, VecDeque<PublicIdentity>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn parse(&self, der: &[u8]) -> Result<PublicIdentity, IdentityError> {
        if let Some(hit) = self.keys().iter().find(|k| k.spki_der() == der) {
            return Ok(hit.clone());
        }
        PublicIdentity::from_spki_der(der)
    }

    fn remember(&self, key: &PublicIdentity) {
        let mut keys = self.keys();
        match keys.iter().position(|k| k == key) {
            Some(0) => return,
            Some(i) => {
                keys.remove(i);
            }
            None => {}
        }
        keys.push_front(key.clone());
        keys.truncate(self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::identity::PrivateIdentity;

    fn key() -> PublicIdentity {
        PrivateIdentity::generate(2048).unwrap().0.public().clone()
    }

    #[test]
    fn a_kept_key_is_the_parsed_key_and_the_least_recent_goes_first() {
        let memo = KeyMemo::new(2);
        let (a, b, c) = (key(), key(), key());
        memo.remember(&a);
        assert_eq!(memo.parse(a.spki_der()).unwrap(), a);
        // A different DER is never answered from the memory, however close.
        let mut flipped = a.spki_der().to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_ne!(memo.parse(&flipped).ok().as_ref(), Some(&a));
        memo.remember(&b);
        memo.remember(&a);
        memo.remember(&c);
        let kept: Vec<_> = memo.keys().iter().cloned().collect();
        assert_eq!(
            kept,
            [c, a],
            "bounded, most recent first, b (least recent) gone"
        );
        // A key not kept is still parsed, to the same result.
        assert_eq!(memo.parse(b.spki_der()).unwrap(), b);
    }
}
