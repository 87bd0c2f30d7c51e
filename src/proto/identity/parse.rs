//! Parsing and checking keys: a DER SubjectPublicKeyInfo (from the network), `BEGIN PUBLIC
//! KEY` PEM, PKCS#8 `BEGIN PRIVATE KEY` and PKCS#1 `BEGIN RSA PRIVATE KEY` PEM. The `rsa` crate
//! parses, validates and re-encodes; the keys are then loaded into aws-lc-rs.

use std::fmt;

use aws_lc_rs::signature::{ParsedPublicKey, RsaKeyPair, RSA_PSS_2048_8192_SHA256};
use rsa::pkcs1;
use rsa::pkcs8::der::asn1::{AnyRef, Null, ObjectIdentifier};
use rsa::pkcs8::der::pem::{self, LineEnding};
use rsa::pkcs8::der::Decode;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, PrivateKeyInfoRef, SubjectPublicKeyInfoRef};
// rsa 0.10 renamed these `PrivateKey`/`PublicKey`; the old names say which library they are from.
use rsa::{PrivateKey as RsaPrivateKey, PublicKey as RsaPublicKey};
use zeroize::Zeroizing;

use super::{
    Fingerprint, IdentityError, PrivateIdentity, PublicIdentity, MAX_RSA_BITS, MAX_SPKI_LEN,
    MIN_RSA_BITS,
};

/// `id-RSASSA-PSS` (RFC 4055): an RSA key restricted to PSS, which OpenSSL writes for
/// `genpkey -algorithm RSA-PSS`. Refused: its SPKI would differ from the `rsaEncryption` one we
/// compute fingerprints over.
const ID_RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");

/// PEM labels.
const LABEL_PKCS8: &str = "PRIVATE KEY";
const LABEL_PKCS1: &str = "RSA PRIVATE KEY";
const LABEL_SPKI: &str = "PUBLIC KEY";
/// The label of the PEM `bytes`; for text that is not whole PEM, `not_pem` of the label of
/// its `BEGIN` line if it starts with one (then it is a damaged or truncated PEM, said as
/// [`IdentityError::DamagedPem`] when the label is one of ours), else of `None`.
fn pem_label(
    bytes: &[u8],
    not_pem: fn(Option<String>) -> IdentityError,
) -> Result<&str, IdentityError> {
    if let Ok(label) = pem::decode_label(bytes) {
        return Ok(label);
    }
    let first = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let label = std::str::from_utf8(first)
        .ok()
        .map(str::trim_end)
        .and_then(|line| line.strip_prefix("-----BEGIN "))
        .and_then(|rest| rest.strip_suffix("-----"));
    match label {
        Some(label) if [LABEL_PKCS8, LABEL_PKCS1, LABEL_SPKI].contains(&label) => {
            Err(IdentityError::DamagedPem {
                label: label.to_owned(),
            })
        }
        Some(label) => Err(not_pem(Some(label.to_owned()))),
        None => Err(not_pem(None)),
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

/// The one public exponent sealpipe accepts: 65537, what `sealpipe keygen`, OpenSSL and every
/// common tool make. A verification's cost grows with the exponent's length, and a peer's key
/// is chosen by whoever connects (SECURITY.md).
pub(crate) const RSA_EXPONENT: u32 = 65537;

fn check_exponent(be: &[u8]) -> Result<(), IdentityError> {
    let start = be.iter().position(|&b| b != 0).unwrap_or(be.len());
    if be[start..] == RSA_EXPONENT.to_be_bytes()[1..] {
        Ok(())
    } else {
        Err(IdentityError::BadExponent)
    }
}

impl PublicIdentity {
    /// Parses a DER SubjectPublicKeyInfo, as it arrives in a handshake.
    ///
    /// Checks, cheapest first: at most [`MAX_SPKI_LEN`] bytes, `rsaEncryption` algorithm,
    /// modulus of [`MIN_RSA_BITS`]..=[`MAX_RSA_BITS`] bits, public exponent [`RSA_EXPONENT`], a valid
    /// RSA public key, canonical
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
        check_exponent(parts.public_exponent.as_bytes())?;
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
        let label = pem_label(bytes, |found| IdentityError::NotPublicKeyPem { found })?;
        if label != LABEL_SPKI {
            return Err(IdentityError::NotPublicKeyPem {
                found: Some(label.to_owned()),
            });
        }
        let (_, der) = pem::decode_vec(bytes).map_err(|e| malformed("bad PEM", e))?;
        Self::from_spki_der(&der)
    }
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
        let label = pem_label(bytes, |found| IdentityError::NotPrivateKeyPem { found })?;
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

    /// Parses a DER PKCS#1 RSAPrivateKey, checking the size before the expensive validation.
    fn from_pkcs1_der(der: &[u8]) -> Result<Self, IdentityError> {
        let parts = pkcs1::RsaPrivateKeyRef::from_der(der)
            .map_err(|e| malformed("not a DER RSAPrivateKey", e))?;
        check_bits(bit_len(parts.modulus.as_bytes()))?;
        let key =
            RsaPrivateKey::try_from(parts).map_err(|e| malformed("invalid RSA private key", e))?;
        Self::from_rsa_key(&key)
    }

    pub(super) fn from_rsa_key(key: &RsaPrivateKey) -> Result<Self, IdentityError> {
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
}

/// Decodes a PEM document whose contents are secret into a zeroizing buffer.
fn decode_secret_pem(bytes: &[u8]) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
    pem::decode_vec(bytes)
        .map(|(_, der)| Zeroizing::new(der))
        .map_err(|e| malformed("bad PEM", e))
}
