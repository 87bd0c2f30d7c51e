//! The fresh hybrid exchange of PROTOCOL.md §4.5, both roles, fed arbitrary record streams as
//! `src/tunnel/pump.rs` reads them (every record of the exchange handed to `proto::kex::Kex`,
//! whatever it owes sent at once). Never panics, never completes what the fuzzer cannot make.
//!
//! The first input byte picks the role. A **listener** under `c_ap_traffic_0` of §8: the only
//! records that can open are the vectors' KeyShare (seq 0) and Done (seq 1); it answers the
//! KeyShare (with an encapsulation of its own) and then takes the Done, so at most one exchange
//! completes, and its new key is not the vectors' (its encapsulation differs). A
//! **connector** that has sent the vectors' KeyShare (X25519 secret `0x44^32`, the fixed ML-KEM
//! key), under `l_ap_traffic_0`: only the vectors' Reply (seq 0), then `pong` under the new key
//! can open, and after the Reply its receiving key is exactly `kex_l_traffic`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpipe::proto::handshake::Role;
use sealpipe::proto::kex::Kex;
use sealpipe::proto::key_schedule::Secret;
use sealpipe::proto::mlkem::DecapsulationKey;
use sealpipe::proto::record::{parse_header, Opened, Opener, RecordType, Sealer, HEADER_LEN};
use sealpipe_fuzz::*;

fn secret(hex: &str) -> Secret {
    Secret::from_bytes(unhex(hex).try_into().expect("32 bytes"))
}

/// What opened, in order.
#[derive(Debug, PartialEq)]
enum Got {
    Exchange(RecordType),
    Data(Vec<u8>),
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let role = if mode & 1 == 0 {
        Role::Listener
    } else {
        Role::Connector
    };
    let (c_ap, l_ap) = (secret(VECTOR_C_AP_TRAFFIC_0), secret(VECTOR_L_AP_TRAFFIC_0));
    let mut kex = Kex::new(role);
    let (mut sealer, mut opener) = match role {
        Role::Listener => (Sealer::new(l_ap, 1 << 30), Opener::new(c_ap)),
        Role::Connector => (Sealer::new(c_ap, 1 << 30), Opener::new(l_ap)),
    };
    if role == Role::Connector {
        let dk = DecapsulationKey::from_bytes(FIXED_MLKEM_DK).expect("fixed ML-KEM key");
        kex.initiate(&mut sealer, [0x44; 32], dk).expect("initiate");
    }
    let mut stream = rest.to_vec();
    let mut got = Vec::new();
    let mut start = 0;
    while let Some(h) = stream[start..].first_chunk::<HEADER_LEN>() {
        let Ok((_, total)) = parse_header(h) else {
            break;
        };
        if stream.len() - start < total {
            break;
        }
        let record = &mut stream[start..start + total];
        start += total;
        match opener.open(record) {
            Ok(Opened::KeyShare(kind, body)) => {
                got.push(Got::Exchange(kind));
                let body = body.to_vec();
                if kex
                    .receive(&mut opener, kind, &body, || [0x55; 32])
                    .is_err()
                {
                    break;
                }
                if kex.outgoing(&mut sealer).is_err() {
                    break;
                }
            }
            Ok(Opened::Data(d)) => got.push(Got::Data(d.to_vec())),
            Ok(_) | Err(_) => break,
        }
    }
    match role {
        Role::Listener => {
            let possible = [
                Got::Exchange(RecordType::KeyShare),
                Got::Exchange(RecordType::KeyShareDone),
            ];
            assert!(
                got.len() <= 2 && got[..] == possible[..got.len()],
                "{got:?}"
            );
            assert!(kex.completed() <= 1);
            if kex.completed() == 1 {
                assert!(*opener.dir_secret() != secret(VECTOR_KEX_C_TRAFFIC));
            }
        }
        Role::Connector => {
            let possible = [
                Got::Exchange(RecordType::KeyShareReply),
                Got::Data(b"pong".to_vec()),
            ];
            assert!(
                got.len() <= 2 && got[..] == possible[..got.len()],
                "{got:?}"
            );
            if !got.is_empty() {
                assert!(*opener.dir_secret() == secret(VECTOR_KEX_L_TRAFFIC));
                // Its Done went out and its sending direction moved: the exchange completed.
                assert_eq!(kex.completed(), 1);
            }
        }
    }
});
