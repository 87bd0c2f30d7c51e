//! A connector handshake (pinned to the listener key) fed fuzzer bytes as the listener's flight.
//! Never panics, never completes (the fuzzer cannot forge the listener's signature) and sends
//! nothing after its hello.
//!
//! Input byte 0 picks the mode:
//! * even: the rest is raw wire bytes (framed by [`Chunked`]: several reads);
//! * odd: the next 1154 bytes are a ListenerHello body (the harness puts the header in front),
//!   the rest, framed by [`Chunked`], follows it: the fuzzer reaches the hello checks, the X25519
//!   exchange and the decapsulation of any ciphertext, and the ListenerAuth header checks.
//!
//! The connector's ML-KEM key is drawn by aws-lc-rs, so unlike the listener side no harness
//! can derive `l_hs` and seal a ListenerAuth plaintext: the ListenerAuth field parser behind the
//! AEAD is fuzzed by `auth_decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpipe::proto::messages::{header, MessageType, LISTENER_HELLO_BODY};
use sealpipe_fuzz::*;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (mut c, _hello) = connector();
    let out = if mode & 1 == 0 {
        drive_reads(&mut c, &Chunked::new(rest).chunks)
    } else {
        let (body, rest) = rest.split_at(rest.len().min(LISTENER_HELLO_BODY));
        let mut lh = header(MessageType::ListenerHello, LISTENER_HELLO_BODY).to_vec();
        lh.extend_from_slice(body);
        lh.resize(3 + LISTENER_HELLO_BODY, 0);
        let mut chunks = vec![&lh[..]];
        chunks.extend(Chunked::new(rest).chunks);
        drive_reads(&mut c, &chunks)
    };
    assert!(
        out.is_empty(),
        "connector answered a forged listener flight"
    );
    assert!(!c.is_done(), "connector accepted a forged listener");
});
