//! Shared pieces of the sealpipe fuzz targets: the committed test keys (loaded once), fixed
//! handshake randomness, a cheap listener signer, the input framing that splits a fuzz input into
//! several `read` calls, and the record-stream reader of `src/tunnel/pump.rs`.
//!
//! Nothing here is used by sealpipe itself; see `fuzz/README.md` and `fuzz/run.sh`.

use std::sync::{Arc, OnceLock};

use sealpipe::proto::handshake::{ConnectorParams, Handshake, HandshakeRandomness, ListenerParams};
use sealpipe::proto::identity::{
    Fingerprint, IdentityError, PrivateIdentity, PublicIdentity, Signer, TrustList,
};
use sealpipe::proto::key_schedule::{Secret, TrafficKey};
use sealpipe::proto::messages::{header, MessageType};
use sealpipe::proto::record::{parse_header, Opened, Opener, RecordError, HEADER_LEN};

/// The listener's test key (PROTOCOL.md §8).
pub const LISTENER_PEM: &str = include_str!("../../tests/data/openssl-rsa2048.pem");
/// The connector's test key (PROTOCOL.md §8).
pub const CONNECTOR_PEM: &str = include_str!("../../tests/data/peer-b.pem");
/// A second listener key, held as `next_identity` by [`listener_params`] (a key rotation).
pub const NEXT_LISTENER_PEM: &str = include_str!("../../tests/data/untrusted.pem");

/// The service both fuzz tunnels name (PROTOCOL.md §6).
pub const SERVICE: &str = "fuzz";

/// `c_ap_traffic_0` of PROTOCOL.md §8: the records of the vectors open under it.
pub const VECTOR_C_AP_TRAFFIC_0: &str =
    "06a3dbbab18f69ac1dc9ee68931d64f572350f7e423ee3bad452f55dbe9672bd";
/// `l_ap_traffic_0` of PROTOCOL.md §8: the Alert records of the vectors open under it.
pub const VECTOR_L_AP_TRAFFIC_0: &str =
    "2e579f7be78d71d2a8f9d3eb058676d61478976b7b50ea26ca70317264b6fe39";

/// `kex_c_traffic` and `kex_l_traffic` of PROTOCOL.md §8: each direction's secret after the
/// vectors' fresh hybrid exchange (§4.5).
pub const VECTOR_KEX_C_TRAFFIC: &str =
    "ba2872a4cf9c73440f2a0e5b9e89110456cb652070c5be059bc7143b46ac9baf";
/// See [`VECTOR_KEX_C_TRAFFIC`].
pub const VECTOR_KEX_L_TRAFFIC: &str =
    "5a464cd91edcd49ddc1ae2b73f3405d4ac4a4fa564c6e7c9a1b592f375d914d9";

/// The fixed ML-KEM-768 decapsulation key of the vectors (`tests/data/mlkem768-dk.bin`): a
/// harness that puts its encapsulation key in a hello can decapsulate the listener's answer,
/// and so derive the handshake keys and reach what lies behind the AEAD.
pub const FIXED_MLKEM_DK: &[u8] = include_bytes!("../../tests/data/mlkem768-dk.bin");

/// The encapsulation key of [`FIXED_MLKEM_DK`].
pub fn fixed_mlkem_ek() -> [u8; sealpipe::proto::mlkem::EK_LEN] {
    *sealpipe::proto::mlkem::DecapsulationKey::from_bytes(FIXED_MLKEM_DK)
        .expect("fixed ML-KEM key")
        .encapsulation_key()
}

/// Decapsulates a listener's ciphertext with [`FIXED_MLKEM_DK`].
pub fn fixed_mlkem_decapsulate(ct: &[u8; sealpipe::proto::mlkem::CT_LEN]) -> [u8; 32] {
    *sealpipe::proto::mlkem::DecapsulationKey::from_bytes(FIXED_MLKEM_DK)
        .expect("fixed ML-KEM key")
        .decapsulate(ct)
        .expect("decapsulation")
        .as_bytes()
}

/// The listener's identity, parsed once per process.
pub fn listener_identity() -> Arc<PrivateIdentity> {
    static KEY: OnceLock<Arc<PrivateIdentity>> = OnceLock::new();
    KEY.get_or_init(|| Arc::new(PrivateIdentity::from_pem(LISTENER_PEM).expect("listener key")))
        .clone()
}

/// The listener's second key ([`NEXT_LISTENER_PEM`]), parsed once per process.
pub fn next_listener_identity() -> Arc<PrivateIdentity> {
    static KEY: OnceLock<Arc<PrivateIdentity>> = OnceLock::new();
    KEY.get_or_init(|| {
        Arc::new(PrivateIdentity::from_pem(NEXT_LISTENER_PEM).expect("next listener key"))
    })
    .clone()
}

/// The connector's identity, parsed once per process.
pub fn connector_identity() -> Arc<PrivateIdentity> {
    static KEY: OnceLock<Arc<PrivateIdentity>> = OnceLock::new();
    KEY.get_or_init(|| Arc::new(PrivateIdentity::from_pem(CONNECTOR_PEM).expect("connector key")))
        .clone()
}

/// The listener's fingerprint (what mac1 is keyed with and what the connector pins).
pub fn listener_fingerprint() -> Fingerprint {
    listener_identity().fingerprint()
}

/// Fixed handshake randomness. Deliberately *not* the randomness of the PROTOCOL.md vectors: a
/// seed holding the vectors' recorded flights must not be able to complete a handshake.
pub fn fixed_randomness(label: u8) -> HandshakeRandomness {
    HandshakeRandomness {
        random: [label; 32],
        ephemeral: std::array::from_fn(|i| label ^ (i as u8).wrapping_mul(37)),
    }
}

/// Randomness of the connector in the connector-side targets.
pub const CONNECTOR_RAND: u8 = 0xc0;
/// Randomness of the listener in the listener-side targets.
pub const LISTENER_RAND: u8 = 0x1e;

/// A listener signer that makes one real RSA-PSS signature per process and returns it for every
/// later call. With fixed randomness the listener signs the same transcript every time, so the
/// signature stays valid; it saves an RSA private-key operation per fuzz iteration in targets
/// that test what comes *after* the listener's signature.
pub struct CachedSigner {
    inner: Arc<PrivateIdentity>,
    signature: OnceLock<Vec<u8>>,
}

impl Signer for CachedSigner {
    fn public(&self) -> &PublicIdentity {
        self.inner.public()
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, IdentityError> {
        if let Some(sig) = self.signature.get() {
            return Ok(sig.clone());
        }
        let sig = self.inner.sign(msg)?;
        Ok(self.signature.get_or_init(|| sig).clone())
    }
}

fn trust_connector() -> Arc<TrustList> {
    let mut trust = TrustList::new();
    trust.insert(
        connector_identity().fingerprint(),
        Some("fuzz connector".into()),
    );
    Arc::new(trust)
}

/// Listener parameters with the real signers (an RSA signature per accepted hello), holding two
/// keys as during a rotation: hellos keyed for either are answered.
pub fn listener_params() -> ListenerParams {
    static P: OnceLock<ListenerParams> = OnceLock::new();
    P.get_or_init(|| ListenerParams {
        identity: listener_identity(),
        next_identity: Some(next_listener_identity()),
        trust: trust_connector(),
        psk: None,
        accept_unknown: false,
        allow_tofu: false,
        service: SERVICE.into(),
    })
    .clone()
}

/// Listener parameters with [`CachedSigner`].
pub fn listener_params_cached() -> ListenerParams {
    static P: OnceLock<ListenerParams> = OnceLock::new();
    P.get_or_init(|| ListenerParams {
        identity: Arc::new(CachedSigner {
            inner: listener_identity(),
            signature: OnceLock::new(),
        }),
        next_identity: None,
        trust: trust_connector(),
        psk: None,
        accept_unknown: false,
        allow_tofu: false,
        service: SERVICE.into(),
    })
    .clone()
}

/// Connector parameters: the connector key, pinned to the listener key, no PSK.
pub fn connector_params() -> ConnectorParams {
    static P: OnceLock<ConnectorParams> = OnceLock::new();
    P.get_or_init(|| ConnectorParams {
        identity: connector_identity(),
        listener: listener_fingerprint().into(),
        psk: None,
        service: SERVICE.into(),
    })
    .clone()
}

/// A fresh connector handshake with fixed randomness; its hello has been taken already.
pub fn connector() -> (Handshake, Vec<u8>) {
    let mut c = Handshake::connector(connector_params(), fixed_randomness(CONNECTOR_RAND));
    let hello = c.take_output();
    (c, hello)
}

/// X25519 of the connector's fixed ephemeral secret and a peer public key.
pub fn connector_x25519(peer: [u8; 32]) -> [u8; 32] {
    let secret = x25519_dalek::StaticSecret::from(fixed_randomness(CONNECTOR_RAND).ephemeral);
    secret
        .diffie_hellman(&x25519_dalek::PublicKey::from(peer))
        .to_bytes()
}

/// A whole auth message (`kind`, header, ciphertext, tag) sealing `plaintext` under the
/// handshake traffic secret `hs_traffic`, as `make_auth` in `proto/handshake/common.rs` does.
/// Lets a target hand fuzzer-chosen *plaintext* to the code behind the AEAD.
pub fn seal_auth(kind: MessageType, hs_traffic: &Secret, plaintext: &[u8]) -> Vec<u8> {
    let hdr = header(kind, plaintext.len() + 16);
    let mut body = plaintext.to_vec();
    let key = TrafficKey::new(hs_traffic);
    let tag = key
        .aead()
        .seal_in_place(&key.nonce(0), &hdr, &mut body)
        .expect("seal");
    let mut msg = hdr.to_vec();
    msg.extend_from_slice(&body);
    msg.extend_from_slice(&tag);
    msg
}

/// A whole record of type `kind` (any byte) sealing `plaintext` under `secret` at sequence
/// `seq` of generation 0: lets a target hand fuzzer-chosen record *bodies* (an Alert's, say) to
/// the code behind the AEAD, at any position.
pub fn seal_record(kind: u8, secret: &Secret, seq: u64, plaintext: &[u8]) -> Vec<u8> {
    let len = ((plaintext.len() + 16) as u32).to_be_bytes();
    let hdr = [kind, len[1], len[2], len[3]];
    let mut body = plaintext.to_vec();
    let key = TrafficKey::new(secret);
    let tag = key
        .aead()
        .seal_in_place(&key.nonce(seq), &hdr, &mut body)
        .expect("seal");
    let mut rec = hdr.to_vec();
    rec.extend_from_slice(&body);
    rec.extend_from_slice(&tag);
    rec
}

/// A fuzz input cut into the pieces given to successive `read` calls.
///
/// Framing: byte 0 gives the number of cuts `n = byte0 % 8`, then come `n` big-endian u16 chunk
/// lengths, then the payload. The payload is cut into chunks of those lengths (clamped to what
/// is left) and the rest is the last chunk. A seed made from a raw message is `0x00 || message`.
pub struct Chunked<'a> {
    /// All the bytes the peer sends, in order.
    pub payload: &'a [u8],
    /// `payload` cut into reads.
    pub chunks: Vec<&'a [u8]>,
}

impl<'a> Chunked<'a> {
    /// Parses the framing above; never fails.
    pub fn new(data: &'a [u8]) -> Self {
        let Some((&first, mut rest)) = data.split_first() else {
            return Chunked {
                payload: &[],
                chunks: Vec::new(),
            };
        };
        let mut lens = Vec::new();
        for _ in 0..first % 8 {
            let Some((l, r)) = rest.split_first_chunk::<2>() else {
                break;
            };
            lens.push(u16::from_be_bytes(*l) as usize);
            rest = r;
        }
        let payload = rest;
        let mut chunks = Vec::with_capacity(lens.len() + 1);
        for len in lens {
            let (c, r) = rest.split_at(len.min(rest.len()));
            chunks.push(c);
            rest = r;
        }
        chunks.push(rest);
        Chunked { payload, chunks }
    }
}

/// Feeds `chunks` to `hs` one `read` at a time and checks the contract of `Handshake::read`:
/// while the handshake is not done, every byte is consumed; after an error every later read is
/// an error too, and no output appears. Returns everything the handshake wanted to send.
pub fn drive_reads(hs: &mut Handshake, chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut failed = false;
    for chunk in chunks {
        let done_before = hs.is_done();
        match hs.read(chunk) {
            Ok(n) => {
                assert!(!failed, "read succeeded after the handshake failed");
                assert!(n <= chunk.len());
                if !hs.is_done() && !done_before {
                    assert_eq!(n, chunk.len(), "bytes left unconsumed mid-handshake");
                }
            }
            Err(_) => {
                let after = hs.take_output();
                // Output made before the failure may still be pending (the listener's
                // flight), but an error never adds output of its own: nothing is sent.
                if failed {
                    assert!(after.is_empty(), "output after a failed handshake");
                }
                out.extend_from_slice(&after);
                failed = true;
                continue;
            }
        }
        out.extend_from_slice(&hs.take_output());
    }
    out
}

/// What [`read_records`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// A data record's plaintext.
    Data(Vec<u8>),
    /// A rekey record.
    Rekey,
    /// A close record.
    Close,
    /// A Ping record (PROTOCOL.md §4.4).
    Ping,
    /// A Pong record.
    Pong,
}

/// Reads records from `stream` exactly as `sealed_to_plain` in `src/tunnel/pump.rs` does: wait
/// for a header, size the record with `parse_header`, open it in place when it is all there.
/// Stops at the first error, at a close record, or when the bytes run out.
pub fn read_records(opener: &mut Opener, stream: &mut [u8]) -> (Vec<Seen>, Option<RecordError>) {
    let mut seen = Vec::new();
    let mut start = 0;
    loop {
        let Some(h) = stream[start..].first_chunk::<HEADER_LEN>() else {
            return (seen, None);
        };
        let total = match parse_header(h) {
            Ok((_, total)) => total,
            Err(e) => return (seen, Some(e)),
        };
        if stream.len() - start < total {
            return (seen, None);
        }
        match opener.open(&mut stream[start..start + total]) {
            Ok(Opened::Data(d)) => seen.push(Seen::Data(d.to_vec())),
            Ok(Opened::Rekey) => seen.push(Seen::Rekey),
            Ok(Opened::Ping) => seen.push(Seen::Ping),
            Ok(Opened::Pong) => seen.push(Seen::Pong),
            Ok(Opened::Close) => {
                seen.push(Seen::Close);
                return (seen, None);
            }
            Ok(Opened::Alert(a)) => return (seen, Some(RecordError::Refused(a))),
            // No key exchange runs here (the `kex_exchange` target drives one).
            Ok(Opened::KeyShare(kind, _)) => return (seen, Some(RecordError::Unexpected(kind))),
            Err(e) => return (seen, Some(e)),
        }
        start += total;
    }
}

/// Decodes lowercase hex (for constants from PROTOCOL.md).
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}
