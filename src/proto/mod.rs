//! The sans-IO protocol core: plain types and functions over byte buffers.
//!
//! Nothing here touches a socket, a file, a clock or a global RNG; randomness comes from the
//! caller. See `PROTOCOL.md` for the wire format this module implements. The one state shared
//! between handshakes is [`parsed_keys`], a bounded memory of peers' parsed public keys.
pub mod aead;
pub mod handshake;
pub mod identity;
pub mod keys;
pub mod messages;
pub mod mlkem;
pub(crate) mod parsed_keys;
pub mod record;
pub mod resume;
pub mod stream;
pub mod x25519;
