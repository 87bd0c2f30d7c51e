//! The test vectors of PROTOCOL.md §8: fixed keys and fixed randomness give exactly these bytes.
//!
//! The expected values are read from PROTOCOL.md itself, so the document cannot drift from the
//! code. `SEALPIPE_PRINT_VECTORS=1 cargo test --test vectors -- --nocapture` prints them.

mod support;

use std::sync::Arc;

use std::sync::Mutex;
use std::time::Instant;

use sealpipe::proto::handshake::{ConnectorParams, Handshake, ListenerParams, Resumption};
use sealpipe::proto::keys::hash;
use sealpipe::proto::record::{HEADER_LEN, OVERHEAD};
use sealpipe::proto::resume::{ticket_id, ConnectorTickets, TicketPolicy, TicketStore};
use support::*;

fn computed() -> Vec<(&'static str, String)> {
    let (cparams, lparams) = det_pair_with("vector listener pss", "vector connector pss");
    let (l, c) = (lparams.identity.clone(), cparams.identity.clone());
    // Ticket stores: the full handshake files its ticket, the resumed one below uses it.
    let now = Instant::now();
    let cstore = Arc::new(Mutex::new(ConnectorTickets::default()));
    let lstore = Arc::new(Mutex::new(TicketStore::default()));
    let cres = Resumption {
        store: cstore,
        policy: TicketPolicy::default(),
        now,
    };
    let lres = Resumption {
        store: lstore,
        policy: TicketPolicy::default(),
        now,
    };
    let ch = Handshake::connector_resuming(
        cparams.clone(),
        det_randomness("vector connector"),
        cres.clone(),
    );
    let lh = Handshake::listener_resuming(
        lparams.clone(),
        det_randomness("vector listener"),
        lres.clone(),
    );
    let mut flights = Vec::new();
    let Outcome::Done(done) = drive(ch, lh, |_, b| flights.push(b.clone())) else {
        panic!("vector handshake failed")
    };
    let (ce, le) = *done;
    assert_eq!(ce.transcript_hash, le.transcript_hash);
    let mut out = vec![
        ("listener_fingerprint", l.public().fingerprint().to_string()),
        (
            "connector_fingerprint",
            c.public().fingerprint().to_string(),
        ),
        ("connector_hello", hex(&flights[0])),
        ("listener_hello", hex(&flights[1][..69])),
        ("listener_auth_sha256", hex(&hash(&flights[1][69..]))),
        ("listener_auth_len", (flights[1].len() - 69).to_string()),
        ("connector_auth_sha256", hex(&hash(&flights[2]))),
        ("connector_auth_len", flights[2].len().to_string()),
        ("transcript_sha256", hex(&ce.transcript_hash)),
        ("c_ap_traffic_0", hex(ce.send.expose())),
        ("l_ap_traffic_0", hex(ce.recv.expose())),
    ];
    out.push(("resumption_secret", hex(ce.resumption.expose())));
    out.push(("ticket_id", hex(&ticket_id(&ce.resumption))));
    out.extend(resumed(cparams, lparams, cres, lres));
    let (mut sealer, _) = ce.into_record_layer(4);
    let mut rec = vec![0u8; 4 + OVERHEAD];
    rec[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(b"ping");
    sealer.seal_data(&mut rec).unwrap();
    out.push(("first_record_ping", hex(&rec)));
    let mut rekey = [0u8; OVERHEAD];
    sealer.seal_rekey(&mut rekey).unwrap();
    out.push(("second_record_rekey", hex(&rekey)));
    let mut rec = vec![0u8; 4 + OVERHEAD];
    rec[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(b"pong");
    sealer.seal_data(&mut rec).unwrap();
    out.push(("third_record_pong_generation_1", hex(&rec)));
    let info = sealpipe::proto::stream::StreamInfo {
        client: Some("192.0.2.1:40000".parse().unwrap()),
        local: Some("[2001:db8::2]:5432".parse().unwrap()),
        destination: Some("10.0.0.7:5432".parse().unwrap()),
    };
    out.push(("stream_info_body", hex(&info.encode())));
    out
}

/// The resumed handshake that follows the full one, with the ticket it made.
fn resumed(
    cparams: ConnectorParams,
    lparams: ListenerParams,
    cres: Resumption<ConnectorTickets>,
    lres: Resumption<TicketStore>,
) -> Vec<(&'static str, String)> {
    let ch =
        Handshake::connector_resuming(cparams, det_randomness("vector resume connector"), cres);
    let lh = Handshake::listener_resuming(lparams, det_randomness("vector resume listener"), lres);
    let mut flights = Vec::new();
    let Outcome::Done(done) = drive(ch, lh, |_, b| flights.push(b.clone())) else {
        panic!("vector resumption failed")
    };
    let (ce, le) = *done;
    assert!(ce.resumed && le.resumed);
    assert_eq!(ce.transcript_hash, le.transcript_hash);
    vec![
        ("resume_hello", hex(&flights[0])),
        ("resume_accept", hex(&flights[1])),
        ("resume_finished", hex(&flights[2])),
        ("resumed_transcript_sha256", hex(&ce.transcript_hash)),
        ("c_res_ap_traffic_0", hex(ce.send.expose())),
        ("l_res_ap_traffic_0", hex(ce.recv.expose())),
    ]
}

#[test]
fn protocol_md_vectors_match_the_code() {
    let got = computed();
    if std::env::var_os("SEALPIPE_PRINT_VECTORS").is_some() {
        for (k, v) in &got {
            println!("    {k} = {v}");
        }
    }
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md")).unwrap();
    let section = doc
        .split("## 8. Test vectors")
        .nth(1)
        .expect("PROTOCOL.md has §8");
    for (k, v) in &got {
        let line = format!("    {k} = {v}");
        assert!(
            section.lines().any(|l| l == line),
            "PROTOCOL.md §8 lacks or differs on:\n{line}"
        );
    }
    // And the run is deterministic.
    assert_eq!(got, computed());
}
