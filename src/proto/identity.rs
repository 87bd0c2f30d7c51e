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
//! Division of labour between the two RSA libraries: the `rsa` crate only parses, checks,
//! generates and encodes keys. Every signature is made and checked by `aws-lc-rs`, whose RSA is
//! constant time; the `rsa` crate's private-key operations have a timing side channel
//! (RUSTSEC-2023-0071) and are never used. Only RSA-PSS with SHA-256 (salt length 32) is used:
//! no RSA encryption, no PKCS#1 v1.5 signatures.
//!
//! This module is sans-IO: it reads no files (see `crate::files::keyfile` for that) and opens no
//! sockets. Key generation and signing draw from the operating system's RNG.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ParsedPublicKey, RsaKeyPair, RSA_PSS_2048_8192_SHA256, RSA_PSS_SHA256};
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use rsa::pkcs1;
use rsa::pkcs8::der::asn1::{AnyRef, Null, ObjectIdentifier};
use rsa::pkcs8::der::pem::{self, LineEnding};
use rsa::pkcs8::der::Decode;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, PrivateKeyInfoRef, SubjectPublicKeyInfoRef};
// rsa 0.10 renamed these `PrivateKey`/`PublicKey`; the old names say which library they are from.
use rsa::{PrivateKey as RsaPrivateKey, PublicKey as RsaPublicKey};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

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

/// `id-RSASSA-PSS` (RFC 4055): an RSA key restricted to PSS, which OpenSSL writes for
/// `genpkey -algorithm RSA-PSS`. Refused: its SPKI would differ from the `rsaEncryption` one we
/// compute fingerprints over.
const ID_RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");

/// PEM labels.
const LABEL_PKCS8: &str = "PRIVATE KEY";
const LABEL_PKCS1: &str = "RSA PRIVATE KEY";
const LABEL_SPKI: &str = "PUBLIC KEY";

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

fn malformed(what: &str, e: impl fmt::Display) -> IdentityError {
    IdentityError::Malformed(format!("{what}: {e}"))
}

/// A readable name for the algorithm OIDs people are likely to feed us by mistake.
fn algorithm_name(oid: ObjectIdentifier) -> String {
    let name = match oid.to_string().as_str() {
        "1.2.840.10045.2.1" => "EC",
        "1.3.101.110" => "X25519",
        "1.3.101.111" => "X448",
        "1.3.101.112" => "Ed25519",
        "1.3.101.113" => "Ed448",
        "1.2.840.10040.4.1" => "DSA",
        _ => return format!("OID {oid}"),
    };
    format!("{name}, OID {oid}")
}

/// Accepts `rsaEncryption` with NULL (or, for private keys, absent) parameters.
fn check_rsa_algorithm(alg: &rsa::pkcs8::AlgorithmIdentifierRef<'_>) -> Result<(), IdentityError> {
    if alg.oid == ID_RSASSA_PSS {
        return Err(IdentityError::RsaPssRestrictedKey);
    }
    if alg.oid != pkcs1::ALGORITHM_OID {
        return Err(IdentityError::NotRsa {
            algorithm: algorithm_name(alg.oid),
        });
    }
    match alg.parameters {
        None => Ok(()),
        Some(p) if p == AnyRef::from(Null) => Ok(()),
        Some(_) => Err(IdentityError::Malformed(
            "rsaEncryption parameters must be NULL".into(),
        )),
    }
}

/// The bit length of a big-endian unsigned integer.
fn bit_len(be: &[u8]) -> usize {
    match be.iter().position(|&b| b != 0) {
        None => 0,
        Some(i) => (be.len() - i) * 8 - be[i].leading_zeros() as usize,
    }
}

fn check_bits(bits: usize) -> Result<(), IdentityError> {
    if bits < MIN_RSA_BITS {
        Err(IdentityError::KeyTooSmall { bits })
    } else if bits > MAX_RSA_BITS {
        Err(IdentityError::KeyTooLarge { bits })
    } else {
        Ok(())
    }
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
    /// Parses a DER SubjectPublicKeyInfo, as it arrives in a handshake.
    ///
    /// Checks, cheapest first: at most [`MAX_SPKI_LEN`] bytes, `rsaEncryption` algorithm,
    /// modulus of [`MIN_RSA_BITS`]..=[`MAX_RSA_BITS`] bits, a valid RSA public key, canonical
    /// DER (so that a key has exactly one fingerprint), accepted by `aws-lc-rs`.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, IdentityError> {
        if der.len() > MAX_SPKI_LEN {
            return Err(IdentityError::SpkiTooLong { len: der.len() });
        }
        let spki = SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|e| malformed("not a DER SubjectPublicKeyInfo", e))?;
        check_rsa_algorithm(&spki.algorithm)?;
        let pkcs1_der = spki.subject_public_key.as_bytes().ok_or_else(|| {
            IdentityError::Malformed("public key BIT STRING has unused bits".into())
        })?;
        let parts = pkcs1::RsaPublicKeyRef::from_der(pkcs1_der)
            .map_err(|e| malformed("not a DER RSAPublicKey", e))?;
        let bits = bit_len(parts.modulus.as_bytes());
        check_bits(bits)?;
        let key =
            RsaPublicKey::try_from(parts).map_err(|e| malformed("invalid RSA public key", e))?;
        let canonical = key
            .to_public_key_der()
            .map_err(|e| IdentityError::Encode(e.to_string()))?;
        if canonical.as_bytes() != der {
            return Err(IdentityError::NonCanonicalSpki);
        }
        let verifier = ParsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, der)
            .map_err(|e| IdentityError::Rejected(e.to_string()))?;
        let pem = pem::encode_string(LABEL_SPKI, LineEnding::LF, der)
            .map_err(|e| IdentityError::Encode(e.to_string()))?;
        Ok(PublicIdentity {
            spki_der: der.to_vec(),
            fingerprint: Fingerprint::of_spki(der),
            bits,
            pem,
            verifier,
        })
    }

    /// Parses a `BEGIN PUBLIC KEY` (SubjectPublicKeyInfo) PEM, as `openssl pkey -pubout` and
    /// `sealpipe keygen` write it. Surrounding whitespace is ignored.
    pub fn from_pem(pem_text: &str) -> Result<Self, IdentityError> {
        let bytes = pem_text.trim().as_bytes();
        let label =
            pem::decode_label(bytes).map_err(|_| IdentityError::NotPublicKeyPem { found: None })?;
        if label != LABEL_SPKI {
            return Err(IdentityError::NotPublicKeyPem {
                found: Some(label.to_owned()),
            });
        }
        let (_, der) = pem::decode_vec(bytes).map_err(|e| malformed("bad PEM", e))?;
        Self::from_spki_der(&der)
    }

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
    /// Parses PKCS#8 `BEGIN PRIVATE KEY` (what `openssl genpkey -algorithm RSA` writes) or
    /// PKCS#1 `BEGIN RSA PRIVATE KEY`.
    ///
    /// The key is parsed and validated with the `rsa` crate, its size checked
    /// ([`MIN_RSA_BITS`]..=[`MAX_RSA_BITS`]), re-encoded as PKCS#8 DER and loaded into aws-lc-rs.
    /// Every intermediate buffer holding secret material is zeroized. Surrounding whitespace
    /// and CRLF line endings are accepted; encrypted keys are refused.
    pub fn from_pem(pem_text: &str) -> Result<Self, IdentityError> {
        let bytes = pem_text.trim().as_bytes();
        let label = pem::decode_label(bytes)
            .map_err(|_| IdentityError::NotPrivateKeyPem { found: None })?;
        match label {
            LABEL_PKCS8 => {
                let der = decode_secret_pem(bytes)?;
                let info = PrivateKeyInfoRef::from_der(&der)
                    .map_err(|e| malformed("not a DER PKCS#8 PrivateKeyInfo", e))?;
                check_rsa_algorithm(&info.algorithm)?;
                Self::from_pkcs1_der(info.private_key.as_bytes())
            }
            LABEL_PKCS1 => {
                if pem_text.contains("Proc-Type: 4,ENCRYPTED") {
                    return Err(IdentityError::EncryptedPrivateKey);
                }
                let der = decode_secret_pem(bytes)?;
                Self::from_pkcs1_der(&der)
            }
            "ENCRYPTED PRIVATE KEY" => Err(IdentityError::EncryptedPrivateKey),
            "PUBLIC KEY" | "RSA PUBLIC KEY" => {
                Err(IdentityError::PublicKeyNotPrivate(label.to_owned()))
            }
            other => Err(IdentityError::NotPrivateKeyPem {
                found: Some(other.to_owned()),
            }),
        }
    }

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

    /// Parses a DER PKCS#1 RSAPrivateKey, checking the size before the expensive validation.
    fn from_pkcs1_der(der: &[u8]) -> Result<Self, IdentityError> {
        let parts = pkcs1::RsaPrivateKeyRef::from_der(der)
            .map_err(|e| malformed("not a DER RSAPrivateKey", e))?;
        check_bits(bit_len(parts.modulus.as_bytes()))?;
        let key =
            RsaPrivateKey::try_from(parts).map_err(|e| malformed("invalid RSA private key", e))?;
        Self::from_rsa_key(&key)
    }

    fn from_rsa_key(key: &RsaPrivateKey) -> Result<Self, IdentityError> {
        let spki = key
            .as_public_key()
            .to_public_key_der()
            .map_err(|e| IdentityError::Encode(e.to_string()))?;
        // Checks the size too.
        let public = PublicIdentity::from_spki_der(spki.as_bytes())?;
        let pkcs8: Zeroizing<Vec<u8>> = key
            .to_pkcs8_der()
            .map_err(|e| IdentityError::Encode(e.to_string()))?
            .to_bytes();
        let key_pair =
            RsaKeyPair::from_pkcs8(&pkcs8).map_err(|e| IdentityError::Rejected(e.to_string()))?;
        if key_pair.public_modulus_len() != public.signature_len() {
            return Err(IdentityError::Rejected(
                "modulus length mismatch between libraries".into(),
            ));
        }
        Ok(PrivateIdentity { key_pair, public })
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

/// Decodes a PEM document whose contents are secret into a zeroizing buffer.
fn decode_secret_pem(bytes: &[u8]) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
    pem::decode_vec(bytes)
        .map(|(_, der)| Zeroizing::new(der))
        .map_err(|e| malformed("bad PEM", e))
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

/// A set of trusted fingerprints, each with an optional name (for logs).
#[derive(Clone, Debug, Default)]
pub struct TrustList {
    entries: BTreeMap<Fingerprint, Option<String>>,
}

impl TrustList {
    /// An empty trust list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a fingerprint; a fingerprint already present gets the new name.
    pub fn insert(&mut self, fp: Fingerprint, name: Option<String>) {
        self.entries.insert(fp, name);
    }

    /// Whether `fp` is trusted.
    pub fn contains(&self, fp: &Fingerprint) -> bool {
        self.entries.contains_key(fp)
    }

    /// The name given to a trusted fingerprint, if any.
    pub fn name_of(&self, fp: &Fingerprint) -> Option<&str> {
        self.entries.get(fp).and_then(|n| n.as_deref())
    }

    /// The number of trusted fingerprints.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is trusted.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The trusted fingerprints and their names, in fingerprint order.
    pub fn iter(&self) -> impl Iterator<Item = (&Fingerprint, Option<&str>)> {
        self.entries.iter().map(|(fp, name)| (fp, name.as_deref()))
    }
}

impl FromIterator<(Fingerprint, Option<String>)> for TrustList {
    fn from_iter<I: IntoIterator<Item = (Fingerprint, Option<String>)>>(iter: I) -> Self {
        TrustList {
            entries: iter.into_iter().collect(),
        }
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

    const OPENSSL_PKCS8: &str = include_str!("../../tests/data/openssl-rsa2048.pem");
    const OPENSSL_PKCS1: &str = include_str!("../../tests/data/openssl-rsa2048-pkcs1.pem");
    const OPENSSL_PUB: &str = include_str!("../../tests/data/openssl-rsa2048.pub.pem");
    const OPENSSL_FP: &str = include_str!("../../tests/data/openssl-rsa2048.fingerprint");
    const OPENSSL_1024: &str = include_str!("../../tests/data/openssl-rsa1024.pem");
    const PEER_B: &str = include_str!("../../tests/data/peer-b.pem");
    const PEER_B_PUB: &str = include_str!("../../tests/data/peer-b.pub.pem");
    const EC_KEY: &str = include_str!("../../tests/data/openssl-ec-p256.pem");
    const EC_PUB: &str = include_str!("../../tests/data/openssl-ec-p256.pub.pem");
    const RSA_PSS_KEY: &str = include_str!("../../tests/data/openssl-rsapss2048.pem");

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
