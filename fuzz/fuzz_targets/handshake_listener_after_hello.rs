//! A listener that has accepted a connector hello, then fed fuzzer bytes as the ConnectorAuth.
//! Never panics, and completes only when the harness itself signed a valid ConnectorAuth for a
//! trusted key and the listener's service.
//!
//! The hello carries the encapsulation key of the fixed ML-KEM key of the vectors
//! ([`FIXED_MLKEM_DK`]) and the connector's fixed X25519 key: aws-lc-rs draws the listener's
//! encapsulation randomness itself, but the harness decapsulates the listener's ciphertext and
//! so derives `c_hs` (PROTOCOL.md §3) for every run.
//!
//! Input byte 0 picks the mode (`byte0 % 3`):
//! * 0: the rest is raw wire bytes (framed by [`Chunked`]: several reads);
//! * 1: the rest is the ConnectorAuth *plaintext*, which the harness seals under the real
//!   `c_hs`, so the fuzzer reaches the field parsing (SPKI, service, signature, finished), SPKI
//!   parsing and signature verification behind the AEAD;
//! * 2: byte 1 picks the key (even: the trusted connector key, odd: a key outside the trust
//!   list), the rest (at most 80 bytes) is the service; the harness signs a genuine
//!   ConnectorAuth with them, so the fuzzer reaches the trust list, the service check and the
//!   refusal Alerts (PROTOCOL.md §4.2, §6): the Alert must open under the session's `l_ap[0]`
//!   as the listener's first record and name the right code and detail.
//!
//! The listener signs with [`CachedSigner`] (one RSA signature per process; the connector side
//! of this harness never checks it).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sealpipe::proto::handshake::{mac1, Handshake, HandshakeError, CONNECTOR_SIGNATURE_CONTEXT};
use sealpipe::proto::identity::PrivateIdentity;
use sealpipe::proto::key_schedule::{
    finished_key, hash, hmac, Direction, HandshakeSecrets, Secret, TrafficKey,
};
use sealpipe::proto::messages::{
    put_vec16, put_vec8, valid_service, Hello, MessageType, CONNECTOR_HELLO_BODY,
    LISTENER_HELLO_BODY, MAX_AUTH_PLAINTEXT, MSG_HEADER_LEN, PROTOCOL_VERSION,
};
use sealpipe::proto::mlkem::CT_LEN;
use sealpipe::proto::record::{AlertCode, Opened, Opener};
use sealpipe_fuzz::*;

const LH_LEN: usize = MSG_HEADER_LEN + LISTENER_HELLO_BODY;

/// The connector hello every run starts with (fixed fields, fixed ML-KEM key, real mac1).
fn hello() -> &'static [u8] {
    static H: OnceLock<Vec<u8>> = OnceLock::new();
    H.get_or_init(|| {
        let r = fixed_randomness(CONNECTOR_RAND);
        let mut h = Hello {
            version: PROTOCOL_VERSION,
            options: 0,
            random: r.random,
            ephemeral: sealpipe::proto::x25519::public_key(&r.ephemeral),
        }
        .encode_connector_unmacced(&fixed_mlkem_ek());
        let tag = mac1(&listener_fingerprint(), &h);
        h.extend_from_slice(&tag);
        assert_eq!(h.len(), MSG_HEADER_LEN + CONNECTOR_HELLO_BODY);
        h
    })
}

/// One run's listener after the hello, and what the harness derived from its flight.
struct Run {
    l: Handshake,
    hs: HandshakeSecrets,
    c_hs: Secret,
    /// The transcript so far: both hellos and the ListenerAuth plaintext.
    transcript: Vec<u8>,
}

fn start() -> Run {
    let hello = hello();
    let mut l = Handshake::listener(listener_params_cached(), fixed_randomness(LISTENER_RAND));
    assert_eq!(
        l.read(hello).expect("listener reads the hello"),
        hello.len()
    );
    let flight = l.take_output();
    let (lh, lauth) = flight.split_at(LH_LEN);
    let e_l: [u8; 32] = lh[37..69].try_into().expect("e_l");
    let ct: &[u8; CT_LEN] = lh[69..].try_into().expect("ct");
    let ss = fixed_mlkem_decapsulate(ct);
    let dh = connector_x25519(e_l);
    let mut transcript = [hello, lh].concat();
    let th = hash(&transcript);
    let hs = HandshakeSecrets::new(None, &ss, &dh);
    let c_hs = hs.traffic(Direction::ConnectorToListener, &th);
    let l_hs = hs.traffic(Direction::ListenerToConnector, &th);
    // The ListenerAuth must open under the harness's l_hs: the derivation is right.
    let key = TrafficKey::new(&l_hs);
    let mut plain = lauth[MSG_HEADER_LEN..lauth.len() - 16].to_vec();
    key.aead()
        .open_in_place(
            &key.nonce(0),
            &lauth[..MSG_HEADER_LEN],
            &mut plain,
            lauth[lauth.len() - 16..].try_into().expect("tag"),
        )
        .expect("harness l_hs matches the listener's");
    transcript.extend_from_slice(&plain);
    Run {
        l,
        hs,
        c_hs,
        transcript,
    }
}

/// A genuine ConnectorAuth by `key` asking for `service` (as `make_auth` in `proto/handshake/common.rs` makes it);
/// extends the transcript to its end.
fn signed_auth(run: &mut Run, key: &PrivateIdentity, service: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    put_vec16(&mut plain, key.public().spki_der());
    put_vec8(&mut plain, service);
    run.transcript.extend_from_slice(&plain);
    let to_sign = [CONNECTOR_SIGNATURE_CONTEXT, &hash(&run.transcript)].concat();
    let sig = key.sign(&to_sign).expect("sign");
    let mut sig_field = Vec::new();
    put_vec16(&mut sig_field, &sig);
    run.transcript.extend_from_slice(&sig_field);
    plain.extend_from_slice(&sig_field);
    let fin = hmac(finished_key(&run.c_hs).expose(), &[&hash(&run.transcript)]);
    run.transcript.extend_from_slice(&fin);
    plain.extend_from_slice(&fin);
    seal_auth(MessageType::ConnectorAuth, &run.c_hs, &plain)
}

/// The refusal Alert `record` opens under `l_ap[0]` of this run as the first record, with
/// `code` and `detail`.
fn check_alert(run: &Run, record: &[u8], code: AlertCode, detail: &[u8]) {
    let l_ap = run
        .hs
        .master()
        .traffic(Direction::ListenerToConnector, &hash(&run.transcript));
    let mut rec = record.to_vec();
    match Opener::new(l_ap).open(&mut rec) {
        Ok(Opened::Alert(a)) => {
            assert_eq!(a.code(), code);
            assert_eq!(a.detail(), detail);
        }
        other => panic!("refusal is not an Alert under l_ap[0]: {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut run = start();
    match mode % 3 {
        0 => {
            let out = drive_reads(&mut run.l, &Chunked::new(rest).chunks);
            assert!(out.is_empty(), "listener sent something after its flight");
            assert!(!run.l.is_done(), "listener accepted a forged ConnectorAuth");
        }
        1 => {
            // Beyond MAX_AUTH_PLAINTEXT the header check refuses it anyway; cut it there plus a
            // bit so the u16 length field stays honest.
            let plain = &rest[..rest.len().min(MAX_AUTH_PLAINTEXT + 64)];
            let msg = seal_auth(MessageType::ConnectorAuth, &run.c_hs, plain);
            let out = drive_reads(&mut run.l, &[&msg]);
            assert!(out.is_empty(), "listener sent something after its flight");
            assert!(!run.l.is_done(), "listener accepted a forged ConnectorAuth");
        }
        _ => {
            let Some((&which, service)) = rest.split_first() else {
                return;
            };
            let service = &service[..service.len().min(80)];
            let trusted = which & 1 == 0;
            let key = if trusted {
                connector_identity()
            } else {
                next_listener_identity()
            };
            let msg = signed_auth(&mut run, &key, service);
            let result = run.l.read(&msg);
            assert!(run.l.take_output().is_empty(), "output besides the Alert");
            match result {
                Ok(n) => {
                    assert_eq!(n, msg.len());
                    assert!(
                        trusted && service == SERVICE.as_bytes(),
                        "accepted an untrusted key or another service"
                    );
                    assert!(run.l.is_done());
                }
                Err(HandshakeError::UntrustedConnector(fp, alert)) => {
                    assert!(!trusted && valid_service(service));
                    assert_eq!(fp, key.fingerprint());
                    check_alert(&run, alert.record(), AlertCode::Untrusted, b"");
                }
                Err(HandshakeError::ServiceMismatch {
                    asked,
                    served,
                    alert,
                    ..
                }) => {
                    assert!(trusted && valid_service(service) && service != SERVICE.as_bytes());
                    assert_eq!(asked.as_bytes(), service);
                    assert_eq!(served, SERVICE);
                    check_alert(
                        &run,
                        alert.record(),
                        AlertCode::ServiceMismatch,
                        SERVICE.as_bytes(),
                    );
                }
                Err(e) => {
                    assert!(!valid_service(service), "genuine auth refused: {e}");
                    assert!(e.alert().is_none(), "an Alert for a malformed auth");
                }
            }
        }
    }
});
