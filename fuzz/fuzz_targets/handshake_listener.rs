//! A listener handshake fed arbitrary bytes, cut into several reads.
//!
//! Never panics, never completes, and stays silent unless the first 85 bytes are a connector
//! hello carrying a valid mac1 for one of the listener's two keys (a listener in the middle of a
//! key rotation): a peer that does not know a listener fingerprint gets no answer (PROTOCOL.md
//! §2).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpipe::proto::handshake::{mac1, Handshake};
use sealpipe::proto::messages::{MessageType, MAC1_LEN};
use sealpipe_fuzz::*;

const HELLO_LEN: usize = 85;
const UNMACCED: usize = HELLO_LEN - MAC1_LEN;

fuzz_target!(|data: &[u8]| {
    let input = Chunked::new(data);
    let mut hs = Handshake::listener(listener_params(), fixed_randomness(LISTENER_RAND));
    let out = drive_reads(&mut hs, &input.chunks);
    assert!(
        !hs.is_done(),
        "listener completed a handshake with fuzzer bytes"
    );
    if !out.is_empty() {
        let p = input.payload;
        assert!(p.len() >= HELLO_LEN, "answer to a short input");
        let keys = [
            listener_fingerprint(),
            next_listener_identity().fingerprint(),
        ];
        assert!(
            keys.iter()
                .any(|fp| p[UNMACCED..HELLO_LEN] == mac1(fp, &p[..UNMACCED])[..]),
            "answer without a valid mac1"
        );
        assert_eq!(out[0], MessageType::ListenerHello as u8);
    }
});
