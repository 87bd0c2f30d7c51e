//! The connector's side of a refusal (PROTOCOL.md §4.2): an `Opener` under the `l_ap_traffic_0`
//! secret of PROTOCOL.md §8, the listener's first traffic secret, reading the listener's first
//! records as `src/tunnel/pump.rs` does. Never panics.
//!
//! Input byte 0 picks the mode:
//! * even: the rest is the raw byte stream; the fuzzer cannot forge a tag, so the only records
//!   that can open are the two Alerts of the vectors, and only as the first record;
//! * odd: byte 1 is a record type, the rest a record *body*, which the harness seals as the
//!   first record under the secret (then a second copy at sequence 1 follows it), so the
//!   fuzzer reaches the Alert decoder: a known code and an exact detail open as an Alert that
//!   closes the direction (the second record is refused), anything else fails.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sealpipe::proto::key_schedule::Secret;
use sealpipe::proto::record::{Alert, AlertCode, Opener, RecordError, RecordType};
use sealpipe_fuzz::*;

fn secret() -> Secret {
    static S: OnceLock<[u8; 32]> = OnceLock::new();
    Secret::from_bytes(*S.get_or_init(|| unhex(VECTOR_L_AP_TRAFFIC_0).try_into().unwrap()))
}

/// What the vectors' two Alerts are.
fn vector_alerts() -> [Alert; 2] {
    [
        Alert::new(AlertCode::ServiceMismatch, b"postgres"),
        Alert::new(AlertCode::Untrusted, b""),
    ]
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut opener = Opener::new(secret());
    if mode & 1 == 0 {
        let mut stream = rest.to_vec();
        let (seen, err) = read_records(&mut opener, &mut stream);
        assert!(
            seen.is_empty(),
            "a record opened that the fuzzer could not have sealed"
        );
        if let Some(RecordError::Refused(a)) = err {
            assert!(
                vector_alerts().contains(&a),
                "an Alert the fuzzer could not have sealed"
            );
            assert!(opener.is_closed());
        }
        return;
    }
    let Some((&kind, body)) = rest.split_first() else {
        return;
    };
    let body = &body[..body.len().min(300)];
    let alert = kind == RecordType::Alert as u8;
    // The record first, then a second record under the next sequence number.
    let mut stream = [
        seal_record(kind, &secret(), 0, body),
        seal_record(1, &secret(), 1, b"after"),
    ]
    .concat();
    let (seen, err) = read_records(&mut opener, &mut stream);
    if alert {
        match (Alert::decode(body), err) {
            (Ok(expected), Some(RecordError::Refused(a))) => {
                assert_eq!(a, expected);
                assert!(seen.is_empty());
                assert!(opener.is_closed(), "an Alert must close the direction");
                // Nothing opens after it.
                let mut next = seal_record(1, &secret(), 1, b"after");
                assert_eq!(opener.open(&mut next), Err(RecordError::AfterClose));
            }
            (Err(_), Some(RecordError::Malformed(RecordType::Alert))) => {}
            (d, e) => panic!("alert body {body:?}: decode {d:?}, opened as {e:?}"),
        }
        // The same Alert anywhere but first never opens as one.
        let mut stream = [
            seal_record(1, &secret(), 0, b"x"),
            seal_record(kind, &secret(), 1, body),
        ]
        .concat();
        let mut o = Opener::new(secret());
        let (seen, err) = read_records(&mut o, &mut stream);
        assert_eq!(seen, [Seen::Data(b"x".to_vec())]);
        assert_eq!(err, Some(RecordError::Unexpected(RecordType::Alert)));
    } else {
        assert!(
            !matches!(err, Some(RecordError::Refused(_))),
            "a record of type {kind} opened as an Alert"
        );
    }
});
