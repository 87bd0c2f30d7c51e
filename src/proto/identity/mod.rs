//! Long-term identities: RSA keys, their fingerprints and trust lists.
//!
//! * [`Fingerprint`] names a key: `SHA256:` and the unpadded base64 of the SHA-256 of its DER
//!   SubjectPublicKeyInfo, the same value stock OpenSSL prints.
//! * [`PublicIdentity`] is a peer's RSA public key (2048 to 8192 bits) as it arrives from the
//!   network or from a `BEGIN PUBLIC KEY` PEM; it verifies RSA-PSS-SHA256 signatures.
//! * [`PrivateIdentity`] is our own key pair, read from PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1
//!   (`BEGIN RSA PRIVATE KEY`) PEM or freshly generated; it makes RSA-PSS-SHA256 signatures.
//! * [`Signer`] is the seam the handshake signs through.
//! * [`TrustList`] is the set of fingerprints a listener accepts, built in memory (the
//!   `peers` and `peers_file` of its config are read by `crate::files::peers`).
//!
//! The files: `fingerprint.rs`, `parse.rs` (PEM and DER in, checked), `trust.rs`; the key types
//! and the [`Signer`] seam are here.
//!
//! Division of labour between the two RSA libraries: the `rsa` crate only parses, checks,
//! generates and encodes keys. Every signature is made and checked by `aws-lc-rs`, whose RSA is
//! constant time; the `rsa` crate's private-key operations have a timing side channel
//! (RUSTSEC-2023-0071) and are never used. Only RSA-PSS with SHA-256 (salt length 32) is used:
//! no RSA encryption, no PKCS#1 v1.5 signatures.
//!
//! This module is sans-IO: it reads no files (see `crate::files::keyfile` for that) and opens no
//! sockets. Key generation and signing draw from the operating system's RNG.

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ParsedPublicKey, RsaKeyPair, RSA_PSS_SHA256};
use rsa::pkcs8::der::pem::LineEnding;
use rsa::pkcs8::EncodePrivateKey;
// rsa 0.10 renamed this `PrivateKey`; the old name says which library it is from.
use rsa::PrivateKey as RsaPrivateKey;
use zeroize::Zeroizing;

mod fingerprint;
mod parse;
mod trust;

pub use fingerprint::{Fingerprint, FingerprintError, FINGERPRINT_PREFIX};
pub use trust::TrustList;


/// The smallest RSA modulus sealpipe accepts, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus sealpipe accepts, in bits (also the limit of `aws-lc-rs`).
pub const MAX_RSA_BITS: usize = 8192;
/// The modulus size `sealpipe keygen` uses unless told otherwise.
pub const DEFAULT_RSA_BITS: usize = 3072;
/// Largest SPKI DER we accept from the network (an 8192-bit key's SPKI is ~1062 bytes).
pub const MAX_SPKI_LEN: usize = 1100;
/// Largest signature (8192 bits).
pub const MAX_SIGNATURE_LEN: usize = MAX_RSA_BITS / 8;

/// Why a key, a key file's contents or a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The text is not a PEM private key (or not PEM at all).
    #[error(
        "not a PEM private key: expected `BEGIN PRIVATE KEY` (PKCS#8) or `BEGIN RSA PRIVATE KEY`{}",
        found_label(.found)
    )]
    NotPrivateKeyPem {
        /// The PEM label that was found instead, if the text was PEM at all.
        found: Option<String>,
    },
    /// The text is not a PEM public key (or not PEM at all).
    #[error(
        "not a PEM public key: expected `BEGIN PUBLIC KEY` (SubjectPublicKeyInfo, as written by \
         `openssl pkey -pubout`){}",
        found_label(.found)
    )]
    NotPublicKeyPem {
        /// The PEM label that was found instead, if the text was PEM at all.
        found: Option<String>,
    },
    /// The text starts as a PEM block labelled `label` but is damaged or cut short (no
    /// `END` line that matches, or bad base64): not "some other file".
    #[error(
        "a `BEGIN {label}` PEM, but damaged or cut short (no matching `-----END {label}-----` \
         line, or invalid base64): copy the whole file again"
    )]
    DamagedPem {
        /// The label of its `BEGIN` line.
        label: String,
    },
    /// A public key was given where a private key is needed.
    #[error("this is a public key (`BEGIN {0}`), but a private key is needed here")]
    PublicKeyNotPrivate(String),
    /// The private key is encrypted with a passphrase.
    #[error(
        "the private key is encrypted with a passphrase, which sealpipe does not support; \
         protect it with file permissions instead (decrypt with `openssl pkey -in KEY -out NEW`)"
    )]
    EncryptedPrivateKey,
    /// The key is for another algorithm.
    #[error("not an RSA key (algorithm {algorithm})")]
    NotRsa {
        /// The key's algorithm: a name if known, else its OID.
        algorithm: String,
    },
    /// The key is an RSA-PSS-restricted key (`id-RSASSA-PSS`).
    #[error(
        "RSA-PSS-restricted keys (`openssl genpkey -algorithm RSA-PSS`) are not supported; \
         make a plain RSA key with `openssl genpkey -algorithm RSA` or `sealpipe keygen` \
         (sealpipe still signs with RSA-PSS)"
    )]
    RsaPssRestrictedKey,
    /// The modulus is below [`MIN_RSA_BITS`].
    #[error("RSA key is {bits} bits; sealpipe requires at least {MIN_RSA_BITS}")]
    KeyTooSmall {
        /// The modulus size in bits.
        bits: usize,
    },
    /// The modulus is above [`MAX_RSA_BITS`].
    #[error("RSA key is {bits} bits; sealpipe accepts at most {MAX_RSA_BITS}")]
    KeyTooLarge {
        /// The modulus size in bits.
        bits: usize,
    },
    /// The public exponent is not 65537.
    #[error("RSA key's public exponent is not 65537, the only one sealpipe accepts")]
    BadExponent,
    /// A key of this size cannot be generated.
    #[error(
        "cannot generate a {bits}-bit RSA key: the size must be between {MIN_RSA_BITS} and \
         {MAX_RSA_BITS} bits"
    )]
    BadKeySize {
        /// The requested size in bits.
        bits: usize,
    },
    /// A DER public key longer than [`MAX_SPKI_LEN`].
    #[error("public key is {len} bytes long; the largest accepted is {MAX_SPKI_LEN}")]
    SpkiTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The DER public key is valid but not in its one canonical encoding, so it would have a
    /// second fingerprint.
    #[error("public key is not in canonical DER encoding")]
    NonCanonicalSpki,
    /// The PEM or DER structure is broken.
    #[error("malformed key: {0}")]
    Malformed(String),
    /// The cryptographic library refused the key.
    #[error("key rejected by the crypto library: {0}")]
    Rejected(String),
    /// Key generation failed.
    #[error("RSA key generation failed: {0}")]
    Generate(String),
    /// Encoding a key failed.
    #[error("could not encode the key: {0}")]
    Encode(String),
    /// Signing failed.
    #[error("signing failed")]
    SignFailed,
    /// Any signature verification failure (one uniform error, whatever the cause).
    #[error("bad signature")]
    BadSignature,
}

fn found_label(found: &Option<String>) -> String {
    match found {
        Some(label) => format!(", found `BEGIN {label}`"),
        None => String::new(),
    }
}


#[cfg(test)]
thread_local! {
    /// [`PublicIdentity::verify`] calls made by this thread (unit tests only).
    static VERIFY_CALLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The [`PublicIdentity::verify`] calls this thread has made (unit tests only): a test that a
/// message costs no RSA verification reads it before and after.
#[cfg(test)]
pub(crate) fn verify_calls() -> u64 {
    VERIFY_CALLS.with(std::cell::Cell::get)
}

/// A peer's RSA public key: its canonical SPKI DER, fingerprint and size, parsed once for
/// verification.
#[derive(Clone)]
pub struct PublicIdentity {
    spki_der: Vec<u8>,
    fingerprint: Fingerprint,
    bits: usize,
    pem: String,
    verifier: ParsedPublicKey,
}

impl PublicIdentity {
    /// The DER SubjectPublicKeyInfo (what goes on the wire and what the fingerprint hashes).
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The key's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The modulus size in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// The length in bytes of this key's signatures (the modulus length).
    pub fn signature_len(&self) -> usize {
        self.bits.div_ceil(8)
    }

    /// The key as a `BEGIN PUBLIC KEY` (SubjectPublicKeyInfo) PEM, with a trailing newline.
    pub fn to_pem(&self) -> String {
        self.pem.clone()
    }

    /// RSA-PSS-SHA256 (salt length 32) verification with aws-lc-rs.
    ///
    /// Every failure, whatever its cause, is [`IdentityError::BadSignature`].
    pub fn verify(&self, msg: &[u8], signature: &[u8]) -> Result<(), IdentityError> {
        #[cfg(test)]
        VERIFY_CALLS.with(|c| c.set(c.get() + 1));
        if signature.len() != self.signature_len() {
            return Err(IdentityError::BadSignature);
        }
        self.verifier
            .verify_sig(msg, signature)
            .map_err(|_| IdentityError::BadSignature)
    }
}

impl PartialEq for PublicIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.spki_der == other.spki_der
    }
}

impl Eq for PublicIdentity {}

impl fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicIdentity")
            .field("fingerprint", &self.fingerprint)
            .field("bits", &self.bits)
            .finish()
    }
}

/// Our own RSA key pair, loaded into aws-lc-rs for signing.
pub struct PrivateIdentity {
    key_pair: RsaKeyPair,
    public: PublicIdentity,
}

impl PrivateIdentity {
    /// Generates a key pair with the `rsa` crate and the OS RNG.
    ///
    /// Returns the identity and its PKCS#8 PEM. Refuses sizes outside
    /// [`MIN_RSA_BITS`]..=[`MAX_RSA_BITS`].
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails.
    pub fn generate(bits: usize) -> Result<(Self, Zeroizing<String>), IdentityError> {
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(IdentityError::BadKeySize { bits });
        }
        let mut rng = rand::rand_core::UnwrapErr(rand::rngs::SysRng);
        let key = RsaPrivateKey::new(&mut rng, bits)
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        let identity = Self::from_rsa_key(&key)?;
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| IdentityError::Encode(e.to_string()))?;
        Ok((identity, pem))
    }

    /// Our public identity.
    pub fn public(&self) -> &PublicIdentity {
        &self.public
    }

    /// Our fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.public.fingerprint
    }

    /// RSA-PSS-SHA256 (salt length 32) signature with aws-lc-rs (constant time).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, IdentityError> {
        let mut signature = vec![0u8; self.key_pair.public_modulus_len()];
        self.key_pair
            .sign(&RSA_PSS_SHA256, &SystemRandom::new(), msg, &mut signature)
            .map_err(|_| IdentityError::SignFailed)?;
        Ok(signature)
    }
}

impl fmt::Debug for PrivateIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateIdentity")
            .field("fingerprint", &self.public.fingerprint)
            .field("bits", &self.public.bits)
            .finish_non_exhaustive()
    }
}

/// The signing seam the handshake uses; tests can implement it with a deterministic signer.
pub trait Signer: Send + Sync {
    /// The public identity that [`Signer::sign`]'s signatures verify under.
    fn public(&self) -> &PublicIdentity;
    /// An RSA-PSS-SHA256 signature of `msg`.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, IdentityError>;
}

impl Signer for PrivateIdentity {
    fn public(&self) -> &PublicIdentity {
        PrivateIdentity::public(self)
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, IdentityError> {
        PrivateIdentity::sign(self, msg)
    }
}

impl<T: Signer + ?Sized> Signer for std::sync::Arc<T> {
    fn public(&self) -> &PublicIdentity {
        (**self).public()
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, IdentityError> {
        (**self).sign(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256;
    use rsa::pkcs8::EncodePublicKey;

    const OPENSSL_PKCS8: &str = include_str!("../../../tests/data/openssl-rsa2048.pem");
    const OPENSSL_PKCS1: &str = include_str!("../../../tests/data/openssl-rsa2048-pkcs1.pem");
    const OPENSSL_PUB: &str = include_str!("../../../tests/data/openssl-rsa2048.pub.pem");
    const OPENSSL_FP: &str = include_str!("../../../tests/data/openssl-rsa2048.fingerprint");
    const OPENSSL_1024: &str = include_str!("../../../tests/data/openssl-rsa1024.pem");
    const PEER_B: &str = include_str!("../../../tests/data/peer-b.pem");
    const PEER_B_PUB: &str = include_str!("../../../tests/data/peer-b.pub.pem");
    const EC_KEY: &str = include_str!("../../../tests/data/openssl-ec-p256.pem");
    const EC_PUB: &str = include_str!("../../../tests/data/openssl-ec-p256.pub.pem");
    const RSA_PSS_KEY: &str = include_str!("../../../tests/data/openssl-rsapss2048.pem");

    fn openssl_fp() -> Fingerprint {
        OPENSSL_FP.trim().parse().unwrap()
    }

    #[test]
    fn constants() {
        assert_eq!(DEFAULT_RSA_BITS, 3072);
        assert!((MIN_RSA_BITS..=MAX_RSA_BITS).contains(&DEFAULT_RSA_BITS));
        assert_eq!(MAX_SIGNATURE_LEN, 1024);
    }

    #[test]
    fn openssl_key_fingerprint_matches_openssl_in_every_form() {
        let expected = openssl_fp();
        assert_eq!(OPENSSL_FP.trim(), expected.to_string());
        let pkcs8 = PrivateIdentity::from_pem(OPENSSL_PKCS8).unwrap();
        let pkcs1 = PrivateIdentity::from_pem(OPENSSL_PKCS1).unwrap();
        let public = PublicIdentity::from_pem(OPENSSL_PUB).unwrap();
        assert_eq!(pkcs8.fingerprint(), expected);
        assert_eq!(pkcs1.fingerprint(), expected);
        assert_eq!(public.fingerprint(), expected);
        assert_eq!(Fingerprint::of_spki(public.spki_der()), expected);
        assert_eq!(public.bits(), 2048);
        assert_eq!(public.signature_len(), 256);
        assert_eq!(pkcs8.public(), &public);
        // Our SPKI PEM is byte-for-byte what OpenSSL wrote.
        assert_eq!(public.to_pem(), OPENSSL_PUB);
        assert_eq!(pkcs8.public().to_pem(), OPENSSL_PUB);
    }

    #[test]
    fn sign_verify_round_trip_and_tampering() {
        let a = PrivateIdentity::from_pem(OPENSSL_PKCS8).unwrap();
        let b_pub = PublicIdentity::from_pem(PEER_B_PUB).unwrap();
        let msg = b"sealpipe transcript hash".to_vec();
        let sig = a.sign(&msg).unwrap();
        assert_eq!(sig.len(), 256);
        a.public().verify(&msg, &sig).unwrap();
        // Through the Signer seam, also behind an Arc<dyn Signer>.
        let signer: std::sync::Arc<dyn Signer> = std::sync::Arc::new(a);
        let sig2 = signer.sign(&msg).unwrap();
        assert_ne!(sig, sig2, "PSS signatures are randomized");
        signer.public().verify(&msg, &sig2).unwrap();
        let public = signer.public().clone();

        for i in [0, msg.len() / 2, msg.len() - 1] {
            let mut m = msg.clone();
            m[i] ^= 1;
            assert_eq!(public.verify(&m, &sig), Err(IdentityError::BadSignature));
        }
        for i in [0, 100, sig.len() - 1] {
            let mut s = sig.clone();
            s[i] ^= 0x80;
            assert_eq!(public.verify(&msg, &s), Err(IdentityError::BadSignature));
        }
        assert_eq!(b_pub.verify(&msg, &sig), Err(IdentityError::BadSignature));
        assert_eq!(
            public.verify(&msg, &sig[..255]),
            Err(IdentityError::BadSignature)
        );
        assert_eq!(public.verify(&msg, &[]), Err(IdentityError::BadSignature));
        let mut long = sig.clone();
        long.push(0);
        assert_eq!(public.verify(&msg, &long), Err(IdentityError::BadSignature));

        // And the other key verifies its own signatures only.
        let b = PrivateIdentity::from_pem(PEER_B).unwrap();
        let sig_b = b.sign(&msg).unwrap();
        b_pub.verify(&msg, &sig_b).unwrap();
        assert_eq!(
            public.verify(&msg, &sig_b),
            Err(IdentityError::BadSignature)
        );
    }

    #[test]
    fn signature_is_pss_sha256_with_32_byte_salt() {
        // aws-lc-rs' explicit salt-length verifier accepts it; a different salt length does not.
        use aws_lc_rs::signature::{RsaPssSaltLength, UnparsedPublicKey};
        let a = PrivateIdentity::from_pem(OPENSSL_PKCS8).unwrap();
        let sig = a.sign(b"m").unwrap();
        let salt32 = RSA_PSS_2048_8192_SHA256.with_pss_salt_length(RsaPssSaltLength::Custom(32));
        let salt20 = RSA_PSS_2048_8192_SHA256.with_pss_salt_length(RsaPssSaltLength::Custom(20));
        let leak = |p| -> &'static aws_lc_rs::signature::RsaParameters { Box::leak(Box::new(p)) };
        let spki = a.public().spki_der();
        assert!(UnparsedPublicKey::new(leak(salt32), spki)
            .verify(b"m", &sig)
            .is_ok());
        assert!(UnparsedPublicKey::new(leak(salt20), spki)
            .verify(b"m", &sig)
            .is_err());
    }

    #[test]
    fn small_keys_are_refused_with_their_size() {
        let err = PrivateIdentity::from_pem(OPENSSL_1024).unwrap_err();
        assert_eq!(err, IdentityError::KeyTooSmall { bits: 1024 });
        assert_eq!(
            err.to_string(),
            "RSA key is 1024 bits; sealpipe requires at least 2048"
        );
        // The same key's public half.
        let key = {
            use rsa::pkcs8::DecodePrivateKey;
            RsaPrivateKey::from_pkcs8_pem(OPENSSL_1024).unwrap()
        };
        let spki = key.as_public_key().to_public_key_der().unwrap();
        assert_eq!(
            PublicIdentity::from_spki_der(spki.as_bytes()).unwrap_err(),
            IdentityError::KeyTooSmall { bits: 1024 }
        );
    }

    /// Only the public exponent 65537 is accepted: a verification's cost grows with the
    /// exponent, and a peer's key is chosen by whoever connects (PROTOCOL.md §2).
    #[test]
    fn a_public_exponent_other_than_65537_is_refused() {
        let pem = include_str!("../../../tests/data/openssl-rsa2048-e3.pub.pem");
        let err = PublicIdentity::from_pem(pem).unwrap_err();
        assert_eq!(err, IdentityError::BadExponent);
        assert!(err.to_string().contains("65537"), "{err}");
        let ok = include_str!("../../../tests/data/openssl-rsa2048.pub.pem");
        assert!(PublicIdentity::from_pem(ok).is_ok());
    }

    /// A key file cut short (a bad copy, a full disk) says so, rather than that it is not the
    /// kind of PEM it visibly is (issue 35).
    #[test]
    fn a_truncated_pem_is_said_to_be_damaged() {
        for (full, label) in [
            (PEER_B, "PRIVATE KEY"),
            (PEER_B_PUB, "PUBLIC KEY"),
        ] {
            let cut = &full[..full.len() / 2];
            let e = PrivateIdentity::from_pem(cut).unwrap_err();
            assert_eq!(e, IdentityError::DamagedPem { label: label.into() });
            assert_eq!(
                e.to_string(),
                format!(
                    "a `BEGIN {label}` PEM, but damaged or cut short (no matching \
                     `-----END {label}-----` line, or invalid base64): copy the whole file again"
                )
            );
            assert_eq!(
                PublicIdentity::from_pem(cut).unwrap_err(),
                IdentityError::DamagedPem { label: label.into() }
            );
        }
        // Another label, damaged, is still named as what it is not.
        assert_eq!(
            PrivateIdentity::from_pem("-----BEGIN CERTIFICATE-----\nMIIB").unwrap_err(),
            IdentityError::NotPrivateKeyPem {
                found: Some("CERTIFICATE".into())
            }
        );
    }

    #[test]
    fn wrong_kinds_of_pem_are_refused_clearly() {
        let e = PrivateIdentity::from_pem("hello").unwrap_err();
        assert_eq!(e, IdentityError::NotPrivateKeyPem { found: None });
        assert_eq!(
            e.to_string(),
            "not a PEM private key: expected `BEGIN PRIVATE KEY` (PKCS#8) or `BEGIN RSA PRIVATE KEY`"
        );
        assert!(matches!(
            PrivateIdentity::from_pem(OPENSSL_PUB),
            Err(IdentityError::PublicKeyNotPrivate(_))
        ));
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = PrivateIdentity::from_pem(cert).unwrap_err();
        assert!(e.to_string().ends_with("found `BEGIN CERTIFICATE`"), "{e}");
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert_eq!(
            PrivateIdentity::from_pem(enc).unwrap_err(),
            IdentityError::EncryptedPrivateKey
        );
        let e = PrivateIdentity::from_pem(EC_KEY).unwrap_err();
        assert!(matches!(e, IdentityError::NotRsa { .. }), "{e}");
        assert!(
            e.to_string().starts_with("not an RSA key (algorithm EC"),
            "{e}"
        );
        let e = PublicIdentity::from_pem(EC_PUB).unwrap_err();
        assert!(matches!(e, IdentityError::NotRsa { .. }), "{e}");
        assert_eq!(
            PrivateIdentity::from_pem(RSA_PSS_KEY).unwrap_err(),
            IdentityError::RsaPssRestrictedKey
        );
        assert!(matches!(
            PublicIdentity::from_pem(OPENSSL_PKCS8),
            Err(IdentityError::NotPublicKeyPem { found: Some(_) })
        ));
        // A truncated body.
        let truncated: String = OPENSSL_PKCS8
            .lines()
            .filter(|l| !l.starts_with("MII"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(matches!(
            PrivateIdentity::from_pem(&truncated),
            Err(IdentityError::Malformed(_))
        ));
    }

    #[test]
    fn crlf_and_surrounding_whitespace_are_accepted() {
        let crlf = OPENSSL_PKCS8.replace('\n', "\r\n");
        let padded = format!("\n\n{OPENSSL_PKCS1}\n");
        let pub_crlf = OPENSSL_PUB.replace('\n', "\r\n");
        assert_eq!(
            PrivateIdentity::from_pem(&crlf).unwrap().fingerprint(),
            openssl_fp()
        );
        assert_eq!(
            PrivateIdentity::from_pem(&padded).unwrap().fingerprint(),
            openssl_fp()
        );
        assert_eq!(
            PublicIdentity::from_pem(&pub_crlf).unwrap().fingerprint(),
            openssl_fp()
        );
    }

    #[test]
    fn spki_der_checks() {
        let public = PublicIdentity::from_pem(OPENSSL_PUB).unwrap();
        let der = public.spki_der().to_vec();
        assert_eq!(PublicIdentity::from_spki_der(&der).unwrap(), public);
        assert_eq!(
            PublicIdentity::from_spki_der(&vec![0x30; MAX_SPKI_LEN + 1]).unwrap_err(),
            IdentityError::SpkiTooLong {
                len: MAX_SPKI_LEN + 1
            }
        );
        assert!(PublicIdentity::from_spki_der(&[]).is_err());
        assert!(PublicIdentity::from_spki_der(&der[..der.len() - 1]).is_err());
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(PublicIdentity::from_spki_der(&trailing).is_err());
        let mut flipped = der.clone();
        flipped[40] ^= 1;
        // Still parses (a different modulus) or is refused, but never has the same fingerprint.
        if let Ok(other) = PublicIdentity::from_spki_der(&flipped) {
            assert_ne!(other.fingerprint(), public.fingerprint());
        }
    }

    #[test]
    fn generate_refuses_bad_sizes_and_makes_a_working_key() {
        assert_eq!(
            PrivateIdentity::generate(1024).unwrap_err(),
            IdentityError::BadKeySize { bits: 1024 }
        );
        assert_eq!(
            PrivateIdentity::generate(16384).unwrap_err(),
            IdentityError::BadKeySize { bits: 16384 }
        );
        let (id, pem) = PrivateIdentity::generate(2048).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(id.public().bits(), 2048);
        let reloaded = PrivateIdentity::from_pem(&pem).unwrap();
        assert_eq!(reloaded.fingerprint(), id.fingerprint());
        let sig = reloaded.sign(b"x").unwrap();
        id.public().verify(b"x", &sig).unwrap();
    }

    #[test]
    fn debug_never_prints_key_material() {
        let a = PrivateIdentity::from_pem(OPENSSL_PKCS8).unwrap();
        let d = format!("{a:?}");
        assert!(
            d.contains(&a.fingerprint().to_string()) && d.contains("2048"),
            "{d}"
        );
        assert!(d.len() < 120, "{d}");
        let p = format!("{:?}", a.public());
        assert!(
            p.contains(&a.fingerprint().to_string()) && p.len() < 120,
            "{p}"
        );
    }

    #[test]
    fn trust_list_insert_and_look_up() {
        let fp_a = openssl_fp();
        let fp_b = PublicIdentity::from_pem(PEER_B_PUB).unwrap().fingerprint();
        let mut list = TrustList::new();
        assert!(list.is_empty());
        list.insert(fp_a, Some("alice  laptop".into()));
        list.insert(fp_b, None);
        assert_eq!(list.len(), 2);
        assert!(!list.is_empty());
        assert!(list.contains(&fp_a) && list.contains(&fp_b));
        assert_eq!(list.name_of(&fp_a), Some("alice  laptop"));
        assert_eq!(list.name_of(&fp_b), None);
        assert!(!list.contains(&Fingerprint([0; 32])));
        assert_eq!(list.iter().count(), 2);
        let collected: TrustList = list
            .iter()
            .map(|(f, n)| (*f, n.map(String::from)))
            .collect();
        assert_eq!(collected.len(), 2);
        assert_eq!(collected.name_of(&fp_a), Some("alice  laptop"));

        let mut list = TrustList::new();
        list.insert(fp_a, None);
        list.insert(fp_a, Some("renamed".into()));
        assert_eq!((list.len(), list.name_of(&fp_a)), (1, Some("renamed")));
    }
}
