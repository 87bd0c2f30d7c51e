//! The test vectors of PROTOCOL.md §8: fixed keys and fixed randomness give exactly these bytes.
//!
//! The expected values are read from PROTOCOL.md itself, so the document cannot drift from the
//! code. `SEALPIPE_PRINT_VECTORS=1 cargo test --test it vectors:: -- --nocapture` prints them.

use crate::support;

use sealpipe::proto::key_schedule::{expand_label, hash, Direction, HandshakeSecrets, Psk, Secret};
use sealpipe::proto::messages::{put_vec16, put_vec8};
use sealpipe::proto::mlkem;
use sealpipe::proto::record::{
    next_stream_secret, Alert, AlertCode, Opened, Opener, Sealer, HEADER_LEN, OVERHEAD,
};
use sealpipe::proto::resume::{binder, successors, ticket_id, ResumeSecrets};
use support::*;

/// The vectors. ML-KEM-768 in aws-lc-rs draws its own randomness, so a whole handshake is not
/// reproducible: the key schedule is pinned from fixed shared secrets and transcript hashes,
/// ML-KEM by a decapsulation with a fixed key (tests/data/mlkem768-*.bin), the records under the
/// fixed schedule's keys.
fn computed() -> Vec<(&'static str, String)> {
    let ss_mlkem = [0x11u8; 32];
    let dh = [0x22u8; 32];
    let hellos = hash(b"sealpipe2 vector hellos");
    let transcript = hash(b"sealpipe2 vector transcript");
    let hs = HandshakeSecrets::new(None, &ss_mlkem, &dh);
    let c_hs = hs.traffic(Direction::ConnectorToListener, &hellos);
    let l_hs = hs.traffic(Direction::ListenerToConnector, &hellos);
    let master = hs.master();
    let c_ap = master.traffic(Direction::ConnectorToListener, &transcript);
    let l_ap = master.traffic(Direction::ListenerToConnector, &transcript);
    let res = master.resumption(&transcript);
    let psk = Psk::from_bytes([0x33; 32]);
    let c_hs_psk = HandshakeSecrets::new(Some(&psk), &ss_mlkem, &dh)
        .traffic(Direction::ConnectorToListener, &hellos);
    let mut out = vec![
        ("c_hs_traffic", hex(c_hs.expose())),
        ("l_hs_traffic", hex(l_hs.expose())),
        ("c_hs_traffic_with_psk", hex(c_hs_psk.expose())),
        ("c_ap_traffic_0", hex(c_ap.expose())),
        ("l_ap_traffic_0", hex(l_ap.expose())),
        ("resumption_secret", hex(res.expose())),
        ("ticket_id", hex(&ticket_id(&res))),
    ];
    // The two successor tickets of §9: T_i = ExpandLabel(res, "ticket", [i], 32), their ids.
    for (i, t) in successors(&res).iter().enumerate() {
        out.push((["ticket_0", "ticket_1"][i], hex(t.expose())));
        out.push((["ticket_id_0", "ticket_id_1"][i], hex(&ticket_id(t))));
    }

    let dk = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/mlkem768-dk.bin"
    ))
    .unwrap();
    let ct = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/mlkem768-ct.bin"
    ))
    .unwrap();
    let dk = mlkem::DecapsulationKey::from_bytes(&dk).expect("fixed ML-KEM key");
    out.push(("mlkem_ek_sha256", hex(&hash(dk.encapsulation_key()))));
    out.push(("mlkem_ct_sha256", hex(&hash(&ct))));
    let ct: [u8; mlkem::CT_LEN] = ct.try_into().unwrap();
    out.push((
        "mlkem_shared_secret",
        hex(dk.decapsulate(&ct).unwrap().as_bytes()),
    ));

    let mut sealer = Sealer::new(c_ap.clone(), 4);
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
    let alert = Alert::new(AlertCode::ServiceMismatch, b"postgres");
    out.push(("alert_body_service_mismatch", hex(&alert.encode())));
    let rec = Sealer::new(l_ap.clone(), 1 << 30)
        .seal_alert(&alert)
        .unwrap();
    out.push(("alert_record_service_mismatch", hex(&rec)));
    let rec = Sealer::new(l_ap, 1 << 30)
        .seal_alert(&Alert::new(AlertCode::Untrusted, b""))
        .unwrap();
    out.push(("alert_record_untrusted", hex(&rec)));
    // ConnectorAuth plaintext fields with a service (before the signature and finished).
    let mut auth = Vec::new();
    put_vec16(&mut auth, b"spki");
    put_vec8(&mut auth, b"redis");
    out.push(("connector_auth_spki_service_fields", hex(&auth)));
    let info = sealpipe::proto::stream::StreamInfo {
        client: Some("192.0.2.1:40000".parse().unwrap()),
        local: Some("[2001:db8::2]:5432".parse().unwrap()),
        destination: Some("10.0.0.7:5432".parse().unwrap()),
    };
    out.push(("stream_info_body", hex(&info.encode())));
    let rs = ResumeSecrets::new(&res, &dh);
    let (c_rhs, l_rhs) = rs.handshake_traffic(&hellos);
    let (c_rap, l_rap, res2) = rs.application_traffic(&transcript);
    out.push(("c_res_hs_traffic", hex(c_rhs.expose())));
    out.push(("l_res_hs_traffic", hex(l_rhs.expose())));
    out.push(("c_res_ap_traffic_0", hex(c_rap.expose())));
    out.push(("l_res_ap_traffic_0", hex(l_rap.expose())));
    out.push(("resumed_resumption_secret", hex(res2.expose())));
    let listener = sealpipe::proto::identity::Fingerprint([0x44; 32]);
    let b = binder(&res, b"sealpipe2 vector resume hello", &listener);
    out.push(("resume_binder", hex(&b)));
    out.extend(kex_computed(
        &c_ap,
        &master.traffic(Direction::ListenerToConnector, &transcript),
    ));
    out
}

/// The fresh hybrid exchange of §4.5 inside the session of the fixed schedule: X25519 secrets
/// `0x44^32` (connector) and `0x55^32` (listener), the fixed ML-KEM-768 key and ciphertext of
/// tests/data as the connector's key pair and the listener's encapsulation; the records of the
/// exchange as the first records of the session (KeyShare and Done under `c_ap_traffic_0`, seq
/// 0 and 1; Reply under `l_ap_traffic_0`, seq 0), then `ping` and `pong` under the new keys.
fn kex_computed(c_ap: &Secret, l_ap: &Secret) -> Vec<(&'static str, String)> {
    use sealpipe::proto::kex::{respond_with, KeyShareOffer};
    use sealpipe::proto::record::RecordType;
    let dk_bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/mlkem768-dk.bin"
    ))
    .unwrap();
    let ct: [u8; mlkem::CT_LEN] = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/mlkem768-ct.bin"
    ))
    .unwrap()
    .try_into()
    .unwrap();
    let ss = mlkem::DecapsulationKey::from_bytes(&dk_bytes)
        .unwrap()
        .decapsulate(&ct)
        .unwrap();
    let offer = KeyShareOffer::new(
        [0x44; 32],
        mlkem::DecapsulationKey::from_bytes(&dk_bytes).unwrap(),
    );
    let share = offer.message().to_vec();
    let (reply, fresh_l) = respond_with([0x55; 32], &share, &ct, ss.as_bytes()).unwrap();
    let fresh_c = offer.finish(&reply[..]).unwrap();
    let mut out = vec![
        ("kex_key_share_sha256", hex(&hash(&share))),
        ("kex_reply_sha256", hex(&hash(&reply[..]))),
        ("kex_th", hex(&hash(&[&share[..], &reply[..]].concat()))),
    ];
    let c_next = fresh_c.next_secret(c_ap, Direction::ConnectorToListener);
    let l_next = fresh_c.next_secret(l_ap, Direction::ListenerToConnector);
    assert!(c_next == fresh_l.next_secret(c_ap, Direction::ConnectorToListener));
    assert!(l_next == fresh_l.next_secret(l_ap, Direction::ListenerToConnector));
    out.push(("kex_c_traffic", hex(c_next.expose())));
    out.push(("kex_l_traffic", hex(l_next.expose())));
    let record = |msg: &[u8]| {
        let mut r = vec![0u8; msg.len() + OVERHEAD];
        r[HEADER_LEN..HEADER_LEN + msg.len()].copy_from_slice(msg);
        r
    };
    let mut c = Sealer::new(c_ap.clone(), 1 << 30);
    let rec = c.seal_key_share(RecordType::KeyShare, &share).unwrap();
    out.push(("kex_record_key_share_sha256", hex(&hash(&rec))));
    let rec = c.seal_key_share(RecordType::KeyShareDone, &[]).unwrap();
    out.push(("kex_record_done", hex(&rec)));
    c.switch_hybrid(|s| fresh_c.next_secret(s, Direction::ConnectorToListener))
        .unwrap();
    let mut r = record(b"ping");
    c.seal_data(&mut r).unwrap();
    out.push(("kex_record_ping_after", hex(&r)));
    let mut l = Sealer::new(l_ap.clone(), 1 << 30);
    let rec = l
        .seal_key_share(RecordType::KeyShareReply, &reply[..])
        .unwrap();
    out.push(("kex_record_reply_sha256", hex(&hash(&rec))));
    l.switch_hybrid(|s| fresh_l.next_secret(s, Direction::ListenerToConnector))
        .unwrap();
    let mut r = record(b"pong");
    l.seal_data(&mut r).unwrap();
    out.push(("kex_record_pong_after", hex(&r)));
    out
}

/// Writes the fixed ML-KEM key and ciphertext (run once, by hand, to make new ones).
#[test]
#[ignore = "writes new fixed ML-KEM files into tests/data: run by hand only"]
fn make_fixed_mlkem_files() {
    // aws-lc-rs gives a key's encoding through `key_bytes`.
    let dk = aws_lc_rs::kem::DecapsulationKey::generate(&aws_lc_rs::kem::ML_KEM_768).unwrap();
    let bytes = dk.key_bytes().unwrap();
    let ek = dk.encapsulation_key().unwrap();
    let (ct, _) = ek.encapsulate().unwrap();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/");
    std::fs::write(format!("{dir}mlkem768-dk.bin"), bytes.as_ref()).unwrap();
    std::fs::write(format!("{dir}mlkem768-ct.bin"), ct.as_ref()).unwrap();
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

/// The stream boundary of PROTOCOL.md §4.3 under the fixed `c_ap_traffic_0` and
/// `l_ap_traffic_0` of §8: stream 1 (the connector's StreamInfo, `ping`, close; the listener's
/// `pong`, close), the next stream keys, and the first records of stream 2.
fn boundary_computed() -> Vec<(&'static str, String)> {
    let transcript = hash(b"sealpipe2 vector transcript");
    let master = HandshakeSecrets::new(None, &[0x11u8; 32], &[0x22u8; 32]).master();
    let c_ap = master.traffic(Direction::ConnectorToListener, &transcript);
    let l_ap = master.traffic(Direction::ListenerToConnector, &transcript);
    let info = |port: u16| {
        sealpipe::proto::stream::StreamInfo {
            client: Some(std::net::SocketAddr::from(([192, 0, 2, 1], port))),
            local: Some("192.0.2.2:5432".parse().unwrap()),
            destination: None,
        }
        .encode()
    };
    let record = |body: &[u8]| {
        let mut rec = vec![0u8; body.len() + OVERHEAD];
        rec[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
        rec
    };
    let close = |s: &mut Sealer| {
        let mut c = [0u8; OVERHEAD];
        s.seal_close(&mut c).unwrap();
        hex(&c)
    };
    let keys = |s: &Secret| {
        let (mut key, mut iv) = ([0u8; 32], [0u8; 12]);
        expand_label(s, "key", b"", &mut key);
        expand_label(s, "iv", b"", &mut iv);
        (hex(&key), hex(&iv))
    };
    let mut out = Vec::new();
    let mut c = Sealer::new(c_ap.clone(), 1 << 30);
    let mut l = Sealer::new(l_ap.clone(), 1 << 30);
    // Stream 1.
    let mut r = record(&info(40000));
    c.seal_stream_info(&mut r).unwrap();
    out.push(("s1_c_stream_info", hex(&r)));
    let mut r = record(b"ping");
    c.seal_data(&mut r).unwrap();
    out.push(("s1_c_data_ping", hex(&r)));
    out.push(("s1_c_close", close(&mut c)));
    let mut r = record(b"pong");
    l.seal_data(&mut r).unwrap();
    out.push(("s1_l_data_pong", hex(&r)));
    out.push(("s1_l_close", close(&mut l)));
    // The next stream keys.
    let c2 = next_stream_secret(&c_ap);
    let l2 = next_stream_secret(&l_ap);
    let (c2_key, c2_iv) = keys(&c2);
    let (l2_key, l2_iv) = keys(&l2);
    out.push(("s2_c_secret", hex(c2.expose())));
    out.push(("s2_c_key", c2_key));
    out.push(("s2_c_iv", c2_iv));
    out.push(("s2_l_secret", hex(l2.expose())));
    out.push(("s2_l_key", l2_key));
    out.push(("s2_l_iv", l2_iv));
    // Stream 2: the connector's StreamInfo, then the listener's first record.
    let mut r = record(&info(40001));
    c.seal_stream_info(&mut r).unwrap();
    out.push(("s2_c_stream_info", hex(&r)));
    l.begin_stream().unwrap();
    let mut r = record(b"pong");
    l.seal_data(&mut r).unwrap();
    out.push(("s2_l_data_pong", hex(&r)));
    // Keepalives (PROTOCOL.md §4.4): the listener's Ping (seq 1 under s2_l_key), the
    // connector's Pong (seq 1 under s2_c_key).
    out.push(("s2_l_ping", hex(&l.seal_ping().unwrap())));
    out.push(("s2_c_pong", hex(&c.seal_pong().unwrap())));
    out
}

/// Computed once from the code (`SEALPIPE_PRINT_VECTORS=1`), then fixed.
const BOUNDARY_VECTORS: &[(&str, &str)] = &[
    (
        "s1_c_stream_info",
        "04000020cf6feedcbd2bc220077a7d7430a5f73e5b3e8ec0e7742ecad056ac1e23f67ca6",
    ),
    (
        "s1_c_data_ping",
        "0100001426f62db6d32b6cb478f4c0ba0769ed40eb1989d3",
    ),
    ("s1_c_close", "0200001004f25dfdb65a495b7d874c1500cde91b"),
    (
        "s1_l_data_pong",
        "010000140a220102e72e6be6172df7ca9b240c610bf904ec",
    ),
    ("s1_l_close", "02000010822af343fc34f9c278ff0c8cc9520da9"),
    (
        "s2_c_secret",
        "45725f281da39554072a6af4ba0b19fd5928f6caa6d1d7486bc6e01401a80abc",
    ),
    (
        "s2_c_key",
        "4e5aeebf1ec7a0ac839939d1226823f8dcbf17e3aeea4eef63aa7d24119ae8d3",
    ),
    ("s2_c_iv", "5e68e8f00331cb92a5b946e4"),
    (
        "s2_l_secret",
        "4ef853c75533f943f322458d52cb9fa4d530b6e600f9e2956ec1479a25abbd2d",
    ),
    (
        "s2_l_key",
        "42fc0476a5c5707207ed017b2e8c2b2d02879d10c81d915ec24fdbb0161a2fda",
    ),
    ("s2_l_iv", "288eea8c59c142fa24f62dce"),
    (
        "s2_c_stream_info",
        "0400002001cc1f46b09a1d0f03ed87b16eef0058a1bfde62f63bc9122af3ccd9b4542814",
    ),
    (
        "s2_l_data_pong",
        "01000014015a037f0879f7fd6240ec5c81485912b436c31a",
    ),
    ("s2_l_ping", "060000101f18f43481235277da03cc1c377cc5e6"),
    ("s2_c_pong", "070000100d7708c3cf38d5c7cd07c8475477373f"),
];

#[test]
fn stream_boundary_vectors_are_fixed_and_in_protocol_md() {
    let got = boundary_computed();
    if std::env::var_os("SEALPIPE_PRINT_VECTORS").is_some() {
        for (k, v) in &got {
            println!("    {k} = {v}");
        }
    }
    let fixed: Vec<(&str, String)> = BOUNDARY_VECTORS
        .iter()
        .map(|(k, v)| (*k, v.to_string()))
        .collect();
    assert_eq!(got, fixed);
    // The records open in order, through the boundary, with the readers' calls of §4.3.
    let bytes = |k: &str| -> Vec<u8> {
        let v = &got.iter().find(|(n, _)| *n == k).unwrap().1;
        (0..v.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&v[i..i + 2], 16).unwrap())
            .collect()
    };
    let transcript = hash(b"sealpipe2 vector transcript");
    let master = HandshakeSecrets::new(None, &[0x11u8; 32], &[0x22u8; 32]).master();
    let mut lo = Opener::new(master.traffic(Direction::ConnectorToListener, &transcript));
    let mut co = Opener::new(master.traffic(Direction::ListenerToConnector, &transcript));
    assert!(lo.open_stream_info(&mut bytes("s1_c_stream_info")).is_ok());
    assert_eq!(
        lo.open(&mut bytes("s1_c_data_ping")),
        Ok(Opened::Data(&b"ping"[..]))
    );
    assert_eq!(lo.open(&mut bytes("s1_c_close")), Ok(Opened::Close));
    co.begin_stream().unwrap();
    assert_eq!(
        co.open(&mut bytes("s1_l_data_pong")),
        Ok(Opened::Data(&b"pong"[..]))
    );
    assert_eq!(co.open(&mut bytes("s1_l_close")), Ok(Opened::Close));
    assert!(lo.open_stream_info(&mut bytes("s2_c_stream_info")).is_ok());
    co.begin_stream().unwrap();
    assert_eq!(
        co.open(&mut bytes("s2_l_data_pong")),
        Ok(Opened::Data(&b"pong"[..]))
    );
    assert_eq!(co.open(&mut bytes("s2_l_ping")), Ok(Opened::Ping));
    assert_eq!(lo.open(&mut bytes("s2_c_pong")), Ok(Opened::Pong));
    // PROTOCOL.md §4.3 lists the same values.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md")).unwrap();
    let section = doc
        .split("### 4.3 ")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("PROTOCOL.md has §4.3");
    for (k, v) in &got {
        let line = format!("    {k} = {v}");
        assert!(
            section.lines().any(|l| l == line),
            "PROTOCOL.md §4.3 lacks or differs on:\n{line}"
        );
    }
}
