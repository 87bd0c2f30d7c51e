//! A listener handshake fed arbitrary bytes, cut into several reads.
//!
//! Never panics, never completes, and stays silent unless the input starts with a whole
//! connector hello (a ConnectorHello, 1269 bytes, or a ResumeHello, 1317, which a listener
//! without resumption answers in full) carrying a valid mac1 for one of the listener's two keys
//! (a listener in the middle of a key rotation): a peer that does not know a listener
//! fingerprint gets no answer (PROTOCOL.md §2).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpipe::proto::handshake::{mac1, Handshake};
use sealpipe::proto::messages::{
    MessageType, CONNECTOR_HELLO_BODY, MAC1_LEN, MSG_HEADER_LEN, RESUME_HELLO_BODY,
};
use sealpipe_fuzz::*;

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
        let hello_len = MSG_HEADER_LEN
            + match p.first() {
                Some(&t) if t == MessageType::ConnectorHello as u8 => CONNECTOR_HELLO_BODY,
                Some(&t) if t == MessageType::ResumeHello as u8 => RESUME_HELLO_BODY,
                _ => panic!("answer to an input that is no connector hello"),
            };
        assert!(p.len() >= hello_len, "answer to a short input");
        let unmacced = hello_len - MAC1_LEN;
        let keys = [
            listener_fingerprint(),
            next_listener_identity().fingerprint(),
        ];
        assert!(
            keys.iter()
                .any(|fp| p[unmacced..hello_len] == mac1(fp, &p[..unmacced])[..]),
            "answer without a valid mac1"
        );
        assert_eq!(out[0], MessageType::ListenerHello as u8);
    }
});
