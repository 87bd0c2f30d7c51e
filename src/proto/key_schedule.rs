//! The key schedule (HKDF-SHA256, shaped like TLS 1.3's) and the per-direction rekey ratchet.
//!
//! ```text
//! early     = Extract(salt = 0^32, ikm = psk or 0^32)
//! hs        = Extract(salt = ExpandLabel(early, "derived", H(""), 32),
//!                     ikm = ss_mlkem || X25519(e_c, e_l))
//! c_hs, l_hs= ExpandLabel(hs, "c hs traffic" | "l hs traffic", H(hellos), 32)
//! master    = Extract(salt = ExpandLabel(hs, "derived", H(""), 32), ikm = 0^32)
//! c_ap, l_ap= ExpandLabel(master, "c ap traffic" | "l ap traffic", H(transcript), 32)
//! res       = ExpandLabel(master, "res master", H(transcript), 32)
//! key, iv   = ExpandLabel(secret, "key", "", 32), ExpandLabel(secret, "iv", "", 12)
//! fin key   = ExpandLabel(c_hs | l_hs, "finished", "", 32)
//! next gen  = ExpandLabel(secret, "traffic upd", "", 32)
//! ```
//!
//! `ExpandLabel(secret, label, ctx, len)` is HKDF-Expand with info
//! `u16(len) || u8(len("sealpipe2 " + label)) || "sealpipe2 " + label || u8(len(ctx)) || ctx`.
//!
//! Extract's pseudorandom keys are returned as [`Secret`]s and HKDF's internal copies live in
//! `Zeroizing` buffers or in `hmac`'s state, which wipes itself (its `zeroize` feature).

use crate::proto::aead::{Aead, KEY_LEN, NONCE_LEN};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of SHA-256 output, of every secret and of finished MACs.
pub(crate) const HASH_LEN: usize = 32;
/// The prefix of every HKDF label: it carries the protocol version.
pub(crate) const LABEL_PREFIX: &[u8] = b"sealpipe2 ";

/// A 32-byte secret, zeroized on drop. Never printed; compared in constant time only. Its bytes
/// live on the heap, written there in place by the derivations: moving a `Secret` (returning
/// one, storing one) copies a pointer, never the secret, so no stale copy is left on the stack.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret(Box<[u8; HASH_LEN]>);

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0[..], &other.0[..])
    }
}

impl Eq for Secret {}

impl Secret {
    /// Wraps raw bytes (for test vectors and the PSK).
    pub fn from_bytes(bytes: [u8; HASH_LEN]) -> Self {
        let mut bytes = bytes;
        let secret = Secret(Box::new(bytes));
        bytes.zeroize();
        secret
    }

    /// The raw bytes; handle with care. Crate-private: the API gives no way to read a secret
    /// out, except with the `testing` feature (the test vectors and fuzz targets).
    #[cfg(not(feature = "testing"))]
    pub(crate) fn expose(&self) -> &[u8; HASH_LEN] {
        &self.0
    }

    /// The raw bytes; handle with care (public with the `testing` feature only).
    #[cfg(feature = "testing")]
    pub fn expose(&self) -> &[u8; HASH_LEN] {
        &self.0
    }
}

impl Secret {
    /// All zero, to be written in place.
    fn zero() -> Self {
        Secret(Box::new([0u8; HASH_LEN]))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The optional pre-shared key, mixed into the early secret (as WireGuard's psk).
pub type Psk = Secret;

/// SHA-256 of `data`.
pub fn hash(data: &[u8]) -> [u8; HASH_LEN] {
    Sha256::digest(data).into()
}

/// HKDF-Extract.
pub(crate) fn extract(salt: &[u8], ikm: &[u8]) -> Secret {
    let (mut prk, hk) = Hkdf::<Sha256>::extract(Some(salt), ikm);
    drop(hk);
    let mut out = Secret::zero();
    out.0.copy_from_slice(&prk);
    prk.as_mut_slice().zeroize();
    out
}

/// HKDF-Expand with a sealpipe label (see the module documentation for the exact info).
pub fn expand_label(secret: &Secret, label: &str, context: &[u8], out: &mut [u8]) {
    debug_assert!(out.len() <= 255 * HASH_LEN && context.len() <= 255);
    let full_label_len = LABEL_PREFIX.len() + label.len();
    let out_len = (out.len() as u16).to_be_bytes();
    let info: [&[u8]; 6] = [
        &out_len,
        &[full_label_len as u8],
        LABEL_PREFIX,
        label.as_bytes(),
        &[context.len() as u8],
        context,
    ];
    // The PRK is a full-length HMAC key, and every output here is far below 255 blocks: no error.
    let hk = Hkdf::<Sha256>::from_prk(&secret.0[..]).unwrap_or_else(|_| unreachable!());
    hk.expand_multi_info(&info, out)
        .unwrap_or_else(|_| unreachable!());
}

/// A 32-byte [`expand_label`].
pub(crate) fn derive_secret(secret: &Secret, label: &str, context: &[u8]) -> Secret {
    // Expanded straight into the secret's own buffer: no copy on the stack.
    let mut out = Secret::zero();
    expand_label(secret, label, context, &mut out.0[..]);
    out
}

/// HMAC-SHA256.
pub fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Constant-time equality of two byte strings (lengths are not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Which way traffic flows under a secret; the labels keep the two directions apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Connector to listener.
    ConnectorToListener,
    /// Listener to connector.
    ListenerToConnector,
}

impl Direction {
    fn hs_label(self) -> &'static str {
        match self {
            Direction::ConnectorToListener => "c hs traffic",
            Direction::ListenerToConnector => "l hs traffic",
        }
    }

    fn ap_label(self) -> &'static str {
        match self {
            Direction::ConnectorToListener => "c ap traffic",
            Direction::ListenerToConnector => "l ap traffic",
        }
    }
}

/// The handshake stage of the schedule: made from the PSK and the X25519 shared secret.
pub struct HandshakeSecrets {
    hs: Secret,
}

impl HandshakeSecrets {
    /// `early` from the PSK, then `hs` from the ML-KEM-768 and the X25519 shared secrets, in
    /// that order (`ikm = ss_mlkem || dh`, as X25519MLKEM768 orders them).
    pub fn new(psk: Option<&Psk>, ss_mlkem: &[u8; 32], dh: &[u8; 32]) -> Self {
        let zero = [0u8; HASH_LEN];
        let early = extract(&zero, psk.map_or(&zero, |p| p.expose()));
        let salt = derive_secret(&early, "derived", &hash(b""));
        let mut ikm = Zeroizing::new([0u8; 64]);
        ikm[..32].copy_from_slice(ss_mlkem);
        ikm[32..].copy_from_slice(dh);
        HandshakeSecrets {
            hs: extract(salt.expose(), &ikm[..]),
        }
    }

    /// The handshake traffic secret of one direction, bound to the hash of both hellos.
    pub fn traffic(&self, dir: Direction, hellos_hash: &[u8; HASH_LEN]) -> Secret {
        derive_secret(&self.hs, dir.hs_label(), hellos_hash)
    }

    /// The master secret, from which the application secrets come.
    pub fn master(&self) -> MasterSecret {
        let salt = derive_secret(&self.hs, "derived", &hash(b""));
        MasterSecret(extract(salt.expose(), &[0u8; HASH_LEN]))
    }
}

/// The master secret: application traffic secrets and the resumption secret.
pub struct MasterSecret(Secret);

impl MasterSecret {
    /// The first-generation application traffic secret of one direction.
    pub fn traffic(&self, dir: Direction, transcript_hash: &[u8; HASH_LEN]) -> Secret {
        derive_secret(&self.0, dir.ap_label(), transcript_hash)
    }

    /// The ticket secret for later resumptions (`crate::proto::resume`).
    pub fn resumption(&self, transcript_hash: &[u8; HASH_LEN]) -> Secret {
        derive_secret(&self.0, "res master", transcript_hash)
    }
}

/// The key that a finished MAC is made with, from a handshake traffic secret.
pub fn finished_key(hs_traffic: &Secret) -> Secret {
    derive_secret(hs_traffic, "finished", b"")
}

/// The next generation of a traffic secret: a one-way ratchet.
pub(crate) fn next_generation(secret: &Secret) -> Secret {
    derive_secret(secret, "traffic upd", b"")
}

/// The AEAD key and IV of one traffic secret, and the nonce for each sequence number.
pub struct TrafficKey {
    aead: Aead,
    iv: Zeroizing<[u8; NONCE_LEN]>,
}

impl TrafficKey {
    /// key = ExpandLabel(secret, "key"), iv = ExpandLabel(secret, "iv").
    pub fn new(secret: &Secret) -> Self {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        expand_label(secret, "key", b"", &mut key[..]);
        let mut iv = Zeroizing::new([0u8; NONCE_LEN]);
        expand_label(secret, "iv", b"", &mut iv[..]);
        TrafficKey {
            aead: Aead::new(&key),
            iv,
        }
    }

    /// The cipher.
    pub fn aead(&self) -> &Aead {
        &self.aead
    }

    /// nonce = iv XOR (0^4 || u64be(seq)), as in TLS 1.3.
    pub fn nonce(&self, seq: u64) -> [u8; NONCE_LEN] {
        let mut nonce = *self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Secret hygiene (review finding 7): the SHA-256 state that hashes a PSK (mac1's key, a
    /// ticket context) wipes itself when dropped (sha2's `zeroize` feature);
    /// and a [`Secret`] is a pointer to its bytes, so returning one by value (every
    /// derivation) moves no secret bytes through the stack.
    #[test]
    fn hash_states_wipe_themselves_and_secrets_move_by_pointer() {
        fn wipes_on_drop<T: ZeroizeOnDrop>() {}
        wipes_on_drop::<Sha256>();
        wipes_on_drop::<Secret>();
        assert_eq!(std::mem::size_of::<Secret>(), std::mem::size_of::<usize>());
        let s = derive_secret(&Secret::from_bytes([1; 32]), "x", b"");
        let p = s.expose().as_ptr();
        let moved = s;
        assert_eq!(moved.expose().as_ptr(), p, "moved without copying the bytes");
    }

    #[test]
    fn labels_separate_directions_and_generations() {
        let hs = HandshakeSecrets::new(None, &[6u8; 32], &[7u8; 32]);
        let h = hash(b"hellos");
        let c = hs.traffic(Direction::ConnectorToListener, &h);
        let l = hs.traffic(Direction::ListenerToConnector, &h);
        assert_ne!(c, l);
        let m = hs.master();
        let cap = m.traffic(Direction::ConnectorToListener, &h);
        assert_ne!(cap, c);
        assert_ne!(next_generation(&cap), cap);
        assert_ne!(
            next_generation(&cap),
            m.traffic(Direction::ListenerToConnector, &h)
        );
    }

    #[test]
    fn psk_changes_every_secret() {
        let h = hash(b"x");
        let without = HandshakeSecrets::new(None, &[6u8; 32], &[7u8; 32])
            .traffic(Direction::ConnectorToListener, &h);
        let psk = Secret::from_bytes([1u8; 32]);
        let with = HandshakeSecrets::new(Some(&psk), &[6u8; 32], &[7u8; 32])
            .traffic(Direction::ConnectorToListener, &h);
        assert_ne!(without, with);
        // Either shared secret changes it too (the hybrid).
        for (kem, dh) in [([5u8; 32], [7u8; 32]), ([6u8; 32], [8u8; 32])] {
            let other =
                HandshakeSecrets::new(None, &kem, &dh).traffic(Direction::ConnectorToListener, &h);
            assert_ne!(without, other);
        }
    }

    #[test]
    fn nonce_xors_sequence_into_iv_tail() {
        let k = TrafficKey::new(&Secret::from_bytes([3u8; 32]));
        let n0 = k.nonce(0);
        let n1 = k.nonce(1);
        assert_eq!(n0[..11], n1[..11]);
        assert_eq!(n0[11] ^ n1[11], 1);
        assert_eq!(n0[..4], k.nonce(u64::MAX)[..4]);
    }

    /// RFC 5869 test case 1 pins the HKDF primitive.
    #[test]
    fn hkdf_rfc5869_case1() {
        let prk = extract(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], &[0x0b; 22]);
        assert_eq!(
            prk.expose()[..8],
            [0x07, 0x77, 0x09, 0x36, 0x2c, 0x2e, 0x32, 0xdf]
        );
    }
}
