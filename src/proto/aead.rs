//! The AEAD seam: ChaCha20-Poly1305 sealing and opening in place, with a detached tag.
//!
//! Everything that encrypts goes through [`Aead`]. It is aws-lc-rs' ChaCha20-Poly1305, measured
//! 1.9x (64 KiB) to 3.5x (1 KiB) faster here than the RustCrypto `chacha20poly1305` crate
//! (`bench/RESULTS.md`). `RustCryptoAead` (unit tests and the `testing` feature only) is the same
//! algorithm from RustCrypto, kept behind the same interface so that each is tested against the
//! other (same bytes on the wire) and benchmarked side by side.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce as LcNonce, UnboundKey, CHACHA20_POLY1305};
#[cfg(any(test, feature = "testing"))]
use chacha20poly1305::aead::{AeadInOut, KeyInit};
#[cfg(any(test, feature = "testing"))]
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};

/// Key length of ChaCha20-Poly1305.
pub const KEY_LEN: usize = 32;
/// Nonce length of ChaCha20-Poly1305.
pub const NONCE_LEN: usize = 12;
/// Authentication tag length.
pub(crate) const TAG_LEN: usize = 16;

/// The AEAD failed to authenticate a ciphertext (or, when sealing, the input was too long).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed")]
pub struct AeadError;

/// A ChaCha20-Poly1305 key (aws-lc-rs), ready to use; aws-lc cleanses the key on drop.
pub struct Aead(LessSafeKey);

impl Aead {
    /// A cipher under `key`.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        // A 32-byte key is the only thing `UnboundKey::new` checks for ChaCha20-Poly1305.
        let key = UnboundKey::new(&CHACHA20_POLY1305, key).unwrap_or_else(|_| unreachable!());
        Aead(LessSafeKey::new(key))
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        let tag = self
            .0
            .seal_in_place_separate_tag(LcNonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
            .map_err(|_| AeadError)?;
        tag.as_ref().try_into().map_err(|_| AeadError)
    }

    /// Checks `tag` and decrypts `buf` in place; on failure `buf` holds no plaintext.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        self.0
            .open_in_place_separate_tag(
                LcNonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                tag,
                buf,
            )
            .map(|_| ())
            .map_err(|_| AeadError)
    }
}

/// The same AEAD from the RustCrypto `chacha20poly1305` crate (key zeroized on drop): the
/// reference [`Aead`] is tested and benchmarked against. Only in the unit tests and with the
/// `testing` feature: a normal build does not compile `chacha20poly1305`.
#[cfg(any(test, feature = "testing"))]
pub struct RustCryptoAead(ChaCha20Poly1305);

#[cfg(any(test, feature = "testing"))]
impl RustCryptoAead {
    /// A cipher under `key`.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        RustCryptoAead(ChaCha20Poly1305::new(key.into()))
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        let tag = self
            .0
            .encrypt_inout_detached(&Nonce::from(*nonce), aad, buf.into())
            .map_err(|_| AeadError)?;
        Ok(tag.into())
    }

    /// Checks `tag` and decrypts `buf` in place; on failure `buf` is left as ciphertext.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        self.0
            .decrypt_inout_detached(&Nonce::from(*nonce), aad, buf.into(), &Tag::from(*tag))
            .map_err(|_| AeadError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both implementations give the same bytes, and each opens what the other sealed.
    #[test]
    fn implementations_agree() {
        for (i, len) in [0usize, 1, 15, 16, 17, 63, 64, 65, 1000, 16 * 1024, 65536]
            .into_iter()
            .enumerate()
        {
            let key: [u8; 32] = core::array::from_fn(|k| (k * 7 + i) as u8);
            let nonce: [u8; 12] = core::array::from_fn(|k| (k * 13 + i) as u8);
            let aad = [i as u8, 1, 2, 3];
            let plain: Vec<u8> = (0..len).map(|k| (k * 31 + i) as u8).collect();
            let (lc, rc) = (Aead::new(&key), RustCryptoAead::new(&key));
            let (mut a, mut b) = (plain.clone(), plain.clone());
            let ta = lc.seal_in_place(&nonce, &aad, &mut a).unwrap();
            let tb = rc.seal_in_place(&nonce, &aad, &mut b).unwrap();
            assert_eq!((&a, ta), (&b, tb), "length {len}");
            rc.open_in_place(&nonce, &aad, &mut a, &ta).unwrap();
            lc.open_in_place(&nonce, &aad, &mut b, &tb).unwrap();
            assert_eq!((&a, &b), (&plain, &plain));
            let mut bad = ta;
            bad[15] ^= 1;
            let mut c = plain.clone();
            let tc = lc.seal_in_place(&nonce, &aad, &mut c).unwrap();
            assert_eq!(tc, ta);
            assert_eq!(lc.open_in_place(&nonce, &aad, &mut c, &bad), Err(AeadError));
        }
    }

    /// RFC 8439 §2.8.2 test vector.
    #[test]
    fn rfc8439_vector() {
        let key: [u8; 32] = core::array::from_fn(|i| 0x80 + i as u8);
        let nonce = [
            0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47,
        ];
        let aad = [
            0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
        ];
        let mut buf = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".to_vec();
        let aead = Aead::new(&key);
        let mut other = buf.clone();
        let tag = aead.seal_in_place(&nonce, &aad, &mut buf).unwrap();
        assert_eq!(
            RustCryptoAead::new(&key)
                .seal_in_place(&nonce, &aad, &mut other)
                .unwrap(),
            tag
        );
        assert_eq!(&buf[..4], &[0xd3, 0x1a, 0x8d, 0x34]);
        assert_eq!(
            tag,
            [
                0x1a, 0xe1, 0x0b, 0x59, 0x4f, 0x09, 0xe2, 0x6a, 0x7e, 0x90, 0x2e, 0xcb, 0xd0, 0x60,
                0x06, 0x91
            ]
        );
        aead.open_in_place(&nonce, &aad, &mut buf, &tag).unwrap();
        assert!(buf.starts_with(b"Ladies"));
        let mut bad = tag;
        bad[0] ^= 1;
        assert_eq!(
            aead.open_in_place(&nonce, &aad, &mut buf, &bad),
            Err(AeadError)
        );
    }
}
