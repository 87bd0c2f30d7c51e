//! `StreamInfo::decode` on arbitrary bytes (the body of the connector's first record, PROTOCOL.md
//! §4.1). Never panics; decoding is strict, so whatever decodes re-encodes to exactly the input;
//! and the PROXY v2 header built from it has the length its own length field says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpipe::proto::stream::{proxy_v2_header, StreamInfo, MAX_STREAM_INFO_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(info) = StreamInfo::decode(data) else {
        return;
    };
    assert!(data.len() <= MAX_STREAM_INFO_LEN);
    assert_eq!(
        info.encode(),
        data,
        "a decoded StreamInfo re-encodes differently"
    );
    let h = proxy_v2_header(&info);
    assert!(h.len() >= 16);
    assert_eq!(
        h.len() - 16,
        usize::from(u16::from_be_bytes([h[14], h[15]]))
    );
});
