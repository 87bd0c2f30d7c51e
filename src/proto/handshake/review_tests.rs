//! Tests of the handshake's costs and orderings before authentication (PROTOCOL.md §2, §9): each
//! fails if the property it names is broken. The counters are the unit-test-only call counts of
//! [`crate::proto::x25519::shared_calls`] and [`crate::proto::identity::verify_calls`].

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::*;
use crate::proto::identity::{verify_calls, PrivateIdentity, Signer, TrustList};
use crate::proto::resume::{ConnectorTickets, TicketPolicy, TicketRefusal, TicketStore};
use crate::proto::x25519::shared_calls;

const LISTENER_KEY: &str = include_str!("../../../tests/data/openssl-rsa2048.pem");
const NEXT_LISTENER_KEY: &str = include_str!("../../../tests/data/untrusted.pem");
const CONNECTOR_KEY: &str = include_str!("../../../tests/data/peer-b.pem");
const BIG_KEY: &str = include_str!("../../../tests/data/openssl-rsa8192.pem");

pub(super) fn randomness(seed: u8) -> HandshakeRandomness {
    HandshakeRandomness {
        random: [seed; 32],
        ephemeral: [seed ^ 0x5a; 32],
    }
}

pub(super) fn key(pem: &str) -> Arc<dyn Signer> {
    Arc::new(PrivateIdentity::from_pem(pem).unwrap())
}

/// A connector with `connector`'s key and a listener trusting `trusted`.
pub(super) fn params(connector: &Arc<dyn Signer>, trusted: &[&Arc<dyn Signer>]) -> (ConnectorParams, ListenerParams) {
    let listener = key(LISTENER_KEY);
    let trust: TrustList = trusted
        .iter()
        .map(|k| (k.public().fingerprint(), None))
        .collect();
    let c = ConnectorParams {
        identity: connector.clone(),
        listener: ListenerPin::Key(listener.public().fingerprint()),
        psk: None,
        service: "svc".into(),
    };
    let l = ListenerParams {
        identity: listener,
        next_identity: None,
        trust: Arc::new(trust),
        psk: None,
        accept_unknown: false,
        allow_tofu: false,
        service: "svc".into(),
    };
    (c, l)
}

/// Carries each side's output to the other until both are done or one fails.
fn pump(c: &mut ConnectorHandshake, l: &mut ListenerHandshake) -> Result<(), HandshakeError> {
    for _ in 0..4 {
        let out = c.take_output();
        if !out.is_empty() {
            l.read(&out)?;
        }
        let out = l.take_output();
        if !out.is_empty() {
            c.read(&out)?;
        }
        if c.is_done() && l.is_done() {
            return Ok(());
        }
    }
    Err(HandshakeError::State)
}

struct Stores {
    c: Arc<Mutex<ConnectorTickets>>,
    l: Arc<Mutex<TicketStore>>,
    now: Instant,
}

impl Stores {
    fn new() -> Self {
        Stores {
            c: Arc::default(),
            l: Arc::default(),
            now: Instant::now(),
        }
    }

    fn connector(&self) -> Resumption<ConnectorTickets> {
        Resumption {
            store: self.c.clone(),
            policy: TicketPolicy::default(),
            now: self.now,
        }
    }

    fn listener(&self) -> Resumption<TicketStore> {
        Resumption {
            store: self.l.clone(),
            policy: TicketPolicy::default(),
            now: self.now,
        }
    }
}

/// A full handshake that fills both stores; returns the stores and the parameters.
fn with_tickets() -> (Stores, ConnectorParams, ListenerParams) {
    let connector = key(CONNECTOR_KEY);
    let (cp, lp) = params(&connector, &[&connector]);
    let stores = Stores::new();
    let mut c = ConnectorHandshake::resuming(cp.clone(), randomness(1), stores.connector());
    let mut l = ListenerHandshake::resuming(lp.clone(), randomness(2), stores.listener());
    pump(&mut c, &mut l).unwrap();
    assert!(!c.finish().unwrap().resumed);
    (stores, cp, lp)
}

/// A ResumeHello costs the listener no X25519 before its ticket passed (review finding 1): with
/// resumption off, or with a ticket id it does not know, the exchange is left to the deferred
/// answer, under the signing budget, like a ConnectorHello's.
#[test]
fn a_resume_hello_costs_no_x25519_before_its_ticket_passes() {
    let (stores, cp, lp) = with_tickets();
    let hello = || {
        ConnectorHandshake::resuming(cp.clone(), randomness(3), stores.connector()).take_output()
    };

    // Resumption off.
    let msg = hello();
    assert_eq!(msg[0], 0x15, "a ResumeHello");
    let mut l = ListenerHandshake::new(lp.clone(), randomness(4)).defer_replies();
    let before = shared_calls();
    l.read(&msg).unwrap();
    assert_eq!(shared_calls(), before, "no X25519 with resumption off");
    assert!(l.reply_pending());

    // An unknown ticket id (another listener store).
    let msg = hello();
    let other = Stores::new();
    let mut l =
        ListenerHandshake::resuming(lp.clone(), randomness(5), other.listener()).defer_replies();
    let before = shared_calls();
    l.read(&msg).unwrap();
    assert_eq!(shared_calls(), before, "no X25519 for an unknown ticket");
    assert!(l.reply_pending());
    // Its full handshake still runs, the X25519 in the deferred answer.
    l.make_reply().unwrap();
    assert_eq!(shared_calls(), before + 1);

    // A ticket that passes: the X25519 is made, at once (a resumption is answered inline).
    let msg = hello();
    let mut l = ListenerHandshake::resuming(lp, randomness(6), stores.listener()).defer_replies();
    let before = shared_calls();
    l.read(&msg).unwrap();
    assert_eq!(shared_calls(), before + 1);
    assert!(!l.reply_pending());
    assert_eq!(l.pending_output()[0], 0x16, "a ResumeAccept");
}

/// A connector whose key is not in the trust list costs no RSA verification, whatever its key
/// (review finding 2): the trust check runs on the fingerprint, after the finished MAC.
#[test]
fn an_untrusted_connector_costs_no_rsa_verification() {
    let big = key(BIG_KEY);
    let (cp, lp) = params(&big, &[]);
    let mut c = ConnectorHandshake::new(cp, randomness(1));
    let mut l = ListenerHandshake::new(lp, randomness(2));
    let hello = c.take_output();
    l.read(&hello).unwrap();
    c.read(&l.take_output()).unwrap();
    let auth = c.take_output();
    let before = verify_calls();
    let err = l.read(&auth).unwrap_err();
    assert_eq!(verify_calls(), before, "no RSA verification");
    assert!(matches!(err, HandshakeError::UntrustedConnector(..)), "{err:?}");
    assert!(err.alert().is_some(), "still told why, in an Alert");
}

/// With `accept_unknown`, a key outside the trust list larger than 4096 bits is refused before
/// its signature is checked; the same key in the trust list is verified and let in.
#[test]
fn accept_unknown_bounds_the_size_of_unlisted_keys() {
    let big = key(BIG_KEY);
    let run = |trusted: &[&Arc<dyn Signer>]| {
        let (cp, mut lp) = params(&big, trusted);
        lp.accept_unknown = true;
        let mut c = ConnectorHandshake::new(cp, randomness(1));
        let mut l = ListenerHandshake::new(lp, randomness(2));
        let before = verify_calls();
        let r = pump(&mut c, &mut l);
        // The connector verified the listener's signature: one call of its own.
        (r, verify_calls() - before - 1)
    };
    let (r, listener_verifies) = run(&[]);
    assert!(
        matches!(r, Err(HandshakeError::UnlistedKeyTooLarge { bits: 8192 })),
        "{r:?}"
    );
    assert_eq!(listener_verifies, 0);
    let (r, listener_verifies) = run(&[&big]);
    r.unwrap();
    assert_eq!(listener_verifies, 1);
}

/// A ResumeHello re-MACed by an on-path attacker for the listener's other key during a rotation
/// does not burn its ticket (review finding 3): the binder covers the listener key the hello was
/// keyed for, so under the other key it fails, and a bad binder leaves the ticket alone. The
/// genuine hello still resumes.
#[test]
fn a_resume_hello_re_maced_for_the_other_listener_key_does_not_burn_the_ticket() {
    let (stores, cp, mut lp) = with_tickets();
    let next = key(NEXT_LISTENER_KEY);
    let next_fp = next.public().fingerprint();
    lp.next_identity = Some(next);
    let mut c = ConnectorHandshake::resuming(cp, randomness(3), stores.connector());
    let genuine = c.take_output();
    let mut forged = genuine.clone();
    let n = forged.len();
    let tag = super::mac1::mac1_keyed(&next_fp, None, &forged[..n - 16]);
    forged[n - 16..].copy_from_slice(&tag);

    let mut l = ListenerHandshake::resuming(lp.clone(), randomness(4), stores.listener());
    l.read(&forged).unwrap();
    assert_eq!(l.pending_output()[0], 0x12, "a full handshake under the other key");
    assert_eq!(l.common.ticket_refused, Some(TicketRefusal::BadBinder));

    let mut l = ListenerHandshake::resuming(lp, randomness(5), stores.listener());
    l.read(&genuine).unwrap();
    pump(&mut c, &mut l).unwrap();
    assert!(c.finish().unwrap().resumed, "the ticket survived");
    assert!(l.finish().unwrap().resumed);
}

/// The record layer of a resumed session refuses a handshake's refusal (Alert code 1) as its
/// first record (review finding 6, PROTOCOL.md §4.2); after a full handshake it is the
/// listener's refusal.
#[test]
fn a_resumed_connector_refuses_an_untrusted_alert_first() {
    use crate::proto::record::{Alert, AlertCode, Opened, RecordError, RecordType};
    let (stores, cp, lp) = with_tickets();
    let mut c = ConnectorHandshake::resuming(cp, randomness(3), stores.connector());
    let mut l = ListenerHandshake::resuming(lp, randomness(4), stores.listener());
    pump(&mut c, &mut l).unwrap();
    let (c, l) = (c.finish().unwrap(), l.finish().unwrap());
    assert!(c.resumed && l.resumed);
    let (_, mut opener) = c.into_record_layer(u64::MAX);
    let (mut sealer, _) = l.into_record_layer(u64::MAX);
    let mut rec = sealer
        .seal_alert(&Alert::new(AlertCode::Untrusted, b""))
        .unwrap();
    assert_eq!(
        opener.open(&mut rec),
        Err(RecordError::Unexpected(RecordType::Alert))
    );
    // The same after a full handshake: opened as the refusal it is.
    let (_, cp, lp) = with_tickets();
    let mut c = ConnectorHandshake::new(cp, randomness(5));
    let mut l = ListenerHandshake::new(lp, randomness(6));
    pump(&mut c, &mut l).unwrap();
    let (_, mut opener) = c.finish().unwrap().into_record_layer(u64::MAX);
    let (mut sealer, _) = l.finish().unwrap().into_record_layer(u64::MAX);
    let mut rec = sealer
        .seal_alert(&Alert::new(AlertCode::Untrusted, b""))
        .unwrap();
    assert!(matches!(opener.open(&mut rec), Ok(Opened::Alert(_))));
}
