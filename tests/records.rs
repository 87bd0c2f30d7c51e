//! Record-layer attacks on an established session: every manipulation ends the connection.

mod support;

use sealpipe::proto::handshake::Established;
use sealpipe::proto::keys::Secret;
use sealpipe::proto::record::{
    parse_header, Opened, Opener, RecordError, Sealer, HEADER_LEN, OVERHEAD,
};
use support::*;

/// A session whose keys are the same at every call: the traffic secrets of one real handshake
/// (ML-KEM draws its own randomness, so every handshake has other keys), kept for the process.
fn session(rekey_bytes: u64) -> ((Sealer, Opener), (Sealer, Opener)) {
    static KEYS: std::sync::OnceLock<(Secret, Secret)> = std::sync::OnceLock::new();
    let (c, l) = KEYS.get_or_init(|| {
        let (cp, lp) = det_pair();
        let Outcome::Done(done) = handshake(cp, lp, "rec") else {
            panic!("handshake")
        };
        let (ce, _): (Established, Established) = *done;
        (ce.send.clone(), ce.recv.clone())
    });
    (
        (Sealer::new(c.clone(), rekey_bytes), Opener::new(l.clone())),
        (Sealer::new(l.clone(), rekey_bytes), Opener::new(c.clone())),
    )
}

fn seal(s: &mut Sealer, msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if s.rekey_due() {
        let mut rk = [0u8; OVERHEAD];
        s.seal_rekey(&mut rk).unwrap();
        out.extend_from_slice(&rk);
    }
    let mut rec = vec![0u8; msg.len() + OVERHEAD];
    rec[HEADER_LEN..HEADER_LEN + msg.len()].copy_from_slice(msg);
    s.seal_data(&mut rec).unwrap();
    out.extend_from_slice(&rec);
    out
}

/// Splits a byte stream into records and opens them all; returns the data, or the first error.
fn open_stream(o: &mut Opener, mut stream: &[u8]) -> Result<Vec<u8>, RecordError> {
    let mut data = Vec::new();
    while !stream.is_empty() {
        let h: [u8; HEADER_LEN] = stream[..HEADER_LEN].try_into().unwrap();
        let (_, len) = parse_header(&h)?;
        if len > stream.len() {
            // The reader would wait for bytes that never come, then see EOF.
            return Err(RecordError::Truncated);
        }
        let mut rec = stream[..len].to_vec();
        stream = &stream[len..];
        match o.open(&mut rec)? {
            Opened::Data(d) => data.extend_from_slice(d),
            Opened::Close | Opened::Rekey => {}
            Opened::Alert(a) => return Err(RecordError::Refused(a)),
        }
    }
    Ok(data)
}

fn records(s: &mut Sealer, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| seal(s, format!("record {i}").as_bytes()))
        .collect()
}

#[test]
fn a_flipped_bit_anywhere_in_a_record_is_refused() {
    let ((mut cs, _), (_, mut lo)) = session(1 << 20);
    let rec = seal(&mut cs, b"some application data");
    // The untouched record opens in a fresh session with the same keys: the flips below are
    // what makes them fail.
    assert_eq!(
        open_stream(&mut lo, &rec).unwrap(),
        b"some application data"
    );
    for pos in 0..rec.len() {
        for bit in 0..8 {
            let ((mut cs2, _), (_, mut lo)) = session(1 << 20);
            let mut r = seal(&mut cs2, b"some application data");
            r[pos] ^= 1 << bit;
            assert!(open_stream(&mut lo, &r).is_err(), "byte {pos} bit {bit}");
        }
    }
}

#[test]
fn dropped_duplicated_and_reordered_records_are_refused() {
    let ((mut cs, _), _) = session(1 << 20);
    let recs = records(&mut cs, 3);
    let check = |order: &[usize]| {
        let (_, (_, mut lo)) = session(1 << 20);
        let stream: Vec<u8> = order.iter().flat_map(|&i| recs[i].clone()).collect();
        open_stream(&mut lo, &stream)
    };
    assert!(check(&[0, 1, 2]).is_ok());
    assert_eq!(check(&[0, 2]), Err(RecordError::BadRecord), "dropped");
    assert_eq!(check(&[0, 0, 1]), Err(RecordError::BadRecord), "duplicated");
    assert_eq!(check(&[1, 0, 2]), Err(RecordError::BadRecord), "reordered");
}

#[test]
fn a_record_reflected_to_its_sender_is_refused() {
    let ((mut cs, mut co), _) = session(1 << 20);
    let r = seal(&mut cs, b"to the listener");
    assert_eq!(open_stream(&mut co, &r), Err(RecordError::BadRecord));
}

#[test]
fn a_record_replayed_into_another_session_is_refused() {
    let ((mut cs, _), _) = session(1 << 20);
    let r = seal(&mut cs, b"from session one");
    // Another session between the same keys (fresh randomness).
    let Outcome::Done(done) = pair(None).handshake("other") else {
        panic!()
    };
    let (_, mut lo) = done.1.into_record_layer(1 << 20);
    assert_eq!(open_stream(&mut lo, &r), Err(RecordError::BadRecord));
}

#[test]
fn truncation_without_close_record_is_detected() {
    let ((mut cs, _), (_, mut lo)) = session(1 << 20);
    let stream = records(&mut cs, 2).concat();
    open_stream(&mut lo, &stream).unwrap();
    assert_eq!(lo.end_of_stream(), Err(RecordError::Truncated));
    let mut close = [0u8; OVERHEAD];
    cs.seal_close(&mut close).unwrap();
    assert_eq!(lo.open(&mut close).unwrap(), Opened::Close);
    assert_eq!(lo.end_of_stream(), Ok(()));
}

#[test]
fn a_close_record_cannot_be_forged_or_retyped() {
    let ((mut cs, _), (_, mut lo)) = session(1 << 20);
    // A data record whose type byte says Close: the header is authenticated.
    let mut r = seal(&mut cs, b"x");
    r[0] = 2;
    assert_eq!(open_stream(&mut lo, &r), Err(RecordError::BadRecord));
}

#[test]
fn forged_or_misplaced_rekey_records_are_refused() {
    // Forged: an attacker's rekey record (random bytes with a rekey header).
    let (_, (_, mut lo)) = session(1 << 20);
    let mut forged = [0u8; OVERHEAD];
    forged[..4].copy_from_slice(&[3, 0, 0, 16]);
    assert_eq!(lo.open(&mut forged), Err(RecordError::BadRecord));

    // Misplaced: a genuine rekey record delivered twice, or after later data, or dropped.
    let ((mut cs, _), _) = session(1);
    let first = seal(&mut cs, b"a"); // data
    let second = seal(&mut cs, b"b"); // rekey + data
    let (rekey, data2) = second.split_at(OVERHEAD);
    let cases: [(&str, Vec<u8>); 3] = [
        (
            "rekey twice",
            [
                first.clone(),
                rekey.to_vec(),
                rekey.to_vec(),
                data2.to_vec(),
            ]
            .concat(),
        ),
        (
            "rekey after its data",
            [first.clone(), data2.to_vec(), rekey.to_vec()].concat(),
        ),
        ("rekey dropped", [first.clone(), data2.to_vec()].concat()),
    ];
    for (what, stream) in cases {
        let (_, (_, mut lo)) = session(1);
        assert_eq!(
            open_stream(&mut lo, &stream),
            Err(RecordError::BadRecord),
            "{what}"
        );
    }
    let (_, (_, mut lo)) = session(1);
    assert_eq!(
        open_stream(&mut lo, &[first, second].concat()).unwrap(),
        b"ab"
    );
}

#[test]
fn data_after_close_is_refused() {
    let ((mut cs, _), (_, mut lo)) = session(1 << 20);
    let r1 = seal(&mut cs, b"x");
    let mut close = [0u8; OVERHEAD];
    cs.seal_close(&mut close).unwrap();
    open_stream(&mut lo, &[r1, close.to_vec()].concat()).unwrap();
    let mut more = [
        1u8, 0, 0, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(lo.open(&mut more), Err(RecordError::AfterClose));
}

#[test]
fn an_alert_opens_only_under_the_session_keys_and_only_first() {
    use sealpipe::proto::record::{Alert, AlertCode};
    let alert = Alert::new(AlertCode::ServiceMismatch, b"postgres");
    // The genuine one: the listener's first record, opened by the connector.
    let ((_, mut co), (mut ls, _)) = session(1 << 20);
    let genuine = ls.seal_alert(&alert).unwrap();
    assert_eq!(co.open(&mut genuine.clone()).unwrap(), Opened::Alert(alert));
    // Forged: an attacker's alert (any bytes under an Alert header), or a flipped bit anywhere.
    let mut forged = genuine.clone();
    forged[HEADER_LEN..].fill(0);
    let ((_, mut co), _) = session(1 << 20);
    assert_eq!(co.open(&mut forged), Err(RecordError::BadRecord));
    for bit in 0..genuine.len() * 8 {
        let mut r = genuine.clone();
        r[bit / 8] ^= 1 << (bit % 8);
        let ((_, mut co), _) = session(1 << 20);
        assert!(co.open(&mut r).is_err(), "bit {bit}: accepted");
    }
    // Under another session's keys.
    let Outcome::Done(done) = pair(None).handshake("other alert") else {
        panic!()
    };
    let (mut other, _) = done.1.into_record_layer(1 << 20);
    let mut r = other.seal_alert(&alert).unwrap();
    let ((_, mut co), _) = session(1 << 20);
    assert_eq!(co.open(&mut r), Err(RecordError::BadRecord));
    // Not after a record: a genuine first-position alert delivered after a data record.
    let ((_, mut co), (mut ls, _)) = session(1 << 20);
    let data = seal(&mut ls, b"x");
    open_stream(&mut co, &data).unwrap();
    assert!(co.open(&mut genuine.clone()).is_err());
    // Not from the connector: the listener's first record must be a StreamInfo record.
    let ((mut cs, _), (_, mut lo)) = session(1 << 20);
    let mut r = cs.seal_alert(&alert).unwrap();
    assert!(lo.open_stream_info(&mut r).is_err());
}
