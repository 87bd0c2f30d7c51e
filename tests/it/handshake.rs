//! The handshake between the two roles, in memory: success, and every refusal PROTOCOL.md asks
//! for (the messages of §2, the state machine of §5, the attacks of §7), then session
//! resumption (§9).

use crate::support;

use std::sync::Arc;

use sealpipe::proto::handshake::{
    mac1, mac1_keyed, Handshake, HandshakeError, HandshakeRandomness,
};
use sealpipe::proto::identity::{Fingerprint, TrustList};
use sealpipe::proto::messages::{MessageError, LISTENER_HELLO_BODY, MAC1_LEN, MSG_HEADER_LEN};
use sealpipe::proto::mlkem::EK_LEN;
use sealpipe::proto::record::{Opened, OVERHEAD};
use support::*;

fn fresh(label: &str) -> HandshakeRandomness {
    det_randomness(label)
}

/// Rewrites the connector hello's mac1 for `fp`, as an on-path attacker can (fingerprints are
/// not secret), so that a test reaches the checks behind mac1.
fn remac(hello: &mut [u8], fp: &Fingerprint) {
    let n = hello.len() - MAC1_LEN;
    let tag = mac1(fp, &hello[..n]);
    hello[n..].copy_from_slice(&tag);
}

fn refused_by(outcome: &Outcome, side: &str) -> bool {
    matches!(outcome, Outcome::Refused(s, _) if *s == side)
}

#[test]
fn full_handshake_then_records_both_ways_across_many_rekeys() {
    for psk in [None, Some([0x42u8; 32])] {
        let p = pair(psk);
        let (c, l) = p.handshakes("ok");
        let Outcome::Done(done) = drive(c, l, |_, _| {}) else {
            panic!("handshake failed");
        };
        let (ce, le) = *done;
        assert_eq!(
            ce.peer.fingerprint(),
            p.listener.identity.public().fingerprint()
        );
        assert_eq!(
            le.peer.fingerprint(),
            p.connector.identity.public().fingerprint()
        );
        assert_eq!(ce.transcript_hash, le.transcript_hash);
        assert!(ce.send == le.recv && ce.recv == le.send && ce.send != ce.recv);

        let (mut c_seal, mut c_open) = ce.into_record_layer(100);
        let (mut l_seal, mut l_open) = le.into_record_layer(37);
        for i in 0..500usize {
            for (seal, open) in [(&mut c_seal, &mut l_open), (&mut l_seal, &mut c_open)] {
                let msg: Vec<u8> = (0..(i % 90) + 1).map(|b| (b ^ i) as u8).collect();
                if seal.rekey_due() {
                    let mut rk = [0u8; OVERHEAD];
                    seal.seal_rekey(&mut rk).unwrap();
                    assert_eq!(open.open(&mut rk).unwrap(), Opened::Rekey);
                }
                let mut rec = vec![0u8; msg.len() + OVERHEAD];
                rec[4..4 + msg.len()].copy_from_slice(&msg);
                seal.seal_data(&mut rec).unwrap();
                assert_eq!(open.open(&mut rec).unwrap(), Opened::Data(&msg[..]));
            }
        }
        assert!(
            c_seal.rekeys() > 100 && l_seal.rekeys() > 300,
            "{} {}",
            c_seal.rekeys(),
            l_seal.rekeys()
        );
        assert_eq!(c_seal.rekeys(), l_open.rekeys());
        assert_eq!(l_seal.bytes_sealed(), c_open.bytes_opened());
    }
}

#[test]
fn psk_on_one_side_only_is_refused() {
    let mut p = pair(Some([1u8; 32]));
    p.listener.psk = None;
    let out = p.handshake("psk");
    // The PSK keys mac1: a listener without it does not even answer.
    assert_refused!(out, "listener", HandshakeError::BadMac1);
    assert_eq!(p.listener_signer.signatures(), 0);
    // Nor does a listener with one answer a connector without it.
    let mut p = pair(Some([1u8; 32]));
    p.connector.psk = None;
    let out = p.handshake("psk0");
    assert_refused!(out, "listener", HandshakeError::BadMac1);
    assert_eq!(p.listener_signer.signatures(), 0);
}

#[test]
fn different_psks_are_refused() {
    let mut p = pair(Some([1u8; 32]));
    p.listener.psk = Some(Arc::new(sealpipe::proto::Psk::from_bytes([2u8; 32])));
    let out = p.handshake("psk2");
    assert_refused!(out, "listener", HandshakeError::BadMac1);
    assert_eq!(p.listener_signer.signatures(), 0);
}

#[test]
fn connector_pinned_to_another_key_gets_silence_and_no_signature() {
    let mut p = pair(None);
    p.connector.listener = connector_key().fingerprint().into();
    let out = p.handshake("pin");
    assert_refused!(out, "listener", HandshakeError::BadMac1);
    assert_eq!(p.listener_signer.signatures(), 0);
}

#[test]
fn impostor_listener_that_rewrites_mac1_is_detected() {
    // An impostor with its own key, which rewrites mac1 for itself so that its listener answers:
    // the connector's transcript then differs from the impostor's, and nothing decrypts.
    let p = pair(None);
    let impostor_key = connector_key();
    let impostor_fp = impostor_key.fingerprint();
    let impostor = listener_params(
        Arc::new(impostor_key),
        &[p.connector.identity.public().fingerprint()],
    );
    let (c, l) = handshakes(p.connector.clone(), impostor, "imp");
    let out = drive(c, l, |flight, bytes| {
        if flight == 0 {
            remac(bytes, &impostor_fp);
        }
    });
    assert_refused!(out, "connector", HandshakeError::Decrypt);
}

#[test]
fn listener_with_the_pinned_public_key_but_not_its_private_key_is_refused() {
    // What a listener without the pinned key's private half can at best do.
    let p = pair(None);
    let impostor = listener_params(
        Arc::new(StolenPublicKey {
            shown: listener_key().public().clone(),
            signer: connector_key(),
        }),
        &[p.connector.identity.public().fingerprint()],
    );
    let out = handshake(p.connector.clone(), impostor, "stolen");
    assert_refused!(out, "connector", HandshakeError::BadSignature);
}

#[test]
fn connector_with_a_trusted_public_key_but_not_its_private_key_is_refused() {
    let p = pair(None);
    let mut c_params = p.connector.clone();
    c_params.identity = Arc::new(StolenPublicKey {
        shown: connector_key().public().clone(),
        signer: listener_key(),
    });
    let out = handshake(c_params, p.listener.clone(), "stolen2");
    assert_refused!(out, "listener", HandshakeError::BadSignature);
}

#[test]
fn untrusted_connector_is_refused_with_its_fingerprint() {
    let mut p = pair(None);
    p.listener.trust = Arc::new(TrustList::new());
    match p.handshake("untrusted") {
        Outcome::Refused("listener", HandshakeError::UntrustedConnector(fp, _)) => {
            assert_eq!(fp, p.connector.identity.public().fingerprint())
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_flipped_bit_anywhere_in_any_handshake_message_is_refused() {
    let p = pair(None);
    // Flight sizes, from one clean run.
    let mut sizes = [0usize; 3];
    let (c, l) = p.handshakes("flip");
    assert!(drive(c, l, |f, b| sizes[f] = b.len()).is_done());
    for (flight, &size) in sizes.iter().enumerate() {
        for pos in 0..size {
            let (c, l) = p.handshakes("flip");
            let out = drive(c, l, |f, b| {
                if f == flight {
                    b[pos] ^= 1 << (pos % 8);
                }
            });
            assert!(!out.is_done(), "flight {flight}, byte {pos}: accepted");
            if flight == 0 {
                // A connector hello that fails mac1 (or its header check) gets no signature.
                assert!(refused_by(&out, "listener"), "flight 0 byte {pos}: {out:?}");
            }
        }
    }
    // Signatures were made only for hellos that arrived intact (flights 1 and 2 runs, plus the
    // clean one): none for the flight-0 runs.
    assert_eq!(
        p.listener_signer.signatures(),
        1 + (sizes[1] + sizes[2]) as u64
    );
}

#[test]
fn hello_without_valid_mac1_gets_no_signature_and_no_answer() {
    let p = pair(None);
    let mut l = Handshake::listener(p.listener.clone(), fresh("scan l"));
    let mut hello = Handshake::connector(p.connector.clone(), fresh("scan c")).take_output();
    let n = hello.len();
    hello[n - 1] ^= 0x80;
    assert!(matches!(l.read(&hello), Err(HandshakeError::BadMac1)));
    assert!(l.take_output().is_empty());
    assert_eq!(p.listener_signer.signatures(), 0);
    // Garbage of any length gets the same silence.
    let mut l = Handshake::listener(p.listener.clone(), fresh("scan l2"));
    assert!(matches!(
        l.read(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        Err(HandshakeError::Message(MessageError::UnexpectedType(b'G')))
    ));
    assert!(l.take_output().is_empty());
    assert_eq!(p.listener_signer.signatures(), 0);
}

#[test]
fn replayed_messages_from_another_session_are_refused() {
    let p = pair(None);
    let mut recorded: Vec<Vec<u8>> = Vec::new();
    let (c, l) = p.handshakes("rec");
    assert!(drive(c, l, |_, b| recorded.push(b.clone())).is_done());

    // Replay the whole connector side to a listener: the hello is accepted (it cannot know),
    // but the recorded connector auth is under the old session's keys.
    let mut l = Handshake::listener(p.listener.clone(), fresh("replay l"));
    l.read(&recorded[0]).unwrap();
    assert!(!l.take_output().is_empty());
    assert!(matches!(l.read(&recorded[2]), Err(HandshakeError::Decrypt)));
    assert!(!l.is_done());

    // Replay the listener's flight to a new connector: its fresh ephemeral makes it useless.
    let mut c = Handshake::connector(p.connector.clone(), fresh("replay c"));
    c.take_output();
    assert!(matches!(c.read(&recorded[1]), Err(HandshakeError::Decrypt)));
    assert!(!c.is_done());
}

#[test]
fn reflected_messages_are_refused() {
    let p = pair(None);
    // The connector's own hello sent back to it.
    let mut c = Handshake::connector(p.connector.clone(), fresh("refl c"));
    let hello = c.take_output();
    assert!(matches!(c.read(&hello), Err(HandshakeError::Message(_))));
    // The listener's own flight sent back to it, as if it were a connector hello.
    let mut c = Handshake::connector(p.connector.clone(), fresh("refl c2"));
    let mut l = Handshake::listener(p.listener.clone(), fresh("refl l2"));
    l.read(&c.take_output()).unwrap();
    let flight = l.take_output();
    let mut l2 = Handshake::listener(p.listener.clone(), fresh("refl l3"));
    assert!(matches!(
        l2.read(&flight),
        Err(HandshakeError::Message(MessageError::UnexpectedType(0x12)))
    ));
    // The listener's auth message, retyped as a connector auth and sent back to the listener:
    // the role labels in the keys make it fail.
    c.read(&flight).unwrap();
    let mut lauth = flight[MSG_HEADER_LEN + LISTENER_HELLO_BODY..].to_vec();
    lauth[0] = 0x14;
    assert!(matches!(l.read(&lauth), Err(HandshakeError::Decrypt)));
}

#[test]
fn downgraded_or_unknown_versions_and_options_are_refused() {
    let p = pair(None);
    let lfp = p.listener.identity.public().fingerprint();
    for version in [0u8, 1, 3, 0xff] {
        let (c, l) = p.handshakes("ver");
        let out = drive(c, l, |f, b| {
            if f == 0 {
                b[MSG_HEADER_LEN] = version;
                remac(b, &lfp);
            }
        });
        assert_refused!(out, "listener", HandshakeError::UnsupportedVersion(v) if v == version);
    }
    // The listener's version, changed on the way back.
    let (c, l) = p.handshakes("ver2");
    let out = drive(c, l, |f, b| {
        if f == 1 {
            b[MSG_HEADER_LEN] = 0;
        }
    });
    assert_refused!(out, "connector", HandshakeError::UnsupportedVersion(0));
    // Options: an unknown bit, and a stripped PSK bit (a downgrade to no PSK).
    let (c, l) = p.handshakes("opt");
    let out = drive(c, l, |f, b| {
        if f == 0 {
            b[MSG_HEADER_LEN + 1] |= 0x80;
            remac(b, &lfp);
        }
    });
    assert_refused!(out, "listener", HandshakeError::BadOptions(_));
    let pp = pair(Some([9u8; 32]));
    let (c, l) = pp.handshakes("opt2");
    let out = drive(c, l, |f, b| {
        if f == 0 {
            b[MSG_HEADER_LEN + 1] = 0;
            // Even re-keyed with the PSK (an attacker does not have it), the bit is checked.
            let n = b.len() - MAC1_LEN;
            let psk = sealpipe::proto::Psk::from_bytes([9u8; 32]);
            let tag = mac1_keyed(&lfp, Some(&psk), &b[..n]);
            b[n..].copy_from_slice(&tag);
        }
    });
    assert_refused!(out, "listener", HandshakeError::PskMismatch);
}

/// Points of small order on Curve25519 (from the X25519 low-order point list).
const LOW_ORDER: [[u8; 32]; 3] = [
    [0; 32],
    {
        let mut p = [0u8; 32];
        p[0] = 1;
        p
    },
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
];

#[test]
fn low_order_ephemeral_keys_are_refused_on_both_sides() {
    let p = pair(None);
    let lfp = p.listener.identity.public().fingerprint();
    let eph = MSG_HEADER_LEN + 2 + 32;
    for point in LOW_ORDER {
        let (c, l) = p.handshakes("low");
        let out = drive(c, l, |f, b| {
            if f == 0 {
                b[eph..eph + 32].copy_from_slice(&point);
                remac(b, &lfp);
            }
        });
        assert_refused!(out, "listener", HandshakeError::LowOrderPoint);
        let (c, l) = p.handshakes("low2");
        let out = drive(c, l, |f, b| {
            if f == 1 {
                b[eph..eph + 32].copy_from_slice(&point);
            }
        });
        assert_refused!(out, "connector", HandshakeError::LowOrderPoint);
    }
}

/// A listener that defers its answers (the daemon) does no X25519 in `read`: a hello that the
/// signing budget, the queue or a per-source limit then refuses has cost no exchange. The
/// low-order key shows where the exchange happens: past `read`, in `make_reply`, before the
/// answer exists.
#[test]
fn a_deferred_answer_makes_the_x25519_exchange_only_when_it_is_made() {
    let p = pair(None);
    let lfp = p.listener.identity.public().fingerprint();
    let eph = MSG_HEADER_LEN + 2 + 32;
    let (mut c, l) = p.handshakes("deferred dh");
    let mut l = l.defer_replies();
    let mut hello = c.take_output();
    hello[eph..eph + 32].copy_from_slice(&LOW_ORDER[0]);
    remac(&mut hello, &lfp);
    assert_eq!(
        l.read(&hello).unwrap(),
        hello.len(),
        "read without an exchange"
    );
    assert!(l.reply_pending());
    assert!(matches!(l.make_reply(), Err(HandshakeError::LowOrderPoint)));
    assert!(l.take_output().is_empty(), "no answer made");
}

#[test]
fn oversized_and_truncated_lengths_are_refused_before_allocation() {
    let p = pair(None);
    // A hello that claims a huge body: refused from its 3-byte header alone.
    let mut l = Handshake::listener(p.listener.clone(), fresh("len l"));
    assert!(matches!(
        l.read(&[0x11, 0xff, 0xff]),
        Err(HandshakeError::Message(_))
    ));
    // A listener auth that claims more than the largest auth message.
    let (c, l) = p.handshakes("len");
    let out = drive(c, l, |f, b| {
        if f == 1 {
            let at = MSG_HEADER_LEN + LISTENER_HELLO_BODY;
            b[at + 1] = 0xff;
            b[at + 2] = 0xff;
        }
    });
    assert_refused!(out, "connector", HandshakeError::Message(_));
    // Truncated flights leave the peer waiting (the I/O shell's timeout ends it), never done.
    for flight in 0..3 {
        let (c, l) = p.handshakes("trunc");
        let out = drive(c, l, |f, b| {
            if f == flight {
                b.truncate(b.len() - 1);
            }
        });
        assert!(
            matches!(out, Outcome::Stalled(_)),
            "flight {flight}: {out:?}"
        );
    }
}

#[test]
fn handshake_is_fed_byte_by_byte_and_leaves_following_records_unread() {
    let p = pair(None);
    let (mut c, mut l) = p.handshakes("bytes");
    for b in c.take_output() {
        assert_eq!(l.read(&[b]).unwrap(), 1);
    }
    for b in l.take_output() {
        assert_eq!(c.read(&[b]).unwrap(), 1);
    }
    assert!(c.is_done());
    let mut stream = c.take_output();
    stream.extend_from_slice(b"records follow");
    let n = l.read(&stream).unwrap();
    assert_eq!(&stream[n..], b"records follow");
    assert!(l.is_done());
    assert_eq!(l.read(b"more").unwrap(), 0);
}

mod arbitrary_input {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Arbitrary bytes, in arbitrary pieces, never panic a listener, get no answer and no
        /// signature, and never complete a handshake.
        #[test]
        fn listener_survives_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..3000), cuts in proptest::collection::vec(0usize..3000, 0..8)) {
            let p = pair(None);
            let mut l = Handshake::listener(p.listener.clone(), fresh("arb l"));
            let mut cuts = cuts;
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let mut at = 0;
            for cut in cuts {
                let cut = cut.min(bytes.len());
                if cut < at { continue; }
                if l.read(&bytes[at..cut]).is_err() { break; }
                at = cut;
            }
            prop_assert!(!l.is_done());
            prop_assert!(l.take_output().is_empty());
            prop_assert_eq!(p.listener_signer.signatures(), 0);
        }

        /// Arbitrary bytes after a genuine connector hello never complete a handshake.
        #[test]
        fn listener_after_hello_and_connector_survive_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let p = pair(None);
            let mut c = Handshake::connector(p.connector.clone(), fresh("arb c"));
            let mut l = Handshake::listener(p.listener.clone(), fresh("arb l2"));
            l.read(&c.take_output()).unwrap();
            let _ = l.read(&bytes);
            prop_assert!(!l.is_done());
            let _ = c.read(&bytes);
            prop_assert!(!c.is_done());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Session resumption (PROTOCOL.md §9).

mod resumption {
    use super::*;
    use sealpipe::proto::handshake::{Established, Resumption};
    use sealpipe::proto::key_schedule::Secret;
    use sealpipe::proto::resume::{
        binder, successors, ticket_context, ticket_id, Chain, ConnectorTickets, PresentedBinder,
        TicketId, TicketPolicy, TicketRefusal, TicketStore, CONNECTOR_TICKETS,
        LISTENER_TICKETS_PER_PEER,
    };
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    /// Both sides with counting signers and their ticket stores.
    struct Peers {
        p: Pair,
        connector_signer: Arc<CountingSigner>,
        lstore: Arc<Mutex<TicketStore>>,
        cstore: Arc<Mutex<ConnectorTickets>>,
        lpolicy: TicketPolicy,
        cpolicy: TicketPolicy,
        t0: Instant,
    }

    fn peers(psk: Option<[u8; 32]>) -> Peers {
        let mut p = pair(psk);
        let connector_signer = CountingSigner::new(connector_key());
        p.connector.identity = connector_signer.clone();
        Peers {
            p,
            connector_signer,
            lstore: Arc::default(),
            cstore: Arc::default(),
            lpolicy: TicketPolicy::default(),
            cpolicy: TicketPolicy::default(),
            t0: Instant::now(),
        }
    }

    impl Peers {
        fn signatures(&self) -> (u64, u64) {
            (
                self.connector_signer.signatures(),
                self.p.listener_signer.signatures(),
            )
        }

        /// A connection at `t0 + at`.
        fn handshakes(&self, tag: &str, at: Duration) -> (Handshake, Handshake) {
            let now = self.t0 + at;
            (
                Handshake::connector_resuming(
                    self.p.connector.clone(),
                    fresh(&format!("{tag} c")),
                    Resumption {
                        store: self.cstore.clone(),
                        policy: self.cpolicy,
                        now,
                    },
                ),
                Handshake::listener_resuming(
                    self.p.listener.clone(),
                    fresh(&format!("{tag} l")),
                    Resumption {
                        store: self.lstore.clone(),
                        policy: self.lpolicy,
                        now,
                    },
                ),
            )
        }

        fn connect(&self, tag: &str, at: Duration) -> Outcome {
            let (c, l) = self.handshakes(tag, at);
            drive(c, l, |_, _| {})
        }

        fn connect_ok(&self, tag: &str, at: Duration) -> (Established, Established) {
            match self.connect(tag, at) {
                Outcome::Done(d) => {
                    let (ce, le) = *d;
                    assert_keys_match(&ce, &le);
                    (ce, le)
                }
                other => panic!("{tag}: {other:?}"),
            }
        }

        /// The resumptions left in the chain of the listener's ticket `id`; none when it does
        /// not hold the ticket.
        fn listener_left(&self, id: &TicketId) -> Option<u32> {
            self.lstore.lock().unwrap().resumptions_left(id)
        }

        fn connector_ids(&self) -> Vec<TicketId> {
            self.cstore.lock().unwrap().ids()
        }
    }

    /// The ids of the tickets a session hands on.
    fn successor_ids(e: &Established) -> Vec<TicketId> {
        successors(&e.resumption).iter().map(ticket_id).collect()
    }

    /// The ticket id a resume hello offers.
    fn offered(hello: &[u8]) -> TicketId {
        assert_eq!(hello[0], 0x15, "a resume hello");
        let at = MSG_HEADER_LEN + 66 + EK_LEN;
        hello[at..at + 16].try_into().unwrap()
    }

    fn assert_keys_match(ce: &Established, le: &Established) {
        assert!(ce.send == le.recv && ce.recv == le.send && ce.send != ce.recv);
        assert_eq!(ce.transcript_hash, le.transcript_hash);
        assert_eq!(ce.resumed, le.resumed);
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn resumption_needs_no_signature_and_gives_fresh_keys() {
        for psk in [None, Some([0x42u8; 32])] {
            let r = peers(psk);
            let (full_c, full_l) = r.connect_ok("full", Duration::ZERO);
            assert!(!full_c.resumed && full_c.ticket_refused.is_none());
            assert_eq!(r.signatures(), (1, 1));
            let first = successor_ids(&full_c);
            for id in &first {
                assert_eq!(r.listener_left(id), Some(1000));
            }
            assert_eq!(r.connector_ids(), first);

            let mut seen = vec![full_c.send.clone(), full_c.recv.clone()];
            let mut offered_ids = Vec::new();
            for i in 0..5u32 {
                // The oldest ticket goes next, and how deep its chain is.
                let oldest = r.connector_ids()[0];
                let left = r.listener_left(&oldest).unwrap();
                let (c, l) = r.handshakes(&format!("res{i}"), S * (i + 1));
                let mut id = None;
                let Outcome::Done(d) = drive(c, l, |f, b| {
                    if f == 0 {
                        id = Some(offered(b));
                    }
                }) else {
                    panic!("connection {i} failed");
                };
                let (ce, le) = *d;
                assert_keys_match(&ce, &le);
                // The oldest ticket was offered, and is used up on both sides.
                let id = id.unwrap();
                assert_eq!(id, oldest);
                offered_ids.push(id);
                assert_eq!(r.listener_left(&id), None, "the listener used it up");
                assert!(!r.connector_ids().contains(&id), "the connector forgot it");
                // Its session's successors are one resumption deeper in the chain, and the
                // connector's newest.
                let next = successor_ids(&ce);
                assert_eq!(next, successor_ids(&le));
                assert!(r.connector_ids().ends_with(&next));
                for s in &next {
                    assert_eq!(r.listener_left(s), Some(left - 1));
                }
                assert!(ce.resumed && le.resumed, "connection {i} was not resumed");
                assert_eq!(r.signatures(), (1, 1), "a resumption made an RSA signature");
                // The peers are those of the full handshake.
                assert_eq!(le.peer.fingerprint(), full_l.peer.fingerprint());
                assert_eq!(ce.peer.fingerprint(), full_c.peer.fingerprint());
                // Fresh keys each time, never those of the full session or of another resumption.
                for k in [&ce.send, &ce.recv] {
                    assert!(!seen.contains(k));
                    seen.push(k.clone());
                }
                assert_ne!(ce.transcript_hash, full_c.transcript_hash);
                // Records flow under the resumed keys.
                let (mut seal, _) = ce.into_record_layer(1 << 20);
                let (_, mut open) = le.into_record_layer(1 << 20);
                let mut rec = vec![0u8; 5 + OVERHEAD];
                rec[4..9].copy_from_slice(b"hello");
                seal.seal_data(&mut rec).unwrap();
                assert_eq!(open.open(&mut rec).unwrap(), Opened::Data(&b"hello"[..]));
            }
            // The full handshake's two tickets first, then their successors in filing order.
            assert_eq!(offered_ids[..2], first[..]);
            assert_eq!(r.connector_ids().len(), 2 + 5);
        }
    }

    /// A connection whose connector has a fresh ticket; returns its flights on the wire.
    fn tampered(at_flight: usize, byte: usize, bit: u8, remac_hello: bool) -> Outcome {
        let r = peers(None);
        r.connect_ok("full", Duration::ZERO);
        let (c, l) = r.handshakes("tamper", S);
        let lfp = r.p.listener.identity.public().fingerprint();
        drive(c, l, |flight, bytes| {
            if flight == at_flight && byte < bytes.len() {
                bytes[byte] ^= bit;
                if flight == 0 && remac_hello && byte < bytes.len() - MAC1_LEN {
                    remac(bytes, &lfp);
                }
            }
        })
    }

    fn flight_lengths() -> [usize; 3] {
        let r = peers(None);
        r.connect_ok("full", Duration::ZERO);
        let (c, l) = r.handshakes("lengths", S);
        let mut lens = [0; 3];
        assert!(drive(c, l, |f, b| lens[f] = b.len()).is_done());
        lens
    }

    #[test]
    fn a_flipped_bit_anywhere_in_a_resumed_handshake_never_gives_a_session() {
        let lens = flight_lengths();
        assert_eq!(lens, [3 + 1314, 3 + 98, 3 + 32]);
        for (flight, len) in lens.into_iter().enumerate() {
            for byte in 0..len {
                for bit in [0x01] {
                    for remac_hello in [false, true] {
                        if flight != 0 && remac_hello {
                            continue;
                        }
                        let out = tampered(flight, byte, bit, remac_hello);
                        assert!(
                            !out.is_done(),
                            "flight {flight} byte {byte} bit {bit:#x} remac {remac_hello}: {out:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_tampered_ticket_id_falls_back_to_a_full_handshake_that_fails() {
        // The attacker rewrites the ticket id (and mac1): the listener does not know the ticket
        // and answers with a full handshake, over a transcript the connector does not share.
        let r = peers(None);
        r.connect_ok("full", Duration::ZERO);
        let before = r.signatures();
        let (c, l) = r.handshakes("id", S);
        let lfp = r.p.listener.identity.public().fingerprint();
        let out = drive(c, l, |flight, b| {
            if flight == 0 {
                b[MSG_HEADER_LEN + 66 + EK_LEN] ^= 1;
                remac(b, &lfp);
            }
        });
        assert_refused!(out, "connector", HandshakeError::Decrypt);
        assert_eq!(r.signatures().1, before.1 + 1, "the listener fell back");
    }

    #[test]
    fn no_ticket_id_goes_on_the_wire_twice() {
        let r = peers(None);
        r.connect_ok("full", Duration::ZERO);
        let mut seen = std::collections::HashSet::new();
        for i in 0..60u32 {
            // Now and then several at once: each takes a ticket of its own.
            let n = if i % 10 == 9 { 3 } else { 1 };
            let hs: Vec<_> = (0..n)
                .map(|k| r.handshakes(&format!("wire {i} {k}"), S * (i + 1)))
                .collect();
            for (k, (c, l)) in hs.into_iter().enumerate() {
                let mut hello = Vec::new();
                let Outcome::Done(d) = drive(c, l, |f, b| {
                    if f == 0 {
                        hello = b.clone();
                    }
                }) else {
                    panic!("connection {i} {k} failed")
                };
                if hello[0] == 0x15 {
                    assert!(d.0.resumed);
                    assert!(seen.insert(offered(&hello)), "ticket id offered twice");
                } else {
                    // Out of tickets for the moment: a full handshake, no id on the wire.
                    assert_eq!(hello[0], 0x11);
                    assert!(!d.0.resumed && d.0.ticket_refused.is_none());
                }
            }
            assert!(r.connector_ids().len() <= CONNECTOR_TICKETS);
        }
        assert!(seen.len() >= 60, "most connections resumed: {}", seen.len());
    }

    #[test]
    fn a_replayed_or_injected_resume_hello_does_not_burn_the_ticket() {
        // A connector whose chains end after one resumption: it holds the full handshake's two
        // tickets and no successor, so the test can follow both.
        let mut r = peers(None);
        r.cpolicy.uses = 1;
        let (full, _) = r.connect_ok("full", Duration::ZERO);
        let ids = successor_ids(&full);
        // The attacker holds back the connector's hello (the connection dies) and sends it to
        // the listener itself.
        let (mut c, _) = r.handshakes("held back", S);
        let hello = c.take_output();
        let held = offered(&hello);
        assert_eq!(&held, &ids[0], "the oldest ticket");
        assert!(
            !r.connector_ids().contains(&held),
            "out of the store while in flight"
        );
        drop(c);
        assert!(
            r.connector_ids().contains(&held),
            "an attempt that never reached the listener's proof gives the ticket back"
        );
        let mut l = Handshake::listener_resuming(
            r.p.listener.clone(),
            fresh("replay l"),
            Resumption {
                store: r.lstore.clone(),
                policy: r.lpolicy,
                now: r.t0 + S * 2,
            },
        );
        l.read(&hello).unwrap();
        assert_eq!(
            l.take_output()[0],
            0x16,
            "the binder verifies: a resume accept"
        );
        // No finished from the attacker, who lacks the ticket secret.
        let mut finished = vec![0x17, 0, 32];
        finished.extend_from_slice(&[0xaa; 32]);
        let err = l.read(&finished).unwrap_err();
        assert!(matches!(err, HandshakeError::BadFinished), "{err:?}");
        assert!(matches!(l.finish(), Err(HandshakeError::State)));
        assert_eq!(
            r.listener_left(&held),
            Some(1000),
            "the ticket is not burnt"
        );
        // Both tickets still resume, each once.
        let mut used = Vec::new();
        for tag in ["after 1", "after 2"] {
            let (c, l) = r.handshakes(tag, S * 3);
            let Outcome::Done(d) = drive(c, l, |f, b| {
                if f == 0 {
                    used.push(offered(b));
                }
            }) else {
                panic!("{tag} failed")
            };
            assert!(d.0.resumed);
        }
        used.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(used, want);

        // The hello of a completed resumption, replayed: its ticket is used up, the listener
        // answers in full (the tunnel's replay cache stops it before that) and the replayer
        // can go no further.
        let (c, l) = r.handshakes("orig", S * 4);
        let mut flights = Vec::new();
        assert!(drive(c, l, |_, b| flights.push(b.clone())).is_done());
        let mut l = Handshake::listener_resuming(
            r.p.listener.clone(),
            fresh("replay 2 l"),
            Resumption {
                store: r.lstore.clone(),
                policy: r.lpolicy,
                now: r.t0 + S * 5,
            },
        );
        l.read(&flights[0]).unwrap();
        assert_eq!(
            l.take_output()[0],
            0x12,
            "a full handshake: the ticket is gone"
        );
        assert!(matches!(l.read(&flights[2]), Err(HandshakeError::Decrypt)));
        assert!(matches!(l.finish(), Err(HandshakeError::State)));
    }

    #[test]
    fn an_injected_answer_does_not_burn_the_connectors_ticket() {
        let r = peers(None);
        let (full, _) = r.connect_ok("full", Duration::ZERO);
        let newest = successor_ids(&full)[1];
        // A resume accept with a wrong finished MAC.
        let (c, l) = r.handshakes("bad accept", S);
        let out = drive(c, l, |f, b| {
            if f == 1 {
                let n = b.len();
                b[n - 1] ^= 1;
            }
        });
        assert_refused!(out, "connector", HandshakeError::BadFinished);
        assert!(
            r.connector_ids().contains(&newest),
            "kept after a forged accept"
        );

        // A full-handshake answer from someone else (the ticket "refused"): its signature does
        // not come from the pinned key, so the ticket stays.
        let (c, _) = r.handshakes("forged full", S * 2);
        let mut other = r.p.listener.clone();
        let impostor = untrusted_key();
        other.identity = Arc::new(impostor);
        let fake = Handshake::listener(other, fresh("impostor"));
        let out = drive(c, fake, |f, b| {
            if f == 0 {
                remac(b, &untrusted_key().fingerprint());
            }
        });
        assert!(!out.is_done(), "{out:?}");
        assert!(
            r.connector_ids().contains(&newest),
            "kept after a forged refusal"
        );

        // The real listener accepts it.
        let (c, l) = r.handshakes("genuine", S * 3);
        let mut id = None;
        let Outcome::Done(d) = drive(c, l, |f, b| {
            if f == 0 {
                id = Some(offered(b));
            }
        }) else {
            panic!("resumption failed")
        };
        assert!(d.0.resumed);
        assert!(successor_ids(&full).contains(&id.unwrap()));
    }

    #[test]
    fn a_wrong_binder_gets_a_full_handshake_and_leaves_the_ticket() {
        // The ticket id is public; the binder proves knowledge of the ticket secret.
        let r = peers(None);
        let (full, _) = r.connect_ok("full", Duration::ZERO);
        let (mut c, mut l) = r.handshakes("binder", S);
        let mut hello = c.take_output();
        hello[MSG_HEADER_LEN + 66 + EK_LEN + 16] ^= 1;
        remac(&mut hello, &r.p.listener.identity.public().fingerprint());
        l.read(&hello).unwrap();
        assert_eq!(
            l.take_output()[0],
            0x12,
            "a full handshake, not a resume accept"
        );
        for id in successor_ids(&full) {
            assert_eq!(r.listener_left(&id), Some(1000), "no ticket taken");
        }
    }

    #[test]
    fn expired_tickets_are_not_used() {
        // The connector's own clock: past the lifetime it offers nothing.
        let mut r = peers(None);
        r.cpolicy.lifetime = S * 60;
        r.connect_ok("full", Duration::ZERO);
        let (ce, _) = r.connect_ok("within", S * 59);
        assert!(ce.resumed);
        let (ce, le) = r.connect_ok("past", S * 60);
        assert!(!ce.resumed && ce.ticket_refused.is_none() && le.ticket_refused.is_none());

        // The listener's clock: a connector that still offers the ticket gets a full handshake.
        let mut r = peers(None);
        r.lpolicy.lifetime = S * 60;
        r.connect_ok("full", Duration::ZERO);
        let (ce, le) = r.connect_ok("past", S * 61);
        assert!(!ce.resumed);
        assert_eq!(le.ticket_refused, Some(TicketRefusal::Expired));
        assert_eq!(ce.ticket_refused, Some(TicketRefusal::RefusedByListener));
        assert_eq!(r.signatures(), (2, 2));
        // The fallback made a fresh ticket, which resumes.
        let (ce, _) = r.connect_ok("again", S * 62);
        assert!(ce.resumed);
        assert_eq!(r.signatures(), (2, 2));

        // A listener whose configured lifetime shrank (a reload) applies the shorter one.
        let mut r = peers(None);
        r.connect_ok("full", Duration::ZERO);
        r.lpolicy.lifetime = S * 10;
        let (_, le) = r.connect_ok("shrunk", S * 11);
        assert_eq!(le.ticket_refused, Some(TicketRefusal::Expired));
    }

    #[test]
    fn a_chain_goes_no_deeper_than_its_resumptions() {
        // The listener's bound: with 2, the sessions of the second resumption in a row hand on
        // no ticket the listener knows. The full handshake's 2 tickets resume, so do their 4
        // successors, and no more: 6 resumptions.
        let mut r = peers(None);
        r.lpolicy.uses = 2;
        r.connect_ok("full", Duration::ZERO);
        for i in 0..6u32 {
            let depth = if i < 2 { 1 } else { 2 };
            let (ri, _) = r.connect_ok(&format!("{i}"), S * (i + 1));
            assert!(ri.resumed, "resumption {i}");
            for id in successor_ids(&ri) {
                let left = r.listener_left(&id);
                if depth == 1 {
                    assert_eq!(left, Some(1));
                } else {
                    assert_eq!(left, None, "the chain ends here");
                }
            }
        }
        let (ce, le) = r.connect_ok("7", S * 7);
        assert!(!ce.resumed);
        assert_eq!(le.ticket_refused, Some(TicketRefusal::Unknown));
        assert_eq!(r.signatures(), (2, 2));
        // The refused chain is forgotten: the fallback's own tickets are all the connector
        // holds, and the next connection resumes.
        assert_eq!(r.connector_ids(), successor_ids(&ce));
        assert!(r.connect_ok("8", S * 8).0.resumed);
        assert_eq!(r.signatures(), (2, 2));

        // So does the connector's: with 1, the full handshake's two tickets resume once each and
        // hand on nothing.
        let mut r = peers(None);
        r.cpolicy.uses = 1;
        r.connect_ok("full", Duration::ZERO);
        assert!(r.connect_ok("1", S).0.resumed);
        assert!(r.connect_ok("2", S * 2).0.resumed);
        assert!(r.connector_ids().is_empty());
        let (ce, le) = r.connect_ok("3", S * 3);
        assert!(!ce.resumed && ce.ticket_refused.is_none() && le.ticket_refused.is_none());
        assert_eq!(r.signatures(), (2, 2));
    }

    #[test]
    fn a_ticket_used_by_another_connection_meanwhile_does_not_resume_twice() {
        // Two connectors hold the same ticket (a copy: the tunnel never makes one) and resume
        // at once; both hellos pass the listener's checks, the first finished uses the ticket
        // up and the second fails.
        let r = peers(None);
        let (full, _) = r.connect_ok("full", Duration::ZERO);
        let copy = Arc::new(Mutex::new(ConnectorTickets::default()));
        let context = ticket_context(
            &[
                &connector_key().fingerprint(),
                &r.p.listener.identity.public().fingerprint(),
            ],
            None,
            SERVICE.as_bytes(),
        );
        copy.lock().unwrap().file(
            &full.resumption,
            Arc::new(full.peer.clone()),
            context,
            Some(Chain::new(r.cpolicy, r.t0)),
        );
        let resumption = |store: &Arc<Mutex<ConnectorTickets>>| Resumption {
            store: store.clone(),
            policy: r.cpolicy,
            now: r.t0 + S,
        };
        let (c1, l1) = r.handshakes("first", S);
        let c2 = Handshake::connector_resuming(
            r.p.connector.clone(),
            fresh("second c"),
            resumption(&copy),
        );
        let (_, l2) = r.handshakes("second", S);
        let (mut c1, mut l1, mut c2, mut l2) = (c1, l1, c2, l2);
        let (h1, h2) = (c1.take_output(), c2.take_output());
        assert_eq!(offered(&h1), offered(&h2));
        l1.read(&h1).unwrap();
        l2.read(&h2).unwrap();
        c1.read(&l1.take_output()).unwrap();
        c2.read(&l2.take_output()).unwrap();
        l1.read(&c1.take_output()).unwrap();
        assert!(l1.is_done());
        let err = l2.read(&c2.take_output()).unwrap_err();
        assert!(matches!(err, HandshakeError::TicketUsed), "{err:?}");
        assert!(!l2.is_done());
        assert_eq!(r.listener_left(&offered(&h1)), None);
    }

    #[test]
    fn a_connector_removed_from_the_trust_list_cannot_resume() {
        let mut r = peers(None);
        r.connect_ok("full", Duration::ZERO);
        r.p.listener.trust = Arc::new(TrustList::new());
        let out = r.connect("untrusted", S);
        assert_refused!(out, "listener", HandshakeError::UntrustedConnector(..));
        let store = r.lstore.lock().unwrap();
        assert_eq!(store.len(), 1, "the ticket presented is dropped");
    }

    #[test]
    fn a_changed_psk_stops_resumption() {
        let mut r = peers(Some([1; 32]));
        r.connect_ok("full", Duration::ZERO);
        let psk = Some(Arc::new(sealpipe::proto::Psk::from_bytes([2; 32])));
        r.p.listener.psk = psk.clone();
        r.p.connector.psk = psk;
        let (ce, le) = r.connect_ok("new psk", S);
        assert!(!ce.resumed && ce.ticket_refused.is_none() && le.ticket_refused.is_none());
    }

    #[test]
    fn an_unknown_ticket_gets_a_full_handshake_that_succeeds() {
        // The listener restarted: its store is empty.
        let mut r = peers(None);
        r.connect_ok("full", Duration::ZERO);
        r.lstore = Arc::default();
        let (ce, le) = r.connect_ok("restarted", S);
        assert!(!ce.resumed);
        assert_eq!(le.ticket_refused, Some(TicketRefusal::Unknown));
        assert_eq!(r.signatures(), (2, 2));
        // The connector forgot the refused ticket's chain (its other ticket as well): the next
        // connection offers a ticket of the fallback and resumes.
        assert_eq!(r.connector_ids(), successor_ids(&ce));
        assert!(r.connect_ok("after", S * 2).0.resumed);

        // And a listener without resumption answers a resume hello with a full handshake.
        let r = peers(None);
        r.connect_ok("full", Duration::ZERO);
        let (c, _) = r.handshakes("off", S);
        let l = Handshake::listener(r.p.listener.clone(), fresh("off l"));
        let Outcome::Done(d) = drive(c, l, |_, _| {}) else {
            panic!("fallback failed")
        };
        assert!(!d.0.resumed);
        assert_eq!(d.1.ticket_refused, Some(TicketRefusal::Disabled));
    }

    /// The ids a session with resumption secret `[i; 32]` hands on.
    fn ids_of(i: u8) -> Vec<TicketId> {
        ids_of_secret(&Secret::from_bytes([i; 32]))
    }

    fn ids_of_secret(res: &Secret) -> Vec<TicketId> {
        successors(res).iter().map(ticket_id).collect()
    }

    /// The resumption secret of session `i` of a long sequence.
    fn nth(i: usize) -> Secret {
        let mut b = [0xa5; 32];
        b[..8].copy_from_slice(&(i as u64).to_le_bytes());
        Secret::from_bytes(b)
    }

    #[test]
    fn the_listener_store_refuses_a_ticket_made_under_another_context() {
        // A reload that changes the listener's key or PSK: its old tickets are not used.
        let peer = Arc::new(connector_key().public().clone());
        let mut trust = TrustList::new();
        trust.insert(peer.fingerprint(), None);
        let lfp = listener_key().fingerprint();
        let old = ticket_context(&[&lfp], None, SERVICE.as_bytes());
        let psk = sealpipe::proto::Psk::from_bytes([3; 32]);
        let new = ticket_context(&[&lfp], Some(&psk), SERVICE.as_bytes());
        assert_ne!(old, new);
        let t0 = Instant::now();
        let res = Secret::from_bytes([7; 32]);
        let ticket = successors(&res)[0].clone();
        let id = ticket_id(&ticket);
        let prefix = b"resume hello up to the binder";
        let b = binder(&ticket, prefix, &lfp);
        let presented = PresentedBinder {
            hello_before_binder: prefix,
            binder: &b,
            listener: &lfp,
        };
        let policy = TicketPolicy::default();
        let chain = Some(Chain::new(policy, t0));
        let trusted = |fp: &sealpipe::proto::identity::Fingerprint| trust.contains(fp);
        let mut store = TicketStore::default();
        store.file(&res, peer.clone(), true, old, chain, policy, t0);
        assert_eq!(store.len(), 2);
        let r = store.check(&id, presented, &trusted, &new, policy, t0 + S);
        assert_eq!(r.err(), Some(TicketRefusal::Untrusted));
        assert!(!store.contains(&id) && store.len() == 1);
        store.file(&res, peer.clone(), true, old, chain, policy, t0);
        assert!(store
            .check(&id, presented, &trusted, &old, policy, t0 + S)
            .is_ok());
        // A check leaves the ticket; only a completed resumption uses it up, once.
        assert!(store.contains(&id));
        assert!(store.consume(&id));
        assert!(!store.consume(&id));
        let r = store.check(&id, presented, &trusted, &old, policy, t0 + S);
        assert_eq!(r.err(), Some(TicketRefusal::Unknown));

        // Evicted while its resumption was under way (the peer's newer tickets came in): that
        // resumption still completes, once.
        let mut store = TicketStore::default();
        store.file(&res, peer.clone(), true, old, chain, policy, t0);
        assert!(store
            .check(&id, presented, &trusted, &old, policy, t0 + S)
            .is_ok());
        for i in 0..LISTENER_TICKETS_PER_PEER / 2 {
            store.file(&nth(i), peer.clone(), true, old, chain, policy, t0);
        }
        assert!(!store.contains(&id), "evicted");
        assert!(store.consume(&id));
        assert!(!store.consume(&id));
    }

    #[test]
    fn the_listener_store_is_bounded_and_evicts_expired_then_oldest() {
        let policy = |secs| TicketPolicy {
            lifetime: S * secs,
            uses: 10,
        };
        let (a, b, c) = (
            Arc::new(listener_key().public().clone()),
            Arc::new(untrusted_key().public().clone()),
            Arc::new(connector_key().public().clone()),
        );
        let ctx = ticket_context(&[&listener_key().fingerprint()], None, SERVICE.as_bytes());
        let t0 = Instant::now();
        let res = |i: u8| Secret::from_bytes([i; 32]);
        let file = |store: &mut TicketStore, i: u8, peer: &Arc<_>, secs, at| {
            let chain = Some(Chain::new(policy(secs), t0 + at));
            store.file(
                &res(i),
                Arc::clone(peer),
                true,
                ctx,
                chain,
                policy(3600),
                t0 + at,
            );
        };
        let holds = |store: &TicketStore, i: u8| ids_of(i).iter().all(|id| store.contains(id));
        let mut store = TicketStore::with_capacities(4, 4);
        file(&mut store, 1, &a, 5, Duration::ZERO);
        file(&mut store, 2, &b, 3600, S);
        file(&mut store, 3, &c, 3600, S * 10);
        assert_eq!(store.len(), 4);
        assert!(
            !ids_of(1).iter().any(|id| store.contains(id)),
            "expired first"
        );
        assert!(holds(&store, 2) && holds(&store, 3));
        file(&mut store, 4, &c, 3600, S * 11);
        assert_eq!(store.len(), 4);
        assert!(
            !ids_of(2).iter().any(|id| store.contains(id)),
            "then the oldest"
        );
        assert!(holds(&store, 3) && holds(&store, 4));
        for i in 6..200u8 {
            file(&mut store, i, &a, 3600, S * 12);
            assert!(store.len() <= 4);
        }
    }

    #[test]
    fn one_connector_holds_at_most_its_quota_of_listener_tickets() {
        let peer = Arc::new(connector_key().public().clone());
        let ctx = ticket_context(&[&listener_key().fingerprint()], None, SERVICE.as_bytes());
        let t0 = Instant::now();
        let policy = TicketPolicy::default();
        let mut store = TicketStore::default();
        // Two sessions more than the quota holds (each files two tickets).
        let sessions = LISTENER_TICKETS_PER_PEER / 2 + 2;
        for i in 0..sessions {
            let chain = Some(Chain::new(policy, t0 + S * i as u32));
            store.file(&nth(i), peer.clone(), true, ctx, chain, policy, t0);
        }
        assert_eq!(
            store.count_for(&peer.fingerprint()),
            LISTENER_TICKETS_PER_PEER
        );
        for i in 0..2 {
            let ids = ids_of_secret(&nth(i));
            assert!(!ids.iter().any(|id| store.contains(id)), "its oldest go");
        }
        for i in 2..sessions {
            assert!(ids_of_secret(&nth(i)).iter().all(|id| store.contains(id)));
        }
    }

    #[test]
    fn an_accept_unknown_crowd_cannot_evict_a_configured_peers_tickets() {
        let trusted = Arc::new(connector_key().public().clone());
        let crowd = [
            Arc::new(listener_key().public().clone()),
            Arc::new(untrusted_key().public().clone()),
        ];
        let ctx = ticket_context(&[&listener_key().fingerprint()], None, SERVICE.as_bytes());
        let t0 = Instant::now();
        let policy = TicketPolicy::default();
        let chain = Some(Chain::new(policy, t0));
        let mut store = TicketStore::with_capacities(100, 4);
        store.file(
            &Secret::from_bytes([1; 32]),
            trusted.clone(),
            true,
            ctx,
            chain,
            policy,
            t0,
        );
        for i in 2..250u8 {
            let who = &crowd[i as usize % 2];
            let res = Secret::from_bytes([i; 32]);
            store.file(&res, who.clone(), false, ctx, chain, policy, t0 + S);
            assert!(store.len() <= 2 + 4, "{}", store.len());
        }
        assert!(ids_of(1).iter().all(|id| store.contains(id)));
        // The crowd's newest are held, its own older ones evicted.
        assert!(ids_of(249).iter().all(|id| store.contains(id)));
        assert!(!ids_of(2).iter().any(|id| store.contains(id)));
    }

    #[test]
    fn the_connector_offers_its_oldest_ticket_once_and_keeps_at_most_its_quota() {
        let peer = Arc::new(listener_key().public().clone());
        let ctx = ticket_context(&[&listener_key().fingerprint()], None, SERVICE.as_bytes());
        let other = ticket_context(&[&untrusted_key().fingerprint()], None, SERVICE.as_bytes());
        let t0 = Instant::now();
        let policy = TicketPolicy::default();
        let chain = Some(Chain::new(policy, t0));
        let mut tickets = ConnectorTickets::default();
        // Two sessions more than the quota holds (each files two tickets).
        let sessions = CONNECTOR_TICKETS / 2 + 2;
        for i in 0..sessions {
            tickets.file(&nth(i), peer.clone(), ctx, chain);
        }
        assert_eq!(tickets.len(), CONNECTOR_TICKETS);
        let kept: Vec<TicketId> = (2..sessions).flat_map(|i| ids_of_secret(&nth(i))).collect();
        assert_eq!(tickets.ids()[..], kept[..], "the oldest go, oldest first");
        let o = tickets.offer(&ctx, policy, t0 + S).unwrap();
        assert_eq!(o.id, kept[0], "the oldest");
        assert!(!tickets.ids().contains(&o.id), "taken out while in flight");
        assert!(
            tickets.offer(&other, policy, t0 + S).is_none(),
            "another context"
        );
        // Given back (the attempt failed before the listener's proof): offered last.
        tickets.give_back(o);
        assert_eq!(tickets.ids().last(), Some(&kept[0]));
        let mut order = Vec::new();
        while let Some(o) = tickets.offer(&ctx, policy, t0 + S) {
            order.push(o.id);
        }
        assert_eq!(order[..], [&kept[1..], &kept[..1]].concat()[..]);
        // Expired tickets are dropped, not offered.
        tickets.file(&Secret::from_bytes([9; 32]), peer, ctx, chain);
        assert!(tickets.offer(&ctx, policy, t0 + policy.lifetime).is_none());
        assert!(tickets.is_empty());
    }
}
