//! A connector handshake (pinned to the listener key) fed fuzzer bytes as the listener's flight.
//! Never panics, never completes (the fuzzer cannot forge the listener's signature) and sends
//! nothing after its hello.
//!
//! Input byte 0 picks the mode:
//! * even: the rest is raw wire bytes (framed by [`Chunked`]: several reads);
//! * odd: the next 69 bytes are the ListenerHello as sent, the rest is the ListenerAuth
//!   *plaintext*, which the harness seals under the `l_hs` that follows from that hello (it
//!   knows the connector's fixed ephemeral key), so the fuzzer reaches the pin check, SPKI
//!   parsing and signature verification behind the AEAD.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpipe::proto::keys::{hash, Direction, HandshakeSecrets};
use sealpipe::proto::messages::{MessageType, MAX_AUTH_PLAINTEXT};
use sealpipe_fuzz::*;

const LISTENER_HELLO_LEN: usize = 69;

/// Once per process: the harness's `l_hs` derivation must match a real listener's, or the
/// sealed mode would never get past the AEAD.
fn check_harness() {
    static CHECKED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    CHECKED.get_or_init(|| {
        let (_, hello) = connector();
        let mut l = sealpipe::proto::handshake::Handshake::listener(
            listener_params_cached(),
            fixed_randomness(LISTENER_RAND),
        );
        l.read(&hello)
            .expect("listener accepts the connector hello");
        let flight = l.take_output();
        let (lh, auth) = flight.split_at(LISTENER_HELLO_LEN);
        let e_l: [u8; 32] = lh[37..69].try_into().unwrap();
        let th = hash(&[&hello[..], lh].concat());
        let l_hs = HandshakeSecrets::new(None, &connector_x25519(e_l))
            .traffic(Direction::ListenerToConnector, &th);
        let key = sealpipe::proto::keys::TrafficKey::new(&l_hs);
        let mut plain = auth[3..auth.len() - 16].to_vec();
        key.aead()
            .open_in_place(
                &key.nonce(0),
                &auth[..3],
                &mut plain,
                auth[auth.len() - 16..].try_into().unwrap(),
            )
            .expect("harness l_hs matches the listener's");
        assert_eq!(seal_auth(MessageType::ListenerAuth, &l_hs, &plain), auth);
    });
}

fuzz_target!(|data: &[u8]| {
    check_harness();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (mut c, hello) = connector();
    let out = if mode & 1 == 0 || rest.len() < LISTENER_HELLO_LEN {
        drive_reads(&mut c, &Chunked::new(rest).chunks)
    } else {
        let (lh, plain) = rest.split_at(LISTENER_HELLO_LEN);
        let plain = &plain[..plain.len().min(MAX_AUTH_PLAINTEXT + 64)];
        let e_l: [u8; 32] = lh[37..69].try_into().unwrap();
        let th = hash(&[&hello[..], lh].concat());
        let l_hs = HandshakeSecrets::new(None, &connector_x25519(e_l))
            .traffic(Direction::ListenerToConnector, &th);
        let auth = seal_auth(MessageType::ListenerAuth, &l_hs, plain);
        drive_reads(&mut c, &[lh, &auth])
    };
    assert!(
        out.is_empty(),
        "connector answered a forged listener flight"
    );
    assert!(!c.is_done(), "connector accepted a forged listener");
});
