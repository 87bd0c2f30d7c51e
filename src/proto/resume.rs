//! Session resumption: tickets, their stores and the resumption key schedule (sans-IO).
//!
//! After a full handshake both sides hold the same resumption secret `T`
//! ([`crate::proto::handshake::Established::resumption`]). Both derive the same ticket id from
//! it, so no ticket message is sent: the listener files `T` in its [`TicketStore`] under that
//! id, the connector keeps it as its current [`ConnectorTickets`] ticket. A later connection
//! offers the id and proves knowledge of `T` (the binder); the two sides then run a fresh X25519
//! exchange keyed by `T`, with no RSA operation:
//!
//! ```text
//! ticket_id   = ExpandLabel(T, "ticket id", "", 16)
//! binder_key  = ExpandLabel(T, "res binder", "", 32)
//! binder      = HMAC(binder_key, H(ResumeHello up to the binder, header included))
//! es          = Extract(salt = T, ikm = X25519(e_c, e_l))
//! c_rhs, l_rhs= ExpandLabel(es, "c res hs" | "l res hs", H(ResumeHello || ResumeAccept w/o fin), 32)
//! master      = Extract(salt = ExpandLabel(es, "derived", H(""), 32), ikm = 0^32)
//! c_ap, l_ap  = ExpandLabel(master, "c res ap" | "l res ap", H(whole transcript), 32)
//! ```
//!
//! Tickets live in memory only, expire after a lifetime and serve a bounded number of uses. Time
//! is passed in (`now: Instant`), so tests expire tickets without sleeping.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proto::identity::{Fingerprint, PublicIdentity};
use crate::proto::keys::Psk;
use crate::proto::keys::{
    ct_eq, derive_secret, expand_label, extract, hash, hmac, Secret, HASH_LEN,
};
use crate::proto::messages::TICKET_ID_LEN;

/// A ticket id: derived from the ticket secret, sent in clear in the resume hello.
pub type TicketId = [u8; TICKET_ID_LEN];

/// Default number of tickets a listener keeps per tunnel.
pub const DEFAULT_STORE_CAPACITY: usize = 10_000;

/// How long a ticket lives and how many resumptions it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketPolicy {
    /// Lifetime from the full handshake that made the ticket.
    pub lifetime: Duration,
    /// Resumptions one ticket serves.
    pub uses: u32,
}

impl Default for TicketPolicy {
    fn default() -> Self {
        TicketPolicy {
            lifetime: Duration::from_secs(3600),
            uses: 1000,
        }
    }
}

/// What a ticket is bound to on one side: the tunnel's keys and PSK. A ticket made under other
/// keys or another PSK (changed by a reload) is not used: that side runs a full handshake.
pub type TicketContext = [u8; HASH_LEN];

/// The [`TicketContext`] of a side with these keys (own, then the peer's pinned one for a
/// connector), this PSK and this service.
pub fn ticket_context(keys: &[&Fingerprint], psk: Option<&Psk>, service: &[u8]) -> TicketContext {
    let mut input = b"sealpipe2 ticket context".to_vec();
    input.push(service.len() as u8);
    input.extend_from_slice(service);
    for k in keys {
        input.extend_from_slice(k.as_bytes());
    }
    match psk {
        Some(p) => {
            input.push(1);
            input.extend_from_slice(p.expose());
        }
        None => input.push(0),
    }
    let out = hash(&input);
    zeroize::Zeroize::zeroize(&mut input);
    out
}

/// The ticket id of the ticket secret `t`.
pub fn ticket_id(t: &Secret) -> TicketId {
    let mut id = [0u8; TICKET_ID_LEN];
    expand_label(t, "ticket id", b"", &mut id);
    id
}

/// The binder of a resume hello: `HMAC(binder_key, H(hello up to the binder))`.
pub fn binder(t: &Secret, hello_before_binder: &[u8]) -> [u8; HASH_LEN] {
    let key = derive_secret(t, "res binder", b"");
    hmac(key.expose(), &[&hash(hello_before_binder)])
}

/// The resumption key schedule (module documentation), from the ticket secret and a fresh
/// X25519 shared secret.
pub struct ResumeSecrets {
    es: Secret,
}

impl ResumeSecrets {
    /// `es = Extract(salt = T, ikm = dh)`.
    pub fn new(t: &Secret, shared: &[u8; 32]) -> Self {
        ResumeSecrets {
            es: extract(t.expose(), shared),
        }
    }

    /// The handshake traffic secrets (connector's, listener's), bound to the hash of the
    /// resume hello and the resume accept without its finished MAC.
    pub fn handshake_traffic(&self, hellos_hash: &[u8; HASH_LEN]) -> (Secret, Secret) {
        (
            derive_secret(&self.es, "c res hs", hellos_hash),
            derive_secret(&self.es, "l res hs", hellos_hash),
        )
    }

    /// The application traffic secrets (connector → listener, listener → connector) and a
    /// resumption secret, bound to the hash of the whole transcript.
    pub fn application_traffic(
        &self,
        transcript_hash: &[u8; HASH_LEN],
    ) -> (Secret, Secret, Secret) {
        let salt = derive_secret(&self.es, "derived", &hash(b""));
        let master = extract(salt.expose(), &[0u8; HASH_LEN]);
        (
            derive_secret(&master, "c res ap", transcript_hash),
            derive_secret(&master, "l res ap", transcript_hash),
            derive_secret(&master, "res master", transcript_hash),
        )
    }
}

/// Why a listener did not accept a ticket (it then runs a full handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TicketRefusal {
    /// No ticket with this id (never issued, evicted, used up, or the daemon restarted).
    #[error("unknown ticket")]
    Unknown,
    /// The binder does not verify: the sender does not hold the ticket secret.
    #[error("ticket binder does not verify")]
    BadBinder,
    /// Past its lifetime.
    #[error("ticket expired")]
    Expired,
    /// Its peer's key is no longer in the trust list, or this side's keys or PSK changed.
    #[error("ticket's peer is no longer trusted")]
    Untrusted,
    /// This side has resumption turned off.
    #[error("resumption is disabled")]
    Disabled,
    /// Connector: the listener answered the offered ticket with a full handshake.
    #[error("the listener refused the ticket")]
    RefusedByListener,
}

struct ListenerTicket {
    secret: Secret,
    peer: Arc<PublicIdentity>,
    context: TicketContext,
    created: Instant,
    lifetime: Duration,
    uses_left: u32,
}

/// The binder a resume hello presents, with the bytes it covers.
#[derive(Debug, Clone, Copy)]
pub struct PresentedBinder<'a> {
    /// The resume hello up to the binder, header included.
    pub hello_before_binder: &'a [u8],
    /// The binder field.
    pub binder: &'a [u8],
}

/// A ticket the listener accepted: its secret and the peer it was issued to.
pub struct Redeemed {
    /// The ticket secret `T`.
    pub secret: Secret,
    /// The connector authenticated by the full handshake that made the ticket.
    pub peer: Arc<PublicIdentity>,
}

/// The listener's tickets of one tunnel, by id; bounded, in memory only. Secrets are zeroized
/// when an entry is dropped.
pub struct TicketStore {
    tickets: HashMap<TicketId, ListenerTicket>,
    capacity: usize,
}

impl Default for TicketStore {
    fn default() -> Self {
        TicketStore::with_capacity(DEFAULT_STORE_CAPACITY)
    }
}

impl std::fmt::Debug for TicketStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketStore")
            .field("len", &self.tickets.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

fn expired(created: Instant, lifetime: Duration, now: Instant) -> bool {
    now.checked_duration_since(created)
        .is_none_or(|age| age >= lifetime)
}

impl TicketStore {
    /// An empty store holding at most `capacity` (at least 1) tickets.
    pub fn with_capacity(capacity: usize) -> Self {
        TicketStore {
            tickets: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Tickets held.
    pub fn len(&self) -> usize {
        self.tickets.len()
    }

    /// True when no ticket is held.
    pub fn is_empty(&self) -> bool {
        self.tickets.is_empty()
    }

    /// Files the ticket of a full handshake with `peer` (under `context`). At capacity,
    /// expired tickets go first, then the oldest.
    pub fn insert(
        &mut self,
        secret: Secret,
        peer: Arc<PublicIdentity>,
        context: TicketContext,
        policy: TicketPolicy,
        now: Instant,
    ) {
        if policy.uses == 0 {
            return;
        }
        let id = ticket_id(&secret);
        if self.tickets.len() >= self.capacity && !self.tickets.contains_key(&id) {
            self.tickets
                .retain(|_, t| !expired(t.created, t.lifetime, now));
            if self.tickets.len() >= self.capacity {
                let oldest = self
                    .tickets
                    .iter()
                    .min_by_key(|(_, t)| t.created)
                    .map(|(id, _)| *id);
                if let Some(oldest) = oldest {
                    self.tickets.remove(&oldest);
                }
            }
        }
        self.tickets.insert(
            id,
            ListenerTicket {
                secret,
                peer,
                context,
                created: now,
                lifetime: policy.lifetime,
                uses_left: policy.uses,
            },
        );
    }

    /// Redeems ticket `id` for one resumption, checking in order: known, binder, lifetime (the shorter of the ticket's and `policy`'s), the
    /// peer's key still `trusted` (in the trust list, or any key with `accept_unknown`), the same `context` (keys, PSK). Uses one of its uses; an
    /// expired, untrusted or used-up ticket is removed. A bad binder leaves the ticket alone.
    pub fn redeem(
        &mut self,
        id: &TicketId,
        presented: PresentedBinder<'_>,
        trusted: &dyn Fn(&Fingerprint) -> bool,
        context: &TicketContext,
        policy: TicketPolicy,
        now: Instant,
    ) -> Result<Redeemed, TicketRefusal> {
        let t = self.tickets.get_mut(id).ok_or(TicketRefusal::Unknown)?;
        if !ct_eq(
            &binder(&t.secret, presented.hello_before_binder),
            presented.binder,
        ) {
            return Err(TicketRefusal::BadBinder);
        }
        let refusal = if expired(t.created, t.lifetime.min(policy.lifetime), now) {
            Some(TicketRefusal::Expired)
        } else if !trusted(&t.peer.fingerprint()) || !ct_eq(&t.context, context) {
            Some(TicketRefusal::Untrusted)
        } else {
            None
        };
        if let Some(r) = refusal {
            self.tickets.remove(id);
            return Err(r);
        }
        t.uses_left = t.uses_left.saturating_sub(1);
        let redeemed = Redeemed {
            secret: t.secret.clone(),
            peer: t.peer.clone(),
        };
        if t.uses_left == 0 {
            self.tickets.remove(id);
        }
        Ok(redeemed)
    }

    /// Uses left on ticket `id` (for tests and diagnostics).
    pub fn uses_left(&self, id: &TicketId) -> Option<u32> {
        self.tickets.get(id).map(|t| t.uses_left)
    }
}

struct ConnectorTicket {
    secret: Secret,
    id: TicketId,
    context: TicketContext,
    peer: Arc<PublicIdentity>,
    created: Instant,
    lifetime: Duration,
    uses_left: u32,
}

/// A ticket the connector offers in one connection.
pub struct Offer {
    /// The ticket secret `T`.
    pub secret: Secret,
    /// Its id.
    pub id: TicketId,
    /// The listener authenticated by the full handshake that made it.
    pub peer: Arc<PublicIdentity>,
}

/// The connector's current ticket for one tunnel (keyed by the pinned listener key); in
/// memory only, zeroized when replaced or dropped.
#[derive(Default)]
pub struct ConnectorTickets {
    current: Option<ConnectorTicket>,
}

impl std::fmt::Debug for ConnectorTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorTickets")
            .field("has_ticket", &self.current.is_some())
            .finish()
    }
}

impl ConnectorTickets {
    /// Keeps the ticket of a full handshake with `peer` (under `context`: both keys and the
    /// PSK), replacing any other.
    pub fn insert(
        &mut self,
        secret: Secret,
        peer: Arc<PublicIdentity>,
        context: TicketContext,
        policy: TicketPolicy,
        now: Instant,
    ) {
        self.current = (policy.uses > 0).then(|| ConnectorTicket {
            id: ticket_id(&secret),
            secret,
            context,
            peer,
            created: now,
            lifetime: policy.lifetime,
            uses_left: policy.uses,
        });
    }

    /// The ticket to offer, using one of its uses; none if it was made under another
    /// `context` (keys, PSK: kept, for a connector that pins two listener keys and tries the
    /// other next), expired or used up (then it is dropped).
    pub fn offer(
        &mut self,
        context: &TicketContext,
        policy: TicketPolicy,
        now: Instant,
    ) -> Option<Offer> {
        let t = self.current.as_mut()?;
        if !ct_eq(&t.context, context) {
            return None;
        }
        if t.uses_left == 0 || expired(t.created, t.lifetime.min(policy.lifetime), now) {
            self.current = None;
            return None;
        }
        t.uses_left -= 1;
        let offer = Offer {
            secret: t.secret.clone(),
            id: t.id,
            peer: t.peer.clone(),
        };
        if t.uses_left == 0 {
            self.current = None;
        }
        Some(offer)
    }

    /// Drops ticket `id` (the listener refused it), unless another ticket replaced it already.
    pub fn forget(&mut self, id: &TicketId) {
        if self.current.as_ref().is_some_and(|t| &t.id == id) {
            self.current = None;
        }
    }

    /// True when a ticket is held.
    pub fn has_ticket(&self) -> bool {
        self.current.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_binders_depend_on_the_secret() {
        let a = Secret::from_bytes([1; 32]);
        let b = Secret::from_bytes([2; 32]);
        assert_ne!(ticket_id(&a), ticket_id(&b));
        assert_ne!(binder(&a, b"x"), binder(&b, b"x"));
        assert_ne!(binder(&a, b"x"), binder(&a, b"y"));
        assert_ne!(&binder(&a, b"x")[..16], &ticket_id(&a)[..]);
    }

    #[test]
    fn resumed_labels_differ_from_full_ones() {
        let t = Secret::from_bytes([9; 32]);
        let rs = ResumeSecrets::new(&t, &[7; 32]);
        let h = hash(b"t");
        let (c, l) = rs.handshake_traffic(&h);
        let (ca, la, res) = rs.application_traffic(&h);
        assert!(c != l && ca != la && ca != c && res != ca && res != la);
    }
}
