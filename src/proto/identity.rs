//! Long-term identities: RSA keys, their fingerprints and trust lists.

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;
use subtle::ConstantTimeEq;

/// The SHA-256 of a key's DER SubjectPublicKeyInfo, written `SHA256:<unpadded base64>`.
///
/// The same value as `openssl pkey -pubout -outform DER | openssl dgst -sha256 -binary | base64`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

/// The prefix of every written fingerprint.
pub const FINGERPRINT_PREFIX: &str = "SHA256:";

impl Fingerprint {
    /// The fingerprint of a DER-encoded SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(spki_der).into())
    }

    /// The raw 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &Fingerprint) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{FINGERPRINT_PREFIX}{}", STANDARD_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    /// The `SHA256:` prefix is missing.
    #[error("a fingerprint starts with `SHA256:` (as printed by `sealpipe fingerprint`)")]
    MissingPrefix,
    /// The rest is not base64 of 32 bytes.
    #[error("a fingerprint is `SHA256:` followed by the base64 of 32 bytes (43 characters)")]
    BadDigest,
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    /// Parses `SHA256:<base64>`; trailing `=` padding is accepted, as OpenSSL prints it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b64 = s
            .trim()
            .strip_prefix(FINGERPRINT_PREFIX)
            .ok_or(FingerprintError::MissingPrefix)?;
        let b64 = b64.trim_end_matches('=');
        if b64.len() != 43 {
            return Err(FingerprintError::BadDigest);
        }
        let bytes = STANDARD_NO_PAD
            .decode(b64)
            .map_err(|_| FingerprintError::BadDigest)?;
        let digest: [u8; 32] = bytes.try_into().map_err(|_| FingerprintError::BadDigest)?;
        Ok(Fingerprint(digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_round_trips_and_accepts_openssl_padding() {
        let fp = Fingerprint::of_spki(b"spki");
        let s = fp.to_string();
        assert!(s.starts_with("SHA256:") && !s.ends_with('='));
        assert_eq!(s.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(format!("{s}=").parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(
            "sha256:abc".parse::<Fingerprint>(),
            Err(FingerprintError::MissingPrefix)
        );
        assert_eq!(
            "SHA256:abc".parse::<Fingerprint>(),
            Err(FingerprintError::BadDigest)
        );
    }
}
