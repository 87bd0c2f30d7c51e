//! Fresh hybrid keys inside a session (PROTOCOL.md §4.5): a new X25519 + ML-KEM-768 exchange,
//! both sides contributing, sealed under the session's current keys and mixed into the next key
//! generation of each direction together with its current secret.
//!
//! ```text
//! connector                                                   listener
//! KeyShare {x25519 pub (32), ML-KEM-768 ek (1184)} ──────▶    X25519, Encaps(ek)
//!               ◀────── KeyShareReply {x25519 pub (32), ct (1088)}; listener → connector moves
//! Decaps(ct), X25519; listener → connector moves
//! KeyShareDone {} (old key) ────────────────────────────▶     connector → listener moves
//! connector → listener moves
//!
//! fresh = ss_mlkem || dh                       (64 bytes)
//! th    = H(KeyShare plaintext || KeyShareReply plaintext)
//! s'    = ExpandLabel(Extract(salt = s, ikm = fresh), "c kex traffic" | "l kex traffic", th, 32)
//! ```
//!
//! The connector initiates, at most one exchange at a time; the listener answers. [`Kex`] is
//! the state machine of either role over the record layer: it seals its records with the
//! [`Sealer`], acts on the records the [`Opener`] hands it ([`Opened::KeyShare`]), and moves each
//! direction at its switch point. It has no clock: when to start an exchange, and how old keys
//! may get, is the caller's (`tunnel::kex`). The X25519 secrets are passed in, and so is the
//! connector's ML-KEM key pair (the vectors fix both); the listener's encapsulation draws from
//! aws-lc-rs' RNG, as in the handshake.
//!
//! [`Opened::KeyShare`]: crate::proto::record::Opened::KeyShare

use zeroize::Zeroizing;

use crate::proto::handshake::Role;
use crate::proto::key_schedule::{derive_secret, extract, hash, Direction, Secret, HASH_LEN};
use crate::proto::mlkem::{self, DecapsulationKey, CT_LEN, EK_LEN, SS_LEN};
pub use crate::proto::record::{KEY_SHARE_LEN, KEY_SHARE_REPLY_LEN};
use crate::proto::record::{Opener, RecordError, RecordType, Sealer};
use crate::proto::x25519;

/// Why an exchange failed. Every one of them ends the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KexError {
    /// A record of the exchange that this side may not receive now: from the wrong side, a
    /// Reply without a KeyShare outstanding, a second KeyShare before the Done, ...
    #[error("unexpected {0:?} record")]
    Unexpected(RecordType),
    /// The connector asked to start an exchange while one is in flight.
    #[error("a key exchange is already in flight")]
    InFlight,
    /// A record of the wrong length (the record layer checks it too).
    #[error("malformed {0:?} record")]
    Malformed(RecordType),
    /// The X25519 result is all zero (non-contributory).
    #[error("low-order X25519 key in the key exchange")]
    LowOrderPoint,
    /// The ML-KEM encapsulation key was refused, or the backend failed.
    #[error("ML-KEM-768 key refused in the key exchange")]
    BadMlkemKey,
    /// The record layer refused.
    #[error("{0}")]
    Record(#[from] RecordError),
}

impl From<x25519::LowOrderPoint> for KexError {
    fn from(_: x25519::LowOrderPoint) -> Self {
        KexError::LowOrderPoint
    }
}

impl From<mlkem::BadKey> for KexError {
    fn from(_: mlkem::BadKey) -> Self {
        KexError::BadMlkemKey
    }
}

/// The shared result of one exchange: `fresh = ss_mlkem || dh` (wiped on drop) and the hash of
/// both messages. Each direction derives its next secret from it and its own current one.
pub struct Fresh {
    ikm: Zeroizing<[u8; SS_LEN + 32]>,
    th: [u8; HASH_LEN],
}

impl Fresh {
    /// From the two shared secrets and the two plaintexts.
    pub fn new(ss_mlkem: &[u8; SS_LEN], dh: &[u8; 32], share: &[u8], reply: &[u8]) -> Self {
        let mut ikm = Zeroizing::new([0u8; SS_LEN + 32]);
        ikm[..SS_LEN].copy_from_slice(ss_mlkem);
        ikm[SS_LEN..].copy_from_slice(dh);
        Fresh {
            ikm,
            th: hash(&[share, reply].concat()),
        }
    }

    /// The next secret of direction `dir` from its current secret `s`:
    /// `ExpandLabel(Extract(salt = s, ikm = fresh), "c kex traffic" | "l kex traffic", th, 32)`.
    pub fn next_secret(&self, s: &Secret, dir: Direction) -> Secret {
        let prk = extract(s.expose(), &self.ikm[..]);
        let label = match dir {
            Direction::ConnectorToListener => "c kex traffic",
            Direction::ListenerToConnector => "l kex traffic",
        };
        derive_secret(&prk, label, &self.th)
    }
}

impl std::fmt::Debug for Fresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fresh(..)")
    }
}

/// The connector's side of one exchange, until the Reply: its ephemeral secrets and the
/// KeyShare it sent.
pub struct KeyShareOffer {
    x25519: Zeroizing<[u8; 32]>,
    dk: DecapsulationKey,
    share: Box<[u8; KEY_SHARE_LEN]>,
}

impl KeyShareOffer {
    /// An offer from the X25519 secret scalar `x25519` and the ML-KEM key pair `dk`.
    pub fn new(x25519: [u8; 32], dk: DecapsulationKey) -> Self {
        let x25519 = Zeroizing::new(x25519);
        let mut share = Box::new([0u8; KEY_SHARE_LEN]);
        share[..32].copy_from_slice(&x25519::public_key(&x25519));
        share[32..].copy_from_slice(dk.encapsulation_key());
        KeyShareOffer { x25519, dk, share }
    }

    /// The KeyShare plaintext.
    pub fn message(&self) -> &[u8; KEY_SHARE_LEN] {
        &self.share
    }

    /// The Reply's plaintext opened: decapsulates, computes dh; the exchange's result.
    pub fn finish(self, reply: &[u8]) -> Result<Fresh, KexError> {
        let (x_pub, ct) = split_reply(reply)?;
        let dh = x25519::shared(&self.x25519, x_pub)?;
        let ss = self.dk.decapsulate(ct)?;
        Ok(Fresh::new(ss.as_bytes(), dh.as_bytes(), &self.share[..], reply))
    }
}

fn split_reply(reply: &[u8]) -> Result<(&[u8; 32], &[u8; CT_LEN]), KexError> {
    let bad = KexError::Malformed(RecordType::KeyShareReply);
    let (x, ct) = reply.split_first_chunk::<32>().ok_or(bad)?;
    let ct: &[u8; CT_LEN] = ct.try_into().map_err(|_| bad)?;
    Ok((x, ct))
}

/// The listener's answer to a KeyShare plaintext `share`, with its X25519 secret `x25519`:
/// the Reply plaintext and the exchange's result.
pub fn respond(
    x25519: [u8; 32],
    share: &[u8],
) -> Result<(Box<[u8; KEY_SHARE_REPLY_LEN]>, Fresh), KexError> {
    let bad = KexError::Malformed(RecordType::KeyShare);
    let (_, ek) = share.split_first_chunk::<32>().ok_or(bad)?;
    let ek: &[u8; EK_LEN] = ek.try_into().map_err(|_| bad)?;
    let (ct, ss) = mlkem::encapsulate(ek)?;
    respond_with(x25519, share, &ct, ss.as_bytes())
}

/// [`respond`] with the encapsulation's result given (for vectors: aws-lc-rs draws its own).
pub fn respond_with(
    x25519: [u8; 32],
    share: &[u8],
    ct: &[u8; CT_LEN],
    ss_mlkem: &[u8; SS_LEN],
) -> Result<(Box<[u8; KEY_SHARE_REPLY_LEN]>, Fresh), KexError> {
    let x25519 = Zeroizing::new(x25519);
    let bad = KexError::Malformed(RecordType::KeyShare);
    let (x_peer, ek) = share.split_first_chunk::<32>().ok_or(bad)?;
    if ek.len() != EK_LEN {
        return Err(bad);
    }
    let dh = x25519::shared(&x25519, x_peer)?;
    let mut reply = Box::new([0u8; KEY_SHARE_REPLY_LEN]);
    reply[..32].copy_from_slice(&x25519::public_key(&x25519));
    reply[32..].copy_from_slice(ct);
    let fresh = Fresh::new(ss_mlkem, dh.as_bytes(), share, &reply[..]);
    Ok((reply, fresh))
}

/// Where an exchange stands, for one side. Boxed while in flight: a session between exchanges
/// holds one word here (memory per idle connection).
enum State {
    /// None in flight.
    Idle,
    /// Connector: KeyShare sent, waiting for the Reply.
    AwaitReply(Box<KeyShareOffer>),
    /// Connector: Reply opened (receiving moved), Done not yet sent.
    SendDone(Box<Fresh>),
    /// Listener: KeyShare opened, Reply not yet sent.
    SendReply(Box<[u8; KEY_SHARE_REPLY_LEN]>, Box<Fresh>),
    /// Listener: Reply sent (sending moved), waiting for the Done.
    AwaitDone(Box<Fresh>),
}

/// The hybrid exchange of one session, for one role.
pub struct Kex {
    role: Role,
    state: State,
    completed: u64,
}

impl std::fmt::Debug for Kex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kex")
            .field("role", &self.role)
            .field("in_flight", &self.in_flight())
            .field("completed", &self.completed)
            .finish()
    }
}

impl Kex {
    /// No exchange yet.
    pub fn new(role: Role) -> Self {
        Kex {
            role,
            state: State::Idle,
            completed: 0,
        }
    }

    /// An exchange has started and is not complete (on this side).
    pub fn in_flight(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// Exchanges completed on this side (both directions moved).
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// Connector: starts an exchange with the X25519 secret `x25519` and the ML-KEM key pair
    /// `dk`; returns the sealed KeyShare record to send.
    pub fn initiate(
        &mut self,
        sealer: &mut Sealer,
        x25519: [u8; 32],
        dk: DecapsulationKey,
    ) -> Result<Vec<u8>, KexError> {
        if self.role != Role::Connector {
            return Err(KexError::Unexpected(RecordType::KeyShare));
        }
        if self.in_flight() {
            return Err(KexError::InFlight);
        }
        let offer = KeyShareOffer::new(x25519, dk);
        let record = sealer.seal_key_share(RecordType::KeyShare, offer.message())?;
        self.state = State::AwaitReply(Box::new(offer));
        Ok(record)
    }

    /// A record of the exchange, opened by `opener` (`kind`, `body`). `x25519`: the secret
    /// scalar the listener answers a KeyShare with (drawn by the caller; unused otherwise).
    pub fn receive(
        &mut self,
        opener: &mut Opener,
        kind: RecordType,
        body: &[u8],
        x25519: impl FnOnce() -> [u8; 32],
    ) -> Result<(), KexError> {
        let state = std::mem::replace(&mut self.state, State::Idle);
        self.state = match (self.role, kind, state) {
            (Role::Listener, RecordType::KeyShare, State::Idle) => {
                let (reply, fresh) = respond(x25519(), body)?;
                State::SendReply(reply, Box::new(fresh))
            }
            (Role::Connector, RecordType::KeyShareReply, State::AwaitReply(offer)) => {
                let fresh = offer.finish(body)?;
                // Every record of the listener after its Reply is under the new secret.
                opener.switch_hybrid(|s| fresh.next_secret(s, Direction::ListenerToConnector))?;
                State::SendDone(Box::new(fresh))
            }
            (Role::Listener, RecordType::KeyShareDone, State::AwaitDone(fresh)) => {
                opener.switch_hybrid(|s| fresh.next_secret(s, Direction::ConnectorToListener))?;
                self.completed += 1;
                State::Idle
            }
            _ => return Err(KexError::Unexpected(kind)),
        };
        Ok(())
    }

    /// The record this side must send now, if any, sealed (a listener's Reply, a connector's
    /// Done); its sending direction moves right after it.
    pub fn outgoing(&mut self, sealer: &mut Sealer) -> Result<Option<Vec<u8>>, KexError> {
        let state = std::mem::replace(&mut self.state, State::Idle);
        match state {
            State::SendReply(reply, fresh) => {
                let record = sealer.seal_key_share(RecordType::KeyShareReply, &reply[..])?;
                sealer.switch_hybrid(|s| fresh.next_secret(s, Direction::ListenerToConnector))?;
                self.state = State::AwaitDone(fresh);
                Ok(Some(record))
            }
            State::SendDone(fresh) => {
                let record = sealer.seal_key_share(RecordType::KeyShareDone, &[])?;
                sealer.switch_hybrid(|s| fresh.next_secret(s, Direction::ConnectorToListener))?;
                self.completed += 1;
                Ok(Some(record))
            }
            other => {
                self.state = other;
                Ok(None)
            }
        }
    }

    /// This side has a record to send ([`Kex::outgoing`]).
    pub fn has_outgoing(&self) -> bool {
        matches!(self.state, State::SendReply(..) | State::SendDone(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::record::{Opened, HEADER_LEN, OVERHEAD};

    /// Both ends of a session: the connector's and the listener's record layers and exchanges.
    struct Ends {
        c: (Sealer, Opener, Kex),
        l: (Sealer, Opener, Kex),
    }

    fn ends() -> Ends {
        let (c_ap, l_ap) = (Secret::from_bytes([1; 32]), Secret::from_bytes([2; 32]));
        Ends {
            c: (
                Sealer::new(c_ap.clone(), 1 << 30),
                Opener::new(l_ap.clone()),
                Kex::new(Role::Connector),
            ),
            l: (
                Sealer::new(l_ap, 1 << 30),
                Opener::new(c_ap),
                Kex::new(Role::Listener),
            ),
        }
    }

    fn data(sealer: &mut Sealer, msg: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; msg.len() + OVERHEAD];
        buf[HEADER_LEN..HEADER_LEN + msg.len()].copy_from_slice(msg);
        sealer.seal_data(&mut buf).unwrap();
        buf
    }

    fn x(i: u8) -> [u8; 32] {
        hash(&[b"kex test x25519".as_slice(), &[i]].concat())
    }

    /// Opens `record` at one end and hands a record of the exchange to its `Kex`; the data.
    fn deliver(
        opener: &mut Opener,
        kex: &mut Kex,
        record: &mut [u8],
        xi: u8,
    ) -> Result<Option<Vec<u8>>, KexError> {
        match opener.open(record)? {
            Opened::Data(d) => Ok(Some(d.to_vec())),
            Opened::KeyShare(kind, body) => {
                let body = body.to_vec();
                kex.receive(opener, kind, &body, || x(xi))?;
                Ok(None)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn an_exchange_moves_both_directions_to_fresh_keys_and_records_in_flight_cross() {
        let mut e = ends();
        let before = (
            *e.c.0.dir_secret().expose(),
            *e.l.0.dir_secret().expose(),
        );
        let mut share = e.c.2.initiate(&mut e.c.0, x(1), DecapsulationKey::generate()).unwrap();
        assert_eq!(share[0], 8);
        assert_eq!(share.len(), 4 + KEY_SHARE_LEN + 16);
        // The connector keeps sending under its old key meanwhile.
        let mut d1 = data(&mut e.c.0, b"c before");
        assert_eq!(deliver(&mut e.l.1, &mut e.l.2, &mut share, 2), Ok(None));
        assert!(e.l.2.has_outgoing());
        // The listener's data sealed before its Reply: old key.
        let mut d2 = data(&mut e.l.0, b"l before");
        let mut reply = e.l.2.outgoing(&mut e.l.0).unwrap().unwrap();
        assert_eq!((reply[0], reply.len()), (9, 4 + KEY_SHARE_REPLY_LEN + 16));
        let mut d3 = data(&mut e.l.0, b"l after");
        assert_eq!(deliver(&mut e.l.1, &mut e.l.2, &mut d1, 0).unwrap().unwrap(), b"c before");
        assert_eq!(deliver(&mut e.c.1, &mut e.c.2, &mut d2, 0).unwrap().unwrap(), b"l before");
        assert_eq!(deliver(&mut e.c.1, &mut e.c.2, &mut reply, 0), Ok(None));
        assert_eq!(deliver(&mut e.c.1, &mut e.c.2, &mut d3, 0).unwrap().unwrap(), b"l after");
        let mut d4 = data(&mut e.c.0, b"c before done");
        let mut done = e.c.2.outgoing(&mut e.c.0).unwrap().unwrap();
        assert_eq!((done[0], done.len()), (10, OVERHEAD));
        let mut d5 = data(&mut e.c.0, b"c after");
        assert_eq!(deliver(&mut e.l.1, &mut e.l.2, &mut d4, 0).unwrap().unwrap(), b"c before done");
        assert_eq!(deliver(&mut e.l.1, &mut e.l.2, &mut done, 0), Ok(None));
        assert_eq!(deliver(&mut e.l.1, &mut e.l.2, &mut d5, 0).unwrap().unwrap(), b"c after");
        assert_eq!((e.c.2.completed(), e.l.2.completed()), (1, 1));
        assert!(!e.c.2.in_flight() && !e.l.2.in_flight());
        assert_eq!(
            (e.c.0.hybrid_generation(), e.c.1.hybrid_generation()),
            (1, 1)
        );
        // Both directions changed, and both sides agree on each.
        let after = (*e.c.0.dir_secret().expose(), *e.l.0.dir_secret().expose());
        assert_ne!(after.0, before.0);
        assert_ne!(after.1, before.1);
        assert_eq!(after.0, *e.l.1.dir_secret().expose());
        assert_eq!(after.1, *e.c.1.dir_secret().expose());
        // Not the HKDF ratchet of the old secret: the fresh secrets are in.
        assert_ne!(
            after.0,
            *crate::proto::key_schedule::next_generation(&Secret::from_bytes(before.0)).expose()
        );
        // A second exchange works too, with other ephemerals: other keys again.
        let mut share = e.c.2.initiate(&mut e.c.0, x(3), DecapsulationKey::generate()).unwrap();
        deliver(&mut e.l.1, &mut e.l.2, &mut share, 4).unwrap();
        let mut reply = e.l.2.outgoing(&mut e.l.0).unwrap().unwrap();
        deliver(&mut e.c.1, &mut e.c.2, &mut reply, 0).unwrap();
        let mut done = e.c.2.outgoing(&mut e.c.0).unwrap().unwrap();
        deliver(&mut e.l.1, &mut e.l.2, &mut done, 0).unwrap();
        assert_ne!(*e.c.0.dir_secret().expose(), after.0);
        assert_eq!(*e.c.0.dir_secret().expose(), *e.l.1.dir_secret().expose());
        assert_eq!(*e.l.0.dir_secret().expose(), *e.c.1.dir_secret().expose());
    }

    /// The records of one exchange, with `attack` applied to the list of records in flight
    /// (`stage` 0: the KeyShare, 1: the Reply, 2: the Done; each with a data record before and
    /// after it). Returns Err if any side refused; Ok(true) if both sides ended with the same
    /// keys and every data record delivered intact.
    fn run_attacked(stage: usize, attack: &dyn Fn(&mut Vec<Vec<u8>>)) -> Result<bool, KexError> {
        let mut e = ends();
        // Connector → listener: data, KeyShare, data.
        let mut up = vec![data(&mut e.c.0, b"u0")];
        up.push(e.c.2.initiate(&mut e.c.0, x(1), DecapsulationKey::generate())?);
        up.push(data(&mut e.c.0, b"u1"));
        if stage == 0 {
            attack(&mut up);
        }
        let mut got = Vec::new();
        for r in &mut up {
            got.extend(deliver(&mut e.l.1, &mut e.l.2, r, 2)?);
        }
        let mut down = vec![data(&mut e.l.0, b"d0")];
        down.extend(e.l.2.outgoing(&mut e.l.0)?);
        down.push(data(&mut e.l.0, b"d1"));
        if stage == 1 {
            attack(&mut down);
        }
        for r in &mut down {
            got.extend(deliver(&mut e.c.1, &mut e.c.2, r, 0)?);
        }
        let mut up = vec![data(&mut e.c.0, b"u2")];
        up.extend(e.c.2.outgoing(&mut e.c.0)?);
        up.push(data(&mut e.c.0, b"u3"));
        if stage == 2 {
            attack(&mut up);
        }
        for r in &mut up {
            got.extend(deliver(&mut e.l.1, &mut e.l.2, r, 0)?);
        }
        // A record each way under the keys both sides now hold.
        let mut r = data(&mut e.l.0, b"d2");
        got.extend(deliver(&mut e.c.1, &mut e.c.2, &mut r, 0)?);
        let mut r = data(&mut e.c.0, b"u4");
        got.extend(deliver(&mut e.l.1, &mut e.l.2, &mut r, 0)?);
        let same = *e.c.0.dir_secret().expose() == *e.l.1.dir_secret().expose()
            && *e.l.0.dir_secret().expose() == *e.c.1.dir_secret().expose();
        let all: Vec<&[u8]> = got.iter().map(|v| v.as_slice()).collect();
        let intact = all == [b"u0", b"u1", b"d0", b"d1", b"u2", b"u3", b"d2", b"u4"];
        Ok(same && intact && e.c.2.completed() == 1 && e.l.2.completed() == 1)
    }

    #[test]
    fn the_exchange_untouched_completes() {
        assert_eq!(run_attacked(0, &|_| {}), Ok(true));
    }

    /// Drop, replay, reorder, tamper every byte of each record of the exchange: a side refuses,
    /// never two sides that go on with different keys.
    /// An attack on the records in flight.
    type Attack = Box<dyn Fn(&mut Vec<Vec<u8>>)>;

    #[test]
    fn drop_replay_reorder_or_tamper_any_exchange_record_is_refused() {
        for stage in 0..3 {
            let name = ["KeyShare", "Reply", "Done"][stage];
            let attacks: Vec<(&str, Attack)> = vec![
                ("drop", Box::new(|v: &mut Vec<Vec<u8>>| {
                    v.remove(1);
                })),
                ("replay", Box::new(|v: &mut Vec<Vec<u8>>| {
                    let r = v[1].clone();
                    v.insert(2, r);
                })),
                ("replay later", Box::new(|v: &mut Vec<Vec<u8>>| {
                    let r = v[1].clone();
                    v.push(r);
                })),
                ("reorder before", Box::new(|v: &mut Vec<Vec<u8>>| v.swap(0, 1))),
                ("reorder after", Box::new(|v: &mut Vec<Vec<u8>>| v.swap(1, 2))),
            ];
            for (what, attack) in &attacks {
                assert!(run_attacked(stage, attack.as_ref()).is_err(), "{what} {name}");
            }
            let len = match stage {
                0 => KEY_SHARE_LEN,
                1 => KEY_SHARE_REPLY_LEN,
                _ => 0,
            } + OVERHEAD;
            for i in 0..len {
                let r = run_attacked(stage, &|v: &mut Vec<Vec<u8>>| v[1][i] ^= 0x01);
                assert!(r.is_err(), "flipped byte {i} of the {name}: {r:?}");
            }
        }
    }

    #[test]
    fn out_of_place_exchange_records_are_refused() {
        // A KeyShare from the listener, a Reply to the listener, a Done to the connector, a
        // Reply without a KeyShare, a second KeyShare before the Done.
        let mut e = ends();
        let share = KeyShareOffer::new(x(1), DecapsulationKey::generate());
        let body = share.message().to_vec();
        assert_eq!(
            e.c.2.receive(&mut e.c.1, RecordType::KeyShare, &body, || x(2)),
            Err(KexError::Unexpected(RecordType::KeyShare))
        );
        let reply = [0u8; KEY_SHARE_REPLY_LEN];
        assert_eq!(
            Kex::new(Role::Listener).receive(&mut e.l.1, RecordType::KeyShareReply, &reply, || x(2)),
            Err(KexError::Unexpected(RecordType::KeyShareReply))
        );
        assert_eq!(
            Kex::new(Role::Connector).receive(&mut e.c.1, RecordType::KeyShareReply, &reply, || x(2)),
            Err(KexError::Unexpected(RecordType::KeyShareReply)),
            "a Reply without a KeyShare outstanding"
        );
        assert_eq!(
            Kex::new(Role::Connector).receive(&mut e.c.1, RecordType::KeyShareDone, &[], || x(2)),
            Err(KexError::Unexpected(RecordType::KeyShareDone))
        );
        assert_eq!(
            Kex::new(Role::Listener).receive(&mut e.l.1, RecordType::KeyShareDone, &[], || x(2)),
            Err(KexError::Unexpected(RecordType::KeyShareDone)),
            "a Done without an exchange"
        );
        let mut l = Kex::new(Role::Listener);
        l.receive(&mut e.l.1, RecordType::KeyShare, &body, || x(2)).unwrap();
        assert_eq!(
            l.receive(&mut e.l.1, RecordType::KeyShare, &body, || x(3)),
            Err(KexError::Unexpected(RecordType::KeyShare)),
            "a second KeyShare before the Reply"
        );
        let mut l = Kex::new(Role::Listener);
        l.receive(&mut e.l.1, RecordType::KeyShare, &body, || x(2)).unwrap();
        l.outgoing(&mut e.l.0).unwrap().unwrap();
        assert_eq!(
            l.receive(&mut e.l.1, RecordType::KeyShare, &body, || x(3)),
            Err(KexError::Unexpected(RecordType::KeyShare)),
            "a second KeyShare before the Done"
        );
        // The listener never initiates; the connector not twice at once.
        assert_eq!(
            Kex::new(Role::Listener).initiate(&mut e.l.0, x(1), DecapsulationKey::generate()),
            Err(KexError::Unexpected(RecordType::KeyShare))
        );
        let mut c = Kex::new(Role::Connector);
        c.initiate(&mut e.c.0, x(1), DecapsulationKey::generate()).unwrap();
        assert_eq!(
            c.initiate(&mut e.c.0, x(1), DecapsulationKey::generate()),
            Err(KexError::InFlight)
        );
        // Wrong lengths: neither sealed nor opened.
        for (kind, len) in [
            (RecordType::KeyShare, KEY_SHARE_LEN - 1),
            (RecordType::KeyShareReply, KEY_SHARE_REPLY_LEN + 1),
            (RecordType::KeyShareDone, 1),
        ] {
            assert_eq!(
                e.c.0.seal_key_share(kind, &vec![0; len]),
                Err(RecordError::Malformed(kind))
            );
        }
        // A non-contributory X25519 key: refused on either side.
        let mut zero_share = body.clone();
        zero_share[..32].fill(0);
        assert_eq!(
            Kex::new(Role::Listener).receive(&mut e.l.1, RecordType::KeyShare, &zero_share, || x(2)),
            Err(KexError::LowOrderPoint)
        );
        let offer = KeyShareOffer::new(x(1), DecapsulationKey::generate());
        let (mut reply, _) = respond(x(2), offer.message()).unwrap();
        reply[..32].fill(0);
        assert_eq!(offer.finish(&reply[..]).err(), Some(KexError::LowOrderPoint));
    }

    #[test]
    fn exchange_records_pass_between_streams_and_never_after_an_alert() {
        let mut e = ends();
        let mut close = [0u8; OVERHEAD];
        e.c.0.seal_close(&mut close).unwrap();
        assert_eq!(e.l.1.open(&mut close), Ok(Opened::Close));
        e.l.0.seal_close(&mut close).unwrap();
        assert_eq!(e.c.1.open(&mut close), Ok(Opened::Close));
        // Between streams: a whole exchange, then the next stream starts as usual.
        let mut share = e.c.2.initiate(&mut e.c.0, x(1), DecapsulationKey::generate()).unwrap();
        deliver(&mut e.l.1, &mut e.l.2, &mut share, 2).unwrap();
        let mut reply = e.l.2.outgoing(&mut e.l.0).unwrap().unwrap();
        deliver(&mut e.c.1, &mut e.c.2, &mut reply, 0).unwrap();
        let mut done = e.c.2.outgoing(&mut e.c.0).unwrap().unwrap();
        deliver(&mut e.l.1, &mut e.l.2, &mut done, 0).unwrap();
        assert!(e.c.0.is_closed() && e.l.1.is_closed(), "still between streams");
        let mut info = vec![0u8; 3 + OVERHEAD];
        info[HEADER_LEN..HEADER_LEN + 3].copy_from_slice(b"two");
        e.c.0.seal_stream_info(&mut info).unwrap();
        assert_eq!(e.l.1.open_stream_info(&mut info).unwrap(), b"two");
        // After an Alert, nothing.
        let mut e = ends();
        let alert = crate::proto::record::Alert::new(
            crate::proto::record::AlertCode::ForwardUnreachable,
            b"",
        );
        let mut a = e.l.0.seal_alert(&alert).unwrap();
        assert!(matches!(e.c.1.open(&mut a), Ok(Opened::Alert(_))));
        assert_eq!(
            e.l.0.seal_key_share(RecordType::KeyShareDone, &[]),
            Err(RecordError::AfterClose)
        );
        // (The listener's next record, as its sealer would have made it.)
        let mut evil = Sealer::new(Secret::from_bytes([2; 32]), 1 << 30);
        let _first = data(&mut evil, b"x");
        let mut r = evil
            .seal_key_share(RecordType::KeyShareReply, &[0; KEY_SHARE_REPLY_LEN])
            .unwrap();
        assert_eq!(e.c.1.open(&mut r), Err(RecordError::AfterClose));
    }
}
