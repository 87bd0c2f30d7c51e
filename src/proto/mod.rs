//! The sans-IO protocol core: plain types and functions over byte buffers.
//!
//! Nothing here touches a socket, a file, a clock or a global RNG; randomness comes from the
//! caller. See `PROTOCOL.md` for the wire format this module implements.
pub mod aead;
pub mod handshake;
pub mod identity;
pub mod keys;
pub mod messages;
pub mod mlkem;
pub mod record;
pub mod resume;
pub mod stream;
pub mod x25519;
