//! Record-layer attacks on an established session: every manipulation ends the connection.

use crate::support;

use sealpipe::proto::handshake::Established;
use sealpipe::proto::key_schedule::Secret;
use sealpipe::proto::record::{
    parse_header, Opened, Opener, RecordError, RecordType, Sealer, HEADER_LEN, OVERHEAD,
};
use support::*;

/// The traffic secrets of one real handshake (ML-KEM draws its own randomness, so every
/// handshake has other keys), kept for the process: connector → listener, listener → connector.
fn keys() -> &'static (Secret, Secret) {
    static KEYS: std::sync::OnceLock<(Secret, Secret)> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let (cp, lp) = det_pair();
        let Outcome::Done(done) = handshake(cp, lp, "rec") else {
            panic!("handshake")
        };
        let (ce, _): (Established, Established) = *done;
        (ce.send.clone(), ce.recv.clone())
    })
}

/// A session whose keys are the same at every call ([`keys`]).
fn session(rekey_bytes: u64) -> ((Sealer, Opener), (Sealer, Opener)) {
    let (c, l) = keys();
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
/// The errors a damaged record may end in: a failed tag, a header that no longer parses
/// (type, length) or a record cut short by a changed length. Never a state or key error.
fn is_damage(r: &Result<impl Sized, RecordError>) -> bool {
    matches!(
        r,
        Err(RecordError::BadRecord
            | RecordError::BadLength(_)
            | RecordError::UnknownType(_)
            | RecordError::Truncated
            | RecordError::Buffer(_))
    )
}

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
            Opened::Close | Opened::Rekey | Opened::Ping | Opened::Pong => {}
            Opened::Alert(a) => return Err(RecordError::Refused(a)),
            // No key exchange runs here: one of its records is out of place.
            Opened::KeyShare(kind, _) => return Err(RecordError::Unexpected(kind)),
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
            let opened = open_stream(&mut lo, &r);
            assert!(is_damage(&opened), "byte {pos} bit {bit}: {opened:?}");
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
        let opened = co.open(&mut r);
        assert!(is_damage(&opened), "bit {bit}: {opened:?}");
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
    assert_eq!(co.open(&mut genuine.clone()), Err(RecordError::BadRecord));
    // Not from the connector: the listener's first record must be a StreamInfo record.
    let ((mut cs, _), (_, mut lo)) = session(1 << 20);
    let mut r = cs.seal_alert(&alert).unwrap();
    assert_eq!(
        lo.open_stream_info(&mut r),
        Err(RecordError::Unexpected(RecordType::Alert))
    );
}

// ---------------------------------------------------------------------------------------------
// Across a stream boundary (PROTOCOL.md §4.3): a session that carried stream 1 and begins
// stream 2. The listener's reader opens the first record of every stream (the session's first,
// and the first after a close record) as StreamInfo and every other through `open`; the
// connector's reader follows the listener's direction into the next stream only once it has
// sent the next StreamInfo (`begin_stream`).

fn stream_info(s: &mut Sealer, body: &[u8]) -> Vec<u8> {
    let mut rec = vec![0u8; body.len() + OVERHEAD];
    rec[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
    s.seal_stream_info(&mut rec).unwrap();
    rec
}

fn close(s: &mut Sealer) -> Vec<u8> {
    let mut c = [0u8; OVERHEAD];
    s.seal_close(&mut c).unwrap();
    c.to_vec()
}

fn data_record(s: &mut Sealer, msg: &[u8]) -> Vec<u8> {
    let mut rec = vec![0u8; msg.len() + OVERHEAD];
    rec[HEADER_LEN..HEADER_LEN + msg.len()].copy_from_slice(msg);
    s.seal_data(&mut rec).unwrap();
    rec
}

/// The records of one session with two streams, each direction a list of records.
struct TwoStreams {
    /// Connector → listener: `info1, a1, a2, close1, info2, b1, b2, close2`.
    up: Vec<Vec<u8>>,
    /// Listener → connector: `x1, close1, y1, close2`.
    down: Vec<Vec<u8>>,
}

const INFO1: usize = 0;
const CLOSE1: usize = 3;
const INFO2: usize = 4;
const B1: usize = 5;
const DOWN_CLOSE1: usize = 1;
const Y1: usize = 2;

/// What each stream carries, up and down: the genuine plaintext.
const UP: [[&[u8]; 2]; 2] = [
    [b"stream one, first", b"stream one, second"],
    [b"stream two, first", b"stream two, second"],
];
const DOWN: [&[u8]; 2] = [b"answer one", b"answer two"];

/// Two streams sealed by the connector and listener sealers `cs`, `ls` (in the order the
/// daemons do: the listener begins stream 2 when it opens the StreamInfo).
fn two_streams_of(cs: &mut Sealer, ls: &mut Sealer) -> TwoStreams {
    let mut up = vec![stream_info(cs, b"client one")];
    up.extend(UP[0].iter().map(|m| data_record(cs, m)));
    up.push(close(cs));
    let mut down = vec![data_record(ls, DOWN[0]), close(ls)];
    up.push(stream_info(cs, b"client two"));
    ls.begin_stream().unwrap();
    up.extend(UP[1].iter().map(|m| data_record(cs, m)));
    up.push(close(cs));
    down.push(data_record(ls, DOWN[1]));
    down.push(close(ls));
    TwoStreams { up, down }
}

fn two_streams() -> TwoStreams {
    let ((mut cs, _), (mut ls, _)) = session(1 << 20);
    two_streams_of(&mut cs, &mut ls)
}

/// What a reader delivered: per stream (StreamInfo body, then data), and the error it ended on.
#[derive(Debug, Default, PartialEq, Eq)]
struct Delivered {
    streams: Vec<(Vec<u8>, Vec<u8>)>,
    error: Option<RecordError>,
}

/// The listener's reader over a byte stream: StreamInfo first in every stream.
fn listener_reads(o: &mut Opener, mut wire: &[u8]) -> Delivered {
    let mut out = Delivered::default();
    let mut at_start = true;
    let fail = |mut out: Delivered, e| {
        out.error = Some(e);
        out
    };
    while !wire.is_empty() {
        let Some(h) = wire.first_chunk::<HEADER_LEN>() else {
            return fail(out, RecordError::Truncated);
        };
        let len = match parse_header(h) {
            Ok((_, len)) => len,
            Err(e) => return fail(out, e),
        };
        if len > wire.len() {
            return fail(out, RecordError::Truncated);
        }
        let mut rec = wire[..len].to_vec();
        wire = &wire[len..];
        if at_start {
            match o.open_stream_info(&mut rec) {
                Ok(body) => out.streams.push((body.to_vec(), Vec::new())),
                Err(e) => return fail(out, e),
            }
            at_start = false;
            continue;
        }
        match o.open(&mut rec) {
            Ok(Opened::Data(d)) => out.streams.last_mut().unwrap().1.extend_from_slice(d),
            Ok(Opened::Close) => at_start = true,
            Ok(Opened::Rekey | Opened::Ping | Opened::Pong) => {}
            Ok(Opened::Alert(a)) => return fail(out, RecordError::Refused(a)),
            Ok(Opened::KeyShare(kind, _)) => return fail(out, RecordError::Unexpected(kind)),
            Err(e) => return fail(out, e),
        }
    }
    if let Err(e) = o.end_of_stream() {
        return fail(out, e);
    }
    out
}

/// The connector's reader of the listener's direction: after each close record it follows
/// into the next stream only once it has begun it (`begin_after`: how many times it does).
fn connector_reads(o: &mut Opener, mut wire: &[u8], mut begin_after: usize) -> Delivered {
    let mut out = Delivered {
        streams: vec![(Vec::new(), Vec::new())],
        error: None,
    };
    o.begin_stream().unwrap();
    while !wire.is_empty() {
        let h: [u8; HEADER_LEN] = wire[..HEADER_LEN].try_into().unwrap();
        let len = match parse_header(&h) {
            Ok((_, len)) if len <= wire.len() => len,
            Ok(_) => {
                out.error = Some(RecordError::Truncated);
                return out;
            }
            Err(e) => {
                out.error = Some(e);
                return out;
            }
        };
        let mut rec = wire[..len].to_vec();
        wire = &wire[len..];
        match o.open(&mut rec) {
            Ok(Opened::Data(d)) => out.streams.last_mut().unwrap().1.extend_from_slice(d),
            Ok(Opened::Close) if begin_after > 0 => {
                begin_after -= 1;
                o.begin_stream().unwrap();
                out.streams.push((Vec::new(), Vec::new()));
            }
            Ok(Opened::Close | Opened::Rekey | Opened::Ping | Opened::Pong) => {}
            Ok(Opened::KeyShare(kind, _)) => {
                out.error = Some(RecordError::Unexpected(kind));
                return out;
            }
            Ok(Opened::Alert(a)) => {
                out.error = Some(RecordError::Refused(a));
                return out;
            }
            Err(e) => {
                out.error = Some(e);
                return out;
            }
        }
    }
    out
}

fn fresh_listener_opener() -> Opener {
    session(1 << 20).1 .1
}

fn fresh_connector_opener() -> Opener {
    session(1 << 20).0 .1
}

fn wire(recs: &[&Vec<u8>]) -> Vec<u8> {
    recs.iter().flat_map(|r| r.iter().copied()).collect()
}

/// Stream 1 genuine and whole, as the listener delivers it.
fn stream_one() -> (Vec<u8>, Vec<u8>) {
    (b"client one".to_vec(), UP[0].concat())
}

/// Every error case: stream 1's bytes (at most) were delivered, never a byte of stream 2 or of
/// anything else.
fn assert_refused_at_boundary(what: &str, got: &Delivered, expect: RecordError) {
    assert_eq!(got.error, Some(expect), "{what}: {got:?}");
    assert!(
        got.streams.len() <= 1,
        "{what}: a second stream began: {got:?}"
    );
    if let Some((info, data)) = got.streams.first() {
        let (i1, d1) = stream_one();
        assert_eq!(info, &i1, "{what}");
        assert!(
            d1.starts_with(data),
            "{what}: bytes that stream 1 did not send"
        );
    }
}

#[test]
fn two_streams_open_in_order_under_distinct_keys() {
    let t = two_streams();
    let up: Vec<&Vec<u8>> = t.up.iter().collect();
    let got = listener_reads(&mut fresh_listener_opener(), &wire(&up));
    assert_eq!(got.error, None);
    assert_eq!(
        got.streams,
        [stream_one(), (b"client two".to_vec(), UP[1].concat())]
    );
    let down: Vec<&Vec<u8>> = t.down.iter().collect();
    let got = connector_reads(&mut fresh_connector_opener(), &wire(&down), 1);
    assert_eq!(got.error, None);
    let data: Vec<&[u8]> = got.streams.iter().map(|s| &s.1[..]).collect();
    assert_eq!(data, DOWN);
    // The same plaintext in both streams gives other bytes: other keys (and the first record of
    // each stream is seq 0 of its key, so the nonce alone does not differ).
    let ((mut cs, _), _) = session(1 << 20);
    let first = stream_info(&mut cs, b"same");
    close(&mut cs);
    let second = stream_info(&mut cs, b"same");
    assert_ne!(first, second);
}

#[test]
fn a_dropped_close_record_at_the_boundary_is_refused() {
    let t = two_streams();
    let u = &t.up;
    // Stream 1's close dropped: stream 2's StreamInfo arrives in the middle of stream 1.
    let got = listener_reads(
        &mut fresh_listener_opener(),
        &wire(&[&u[0], &u[1], &u[2], &u[4], &u[5]]),
    );
    // (A StreamInfo record in the middle of a stream; under the next stream's key it does not
    // even authenticate.)
    assert_refused_at_boundary("close dropped", &got, RecordError::BadRecord);
    // Close and StreamInfo dropped: stream 2's data under stream 1's key and counter.
    let got = listener_reads(
        &mut fresh_listener_opener(),
        &wire(&[&u[0], &u[1], &u[2], &u[5], &u[6]]),
    );
    assert_refused_at_boundary("close and info dropped", &got, RecordError::BadRecord);
    // Only the StreamInfo dropped: a data record where a stream must start, refused from its
    // header.
    let got = listener_reads(
        &mut fresh_listener_opener(),
        &wire(&[&u[0], &u[1], &u[2], &u[3], &u[5], &u[6]]),
    );
    assert_refused_at_boundary(
        "info dropped",
        &got,
        RecordError::Unexpected(sealpipe::proto::record::RecordType::Data),
    );
    // The listener's close dropped: its stream-2 record does not open under stream 1's key.
    let d = &t.down;
    let got = connector_reads(&mut fresh_connector_opener(), &wire(&[&d[0], &d[2]]), 1);
    assert_eq!(got.error, Some(RecordError::BadRecord));
    assert_eq!(got.streams.len(), 1);
    assert_eq!(got.streams[0].1, DOWN[0]);
    // And a close dropped at the end of the transport is truncation, not a clean end.
    let got = listener_reads(&mut fresh_listener_opener(), &wire(&[&u[0], &u[1], &u[2]]));
    assert_refused_at_boundary("close dropped at the end", &got, RecordError::Truncated);
}

#[test]
fn a_stream_one_record_replayed_in_stream_two_is_refused() {
    use sealpipe::proto::record::RecordType;
    let t = two_streams();
    let u = &t.up;
    let head = [&u[0], &u[1], &u[2], &u[3]];
    let cases: Vec<(&str, Vec<&Vec<u8>>, RecordError)> = vec![
        // Stream 1's StreamInfo as the start of stream 2.
        ("info1 as info2", vec![&u[INFO1]], RecordError::BadRecord),
        // Stream 1's first data record right after stream 2's StreamInfo (same counter, 1).
        (
            "a1 after info2",
            vec![&u[INFO2], &u[1]],
            RecordError::BadRecord,
        ),
        (
            "a2 after info2",
            vec![&u[INFO2], &u[2]],
            RecordError::BadRecord,
        ),
        // Stream 1's close inside stream 2, or as its start.
        (
            "close1 after info2",
            vec![&u[INFO2], &u[CLOSE1]],
            RecordError::BadRecord,
        ),
        (
            "close1 as the start of stream 2",
            vec![&u[CLOSE1]],
            RecordError::Unexpected(RecordType::Close),
        ),
        // Stream 1's data in place of stream 2's, after a genuine record of stream 2.
        (
            "a2 for b2",
            vec![&u[INFO2], &u[B1], &u[2]],
            RecordError::BadRecord,
        ),
    ];
    for (what, tail, expect) in cases {
        let recs: Vec<&Vec<u8>> = head.iter().copied().chain(tail).collect();
        let got = listener_reads(&mut fresh_listener_opener(), &wire(&recs));
        assert_eq!(got.error, Some(expect), "{what}: {got:?}");
        // Stream 1 whole; of stream 2 at most its genuine StreamInfo and genuine bytes.
        assert_eq!(got.streams[0], stream_one(), "{what}");
        if let Some((info, data)) = got.streams.get(1) {
            assert_eq!(info, b"client two", "{what}");
            assert!(UP[1].concat().starts_with(data), "{what}");
        }
    }
    // The listener's direction: its stream-1 record replayed in stream 2.
    let d = &t.down;
    for (what, recs) in [
        ("x1 in stream 2", vec![&d[0], &d[DOWN_CLOSE1], &d[0]]),
        (
            "close1 in stream 2",
            vec![&d[0], &d[DOWN_CLOSE1], &d[DOWN_CLOSE1]],
        ),
    ] {
        let got = connector_reads(&mut fresh_connector_opener(), &wire(&recs), 1);
        assert_eq!(got.error, Some(RecordError::BadRecord), "{what}");
        assert_eq!(got.streams[1].1, b"", "{what}");
    }
}

#[test]
fn records_reordered_across_the_boundary_are_refused() {
    use sealpipe::proto::record::RecordType;
    let t = two_streams();
    let u = &t.up;
    let cases: [(&str, Vec<&Vec<u8>>, RecordError); 5] = [
        (
            "info2 before close1",
            vec![&u[0], &u[1], &u[2], &u[INFO2], &u[CLOSE1]],
            RecordError::BadRecord,
        ),
        (
            "b1 before info2",
            vec![&u[0], &u[1], &u[2], &u[CLOSE1], &u[B1], &u[INFO2]],
            RecordError::Unexpected(RecordType::Data),
        ),
        (
            "b1 before close1",
            vec![&u[0], &u[1], &u[2], &u[B1], &u[CLOSE1], &u[INFO2]],
            RecordError::BadRecord,
        ),
        (
            "close1 before a2",
            vec![&u[0], &u[1], &u[CLOSE1], &u[2], &u[INFO2]],
            RecordError::BadRecord,
        ),
        (
            "whole streams swapped",
            u[4..].iter().chain(&u[..4]).collect(),
            RecordError::BadRecord,
        ),
    ];
    for (what, recs, expect) in cases {
        let got = listener_reads(&mut fresh_listener_opener(), &wire(&recs));
        assert_refused_at_boundary(what, &got, expect);
    }
    // The listener's direction: its stream-2 record before its stream-1 close.
    let d = &t.down;
    let got = connector_reads(
        &mut fresh_connector_opener(),
        &wire(&[&d[0], &d[Y1], &d[DOWN_CLOSE1]]),
        1,
    );
    assert_eq!(got.error, Some(RecordError::BadRecord));
    assert_eq!(got.streams.len(), 1);
}

#[test]
fn a_record_spliced_from_another_sessions_second_stream_is_refused() {
    let t = two_streams();
    // Session B: a handshake of its own (fresh randomness), the same plaintext.
    let Outcome::Done(done) = pair(None).handshake("other session") else {
        panic!()
    };
    let (ce, le) = *done;
    let (mut bcs, _) = ce.into_record_layer(1 << 20);
    let (mut bls, _) = le.into_record_layer(1 << 20);
    let b = two_streams_of(&mut bcs, &mut bls);
    assert_ne!(b.up[INFO2], t.up[INFO2]);
    let u = &t.up;
    let head = [&u[0], &u[1], &u[2], &u[3]];
    for (what, tail) in [
        ("B's info2", vec![&b.up[INFO2]]),
        ("B's info2 and the rest", b.up[INFO2..].iter().collect()),
        ("B's b1 after A's info2", vec![&u[INFO2], &b.up[B1]]),
    ] {
        let recs: Vec<&Vec<u8>> = head.iter().copied().chain(tail).collect();
        let got = listener_reads(&mut fresh_listener_opener(), &wire(&recs));
        assert_eq!(got.error, Some(RecordError::BadRecord), "{what}: {got:?}");
        assert_eq!(got.streams[0], stream_one(), "{what}");
        assert!(got.streams.len() == 1 || got.streams[1] == (b"client two".to_vec(), vec![]));
    }
    // The listener's direction: B's stream-2 record after A's close.
    let d = &t.down;
    let got = connector_reads(
        &mut fresh_connector_opener(),
        &wire(&[&d[0], &d[DOWN_CLOSE1], &b.down[Y1]]),
        1,
    );
    assert_eq!(got.error, Some(RecordError::BadRecord));
    assert_eq!(got.streams[1].1, b"");
}

#[test]
fn records_after_a_close_that_start_no_stream_are_refused() {
    use sealpipe::proto::record::{next_stream_secret, RecordType};
    let (c, l) = keys().clone();
    let t = two_streams();
    let mut o = Opener::new(c.clone());
    assert!(o.open_stream_info(&mut t.up[0].clone()).is_ok());
    // A peer that seals, under the next stream's key and counter 0, a data, rekey or close
    // record after its close (anything but the next StreamInfo): refused unopened.
    let next = next_stream_secret(&c);
    let u = &t.up;
    let evil = |kind: RecordType| -> Vec<u8> {
        let mut s = Sealer::new(next.clone(), 1 << 20);
        match kind {
            RecordType::Data => data_record(&mut s, UP[1][0]),
            RecordType::Close => close(&mut s),
            RecordType::Rekey => {
                let mut rk = [0u8; OVERHEAD];
                s.seal_rekey(&mut rk).unwrap();
                rk.to_vec()
            }
            _ => unreachable!(),
        }
    };
    // The evil sealer's StreamInfo is genuine stream 2 (same key): the control.
    let mut control = Sealer::new(next.clone(), 1 << 20);
    assert_eq!(stream_info(&mut control, b"client two"), u[INFO2]);
    for kind in [RecordType::Data, RecordType::Rekey, RecordType::Close] {
        let rec = evil(kind);
        // Through `open` (a reader that does not expect a new stream): after close.
        let mut o = fresh_listener_opener();
        let got = listener_reads(&mut o, &wire(&[&u[0], &u[1], &u[2], &u[3]]));
        assert_eq!(got.error, None);
        assert_eq!(
            o.open(&mut rec.clone()),
            Err(RecordError::AfterClose),
            "{kind:?}"
        );
        // Through the listener's reader: not a StreamInfo, refused from its header.
        let got = listener_reads(
            &mut fresh_listener_opener(),
            &wire(&[&u[0], &u[1], &u[2], &u[3], &rec]),
        );
        assert_refused_at_boundary(
            &format!("{kind:?} after close"),
            &got,
            RecordError::Unexpected(kind),
        );
    }
    // The connector's reader: the listener's next-stream data before the connector began the
    // next stream (the listener sends nothing between streams).
    let d = &t.down;
    let got = connector_reads(
        &mut fresh_connector_opener(),
        &wire(&[&d[0], &d[DOWN_CLOSE1], &d[Y1]]),
        0,
    );
    assert_eq!(got.error, Some(RecordError::AfterClose));
    assert_eq!(got.streams.len(), 1);
    let mut ls_next = Sealer::new(next_stream_secret(&l), 1 << 20);
    assert_eq!(data_record(&mut ls_next, DOWN[1]), d[Y1]);
}

#[test]
fn every_flipped_bit_of_the_boundary_records_is_refused() {
    let t = two_streams();
    let u = &t.up;
    // Up: stream 1's last data record and close, stream 2's StreamInfo and first data record.
    let genuine_up: Vec<u8> = u.concat();
    let start = |i: usize| u[..i].iter().map(Vec::len).sum::<usize>();
    let (from, to) = (start(2), start(B1 + 1));
    assert!(listener_reads(&mut fresh_listener_opener(), &genuine_up)
        .error
        .is_none());
    let mut tried = 0;
    for pos in from..to {
        for bit in 0..8 {
            let mut w = genuine_up.clone();
            w[pos] ^= 1 << bit;
            let got = listener_reads(&mut fresh_listener_opener(), &w);
            assert!(got.error.is_some(), "up byte {pos} bit {bit}: {got:?}");
            // Whatever was delivered is genuine: a prefix of stream 1, then at most stream 2's
            // StreamInfo and a prefix of its data.
            assert!(got.streams.len() <= 2, "up byte {pos} bit {bit}");
            if let Some(s) = got.streams.first() {
                assert_eq!(s.0, b"client one");
                assert!(UP[0].concat().starts_with(&s.1), "up byte {pos} bit {bit}");
            }
            if let Some(s) = got.streams.get(1) {
                assert_eq!(s.0, b"client two", "up byte {pos} bit {bit}");
                assert!(UP[1].concat().starts_with(&s.1), "up byte {pos} bit {bit}");
            }
            tried += 1;
        }
    }
    // Down: the listener's close of stream 1 and its first record of stream 2.
    let d = &t.down;
    let genuine_down: Vec<u8> = d.concat();
    let (from, to) = (d[0].len(), d[0].len() + d[1].len() + d[2].len());
    for pos in from..to {
        for bit in 0..8 {
            let mut w = genuine_down.clone();
            w[pos] ^= 1 << bit;
            let got = connector_reads(&mut fresh_connector_opener(), &w, 1);
            assert!(got.error.is_some(), "down byte {pos} bit {bit}: {got:?}");
            assert_eq!(got.streams[0].1, DOWN[0], "down byte {pos} bit {bit}");
            if let Some(s) = got.streams.get(1) {
                assert!(DOWN[1].starts_with(&s.1), "down byte {pos} bit {bit}");
            }
            tried += 1;
        }
    }
    assert!(tried > 8 * 100, "{tried}");
}
