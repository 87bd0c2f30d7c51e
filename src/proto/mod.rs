//! The sans-IO protocol core: plain types and functions over byte buffers. See `PROTOCOL.md` for
//! the wire format this module implements.
//!
//! Nothing here touches a socket, a file, a clock or tokio: the time a rule depends on (ticket
//! lifetimes) is passed in as an `Instant`. Randomness: the handshake's nonces and X25519
//! scalars come from the caller ([`HandshakeRandomness`], so that tests are deterministic); the
//! rest is drawn from the operating system inside the core — RSA key generation
//! ([`PrivateIdentity::generate`]), the RSA-PSS salts of signatures, and the ML-KEM-768 key
//! pairs and encapsulations (aws-lc-rs' RNG). One state is shared between handshakes, process
//! wide: `parsed_keys`, a bounded memory of peers' parsed public keys (a hit is exactly what a
//! parse would give).
//!
//! # The public API
//!
//! What a user of the core needs is re-exported here: the handshake of each role
//! ([`ConnectorHandshake`], [`ListenerHandshake`], or [`Handshake`] for either), its
//! parameters and outcome ([`Established`], [`HandshakeError`]), identities, fingerprints and
//! trust lists, the PSK, the record layer ([`Sealer`], [`Opener`]), resumption tickets and the
//! StreamInfo record. The modules themselves are private to the crate; with the `testing` cargo
//! feature (this crate's own tests and benchmarks, and the fuzz targets) they are public, for
//! the wire-level helpers those drive — not a stable API.

/// Declares the modules of the core: `pub(crate)`, or `pub` (hidden from the docs) with the
/// `testing` feature. Their `pub` items are the ones the API re-exports below, or the ones the
/// tests, benchmarks and fuzz targets use from outside the crate.
macro_rules! internal_modules {
    ($($(#[$attr:meta])* mod $name:ident;)*) => {$(
        $(#[$attr])*
        #[cfg(feature = "testing")]
        #[doc(hidden)]
        pub mod $name;
        $(#[$attr])*
        #[cfg(not(feature = "testing"))]
        #[allow(unreachable_pub)]
        pub(crate) mod $name;
    )*};
}

internal_modules! {
    mod aead;
    mod handshake;
    mod identity;
    mod kex;
    mod key_schedule;
    mod liveness;
    mod messages;
    mod mlkem;
    mod record;
    mod resume;
    mod stream;
    mod x25519;
}
pub(crate) mod parsed_keys;

pub use handshake::{
    check_hello_mac1, ConnectorEphemerals, ConnectorHandshake, ConnectorParams, Contact,
    Established, Handshake, HandshakeError, HandshakeRandomness, ListenerHandshake, ListenerParams,
    ListenerPin, RefusalAlert, Resumption, Role, FIRST_CONTACT,
};
pub use identity::{
    Fingerprint, FingerprintError, IdentityError, PrivateIdentity, PublicIdentity, Signer,
    TrustList, DEFAULT_RSA_BITS, FINGERPRINT_PREFIX, MAX_RSA_BITS, MAX_SPKI_LEN, MIN_RSA_BITS,
};
pub use key_schedule::{Psk, Secret};
pub use liveness::{Action as LivenessAction, Liveness};
pub use messages::{MessageError, PROTOCOL_VERSION};
pub use record::{
    Alert, AlertCode, Opened, Opener, RecordError, RecordType, Sealer, MAX_ALERT_DETAIL, OVERHEAD,
};
pub use resume::{
    ConnectorTickets, TicketPolicy, TicketRefusal, TicketStore, CONNECTOR_TICKETS,
    DEFAULT_UNKNOWN_CAPACITY, LISTENER_TICKETS_PER_PEER, SUCCESSORS,
};
pub use stream::{StreamInfo, StreamInfoError, FLAG_DESTINATION, MAX_STREAM_INFO_LEN};
