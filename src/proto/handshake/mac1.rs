//! The mac1 gate: the 16-byte MAC that ends every connector hello, keyed by the listener's
//! fingerprint (and the PSK), checked by a listener before any other work (PROTOCOL.md §5.3).

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{HandshakeError, ListenerParams};
use crate::proto::identity::{Fingerprint, Signer};
use crate::proto::key_schedule::{ct_eq, hmac, Psk, HASH_LEN};
use crate::proto::messages::{check_first_header, MessageError, MessageType, MAC1_LEN, MSG_HEADER_LEN};

/// Prefix of the mac1 key derivation.
const MAC1_KEY_LABEL: &[u8] = b"sealpipe2 mac1";

/// The fingerprint a first-contact mac1 is keyed with: all zeros, known to everybody.
pub const FIRST_CONTACT: Fingerprint = Fingerprint([0; 32]);

/// mac1 without a PSK: [`mac1_keyed`] with `psk = None` (what the tests and fuzz targets make).
#[cfg(feature = "testing")]
pub fn mac1(listener: &Fingerprint, hello_unmacced: &[u8]) -> [u8; MAC1_LEN] {
    mac1_keyed(listener, None, hello_unmacced)
}

/// mac1 = HMAC-SHA256(SHA-256("sealpipe2 mac1" || fingerprint [|| psk]), hello without
/// mac1)[..16]: with a PSK, only a connector that holds it makes a mac1 the listener answers.
pub fn mac1_keyed(
    listener: &Fingerprint,
    psk: Option<&Psk>,
    hello_unmacced: &[u8],
) -> [u8; MAC1_LEN] {
    let mut h = Sha256::new();
    h.update(MAC1_KEY_LABEL);
    h.update(listener.as_bytes());
    if let Some(p) = psk {
        h.update(p.expose());
    }
    let key = zeroize::Zeroizing::new(<[u8; HASH_LEN]>::from(h.finalize()));
    let full = hmac(&key[..], &[hello_unmacced]);
    let mut out = [0u8; MAC1_LEN];
    out.copy_from_slice(&full[..MAC1_LEN]);
    out
}

/// How a connector hello's mac1 was keyed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contact {
    /// By the fingerprint of one of the listener's keys: the connector knows that key.
    Pinned,
    /// By [`FIRST_CONTACT`]: a TOFU connector that has not recorded the key yet.
    FirstContact,
}

/// Checks a connector hello's mac1 as a listener with `params` does: keyed by one of its keys'
/// fingerprints, or, with `allow_tofu` only and for a ConnectorHello only, by [`FIRST_CONTACT`]
/// (a connector that does not know the listener's key has no ticket for it: a ResumeHello keyed
/// by [`FIRST_CONTACT`] is junk, dropped here before any work like any other bad mac1).
pub fn check_hello_mac1(params: &ListenerParams, hello: &[u8]) -> Result<Contact, HandshakeError> {
    answering_identity(params, hello).map(|(contact, _)| contact)
}

/// [`check_hello_mac1`], and the key that answers the hello: the one its mac1 is keyed for, or
/// `identity` for a first contact. At most two HMACs for the listener's keys (and one more for
/// a first contact), before any other work.
pub(super) fn answering_identity<'p>(
    params: &'p ListenerParams,
    hello: &[u8],
) -> Result<(Contact, &'p Arc<dyn Signer>), HandshakeError> {
    let (unmacced, tag) = split_mac1(hello)?;
    let psk = params.psk.as_deref();
    let matches = |fp: &Fingerprint| ct_eq(&mac1_keyed(fp, psk, unmacced), tag);
    if let Some(id) = params
        .identities()
        .find(|id| matches(&id.public().fingerprint()))
    {
        return Ok((Contact::Pinned, id));
    }
    let resume = hello.first() == Some(&(MessageType::ResumeHello as u8));
    if params.allow_tofu && !resume && matches(&FIRST_CONTACT) {
        return Ok((Contact::FirstContact, &params.identity));
    }
    Err(HandshakeError::BadMac1)
}

/// A whole connector hello, its header checked, split into the bytes mac1 covers and mac1.
fn split_mac1(hello: &[u8]) -> Result<(&[u8], &[u8]), HandshakeError> {
    let header = hello
        .first_chunk::<MSG_HEADER_LEN>()
        .ok_or(MessageError::Malformed)?;
    let (_, len) = check_first_header(header)?;
    if hello.len() != MSG_HEADER_LEN + len {
        return Err(MessageError::Malformed.into());
    }
    Ok(hello.split_at(hello.len() - MAC1_LEN))
}
