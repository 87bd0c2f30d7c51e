//! X25519 for the handshakes' ephemeral exchanges: aws-lc-rs does the arithmetic (about 2.3×
//! the speed of x25519-dalek on this project's machines, measured in bench/RESULTS.md), and
//! x25519-dalek, the reference implementation (a dev-dependency), cross-checks it byte for byte
//! in the unit tests below. A non-contributory (all-zero) result is refused.

use aws_lc_rs::agreement::{agree, PrivateKey, UnparsedPublicKey, X25519};
use zeroize::Zeroizing;

/// The peer's public key gives an all-zero shared secret (a low-order point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("peer ephemeral key is a low-order point (non-contributory)")]
pub struct LowOrderPoint;

/// A shared secret, zeroized on drop.
pub struct SharedSecret(Zeroizing<[u8; 32]>);

impl SharedSecret {
    /// The 32 bytes.
    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The public key of the secret scalar `secret`.
pub fn public_key(secret: &[u8; 32]) -> [u8; 32] {
    let fast = PrivateKey::from_private_key(&X25519, secret)
        .ok()
        .and_then(|k| k.compute_public_key().ok())
        .and_then(|p| <[u8; 32]>::try_from(p.as_ref()).ok());
    // aws-lc-rs accepts every 32-byte scalar, so this never fails. Were it to, the all-zero key
    // is refused by every peer as a low-order point: the handshake fails, nothing panics.
    fast.unwrap_or([0; 32])
}

#[cfg(test)]
thread_local! {
    /// [`shared`] calls made by this thread (unit tests only): a test that a message costs no
    /// X25519 reads it before and after.
    static SHARED_CALLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The [`shared`] calls this thread has made (unit tests only).
#[cfg(test)]
pub(crate) fn shared_calls() -> u64 {
    SHARED_CALLS.with(std::cell::Cell::get)
}

/// X25519(`secret`, `peer`), refusing an all-zero result.
pub fn shared(secret: &[u8; 32], peer: &[u8; 32]) -> Result<SharedSecret, LowOrderPoint> {
    #[cfg(test)]
    SHARED_CALLS.with(|c| c.set(c.get() + 1));
    let key = PrivateKey::from_private_key(&X25519, secret).map_err(|_| LowOrderPoint)?;
    // aws-lc refuses an all-zero output itself; the check below does not rely on it.
    let out = agree(
        &key,
        UnparsedPublicKey::new(&X25519, peer),
        LowOrderPoint,
        |k| {
            let mut out = Zeroizing::new([0u8; 32]);
            if k.len() != 32 {
                return Err(LowOrderPoint);
            }
            out.copy_from_slice(k);
            Ok(out)
        },
    )?;
    let zero = out.iter().fold(0u8, |acc, b| acc | b) == 0;
    if zero {
        return Err(LowOrderPoint);
    }
    Ok(SharedSecret(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// x25519-dalek's public key, the reference the tests compare [`public_key`] with.
    fn reference_public_key(secret: &[u8; 32]) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*secret)).to_bytes()
    }

    /// x25519-dalek's shared secret (`None` if non-contributory), the reference for [`shared`].
    fn reference_shared(secret: &[u8; 32], peer: &[u8; 32]) -> Option<[u8; 32]> {
        let s = x25519_dalek::StaticSecret::from(*secret)
            .diffie_hellman(&x25519_dalek::PublicKey::from(*peer));
        s.was_contributory().then(|| s.to_bytes())
    }

    fn bytes(seed: &str, i: u32) -> [u8; 32] {
        Sha256::digest([seed.as_bytes(), &i.to_be_bytes()].concat()).into()
    }

    #[test]
    fn aws_lc_matches_x25519_dalek() {
        for i in 0..200 {
            let (a, b) = (bytes("a", i), bytes("b", i));
            let pb = public_key(&b);
            assert_eq!(pb, reference_public_key(&b));
            // Arbitrary peer bytes too (not only valid public keys), high bit set or not.
            for peer in [pb, bytes("peer", i)] {
                let got = shared(&a, &peer).ok().map(|s| *s.as_bytes());
                assert_eq!(got, reference_shared(&a, &peer), "i = {i}");
            }
        }
    }

    #[test]
    fn low_order_points_are_refused() {
        // u = 0, u = 1 and a point of order 8 (from libsodium's blocklist of low-order points).
        let mut order8 = [0u8; 32];
        order8[..].copy_from_slice(&[
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f,
            0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16,
            0x5f, 0x49, 0xb8, 0x00,
        ]);
        let mut one = [0u8; 32];
        one[0] = 1;
        for peer in [[0u8; 32], one, order8] {
            assert_eq!(shared(&bytes("a", 0), &peer).err(), Some(LowOrderPoint));
            assert_eq!(reference_shared(&bytes("a", 0), &peer), None);
        }
    }
}
