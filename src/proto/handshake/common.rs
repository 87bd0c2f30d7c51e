//! What both roles' state machines share: the transcript, the framing of incoming messages,
//! the hello checks, the handshake key derivation and the auth messages (made and checked).

use std::sync::Arc;

use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use super::{Established, HandshakeError, HandshakeRandomness};
use crate::proto::aead::TAG_LEN;
use crate::proto::identity::{Fingerprint, PublicIdentity, Signer};
use crate::proto::key_schedule::{
    ct_eq, finished_key, hmac, Direction, HandshakeSecrets, Psk, Secret, TrafficKey, HASH_LEN,
};
use crate::proto::messages::{
    check_header_any, header, put_vec16, put_vec8, Auth, Hello, MessageType, KNOWN_OPTIONS,
    MSG_HEADER_LEN, OPTION_PSK, PROTOCOL_VERSION,
};
use crate::proto::mlkem;
use crate::proto::parsed_keys;
use crate::proto::resume::TicketRefusal;
use crate::proto::x25519::{self, SharedSecret};

/// The handshake secrets of a full handshake, once both hellos are in the transcript.
pub(super) struct HsKeys {
    pub(super) hs: HandshakeSecrets,
    pub(super) c_hs: Secret,
    pub(super) l_hs: Secret,
}

/// The state of one handshake that does not depend on the role.
pub(super) struct CommonState {
    /// The key this side presents and signs with: a connector's own; a listener's
    /// `identity` until the hello's mac1 picks one of its keys.
    pub(super) identity: Arc<dyn Signer>,
    pub(super) rand: HandshakeRandomness,
    /// The options of our hello (and of the peer's, which must match).
    pub(super) options: u8,
    pub(super) transcript: Sha256,
    pub(super) ticket_refused: Option<TicketRefusal>,
    /// The message being read, up to its end.
    inbuf: Vec<u8>,
    /// Bytes to send.
    pub(super) out: Vec<u8>,
}

impl CommonState {
    pub(super) fn new(
        identity: Arc<dyn Signer>,
        rand: HandshakeRandomness,
        psk: Option<&Psk>,
    ) -> Self {
        CommonState {
            identity,
            rand,
            options: if psk.is_some() { OPTION_PSK } else { 0 },
            transcript: Sha256::new(),
            ticket_refused: None,
            inbuf: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Reads from `input[*consumed..]` up to the end of the next message, one of `expected`
    /// (checked from its header before any of its body is buffered). `None` when `input` ran
    /// out first.
    pub(super) fn next_message(
        &mut self,
        input: &[u8],
        consumed: &mut usize,
        expected: &[MessageType],
    ) -> Result<Option<(MessageType, Vec<u8>)>, HandshakeError> {
        loop {
            let (kind, need) = match self.inbuf.first_chunk::<MSG_HEADER_LEN>() {
                None => (None, MSG_HEADER_LEN),
                Some(h) => {
                    let (kind, len) = check_header_any(h, expected)?;
                    (Some(kind), MSG_HEADER_LEN + len)
                }
            };
            if self.inbuf.len() < need {
                let take = (need - self.inbuf.len()).min(input.len() - *consumed);
                if take == 0 {
                    return Ok(None);
                }
                self.inbuf.reserve_exact(need - self.inbuf.len());
                self.inbuf
                    .extend_from_slice(&input[*consumed..*consumed + take]);
                *consumed += take;
                continue;
            }
            let kind = kind.ok_or(HandshakeError::State)?;
            return Ok(Some((kind, std::mem::take(&mut self.inbuf))));
        }
    }

    /// After an error: the partial message is wiped.
    pub(super) fn wipe_input(&mut self) {
        self.inbuf.zeroize();
    }

    pub(super) fn transcript_hash(&self) -> [u8; HASH_LEN] {
        self.transcript.clone().finalize().into()
    }

    /// Checks a peer hello's version and options against ours.
    pub(super) fn check_hello(&self, hello: &Hello) -> Result<(), HandshakeError> {
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

    /// Our hello's fields (version, options, random, X25519 public key).
    pub(super) fn own_hello(&self) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            options: self.options,
            random: self.rand.random,
            ephemeral: x25519_public(&self.rand.ephemeral),
        }
    }

    /// Derives the handshake secrets once both hellos are in the transcript, from the ML-KEM
    /// and the X25519 shared secrets.
    pub(super) fn handshake_keys(
        &self,
        psk: Option<&Psk>,
        kem: &mlkem::SharedSecret,
        dh: &SharedSecret,
    ) -> HsKeys {
        let th = self.transcript_hash();
        let hs = HandshakeSecrets::new(psk, kem.as_bytes(), dh.as_bytes());
        HsKeys {
            c_hs: hs.traffic(Direction::ConnectorToListener, &th),
            l_hs: hs.traffic(Direction::ListenerToConnector, &th),
            hs,
        }
    }

    /// Appends our identity (and, for a connector, the `service` it asks for), signature and
    /// finished MAC to the transcript and returns the encrypted auth message.
    pub(super) fn make_auth(
        &mut self,
        kind: MessageType,
        context: &[u8],
        hs_traffic: &Secret,
        service: Option<&[u8]>,
    ) -> Result<Vec<u8>, HandshakeError> {
        let mut plain = vec16(self.identity.public().spki_der());
        if let Some(service) = service {
            // The service is signed with the key: the listener refuses another service's.
            put_vec8(&mut plain, service);
        }
        self.transcript.update(&plain);
        let to_sign = signature_input(context, &self.transcript_hash());
        let sig = self
            .identity
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

    /// Decrypts a peer's auth message in place and checks its finished MAC, then `accept` (the
    /// pin or trust check, on the fingerprint alone), then parses the key and checks its
    /// signature; the peer and, in a ConnectorAuth (`with_service`), the service it asks for.
    pub(super) fn check_auth(
        &mut self,
        msg: &mut [u8],
        context: &[u8],
        hs_traffic: &Secret,
        with_service: bool,
        accept: impl FnOnce(&Fingerprint) -> Result<(), HandshakeError>,
    ) -> Result<(PublicIdentity, Option<String>), HandshakeError> {
        let opened = self.open_auth(msg, context, hs_traffic, with_service)?;
        accept(&opened.fingerprint)?;
        let peer = opened.verify(|_| Ok(()))?;
        Ok((peer, opened.service))
    }

    /// Decrypts a peer's auth message in place, puts its fields in the transcript and checks
    /// its finished MAC (an HMAC: cheap, and it proves the sender ran this handshake), without
    /// parsing the key or checking the signature: [`OpenedAuth::verify`] does that, once the
    /// caller has checked the fingerprint (PROTOCOL.md §2, the order of the checks).
    pub(super) fn open_auth<'m>(
        &mut self,
        msg: &'m mut [u8],
        context: &[u8],
        hs_traffic: &Secret,
        with_service: bool,
    ) -> Result<OpenedAuth<'m>, HandshakeError> {
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
        let plain: &'m [u8] = plain;
        let auth = Auth::decode(plain, with_service)?;
        self.transcript.update(vec16(auth.spki));
        let service = auth.service.map(|s| {
            let mut v = Vec::with_capacity(1 + s.len());
            put_vec8(&mut v, s);
            self.transcript.update(&v);
            String::from_utf8_lossy(s).into_owned()
        });
        let signed = signature_input(context, &self.transcript_hash());
        self.transcript.update(vec16(auth.signature));
        let expected = hmac(
            finished_key(hs_traffic).expose(),
            &[&self.transcript_hash()],
        );
        if !ct_eq(&expected, auth.finished) {
            return Err(HandshakeError::BadFinished);
        }
        self.transcript.update(auth.finished);
        Ok(OpenedAuth {
            fingerprint: Fingerprint::of_spki(auth.spki),
            spki: auth.spki,
            service,
            signature: auth.signature,
            signed,
        })
    }

    pub(super) fn application_secrets(
        &self,
        keys: &HsKeys,
    ) -> (Secret, Secret, Secret, [u8; HASH_LEN]) {
        let th = self.transcript_hash();
        let master = keys.hs.master();
        let c = master.traffic(Direction::ConnectorToListener, &th);
        let l = master.traffic(Direction::ListenerToConnector, &th);
        let resumption = master.resumption(&th);
        (c, l, resumption, th)
    }

    /// The session of a completed handshake; the handshake's randomness is wiped.
    pub(super) fn established(
        &mut self,
        peer: PublicIdentity,
        (send, recv): (Secret, Secret),
        resumption: Secret,
        transcript_hash: [u8; HASH_LEN],
        resumed: bool,
    ) -> Established {
        self.rand.zeroize();
        Established {
            peer,
            own: self.identity.public().fingerprint(),
            send,
            recv,
            resumption,
            transcript_hash,
            resumed,
            ticket_refused: self.ticket_refused,
        }
    }
}

/// A peer's auth message, decrypted and its finished MAC checked, its key and signature not yet
/// ([`CommonState::open_auth`]).
pub(super) struct OpenedAuth<'m> {
    /// `H(spki)`: computed from the bytes, no RSA parse.
    pub(super) fingerprint: Fingerprint,
    spki: &'m [u8],
    /// The service asked for (a ConnectorAuth's).
    pub(super) service: Option<String>,
    signature: &'m [u8],
    signed: Vec<u8>,
}

impl OpenedAuth<'_> {
    /// Parses the key (2048 ..= 8192 bits, exponent 65537), lets `limit` refuse it by its size,
    /// then checks the signature: the one costly step.
    pub(super) fn verify(
        &self,
        limit: impl FnOnce(&PublicIdentity) -> Result<(), HandshakeError>,
    ) -> Result<PublicIdentity, HandshakeError> {
        let peer = parsed_keys::parse(self.spki).map_err(HandshakeError::PeerKey)?;
        limit(&peer)?;
        peer.verify(&self.signed, self.signature)
            .map_err(|_| HandshakeError::BadSignature)?;
        Ok(peer)
    }
}

fn signature_input(context: &[u8], transcript_hash: &[u8; HASH_LEN]) -> Vec<u8> {
    [context, transcript_hash].concat()
}

fn vec16(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + bytes.len());
    put_vec16(&mut v, bytes);
    v
}

pub(super) fn x25519_public(secret: &[u8; 32]) -> [u8; 32] {
    x25519::public_key(secret)
}

/// X25519, refusing a non-contributory (all-zero) result.
pub(super) fn x25519_shared(
    secret: &[u8; 32],
    peer: &[u8; 32],
) -> Result<SharedSecret, HandshakeError> {
    x25519::shared(secret, peer).map_err(|_| HandshakeError::LowOrderPoint)
}
