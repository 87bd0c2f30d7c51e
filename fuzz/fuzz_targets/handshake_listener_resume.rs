//! A listener with resumption and one valid ticket (issued to the fuzz connector) receiving a
//! ResumeHello built from fuzzer bytes, then fuzzer bytes after it. mac1 is recomputed by the
//! harness (a fuzzer cannot forge it, and everything behind it is what matters here).
//!
//! The ResumeHello of protocol 2 (PROTOCOL.md §9, body 1314 bytes): `version ‖ options ‖
//! random_c[32] ‖ e_c[32] ‖ ek[1184] ‖ ticket_id[16] ‖ binder[32] ‖ mac1[16]`.
//!
//! Input: byte 0 is the mode, then the hello fields (version, options, random, e_c: 66 bytes,
//! zero-padded if the input is shorter), then the encapsulation key: mode bit 1 clear, the
//! encapsulation key of the fixed ML-KEM key of the vectors (valid: a fallback to a full
//! handshake gets as far as the listener's signed answer); mode bit 1 set, 1184 bytes from the
//! input (zero-padded; mostly invalid keys, which a fallback refuses), then
//! * mode bit 0 clear: the ticket id (16) and binder (32) from the input, so the fuzzer
//!   explores unknown tickets and wrong binders;
//! * mode bit 0 set: the real ticket id and a correct binder (recomputed over the fuzzed
//!   fields), so the listener accepts the ticket, answers ResumeAccept and waits for
//!   ResumeFinished;
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
use sealpipe::proto::key_schedule::Secret;
use sealpipe::proto::messages::{
    header, MessageType, HELLO_FIELDS, MAC1_LEN, MSG_HEADER_LEN, RESUME_HELLO_BODY, TICKET_ID_LEN,
};
use sealpipe::proto::mlkem::EK_LEN;
use sealpipe::proto::resume::{
    binder, successors, ticket_context, ticket_id, Chain, ConnectorTickets, TicketPolicy,
    TicketStore, SUCCESSORS,
};
use sealpipe_fuzz::*;

/// The resumption secret of the session whose tickets both sides hold: fixed, so the fuzzer's
/// inputs stay meaningful from run to run. The connector offers its oldest ticket, the first.
const RESUMPTION_SECRET: [u8; 32] = [0x7a; 32];

fn offered_ticket() -> Secret {
    successors(&Secret::from_bytes(RESUMPTION_SECRET))[0].clone()
}
const BINDER_LEN: usize = 32;

/// Offset of the ticket id in a whole ResumeHello (after the fields and the encapsulation key).
const RH_ID: usize = MSG_HEADER_LEN + HELLO_FIELDS + EK_LEN;

/// The start of a ResumeHello: header, `fields` (zero-padded to 66 bytes) and `ek` (to 1184).
fn hello_start(fields: &[u8], ek: &[u8]) -> Vec<u8> {
    let mut hello = header(MessageType::ResumeHello, RESUME_HELLO_BODY).to_vec();
    hello.extend_from_slice(fields);
    hello.resize(MSG_HEADER_LEN + HELLO_FIELDS, 0);
    hello.extend_from_slice(ek);
    hello.resize(RH_ID, 0);
    hello
}

/// The ResumeHello the harness builds in mode odd from `fields` and `ek`.
fn real_ticket_hello(fields: &[u8], ek: &[u8]) -> Vec<u8> {
    let secret = offered_ticket();
    let mut hello = hello_start(fields, ek);
    hello.extend_from_slice(&ticket_id(&secret));
    let b = binder(&secret, &hello, &listener_fingerprint());
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
    store.file(
        &Secret::from_bytes(RESUMPTION_SECRET),
        Arc::new(connector_identity().public().clone()),
        true,
        ticket_context(&[&listener_fingerprint()], None, SERVICE.as_bytes()),
        Some(Chain::new(policy, now)),
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
        tickets.file(
            &Secret::from_bytes(RESUMPTION_SECRET),
            Arc::new(listener_identity().public().clone()),
            ticket_context(
                &[&connector_identity().fingerprint(), &listener_fingerprint()],
                None,
                SERVICE.as_bytes(),
            ),
            Some(Chain::new(policy, now)),
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
            real_ticket_hello(
                &hello[MSG_HEADER_LEN..MSG_HEADER_LEN + HELLO_FIELDS],
                &hello[MSG_HEADER_LEN + HELLO_FIELDS..RH_ID]
            ),
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
    let (fields, rest) = rest.split_at(rest.len().min(HELLO_FIELDS));
    let fixed_ek = fixed_mlkem_ek();
    let (ek, rest) = if mode & 2 == 0 {
        (&fixed_ek[..], rest)
    } else {
        rest.split_at(rest.len().min(EK_LEN))
    };
    let (hello, rest) = if mode & 1 == 0 {
        let mut hello = hello_start(fields, ek);
        let (ticket, rest) = rest.split_at(rest.len().min(TICKET_ID_LEN + BINDER_LEN));
        hello.extend_from_slice(ticket);
        hello.resize(MSG_HEADER_LEN + RESUME_HELLO_BODY - MAC1_LEN, 0);
        let tag = mac1(&listener_fingerprint(), &hello);
        hello.extend_from_slice(&tag);
        (hello, rest)
    } else {
        (real_ticket_hello(fields, ek), rest)
    };
    assert_eq!(hello.len(), MSG_HEADER_LEN + RESUME_HELLO_BODY);
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
        SUCCESSORS as usize,
        "an unauthenticated resume hello removed a ticket"
    );
});
