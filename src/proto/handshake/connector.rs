//! The connector's side of the handshake: it sends the hello (a ConnectorHello, or a
//! ResumeHello offering a ticket), checks the listener's pin, signature and finished MAC, and
//! signs last.

use std::sync::Arc;

use sha2::Digest;

use super::common::{x25519_public, x25519_shared, CommonState, HsKeys};
use super::mac1::{mac1_keyed, FIRST_CONTACT};
use super::{
    lock, Established, HandshakeError, HandshakeRandomness, Resumption,
    CONNECTOR_SIGNATURE_CONTEXT, LISTENER_SIGNATURE_CONTEXT,
};
use crate::proto::identity::{Fingerprint, PublicIdentity, Signer};
use crate::proto::key_schedule::{Psk, Secret, HASH_LEN};
use crate::proto::messages::{
    hello_ct, header, Hello, MessageError, MessageType, MSG_HEADER_LEN, PROTOCOL_VERSION,
    RESUME_HELLO_BODY,
};
use crate::proto::mlkem;
use crate::proto::parsed_keys;
use crate::proto::resume::{
    binder, ticket_context, Chain, ConnectorTickets, Offer, TicketContext, TicketPolicy,
    TicketRefusal,
};


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


enum State {
    WaitHello,
    WaitAuth(Box<HsKeys>),
    Done(Box<Established>),
    Finished,
    Failed,
}

/// A connector's resumption: the store and, while the listener has not authenticated itself,
/// the ticket offered.
pub(super) struct ConnectorResume {
    pub(super) r: Resumption<ConnectorTickets>,
    /// The ticket offered, out of the store until the listener authenticates itself (then
    /// it is used up), given back if the handshake ends before that (see `Drop`).
    pub(super) offer: Option<Offer>,
}

impl Drop for ConnectorResume {
    fn drop(&mut self) {
        // An attempt that ended before the listener proved itself (an injected or tampered
        // answer, a reset, a timeout) leaves the ticket unused: the listener has not used it
        // up either, since no connector finished verified.
        if let Some(o) = self.offer.take() {
            lock(&self.r.store).give_back(o);
        }
    }
}

/// A connector's handshake: its hello is ready in [`ConnectorHandshake::take_output`] at once.
pub struct ConnectorHandshake {
    params: ConnectorParams,
    pub(super) resume: Option<Box<ConnectorResume>>,
    pub(super) common: CommonState,
    state: State,
    /// The ML-KEM-768 key of this hello, until the listener's answer (dropped then).
    pub(super) mlkem: Option<mlkem::DecapsulationKey>,
}

impl ConnectorHandshake {
    /// A connector's handshake without resumption.
    pub fn new(params: ConnectorParams, rand: HandshakeRandomness) -> Self {
        Self::prepared(params, ConnectorEphemerals::new(rand), None)
    }

    /// A connector's handshake with resumption: offers the store's ticket for this listener if
    /// it has a valid one (using one of its uses), and keeps the ticket of a full handshake.
    pub fn resuming(
        params: ConnectorParams,
        rand: HandshakeRandomness,
        resumption: Resumption<ConnectorTickets>,
    ) -> Self {
        Self::prepared(params, ConnectorEphemerals::new(rand), Some(resumption))
    }

    /// A connector's handshake from ephemerals made beforehand, with resumption if
    /// `resumption` is given (as [`ConnectorHandshake::resuming`]).
    pub fn prepared(
        params: ConnectorParams,
        ephemerals: ConnectorEphemerals,
        resumption: Option<Resumption<ConnectorTickets>>,
    ) -> Self {
        let ConnectorEphemerals {
            rand,
            public,
            kem: dk,
        } = ephemerals;
        let mut common = CommonState::new(params.identity.clone(), rand, params.psk.as_deref());
        let hello = Hello {
            version: PROTOCOL_VERSION,
            options: common.options,
            random: common.rand.random,
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
            Box::new(ConnectorResume { r, offer })
        });
        let mut out = match resume.as_deref().and_then(|r| r.offer.as_ref()) {
            None => hello.encode_connector_unmacced(dk.encapsulation_key()),
            Some(offer) => {
                let mut out = Vec::with_capacity(MSG_HEADER_LEN + RESUME_HELLO_BODY);
                out.extend_from_slice(&header(MessageType::ResumeHello, RESUME_HELLO_BODY));
                hello.encode_fields(&mut out);
                out.extend_from_slice(dk.encapsulation_key());
                out.extend_from_slice(&offer.id);
                let b = binder(&offer.secret, &out, &params.listener.mac1_key());
                out.extend_from_slice(&b);
                out
            }
        };
        let tag = mac1_keyed(&params.listener.mac1_key(), params.psk.as_deref(), &out);
        out.extend_from_slice(&tag);
        common.transcript.update(&out);
        common.out = out;
        ConnectorHandshake {
            params,
            resume,
            common,
            state: State::WaitHello,
            mlkem: Some(dk),
        }
    }

    /// Bytes to send to the listener now (possibly none).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.common.out)
    }

    /// Bytes waiting to be sent, without taking them.
    pub fn pending_output(&self) -> &[u8] {
        &self.common.out
    }

    /// True when the handshake has verified the listener and produced keys.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done(_))
    }

    /// The verified session; call once, after [`ConnectorHandshake::is_done`] and after sending
    /// the last output.
    pub fn finish(&mut self) -> Result<Established, HandshakeError> {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::Done(est) => Ok(*est),
            other => {
                self.state = other;
                Err(HandshakeError::State)
            }
        }
    }

    /// Feeds bytes from the listener; returns how many were consumed. Bytes after the last
    /// handshake message are not consumed. After an error the handshake is dead.
    pub fn read(&mut self, input: &[u8]) -> Result<usize, HandshakeError> {
        let result = self.read_inner(input);
        if result.is_err() {
            self.state = State::Failed;
            self.common.wipe_input();
        }
        result
    }

    fn expected(&self) -> Option<&'static [MessageType]> {
        use MessageType as M;
        match self.state {
            State::WaitHello if self.offer().is_some() => Some(&[M::ListenerHello, M::ResumeAccept]),
            State::WaitHello => Some(&[M::ListenerHello]),
            State::WaitAuth(_) => Some(&[M::ListenerAuth]),
            State::Done(_) | State::Finished | State::Failed => None,
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
            let Some((kind, mut msg)) = self.common.next_message(input, &mut consumed, expected)?
            else {
                return Ok(consumed);
            };
            match kind {
                MessageType::ListenerHello => self.on_hello(&msg)?,
                MessageType::ListenerAuth => self.on_auth(&mut msg)?,
                MessageType::ResumeAccept => self.on_resume_accept(&msg)?,
                _ => return Err(HandshakeError::State),
            }
        }
    }

    /// The ticket offered, while the listener has not authenticated itself.
    pub(super) fn offer(&self) -> Option<&Offer> {
        self.resume.as_deref().and_then(|r| r.offer.as_ref())
    }

    /// The listener has authenticated itself: the ticket offered is never given back (see
    /// `Drop for ConnectorResume`).
    pub(super) fn use_up_offer(&mut self) {
        if let Some(r) = self.resume.as_deref_mut() {
            r.offer = None;
        }
    }

    fn on_hello(&mut self, msg: &[u8]) -> Result<(), HandshakeError> {
        let hello = Hello::decode_fields(&msg[MSG_HEADER_LEN..])?;
        self.common.check_hello(&hello)?;
        // A full handshake after a resume hello: the listener refused the ticket. It is
        // forgotten once the listener's signature verifies (`on_auth`): an injected hello cannot
        // burn it.
        if self.offer().is_some() {
            self.common.ticket_refused = Some(TicketRefusal::RefusedByListener);
        }
        let dh = x25519_shared(&self.common.rand.ephemeral, &hello.ephemeral)?;
        let ct = hello_ct(&msg[MSG_HEADER_LEN..]).ok_or(MessageError::Malformed)?;
        // Decapsulated once; the key is dropped here, whatever follows.
        let kem = self
            .mlkem
            .take()
            .ok_or(HandshakeError::State)?
            .decapsulate(ct)
            .map_err(|_| HandshakeError::BadMlKemKey)?;
        self.common.transcript.update(msg);
        let keys = self
            .common
            .handshake_keys(self.params.psk.as_deref(), &kem, &dh);
        self.state = State::WaitAuth(Box::new(keys));
        Ok(())
    }

    fn on_auth(&mut self, msg: &mut [u8]) -> Result<(), HandshakeError> {
        let State::WaitAuth(keys) = std::mem::replace(&mut self.state, State::Failed) else {
            return Err(HandshakeError::State);
        };
        let pin = self.params.listener;
        let (peer, _) = self.common.check_auth(
            msg,
            LISTENER_SIGNATURE_CONTEXT,
            &keys.l_hs,
            false,
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
        if let (Some(resume), Some(o)) = (self.resume.as_deref(), self.offer()) {
            lock(&resume.r.store).forget_chain(o);
        }
        self.use_up_offer();
        let auth = self.common.make_auth(
            MessageType::ConnectorAuth,
            CONNECTOR_SIGNATURE_CONTEXT,
            &keys.c_hs,
            Some(self.params.service.as_bytes()),
        )?;
        self.common.out.extend_from_slice(&auth);
        parsed_keys::remember(&peer);
        let (c, l, resumption, th) = self.common.application_secrets(&keys);
        // A full handshake: its successor tickets start a chain.
        self.file_successors(&resumption, &peer, |policy, now| {
            Some(Chain::new(policy, now))
        });
        self.done(peer, (c, l), resumption, th, false);
        Ok(())
    }

    /// The handshake is complete: (c, l) are the connector's and the listener's application
    /// traffic secrets.
    pub(super) fn done(
        &mut self,
        peer: PublicIdentity,
        (c, l): (Secret, Secret),
        resumption: Secret,
        th: [u8; HASH_LEN],
        resumed: bool,
    ) {
        let est = self
            .common
            .established(peer, (c, l), resumption, th, resumed);
        self.state = State::Done(Box::new(est));
    }

    /// Files the successor tickets of `res` in the connector's store, in the chain `chain`
    /// gives (from the policy and the time; none when the chain is used up).
    pub(super) fn file_successors(
        &mut self,
        res: &Secret,
        peer: &PublicIdentity,
        chain: impl FnOnce(TicketPolicy, std::time::Instant) -> Option<Chain>,
    ) {
        let Some(resume) = self.resume.as_deref() else {
            return;
        };
        let p = &self.params;
        // Bound to the key the listener proved, which is the pinned one for `ListenerPin::Key`
        // (checked) and the one a TOFU first contact records: only a later connection pinned to
        // it offers the ticket.
        let context = ticket_context(
            &[&p.identity.public().fingerprint(), &peer.fingerprint()],
            p.psk.as_deref(),
            p.service.as_bytes(),
        );
        let r = &resume.r;
        lock(&r.store).file(res, Arc::new(peer.clone()), context, chain(r.policy, r.now));
    }
}

fn connector_context(p: &ConnectorParams) -> TicketContext {
    ticket_context(
        &[&p.identity.public().fingerprint(), &p.listener.mac1_key()],
        p.psk.as_deref(),
        p.service.as_bytes(),
    )
}
