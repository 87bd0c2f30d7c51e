//! A fuzzer-chosen sequence of data records (1..=65536 bytes), rekeys, rekey requests,
//! keepalives and a close, through a `Sealer` and back through an `Opener` (records cut by `parse_header`, as the
//! pump does). Everything must round-trip exactly and nothing may panic.
//!
//! Input: bytes 0..3 give `rekey_bytes - 1` (big endian u24, so rekeys by byte count happen),
//! then one op per byte, `op % 18`:
//! * 0..=11: data of `1 + u16` bytes (the next two bytes, big endian): 1..=65536
//! * 12: data of `1 + u8` bytes (next byte)
//! * 13: explicit rekey record
//! * 14: `request_rekey`
//! * 15: close; every later op but a keepalive must be refused with `AfterClose`
//! * 16: Ping, 17: Pong (PROTOCOL.md §4.4): sealed and opened anywhere, after the close too
//!
//! At most 1 MiB of plaintext per input, so one input stays fast.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpipe::proto::key_schedule::Secret;
use sealpipe::proto::record::{
    parse_header, Opener, RecordError, RecordType, Sealer, HEADER_LEN, OVERHEAD,
};
use sealpipe_fuzz::*;

const BUDGET: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((rk, mut ops)) = data.split_first_chunk::<3>() else {
        return;
    };
    let rekey_bytes = u32::from_be_bytes([0, rk[0], rk[1], rk[2]]) as u64 + 1;
    let secret = Secret::from_bytes([0x5e; 32]);
    let mut sealer = Sealer::new(secret.clone(), rekey_bytes);
    let mut opener = Opener::new(secret);
    let mut budget = BUDGET;
    let mut counter: u8 = 0;

    // Seals `kind` (with `len` bytes of plaintext for data), opens the record and checks it.
    let mut step = |sealer: &mut Sealer, opener: &mut Opener, kind: RecordType, len: usize| {
        let mut rec = vec![0u8; len + OVERHEAD];
        for b in &mut rec[HEADER_LEN..HEADER_LEN + len] {
            *b = counter;
            counter = counter.wrapping_mul(31).wrapping_add(7);
        }
        let plain = rec[HEADER_LEN..HEADER_LEN + len].to_vec();
        let closed = sealer.is_closed();
        let res = match kind {
            RecordType::Data => {
                let due = sealer.rekey_due();
                let r = sealer.seal_data(&mut rec);
                if !closed && due {
                    assert_eq!(r, Err(RecordError::RekeyRequired));
                    return false;
                }
                r
            }
            RecordType::Rekey => {
                let buf: &mut [u8; OVERHEAD] = (&mut rec[..]).try_into().unwrap();
                sealer.seal_rekey(buf)
            }
            RecordType::Close => {
                let buf: &mut [u8; OVERHEAD] = (&mut rec[..]).try_into().unwrap();
                sealer.seal_close(buf)
            }
            RecordType::Ping | RecordType::Pong => {
                let r = if kind == RecordType::Ping {
                    sealer.seal_ping()
                } else {
                    sealer.seal_pong()
                };
                r.map(|k| rec.copy_from_slice(&k))
            }
            // Only ever the first record of a session; the `stream_info` target covers it.
            // The records of the key exchange: the `kex_exchange` target.
            RecordType::StreamInfo
            | RecordType::Alert
            | RecordType::KeyShare
            | RecordType::KeyShareReply
            | RecordType::KeyShareDone => {
                unreachable!("no op seals a StreamInfo or Alert record")
            }
        };
        if closed && !kind.is_keepalive() {
            // Nothing seals after close. (A data record whose rekey is also due reports
            // `RekeyRequired`: `seal_data` checks that first. Either error ends the sender.)
            let due_data = kind == RecordType::Data && sealer.rekey_due();
            assert!(
                res == Err(RecordError::AfterClose)
                    || (due_data && res == Err(RecordError::RekeyRequired)),
                "sealed after close: {res:?}"
            );
            return false;
        }
        res.expect("seal");
        let (k, total) = parse_header(rec[..HEADER_LEN].try_into().unwrap()).expect("own header");
        assert_eq!((k, total), (kind, rec.len()));
        let (seen, err) = read_records(opener, &mut rec);
        assert_eq!(err, None);
        let expected = match kind {
            RecordType::Data => Seen::Data(plain),
            RecordType::Rekey => Seen::Rekey,
            RecordType::Close => Seen::Close,
            RecordType::Ping => Seen::Ping,
            RecordType::Pong => Seen::Pong,
            // The records of the key exchange: the `kex_exchange` target.
            RecordType::StreamInfo
            | RecordType::Alert
            | RecordType::KeyShare
            | RecordType::KeyShareReply
            | RecordType::KeyShareDone => {
                unreachable!("no op seals a StreamInfo or Alert record")
            }
        };
        assert_eq!(seen, vec![expected]);
        true
    };

    while let Some((&op, rest)) = ops.split_first() {
        ops = rest;
        let (kind, len) = match op % 18 {
            0..=11 => {
                let Some((l, rest)) = ops.split_first_chunk::<2>() else {
                    break;
                };
                ops = rest;
                (RecordType::Data, 1 + u16::from_be_bytes(*l) as usize)
            }
            12 => {
                let Some((&l, rest)) = ops.split_first() else {
                    break;
                };
                ops = rest;
                (RecordType::Data, 1 + l as usize)
            }
            13 => (RecordType::Rekey, 0),
            14 => {
                sealer.request_rekey();
                continue;
            }
            15 => (RecordType::Close, 0),
            16 => (RecordType::Ping, 0),
            _ => (RecordType::Pong, 0),
        };
        if len > budget {
            break;
        }
        budget -= len;
        if !step(&mut sealer, &mut opener, kind, len)
            && kind == RecordType::Data
            && !sealer.is_closed()
        {
            // Rekey was due: do what the pump does, then send the data.
            assert!(step(&mut sealer, &mut opener, RecordType::Rekey, 0));
            assert!(step(&mut sealer, &mut opener, RecordType::Data, len));
        }
        assert!(!sealer.rekey_due() || sealer.is_closed() || kind != RecordType::Rekey);
    }
    assert_eq!(sealer.bytes_sealed(), opener.bytes_opened());
    assert_eq!(sealer.rekeys(), opener.rekeys());
    assert_eq!(sealer.is_closed(), opener.is_closed());
    assert_eq!(opener.end_of_stream().is_ok(), sealer.is_closed());
});
