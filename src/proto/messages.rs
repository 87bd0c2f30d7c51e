//! Handshake messages: encoding, decoding and the size limits of every field.
//!
//! Every handshake message is `type (1) || length (2, big endian) || body`. The hellos have
//! fixed sizes (a connector's carries an ML-KEM-768 encapsulation key, the listener's the
//! ciphertext); the two auth messages are AEAD ciphertexts under handshake keys whose plaintext
//! is `u16 len || SPKI DER || [u8 len || service] || u16 len || signature || finished (32)`
//! (the service in the connector's only). Decoders never allocate from a length field before
//! checking it against the limits here.

use crate::proto::aead::TAG_LEN;
use crate::proto::identity::{MAX_SIGNATURE_LEN, MAX_SPKI_LEN};
use crate::proto::key_schedule::HASH_LEN;
use crate::proto::mlkem::{CT_LEN, EK_LEN};

/// The protocol version this build speaks (inside the signed transcript).
pub const PROTOCOL_VERSION: u8 = 2;
/// Bytes of a handshake message header.
pub const MSG_HEADER_LEN: usize = 3;
/// Bytes of the pre-signature MAC in the connector hello.
pub const MAC1_LEN: usize = 16;
/// Option bit: a pre-shared key is mixed into the key schedule.
pub(crate) const OPTION_PSK: u8 = 0x01;
/// Every option bit this version knows.
pub(crate) const KNOWN_OPTIONS: u8 = OPTION_PSK;

/// The fields every hello starts with: version, options, random, X25519 ephemeral.
pub const HELLO_FIELDS: usize = 1 + 1 + 32 + 32;
/// Body of the connector hello: the fields, the ML-KEM-768 encapsulation key, mac1 (1266).
pub const CONNECTOR_HELLO_BODY: usize = HELLO_FIELDS + EK_LEN + MAC1_LEN;
/// Body of the listener hello: the fields, the ML-KEM-768 ciphertext (1154).
pub const LISTENER_HELLO_BODY: usize = HELLO_FIELDS + CT_LEN;
/// Bytes of a resumption ticket id.
pub const TICKET_ID_LEN: usize = 16;
/// Body of the resume hello: the fields, the encapsulation key (for a full handshake if the
/// ticket is refused), ticket id, binder, mac1 (1314).
pub const RESUME_HELLO_BODY: usize = HELLO_FIELDS + EK_LEN + TICKET_ID_LEN + HASH_LEN + MAC1_LEN;
/// Body of the resume accept: the fields, finished (98).
pub(crate) const RESUME_ACCEPT_BODY: usize = HELLO_FIELDS + HASH_LEN;
/// Longest service name in a ConnectorAuth.
pub const MAX_SERVICE_LEN: usize = 64;
/// Body of the resume finished: the connector's finished MAC.
pub(crate) const RESUME_FINISHED_BODY: usize = HASH_LEN;
/// Largest plaintext of an auth message.
pub const MAX_AUTH_PLAINTEXT: usize =
    2 + MAX_SPKI_LEN + 1 + MAX_SERVICE_LEN + 2 + MAX_SIGNATURE_LEN + HASH_LEN;
/// Largest body of an auth message (ciphertext and tag).
pub(crate) const MAX_AUTH_BODY: usize = MAX_AUTH_PLAINTEXT + TAG_LEN;
/// Largest handshake message on the wire (an auth message: a hello is shorter, checked below).
pub(crate) const MAX_MESSAGE_LEN: usize = MSG_HEADER_LEN + MAX_AUTH_BODY;
const _: () = assert!(MAX_AUTH_BODY >= RESUME_HELLO_BODY && MAX_AUTH_BODY >= CONNECTOR_HELLO_BODY);

/// Handshake message types; each flows in one direction only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    /// Connector → listener: ephemeral key, randomness, mac1.
    ConnectorHello = 0x11,
    /// Listener → connector: ephemeral key, randomness.
    ListenerHello = 0x12,
    /// Listener → connector, encrypted: identity, signature, finished.
    ListenerAuth = 0x13,
    /// Connector → listener, encrypted: identity, signature, finished.
    ConnectorAuth = 0x14,
    /// Connector → listener: a hello that offers a resumption ticket (and can serve as a
    /// [`MessageType::ConnectorHello`] if the listener refuses the ticket).
    ResumeHello = 0x15,
    /// Listener → connector: ticket accepted; ephemeral key, randomness, finished.
    ResumeAccept = 0x16,
    /// Connector → listener: finished of a resumed handshake.
    ResumeFinished = 0x17,
}

impl MessageType {
    /// The type named by a header's first byte, if it is one.
    pub(crate) fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0x11 => MessageType::ConnectorHello,
            0x12 => MessageType::ListenerHello,
            0x13 => MessageType::ListenerAuth,
            0x14 => MessageType::ConnectorAuth,
            0x15 => MessageType::ResumeHello,
            0x16 => MessageType::ResumeAccept,
            0x17 => MessageType::ResumeFinished,
            _ => return None,
        })
    }
}

/// A handshake message that breaks the format or the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not the message expected at this point.
    #[error("unexpected handshake message type {0:#04x}")]
    UnexpectedType(u8),
    /// A length field outside its limits.
    #[error("handshake length {0} out of range")]
    BadLength(usize),
    /// Fields do not add up to the body.
    #[error("malformed handshake message")]
    Malformed,
}

/// Checks a message header against the messages acceptable next; returns its type and body
/// length.
pub(crate) fn check_header_any(
    header: &[u8; MSG_HEADER_LEN],
    expected: &[MessageType],
) -> Result<(MessageType, usize), MessageError> {
    let kind = MessageType::from_u8(header[0])
        .filter(|t| expected.contains(t))
        .ok_or(MessageError::UnexpectedType(header[0]))?;
    let len = u16::from_be_bytes([header[1], header[2]]) as usize;
    let ok = match kind {
        MessageType::ConnectorHello => len == CONNECTOR_HELLO_BODY,
        MessageType::ListenerHello => len == LISTENER_HELLO_BODY,
        MessageType::ResumeHello => len == RESUME_HELLO_BODY,
        MessageType::ResumeAccept => len == RESUME_ACCEPT_BODY,
        MessageType::ResumeFinished => len == RESUME_FINISHED_BODY,
        MessageType::ListenerAuth | MessageType::ConnectorAuth => {
            (TAG_LEN + 2 + 1 + 2 + 1 + HASH_LEN..=MAX_AUTH_BODY).contains(&len)
        }
    };
    if ok {
        Ok((kind, len))
    } else {
        Err(MessageError::BadLength(len))
    }
}

/// The first message a connector may send: a [`MessageType::ConnectorHello`] or a
/// [`MessageType::ResumeHello`]. Returns its type and (fixed) body length.
pub(crate) fn check_first_header(
    header: &[u8; MSG_HEADER_LEN],
) -> Result<(MessageType, usize), MessageError> {
    check_header_any(
        header,
        &[MessageType::ConnectorHello, MessageType::ResumeHello],
    )
}

/// The largest first message of a connector (a resume hello), header included.
pub(crate) const MAX_FIRST_MESSAGE_LEN: usize = MSG_HEADER_LEN + RESUME_HELLO_BODY;

/// The connector's ephemeral X25519 key `e_c` of a whole ConnectorHello or ResumeHello (header
/// included): what a listener's replay cache keys on. `None` if `hello` is not one of the two
/// with its exact length. No cryptographic check: call it on a hello whose mac1 verified.
pub(crate) fn hello_ephemeral(hello: &[u8]) -> Option<[u8; 32]> {
    let header = hello.first_chunk::<MSG_HEADER_LEN>()?;
    let (_, len) = check_first_header(header).ok()?;
    if hello.len() != MSG_HEADER_LEN + len {
        return None;
    }
    let at = MSG_HEADER_LEN + 1 + 1 + 32;
    hello.get(at..at + 32)?.try_into().ok()
}

/// The header of a message of `kind` with a body of `len` bytes.
pub fn header(kind: MessageType, len: usize) -> [u8; MSG_HEADER_LEN] {
    let l = (len as u16).to_be_bytes();
    [kind as u8, l[0], l[1]]
}

/// The fields of either hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version.
    pub version: u8,
    /// Option bits ([`OPTION_PSK`]).
    pub options: u8,
    /// Fresh randomness of the sender.
    pub random: [u8; 32],
    /// The sender's ephemeral X25519 public key.
    pub ephemeral: [u8; 32],
}

/// The ML-KEM field of a hello body: a connector hello's encapsulation key (also in a resume
/// hello), a listener hello's ciphertext.
pub(crate) fn hello_ek(body: &[u8]) -> Option<&[u8; EK_LEN]> {
    body.get(HELLO_FIELDS..HELLO_FIELDS + EK_LEN)?
        .try_into()
        .ok()
}

/// See [`hello_ek`]: the ciphertext of a listener hello body.
pub(crate) fn hello_ct(body: &[u8]) -> Option<&[u8; CT_LEN]> {
    body.get(HELLO_FIELDS..HELLO_FIELDS + CT_LEN)?
        .try_into()
        .ok()
}

impl Hello {
    /// The whole connector hello without its mac1 (the bytes that mac1 covers).
    pub fn encode_connector_unmacced(&self, ek: &[u8; EK_LEN]) -> Vec<u8> {
        let mut out = Vec::with_capacity(MSG_HEADER_LEN + CONNECTOR_HELLO_BODY);
        out.extend_from_slice(&header(MessageType::ConnectorHello, CONNECTOR_HELLO_BODY));
        self.encode_fields(&mut out);
        out.extend_from_slice(ek);
        out
    }

    /// The whole listener hello.
    pub(crate) fn encode_listener(&self, ct: &[u8; CT_LEN]) -> Vec<u8> {
        let mut out = Vec::with_capacity(MSG_HEADER_LEN + LISTENER_HELLO_BODY);
        out.extend_from_slice(&header(MessageType::ListenerHello, LISTENER_HELLO_BODY));
        self.encode_fields(&mut out);
        out.extend_from_slice(ct);
        out
    }

    /// The four fields only (version, options, random, ephemeral), as the start of a resume
    /// hello or a resume accept.
    pub(crate) fn encode_fields(&self, out: &mut Vec<u8>) {
        out.push(self.version);
        out.push(self.options);
        out.extend_from_slice(&self.random);
        out.extend_from_slice(&self.ephemeral);
    }

    /// Decodes the first 66 bytes of a hello body (any kind).
    pub(crate) fn decode_fields(body: &[u8]) -> Result<Hello, MessageError> {
        let f = body.get(..HELLO_FIELDS).ok_or(MessageError::Malformed)?;
        let mut random = [0u8; 32];
        random.copy_from_slice(&f[2..34]);
        let mut ephemeral = [0u8; 32];
        ephemeral.copy_from_slice(&f[34..66]);
        Ok(Hello {
            version: f[0],
            options: f[1],
            random,
            ephemeral,
        })
    }
}

/// The plaintext of an auth message, borrowed from a decrypted buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Auth<'a> {
    /// The sender's RSA public key, DER SubjectPublicKeyInfo.
    pub spki: &'a [u8],
    /// The service the connector asks for (a ConnectorAuth's; `None` in a ListenerAuth).
    pub service: Option<&'a [u8]>,
    /// RSA-PSS-SHA256 over the transcript up to and including `spki` (and `service`).
    pub signature: &'a [u8],
    /// HMAC over the transcript up to and including `signature`.
    pub finished: &'a [u8; HASH_LEN],
}

/// Appends a `u16 len || bytes` field.
pub fn put_vec16(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn take_vec16<'a>(input: &mut &'a [u8], max: usize) -> Result<&'a [u8], MessageError> {
    let (len, rest) = input.split_at_checked(2).ok_or(MessageError::Malformed)?;
    let len = u16::from_be_bytes([len[0], len[1]]) as usize;
    if len == 0 || len > max {
        return Err(MessageError::BadLength(len));
    }
    let (field, rest) = rest.split_at_checked(len).ok_or(MessageError::Malformed)?;
    *input = rest;
    Ok(field)
}

/// Appends a `u8 len || bytes` field.
pub fn put_vec8(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

fn take_vec8<'a>(input: &mut &'a [u8], max: usize) -> Result<&'a [u8], MessageError> {
    let (len, rest) = input.split_first().ok_or(MessageError::Malformed)?;
    let len = *len as usize;
    if len == 0 || len > max {
        return Err(MessageError::BadLength(len));
    }
    let (field, rest) = rest.split_at_checked(len).ok_or(MessageError::Malformed)?;
    *input = rest;
    Ok(field)
}

/// A service name as a config or a ConnectorAuth may carry it: 1 to [`MAX_SERVICE_LEN`] bytes
/// of printable ASCII (no spaces or control bytes).
pub fn valid_service(name: &[u8]) -> bool {
    (1..=MAX_SERVICE_LEN).contains(&name.len()) && name.iter().all(|b| b.is_ascii_graphic())
}

impl<'a> Auth<'a> {
    /// Splits a decrypted auth plaintext into its fields, checking every length; a
    /// ConnectorAuth (`with_service`) carries a service name after its SPKI.
    pub fn decode(plaintext: &'a [u8], with_service: bool) -> Result<Auth<'a>, MessageError> {
        let mut rest = plaintext;
        let spki = take_vec16(&mut rest, MAX_SPKI_LEN)?;
        let service = if with_service {
            let s = take_vec8(&mut rest, MAX_SERVICE_LEN)?;
            if !valid_service(s) {
                return Err(MessageError::Malformed);
            }
            Some(s)
        } else {
            None
        };
        let signature = take_vec16(&mut rest, MAX_SIGNATURE_LEN)?;
        let finished: &[u8; HASH_LEN] = rest.try_into().map_err(|_| MessageError::Malformed)?;
        Ok(Auth {
            spki,
            service,
            signature,
            finished,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

/// Checks a message header against the one message expected next; returns the body length.
    fn check_header(
        header: &[u8; MSG_HEADER_LEN],
        expected: MessageType,
    ) -> Result<usize, MessageError> {
        check_header_any(header, &[expected]).map(|(_, len)| len)
    }
    

    #[test]
    fn auth_decoding_checks_every_length() {
        let mut m = Vec::new();
        put_vec16(&mut m, b"spki");
        put_vec16(&mut m, b"sig");
        m.extend_from_slice(&[7u8; 32]);
        let a = Auth::decode(&m, false).unwrap();
        assert_eq!((a.spki, a.signature), (&b"spki"[..], &b"sig"[..]));
        assert_eq!(a.service, None);
        assert_eq!(
            Auth::decode(&m[..m.len() - 1], false),
            Err(MessageError::Malformed)
        );
        let mut longer = m.clone();
        longer.push(0);
        assert_eq!(Auth::decode(&longer, false), Err(MessageError::Malformed));
        let mut huge = m.clone();
        huge[0..2].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(
            Auth::decode(&huge, false),
            Err(MessageError::BadLength(65535))
        );
        let mut empty = m;
        empty[0..2].copy_from_slice(&[0, 0]);
        assert_eq!(Auth::decode(&empty, false), Err(MessageError::BadLength(0)));
    }

    #[test]
    fn connector_auth_carries_a_service() {
        let auth = |service: &[u8]| {
            let mut m = Vec::new();
            put_vec16(&mut m, b"spki");
            put_vec8(&mut m, service);
            put_vec16(&mut m, b"sig");
            m.extend_from_slice(&[7u8; 32]);
            m
        };
        let m = auth(b"redis");
        let a = Auth::decode(&m, true).unwrap();
        assert_eq!(a.service, Some(&b"redis"[..]));
        assert_eq!(a.signature, b"sig");
        assert_eq!(
            Auth::decode(&auth(b""), true),
            Err(MessageError::BadLength(0))
        );
        assert_eq!(
            Auth::decode(&auth(&[b'a'; 65]), true),
            Err(MessageError::BadLength(65))
        );
        assert!(Auth::decode(&auth(&[b'a'; 64]), true).is_ok());
        assert_eq!(
            Auth::decode(&auth(b"re dis"), true),
            Err(MessageError::Malformed)
        );
        assert!(valid_service(b"postgres") && !valid_service(b"caf\xc3\xa9"));
    }

    #[test]
    fn hello_ephemeral_is_the_connector_key() {
        let hello = Hello {
            version: PROTOCOL_VERSION,
            options: 0,
            random: [1; 32],
            ephemeral: [2; 32],
        };
        let mut m = hello.encode_connector_unmacced(&[3; EK_LEN]);
        assert_eq!(
            hello_ephemeral(&m),
            None,
            "without mac1 the length is wrong"
        );
        m.extend_from_slice(&[0; MAC1_LEN]);
        assert_eq!(hello_ephemeral(&m), Some([2; 32]));
        m[0] = MessageType::ListenerHello as u8;
        assert_eq!(hello_ephemeral(&m), None);
        assert_eq!(hello_ephemeral(&[]), None);
    }

    #[test]
    fn headers_are_checked_against_the_expected_message() {
        let h = header(MessageType::ConnectorHello, CONNECTOR_HELLO_BODY);
        assert_eq!(
            check_header(&h, MessageType::ConnectorHello),
            Ok(CONNECTOR_HELLO_BODY)
        );
        assert_eq!(
            check_header(&h, MessageType::ListenerHello),
            Err(MessageError::UnexpectedType(0x11))
        );
        let h = header(MessageType::ConnectorHello, CONNECTOR_HELLO_BODY + 1);
        assert!(check_header(&h, MessageType::ConnectorHello).is_err());
        let h = header(MessageType::ListenerAuth, MAX_AUTH_BODY + 1);
        assert!(check_header(&h, MessageType::ListenerAuth).is_err());
    }
}
