//! The handshake state machines, one per role: SIGMA-I in the shape of TLS 1.3.
//!
//! ```text
//! connector                                              listener
//! ConnectorHello {ver, opts, random, e_c, ek, mac1} ───▶  check mac1 (own fingerprint, PSK)
//!                 ◀─────── ListenerHello {ver, opts, random, e_l, ct = Encaps(ek)}
//!                 ◀─────── ListenerAuth  AEAD_l_hs{spki_l, sig_l, fin_l}
//! check pin, sig_l, fin_l
//! ConnectorAuth AEAD_c_hs{spki_c, service, sig_c, fin_c} ─▶  check sig_c, fin_c, then the
//! [records may follow at once]                  trust list and the service ([records], or
//!                                               one Alert record under l_ap: refused)
//! ```
//!
//! The handshake secret is hybrid: `hs = Extract(.., ss_mlkem ‖ X25519(e_c, e_l))`
//! (PROTOCOL.md §3), so a full handshake's keys stay secret unless both ML-KEM-768 and X25519
//! fall.
//!
//! A connector holding a ticket from an earlier full handshake ([`crate::proto::resume`]) sends
//! a ResumeHello instead; a listener that accepts the ticket answers ResumeAccept (a fresh
//! X25519 exchange keyed by the ticket secret, no RSA), the connector ResumeFinished. A listener
//! that refuses the ticket answers with a full handshake on the same transcript:
//!
//! ```text
//! ResumeHello {ver, opts, random, e_c, ek, ticket_id, binder, mac1} ─▶  mac1, ticket, binder
//!                 ◀─────── ResumeAccept {ver, opts, random, e_l, fin_l}
//!                          (or ListenerHello + ListenerAuth: full handshake)
//! ResumeFinished {fin_c} ──────────────────────────────────────────▶  check fin_c
//! ```
//!
//! The state machines are sans-IO: `read` takes bytes from the peer and consumes at most up to
//! the end of the handshake (what follows belongs to the record layer); `take_output` gives
//! bytes to send. When `is_done`, the verified peer identity and the traffic secrets come out of
//! `finish`. The nonces and X25519 scalars are passed in ([`HandshakeRandomness`]), so that
//! tests can fix them; the ML-KEM key pairs and encapsulations and the RSA-PSS salts are drawn
//! inside, from aws-lc-rs' RNG. A listener checks mac1 before any other work: a peer that does not
//! know the listener's public key gets no X25519 operation, no signature and no answer —
//! unless the listener opts in to `allow_tofu`, in which case a hello whose mac1 is keyed by the
//! all-zero [`FIRST_CONTACT`] fingerprint is answered too (a TOFU connector's first contact,
//! [`ListenerPin::FirstContact`]). `accept_unknown` lets in connectors outside the trust list.
//!
//! A listener may hold two keys while its key is rotated ([`ListenerParams::next_identity`]):
//! mac1 is checked against each (at most two HMACs), and the handshake runs with the key whose
//! mac1 matched — it signs, its SPKI is in the transcript, and the tickets it files are bound to
//! it (PROTOCOL.md §2, §9).
//!
//! The roles are two types, [`ConnectorHandshake`] and [`ListenerHandshake`], each with its
//! own states; [`Handshake`] holds either, for a driver that runs both (the tunnel's). The
//! files: `connector.rs` and `listener.rs` (the full handshake of each role), `resume.rs` (the
//! resumption messages of both), `mac1.rs` (the listener's first gate), `common.rs` (the
//! transcript, framing and auth messages both roles share), `error.rs`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rand::CryptoRng;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::proto::identity::{Fingerprint, PublicIdentity};
use crate::proto::key_schedule::{Secret, HASH_LEN};
use crate::proto::record::{Opener, Sealer};
use crate::proto::resume::{ConnectorTickets, TicketPolicy, TicketRefusal, TicketStore};

mod common;
mod connector;
mod error;
mod listener;
mod mac1;
mod resume;
#[cfg(test)]
mod review_tests;

pub use connector::{ConnectorEphemerals, ConnectorHandshake, ConnectorParams, ListenerPin};
pub use error::{HandshakeError, RefusalAlert};
pub use listener::{ListenerHandshake, ListenerParams};
pub use mac1::{check_hello_mac1, Contact, FIRST_CONTACT};
#[cfg(feature = "testing")]
pub use mac1::{mac1, mac1_keyed};

/// Context strings of the two signatures: the role label keeps a signature from being reflected.
pub(crate) const LISTENER_SIGNATURE_CONTEXT: &[u8] = b"sealpipe2 listener signature\0";
/// See [`LISTENER_SIGNATURE_CONTEXT`].
pub const CONNECTOR_SIGNATURE_CONTEXT: &[u8] = b"sealpipe2 connector signature\0";
/// Which side of the tunnel this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens sealed connections (plain in, sealed out).
    Connector,
    /// Accepts sealed connections (sealed in, plain out).
    Listener,
}

impl Role {
    /// `connector` or `listener`: the text of log fields and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Connector => "connector",
            Role::Listener => "listener",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fresh randomness of one handshake: a nonce and an X25519 secret. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct HandshakeRandomness {
    /// Sent in the hello; makes every transcript unique.
    pub random: [u8; 32],
    /// The ephemeral X25519 secret scalar.
    pub ephemeral: [u8; 32],
}

impl HandshakeRandomness {
    /// Draws both values from `rng` (the OS RNG in production).
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut r = HandshakeRandomness {
            random: [0; 32],
            ephemeral: [0; 32],
        };
        rng.fill_bytes(&mut r.random);
        rng.fill_bytes(&mut r.ephemeral);
        r
    }
}

/// Resumption for one handshake: the tunnel's ticket store (shared by its connections and kept
/// across reloads), the ticket policy and the current time.
pub struct Resumption<S> {
    /// The tunnel's tickets.
    pub store: Arc<Mutex<S>>,
    /// Lifetime and uses of tickets made, and the lifetime limit of tickets used.
    pub policy: TicketPolicy,
    /// The time of this handshake.
    pub now: Instant,
}

impl<S> Clone for Resumption<S> {
    fn clone(&self) -> Self {
        Resumption {
            store: self.store.clone(),
            policy: self.policy,
            now: self.now,
        }
    }
}

fn lock<S>(m: &Mutex<S>) -> MutexGuard<'_, S> {
    // A panic elsewhere cannot leave a store inconsistent (every update is one assignment).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The result of a completed handshake.
pub struct Established {
    /// The peer's verified long-term key.
    pub peer: PublicIdentity,
    /// Our key in this session: a listener's is the one the connector's hello was keyed for.
    pub own: Fingerprint,
    /// Our sending traffic secret (generation 0).
    pub send: Secret,
    /// The peer's sending traffic secret (generation 0).
    pub recv: Secret,
    /// A secret from this authenticated session for a later resumption.
    pub resumption: Secret,
    /// SHA-256 of the whole handshake transcript.
    pub transcript_hash: [u8; HASH_LEN],
    /// True for a resumed session (no RSA operation; `peer` comes from the ticket).
    pub resumed: bool,
    /// Why a ticket offered or presented in this connection was refused (then a full
    /// handshake ran).
    pub ticket_refused: Option<TicketRefusal>,
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Established {
    /// The record layer of this session: a sealer for our direction, an opener for the peer's.
    pub fn into_record_layer(self, rekey_bytes: u64) -> (Sealer, Opener) {
        let opener = Opener::new(self.recv.clone());
        (
            Sealer::new(self.send.clone(), rekey_bytes),
            if self.resumed { opener.resumed() } else { opener },
        )
    }
}

/// One handshake of either role, for a driver that runs both (the tunnel's): each method goes
/// to the role's own type. A listener's deferred answer ([`Handshake::reply_pending`],
/// [`Handshake::make_reply`]) is a listener's only.
pub enum Handshake {
    /// A connector's handshake.
    Connector(ConnectorHandshake),
    /// A listener's handshake.
    Listener(ListenerHandshake),
}

impl From<ConnectorHandshake> for Handshake {
    fn from(hs: ConnectorHandshake) -> Self {
        Handshake::Connector(hs)
    }
}

impl From<ListenerHandshake> for Handshake {
    fn from(hs: ListenerHandshake) -> Self {
        Handshake::Listener(hs)
    }
}

impl Handshake {
    /// A connector's handshake ([`ConnectorHandshake::new`]); its hello is ready in
    /// [`Handshake::take_output`] at once.
    pub fn connector(params: ConnectorParams, rand: HandshakeRandomness) -> Self {
        ConnectorHandshake::new(params, rand).into()
    }

    /// A connector's handshake with resumption ([`ConnectorHandshake::resuming`]).
    pub fn connector_resuming(
        params: ConnectorParams,
        rand: HandshakeRandomness,
        resumption: Resumption<ConnectorTickets>,
    ) -> Self {
        ConnectorHandshake::resuming(params, rand, resumption).into()
    }

    /// A connector's handshake from ephemerals made beforehand
    /// ([`ConnectorHandshake::prepared`]).
    pub fn connector_prepared(
        params: ConnectorParams,
        ephemerals: ConnectorEphemerals,
        resumption: Option<Resumption<ConnectorTickets>>,
    ) -> Self {
        ConnectorHandshake::prepared(params, ephemerals, resumption).into()
    }

    /// A listener's handshake ([`ListenerHandshake::new`]); it waits for a connector hello.
    pub fn listener(params: ListenerParams, rand: HandshakeRandomness) -> Self {
        ListenerHandshake::new(params, rand).into()
    }

    /// A listener's handshake with resumption ([`ListenerHandshake::resuming`]).
    pub fn listener_resuming(
        params: ListenerParams,
        rand: HandshakeRandomness,
        resumption: Resumption<TicketStore>,
    ) -> Self {
        ListenerHandshake::resuming(params, rand, resumption).into()
    }

    /// A listener's [`ListenerHandshake::defer_replies`]; a connector has no reply to defer.
    pub fn defer_replies(self) -> Self {
        match self {
            Handshake::Listener(hs) => hs.defer_replies().into(),
            connector @ Handshake::Connector(_) => connector,
        }
    }

    /// This handshake's role.
    pub fn role(&self) -> Role {
        match self {
            Handshake::Connector(_) => Role::Connector,
            Handshake::Listener(_) => Role::Listener,
        }
    }

    /// Bytes to send to the peer now (possibly none).
    pub fn take_output(&mut self) -> Vec<u8> {
        match self {
            Handshake::Connector(hs) => hs.take_output(),
            Handshake::Listener(hs) => hs.take_output(),
        }
    }

    /// Bytes waiting to be sent, without taking them.
    pub fn pending_output(&self) -> &[u8] {
        match self {
            Handshake::Connector(hs) => hs.pending_output(),
            Handshake::Listener(hs) => hs.pending_output(),
        }
    }

    /// True when the handshake has verified the peer and produced keys.
    pub fn is_done(&self) -> bool {
        match self {
            Handshake::Connector(hs) => hs.is_done(),
            Handshake::Listener(hs) => hs.is_done(),
        }
    }

    /// The verified session; call once, after [`Handshake::is_done`] and after sending the last
    /// output.
    pub fn finish(&mut self) -> Result<Established, HandshakeError> {
        match self {
            Handshake::Connector(hs) => hs.finish(),
            Handshake::Listener(hs) => hs.finish(),
        }
    }

    /// Feeds bytes from the peer; returns how many were consumed. Bytes after the last handshake
    /// message are not consumed. After an error the handshake is dead.
    pub fn read(&mut self, input: &[u8]) -> Result<usize, HandshakeError> {
        match self {
            Handshake::Connector(hs) => hs.read(input),
            Handshake::Listener(hs) => hs.read(input),
        }
    }

    /// True when a listener has read a hello that needs a full handshake and waits for
    /// [`Handshake::make_reply`] ([`ListenerHandshake::reply_pending`]); never for a connector.
    pub fn reply_pending(&self) -> bool {
        match self {
            Handshake::Connector(_) => false,
            Handshake::Listener(hs) => hs.reply_pending(),
        }
    }

    /// A listener's [`ListenerHandshake::make_reply`]; for a connector, an error
    /// ([`HandshakeError::State`]: no answer is pending).
    pub fn make_reply(&mut self) -> Result<(), HandshakeError> {
        match self {
            Handshake::Connector(_) => Err(HandshakeError::State),
            Handshake::Listener(hs) => hs.make_reply(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::review_tests::{key, randomness};
    use super::*;

    const CONNECTOR_KEY: &str = include_str!("../../../tests/data/peer-b.pem");

    /// A connector (`peer-b.pem`) and a listener that trusts it.
    fn params() -> (ConnectorParams, ListenerParams) {
        let connector = key(CONNECTOR_KEY);
        super::review_tests::params(&connector, &[&connector])
    }

    /// Each role's own type runs its side; the listener's deferred answer is its own method.
    #[test]
    fn the_role_types_complete_a_handshake() {
        let (cp, lp) = params();
        let mut connector = ConnectorHandshake::new(cp, randomness(1));
        let mut listener = ListenerHandshake::new(lp, randomness(2)).defer_replies();
        let hello = connector.take_output();
        assert_eq!(listener.read(&hello).unwrap(), hello.len());
        assert!(listener.reply_pending() && listener.pending_output().is_empty());
        listener.make_reply().unwrap();
        let answer = listener.take_output();
        assert_eq!(connector.read(&answer).unwrap(), answer.len());
        assert!(connector.is_done());
        let auth = connector.take_output();
        assert_eq!(listener.read(&auth).unwrap(), auth.len());
        assert!(listener.is_done());
        let (c, l) = (connector.finish().unwrap(), listener.finish().unwrap());
        assert_eq!(c.transcript_hash, l.transcript_hash);
        assert_eq!(c.send.expose(), l.recv.expose());
        assert_eq!(c.recv.expose(), l.send.expose());
        assert!(matches!(connector.finish(), Err(HandshakeError::State)));
    }

    /// [`Handshake`] is either role's machine: a connector has no reply to defer or make.
    #[test]
    fn the_enum_goes_to_the_role() {
        let (cp, lp) = params();
        let mut connector = Handshake::connector(cp, randomness(1)).defer_replies();
        let mut listener = Handshake::listener(lp, randomness(2)).defer_replies();
        assert_eq!((connector.role(), listener.role()), (Role::Connector, Role::Listener));
        assert!(!connector.reply_pending());
        assert!(matches!(connector.make_reply(), Err(HandshakeError::State)));
        assert!(matches!(listener.make_reply(), Err(HandshakeError::State)));
        let hello = connector.take_output();
        listener = Handshake::listener(params().1, randomness(2)).defer_replies();
        listener.read(&hello).unwrap();
        assert!(listener.reply_pending());
        listener.make_reply().unwrap();
        connector.read(&listener.take_output()).unwrap();
        listener.read(&connector.take_output()).unwrap();
        assert!(connector.is_done() && listener.is_done());
    }
}
