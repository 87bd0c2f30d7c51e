//! The terms a connector's session is made under: what of the connector's configuration decides
//! whether a sealed session may carry a client (`connect`, `service`, its own key, the `peer`
//! pins and their order, the `known_peers` entry of TOFU, the PSK).
//!
//! Every session records the [`Terms`] of the settings it was made with; a pooled or reused
//! session carries a new client only while they equal the terms of the settings in force
//! (`tunnel::connector`). A reload that changes any of them thus retires the sessions made
//! before it: they finish the stream they carry and carry no other; one that changes none of
//! them keeps the pool. The terms are one digest, so the check per client is one comparison.
//!
//! With TOFU, the key `known_peers` records is no term (a first contact records it while the
//! terms stand): the connector checks each session's key against the entry as well, so that a
//! session made with a key since replaced or removed carries no new client.

use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::proto::identity::Fingerprint;
use crate::proto::Psk;

/// A digest of a connector's terms (see the module documentation). Equal terms, equal digests;
/// any change of one term, another digest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Terms([u8; 32]);

/// The terms themselves, as a connector tunnel holds them.
pub(crate) struct TermsOf<'a> {
    /// `connect`, as configured.
    pub(crate) connect: &'a str,
    /// `service`.
    pub(crate) service: &'a str,
    /// The connector's own key.
    pub(crate) own: Fingerprint,
    /// The `peer` pins, in order (empty for TOFU).
    pub(crate) pins: &'a [Fingerprint],
    /// TOFU: the `known_peers` file and the entry's address.
    pub(crate) tofu: Option<(&'a std::path::Path, &'a str)>,
    /// The PSK.
    pub(crate) psk: Option<&'a Psk>,
}

impl TermsOf<'_> {
    /// Their digest. Every field is length-prefixed or fixed-size, so two different sets of
    /// terms never hash the same input.
    pub(crate) fn digest(&self) -> Terms {
        let mut input = b"sealpipe connector terms".to_vec();
        let mut field = |bytes: &[u8]| {
            input.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            input.extend_from_slice(bytes);
        };
        field(self.connect.as_bytes());
        field(self.service.as_bytes());
        field(&self.own.0);
        field(&(self.pins.len() as u64).to_be_bytes());
        for p in self.pins {
            field(&p.0);
        }
        match self.tofu {
            Some((path, address)) => {
                field(b"tofu");
                field(path.as_os_str().as_encoded_bytes());
                field(address.as_bytes());
            }
            None => field(b""),
        }
        match self.psk {
            Some(p) => {
                field(b"psk");
                field(p.expose());
            }
            None => field(b""),
        }
        let out = Sha256::digest(&input);
        input.zeroize();
        Terms(out.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Secret;

    #[test]
    fn every_term_and_the_order_of_the_pins_changes_the_digest() {
        let (a, b) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        let psk = Secret::from_bytes([7; 32]);
        let other_psk = Secret::from_bytes([8; 32]);
        let pins = [a, b];
        let swapped = [b, a];
        let base = || TermsOf {
            connect: "listener:4433",
            service: "db",
            own: Fingerprint([9; 32]),
            pins: &pins,
            tofu: None,
            psk: Some(&psk),
        };
        let t = base().digest();
        // The same terms (a reload that changes nothing of them): the same digest.
        assert_eq!(base().digest(), t);
        let changed = [
            TermsOf {
                connect: "listener:4434",
                ..base()
            },
            TermsOf {
                service: "db2",
                ..base()
            },
            TermsOf {
                own: Fingerprint([10; 32]),
                ..base()
            },
            TermsOf {
                pins: &swapped,
                ..base()
            },
            TermsOf {
                pins: &pins[..1],
                ..base()
            },
            TermsOf {
                tofu: Some((std::path::Path::new("/k"), "listener:4433")),
                ..base()
            },
            TermsOf {
                psk: Some(&other_psk),
                ..base()
            },
            TermsOf {
                psk: None,
                ..base()
            },
        ];
        for (i, c) in changed.iter().enumerate() {
            assert_ne!(c.digest(), t, "change {i}");
        }
        // Field boundaries count: moving bytes from one field to the next is another input.
        let x = TermsOf {
            connect: "ab",
            service: "c",
            ..base()
        };
        let y = TermsOf {
            connect: "a",
            service: "bc",
            ..base()
        };
        assert_ne!(x.digest(), y.digest());
    }
}
