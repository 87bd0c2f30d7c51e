//! Session resumption: tickets, their stores and the resumption key schedule (sans-IO).
//!
//! Every session, full or resumed, ends its handshake with a resumption secret `res`
//! ([`crate::proto::handshake::Established::resumption`]) and hands on [`SUCCESSORS`] tickets
//! derived from it. Both sides derive the same ones, so no ticket message is sent: the listener
//! files them in its [`TicketStore`], the connector in its [`ConnectorTickets`]. A later
//! connection offers one ticket's id and proves knowledge of its secret `T` (the binder); the two
//! sides then run a fresh X25519 exchange keyed by `T`, with no RSA operation (PROTOCOL.md §9):
//!
//! ```text
//! T_i         = ExpandLabel(res, "ticket", [i], 32)          i = 0, 1
//! ticket_id   = ExpandLabel(T, "ticket id", "", 16)
//! binder_key  = ExpandLabel(T, "res binder", "", 32)
//! binder      = HMAC(binder_key, H(ResumeHello up to the binder, header included || fp_l))
//! es          = Extract(salt = T, ikm = X25519(e_c, e_l))
//! c_rhs, l_rhs= ExpandLabel(es, "c res hs" | "l res hs", H(ResumeHello || ResumeAccept w/o fin), 32)
//! master      = Extract(salt = ExpandLabel(es, "derived", H(""), 32), ikm = 0^32)
//! c_ap, l_ap  = ExpandLabel(master, "c res ap" | "l res ap", H(whole transcript), 32)
//! res         = ExpandLabel(master, "res master", H(whole transcript), 32)
//! ```
//!
//! A ticket serves one resumption, so no id goes on the wire twice in the normal course: the
//! connector takes it out of its store to offer it and forgets it once the listener has
//! authenticated itself; the listener uses it up once the connector's finished MAC verifies.
//! Tickets are bound to the chain's full handshake: its lifetime counts from there and
//! `resumption_uses` bounds how many resumptions deep a chain goes. Tickets live in memory only.
//! Time is passed in (`now: Instant`), so tests expire tickets without sleeping.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proto::identity::{Fingerprint, PublicIdentity};
use crate::proto::key_schedule::Psk;
use crate::proto::key_schedule::{
    ct_eq, derive_secret, expand_label, extract, hash, hmac, Secret, HASH_LEN,
};
use crate::proto::messages::TICKET_ID_LEN;

/// A ticket id: derived from the ticket secret, sent in clear in the resume hello.
pub type TicketId = [u8; TICKET_ID_LEN];

/// Default number of tickets a listener keeps per tunnel.
pub(crate) const DEFAULT_STORE_CAPACITY: usize = 10_000;

/// How long a chain of tickets lives and how deep it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketPolicy {
    /// Lifetime from the chain's full handshake.
    pub lifetime: Duration,
    /// Resumptions one after another from one full handshake (a chain's depth).
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

/// The binder of a resume hello keyed (its mac1) for listener key `listener`:
/// `HMAC(binder_key, H(hello up to the binder || fp_listener))` (PROTOCOL.md §9). The key is
/// covered so that a hello re-MACed for a listener's other key (during a rotation) fails its
/// binder there, which leaves the ticket alone, instead of failing the ticket's context check,
/// which deletes it.
pub fn binder(t: &Secret, hello_before_binder: &[u8], listener: &Fingerprint) -> [u8; HASH_LEN] {
    let key = derive_secret(t, "res binder", b"");
    hmac(
        key.expose(),
        &[&hash(&[hello_before_binder, listener.as_bytes()].concat())],
    )
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

/// Tickets a connector keeps per tunnel (the oldest go first): enough for a burst of that many
/// concurrent connections to resume.
pub const CONNECTOR_TICKETS: usize = 64;

/// Tickets a listener keeps per connector key (the oldest of that key go first). Four times
/// [`CONNECTOR_TICKETS`]: a ticket offered while that key's other connections file theirs must
/// not be evicted before its hello is read (two successors per session filed meanwhile).
pub const LISTENER_TICKETS_PER_PEER: usize = 256;

/// Tickets a listener keeps for connector keys that are not in its trust list (admitted by
/// `accept_unknown`), all such keys together: they evict only one another.
pub const DEFAULT_UNKNOWN_CAPACITY: usize = 4_096;

/// Successor tickets every session hands on (module documentation).
pub const SUCCESSORS: u8 = 2;

/// The successor ticket secrets of a session with resumption secret `res`:
/// `T_i = ExpandLabel(res, "ticket", [i], 32)`.
pub fn successors(res: &Secret) -> [Secret; SUCCESSORS as usize] {
    std::array::from_fn(|i| derive_secret(res, "ticket", &[i as u8]))
}

/// The chain a ticket belongs to: the full handshake it descends from (its lifetime counts from
/// there) and how many more resumptions may descend from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    /// When the chain's full handshake completed.
    pub start: Instant,
    /// Lifetime from `start`.
    pub lifetime: Duration,
    /// Resumptions this ticket's session and its descendants may still make (at least 1 for a
    /// ticket that is filed).
    pub resumptions_left: u32,
}

impl Chain {
    /// The chain of a full handshake completed at `now`.
    pub fn new(policy: TicketPolicy, now: Instant) -> Self {
        Chain {
            start: now,
            lifetime: policy.lifetime,
            resumptions_left: policy.uses,
        }
    }

    /// The chain of the successors of a session resumed with a ticket of this chain: one
    /// resumption fewer (and no more than `policy` now allows); none once it reaches 0.
    pub fn next(self, policy: TicketPolicy) -> Option<Chain> {
        let left = self.resumptions_left.min(policy.uses).saturating_sub(1);
        (left > 0).then_some(Chain {
            resumptions_left: left,
            lifetime: self.lifetime.min(policy.lifetime),
            ..self
        })
    }

    fn expired(&self, policy: TicketPolicy, now: Instant) -> bool {
        expired(self.start, self.lifetime.min(policy.lifetime), now)
    }
}

/// The binder a resume hello presents, with the bytes it covers.
#[derive(Debug, Clone, Copy)]
pub struct PresentedBinder<'a> {
    /// The resume hello up to the binder, header included.
    pub hello_before_binder: &'a [u8],
    /// The binder field.
    pub binder: &'a [u8],
    /// The listener key the hello's mac1 was keyed for (the one answering it).
    pub listener: &'a Fingerprint,
}

/// A ticket the listener accepted for one resumption: still in the store until the connector's
/// finished MAC verifies ([`TicketStore::consume`]).
pub struct Redeemed {
    /// Its id.
    pub id: TicketId,
    /// The ticket secret `T`.
    pub secret: Secret,
    /// The connector authenticated by the chain's full handshake.
    pub peer: Arc<PublicIdentity>,
    /// The chain it belongs to.
    pub chain: Chain,
}

/// Which share of a listener's store a ticket counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    /// Tickets of connector keys in the trust list.
    Trusted = 0,
    /// Tickets of any other key (`accept_unknown`).
    Unknown = 1,
}

struct ListenerTicket {
    secret: Secret,
    peer: Arc<PublicIdentity>,
    owner: Fingerprint,
    region: Region,
    context: TicketContext,
    chain: Chain,
    /// Insertion order, for eviction.
    seq: u64,
}

/// The listener's tickets of one tunnel, by id; bounded, in memory only. Each serves one
/// resumption. At most [`LISTENER_TICKETS_PER_PEER`] per connector key; the keys outside the trust list
/// share a region of their own, so that a crowd of them cannot evict a configured peer's
/// tickets. Secrets are zeroized when an entry is dropped.
pub struct TicketStore {
    tickets: HashMap<TicketId, ListenerTicket>,
    /// Per region, the ids in insertion order.
    order: [BTreeMap<u64, TicketId>; 2],
    /// Per connector key, its ids, oldest first (at most [`LISTENER_TICKETS_PER_PEER`]).
    owners: HashMap<Fingerprint, Vec<TicketId>>,
    /// Per region, the most tickets held.
    capacity: [usize; 2],
    seq: u64,
    /// The ids of the last [`USED_MEMORY`] resumptions, so that a ticket evicted while its
    /// resumption was under way still completes, once.
    used: HashSet<TicketId>,
    used_order: VecDeque<TicketId>,
}

/// Used ticket ids a listener remembers (16 bytes each).
pub(crate) const USED_MEMORY: usize = 16_384;

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
    /// An empty store holding at most `capacity` (at least 1) tickets of trusted keys and
    /// [`DEFAULT_UNKNOWN_CAPACITY`] (no more than `capacity`) of other keys.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::with_capacities(capacity, DEFAULT_UNKNOWN_CAPACITY.min(capacity))
    }

    /// An empty store holding at most `trusted` tickets of keys in the trust list and `unknown`
    /// of other keys (each at least 1).
    pub fn with_capacities(trusted: usize, unknown: usize) -> Self {
        TicketStore {
            tickets: HashMap::new(),
            order: [BTreeMap::new(), BTreeMap::new()],
            owners: HashMap::new(),
            capacity: [trusted.max(1), unknown.max(1)],
            seq: 0,
            used: HashSet::new(),
            used_order: VecDeque::new(),
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

    /// True when ticket `id` is held.
    pub fn contains(&self, id: &TicketId) -> bool {
        self.tickets.contains_key(id)
    }

    /// Tickets held for connector key `owner`.
    pub fn count_for(&self, owner: &Fingerprint) -> usize {
        self.owners.get(owner).map_or(0, Vec::len)
    }

    fn remove(&mut self, id: &TicketId) -> Option<ListenerTicket> {
        let t = self.tickets.remove(id)?;
        self.order[t.region as usize].remove(&t.seq);
        if let Some(ids) = self.owners.get_mut(&t.owner) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.owners.remove(&t.owner);
            }
        }
        Some(t)
    }

    /// Makes room for one ticket of `owner` in `region`: the owner's oldest beyond its quota,
    /// then, at the region's capacity, its expired tickets, then its oldest.
    fn make_room(
        &mut self,
        owner: &Fingerprint,
        region: Region,
        policy: TicketPolicy,
        now: Instant,
    ) {
        while self.count_for(owner) >= LISTENER_TICKETS_PER_PEER {
            let Some(oldest) = self.owners.get(owner).and_then(|ids| ids.first().copied()) else {
                break;
            };
            self.remove(&oldest);
        }
        let r = region as usize;
        if self.order[r].len() >= self.capacity[r] {
            let dead: Vec<TicketId> = self.order[r]
                .values()
                .filter(|id| {
                    self.tickets
                        .get(*id)
                        .is_none_or(|t| t.chain.expired(policy, now))
                })
                .copied()
                .collect();
            for id in dead {
                self.remove(&id);
            }
        }
        while self.order[r].len() >= self.capacity[r] {
            let Some((_, oldest)) = self.order[r].first_key_value().map(|(s, id)| (*s, *id)) else {
                break;
            };
            self.remove(&oldest);
        }
    }

    /// Files the [`SUCCESSORS`] tickets of a session with resumption secret `res`, made with
    /// connector `peer` under `context`, in `chain` (none for `None`: the chain is used up).
    /// `trusted`: the peer's key is in the trust list (not only admitted by `accept_unknown`).
    #[allow(clippy::too_many_arguments)]
    pub fn file(
        &mut self,
        res: &Secret,
        peer: Arc<PublicIdentity>,
        trusted: bool,
        context: TicketContext,
        chain: Option<Chain>,
        policy: TicketPolicy,
        now: Instant,
    ) {
        let Some(chain) = chain.filter(|c| c.resumptions_left > 0) else {
            return;
        };
        let owner = peer.fingerprint();
        let region = if trusted {
            Region::Trusted
        } else {
            Region::Unknown
        };
        for secret in successors(res) {
            let id = ticket_id(&secret);
            self.remove(&id);
            self.make_room(&owner, region, policy, now);
            self.seq += 1;
            self.order[region as usize].insert(self.seq, id);
            self.owners.entry(owner).or_default().push(id);
            self.tickets.insert(
                id,
                ListenerTicket {
                    secret,
                    peer: peer.clone(),
                    owner,
                    region,
                    context,
                    chain,
                    seq: self.seq,
                },
            );
        }
    }

    /// Checks ticket `id` for one resumption, in order: known, binder, lifetime (from the
    /// chain's start; the shorter of the ticket's and `policy`'s), the peer's key still
    /// `trusted` (in the trust list, or any key with `accept_unknown`), the same `context`
    /// (keys, PSK, service). An expired or untrusted ticket is removed; a bad binder leaves the
    /// ticket alone, and so does a good one: it is used up only by [`TicketStore::consume`],
    /// once the connector's finished MAC verifies, so that a hello an attacker replays or
    /// injects cannot burn it.
    pub fn check(
        &mut self,
        id: &TicketId,
        presented: PresentedBinder<'_>,
        trusted: &dyn Fn(&Fingerprint) -> bool,
        context: &TicketContext,
        policy: TicketPolicy,
        now: Instant,
    ) -> Result<Redeemed, TicketRefusal> {
        let t = self.tickets.get(id).ok_or(TicketRefusal::Unknown)?;
        if !ct_eq(
            &binder(&t.secret, presented.hello_before_binder, presented.listener),
            presented.binder,
        ) {
            return Err(TicketRefusal::BadBinder);
        }
        let refusal = if t.chain.expired(policy, now) {
            Some(TicketRefusal::Expired)
        } else if !trusted(&t.owner) || !ct_eq(&t.context, context) {
            Some(TicketRefusal::Untrusted)
        } else {
            None
        };
        if let Some(r) = refusal {
            self.remove(id);
            return Err(r);
        }
        Ok(Redeemed {
            id: *id,
            secret: t.secret.clone(),
            peer: t.peer.clone(),
            chain: t.chain,
        })
    }

    /// Uses up ticket `id` (its resumption completed, after [`TicketStore::check`] accepted
    /// it); false if another connection used it meanwhile: that resumption must not complete.
    /// A ticket evicted meanwhile (by its peer's newer tickets) is still used up once.
    pub fn consume(&mut self, id: &TicketId) -> bool {
        self.remove(id);
        if !self.used.insert(*id) {
            return false;
        }
        self.used_order.push_back(*id);
        while self.used_order.len() > USED_MEMORY {
            if let Some(old) = self.used_order.pop_front() {
                self.used.remove(&old);
            }
        }
        true
    }

    /// The resumptions left in ticket `id`'s chain (for tests and diagnostics).
    pub fn resumptions_left(&self, id: &TicketId) -> Option<u32> {
        self.tickets.get(id).map(|t| t.chain.resumptions_left)
    }
}

struct ConnectorTicket {
    secret: Secret,
    id: TicketId,
    context: TicketContext,
    peer: Arc<PublicIdentity>,
    chain: Chain,
}

/// A ticket the connector offers in one connection, out of its store meanwhile: it is given
/// back ([`ConnectorTickets::give_back`]) if the attempt ends before the listener authenticated
/// itself.
pub struct Offer {
    /// The ticket secret `T`.
    pub secret: Secret,
    /// Its id.
    pub id: TicketId,
    /// The listener authenticated by the chain's full handshake.
    pub peer: Arc<PublicIdentity>,
    /// The chain it belongs to.
    pub chain: Chain,
    context: TicketContext,
}

/// The connector's tickets for one tunnel (at most [`CONNECTOR_TICKETS`], oldest first, offered
/// oldest first); in memory only, zeroized when dropped. Each is offered once.
#[derive(Default)]
pub struct ConnectorTickets {
    tickets: VecDeque<ConnectorTicket>,
}

impl std::fmt::Debug for ConnectorTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorTickets")
            .field("tickets", &self.tickets.len())
            .finish()
    }
}

impl ConnectorTickets {
    /// Keeps the [`SUCCESSORS`] tickets of a session with resumption secret `res`, made with
    /// listener `peer` under `context` (both keys, the PSK and the service), in `chain` (none
    /// for `None`), as the newest; the oldest beyond [`CONNECTOR_TICKETS`] go.
    pub fn file(
        &mut self,
        res: &Secret,
        peer: Arc<PublicIdentity>,
        context: TicketContext,
        chain: Option<Chain>,
    ) {
        let Some(chain) = chain.filter(|c| c.resumptions_left > 0) else {
            return;
        };
        for secret in successors(res) {
            self.tickets.push_back(ConnectorTicket {
                id: ticket_id(&secret),
                secret,
                context,
                peer: peer.clone(),
                chain,
            });
        }
        while self.tickets.len() > CONNECTOR_TICKETS {
            self.tickets.pop_front();
        }
    }

    /// Takes the oldest ticket made under `context` that is still within its lifetime, to
    /// offer once; expired tickets are dropped, those of another context kept (a connector
    /// that pins two listener keys tries the other next). The oldest, not the newest: a
    /// successor the connector filed a moment ago may not be filed by the listener yet (it
    /// files when it reads that session's last message), so under concurrent connections the
    /// newest would often be unknown to it.
    pub fn offer(
        &mut self,
        context: &TicketContext,
        policy: TicketPolicy,
        now: Instant,
    ) -> Option<Offer> {
        self.tickets.retain(|t| !t.chain.expired(policy, now));
        let i = self
            .tickets
            .iter()
            .position(|t| ct_eq(&t.context, context))?;
        let t = self.tickets.remove(i)?;
        Some(Offer {
            secret: t.secret,
            id: t.id,
            peer: t.peer,
            chain: t.chain,
            context: t.context,
        })
    }

    /// Takes back an offer whose connection ended before the listener authenticated itself
    /// (the listener has not used it), as the newest ticket (offered last); dropped if the
    /// store is full.
    pub fn give_back(&mut self, offer: Offer) {
        if self.tickets.len() < CONNECTOR_TICKETS && !self.tickets.iter().any(|t| t.id == offer.id)
        {
            self.tickets.push_back(ConnectorTicket {
                secret: offer.secret,
                id: offer.id,
                context: offer.context,
                peer: offer.peer,
                chain: offer.chain,
            });
        }
    }

    /// Forgets the tickets of the chain of `refused`, an offer the listener answered with a full
    /// handshake (it restarted, or the chain expired there): the rest of that chain would be
    /// refused as well.
    pub fn forget_chain(&mut self, refused: &Offer) {
        self.tickets.retain(|t| {
            !(t.chain.start == refused.chain.start && ct_eq(&t.context, &refused.context))
        });
    }

    /// Tickets held.
    pub fn len(&self) -> usize {
        self.tickets.len()
    }

    /// True when no ticket is held.
    pub fn is_empty(&self) -> bool {
        self.tickets.is_empty()
    }

    /// The ids held, oldest first (for tests and diagnostics).
    pub fn ids(&self) -> Vec<TicketId> {
        self.tickets.iter().map(|t| t.id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `resumption_uses` bounds a chain's depth, not its sessions (PROTOCOL.md §9, "Depth"):
    /// each session files two successors, so a chain of depth `n` yields up to `2^(n+1) − 2`
    /// resumed sessions. If this changes, the documents that state it must change too.
    #[test]
    fn a_chain_yields_at_most_two_to_the_depth_plus_one_minus_two_sessions() {
        // The resumed sessions that one filed ticket of `chain` may yield, itself included.
        fn yields(chain: Option<Chain>, policy: TicketPolicy) -> u64 {
            match chain {
                None => 0,
                Some(c) => 1 + u64::from(SUCCESSORS) * yields(c.next(policy), policy),
            }
        }
        let now = Instant::now();
        for uses in 1..=10u32 {
            let policy = TicketPolicy {
                uses,
                ..TicketPolicy::default()
            };
            // A full handshake files two tickets of a new chain.
            let total = u64::from(SUCCESSORS) * yields(Some(Chain::new(policy, now)), policy);
            assert_eq!(total, (1u64 << (uses + 1)) - 2, "resumption_uses = {uses}");
        }
    }

    #[test]
    fn ids_and_binders_depend_on_the_secret() {
        let a = Secret::from_bytes([1; 32]);
        let b = Secret::from_bytes([2; 32]);
        assert_ne!(ticket_id(&a), ticket_id(&b));
        let (k, l) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        assert_ne!(binder(&a, b"x", &k), binder(&b, b"x", &k));
        assert_ne!(binder(&a, b"x", &k), binder(&a, b"y", &k));
        assert_ne!(binder(&a, b"x", &k), binder(&a, b"x", &l));
        assert_ne!(&binder(&a, b"x", &k)[..16], &ticket_id(&a)[..]);
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
