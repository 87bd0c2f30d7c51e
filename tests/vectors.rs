//! The test vectors of PROTOCOL.md §8: fixed keys and fixed randomness give exactly these bytes.
//!
//! The expected values are read from PROTOCOL.md itself, so the document cannot drift from the
//! code. `SEALPIPE_PRINT_VECTORS=1 cargo test --test vectors -- --nocapture` prints them.

mod support;

use sealpipe::proto::keys::{derive_secret, hash, Direction, HandshakeSecrets, Psk};
use sealpipe::proto::messages::{put_vec16, put_vec8};
use sealpipe::proto::mlkem;
use sealpipe::proto::record::{Alert, AlertCode, Sealer, HEADER_LEN, OVERHEAD};
use sealpipe::proto::resume::{ticket_id, ResumeSecrets};
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
    for i in 0..2u8 {
        let t = derive_secret(&res, "ticket", &[i]);
        out.push((["ticket_0", "ticket_1"][i as usize], hex(t.expose())));
        out.push((
            ["ticket_id_0", "ticket_id_1"][i as usize],
            hex(&ticket_id(&t)),
        ));
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
    out
}

/// Writes the fixed ML-KEM key and ciphertext (run once, by hand, to make new ones).
#[test]
#[ignore]
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
