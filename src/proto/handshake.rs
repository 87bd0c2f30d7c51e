//! The handshake state machine for both roles: SIGMA-I in the shape of TLS 1.3.
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
//! The state machine is sans-IO: [`Handshake::read`] takes bytes from the peer and consumes at
//! most up to the end of the handshake (what follows belongs to the record layer);
//! [`Handshake::take_output`] gives bytes to send. When [`Handshake::is_done`], the verified peer
//! identity and the traffic secrets come out of [`Handshake::finish`]. Randomness is passed in,
//! so tests are deterministic. A listener checks mac1 before any other work: a peer that does not
//! know the listener's public key gets no X25519 operation, no signature and no answer —
//! unless the listener opts in to `allow_tofu`, in which case a hello whose mac1 is keyed by the
//! all-zero [`FIRST_CONTACT`] fingerprint is answered too (a TOFU connector's first contact,
//! [`ListenerPin::FirstContact`]). `accept_unknown` lets in connectors outside the trust list.
//!
//! A listener may hold two keys while its key is rotated ([`ListenerParams::next_identity`]):
//! mac1 is checked against each (at most two HMACs), and the handshake runs with the key whose
//! mac1 matched — it signs, its SPKI is in the transcript, and the tickets it files are bound to
//! it (PROTOCOL.md §2, §9).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rand::CryptoRng;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::proto::aead::TAG_LEN;
use crate::proto::identity::{Fingerprint, IdentityError, PublicIdentity, Signer, TrustList};
use crate::proto::keys::{
    ct_eq, finished_key, hmac, Direction, HandshakeSecrets, Psk, Secret, TrafficKey, HASH_LEN,
};
use crate::proto::messages::{
    check_first_header, check_header_any, header, hello_ct, hello_ek, put_vec16, put_vec8, Auth,
    Hello, MessageError, MessageType, HELLO_FIELDS, KNOWN_OPTIONS, MAC1_LEN, MSG_HEADER_LEN,
    OPTION_PSK, PROTOCOL_VERSION, RESUME_ACCEPT_BODY, RESUME_FINISHED_BODY, RESUME_HELLO_BODY,
    TICKET_ID_LEN,
};
use crate::proto::mlkem::{self, EK_LEN};
use crate::proto::parsed_keys;
use crate::proto::record::{Alert, AlertCode, Opener, Sealer};
use crate::proto::resume::{
    binder, ticket_context, Chain, ConnectorTickets, Offer, PresentedBinder, Redeemed,
    ResumeSecrets, TicketPolicy, TicketRefusal, TicketStore,
};
use crate::proto::x25519::{self, SharedSecret};

/// Context strings of the two signatures: the role label keeps a signature from being reflected.
pub const LISTENER_SIGNATURE_CONTEXT: &[u8] = b"sealpipe2 listener signature\0";
/// See [`LISTENER_SIGNATURE_CONTEXT`].
pub const CONNECTOR_SIGNATURE_CONTEXT: &[u8] = b"sealpipe2 connector signature\0";
/// Prefix of the mac1 key derivation.
pub const MAC1_KEY_LABEL: &[u8] = b"sealpipe2 mac1";

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

/// Everything a connector's hello draws: its randomness, the X25519 public key of its scalar
/// and a fresh ML-KEM-768 key pair. A caller may make it ahead of need (between connections)
/// to take the key generations off a connection's path; it serves one handshake only, and its
/// secrets are wiped when that handshake drops them.
pub struct ConnectorEphemerals {
    rand: HandshakeRandomness,
    public: [u8; 32],
    kem: mlkem::DecapsulationKey,
}

impl std::fmt::Debug for ConnectorEphemerals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectorEphemerals(..)")
    }
}

impl ConnectorEphemerals {
    /// Derives the X25519 public key of `rand` and generates the ML-KEM key pair.
    pub fn new(rand: HandshakeRandomness) -> Self {
        ConnectorEphemerals {
            public: x25519_public(&rand.ephemeral),
            kem: mlkem::DecapsulationKey::generate(),
            rand,
        }
    }

    /// The X25519 public key the hello will carry.
    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }
}

/// The fingerprint a first-contact mac1 is keyed with: all zeros, known to everybody.
pub const FIRST_CONTACT: Fingerprint = Fingerprint([0; 32]);

/// Which listener keys a connector accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerPin {
    /// Only this key (mac1 keyed by it).
    Key(Fingerprint),
    /// Trust on first use, before any key is recorded: mac1 keyed by [`FIRST_CONTACT`] (only a
    /// listener with `allow_tofu` answers) and any listener key that proves possession is
    /// accepted. The caller records the key from [`Established::peer`].
    FirstContact,
    /// A first-contact hello, but only this key is accepted: how a TOFU connector whose pinned
    /// hello got no answer learns whether the listener's key changed. A different key fails
    /// with [`HandshakeError::WrongListenerKey`] before the connector signs anything.
    Probe(Fingerprint),
}

impl From<Fingerprint> for ListenerPin {
    fn from(fp: Fingerprint) -> Self {
        ListenerPin::Key(fp)
    }
}

impl ListenerPin {
    /// The fingerprint the hello's mac1 is keyed with.
    pub fn mac1_key(&self) -> Fingerprint {
        match self {
            ListenerPin::Key(fp) => *fp,
            ListenerPin::FirstContact | ListenerPin::Probe(_) => FIRST_CONTACT,
        }
    }
}

/// What a connector needs: its identity, the pinned listener key and the optional PSK.
#[derive(Clone)]
pub struct ConnectorParams {
    /// The connector's long-term key.
    pub identity: Arc<dyn Signer>,
    /// The listener key accepted (or first contact, for TOFU).
    pub listener: ListenerPin,
    /// Pre-shared key, if configured.
    pub psk: Option<Arc<Psk>>,
    /// The service this connector asks for (`service`, by default the tunnel's name; 1 to 64
    /// bytes of printable ASCII): sent in ConnectorAuth, signed, compared by the listener.
    pub service: Arc<str>,
}

/// What a listener needs: its identity (one key, or two during a rotation), the trusted
/// connector keys and the optional PSK.
#[derive(Clone)]
pub struct ListenerParams {
    /// The listener's long-term key (`private_key`): it answers hellos keyed for it and, with
    /// `allow_tofu`, first contacts.
    pub identity: Arc<dyn Signer>,
    /// A second key held while the listener's key is rotated (`next_private_key`): hellos keyed
    /// for it are answered with it. Two keys at most, so that the mac1 check stays two HMACs.
    pub next_identity: Option<Arc<dyn Signer>>,
    /// Connector keys allowed in.
    pub trust: Arc<TrustList>,
    /// Pre-shared key, if configured.
    pub psk: Option<Arc<Psk>>,
    /// Let in any connector that proves possession of its key, in the trust list or not
    /// (`accept_unknown`): only the listener is authenticated.
    pub accept_unknown: bool,
    /// Also answer hellos whose mac1 is keyed by [`FIRST_CONTACT`] (`allow_tofu`): connectors
    /// that do not know this listener's key yet.
    pub allow_tofu: bool,
    /// The service this listener serves (`service`, by default the tunnel's name): a connector
    /// that asks for another is refused with an Alert (code 2).
    pub service: Arc<str>,
}

impl ListenerParams {
    /// The listener's keys, in the order mac1 is checked: `identity`, then `next_identity`.
    pub fn identities(&self) -> impl Iterator<Item = &Arc<dyn Signer>> {
        std::iter::once(&self.identity).chain(self.next_identity.as_ref())
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

/// Why a handshake failed. On the wire every failure looks the same: the connection closes.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// A message broke the format or the size limits.
    #[error("bad handshake message: {0}")]
    Message(#[from] MessageError),
    /// The connector hello's mac1 is wrong: the peer does not know this listener's key.
    #[error("hello without a valid mac1 for this listener's key or keys (a scanner, or a connector pinned to another key)")]
    BadMac1,
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// Option bits this version does not know, or a listener that changed them.
    #[error("unknown or altered handshake options {0:#04x}")]
    BadOptions(u8),
    /// One side has a pre-shared key and the other does not.
    #[error("a pre-shared key is configured on one side only")]
    PskMismatch,
    /// The peer's ephemeral key gives an all-zero shared secret.
    #[error("peer ephemeral key is a low-order point (non-contributory)")]
    LowOrderPoint,
    /// An auth message did not decrypt: tampering, a man in the middle, or a different PSK.
    #[error("handshake message failed to decrypt (tampered, man in the middle, or a different pre-shared key)")]
    Decrypt,
    /// The listener presented another key than the pinned one.
    #[error("listener key {got} is not the pinned key {expected}")]
    WrongListenerKey {
        /// The pinned fingerprint.
        expected: Fingerprint,
        /// The fingerprint presented.
        got: Fingerprint,
    },
    /// The connector's key is not in the trust list. It proved possession of the key first,
    /// so the listener may tell it: `alert` is the Alert record to send.
    #[error("connector key {0} is not trusted")]
    UntrustedConnector(Fingerprint, RefusalAlert),
    /// The connector, authenticated, asked for another service than this listener's.
    #[error(
        "connector key {fingerprint} asked for service {asked:?}, this listener serves {served:?}"
    )]
    ServiceMismatch {
        /// The connector's fingerprint.
        fingerprint: Fingerprint,
        /// The service it asked for.
        asked: String,
        /// This listener's service.
        served: String,
        /// The Alert record to send.
        alert: RefusalAlert,
    },
    /// The connector's ML-KEM-768 encapsulation key is not a valid one.
    #[error("connector's ML-KEM-768 encapsulation key rejected")]
    BadMlKemKey,
    /// The peer's key is not an acceptable RSA key.
    #[error("peer key rejected: {0}")]
    PeerKey(IdentityError),
    /// The peer's signature does not verify.
    #[error("peer signature does not verify")]
    BadSignature,
    /// The peer's finished MAC does not verify.
    #[error("peer finished MAC does not verify")]
    BadFinished,
    /// Our own signature could not be made.
    #[error("signing failed: {0}")]
    Sign(IdentityError),
    /// The resumption's ticket was used up by another connection meanwhile (each ticket serves
    /// one resumption).
    #[error("the resumption ticket was already used")]
    TicketUsed,
    /// `read` after a failure, or `finish` before the end.
    #[error("handshake is not in a state for this call")]
    State,
}

impl HandshakeError {
    /// A short, stable label for metrics (one per variant).
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Message(_) => "malformed",
            HandshakeError::BadMac1 => "bad_mac1",
            HandshakeError::UnsupportedVersion(_) => "version",
            HandshakeError::BadOptions(_) => "options",
            HandshakeError::PskMismatch => "psk_mismatch",
            HandshakeError::LowOrderPoint => "low_order_point",
            HandshakeError::Decrypt => "decrypt",
            HandshakeError::WrongListenerKey { .. } => "wrong_key",
            HandshakeError::UntrustedConnector(..) => "untrusted",
            HandshakeError::ServiceMismatch { .. } => "service_mismatch",
            HandshakeError::BadMlKemKey => "bad_mlkem_key",
            HandshakeError::PeerKey(_) => "bad_peer_key",
            HandshakeError::BadSignature => "bad_signature",
            HandshakeError::BadFinished => "bad_finished",
            HandshakeError::Sign(_) => "sign",
            HandshakeError::TicketUsed => "ticket_used",
            HandshakeError::State => "state",
        }
    }
}

/// The Alert record a listener sends to an authenticated connector it refuses (PROTOCOL.md §6):
/// sealed under the session's first listener traffic key, sequence 0.
#[derive(Clone, PartialEq, Eq)]
pub struct RefusalAlert(Vec<u8>);

impl std::fmt::Debug for RefusalAlert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RefusalAlert({} bytes)", self.0.len())
    }
}

impl RefusalAlert {
    /// The record to send, then close.
    pub fn record(&self) -> &[u8] {
        &self.0
    }
}

impl HandshakeError {
    /// The Alert record to send before closing, for a refusal of an authenticated connector.
    pub fn alert(&self) -> Option<&[u8]> {
        match self {
            HandshakeError::UntrustedConnector(_, a)
            | HandshakeError::ServiceMismatch { alert: a, .. } => Some(a.record()),
            _ => None,
        }
    }
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
        (
            Sealer::new(self.send.clone(), rekey_bytes),
            Opener::new(self.recv.clone()),
        )
    }
}

enum Params {
    Connector(ConnectorParams),
    Listener(ListenerParams),
}

enum State {
    ConnectorWaitHello,
    ConnectorWaitAuth(Box<HsKeys>),
    ListenerWaitHello,
    /// A hello that needs a full handshake was read; the costly answer (the RSA signature) is
    /// made by [`Handshake::make_reply`], wherever the caller chooses to run it.
    ListenerReplyPending(Box<Pending>),
    ListenerWaitAuth(Box<HsKeys>),
    ListenerWaitResumeFinished(Box<ResKeys>),
    Done(Box<Established>),
    Finished,
    Failed,
}

/// What a listener's deferred answer needs: the connector's X25519 key (or the shared secret,
/// when a refused ticket fell back to a full handshake) and its ML-KEM encapsulation key. The
/// X25519 and the encapsulation are done in [`Handshake::make_reply`], not in `read`, so that a
/// hello that never gets an answer (the signing budget, the queue or a per-source limit refuses
/// it) costs neither.
struct Pending {
    peer_ephemeral: [u8; 32],
    dh: Option<SharedSecret>,
    ek: Box<[u8; EK_LEN]>,
}

struct HsKeys {
    hs: HandshakeSecrets,
    c_hs: Secret,
    l_hs: Secret,
}

struct ResKeys {
    rs: ResumeSecrets,
    c_hs: Secret,
    ticket: Redeemed,
}

enum ResumeCtx {
    Connector {
        r: Resumption<ConnectorTickets>,
        /// The ticket offered, out of the store until the listener authenticates itself (then
        /// it is used up), given back if the handshake ends before that (see `Drop`).
        offer: Option<Offer>,
    },
    Listener(Resumption<TicketStore>),
}

impl Drop for ResumeCtx {
    fn drop(&mut self) {
        // An attempt that ended before the listener proved itself (an injected or tampered
        // answer, a reset, a timeout) leaves the ticket unused: the listener has not used it
        // up either, since no connector finished verified.
        if let ResumeCtx::Connector { r, offer } = self {
            if let Some(o) = offer.take() {
                lock(&r.store).give_back(o);
            }
        }
    }
}

/// One handshake, for either role.
pub struct Handshake {
    params: Params,
    /// The key this side presents and signs with: a connector's own; a listener's
    /// `params.identity` until the hello's mac1 picks one of its keys.
    identity: Arc<dyn Signer>,
    resume: Option<Box<ResumeCtx>>,
    ticket_refused: Option<TicketRefusal>,
    state: State,
    rand: HandshakeRandomness,
    /// A connector's ML-KEM-768 key of this hello, until the listener's answer (dropped then).
    mlkem: Option<mlkem::DecapsulationKey>,
    options: u8,
    transcript: Sha256,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    /// Leave a listener's full-handshake answer to [`Handshake::make_reply`] instead of making
    /// it inside [`Handshake::read`] ([`Handshake::defer_replies`]).
    defer_reply: bool,
}

/// mac1 without a PSK: [`mac1_keyed`] with `psk = None`.
pub fn mac1(listener: &Fingerprint, hello_unmacced: &[u8]) -> [u8; MAC1_LEN] {
    mac1_keyed(listener, None, hello_unmacced)
}

/// mac1 = HMAC-SHA256(SHA-256("sealpipe2 mac1" || fingerprint [|| psk]), hello without
/// mac1)[..16]: with a PSK, only a connector that holds it makes a mac1 the listener answers.
pub fn mac1_keyed(
    listener: &Fingerprint,
    psk: Option<&Psk>,
    hello_unmacced: &[u8],
) -> [u8; MAC1_LEN] {
    let mut h = Sha256::new();
    h.update(MAC1_KEY_LABEL);
    h.update(listener.as_bytes());
    if let Some(p) = psk {
        h.update(p.expose());
    }
    let key = zeroize::Zeroizing::new(<[u8; HASH_LEN]>::from(h.finalize()));
    let full = hmac(&key[..], &[hello_unmacced]);
    let mut out = [0u8; MAC1_LEN];
    out.copy_from_slice(&full[..MAC1_LEN]);
    out
}

/// How a connector hello's mac1 was keyed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contact {
    /// By the fingerprint of one of the listener's keys: the connector knows that key.
    Pinned,
    /// By [`FIRST_CONTACT`]: a TOFU connector that has not recorded the key yet.
    FirstContact,
}

/// Checks a connector hello's mac1 as a listener with `params` does: keyed by one of its keys'
/// fingerprints, or, with `allow_tofu` only and for a ConnectorHello only, by [`FIRST_CONTACT`]
/// (a connector that does not know the listener's key has no ticket for it: a ResumeHello keyed
/// by [`FIRST_CONTACT`] is junk, dropped here before any work like any other bad mac1).
pub fn check_hello_mac1(params: &ListenerParams, hello: &[u8]) -> Result<Contact, HandshakeError> {
    answering_identity(params, hello).map(|(contact, _)| contact)
}

/// [`check_hello_mac1`], and the key that answers the hello: the one its mac1 is keyed for, or
/// `identity` for a first contact. At most two HMACs for the listener's keys (and one more for
/// a first contact), before any other work.
fn answering_identity<'p>(
    params: &'p ListenerParams,
    hello: &[u8],
) -> Result<(Contact, &'p Arc<dyn Signer>), HandshakeError> {
    let (unmacced, tag) = split_mac1(hello)?;
    let psk = params.psk.as_deref();
    let matches = |fp: &Fingerprint| ct_eq(&mac1_keyed(fp, psk, unmacced), tag);
    if let Some(id) = params
        .identities()
        .find(|id| matches(&id.public().fingerprint()))
    {
        return Ok((Contact::Pinned, id));
    }
    let resume = hello.first() == Some(&(MessageType::ResumeHello as u8));
    if params.allow_tofu && !resume && matches(&FIRST_CONTACT) {
        return Ok((Contact::FirstContact, &params.identity));
    }
    Err(HandshakeError::BadMac1)
}

/// Checks a whole connector hello's (ConnectorHello or ResumeHello) header and mac1 for the
/// listener `listener`, without any other work: what a listener can afford to do for anybody.
/// The state machine checks again.
pub fn check_connector_hello(
    listener: &Fingerprint,
    psk: Option<&Psk>,
    hello: &[u8],
) -> Result<(), HandshakeError> {
    let (unmacced, tag) = split_mac1(hello)?;
    if ct_eq(&mac1_keyed(listener, psk, unmacced), tag) {
        Ok(())
    } else {
        Err(HandshakeError::BadMac1)
    }
}

/// A whole connector hello, its header checked, split into the bytes mac1 covers and mac1.
fn split_mac1(hello: &[u8]) -> Result<(&[u8], &[u8]), HandshakeError> {
    let header = hello
        .first_chunk::<MSG_HEADER_LEN>()
        .ok_or(MessageError::Malformed)?;
    let (_, len) = check_first_header(header)?;
    if hello.len() != MSG_HEADER_LEN + len {
        return Err(MessageError::Malformed.into());
    }
    Ok(hello.split_at(hello.len() - MAC1_LEN))
}

fn signature_input(context: &[u8], transcript_hash: &[u8; HASH_LEN]) -> Vec<u8> {
    [context, transcript_hash].concat()
}

fn vec16(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + bytes.len());
    put_vec16(&mut v, bytes);
    v
}

fn x25519_public(secret: &[u8; 32]) -> [u8; 32] {
    x25519::public_key(secret)
}

/// X25519, refusing a non-contributory (all-zero) result.
fn x25519_shared(secret: &[u8; 32], peer: &[u8; 32]) -> Result<SharedSecret, HandshakeError> {
    x25519::shared(secret, peer).map_err(|_| HandshakeError::LowOrderPoint)
}

impl Handshake {
    /// A connector's handshake; its hello is ready in [`Handshake::take_output`] at once.
    pub fn connector(params: ConnectorParams, rand: HandshakeRandomness) -> Self {
        Self::connector_prepared(params, ConnectorEphemerals::new(rand), None)
    }

    /// A connector's handshake with resumption: offers the store's ticket for this listener if
    /// it has a valid one (using one of its uses), and keeps the ticket of a full handshake.
    pub fn connector_resuming(
        params: ConnectorParams,
        rand: HandshakeRandomness,
        resumption: Resumption<ConnectorTickets>,
    ) -> Self {
        Self::connector_prepared(params, ConnectorEphemerals::new(rand), Some(resumption))
    }

    /// A connector's handshake from ephemerals made beforehand, with resumption if
    /// `resumption` is given (as [`Handshake::connector_resuming`]).
    pub fn connector_prepared(
        params: ConnectorParams,
        ephemerals: ConnectorEphemerals,
        resumption: Option<Resumption<ConnectorTickets>>,
    ) -> Self {
        let ConnectorEphemerals {
            rand,
            public,
            kem: dk,
        } = ephemerals;
        let options = if params.psk.is_some() { OPTION_PSK } else { 0 };
        let hello = Hello {
            version: PROTOCOL_VERSION,
            options,
            random: rand.random,
            ephemeral: public,
        };
        // Only a connector pinned to a known key offers a ticket (never a TOFU first contact or
        // probe). A first contact still keeps the ticket of its full handshake, filed under the
        // key the listener proved (see `file_successors`): the next connection, pinned to that
        // recorded key, resumes.
        let pinned = matches!(params.listener, ListenerPin::Key(_));
        let resume = resumption.map(|r| {
            let offer = if pinned {
                lock(&r.store).offer(&connector_context(&params), r.policy, r.now)
            } else {
                None
            };
            Box::new(ResumeCtx::Connector { r, offer })
        });
        let offer = match resume.as_deref() {
            Some(ResumeCtx::Connector { offer, .. }) => offer.as_ref(),
            _ => None,
        };
        let mut out = match offer {
            None => hello.encode_connector_unmacced(dk.encapsulation_key()),
            Some(offer) => {
                let mut out = Vec::with_capacity(MSG_HEADER_LEN + RESUME_HELLO_BODY);
                out.extend_from_slice(&header(MessageType::ResumeHello, RESUME_HELLO_BODY));
                hello.encode_fields(&mut out);
                out.extend_from_slice(dk.encapsulation_key());
                out.extend_from_slice(&offer.id);
                let b = binder(&offer.secret, &out);
                out.extend_from_slice(&b);
                out
            }
        };
        let tag = mac1_keyed(&params.listener.mac1_key(), params.psk.as_deref(), &out);
        out.extend_from_slice(&tag);
        let mut transcript = Sha256::new();
        transcript.update(&out);
        Handshake {
            identity: params.identity.clone(),
            params: Params::Connector(params),
            resume,
            ticket_refused: None,
            state: State::ConnectorWaitHello,
            rand,
            mlkem: Some(dk),
            options,
            transcript,
            inbuf: Vec::new(),
            out,
            defer_reply: false,
        }
    }

    /// A listener's handshake; it waits for a connector hello. A resume hello gets a full
    /// handshake ([`TicketRefusal::Disabled`]).
    pub fn listener(params: ListenerParams, rand: HandshakeRandomness) -> Self {
        Self::listener_with(params, rand, None)
    }

    /// A listener's handshake with resumption: accepts valid tickets from the store (using one
    /// of their uses), and files the ticket of a full handshake.
    pub fn listener_resuming(
        params: ListenerParams,
        rand: HandshakeRandomness,
        resumption: Resumption<TicketStore>,
    ) -> Self {
        Self::listener_with(params, rand, Some(resumption))
    }

    fn listener_with(
        params: ListenerParams,
        rand: HandshakeRandomness,
        resumption: Option<Resumption<TicketStore>>,
    ) -> Self {
        let options = if params.psk.is_some() { OPTION_PSK } else { 0 };
        Handshake {
            identity: params.identity.clone(),
            params: Params::Listener(params),
            resume: resumption.map(|r| Box::new(ResumeCtx::Listener(r))),
            ticket_refused: None,
            state: State::ListenerWaitHello,
            rand,
            mlkem: None,
            options,
            transcript: Sha256::new(),
            inbuf: Vec::new(),
            out: Vec::new(),
            defer_reply: false,
        }
    }

    /// A listener whose [`Handshake::read`] of a hello that needs a full handshake stops before
    /// the answer ([`Handshake::reply_pending`]), for the caller to run [`Handshake::make_reply`]
    /// where it chooses. Without it, `read` makes the answer itself.
    pub fn defer_replies(mut self) -> Self {
        self.defer_reply = true;
        self
    }

    /// This handshake's role.
    pub fn role(&self) -> Role {
        match self.params {
            Params::Connector(_) => Role::Connector,
            Params::Listener(_) => Role::Listener,
        }
    }

    /// Bytes to send to the peer now (possibly none).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Bytes waiting to be sent, without taking them.
    pub fn pending_output(&self) -> &[u8] {
        &self.out
    }

    /// True when the handshake has verified the peer and produced keys.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done(_))
    }

    /// The verified session; call once, after [`Handshake::is_done`] and after sending the last
    /// output.
    pub fn finish(&mut self) -> Result<Established, HandshakeError> {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::Done(est) => Ok(*est),
            other => {
                self.state = other;
                Err(HandshakeError::State)
            }
        }
    }

    /// Feeds bytes from the peer; returns how many were consumed. Bytes after the last handshake
    /// message are not consumed. After an error the handshake is dead.
    pub fn read(&mut self, input: &[u8]) -> Result<usize, HandshakeError> {
        let result = self.read_inner(input);
        if result.is_err() {
            self.state = State::Failed;
            self.inbuf.zeroize();
        }
        result
    }

    fn expected(&self) -> Option<&'static [MessageType]> {
        use MessageType as M;
        match self.state {
            State::ConnectorWaitHello if self.offer().is_some() => {
                Some(&[M::ListenerHello, M::ResumeAccept])
            }
            State::ConnectorWaitHello => Some(&[M::ListenerHello]),
            State::ConnectorWaitAuth(_) => Some(&[M::ListenerAuth]),
            State::ListenerWaitHello => Some(&[M::ConnectorHello, M::ResumeHello]),
            State::ListenerWaitAuth(_) => Some(&[M::ConnectorAuth]),
            State::ListenerWaitResumeFinished(_) => Some(&[M::ResumeFinished]),
            State::ListenerReplyPending(_) | State::Done(_) | State::Finished | State::Failed => {
                None
            }
        }
    }

    fn offer(&self) -> Option<&Offer> {
        match self.resume.as_deref() {
            Some(ResumeCtx::Connector { offer, .. }) => offer.as_ref(),
            _ => None,
        }
    }

    /// A connector whose listener has authenticated itself: the ticket it offered is never
    /// given back (see `Drop for ResumeCtx`).
    fn use_up_offer(&mut self) {
        if let Some(ResumeCtx::Connector { offer, .. }) = self.resume.as_deref_mut() {
            *offer = None;
        }
    }

    fn read_inner(&mut self, input: &[u8]) -> Result<usize, HandshakeError> {
        let mut consumed = 0;
        loop {
            let Some(expected) = self.expected() else {
                return match self.state {
                    State::Failed => Err(HandshakeError::State),
                    _ => Ok(consumed),
                };
            };
            let (kind, need) = match self.inbuf.first_chunk::<MSG_HEADER_LEN>() {
                None => (None, MSG_HEADER_LEN),
                Some(h) => {
                    let (kind, len) = check_header_any(h, expected)?;
                    (Some(kind), MSG_HEADER_LEN + len)
                }
            };
            if self.inbuf.len() < need {
                let take = (need - self.inbuf.len()).min(input.len() - consumed);
                if take == 0 {
                    return Ok(consumed);
                }
                self.inbuf.reserve_exact(need - self.inbuf.len());
                self.inbuf
                    .extend_from_slice(&input[consumed..consumed + take]);
                consumed += take;
                continue;
            }
            let mut msg = std::mem::take(&mut self.inbuf);
            match kind {
                Some(MessageType::ListenerHello) => self.connector_on_hello(&msg)?,
                Some(MessageType::ListenerAuth) => self.connector_on_auth(&mut msg)?,
                Some(MessageType::ResumeAccept) => self.connector_on_resume_accept(&msg)?,
                Some(MessageType::ConnectorHello) => {
                    self.listener_on_hello(&msg)?;
                    if !self.defer_reply {
                        self.make_reply()?;
                    }
                }
                Some(MessageType::ResumeHello) => {
                    self.listener_on_resume_hello(&msg)?;
                    if self.reply_pending() && !self.defer_reply {
                        self.make_reply()?;
                    }
                }
                Some(MessageType::ConnectorAuth) => self.listener_on_auth(&mut msg)?,
                Some(MessageType::ResumeFinished) => self.listener_on_resume_finished(&msg)?,
                None => return Err(HandshakeError::State),
            }
        }
    }

    fn psk(&self) -> Option<&Psk> {
        match &self.params {
            Params::Connector(p) => p.psk.as_deref(),
            Params::Listener(p) => p.psk.as_deref(),
        }
    }

    fn identity(&self) -> &dyn Signer {
        self.identity.as_ref()
    }

    fn transcript_hash(&self) -> [u8; HASH_LEN] {
        self.transcript.clone().finalize().into()
    }

    /// Checks a peer hello's version and options against ours.
    fn check_hello(&self, hello: &Hello) -> Result<(), HandshakeError> {
        if hello.version != PROTOCOL_VERSION {
            return Err(HandshakeError::UnsupportedVersion(hello.version));
        }
        if hello.options & !KNOWN_OPTIONS != 0 {
            return Err(HandshakeError::BadOptions(hello.options));
        }
        if (hello.options ^ self.options) & OPTION_PSK != 0 {
            return Err(HandshakeError::PskMismatch);
        }
        Ok(())
    }

    /// Derives the handshake secrets once both hellos are in the transcript, from the ML-KEM
    /// and the X25519 shared secrets.
    fn handshake_keys(&self, kem: &mlkem::SharedSecret, dh: &SharedSecret) -> HsKeys {
        let th = self.transcript_hash();
        let hs = HandshakeSecrets::new(self.psk(), kem.as_bytes(), dh.as_bytes());
        HsKeys {
            c_hs: hs.traffic(Direction::ConnectorToListener, &th),
            l_hs: hs.traffic(Direction::ListenerToConnector, &th),
            hs,
        }
    }

    /// Appends our identity, signature and finished MAC to the transcript and returns the
    /// encrypted auth message.
    fn make_auth(
        &mut self,
        kind: MessageType,
        context: &[u8],
        hs_traffic: &Secret,
    ) -> Result<Vec<u8>, HandshakeError> {
        let mut plain = vec16(self.identity().public().spki_der());
        if let Params::Connector(p) = &self.params {
            // The service is signed with the key: the listener refuses another service's.
            put_vec8(&mut plain, p.service.as_bytes());
        }
        self.transcript.update(&plain);
        let to_sign = signature_input(context, &self.transcript_hash());
        let sig = self
            .identity()
            .sign(&to_sign)
            .map_err(HandshakeError::Sign)?;
        let sig_field = vec16(&sig);
        self.transcript.update(&sig_field);
        plain.extend_from_slice(&sig_field);
        let fin = hmac(
            finished_key(hs_traffic).expose(),
            &[&self.transcript_hash()],
        );
        self.transcript.update(fin);
        plain.extend_from_slice(&fin);

        let hdr = header(kind, plain.len() + TAG_LEN);
        let key = TrafficKey::new(hs_traffic);
        let tag = key
            .aead()
            .seal_in_place(&key.nonce(0), &hdr, &mut plain)
            .map_err(|_| HandshakeError::Decrypt)?;
        let mut msg = Vec::with_capacity(MSG_HEADER_LEN + plain.len() + TAG_LEN);
        msg.extend_from_slice(&hdr);
        msg.extend_from_slice(&plain);
        msg.extend_from_slice(&tag);
        Ok(msg)
    }

    /// Decrypts a peer's auth message in place and checks its signature and finished MAC
    /// (the pin check comes first through `accept`); the peer and, in a ConnectorAuth, the
    /// service it asks for.
    fn check_auth(
        &mut self,
        msg: &mut [u8],
        context: &[u8],
        hs_traffic: &Secret,
        accept: impl FnOnce(&Fingerprint) -> Result<(), HandshakeError>,
    ) -> Result<(PublicIdentity, Option<String>), HandshakeError> {
        let (hdr, body) = msg.split_at_mut(MSG_HEADER_LEN);
        let split = body
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(HandshakeError::Decrypt)?;
        let (plain, tag) = body.split_at_mut(split);
        let tag: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| HandshakeError::Decrypt)?;
        let key = TrafficKey::new(hs_traffic);
        key.aead()
            .open_in_place(&key.nonce(0), hdr, plain, &tag)
            .map_err(|_| HandshakeError::Decrypt)?;
        let auth = Auth::decode(plain, self.role() == Role::Listener)?;
        accept(&Fingerprint::of_spki(auth.spki))?;
        let peer = parsed_keys::parse(auth.spki).map_err(HandshakeError::PeerKey)?;

        self.transcript.update(vec16(auth.spki));
        let service = auth.service.map(|s| {
            let mut v = Vec::with_capacity(1 + s.len());
            put_vec8(&mut v, s);
            self.transcript.update(&v);
            // `Auth::decode` checked it is printable ASCII.
            String::from_utf8_lossy(s).into_owned()
        });
        let signed = signature_input(context, &self.transcript_hash());
        peer.verify(&signed, auth.signature)
            .map_err(|_| HandshakeError::BadSignature)?;
        self.transcript.update(vec16(auth.signature));
        let expected = hmac(
            finished_key(hs_traffic).expose(),
            &[&self.transcript_hash()],
        );
        if !ct_eq(&expected, auth.finished) {
            return Err(HandshakeError::BadFinished);
        }
        self.transcript.update(auth.finished);
        Ok((peer, service))
    }

    /// The application secrets of a full handshake: (c_ap, l_ap, res).
    fn application_secrets(&self, keys: &HsKeys) -> (Secret, Secret, Secret, [u8; HASH_LEN]) {
        let th = self.transcript_hash();
        let master = keys.hs.master();
        let c = master.traffic(Direction::ConnectorToListener, &th);
        let l = master.traffic(Direction::ListenerToConnector, &th);
        let resumption = master.resumption(&th);
        (c, l, resumption, th)
    }

    fn establish(&mut self, keys: &HsKeys, peer: PublicIdentity) {
        parsed_keys::remember(&peer);
        let (c, l, resumption, th) = self.application_secrets(keys);
        // A full handshake: its successor tickets start a chain.
        self.file_successors(&resumption, &peer, |policy, now| {
            Some(Chain::new(policy, now))
        });
        self.done(peer, c, l, resumption, th, false);
    }

    fn done(
        &mut self,
        peer: PublicIdentity,
        c: Secret,
        l: Secret,
        resumption: Secret,
        th: [u8; HASH_LEN],
        resumed: bool,
    ) {
        let (send, recv) = match self.role() {
            Role::Connector => (c, l),
            Role::Listener => (l, c),
        };
        self.rand.zeroize();
        self.state = State::Done(Box::new(Established {
            peer,
            own: self.identity.public().fingerprint(),
            send,
            recv,
            resumption,
            transcript_hash: th,
            resumed,
            ticket_refused: self.ticket_refused,
        }));
    }

    /// Files the successor tickets of `res` in this side's store, in the chain `chain` gives
    /// (from the policy and the time; none when the chain is used up).
    fn file_successors(
        &mut self,
        res: &Secret,
        peer: &PublicIdentity,
        chain: impl FnOnce(TicketPolicy, std::time::Instant) -> Option<Chain>,
    ) {
        match (self.resume.as_deref(), &self.params) {
            (Some(ResumeCtx::Connector { r, .. }), Params::Connector(p)) => {
                // Bound to the key the listener proved, which is the pinned one for
                // `ListenerPin::Key` (checked) and the one a TOFU first contact records: only a
                // later connection pinned to it offers the ticket.
                let context = ticket_context(
                    &[&p.identity.public().fingerprint(), &peer.fingerprint()],
                    p.psk.as_deref(),
                    p.service.as_bytes(),
                );
                lock(&r.store).file(res, Arc::new(peer.clone()), context, chain(r.policy, r.now));
            }
            (Some(ResumeCtx::Listener(r)), Params::Listener(p)) => {
                // Bound to the listener key this handshake ran with: a hello keyed for the
                // other key cannot resume it.
                let trusted = p.trust.contains(&peer.fingerprint());
                lock(&r.store).file(
                    res,
                    Arc::new(peer.clone()),
                    trusted,
                    listener_context(self.identity.as_ref(), p),
                    chain(r.policy, r.now),
                    r.policy,
                    r.now,
                );
            }
            _ => {}
        }
    }

    fn connector_on_hello(&mut self, msg: &[u8]) -> Result<(), HandshakeError> {
        let hello = Hello::decode_fields(&msg[MSG_HEADER_LEN..])?;
        self.check_hello(&hello)?;
        // A full handshake after a resume hello: the listener refused the ticket. It is
        // forgotten once the listener's signature verifies (`connector_on_auth`): an injected
        // hello cannot burn it.
        if self.offer().is_some() {
            self.ticket_refused = Some(TicketRefusal::RefusedByListener);
        }
        let dh = x25519_shared(&self.rand.ephemeral, &hello.ephemeral)?;
        let ct = hello_ct(&msg[MSG_HEADER_LEN..]).ok_or(MessageError::Malformed)?;
        // Decapsulated once; the key is dropped here, whatever follows.
        let kem = self
            .mlkem
            .take()
            .ok_or(HandshakeError::State)?
            .decapsulate(ct)
            .map_err(|_| HandshakeError::BadMlKemKey)?;
        self.transcript.update(msg);
        let keys = self.handshake_keys(&kem, &dh);
        self.state = State::ConnectorWaitAuth(Box::new(keys));
        Ok(())
    }

    fn connector_on_auth(&mut self, msg: &mut [u8]) -> Result<(), HandshakeError> {
        let State::ConnectorWaitAuth(keys) = std::mem::replace(&mut self.state, State::Failed)
        else {
            return Err(HandshakeError::State);
        };
        let Params::Connector(params) = &self.params else {
            return Err(HandshakeError::State);
        };
        let pin = params.listener;
        let (peer, _) = self.check_auth(
            msg,
            LISTENER_SIGNATURE_CONTEXT,
            &keys.l_hs,
            |fp| match pin {
                ListenerPin::Key(pinned) | ListenerPin::Probe(pinned) if !fp.ct_eq(&pinned) => {
                    Err(HandshakeError::WrongListenerKey {
                        expected: pinned,
                        got: *fp,
                    })
                }
                // First contact: any key, once it proves possession (signature and finished below).
                ListenerPin::Key(_) | ListenerPin::Probe(_) | ListenerPin::FirstContact => Ok(()),
            },
        )?;
        // The listener proved itself: the ticket it refused is gone for good, and so is the
        // rest of its chain, which it would refuse too (PROTOCOL.md §9).
        if let Some(ResumeCtx::Connector { r, offer: Some(o) }) = self.resume.as_deref() {
            lock(&r.store).forget_chain(o);
        }
        self.use_up_offer();
        let auth = self.make_auth(
            MessageType::ConnectorAuth,
            CONNECTOR_SIGNATURE_CONTEXT,
            &keys.c_hs,
        )?;
        self.out.extend_from_slice(&auth);
        self.establish(&keys, peer);
        Ok(())
    }

    fn listener_on_hello(&mut self, msg: &[u8]) -> Result<(), HandshakeError> {
        let Params::Listener(params) = &self.params else {
            return Err(HandshakeError::State);
        };
        let (_, identity) = answering_identity(params, msg)?;
        self.identity = identity.clone();
        let hello = Hello::decode_fields(&msg[MSG_HEADER_LEN..])?;
        self.check_hello(&hello)?;
        let pending = self.pending(&hello, msg)?;
        self.transcript.update(msg);
        self.state = State::ListenerReplyPending(pending);
        Ok(())
    }

    /// The connector's keys, kept for `make_reply` (which makes the X25519).
    fn pending(&self, hello: &Hello, msg: &[u8]) -> Result<Box<Pending>, HandshakeError> {
        let ek = hello_ek(&msg[MSG_HEADER_LEN..]).ok_or(MessageError::Malformed)?;
        Ok(Box::new(Pending {
            peer_ephemeral: hello.ephemeral,
            dh: None,
            ek: Box::new(*ek),
        }))
    }

    /// True when a listener has read a hello that needs a full handshake and waits for
    /// [`Handshake::make_reply`] to make its answer.
    pub fn reply_pending(&self) -> bool {
        matches!(self.state, State::ListenerReplyPending(_))
    }

    /// Makes a listener's full-handshake answer (ListenerHello and the signed ListenerAuth): the
    /// one costly step before the connector is authenticated, split out of [`Handshake::read`]
    /// so that the caller can schedule it (off the async workers, under a budget). An error if
    /// no answer is pending.
    pub fn make_reply(&mut self) -> Result<(), HandshakeError> {
        let result = match std::mem::replace(&mut self.state, State::Failed) {
            State::ListenerReplyPending(pending) => self.listener_full_reply(&pending),
            _ => Err(HandshakeError::State),
        };
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    /// The listener's answer of a full handshake, once the connector's hello is in the
    /// transcript.
    fn listener_full_reply(&mut self, pending: &Pending) -> Result<(), HandshakeError> {
        // The X25519 first: a low-order key ends the handshake before the ML-KEM and the
        // signature.
        let computed;
        let dh = match &pending.dh {
            Some(dh) => dh,
            None => {
                computed = x25519_shared(&self.rand.ephemeral, &pending.peer_ephemeral)?;
                &computed
            }
        };
        let (ct, kem) = mlkem::encapsulate(&pending.ek).map_err(|_| HandshakeError::BadMlKemKey)?;
        let reply = Hello {
            version: PROTOCOL_VERSION,
            options: self.options,
            random: self.rand.random,
            ephemeral: x25519_public(&self.rand.ephemeral),
        }
        .encode_listener(&ct);
        self.transcript.update(&reply);
        self.out.extend_from_slice(&reply);
        let keys = self.handshake_keys(&kem, dh);
        let auth = self.make_auth(
            MessageType::ListenerAuth,
            LISTENER_SIGNATURE_CONTEXT,
            &keys.l_hs,
        )?;
        self.out.extend_from_slice(&auth);
        self.state = State::ListenerWaitAuth(Box::new(keys));
        Ok(())
    }

    fn listener_on_auth(&mut self, msg: &mut [u8]) -> Result<(), HandshakeError> {
        let State::ListenerWaitAuth(keys) = std::mem::replace(&mut self.state, State::Failed)
        else {
            return Err(HandshakeError::State);
        };
        let Params::Listener(params) = &self.params else {
            return Err(HandshakeError::State);
        };
        let trust = params.trust.clone();
        let accept_unknown = params.accept_unknown;
        let served = params.service.clone();
        // Signature and finished first: only a connector that proved its key learns why it is
        // refused (an Alert record), and a refusal is never of a key it does not hold.
        let (peer, asked) =
            self.check_auth(msg, CONNECTOR_SIGNATURE_CONTEXT, &keys.c_hs, |_| Ok(()))?;
        let fp = peer.fingerprint();
        let asked = asked.ok_or(HandshakeError::State)?;
        let refusal = if !(accept_unknown || trust.contains(&fp)) {
            Some(Alert::new(AlertCode::Untrusted, b""))
        } else if asked.as_bytes() != served.as_bytes() {
            Some(Alert::new(AlertCode::ServiceMismatch, served.as_bytes()))
        } else {
            None
        };
        if let Some(alert) = refusal {
            let refused_code = alert.code();
            let (_, l_ap, _, _) = self.application_secrets(&keys);
            let record = Sealer::new(l_ap, u64::MAX)
                .seal_alert(&alert)
                .map_err(|_| HandshakeError::State)?;
            let alert = RefusalAlert(record);
            self.rand.zeroize();
            return Err(match refused_code {
                AlertCode::Untrusted => HandshakeError::UntrustedConnector(fp, alert),
                AlertCode::ServiceMismatch => HandshakeError::ServiceMismatch {
                    fingerprint: fp,
                    asked,
                    served: served.to_string(),
                    alert,
                },
            });
        }
        self.establish(&keys, peer);
        Ok(())
    }
}

fn connector_context(p: &ConnectorParams) -> crate::proto::resume::TicketContext {
    ticket_context(
        &[&p.identity.public().fingerprint(), &p.listener.mac1_key()],
        p.psk.as_deref(),
        p.service.as_bytes(),
    )
}

/// A listener's ticket context under `identity`, the key of the handshake.
fn listener_context(
    identity: &dyn Signer,
    p: &ListenerParams,
) -> crate::proto::resume::TicketContext {
    ticket_context(
        &[&identity.public().fingerprint()],
        p.psk.as_deref(),
        p.service.as_bytes(),
    )
}

/// Offsets in a resume hello (header included).
const RH_ID: usize = MSG_HEADER_LEN + HELLO_FIELDS + EK_LEN;
const RH_BINDER: usize = RH_ID + TICKET_ID_LEN;
const RH_MAC1: usize = RH_BINDER + HASH_LEN;

impl Handshake {
    fn listener_on_resume_hello(&mut self, msg: &[u8]) -> Result<(), HandshakeError> {
        let Params::Listener(params) = &self.params else {
            return Err(HandshakeError::State);
        };
        // mac1 first, before any table lookup or X25519; it picks the key that answers (a
        // ResumeHello is never a first contact: `answering_identity` refuses one).
        let (_, identity) = answering_identity(params, msg)?;
        self.identity = identity.clone();
        let hello = Hello::decode_fields(&msg[MSG_HEADER_LEN..])?;
        self.check_hello(&hello)?;
        let (Some(id), Some(binder_got)) = (
            msg.get(RH_ID..RH_BINDER)
                .and_then(|b| <&[u8; TICKET_ID_LEN]>::try_from(b).ok()),
            msg.get(RH_BINDER..RH_MAC1),
        ) else {
            return Err(MessageError::Malformed.into());
        };
        // The X25519 first: a low-order key ends the handshake before it can use up a ticket.
        let dh = x25519_shared(&self.rand.ephemeral, &hello.ephemeral)?;
        let mut pending = self.pending(&hello, msg)?;
        let redeemed = match self.resume.as_deref() {
            Some(ResumeCtx::Listener(r)) => lock(&r.store).check(
                id,
                PresentedBinder {
                    hello_before_binder: &msg[..RH_BINDER],
                    binder: binder_got,
                },
                &|fp| params.accept_unknown || params.trust.contains(fp),
                &listener_context(self.identity.as_ref(), params),
                r.policy,
                r.now,
            ),
            _ => Err(TicketRefusal::Disabled),
        };
        self.transcript.update(msg);
        match redeemed {
            Ok(ticket) => self.listener_resume_reply(&dh, ticket),
            Err(refusal) => {
                pending.dh = Some(dh);
                // Fall back to a full handshake on the same transcript: it authenticates the
                // resume hello as it would a connector hello, with its encapsulation key.
                self.ticket_refused = Some(refusal);
                self.state = State::ListenerReplyPending(pending);
                Ok(())
            }
        }
    }

    fn listener_resume_reply(
        &mut self,
        shared: &SharedSecret,
        ticket: Redeemed,
    ) -> Result<(), HandshakeError> {
        let mut reply = Vec::with_capacity(MSG_HEADER_LEN + RESUME_ACCEPT_BODY);
        reply.extend_from_slice(&header(MessageType::ResumeAccept, RESUME_ACCEPT_BODY));
        Hello {
            version: PROTOCOL_VERSION,
            options: self.options,
            random: self.rand.random,
            ephemeral: x25519_public(&self.rand.ephemeral),
        }
        .encode_fields(&mut reply);
        self.transcript.update(&reply);
        let rs = ResumeSecrets::new(&ticket.secret, shared.as_bytes());
        let (c_hs, l_hs) = rs.handshake_traffic(&self.transcript_hash());
        let fin = hmac(finished_key(&l_hs).expose(), &[&self.transcript_hash()]);
        self.transcript.update(fin);
        reply.extend_from_slice(&fin);
        self.out.extend_from_slice(&reply);
        self.state = State::ListenerWaitResumeFinished(Box::new(ResKeys { rs, c_hs, ticket }));
        Ok(())
    }

    fn listener_on_resume_finished(&mut self, msg: &[u8]) -> Result<(), HandshakeError> {
        let State::ListenerWaitResumeFinished(keys) =
            std::mem::replace(&mut self.state, State::Failed)
        else {
            return Err(HandshakeError::State);
        };
        let expected = hmac(
            finished_key(&keys.c_hs).expose(),
            &[&self.transcript_hash()],
        );
        if !ct_eq(&expected, &msg[MSG_HEADER_LEN..]) {
            return Err(HandshakeError::BadFinished);
        }
        // The connector proved itself: the ticket is used up now, and only now (a replayed or
        // injected hello never gets this far). Another connection that used it meanwhile wins.
        if let Some(ResumeCtx::Listener(r)) = self.resume.as_deref() {
            if !lock(&r.store).consume(&keys.ticket.id) {
                return Err(HandshakeError::TicketUsed);
            }
        }
        self.transcript.update(msg);
        let chain = keys.ticket.chain;
        self.resumed(&keys.rs, (*keys.ticket.peer).clone(), chain);
        Ok(())
    }

    fn connector_on_resume_accept(&mut self, msg: &[u8]) -> Result<(), HandshakeError> {
        let hello = Hello::decode_fields(&msg[MSG_HEADER_LEN..])?;
        self.check_hello(&hello)?;
        let (secret, peer, chain) = match self.offer() {
            Some(o) => (o.secret.clone(), o.peer.clone(), o.chain),
            None => return Err(HandshakeError::State),
        };
        // Resumed: no ML-KEM in this connection (PROTOCOL.md §5, the resumption rule).
        self.mlkem = None;
        let shared = x25519_shared(&self.rand.ephemeral, &hello.ephemeral)?;
        let (fields, fin_l) = msg.split_at(msg.len() - HASH_LEN);
        self.transcript.update(fields);
        let rs = ResumeSecrets::new(&secret, shared.as_bytes());
        let (c_hs, l_hs) = rs.handshake_traffic(&self.transcript_hash());
        let expected = hmac(finished_key(&l_hs).expose(), &[&self.transcript_hash()]);
        if !ct_eq(&expected, fin_l) {
            return Err(HandshakeError::BadFinished);
        }
        self.transcript.update(fin_l);
        // The listener proved itself: the ticket is used up.
        self.use_up_offer();
        let fin_c = hmac(finished_key(&c_hs).expose(), &[&self.transcript_hash()]);
        let mut finished = Vec::with_capacity(MSG_HEADER_LEN + RESUME_FINISHED_BODY);
        finished.extend_from_slice(&header(MessageType::ResumeFinished, RESUME_FINISHED_BODY));
        finished.extend_from_slice(&fin_c);
        self.transcript.update(&finished);
        self.out.extend_from_slice(&finished);
        self.resumed(&rs, (*peer).clone(), chain);
        Ok(())
    }

    /// A resumption completed with a ticket of `chain`: its successors go one level deeper.
    fn resumed(&mut self, rs: &ResumeSecrets, peer: PublicIdentity, chain: Chain) {
        let th = self.transcript_hash();
        let (c, l, res) = rs.application_traffic(&th);
        self.file_successors(&res, &peer, |policy, _| chain.next(policy));
        self.done(peer, c, l, res, th, true);
    }
}
