//! A listener that has accepted a real connector hello, then fed fuzzer bytes as the
//! ConnectorAuth. Never panics, never completes: the fuzzer cannot forge the connector's
//! signature.
//!
//! Input byte 0 picks the mode:
//! * even: the rest is raw wire bytes (framed by [`Chunked`]: several reads);
//! * odd: the rest is the ConnectorAuth *plaintext*, which the harness seals under the real
//!   `c_hs` (it knows both fixed ephemeral keys), so the fuzzer reaches the field parsing, the
//!   trust list, SPKI parsing and signature verification behind the AEAD.
//!
//! The listener signs with [`CachedSigner`] (one RSA signature per process): with fixed
//! randomness its flight is the same every time, which the setup checks.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sealpipe::proto::handshake::Handshake;
use sealpipe::proto::keys::{hash, Direction, HandshakeSecrets, Secret};
use sealpipe::proto::messages::{MessageType, MAX_AUTH_PLAINTEXT};
use sealpipe_fuzz::*;

struct Setup {
    hello: Vec<u8>,
    flight: Vec<u8>,
    c_hs: Secret,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let (mut c, hello) = connector();
        let mut l = Handshake::listener(listener_params_cached(), fixed_randomness(LISTENER_RAND));
        assert_eq!(l.read(&hello).unwrap(), hello.len());
        let flight = l.take_output();
        let e_l: [u8; 32] = flight[37..69].try_into().unwrap();
        let shared = connector_x25519(e_l);
        let th = hash(&[&hello[..], &flight[..69]].concat());
        let c_hs =
            HandshakeSecrets::new(None, &shared).traffic(Direction::ConnectorToListener, &th);
        // Check the harness's key derivation against a real connector: its ConnectorAuth must
        // open under our c_hs, and the listener must accept it.
        c.read(&flight)
            .expect("connector accepts the listener's flight");
        let auth = c.take_output();
        let plain_len = auth.len() - 3 - 16;
        let mut opened = auth[3..3 + plain_len].to_vec();
        let key = sealpipe::proto::keys::TrafficKey::new(&c_hs);
        key.aead()
            .open_in_place(
                &key.nonce(0),
                &auth[..3],
                &mut opened,
                auth[auth.len() - 16..].try_into().unwrap(),
            )
            .expect("harness c_hs matches the connector's");
        assert_eq!(seal_auth(MessageType::ConnectorAuth, &c_hs, &opened), auth);
        l.read(&auth).expect("listener accepts the real auth");
        assert!(l.is_done());
        Setup {
            hello,
            flight,
            c_hs,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = setup();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut l = Handshake::listener(listener_params_cached(), fixed_randomness(LISTENER_RAND));
    assert_eq!(l.read(&s.hello).unwrap(), s.hello.len());
    assert_eq!(
        l.take_output(),
        s.flight,
        "listener flight is not deterministic"
    );
    let out = if mode & 1 == 0 {
        drive_reads(&mut l, &Chunked::new(rest).chunks)
    } else {
        // Beyond MAX_AUTH_PLAINTEXT the header check refuses it anyway; cut it there plus a bit
        // so the u16 length field stays honest.
        let plain = &rest[..rest.len().min(MAX_AUTH_PLAINTEXT + 64)];
        let msg = seal_auth(MessageType::ConnectorAuth, &s.c_hs, plain);
        drive_reads(&mut l, &[&msg])
    };
    assert!(out.is_empty(), "listener sent something after its flight");
    assert!(!l.is_done(), "listener accepted a forged ConnectorAuth");
});
