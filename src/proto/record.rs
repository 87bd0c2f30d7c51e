//! The record layer: sealing and opening records in place, close and rekey records, limits.
//!
//! A record on the wire is `type (1) || length (3, big endian) || ciphertext || tag (16)`, where
//! `length` counts ciphertext and tag. The 4-byte header is the AEAD's associated data, so type
//! and length are authenticated. The nonce is the traffic IV XOR the per-direction record counter,
//! which is implicit (never sent): a dropped, repeated, reordered or reflected record fails to
//! open. A rekey record moves its direction to the next generation of the traffic secret (a
//! one-way ratchet) and restarts the counter under the new key; a close record ends its direction's
//! stream.
//!
//! Streams (PROTOCOL.md §4.3): one session may carry several streams, one after the other. At its
//! close record each direction ratchets to the next **stream key** (`s = ExpandLabel(s, "next
//! stream", "", 32)`, counter back to 0), so no two streams share a key and a later key opens no
//! earlier stream. After a close record the only records a direction may carry are the
//! StreamInfo record that starts the next stream (the connector's) and keepalives — or nothing:
//! the TCP end of stream then ends the session cleanly.
//!
//! Keepalives (PROTOCOL.md §4.4): Ping and Pong records are empty, sealed like any other record
//! (a sequence number under the current key of their direction), and allowed anywhere after the
//! handshake except after an Alert: before a stream's first record, inside a stream, after a
//! close record. They never change a stream's state: a StreamInfo or Alert record after them is
//! still "first".

use crate::proto::aead::TAG_LEN;
use crate::proto::key_schedule::{derive_secret, next_generation, Secret, TrafficKey};
use crate::proto::mlkem::{CT_LEN, EK_LEN};
use crate::proto::stream::MAX_STREAM_INFO_LEN;

/// Bytes of a KeyShare plaintext (PROTOCOL.md §4.5): X25519 public key and ML-KEM-768
/// encapsulation key.
pub const KEY_SHARE_LEN: usize = 32 + EK_LEN;
/// Bytes of a KeyShareReply plaintext: X25519 public key and ML-KEM-768 ciphertext.
pub const KEY_SHARE_REPLY_LEN: usize = 32 + CT_LEN;

/// Bytes of the record header.
pub const HEADER_LEN: usize = 4;
/// Header plus tag: what sealing adds to a plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Largest plaintext in one record (64 KiB); a receiver accepts up to this, whatever its own size.
pub(crate) const MAX_PLAINTEXT: usize = 64 * 1024;
/// Largest record on the wire.
pub(crate) const MAX_RECORD_LEN: usize = MAX_PLAINTEXT + OVERHEAD;
/// A sender rekeys by itself after this many records under one key.
pub(crate) const SOFT_RECORD_LIMIT: u64 = 1 << 31;
/// No key ever seals or opens more records than this: the connection ends first.
pub(crate) const HARD_RECORD_LIMIT: u64 = 1 << 32;
/// No direction ratchets more often than this.
pub(crate) const MAX_GENERATIONS: u64 = 1 << 32;

/// The kind of a record, in the clear but authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordType {
    /// Application bytes (at least one).
    Data = 1,
    /// The authenticated end of this direction; empty.
    Close = 2,
    /// The sender moves to the next key generation after this record; empty.
    Rekey = 3,
    /// What the connector knows about the connection (`proto::stream`): the connector's first
    /// record of every stream, and only that (the first of the session, or the first after both
    /// directions' close records).
    StreamInfo = 4,
    /// The listener's authenticated refusal of an authenticated connector ([`Alert`]): only as
    /// the listener's first record, and the last.
    Alert = 5,
    /// A keepalive asking for a [`RecordType::Pong`]; empty, allowed anywhere but after an Alert.
    Ping = 6,
    /// The answer to a Ping (an unsolicited one is accepted); empty, allowed as a Ping is.
    Pong = 7,
    // Types 8 to 10: the fresh hybrid exchange inside a session (`proto::kex`, PROTOCOL.md
    // §4.5). Allowed as keepalives are (anywhere after the handshake except after an Alert);
    // they never change stream state.
    /// The connector's fresh X25519 public key and ML-KEM-768 encapsulation key (1216 bytes).
    KeyShare = 8,
    /// The listener's answer: its X25519 public key and the ML-KEM-768 ciphertext (1120 bytes);
    /// the listener's sending direction moves to the new secret after it.
    KeyShareReply = 9,
    /// The connector's acknowledgement (empty); its sending direction moves after it.
    KeyShareDone = 10,
}

impl RecordType {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(RecordType::Data),
            2 => Some(RecordType::Close),
            3 => Some(RecordType::Rekey),
            4 => Some(RecordType::StreamInfo),
            5 => Some(RecordType::Alert),
            6 => Some(RecordType::Ping),
            7 => Some(RecordType::Pong),
            8 => Some(RecordType::KeyShare),
            9 => Some(RecordType::KeyShareReply),
            10 => Some(RecordType::KeyShareDone),
            _ => None,
        }
    }

    /// A keepalive (Ping or Pong): allowed anywhere after the handshake but after an Alert,
    /// and no part of any stream.
    pub fn is_keepalive(self) -> bool {
        matches!(self, RecordType::Ping | RecordType::Pong)
    }

    /// One of the hybrid exchange's records (types 8, 9, 10).
    pub fn is_key_share(self) -> bool {
        matches!(
            self,
            RecordType::KeyShare | RecordType::KeyShareReply | RecordType::KeyShareDone
        )
    }

    /// Allowed after a close record and before a stream's first, leaving the stream state as
    /// it was: keepalives and the records of the exchange.
    fn outside_streams(self) -> bool {
        self.is_keepalive() || self.is_key_share()
    }

    /// The exact plaintext length of a hybrid exchange record.
    fn key_share_len(self) -> Option<usize> {
        match self {
            RecordType::KeyShare => Some(KEY_SHARE_LEN),
            RecordType::KeyShareReply => Some(KEY_SHARE_REPLY_LEN),
            RecordType::KeyShareDone => Some(0),
            _ => None,
        }
    }
}

/// Why a record could not be sealed or opened. Every one of them ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Unknown record type in a header.
    #[error("unknown record type {0}")]
    UnknownType(u8),
    /// A length field outside `TAG_LEN ..= MAX_PLAINTEXT + TAG_LEN`.
    #[error("record length {0} out of range")]
    BadLength(usize),
    /// The record did not authenticate: flipped, dropped, reordered, replayed or reflected.
    #[error("record failed authentication")]
    BadRecord,
    /// A close or rekey record that carries data, or an empty data record.
    #[error("malformed {0:?} record")]
    Malformed(RecordType),
    /// The transport ended without a close record.
    #[error("stream ended without a close record (truncated)")]
    Truncated,
    /// A record after this direction was closed, other than the StreamInfo record that starts
    /// the next stream.
    #[error("record after close")]
    AfterClose,
    /// A counter or generation limit would be passed; the connection must end.
    #[error("key usage limit reached")]
    KeyExhausted,
    /// The sender has passed its rekey threshold and must send a rekey record first.
    #[error("rekey required before more data")]
    RekeyRequired,
    /// The buffer given to seal or open is not the right size.
    #[error("buffer of {0} bytes does not fit the record")]
    Buffer(usize),
    /// A record of a type that is not allowed here: a StreamInfo record other than the first
    /// record of a stream, or a first record that should have been StreamInfo and is not.
    #[error("unexpected {0:?} record")]
    Unexpected(RecordType),
    /// The listener refused this connector after authenticating it (an [`Alert`] record).
    #[error("{0}")]
    Refused(Alert),
}

/// Largest detail of an [`Alert`] (the longest service name).
pub const MAX_ALERT_DETAIL: usize = 64;

/// Why a listener refused an authenticated connector: the code of an [`Alert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AlertCode {
    /// The connector's key is not in the listener's trust list (detail empty).
    Untrusted = 1,
    /// The connector asked for another service (detail: the listener's service name).
    ServiceMismatch = 2,
    /// The listener could not connect to its `forward` target for this stream (detail empty).
    ForwardUnreachable = 3,
    /// The destination this stream named (redirect mode) is not in the listener's
    /// `allow_destinations`, or the listener has none, or no `forward` for a stream without one
    /// (detail empty).
    DestinationNotAllowed = 4,
}

/// The body of an Alert record: `code (1) || u8 len || detail`. Sent by a listener only to a
/// connector that proved its key (PROTOCOL.md §4, §6).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Alert {
    code: AlertCode,
    len: u8,
    detail: [u8; MAX_ALERT_DETAIL],
}

impl std::fmt::Debug for Alert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alert")
            .field("code", &self.code)
            .field("detail", &String::from_utf8_lossy(self.detail()))
            .finish()
    }
}

impl std::fmt::Display for Alert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            AlertCode::Untrusted => {
                f.write_str("the listener refused this connector's key (not in its peers)")
            }
            AlertCode::ServiceMismatch => write!(
                f,
                "the listener refused this connector: it serves {:?}",
                String::from_utf8_lossy(self.detail())
            ),
            AlertCode::ForwardUnreachable => {
                f.write_str("the listener could not connect to its forward target")
            }
            AlertCode::DestinationNotAllowed => {
                f.write_str("the listener does not allow this destination")
            }
        }
    }
}

impl Alert {
    /// An alert with `code` and `detail` (at most [`MAX_ALERT_DETAIL`] bytes: longer is cut).
    pub fn new(code: AlertCode, detail: &[u8]) -> Self {
        let len = detail.len().min(MAX_ALERT_DETAIL);
        let mut d = [0u8; MAX_ALERT_DETAIL];
        d[..len].copy_from_slice(&detail[..len]);
        Alert {
            code,
            len: len as u8,
            detail: d,
        }
    }

    /// The code.
    pub fn code(&self) -> AlertCode {
        self.code
    }

    /// The detail (the listener's service name for [`AlertCode::ServiceMismatch`]).
    pub fn detail(&self) -> &[u8] {
        &self.detail[..self.len as usize]
    }

    /// The record body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.len as usize);
        out.push(self.code as u8);
        out.push(self.len);
        out.extend_from_slice(self.detail());
        out
    }

    /// Decodes a record body: a known code, a detail that fits exactly (1 to
    /// [`MAX_ALERT_DETAIL`] bytes for code 2, empty for the others).
    pub fn decode(body: &[u8]) -> Result<Alert, RecordError> {
        let bad = RecordError::Malformed(RecordType::Alert);
        let [code, len, detail @ ..] = body else {
            return Err(bad);
        };
        let code = match code {
            1 => AlertCode::Untrusted,
            2 => AlertCode::ServiceMismatch,
            3 => AlertCode::ForwardUnreachable,
            4 => AlertCode::DestinationNotAllowed,
            _ => return Err(bad),
        };
        let ok = *len as usize == detail.len()
            && match code {
                AlertCode::ServiceMismatch => (1..=MAX_ALERT_DETAIL).contains(&detail.len()),
                AlertCode::Untrusted
                | AlertCode::ForwardUnreachable
                | AlertCode::DestinationNotAllowed => detail.is_empty(),
            };
        if !ok {
            return Err(bad);
        }
        Ok(Alert::new(code, detail))
    }
}

/// The label of the ratchet to the next stream's key, at a close record.
pub(crate) const NEXT_STREAM_LABEL: &str = "next stream";

/// The secret of the next stream, from the current secret of a direction at its close record:
/// `ExpandLabel(s, "next stream", "", 32)`.
pub fn next_stream_secret(secret: &Secret) -> Secret {
    derive_secret(secret, NEXT_STREAM_LABEL, b"")
}

/// The keys of one direction: current secret, AEAD key, counter and generation.
struct DirectionState {
    secret: Secret,
    key: TrafficKey,
    seq: u64,
    /// Ratchets so far, rekeys and stream boundaries alike (bounded by [`MAX_GENERATIONS`]).
    generation: u64,
    /// No record yet under this stream but keepalives: the next may be a StreamInfo (or Alert)
    /// record.
    stream_start: bool,
    /// Streams begun after the first (stream boundaries crossed).
    streams: u64,
    /// Fresh hybrid exchanges this direction has moved to (`proto::kex`).
    hybrid: u64,
}

impl DirectionState {
    fn new(secret: Secret) -> Self {
        DirectionState {
            key: TrafficKey::new(&secret),
            secret,
            seq: 0,
            generation: 0,
            stream_start: true,
            streams: 0,
            hybrid: 0,
        }
    }

    /// The move to the secret of a fresh hybrid exchange (PROTOCOL.md §4.5), `next` of the
    /// current one: counted as a generation, the counter back to 0, the old secret and key
    /// dropped (and zeroized).
    fn switch(&mut self, next: impl FnOnce(&Secret) -> Secret) -> Result<(), RecordError> {
        if self.generation + 1 >= MAX_GENERATIONS {
            return Err(RecordError::KeyExhausted);
        }
        self.secret = next(&self.secret);
        self.key = TrafficKey::new(&self.secret);
        self.seq = 0;
        self.generation += 1;
        self.hybrid += 1;
        Ok(())
    }

    /// The ratchet at a close record: the next stream's secret and key, the counter back to 0.
    fn next_stream(&mut self) -> Result<(), RecordError> {
        if self.generation + 1 >= MAX_GENERATIONS {
            return Err(RecordError::KeyExhausted);
        }
        self.secret = next_stream_secret(&self.secret);
        self.key = TrafficKey::new(&self.secret);
        self.seq = 0;
        self.generation += 1;
        self.streams += 1;
        self.stream_start = true;
        Ok(())
    }

    /// The nonce for the next record, of type `kind`, and the counter moved on; refuses at the
    /// hard limit. A keepalive leaves the stream's start as it was.
    fn next_nonce(&mut self, kind: RecordType) -> Result<[u8; 12], RecordError> {
        if self.seq >= HARD_RECORD_LIMIT {
            return Err(RecordError::KeyExhausted);
        }
        let nonce = self.key.nonce(self.seq);
        self.seq += 1;
        if !kind.outside_streams() {
            self.stream_start = false;
        }
        Ok(nonce)
    }

    /// One step of the ratchet; the old secret and key are dropped (and zeroized).
    fn ratchet(&mut self) -> Result<(), RecordError> {
        if self.generation + 1 >= MAX_GENERATIONS {
            return Err(RecordError::KeyExhausted);
        }
        self.secret = next_generation(&self.secret);
        self.key = TrafficKey::new(&self.secret);
        self.seq = 0;
        self.generation += 1;
        Ok(())
    }
}

fn header(kind: RecordType, body_len: usize) -> [u8; HEADER_LEN] {
    let len = (body_len as u32).to_be_bytes();
    [kind as u8, len[1], len[2], len[3]]
}

/// Reads a record header: its type and the total length of the record on the wire.
///
/// This is all a reader needs to know how many bytes to wait for; nothing is allocated from it
/// beyond [`MAX_RECORD_LEN`].
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(RecordType, usize), RecordError> {
    let kind = RecordType::from_byte(h[0]).ok_or(RecordError::UnknownType(h[0]))?;
    let body = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
    if !(TAG_LEN..=MAX_PLAINTEXT + TAG_LEN).contains(&body) {
        return Err(RecordError::BadLength(body));
    }
    Ok((kind, HEADER_LEN + body))
}

/// The sending half of a session.
pub struct Sealer {
    dir: DirectionState,
    rekey_bytes: u64,
    bytes_this_key: u64,
    rekey_requested: bool,
    closed: bool,
    /// An Alert was sealed: nothing at all follows it, keepalives included.
    alerted: bool,
    bytes_total: u64,
    rekeys: u64,
}

impl Sealer {
    /// A sealer under the first-generation `secret`, rekeying after `rekey_bytes` of plaintext.
    pub fn new(secret: Secret, rekey_bytes: u64) -> Self {
        Sealer {
            dir: DirectionState::new(secret),
            rekey_bytes: rekey_bytes.max(1),
            bytes_this_key: 0,
            rekey_requested: false,
            closed: false,
            alerted: false,
            bytes_total: 0,
            rekeys: 0,
        }
    }

    /// Fresh hybrid exchanges this direction has moved to.
    pub fn hybrid_generation(&self) -> u64 {
        self.dir.hybrid
    }

    /// The current traffic secret (tests and vectors only).
    #[cfg(any(test, feature = "testing"))]
    pub fn dir_secret(&self) -> &Secret {
        &self.dir.secret
    }

    /// Seals a record of the hybrid exchange (`kind` one of types 8 to 10, `body` of its exact
    /// length) and returns it. Allowed between streams too; never after an Alert. Does not move
    /// to a new key: see [`Sealer::switch_hybrid`].
    pub fn seal_key_share(&mut self, kind: RecordType, body: &[u8]) -> Result<Vec<u8>, RecordError> {
        if kind.key_share_len() != Some(body.len()) {
            return Err(RecordError::Malformed(kind));
        }
        let mut buf = vec![0u8; body.len() + OVERHEAD];
        buf[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
        self.seal(kind, &mut buf)?;
        Ok(buf)
    }

    /// Moves this direction to the secret of a fresh hybrid exchange, `next` of its current
    /// secret (`proto::kex::Fresh::next_secret`), right after the record that marks the switch
    /// point.
    pub fn switch_hybrid(
        &mut self,
        next: impl FnOnce(&Secret) -> Secret,
    ) -> Result<(), RecordError> {
        self.dir.switch(next)?;
        self.bytes_this_key = 0;
        Ok(())
    }

    /// True when the next record must be a rekey record (byte count, record count or request).
    pub fn rekey_due(&self) -> bool {
        self.rekey_requested
            || self.bytes_this_key >= self.rekey_bytes
            || self.dir.seq >= SOFT_RECORD_LIMIT
    }

    /// Asks for a rekey before the next data record (for time-based rekeying).
    pub fn request_rekey(&mut self) {
        self.rekey_requested = true;
    }

    /// Plaintext bytes sealed so far.
    pub fn bytes_sealed(&self) -> u64 {
        self.bytes_total
    }

    /// Rekey records sent so far.
    pub fn rekeys(&self) -> u64 {
        self.rekeys
    }

    /// True once the close record is sealed (until a StreamInfo record starts the next stream).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Streams begun after the session's first.
    pub fn streams(&self) -> u64 {
        self.dir.streams
    }

    /// Seals a data record in place.
    ///
    /// `buf` holds `HEADER_LEN` bytes of room, then the plaintext, then `TAG_LEN` bytes of room:
    /// `buf.len() == plaintext_len + OVERHEAD`. On return `buf` is the record to send.
    pub fn seal_data(&mut self, buf: &mut [u8]) -> Result<(), RecordError> {
        if self.rekey_due() {
            return Err(RecordError::RekeyRequired);
        }
        if buf.len() <= OVERHEAD {
            return Err(RecordError::Malformed(RecordType::Data));
        }
        let len = buf.len() - OVERHEAD;
        self.seal(RecordType::Data, buf)?;
        self.bytes_this_key += len as u64;
        self.bytes_total += len as u64;
        Ok(())
    }

    /// Seals a rekey record into `buf` (exactly [`OVERHEAD`] bytes), then ratchets this direction.
    pub fn seal_rekey(&mut self, buf: &mut [u8; OVERHEAD]) -> Result<(), RecordError> {
        self.seal(RecordType::Rekey, buf)?;
        self.dir.ratchet()?;
        self.bytes_this_key = 0;
        self.rekey_requested = false;
        self.rekeys += 1;
        Ok(())
    }

    /// Seals a StreamInfo record in place (`buf` laid out as for [`Sealer::seal_data`], with a
    /// non-empty body of at most [`crate::proto::stream::MAX_STREAM_INFO_LEN`] bytes). Only as the
    /// first record of a stream: the very first of the session, or the first after a close
    /// record (under the next stream's key; the caller makes sure the peer closed too).
    pub fn seal_stream_info(&mut self, buf: &mut [u8]) -> Result<(), RecordError> {
        if !self.dir.stream_start {
            return Err(RecordError::Unexpected(RecordType::StreamInfo));
        }
        if buf.len() <= OVERHEAD || buf.len() > OVERHEAD + MAX_STREAM_INFO_LEN {
            return Err(RecordError::Malformed(RecordType::StreamInfo));
        }
        self.closed = false;
        self.seal(RecordType::StreamInfo, buf)
    }

    /// The listener's side of a stream start: the connector's StreamInfo record for the next
    /// stream has been opened, so this direction (closed at the end of the last stream, or fresh)
    /// carries the new stream too, under its next stream key. Refused in the middle of a stream.
    pub fn begin_stream(&mut self) -> Result<(), RecordError> {
        if !self.dir.stream_start {
            return Err(RecordError::Unexpected(RecordType::StreamInfo));
        }
        self.closed = false;
        Ok(())
    }

    /// Seals an [`Alert`] record, the first record of this direction in a stream (the session's
    /// first, or one begun with [`Sealer::begin_stream`]) and its last (a listener's refusal of
    /// an authenticated connector, or of one of its streams); returns the record to send.
    pub fn seal_alert(&mut self, alert: &Alert) -> Result<Vec<u8>, RecordError> {
        if !self.dir.stream_start || self.closed {
            return Err(RecordError::Unexpected(RecordType::Alert));
        }
        let body = alert.encode();
        let mut buf = vec![0u8; body.len() + OVERHEAD];
        buf[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(&body);
        self.seal(RecordType::Alert, &mut buf)?;
        self.closed = true;
        self.alerted = true;
        Ok(buf)
    }

    /// Seals a Ping record (empty; PROTOCOL.md §4.4): anywhere but after an Alert, before a
    /// stream's first record and after a close record included (under the next stream's key).
    pub fn seal_ping(&mut self) -> Result<[u8; OVERHEAD], RecordError> {
        let mut buf = [0u8; OVERHEAD];
        self.seal(RecordType::Ping, &mut buf)?;
        Ok(buf)
    }

    /// Seals a Pong record (empty), the answer to a Ping; allowed where a Ping is.
    pub fn seal_pong(&mut self) -> Result<[u8; OVERHEAD], RecordError> {
        let mut buf = [0u8; OVERHEAD];
        self.seal(RecordType::Pong, &mut buf)?;
        Ok(buf)
    }

    /// Seals the close record into `buf` (exactly [`OVERHEAD`] bytes), then ratchets to the next
    /// stream's key; nothing but a StreamInfo record (the next stream) may follow it.
    pub fn seal_close(&mut self, buf: &mut [u8; OVERHEAD]) -> Result<(), RecordError> {
        self.seal(RecordType::Close, buf)?;
        self.closed = true;
        self.dir.next_stream()?;
        self.bytes_this_key = 0;
        self.rekey_requested = false;
        Ok(())
    }

    fn seal(&mut self, kind: RecordType, buf: &mut [u8]) -> Result<(), RecordError> {
        if self.alerted || (self.closed && !kind.outside_streams()) {
            return Err(RecordError::AfterClose);
        }
        if buf.len() < OVERHEAD || buf.len() > MAX_RECORD_LEN {
            return Err(RecordError::Buffer(buf.len()));
        }
        let body_len = buf.len() - HEADER_LEN;
        let hdr = header(kind, body_len);
        let nonce = self.dir.next_nonce(kind)?;
        let (head, rest) = buf.split_at_mut(HEADER_LEN);
        head.copy_from_slice(&hdr);
        let (plain, tag_room) = rest.split_at_mut(body_len - TAG_LEN);
        let tag = self
            .dir
            .key
            .aead()
            .seal_in_place(&nonce, &hdr, plain)
            .map_err(|_| RecordError::Buffer(body_len))?;
        tag_room.copy_from_slice(&tag);
        Ok(())
    }
}

/// What an opened record was.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened<'a> {
    /// Application bytes, decrypted in place.
    Data(&'a [u8]),
    /// The peer closed this direction: an authenticated end of stream.
    Close,
    /// The peer moved to the next key generation (already followed).
    Rekey,
    /// The listener refused this connector, or this stream (its first record of the stream,
    /// and its last: the direction is closed after it).
    Alert(Alert),
    /// A keepalive: answer it with one Pong, as soon as possible.
    Ping,
    /// The answer to a keepalive (or an unsolicited one): the peer is alive, nothing to do.
    Pong,
    /// A record of the hybrid exchange (types 8 to 10), its body of the exact length for its
    /// type; for `proto::kex` to act on (it does not change keys by itself).
    KeyShare(RecordType, &'a [u8]),
}

/// The receiving half of a session.
pub struct Opener {
    dir: DirectionState,
    closed: bool,
    /// An Alert was opened: nothing at all may follow it, keepalives included.
    alerted: bool,
    bytes_total: u64,
    rekeys: u64,
    /// The session was resumed: a handshake's refusal (Alert code 1 or 2) is not valid as its
    /// first record (PROTOCOL.md §4.2, [`Opener::resumed`]).
    resumed: bool,
}

impl Opener {
    /// An opener under the peer's first-generation `secret`.
    pub fn new(secret: Secret) -> Self {
        Opener {
            dir: DirectionState::new(secret),
            closed: false,
            alerted: false,
            bytes_total: 0,
            rekeys: 0,
            resumed: false,
        }
    }

    /// Marks the session as resumed: a resumed handshake never ends in an Alert, so codes 1
    /// and 2 (a handshake's refusal) are refused as the session's first record, as any
    /// unexpected record (PROTOCOL.md §4.2). Codes 3 and 4 refuse a stream, and stay valid.
    pub fn resumed(mut self) -> Self {
        self.resumed = true;
        self
    }

    /// Fresh hybrid exchanges this direction has moved to.
    pub fn hybrid_generation(&self) -> u64 {
        self.dir.hybrid
    }

    /// The current traffic secret (tests and vectors only).
    #[cfg(any(test, feature = "testing"))]
    pub fn dir_secret(&self) -> &Secret {
        &self.dir.secret
    }

    /// Moves this direction to the secret of a fresh hybrid exchange, `next` of its current
    /// secret (`proto::kex::Fresh::next_secret`), right after the record that marks the switch
    /// point.
    pub fn switch_hybrid(
        &mut self,
        next: impl FnOnce(&Secret) -> Secret,
    ) -> Result<(), RecordError> {
        self.dir.switch(next)
    }

    /// True once the peer's close record has been opened (until a StreamInfo record starts the
    /// next stream).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Streams begun after the session's first.
    pub fn streams(&self) -> u64 {
        self.dir.streams
    }

    /// Plaintext bytes opened so far.
    pub fn bytes_opened(&self) -> u64 {
        self.bytes_total
    }

    /// Rekey records received so far.
    pub fn rekeys(&self) -> u64 {
        self.rekeys
    }

    /// The transport ended: fine after the peer's close record, truncation otherwise.
    pub fn end_of_stream(&self) -> Result<(), RecordError> {
        if self.closed {
            Ok(())
        } else {
            Err(RecordError::Truncated)
        }
    }

    /// Opens the first record of a stream (of the session, or after the peer's close record),
    /// which must be a StreamInfo record, and returns its body (decrypted in place; decode it
    /// with [`crate::proto::stream::StreamInfo::decode`]). Anything else, or a call in the middle
    /// of a stream, is [`RecordError::Unexpected`].
    pub fn open_stream_info<'a>(&mut self, record: &'a mut [u8]) -> Result<&'a [u8], RecordError> {
        let hdr: [u8; HEADER_LEN] = record
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(RecordError::Buffer(record.len()))?;
        let (kind, _) = parse_header(&hdr)?;
        if kind != RecordType::StreamInfo || !self.dir.stream_start {
            return Err(RecordError::Unexpected(kind));
        }
        // The stream is open again once the record authenticates under the next stream's key.
        let was_closed = self.closed;
        self.closed = false;
        let body = match self.open_record(record) {
            Ok((_, body)) => body,
            Err(e) => {
                self.closed = was_closed;
                return Err(e);
            }
        };
        if body.is_empty() || body.len() > MAX_STREAM_INFO_LEN {
            return Err(RecordError::Malformed(RecordType::StreamInfo));
        }
        Ok(body)
    }

    /// The connector's side of a stream start: its StreamInfo record for the next stream is
    /// sealed, so the listener's direction (closed at the end of the last stream, or fresh) opens
    /// the new stream's records, under its next stream key. Refused in the middle of a stream.
    pub fn begin_stream(&mut self) -> Result<(), RecordError> {
        if !self.dir.stream_start {
            return Err(RecordError::Unexpected(RecordType::StreamInfo));
        }
        self.closed = false;
        Ok(())
    }

    /// Opens one whole record (header included, as its header sizes it) in place.
    /// A StreamInfo record is refused here: it is only valid first, through
    /// [`Opener::open_stream_info`]. Keepalives open here wherever they are allowed: after a
    /// close record too (under the next stream's key), never after an Alert.
    pub fn open<'a>(&mut self, record: &'a mut [u8]) -> Result<Opened<'a>, RecordError> {
        // An Alert only as the first record of the listener's direction in a stream
        // (keepalives before it aside).
        let first = self.dir.stream_start;
        let (kind, plain) = self.open_record(record)?;
        match kind {
            RecordType::Data if plain.is_empty() => Err(RecordError::Malformed(kind)),
            RecordType::Data => {
                self.bytes_total += plain.len() as u64;
                Ok(Opened::Data(plain))
            }
            RecordType::Close | RecordType::Rekey | RecordType::Ping | RecordType::Pong
                if !plain.is_empty() =>
            {
                Err(RecordError::Malformed(kind))
            }
            RecordType::Ping => Ok(Opened::Ping),
            RecordType::Pong => Ok(Opened::Pong),
            RecordType::KeyShare | RecordType::KeyShareReply | RecordType::KeyShareDone
                if kind.key_share_len() != Some(plain.len()) =>
            {
                Err(RecordError::Malformed(kind))
            }
            RecordType::KeyShare | RecordType::KeyShareReply | RecordType::KeyShareDone => {
                Ok(Opened::KeyShare(kind, plain))
            }
            RecordType::Close => {
                self.closed = true;
                self.dir.next_stream()?;
                Ok(Opened::Close)
            }
            RecordType::Rekey => {
                self.dir.ratchet()?;
                self.rekeys += 1;
                Ok(Opened::Rekey)
            }
            RecordType::StreamInfo => Err(RecordError::Unexpected(kind)),
            RecordType::Alert if !first => Err(RecordError::Unexpected(kind)),
            RecordType::Alert => {
                let alert = Alert::decode(plain)?;
                let handshake_refusal =
                    matches!(alert.code(), AlertCode::Untrusted | AlertCode::ServiceMismatch);
                if self.resumed && self.dir.streams == 0 && handshake_refusal {
                    return Err(RecordError::Unexpected(kind));
                }
                self.closed = true;
                self.alerted = true;
                Ok(Opened::Alert(alert))
            }
        }
    }

    /// Authenticates and decrypts one record in place; its type and plaintext.
    fn open_record<'a>(
        &mut self,
        record: &'a mut [u8],
    ) -> Result<(RecordType, &'a mut [u8]), RecordError> {
        let hdr: [u8; HEADER_LEN] = record
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(RecordError::Buffer(record.len()))?;
        let (kind, total) = parse_header(&hdr)?;
        // After a close record only keepalives (and the next stream's StreamInfo, which
        // `open_stream_info` lets through); after an Alert nothing.
        if self.alerted || (self.closed && !kind.outside_streams()) {
            return Err(RecordError::AfterClose);
        }
        if total != record.len() {
            return Err(RecordError::Buffer(record.len()));
        }
        let nonce = self.dir.next_nonce(kind)?;
        let (plain, tag) = record[HEADER_LEN..].split_at_mut(total - HEADER_LEN - TAG_LEN);
        let tag: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| RecordError::BadRecord)?;
        self.dir
            .key
            .aead()
            .open_in_place(&nonce, &hdr, plain, &tag)
            .map_err(|_| RecordError::BadRecord)?;
        Ok((kind, plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Sealer, Opener) {
        let s = Secret::from_bytes([9u8; 32]);
        (Sealer::new(s.clone(), 1 << 30), Opener::new(s))
    }

    fn data_record(sealer: &mut Sealer, msg: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; msg.len() + OVERHEAD];
        buf[HEADER_LEN..HEADER_LEN + msg.len()].copy_from_slice(msg);
        sealer.seal_data(&mut buf).unwrap();
        buf
    }

    #[test]
    fn round_trip_and_header_is_authenticated() {
        let (mut s, mut o) = pair();
        let mut r = data_record(&mut s, b"hello");
        assert_eq!(
            parse_header(&r[..4].try_into().unwrap()).unwrap(),
            (RecordType::Data, r.len())
        );
        assert_eq!(o.open(&mut r).unwrap(), Opened::Data(b"hello"));
        // Change the type in the header of the next record: authentication fails.
        let mut r = data_record(&mut s, b"x");
        r[0] = RecordType::Rekey as u8;
        assert_eq!(o.open(&mut r), Err(RecordError::BadRecord));
    }

    #[test]
    fn rekey_is_required_then_followed() {
        let s = Secret::from_bytes([1u8; 32]);
        let mut sealer = Sealer::new(s.clone(), 10);
        let mut opener = Opener::new(s);
        let mut r = data_record(&mut sealer, b"0123456789");
        assert_eq!(opener.open(&mut r).unwrap(), Opened::Data(b"0123456789"));
        assert!(sealer.rekey_due());
        let mut buf = vec![0u8; 1 + OVERHEAD];
        assert_eq!(sealer.seal_data(&mut buf), Err(RecordError::RekeyRequired));
        let mut rk = [0u8; OVERHEAD];
        sealer.seal_rekey(&mut rk).unwrap();
        assert_eq!(opener.open(&mut rk).unwrap(), Opened::Rekey);
        let mut r = data_record(&mut sealer, b"after");
        assert_eq!(opener.open(&mut r).unwrap(), Opened::Data(b"after"));
        assert_eq!((sealer.rekeys(), opener.rekeys()), (1, 1));
    }

    fn stream_info_record(sealer: &mut Sealer, body: &[u8]) -> Result<Vec<u8>, RecordError> {
        let mut buf = vec![0u8; body.len() + OVERHEAD];
        buf[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
        sealer.seal_stream_info(&mut buf)?;
        Ok(buf)
    }

    #[test]
    fn stream_info_only_first() {
        let (mut s, mut o) = pair();
        let mut r = stream_info_record(&mut s, b"info").unwrap();
        assert_eq!(r[0], RecordType::StreamInfo as u8);
        assert_eq!(o.open_stream_info(&mut r).unwrap(), b"info");
        // A second one: neither sealed nor opened.
        assert_eq!(
            stream_info_record(&mut s, b"again"),
            Err(RecordError::Unexpected(RecordType::StreamInfo))
        );
        let mut d = data_record(&mut s, b"data");
        assert_eq!(
            o.open_stream_info(&mut d),
            Err(RecordError::Unexpected(RecordType::Data))
        );
        // A StreamInfo record sealed later (by hand) does not open through `open` either.
        let (mut s2, mut o2) = pair();
        let mut first = stream_info_record(&mut s2, b"x").unwrap();
        assert_eq!(
            o2.open(&mut first),
            Err(RecordError::Unexpected(RecordType::StreamInfo))
        );
        // The first record is not StreamInfo: refused before any decryption.
        let (mut s3, mut o3) = pair();
        let mut d = data_record(&mut s3, b"data");
        assert_eq!(
            o3.open_stream_info(&mut d),
            Err(RecordError::Unexpected(RecordType::Data))
        );
        // Size bounds.
        let (mut s4, _) = pair();
        assert_eq!(
            stream_info_record(&mut s4, &[0u8; MAX_STREAM_INFO_LEN + 1]),
            Err(RecordError::Malformed(RecordType::StreamInfo))
        );
        assert_eq!(
            stream_info_record(&mut s4, &[]),
            Err(RecordError::Malformed(RecordType::StreamInfo))
        );
    }

    #[test]
    fn alert_only_first_and_last() {
        let (mut s, mut o) = pair();
        let alert = Alert::new(AlertCode::ServiceMismatch, b"postgres");
        let mut rec = s.seal_alert(&alert).unwrap();
        assert_eq!(rec[0], 5);
        assert!(s.is_closed());
        assert_eq!(o.open(&mut rec), Ok(Opened::Alert(alert)));
        assert!(o.is_closed());
        assert_eq!(alert.detail(), b"postgres");
        assert_eq!(Alert::decode(&alert.encode()), Ok(alert));

        // Not after another record.
        let (mut s, mut o) = pair();
        let mut d = data_record(&mut s, b"x");
        o.open(&mut d).unwrap();
        assert_eq!(
            s.seal_alert(&alert),
            Err(RecordError::Unexpected(RecordType::Alert))
        );
        let (mut s2, _) = pair();
        let mut a = s2.seal_alert(&alert).unwrap();
        // (A fresh sealer's alert is seq 0: the opener at seq 1 fails it before the type.)
        assert!(o.open(&mut a).is_err());

        // Bodies: known codes, exact lengths.
        for bad in [
            &[][..],
            &[1],
            &[1, 1, b'x'],
            &[2, 0],
            &[2, 2, b'x'],
            &[0, 0],
            &[5, 0],
        ] {
            assert_eq!(
                Alert::decode(bad),
                Err(RecordError::Malformed(RecordType::Alert))
            );
        }
        let long = [b'a'; MAX_ALERT_DETAIL + 1];
        let mut body = vec![2, long.len() as u8];
        body.extend_from_slice(&long);
        assert!(Alert::decode(&body).is_err());
        let untrusted = Alert::new(AlertCode::Untrusted, b"");
        assert_eq!(Alert::decode(&[1, 0]), Ok(untrusted));
        for (code, body) in [
            (AlertCode::ForwardUnreachable, [3u8, 0]),
            (AlertCode::DestinationNotAllowed, [4u8, 0]),
        ] {
            assert_eq!(Alert::decode(&body), Ok(Alert::new(code, b"")));
            assert_eq!(Alert::new(code, b"").encode(), body);
            assert!(Alert::decode(&[body[0], 1, b'x']).is_err());
        }
        assert!(Alert::decode(&[5, 0]).is_err());
    }

    #[test]
    fn an_alert_is_the_first_record_of_a_later_stream_too() {
        let (mut s, mut o) = pair();
        // Stream 1: a data record and both closes.
        let mut d = data_record(&mut s, b"x");
        o.open(&mut d).unwrap();
        let mut c = [0u8; OVERHEAD];
        s.seal_close(&mut c).unwrap();
        assert_eq!(o.open(&mut c), Ok(Opened::Close));
        // Not between streams, before the next StreamInfo.
        let alert = Alert::new(AlertCode::ForwardUnreachable, b"");
        assert_eq!(
            s.seal_alert(&alert),
            Err(RecordError::Unexpected(RecordType::Alert))
        );
        // Stream 2: the listener's first record is an alert, which closes its direction.
        s.begin_stream().unwrap();
        o.begin_stream().unwrap();
        let mut a = s.seal_alert(&alert).unwrap();
        assert!(s.is_closed());
        assert_eq!(o.open(&mut a), Ok(Opened::Alert(alert)));
        assert!(o.is_closed());
        // Not in the middle of a stream: after a data record of stream 2.
        let (mut s, mut o) = pair();
        let mut c = [0u8; OVERHEAD];
        s.seal_close(&mut c).unwrap();
        o.open(&mut c).unwrap();
        s.begin_stream().unwrap();
        o.begin_stream().unwrap();
        let mut d = data_record(&mut s, b"y");
        o.open(&mut d).unwrap();
        assert_eq!(
            s.seal_alert(&alert),
            Err(RecordError::Unexpected(RecordType::Alert))
        );
    }

    #[test]
    fn nothing_after_close() {
        let (mut s, mut o) = pair();
        let mut c = [0u8; OVERHEAD];
        s.seal_close(&mut c).unwrap();
        let mut buf = vec![0u8; 1 + OVERHEAD];
        assert_eq!(s.seal_data(&mut buf), Err(RecordError::AfterClose));
        assert_eq!(o.open(&mut c).unwrap(), Opened::Close);
        let mut again = c;
        assert_eq!(o.open(&mut again), Err(RecordError::AfterClose));
    }

    /// A resumed session refuses a handshake's refusal (Alert code 1 or 2) as its first record:
    /// a resumed handshake never ends in an Alert (PROTOCOL.md §4.2). A stream's refusal (codes
    /// 3 and 4) stays valid there, and codes 1 and 2 on a later stream (a reload's).
    #[test]
    fn a_resumed_session_refuses_a_handshake_alert_first() {
        let resumed = || {
            let (s, o) = pair();
            (s, o.resumed())
        };
        for code in [AlertCode::Untrusted, AlertCode::ServiceMismatch] {
            let detail: &[u8] = if code == AlertCode::ServiceMismatch { b"svc" } else { b"" };
            let (mut s, mut o) = resumed();
            let mut rec = s.seal_alert(&Alert::new(code, detail)).unwrap();
            assert_eq!(
                o.open(&mut rec),
                Err(RecordError::Unexpected(RecordType::Alert)),
                "{code:?}"
            );
            // After a full handshake, the same record is the listener's refusal.
            let (mut s, mut o) = pair();
            let mut rec = s.seal_alert(&Alert::new(code, detail)).unwrap();
            assert!(matches!(o.open(&mut rec), Ok(Opened::Alert(_))));
        }
        for code in [AlertCode::ForwardUnreachable, AlertCode::DestinationNotAllowed] {
            let (mut s, mut o) = resumed();
            let mut rec = s.seal_alert(&Alert::new(code, b"")).unwrap();
            assert!(matches!(o.open(&mut rec), Ok(Opened::Alert(_))), "{code:?}");
        }
        // A later stream of a resumed session: code 1 (a reload took the key away) is valid.
        let (mut s, mut o) = resumed();
        let mut c = close_record(&mut s);
        assert_eq!(o.open(&mut c).unwrap(), Opened::Close);
        s.begin_stream().unwrap();
        o.begin_stream().unwrap();
        let mut rec = s.seal_alert(&Alert::new(AlertCode::Untrusted, b"")).unwrap();
        let r = o.open(&mut rec);
        assert!(matches!(r, Ok(Opened::Alert(_))), "{r:?}");
    }

    fn close_record(sealer: &mut Sealer) -> Vec<u8> {
        let mut c = [0u8; OVERHEAD];
        sealer.seal_close(&mut c).unwrap();
        c.to_vec()
    }

    #[test]
    fn streams_follow_one_another_under_new_keys() {
        let (mut s, mut o) = pair();
        let mut info = stream_info_record(&mut s, b"one").unwrap();
        assert_eq!(o.open_stream_info(&mut info).unwrap(), b"one");
        let old_data = data_record(&mut s, b"first stream");
        let mut d = old_data.clone();
        assert_eq!(o.open(&mut d).unwrap(), Opened::Data(b"first stream"));
        let key_before = *s.dir.secret.expose();
        let mut c = close_record(&mut s);
        assert_eq!(o.open(&mut c).unwrap(), Opened::Close);
        assert!(s.is_closed() && o.is_closed());
        // The next stream's key is the one-way ratchet of the last one, counter at 0.
        assert_eq!(
            *s.dir.secret.expose(),
            *next_stream_secret(&Secret::from_bytes(key_before)).expose()
        );
        assert_eq!(
            (s.dir.seq, o.dir.seq, s.streams(), o.streams()),
            (0, 0, 1, 1)
        );
        // A record of the last stream, replayed after the close: refused unopened.
        let mut replay = old_data.clone();
        assert_eq!(o.open(&mut replay), Err(RecordError::AfterClose));
        // The next stream starts with StreamInfo, under the new key.
        let mut info = stream_info_record(&mut s, b"two").unwrap();
        assert_eq!(o.open_stream_info(&mut info).unwrap(), b"two");
        assert!(!s.is_closed() && !o.is_closed());
        let mut d = data_record(&mut s, b"second stream");
        assert_eq!(o.open(&mut d).unwrap(), Opened::Data(b"second stream"));
        // A record of the first stream spliced into the second: it does not authenticate.
        let mut replay = old_data;
        assert_eq!(o.open(&mut replay), Err(RecordError::BadRecord));
    }

    #[test]
    fn after_close_only_stream_info() {
        // Data after a close record: neither sealed nor opened.
        let (mut s, mut o) = pair();
        let mut c = close_record(&mut s);
        assert_eq!(o.open(&mut c).unwrap(), Opened::Close);
        let mut buf = vec![0u8; 1 + OVERHEAD];
        assert_eq!(s.seal_data(&mut buf), Err(RecordError::AfterClose));
        let mut rk = [0u8; OVERHEAD];
        assert_eq!(s.seal_rekey(&mut rk), Err(RecordError::AfterClose));
        // A data record sealed (by a misbehaving peer) under the next stream's key right after
        // the close: the opener refuses it before decrypting.
        let mut evil = Sealer::new(s.dir.secret.clone(), 1 << 30);
        let mut d = data_record(&mut evil, b"x");
        assert_eq!(o.open(&mut d), Err(RecordError::AfterClose));
        assert_eq!(
            o.open_stream_info(&mut d),
            Err(RecordError::Unexpected(RecordType::Data))
        );
        // A second close: refused too.
        let (mut s, mut o) = pair();
        let mut c = close_record(&mut s);
        assert_eq!(o.open(&mut c).unwrap(), Opened::Close);
        let mut evil = Sealer::new(s.dir.secret.clone(), 1 << 30);
        let mut c2 = close_record(&mut evil);
        assert_eq!(o.open(&mut c2), Err(RecordError::AfterClose));
        // The old close record replayed as the start of the next stream: wrong type, and it
        // would not authenticate under the new key either.
        let mut again = c;
        assert_eq!(
            o.open_stream_info(&mut again),
            Err(RecordError::Unexpected(RecordType::Close))
        );
        // A StreamInfo in the middle of a stream, or after a rekey: refused.
        let (mut s, mut o) = pair();
        let mut rk = [0u8; OVERHEAD];
        s.seal_rekey(&mut rk).unwrap();
        assert_eq!(o.open(&mut rk).unwrap(), Opened::Rekey);
        assert_eq!(
            stream_info_record(&mut s, b"late"),
            Err(RecordError::Unexpected(RecordType::StreamInfo))
        );
        // Rekeying inside a later stream works, and the end of the transport after a close is
        // a clean end of the session.
        let (mut s, mut o) = pair();
        let mut c = close_record(&mut s);
        assert_eq!(o.open(&mut c).unwrap(), Opened::Close);
        assert_eq!(o.end_of_stream(), Ok(()));
        let mut info = stream_info_record(&mut s, b"2").unwrap();
        o.open_stream_info(&mut info).unwrap();
        assert_eq!(o.end_of_stream(), Err(RecordError::Truncated));
        s.seal_rekey(&mut rk).unwrap();
        assert_eq!(o.open(&mut rk).unwrap(), Opened::Rekey);
        let mut d = data_record(&mut s, b"after rekey");
        assert_eq!(o.open(&mut d).unwrap(), Opened::Data(b"after rekey"));
    }

    #[test]
    fn exchange_records_of_a_wrong_length_do_not_open() {
        for (kind, len) in [
            (RecordType::KeyShare, KEY_SHARE_LEN - 1),
            (RecordType::KeyShareReply, KEY_SHARE_REPLY_LEN + 1),
            (RecordType::KeyShareDone, 1),
        ] {
            let (mut s, mut o) = pair();
            assert_eq!(
                s.seal_key_share(kind, &vec![0; len]),
                Err(RecordError::Malformed(kind))
            );
            // Sealed anyway (a misbehaving peer): authenticates, then refused.
            let mut buf = vec![0u8; len + OVERHEAD];
            s.seal(kind, &mut buf).unwrap();
            assert_eq!(o.open(&mut buf), Err(RecordError::Malformed(kind)));
        }
    }

    #[test]
    fn header_limits() {
        assert_eq!(
            parse_header(&[11, 0, 0, 16]),
            Err(RecordError::UnknownType(11))
        );
        assert_eq!(
            parse_header(&[1, 0, 0, 15]),
            Err(RecordError::BadLength(15))
        );
        let too_long = ((MAX_PLAINTEXT + TAG_LEN + 1) as u32).to_be_bytes();
        assert!(matches!(
            parse_header(&[1, too_long[1], too_long[2], too_long[3]]),
            Err(RecordError::BadLength(_))
        ));
        let max = ((MAX_PLAINTEXT + TAG_LEN) as u32).to_be_bytes();
        assert_eq!(
            parse_header(&[1, max[1], max[2], max[3]]).unwrap().1,
            MAX_RECORD_LEN
        );
    }

    #[test]
    fn hard_limit_stops_sealing_and_opening() {
        let (mut s, mut o) = pair();
        s.dir.seq = HARD_RECORD_LIMIT;
        o.dir.seq = HARD_RECORD_LIMIT;
        let mut c = [0u8; OVERHEAD];
        assert_eq!(s.seal_close(&mut c), Err(RecordError::KeyExhausted));
        assert!(s.rekey_due(), "the soft limit forces a rekey long before");
        let mut r = [
            1u8, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(o.open(&mut r), Err(RecordError::KeyExhausted));
    }

    #[test]
    fn keepalives_are_empty_sealed_records_that_count_but_carry_no_bytes() {
        let (mut s, mut o) = pair();
        let mut ping = s.seal_ping().unwrap();
        assert_eq!(&ping[..HEADER_LEN], &[6, 0, 0, 16]);
        assert_eq!(parse_header(&[6, 0, 0, 16]), Ok((RecordType::Ping, OVERHEAD)));
        assert_eq!(parse_header(&[7, 0, 0, 16]), Ok((RecordType::Pong, OVERHEAD)));
        assert_eq!(o.open(&mut ping), Ok(Opened::Ping));
        let mut pong = s.seal_pong().unwrap();
        assert_eq!(pong[0], 7);
        assert_eq!(o.open(&mut pong), Ok(Opened::Pong));
        // They take sequence numbers (2 so far), not bytes toward `rekey_bytes`.
        assert_eq!((s.dir.seq, o.dir.seq), (2, 2));
        assert_eq!((s.bytes_sealed(), s.bytes_this_key), (0, 0));
        assert_eq!(o.bytes_opened(), 0);
        // A keepalive with a body (sealed by hand) is malformed.
        let mut evil = Sealer::new(s.dir.secret.clone(), 1 << 30);
        evil.dir.seq = s.dir.seq;
        let mut buf = vec![0u8; 1 + OVERHEAD];
        evil.seal(RecordType::Ping, &mut buf).unwrap();
        assert_eq!(o.open(&mut buf), Err(RecordError::Malformed(RecordType::Ping)));
    }

    #[test]
    fn a_tampered_replayed_or_reordered_ping_fails_authentication() {
        let (mut s, mut o) = pair();
        let first = s.seal_ping().unwrap();
        let second = s.seal_ping().unwrap();
        // Reordered: the second first.
        let mut r = second;
        assert_eq!(o.open(&mut r), Err(RecordError::BadRecord));
        let (mut s, mut o) = pair();
        let mut p = s.seal_ping().unwrap();
        let replay = p;
        assert_eq!(o.open(&mut p), Ok(Opened::Ping));
        // Replayed.
        let mut r = replay;
        assert_eq!(o.open(&mut r), Err(RecordError::BadRecord));
        // Tampered: every bit of a fresh one.
        let (mut s, _) = pair();
        let good = s.seal_ping().unwrap();
        for bit in 0..good.len() * 8 {
            let (_, mut o) = pair();
            let mut t = good;
            t[bit / 8] ^= 1 << (bit % 8);
            assert!(o.open(&mut t).is_err(), "bit {bit} flipped");
        }
        // A Ping turned into a Pong in its header (the header is authenticated).
        let (_, mut o) = pair();
        let mut t = good;
        t[0] = RecordType::Pong as u8;
        assert_eq!(o.open(&mut t), Err(RecordError::BadRecord));
        // Reflected: our own Ping back to us opens under the other direction's key only.
        let ours = Secret::from_bytes([9u8; 32]);
        let mut theirs = Opener::new(Secret::from_bytes([8u8; 32]));
        let mut me = Sealer::new(ours, 1 << 30);
        let mut p = me.seal_ping().unwrap();
        assert_eq!(theirs.open(&mut p), Err(RecordError::BadRecord));
        let _ = first;
    }

    #[test]
    fn keepalives_before_the_first_stream_info_and_between_streams() {
        let (mut s, mut o) = pair();
        // Before the session's first StreamInfo: it is still the first record of the stream.
        let mut p = s.seal_ping().unwrap();
        assert_eq!(o.open(&mut p), Ok(Opened::Ping));
        let mut p = s.seal_pong().unwrap();
        assert_eq!(o.open(&mut p), Ok(Opened::Pong));
        let mut info = stream_info_record(&mut s, b"one").unwrap();
        assert_eq!(o.open_stream_info(&mut info).unwrap(), b"one");
        // Inside the stream.
        let mut p = s.seal_ping().unwrap();
        assert_eq!(o.open(&mut p), Ok(Opened::Ping));
        let mut d = data_record(&mut s, b"x");
        assert_eq!(o.open(&mut d), Ok(Opened::Data(b"x")));
        // After the close: under the next stream's key, and the stream stays closed.
        let mut c = close_record(&mut s);
        assert_eq!(o.open(&mut c), Ok(Opened::Close));
        let mut p = s.seal_ping().unwrap();
        assert_eq!(o.open(&mut p), Ok(Opened::Ping));
        assert!(s.is_closed() && o.is_closed());
        let mut buf = vec![0u8; 1 + OVERHEAD];
        assert_eq!(s.seal_data(&mut buf), Err(RecordError::AfterClose));
        // Data after the close is still refused, keepalives or not.
        let mut evil = Sealer::new(s.dir.secret.clone(), 1 << 30);
        evil.dir.seq = s.dir.seq;
        let mut d = data_record(&mut evil, b"y");
        assert_eq!(o.open(&mut d), Err(RecordError::AfterClose));
        // The next StreamInfo, after keepalives, is still the next stream's first record.
        let (mut s, mut o) = pair();
        let mut c = close_record(&mut s);
        o.open(&mut c).unwrap();
        for _ in 0..3 {
            let mut p = s.seal_pong().unwrap();
            assert_eq!(o.open(&mut p), Ok(Opened::Pong));
        }
        let mut info = stream_info_record(&mut s, b"two").unwrap();
        assert_eq!(o.open_stream_info(&mut info).unwrap(), b"two");
        assert!(!o.is_closed());
        // The end of the transport after a close and keepalives: a clean end.
        let (mut s, mut o) = pair();
        let mut c = close_record(&mut s);
        o.open(&mut c).unwrap();
        let mut p = s.seal_ping().unwrap();
        o.open(&mut p).unwrap();
        assert_eq!(o.end_of_stream(), Ok(()));
    }

    #[test]
    fn an_alert_after_keepalives_is_still_first_and_nothing_follows_it() {
        let alert = Alert::new(AlertCode::Untrusted, b"");
        let (mut s, mut o) = pair();
        for _ in 0..2 {
            let mut p = s.seal_ping().unwrap();
            assert_eq!(o.open(&mut p), Ok(Opened::Ping));
        }
        let mut a = s.seal_alert(&alert).unwrap();
        assert_eq!(o.open(&mut a), Ok(Opened::Alert(alert)));
        // Not after an Alert: neither sealed nor opened.
        assert_eq!(s.seal_ping(), Err(RecordError::AfterClose));
        assert_eq!(s.seal_pong(), Err(RecordError::AfterClose));
        let mut evil = Sealer::new(s.dir.secret.clone(), 1 << 30);
        evil.dir.seq = s.dir.seq;
        let mut p = evil.seal_ping().unwrap();
        assert_eq!(o.open(&mut p), Err(RecordError::AfterClose));
        // The same in a later stream: keepalives between streams, then the Alert first.
        let (mut s, mut o) = pair();
        let mut c = close_record(&mut s);
        o.open(&mut c).unwrap();
        let mut p = s.seal_ping().unwrap();
        o.open(&mut p).unwrap();
        s.begin_stream().unwrap();
        o.begin_stream().unwrap();
        let mut p = s.seal_pong().unwrap();
        o.open(&mut p).unwrap();
        let mut a = s.seal_alert(&alert).unwrap();
        assert_eq!(o.open(&mut a), Ok(Opened::Alert(alert)));
        // But not after a data record, keepalives or not.
        let (mut s, _) = pair();
        let _ = data_record(&mut s, b"x");
        let _ = s.seal_ping().unwrap();
        assert_eq!(
            s.seal_alert(&alert),
            Err(RecordError::Unexpected(RecordType::Alert))
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;
        use std::collections::HashSet;

        #[derive(Debug, Clone)]
        enum Op {
            Data(usize),
            Rekey,
            RequestRekey,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                8 => (1usize..2000).prop_map(Op::Data),
                1 => Just(Op::Rekey),
                1 => Just(Op::RequestRekey),
            ]
        }

        proptest! {
            /// Whatever the sender does, no (key, nonce) pair is used twice, and the receiver
            /// follows every step.
            #[test]
            fn key_nonce_pairs_never_repeat(rekey_bytes in 1u64..5000, ops in proptest::collection::vec(op(), 1..300)) {
                let secret = Secret::from_bytes([5u8; 32]);
                let mut sealer = Sealer::new(secret.clone(), rekey_bytes);
                let mut opener = Opener::new(secret);
                let mut used = HashSet::new();
                for op in ops {
                    let kind_len = match op {
                        Op::Data(n) if !sealer.rekey_due() => Some(n),
                        Op::RequestRekey => { sealer.request_rekey(); None }
                        _ => Some(0),
                    };
                    let Some(n) = kind_len else { continue };
                    let pair = (*sealer.dir.secret.expose(), sealer.dir.key.nonce(sealer.dir.seq));
                    prop_assert!(used.insert(pair), "(key, nonce) reused");
                    let mut buf = vec![0x61u8; n + OVERHEAD];
                    if n == 0 {
                        let mut rk = [0u8; OVERHEAD];
                        sealer.seal_rekey(&mut rk).unwrap();
                        prop_assert_eq!(opener.open(&mut rk).unwrap(), Opened::Rekey);
                    } else {
                        sealer.seal_data(&mut buf).unwrap();
                        prop_assert!(matches!(opener.open(&mut buf).unwrap(), Opened::Data(d) if d.len() == n));
                    }
                }
            }

            /// Arbitrary bytes never panic the header parser or the opener.
            #[test]
            fn arbitrary_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
                let mut opener = Opener::new(Secret::from_bytes([1u8; 32]));
                if let Some(h) = bytes.first_chunk::<HEADER_LEN>() {
                    let _ = parse_header(h);
                }
                let mut b = bytes.clone();
                prop_assert!(opener.open(&mut b).is_err());
            }
        }
    }
}
