//! ML-KEM-768 (FIPS 203) for the hybrid key exchange of the full handshake (PROTOCOL.md §3):
//! aws-lc-rs does the arithmetic, behind these few functions, as `proto::x25519` does for
//! X25519. The connector makes a fresh [`DecapsulationKey`] for every hello and sends its
//! encapsulation key; the listener [`encapsulate`]s to it and sends the ciphertext; the
//! connector decapsulates once and drops the key.
//!
//! aws-lc-rs draws ML-KEM's randomness (key generation, encapsulation) from its own RNG, not from
//! the caller (see `proto`'s module docs). The fixed-key decapsulation
//! (`DecapsulationKey::from_bytes`, with the `testing` feature) is what the vectors use.

use aws_lc_rs::kem::{self, Ciphertext, ML_KEM_768};
use zeroize::Zeroizing;

/// Bytes of an ML-KEM-768 encapsulation key.
pub const EK_LEN: usize = 1184;
/// Bytes of an ML-KEM-768 ciphertext.
pub const CT_LEN: usize = 1088;
/// Bytes of an ML-KEM-768 decapsulation key (its encoding, for fixed test keys).
#[cfg(any(test, feature = "testing"))]
pub const DK_LEN: usize = 2400;
/// Bytes of the shared secret.
pub(crate) const SS_LEN: usize = 32;

/// An encapsulation key was refused (FIPS 203's modulus check), or the backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ML-KEM-768 encapsulation key rejected")]
pub struct BadKey;

/// A shared secret, zeroized on drop.
pub struct SharedSecret(Zeroizing<[u8; SS_LEN]>);

impl SharedSecret {
    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; SS_LEN] {
        &self.0
    }
}

fn shared_from(bytes: &[u8]) -> Result<SharedSecret, BadKey> {
    let mut out = Zeroizing::new([0u8; SS_LEN]);
    if bytes.len() != SS_LEN {
        return Err(BadKey);
    }
    out.copy_from_slice(bytes);
    Ok(SharedSecret(out))
}

/// A connector's ML-KEM-768 decapsulation key (aws-lc-rs frees and wipes it on drop).
pub struct DecapsulationKey {
    key: kem::DecapsulationKey,
    ek: Box<[u8; EK_LEN]>,
}

impl DecapsulationKey {
    /// A fresh key pair from aws-lc-rs's RNG.
    ///
    /// # Panics
    /// If aws-lc-rs cannot generate a key: only when its RNG fails, and aws-lc aborts the process
    /// on an RNG failure before that.
    pub fn generate() -> Self {
        kem::DecapsulationKey::generate(&ML_KEM_768)
            .ok()
            .and_then(Self::wrap)
            .unwrap_or_else(|| panic!("ML-KEM-768 key generation failed"))
    }

    /// The key of a fixed encoding (`DK_LEN` bytes: dk_pke ‖ ek ‖ H(ek) ‖ z), for vectors.
    #[cfg(any(test, feature = "testing"))]
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let key = kem::DecapsulationKey::new(&ML_KEM_768, bytes).ok()?;
        // FIPS 203: dk = dk_pke (384·k = 1152 bytes) ‖ ek ‖ H(ek) ‖ z.
        let ek: Box<[u8; EK_LEN]> = Box::new(bytes.get(1152..1152 + EK_LEN)?.try_into().ok()?);
        Some(DecapsulationKey { key, ek })
    }

    fn wrap(key: kem::DecapsulationKey) -> Option<Self> {
        let ek = key.encapsulation_key().ok()?.key_bytes().ok()?;
        let ek: Box<[u8; EK_LEN]> = Box::new(ek.as_ref().try_into().ok()?);
        Some(DecapsulationKey { key, ek })
    }

    /// The encapsulation key, sent in the hello.
    pub fn encapsulation_key(&self) -> &[u8; EK_LEN] {
        &self.ek
    }

    /// Decapsulates `ct` and drops the key. ML-KEM rejects implicitly: a wrong ciphertext gives
    /// a pseudorandom secret (the handshake then fails at the listener's auth message), so
    /// this fails only if the backend does.
    pub fn decapsulate(self, ct: &[u8; CT_LEN]) -> Result<SharedSecret, BadKey> {
        let ss = self
            .key
            .decapsulate(Ciphertext::from(&ct[..]))
            .map_err(|_| BadKey)?;
        shared_from(ss.as_ref())
    }
}

/// Encapsulates to the peer's `ek`: the ciphertext to send and the shared secret.
pub fn encapsulate(ek: &[u8; EK_LEN]) -> Result<(Box<[u8; CT_LEN]>, SharedSecret), BadKey> {
    let key = kem::EncapsulationKey::new(&ML_KEM_768, ek).map_err(|_| BadKey)?;
    let (ct, ss) = key.encapsulate().map_err(|_| BadKey)?;
    let ct: Box<[u8; CT_LEN]> = Box::new(ct.as_ref().try_into().map_err(|_| BadKey)?);
    Ok((ct, shared_from(ss.as_ref())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_sizes() {
        let dk = DecapsulationKey::generate();
        let ek = *dk.encapsulation_key();
        let (ct, ss) = encapsulate(&ek).unwrap();
        assert_eq!(dk.decapsulate(&ct).unwrap().as_bytes(), ss.as_bytes());
    }

    #[test]
    fn a_wrong_ciphertext_gives_another_secret() {
        let dk = DecapsulationKey::generate();
        let (mut ct, ss) = encapsulate(dk.encapsulation_key()).unwrap();
        ct[0] ^= 1;
        assert_ne!(dk.decapsulate(&ct).unwrap().as_bytes(), ss.as_bytes());
    }

    #[test]
    fn an_encapsulation_key_out_of_range_is_refused() {
        // Coefficients are 12-bit values below q = 3329: all-ones bytes break the modulus check.
        assert_eq!(encapsulate(&[0xff; EK_LEN]).err(), Some(BadKey));
    }
}
