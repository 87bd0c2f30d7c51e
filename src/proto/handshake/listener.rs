//! The listener's side of the handshake: mac1 first (the key that answers), then the signed
//! answer — made at once, or deferred to [`ListenerHandshake::make_reply`] for the caller to
//! schedule — and the connector's signature, trust and service checked last.

use std::sync::Arc;

use sha2::Digest;
use zeroize::Zeroize;

use super::common::{x25519_shared, CommonState, HsKeys};
use super::mac1::answering_identity;
use super::{
    lock, Established, HandshakeError, HandshakeRandomness, RefusalAlert, Resumption,
    CONNECTOR_SIGNATURE_CONTEXT, LISTENER_SIGNATURE_CONTEXT,
};
use crate::proto::identity::{PublicIdentity, Signer, TrustList};
use crate::proto::key_schedule::{Psk, Secret, HASH_LEN};
use crate::proto::messages::{hello_ek, Hello, MessageError, MessageType, MSG_HEADER_LEN};
use crate::proto::mlkem::{self, EK_LEN};
use crate::proto::parsed_keys;
use crate::proto::record::{Alert, AlertCode, Sealer};
use crate::proto::resume::{
    ticket_context, Chain, Redeemed, ResumeSecrets, TicketContext, TicketPolicy, TicketStore,
};

/// A listener's keys while it waits for ResumeFinished (made and used by `resume.rs`).
pub(super) struct ResKeys {
    pub(super) rs: ResumeSecrets,
    pub(super) c_hs: Secret,
    pub(super) ticket: Redeemed,
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
    /// Also answer hellos whose mac1 is keyed by [`FIRST_CONTACT`](super::FIRST_CONTACT) (`allow_tofu`): connectors
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

/// The largest key a listener verifies for a connector outside its trust list
/// (`accept_unknown`): 4096 bits, a quarter of an 8192-bit key's verification cost. A key in the
/// trust list may have up to [`MAX_RSA_BITS`](crate::proto::identity::MAX_RSA_BITS) bits: the
/// operator chose it.
pub(crate) const MAX_UNLISTED_RSA_BITS: usize = 4096;

pub(super) enum State {
    WaitHello,
    /// A hello that needs a full handshake was read; the costly answer (the RSA signature) is
    /// made by [`ListenerHandshake::make_reply`], wherever the caller chooses to run it.
    ReplyPending(Box<Pending>),
    WaitAuth(Box<HsKeys>),
    WaitResumeFinished(Box<ResKeys>),
    Done(Box<Established>),
    Finished,
    Failed,
}

/// What a listener's deferred answer needs: the connector's X25519 key and its ML-KEM
/// encapsulation key. The X25519 and the encapsulation are done in
/// [`ListenerHandshake::make_reply`], not in `read`, so that a hello that never gets an answer
/// (the signing budget, the queue or a per-source limit refuses it) costs neither — a
/// ResumeHello whose ticket was refused included (PROTOCOL.md §9).
pub(super) struct Pending {
    peer_ephemeral: [u8; 32],
    ek: Box<[u8; EK_LEN]>,
}

/// A listener's handshake: it waits for a connector hello.
pub struct ListenerHandshake {
    pub(super) params: ListenerParams,
    pub(super) resume: Option<Resumption<TicketStore>>,
    pub(super) common: CommonState,
    pub(super) state: State,
    /// Leave a full-handshake answer to [`ListenerHandshake::make_reply`] instead of making it
    /// inside [`ListenerHandshake::read`] ([`ListenerHandshake::defer_replies`]).
    defer_reply: bool,
}

impl ListenerHandshake {
    /// A listener's handshake without resumption: a resume hello gets a full handshake
    /// ([`TicketRefusal::Disabled`](crate::proto::resume::TicketRefusal::Disabled)).
    pub fn new(params: ListenerParams, rand: HandshakeRandomness) -> Self {
        Self::with(params, rand, None)
    }

    /// A listener's handshake with resumption: accepts valid tickets from the store (using one
    /// of their uses), and files the ticket of a full handshake.
    pub fn resuming(
        params: ListenerParams,
        rand: HandshakeRandomness,
        resumption: Resumption<TicketStore>,
    ) -> Self {
        Self::with(params, rand, Some(resumption))
    }

    fn with(
        params: ListenerParams,
        rand: HandshakeRandomness,
        resumption: Option<Resumption<TicketStore>>,
    ) -> Self {
        ListenerHandshake {
            common: CommonState::new(params.identity.clone(), rand, params.psk.as_deref()),
            params,
            resume: resumption,
            state: State::WaitHello,
            defer_reply: false,
        }
    }

    /// A listener whose [`ListenerHandshake::read`] of a hello that needs a full handshake
    /// stops before the answer ([`ListenerHandshake::reply_pending`]), for the caller to run
    /// [`ListenerHandshake::make_reply`] where it chooses. Without it, `read` makes the answer
    /// itself.
    pub fn defer_replies(mut self) -> Self {
        self.defer_reply = true;
        self
    }

    /// Bytes to send to the connector now (possibly none).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.common.out)
    }

    /// Bytes waiting to be sent, without taking them.
    pub fn pending_output(&self) -> &[u8] {
        &self.common.out
    }

    /// True when the handshake has verified the connector and produced keys.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done(_))
    }

    /// The verified session; call once, after [`ListenerHandshake::is_done`] and after sending
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

    /// Feeds bytes from the connector; returns how many were consumed. Bytes after the last
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
            State::WaitHello => Some(&[M::ConnectorHello, M::ResumeHello]),
            State::WaitAuth(_) => Some(&[M::ConnectorAuth]),
            State::WaitResumeFinished(_) => Some(&[M::ResumeFinished]),
            State::ReplyPending(_) | State::Done(_) | State::Finished | State::Failed => None,
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
                MessageType::ConnectorHello => {
                    self.on_hello(&msg)?;
                    if !self.defer_reply {
                        self.make_reply()?;
                    }
                }
                MessageType::ResumeHello => {
                    self.on_resume_hello(&msg)?;
                    if self.reply_pending() && !self.defer_reply {
                        self.make_reply()?;
                    }
                }
                MessageType::ConnectorAuth => self.on_auth(&mut msg)?,
                MessageType::ResumeFinished => self.on_resume_finished(&msg)?,
                _ => return Err(HandshakeError::State),
            }
        }
    }

    fn on_hello(&mut self, msg: &[u8]) -> Result<(), HandshakeError> {
        let (_, identity) = answering_identity(&self.params, msg)?;
        self.common.identity = identity.clone();
        let hello = Hello::decode_fields(&msg[MSG_HEADER_LEN..])?;
        self.common.check_hello(&hello)?;
        let pending = pending(&hello, msg)?;
        self.common.transcript.update(msg);
        self.state = State::ReplyPending(pending);
        Ok(())
    }

    /// True when the listener has read a hello that needs a full handshake and waits for
    /// [`ListenerHandshake::make_reply`] to make its answer.
    pub fn reply_pending(&self) -> bool {
        matches!(self.state, State::ReplyPending(_))
    }

    /// Makes the full-handshake answer (ListenerHello and the signed ListenerAuth): the one
    /// costly step before the connector is authenticated, split out of
    /// [`ListenerHandshake::read`] so that the caller can schedule it (off the async workers,
    /// under a budget). An error if no answer is pending.
    pub fn make_reply(&mut self) -> Result<(), HandshakeError> {
        let result = match std::mem::replace(&mut self.state, State::Failed) {
            State::ReplyPending(pending) => self.full_reply(&pending),
            _ => Err(HandshakeError::State),
        };
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    /// The answer of a full handshake, once the connector's hello is in the transcript.
    fn full_reply(&mut self, pending: &Pending) -> Result<(), HandshakeError> {
        // The X25519 first: a low-order key ends the handshake before the ML-KEM and the
        // signature.
        let dh = x25519_shared(&self.common.rand.ephemeral, &pending.peer_ephemeral)?;
        let (ct, kem) = mlkem::encapsulate(&pending.ek).map_err(|_| HandshakeError::BadMlKemKey)?;
        let reply = self.common.own_hello().encode_listener(&ct);
        self.common.transcript.update(&reply);
        self.common.out.extend_from_slice(&reply);
        let keys = self
            .common
            .handshake_keys(self.params.psk.as_deref(), &kem, &dh);
        let auth = self.common.make_auth(
            MessageType::ListenerAuth,
            LISTENER_SIGNATURE_CONTEXT,
            &keys.l_hs,
            None,
        )?;
        self.common.out.extend_from_slice(&auth);
        self.state = State::WaitAuth(Box::new(keys));
        Ok(())
    }

    fn on_auth(&mut self, msg: &mut [u8]) -> Result<(), HandshakeError> {
        let State::WaitAuth(keys) = std::mem::replace(&mut self.state, State::Failed) else {
            return Err(HandshakeError::State);
        };
        let trust = self.params.trust.clone();
        let accept_unknown = self.params.accept_unknown;
        let served = self.params.service.clone();
        // The finished MAC first (an HMAC: the sender ran this handshake), then the trust check
        // on the fingerprint alone, and only then the RSA parse and verification (PROTOCOL.md
        // §2): a connector whose key is not trusted costs no RSA operation, whatever key it
        // sends. It is told so in an Alert only the party of this handshake can open.
        let opened = self.common.open_auth(msg, CONNECTOR_SIGNATURE_CONTEXT, &keys.c_hs, true)?;
        let fp = opened.fingerprint;
        let listed = trust.contains(&fp);
        let untrusted = !(accept_unknown || listed);
        let refusal = if untrusted {
            Some(Alert::new(AlertCode::Untrusted, b""))
        } else {
            None
        };
        let checked = if untrusted {
            None
        } else {
            // A key outside the trust list (`accept_unknown`) is chosen by whoever connects:
            // its size is bounded tighter than a listed key's (SECURITY.md).
            Some(opened.verify(|key| {
                if !listed && key.bits() > MAX_UNLISTED_RSA_BITS {
                    return Err(HandshakeError::UnlistedKeyTooLarge { bits: key.bits() });
                }
                Ok(())
            })?)
        };
        let asked = opened.service.clone().ok_or(HandshakeError::State)?;
        let refusal = match refusal {
            Some(r) => Some(r),
            None if asked.as_bytes() != served.as_bytes() => {
                Some(Alert::new(AlertCode::ServiceMismatch, served.as_bytes()))
            }
            None => None,
        };
        if let Some(alert) = refusal {
            let (_, l_ap, _, _) = self.common.application_secrets(&keys);
            let record = Sealer::new(l_ap, u64::MAX)
                .seal_alert(&alert)
                .map_err(|_| HandshakeError::State)?;
            let alert = RefusalAlert(record);
            self.common.rand.zeroize();
            return Err(if untrusted {
                HandshakeError::UntrustedConnector(fp, alert)
            } else {
                HandshakeError::ServiceMismatch {
                    fingerprint: fp,
                    asked,
                    served: served.to_string(),
                    alert,
                }
            });
        }
        let peer = checked.ok_or(HandshakeError::State)?;
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
            .established(peer, (l, c), resumption, th, resumed);
        self.state = State::Done(Box::new(est));
    }

    /// Files the successor tickets of `res` in the listener's store, in the chain `chain`
    /// gives (from the policy and the time; none when the chain is used up).
    pub(super) fn file_successors(
        &mut self,
        res: &Secret,
        peer: &PublicIdentity,
        chain: impl FnOnce(TicketPolicy, std::time::Instant) -> Option<Chain>,
    ) {
        let Some(r) = &self.resume else {
            return;
        };
        let p = &self.params;
        // Bound to the listener key this handshake ran with: a hello keyed for the other key
        // cannot resume it.
        let trusted = p.trust.contains(&peer.fingerprint());
        lock(&r.store).file(
            res,
            Arc::new(peer.clone()),
            trusted,
            listener_context(self.common.identity.as_ref(), p),
            chain(r.policy, r.now),
            r.policy,
            r.now,
        );
    }
}

/// The connector's keys, kept for `make_reply` (which makes the X25519).
pub(super) fn pending(hello: &Hello, msg: &[u8]) -> Result<Box<Pending>, HandshakeError> {
    let ek = hello_ek(&msg[MSG_HEADER_LEN..]).ok_or(MessageError::Malformed)?;
    Ok(Box::new(Pending {
        peer_ephemeral: hello.ephemeral,
        ek: Box::new(*ek),
    }))
}

/// A listener's ticket context under `identity`, the key of the handshake.
pub(super) fn listener_context(identity: &dyn Signer, p: &ListenerParams) -> TicketContext {
    ticket_context(
        &[&identity.public().fingerprint()],
        p.psk.as_deref(),
        p.service.as_bytes(),
    )
}
