//! Key fingerprints: `SHA256:` and the unpadded base64 of the SHA-256 of a key's DER
//! SubjectPublicKeyInfo, as configs, `known_peers` and logs write them, and their parser.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
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
    /// A digest without its prefix, as the OpenSSL pipeline prints it (`…| base64`).
    #[error("missing the `SHA256:` prefix: write \"{0}\"")]
    BareDigest(Fingerprint),
    /// The prefix in the wrong case (`sha256:`).
    #[error("the prefix is `SHA256:`, in capitals: write \"{0}\"")]
    PrefixCase(Fingerprint),
    /// The rest is not base64 of 32 bytes.
    #[error("a fingerprint is `SHA256:` followed by the base64 of 32 bytes (43 characters)")]
    BadDigest,
    /// An example's placeholder (`SHA256:<host A's fingerprint>`), not a fingerprint.
    #[error("a placeholder, not a fingerprint")]
    Placeholder,
}

impl FingerprintError {
    /// The message for `text`, refused where the fingerprint of `whose` ("the listener's key",
    /// "a connector's key") was expected: a placeholder is told what replaces it.
    pub fn explain(&self, text: &str, whose: &str) -> String {
        match self {
            FingerprintError::Placeholder => format!(
                "replace the placeholder with the fingerprint of {whose} \
                 (`sealpipe fingerprint KEYFILE` on its host prints it)"
            ),
            e => format!("invalid fingerprint {text:?}: {e}"),
        }
    }
}

/// The placeholder that the example configs once shipped: valid base64 of 32 bytes, and so
/// refused by name.
const OLD_PLACEHOLDER: &str = "REPLACE+ME";

/// Whether `s`, which is not a fingerprint, looks like a placeholder left in a config: `<…>`,
/// an ellipsis, or a word such as REPLACE, XXX or TODO (checked only on what does not parse, so
/// that no real fingerprint is ever refused for containing one).
fn looks_like_placeholder(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    s.contains(['<', '>', '{', '}', '…'])
        || s.contains("...")
        || ["replace", "xxx", "todo", "fixme", "fingerprint", "changeme"]
            .iter()
            .any(|word| lower.contains(word))
}

/// The 32 bytes of an unpadded (or `=`-padded) base64 digest.
fn decode_digest(b64: &str) -> Option<[u8; 32]> {
    let b64 = b64.trim_end_matches('=');
    if b64.len() != 43 {
        return None;
    }
    STANDARD_NO_PAD.decode(b64).ok()?.try_into().ok()
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    /// Parses `SHA256:<base64>`; trailing `=` padding is accepted, as OpenSSL prints it. A
    /// digest without the prefix, or with it in lower case, is refused with the spelling to use.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.contains(OLD_PLACEHOLDER) {
            return Err(FingerprintError::Placeholder);
        }
        let refused = |otherwise| {
            if looks_like_placeholder(s) {
                FingerprintError::Placeholder
            } else {
                otherwise
            }
        };
        let Some(b64) = s.strip_prefix(FINGERPRINT_PREFIX) else {
            let prefix_len = FINGERPRINT_PREFIX.len();
            let lowered = s
                .get(..prefix_len)
                .filter(|p| p.eq_ignore_ascii_case(FINGERPRINT_PREFIX));
            return Err(match (lowered, decode_digest(s)) {
                (Some(_), _) => match decode_digest(&s[prefix_len..]) {
                    Some(d) => FingerprintError::PrefixCase(Fingerprint(d)),
                    None => refused(FingerprintError::MissingPrefix),
                },
                (None, Some(d)) => FingerprintError::BareDigest(Fingerprint(d)),
                (None, None) => refused(FingerprintError::MissingPrefix),
            });
        };
        decode_digest(b64)
            .map(Fingerprint)
            .ok_or_else(|| refused(FingerprintError::BadDigest))
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

    #[test]
    fn a_fingerprint_pasted_without_its_prefix_is_told_how_to_write_it() {
        let fp = Fingerprint::of_spki(b"spki");
        let s = fp.to_string();
        let bare = s.strip_prefix("SHA256:").unwrap();
        for text in [bare.to_string(), format!("{bare}="), format!(" {bare}\n")] {
            let e = text.parse::<Fingerprint>().unwrap_err();
            assert_eq!(e, FingerprintError::BareDigest(fp), "{text:?}");
            assert_eq!(
                e.to_string(),
                format!("missing the `SHA256:` prefix: write \"{s}\"")
            );
        }
        for prefix in ["sha256:", "Sha256:"] {
            assert_eq!(
                format!("{prefix}{bare}").parse::<Fingerprint>(),
                Err(FingerprintError::PrefixCase(fp))
            );
        }
        assert_eq!(
            "c2hh".parse::<Fingerprint>(),
            Err(FingerprintError::MissingPrefix)
        );
    }

    #[test]
    fn placeholders_are_named_as_such() {
        for text in [
            "SHA256:<host A's fingerprint>",
            "SHA256:<fingerprint",
            "<fingerprint of host B>",
            "SHA256:...",
            "SHA256:…",
            "SHA256:XXXXXXXX",
            "SHA256:REPLACE_ME",
            "SHA256:TODO",
            // What the example configs once shipped: valid base64 of 32 bytes.
            "SHA256:REPLACE+ME+with+the+fingerprint+of+host+B00",
        ] {
            let e = text.parse::<Fingerprint>().unwrap_err();
            assert_eq!(e, FingerprintError::Placeholder, "{text}");
            assert_eq!(
                e.explain(text, "the listener's key"),
                "replace the placeholder with the fingerprint of the listener's key \
                 (`sealpipe fingerprint KEYFILE` on its host prints it)"
            );
        }
        assert_eq!(
            FingerprintError::BadDigest.explain("SHA256:abc", "a connector's key"),
            "invalid fingerprint \"SHA256:abc\": a fingerprint is `SHA256:` followed by the \
             base64 of 32 bytes (43 characters)"
        );
        // A real fingerprint that happens to contain such a word still parses.
        let real = "SHA256:TODOxxxREPLACE/fingerprint+AAAAAAAAAAAAAAAA";
        assert_eq!(real.len(), 50);
        assert!(real.parse::<Fingerprint>().is_ok());
    }

}
