//! Why a handshake failed, and the Alert record a refused connector is sent.

use crate::proto::identity::{Fingerprint, IdentityError};
use crate::proto::messages::MessageError;

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
    /// A connector key outside the trust list (let in by `accept_unknown`) larger than
    /// [`MAX_UNLISTED_RSA_BITS`](super::listener::MAX_UNLISTED_RSA_BITS): refused before its
    /// signature is checked.
    #[error("connector key is {bits} bits; a key outside the trust list (accept_unknown) may have at most 4096")]
    UnlistedKeyTooLarge {
        /// The key's size in bits.
        bits: usize,
    },
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
            HandshakeError::UnlistedKeyTooLarge { .. } => "bad_peer_key",
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
pub struct RefusalAlert(pub(super) Vec<u8>);

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
