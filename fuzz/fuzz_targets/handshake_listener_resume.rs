//! A listener with resumption and one valid ticket (issued to the fuzz connector) receiving a
//! ResumeHello built from fuzzer bytes, then fuzzer bytes after it. mac1 is recomputed by the
//! harness (a fuzzer cannot forge it, and everything behind it is what matters here).
//!
//! Input: byte 0 is the mode, then the hello fields (version, options, random, e_c: 66 bytes,
//! zero-padded if the input is shorter), then
//! * mode even: the ticket id (16) and binder (32) from the input, so the fuzzer explores
//!   unknown tickets and wrong binders;
//! * mode odd: the real ticket id and a correct binder (recomputed over the fuzzed fields), so
//!   the listener accepts the ticket, answers ResumeAccept and waits for ResumeFinished;
//!
//! and the rest, framed by [`Chunked`], is what the "connector" sends next (a ResumeFinished, or
//! a ConnectorAuth after a fallback to a full handshake).
//!
//! Checked: the listener never completes (the fuzzer cannot compute fin_c without the ticket
//! secret, nor sign a ConnectorAuth); the ticket is never removed by any of this (an
//! unauthenticated hello must not burn other connectors' tickets); `read`'s contract
//! ([`drive_reads`]).
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use sealpipe::proto::handshake::{mac1, Handshake, Resumption};
use sealpipe::proto::keys::Secret;
use sealpipe::proto::messages::{
    header, MessageType, LISTENER_HELLO_BODY, MAC1_LEN, RESUME_HELLO_BODY, TICKET_ID_LEN,
};
use sealpipe::proto::resume::{
    binder, ticket_context, ticket_id, ConnectorTickets, TicketPolicy, TicketStore,
};
use sealpipe_fuzz::*;

/// The ticket secret: fixed, so the fuzzer's inputs stay meaningful from run to run.
const TICKET_SECRET: [u8; 32] = [0x7a; 32];
const BINDER_LEN: usize = 32;

/// The ResumeHello the harness builds in mode odd from `fields`.
fn real_ticket_hello(fields: &[u8]) -> Vec<u8> {
    let secret = Secret::from_bytes(TICKET_SECRET);
    let mut hello = header(MessageType::ResumeHello, RESUME_HELLO_BODY).to_vec();
    hello.extend_from_slice(fields);
    hello.resize(3 + LISTENER_HELLO_BODY, 0);
    hello.extend_from_slice(&ticket_id(&secret));
    let b = binder(&secret, &hello);
    hello.extend_from_slice(&b);
    let tag = mac1(&listener_fingerprint(), &hello);
    hello.extend_from_slice(&tag);
    hello
}

/// A fresh listener with resumption whose store holds the ticket.
fn listener() -> (Handshake, Arc<Mutex<TicketStore>>) {
    let now = Instant::now();
    let policy = TicketPolicy::default();
    let mut store = TicketStore::with_capacity(4);
    store.insert(
        Secret::from_bytes(TICKET_SECRET),
        Arc::new(connector_identity().public().clone()),
        ticket_context(&[&listener_fingerprint()], None),
        policy,
        now,
    );
    let store = Arc::new(Mutex::new(store));
    let l = Handshake::listener_resuming(
        listener_params_cached(),
        fixed_randomness(LISTENER_RAND),
        Resumption {
            store: store.clone(),
            policy,
            now,
        },
    );
    (l, store)
}

/// Once per process: a real connector holding the same ticket sends exactly the hello the
/// harness builds from its fields, and resumes with the harness's listener (so mode odd does
/// reach the ResumeFinished check).
fn check_harness() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let now = Instant::now();
        let policy = TicketPolicy::default();
        let mut tickets = ConnectorTickets::default();
        tickets.insert(
            Secret::from_bytes(TICKET_SECRET),
            Arc::new(listener_identity().public().clone()),
            ticket_context(
                &[&connector_identity().fingerprint(), &listener_fingerprint()],
                None,
            ),
            policy,
            now,
        );
        let mut c = Handshake::connector_resuming(
            connector_params(),
            fixed_randomness(CONNECTOR_RAND),
            Resumption {
                store: Arc::new(Mutex::new(tickets)),
                policy,
                now,
            },
        );
        let hello = c.take_output();
        assert_eq!(
            real_ticket_hello(&hello[3..3 + LISTENER_HELLO_BODY]),
            hello,
            "harness ResumeHello differs from a real connector's"
        );
        let (mut l, _) = listener();
        l.read(&hello)
            .expect("listener reads the real resume hello");
        let accept = l.take_output();
        assert_eq!(accept.first(), Some(&(MessageType::ResumeAccept as u8)));
        c.read(&accept).expect("connector accepts the ResumeAccept");
        let finished = c.take_output();
        l.read(&finished)
            .expect("listener accepts the ResumeFinished");
        assert!(l.is_done() && c.is_done());
    });
}

fuzz_target!(|data: &[u8]| {
    check_harness();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (fields, rest) = rest.split_at(rest.len().min(LISTENER_HELLO_BODY));
    let (hello, rest) = if mode & 1 == 0 {
        let mut hello = header(MessageType::ResumeHello, RESUME_HELLO_BODY).to_vec();
        hello.extend_from_slice(fields);
        hello.resize(3 + LISTENER_HELLO_BODY, 0);
        let (ticket, rest) = rest.split_at(rest.len().min(TICKET_ID_LEN + BINDER_LEN));
        hello.extend_from_slice(ticket);
        hello.resize(3 + RESUME_HELLO_BODY - MAC1_LEN, 0);
        let tag = mac1(&listener_fingerprint(), &hello);
        hello.extend_from_slice(&tag);
        (hello, rest)
    } else {
        (real_ticket_hello(fields), rest)
    };
    assert_eq!(hello.len(), 3 + RESUME_HELLO_BODY);
    let (mut l, store) = listener();
    let mut chunks = vec![&hello[..]];
    chunks.extend(Chunked::new(rest).chunks);
    drive_reads(&mut l, &chunks);
    assert!(
        !l.is_done(),
        "listener completed a handshake the fuzzer cannot complete"
    );
    assert_eq!(
        store.lock().map(|s| s.len()).unwrap_or(0),
        1,
        "an unauthenticated resume hello removed a ticket"
    );
});
