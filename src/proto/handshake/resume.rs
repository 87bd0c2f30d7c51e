//! Resumption inside the handshake (PROTOCOL.md §9): a listener that reads a ResumeHello checks
//! the ticket and its binder and answers ResumeAccept (a fresh X25519 exchange keyed by the
//! ticket secret, no RSA), or falls back to a full handshake on the same transcript; the
//! connector checks ResumeAccept and sends ResumeFinished. The tickets themselves are
//! [`crate::proto::resume`].

use sha2::Digest;

use super::common::x25519_shared;
use super::connector::ConnectorHandshake;
use super::listener::{listener_context, pending, ListenerHandshake, ResKeys, State};
use super::{lock, HandshakeError};
use crate::proto::identity::PublicIdentity;
use crate::proto::key_schedule::{ct_eq, finished_key, hmac, Secret, HASH_LEN};
use crate::proto::messages::{
    header, Hello, MessageError, MessageType, HELLO_FIELDS, MSG_HEADER_LEN, RESUME_ACCEPT_BODY,
    RESUME_FINISHED_BODY, TICKET_ID_LEN,
};
use crate::proto::mlkem::EK_LEN;
use crate::proto::resume::{
    Chain, PresentedBinder, Redeemed, ResumeSecrets, TicketRefusal,
};
use crate::proto::x25519::SharedSecret;

/// Offsets in a resume hello (header included).
const RH_ID: usize = MSG_HEADER_LEN + HELLO_FIELDS + EK_LEN;
const RH_BINDER: usize = RH_ID + TICKET_ID_LEN;
const RH_MAC1: usize = RH_BINDER + HASH_LEN;

/// The application secrets of a resumption: (c_ap, l_ap) and res.
fn resumed_secrets(rs: &ResumeSecrets, th: &[u8; HASH_LEN]) -> ((Secret, Secret), Secret) {
    let (c, l, res) = rs.application_traffic(th);
    ((c, l), res)
}

impl ListenerHandshake {
    pub(super) fn on_resume_hello(&mut self, msg: &[u8]) -> Result<(), HandshakeError> {
        // mac1 first, before any table lookup or X25519; it picks the key that answers (a
        // ResumeHello is never a first contact: `answering_identity` refuses one).
        let (_, identity) = super::mac1::answering_identity(&self.params, msg)?;
        self.common.identity = identity.clone();
        let hello = Hello::decode_fields(&msg[MSG_HEADER_LEN..])?;
        self.common.check_hello(&hello)?;
        let (Some(id), Some(binder_got)) = (
            msg.get(RH_ID..RH_BINDER)
                .and_then(|b| <&[u8; TICKET_ID_LEN]>::try_from(b).ok()),
            msg.get(RH_BINDER..RH_MAC1),
        ) else {
            return Err(MessageError::Malformed.into());
        };
        let pending = pending(&hello, msg)?;
        let params = &self.params;
        let answering = self.common.identity.public().fingerprint();
        let redeemed = match &self.resume {
            Some(r) => lock(&r.store).check(
                id,
                PresentedBinder {
                    hello_before_binder: &msg[..RH_BINDER],
                    binder: binder_got,
                    listener: &answering,
                },
                &|fp| params.accept_unknown || params.trust.contains(fp),
                &listener_context(self.common.identity.as_ref(), params),
                r.policy,
                r.now,
            ),
            None => Err(TicketRefusal::Disabled),
        };
        self.common.transcript.update(msg);
        match redeemed {
            // The X25519 only now, for a ticket that passed (PROTOCOL.md §9): a hello without
            // one (resumption off, an unknown id, a bad binder) costs no X25519 here; its
            // exchange is made by `make_reply`, under the signing budget, like a full hello's.
            // A low-order key still ends the handshake before the ticket is used up (that
            // happens at ResumeFinished only).
            Ok(ticket) => {
                let dh = x25519_shared(&self.common.rand.ephemeral, &hello.ephemeral)?;
                self.resume_reply(&dh, ticket)
            }
            Err(refusal) => {
                // Fall back to a full handshake on the same transcript: it authenticates the
                // resume hello as it would a connector hello, with its encapsulation key.
                self.common.ticket_refused = Some(refusal);
                self.state = State::ReplyPending(pending);
                Ok(())
            }
        }
    }

    fn resume_reply(&mut self, shared: &SharedSecret, ticket: Redeemed) -> Result<(), HandshakeError> {
        let mut reply = Vec::with_capacity(MSG_HEADER_LEN + RESUME_ACCEPT_BODY);
        reply.extend_from_slice(&header(MessageType::ResumeAccept, RESUME_ACCEPT_BODY));
        self.common.own_hello().encode_fields(&mut reply);
        self.common.transcript.update(&reply);
        let rs = ResumeSecrets::new(&ticket.secret, shared.as_bytes());
        let (c_hs, l_hs) = rs.handshake_traffic(&self.common.transcript_hash());
        let fin = hmac(
            finished_key(&l_hs).expose(),
            &[&self.common.transcript_hash()],
        );
        self.common.transcript.update(fin);
        reply.extend_from_slice(&fin);
        self.common.out.extend_from_slice(&reply);
        self.state = State::WaitResumeFinished(Box::new(ResKeys { rs, c_hs, ticket }));
        Ok(())
    }

    pub(super) fn on_resume_finished(&mut self, msg: &[u8]) -> Result<(), HandshakeError> {
        let State::WaitResumeFinished(keys) = std::mem::replace(&mut self.state, State::Failed)
        else {
            return Err(HandshakeError::State);
        };
        let expected = hmac(
            finished_key(&keys.c_hs).expose(),
            &[&self.common.transcript_hash()],
        );
        if !ct_eq(&expected, &msg[MSG_HEADER_LEN..]) {
            return Err(HandshakeError::BadFinished);
        }
        // The connector proved itself: the ticket is used up now, and only now (a replayed or
        // injected hello never gets this far). Another connection that used it meanwhile wins.
        if let Some(r) = &self.resume {
            if !lock(&r.store).consume(&keys.ticket.id) {
                return Err(HandshakeError::TicketUsed);
            }
        }
        self.common.transcript.update(msg);
        let chain = keys.ticket.chain;
        self.resumed(&keys.rs, (*keys.ticket.peer).clone(), chain);
        Ok(())
    }

    /// A resumption completed with a ticket of `chain`: its successors go one level deeper.
    fn resumed(&mut self, rs: &ResumeSecrets, peer: PublicIdentity, chain: Chain) {
        let th = self.common.transcript_hash();
        let (traffic, res) = resumed_secrets(rs, &th);
        self.file_successors(&res, &peer, |policy, _| chain.next(policy));
        self.done(peer, traffic, res, th, true);
    }
}

impl ConnectorHandshake {
    pub(super) fn on_resume_accept(&mut self, msg: &[u8]) -> Result<(), HandshakeError> {
        let hello = Hello::decode_fields(&msg[MSG_HEADER_LEN..])?;
        self.common.check_hello(&hello)?;
        let (secret, peer, chain) = match self.offer() {
            Some(o) => (o.secret.clone(), o.peer.clone(), o.chain),
            None => return Err(HandshakeError::State),
        };
        // Resumed: no ML-KEM in this connection (PROTOCOL.md §5, the resumption rule).
        self.mlkem = None;
        let shared = x25519_shared(&self.common.rand.ephemeral, &hello.ephemeral)?;
        let (fields, fin_l) = msg.split_at(msg.len() - HASH_LEN);
        self.common.transcript.update(fields);
        let rs = ResumeSecrets::new(&secret, shared.as_bytes());
        let (c_hs, l_hs) = rs.handshake_traffic(&self.common.transcript_hash());
        let expected = hmac(
            finished_key(&l_hs).expose(),
            &[&self.common.transcript_hash()],
        );
        if !ct_eq(&expected, fin_l) {
            return Err(HandshakeError::BadFinished);
        }
        self.common.transcript.update(fin_l);
        // The listener proved itself: the ticket is used up.
        self.use_up_offer();
        let fin_c = hmac(
            finished_key(&c_hs).expose(),
            &[&self.common.transcript_hash()],
        );
        let mut finished = Vec::with_capacity(MSG_HEADER_LEN + RESUME_FINISHED_BODY);
        finished.extend_from_slice(&header(MessageType::ResumeFinished, RESUME_FINISHED_BODY));
        finished.extend_from_slice(&fin_c);
        self.common.transcript.update(&finished);
        self.common.out.extend_from_slice(&finished);
        let th = self.common.transcript_hash();
        let (traffic, res) = resumed_secrets(&rs, &th);
        self.file_successors(&res, &peer, |policy, _| chain.next(policy));
        self.done((*peer).clone(), traffic, res, th, true);
        Ok(())
    }
}
