//! An `Opener` under the `c_ap_traffic_0` secret of PROTOCOL.md §8, fed an arbitrary byte stream
//! cut into records by `parse_header` as `src/tunnel/pump.rs` does. Never panics.
//!
//! The fuzzer cannot forge a tag, so the only records that can open are the three of the
//! vectors, in their order (ping at generation 0, the rekey, pong at generation 1): what opens
//! must be a prefix of that sequence. (Under a secret the corpus does not know, this is "no
//! record ever opens"; the vector secret lets the seeds reach the rekey path.)
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sealpipe::proto::key_schedule::Secret;
use sealpipe::proto::record::Opener;
use sealpipe_fuzz::*;

fn secret() -> Secret {
    static S: OnceLock<[u8; 32]> = OnceLock::new();
    Secret::from_bytes(*S.get_or_init(|| unhex(VECTOR_C_AP_TRAFFIC_0).try_into().unwrap()))
}

fuzz_target!(|data: &[u8]| {
    let mut opener = Opener::new(secret());
    let mut stream = data.to_vec();
    let (seen, _err) = read_records(&mut opener, &mut stream);
    let possible = [
        Seen::Data(b"ping".to_vec()),
        Seen::Rekey,
        Seen::Data(b"pong".to_vec()),
    ];
    assert!(
        seen.len() <= possible.len() && seen[..] == possible[..seen.len()],
        "a record opened that the fuzzer could not have sealed: {seen:?}"
    );
    assert_eq!(
        opener.rekeys(),
        seen.iter().filter(|s| **s == Seen::Rekey).count() as u64
    );
    // No close record can open, so the end of the stream is always truncation.
    assert!(!opener.is_closed());
    assert!(opener.end_of_stream().is_err());
});
