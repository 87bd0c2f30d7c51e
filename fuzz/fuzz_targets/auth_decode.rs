//! The auth message plaintext decoder (`proto::messages::Auth::decode`), the parser behind the
//! AEAD of ListenerAuth (`vec16(spki) ‖ vec16(signature) ‖ finished`) and ConnectorAuth
//! (`vec16(spki) ‖ vec8(service) ‖ vec16(signature) ‖ finished`, PROTOCOL.md §2), on arbitrary
//! bytes. Never panics; what decodes re-encodes to exactly the input, within the limits.
//!
//! Input byte 0: bit 0 set, decode as a ConnectorAuth (with the service); the rest is the
//! plaintext.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpipe::proto::identity::{MAX_SIGNATURE_LEN, MAX_SPKI_LEN};
use sealpipe::proto::messages::{put_vec16, put_vec8, valid_service, Auth, MAX_SERVICE_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, plain)) = data.split_first() else {
        return;
    };
    let with_service = mode & 1 == 1;
    let Ok(auth) = Auth::decode(plain, with_service) else {
        return;
    };
    assert!((1..=MAX_SPKI_LEN).contains(&auth.spki.len()));
    assert!((1..=MAX_SIGNATURE_LEN).contains(&auth.signature.len()));
    assert_eq!(auth.service.is_some(), with_service);
    let mut again = Vec::new();
    put_vec16(&mut again, auth.spki);
    if let Some(s) = auth.service {
        assert!(s.len() <= MAX_SERVICE_LEN && valid_service(s));
        put_vec8(&mut again, s);
    }
    put_vec16(&mut again, auth.signature);
    again.extend_from_slice(auth.finished);
    assert_eq!(again, plain, "decoded fields do not re-encode to the input");
});
