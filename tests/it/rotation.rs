//! Rotating a listener key with an overlap (docs/operations.md, "Rotating a listener key"): a listener that
//! holds two keys (`next_private_key`) and connectors that pin two (`peer = [new, old]`).
//!
//! First the core in memory: mac1 under two keys, which key signs, tickets bound to the key they
//! were made under. Then the configuration errors. Then the whole procedure with real daemons,
//! bytes checked end to end at every step.

use crate::support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sealpipe::config::Config;
use sealpipe::proto::handshake::{
    check_hello_mac1, ConnectorParams, Contact, Handshake, HandshakeError, ListenerParams,
    ListenerPin, Resumption,
};
use sealpipe::proto::identity::Fingerprint;
use sealpipe::proto::resume::{
    ticket_context, Chain, ConnectorTickets, TicketPolicy, TicketRefusal, TicketStore,
};
use support::daemon::*;
use support::*;

// ---------------------------------------------------------------------------------------------
// The core: two listener keys

/// A listener holding the test listener key (`private_key`, "old") and the untrusted test key
/// (`next_private_key`, "new"), each behind a counting signer, trusting the test connector.
struct TwoKeys {
    params: ListenerParams,
    old: Arc<CountingSigner>,
    new: Arc<CountingSigner>,
}

fn two_keys() -> TwoKeys {
    let old = CountingSigner::new(listener_key());
    let new = CountingSigner::new(untrusted_key());
    let mut params = listener_params(old.clone(), &[connector_key().fingerprint()]);
    params.next_identity = Some(new.clone());
    TwoKeys { params, old, new }
}

impl TwoKeys {
    fn signatures(&self) -> (u64, u64) {
        (self.old.signatures(), self.new.signatures())
    }
}

/// The test connector pinned to `pin`.
fn pinned(pin: Fingerprint) -> ConnectorParams {
    connector_params(Arc::new(connector_key()), pin)
}

#[test]
fn each_listener_key_answers_the_hellos_keyed_for_it_and_signs_them() {
    let l = two_keys();
    let (old, new) = (listener_key().fingerprint(), untrusted_key().fingerprint());
    for (pin, signed) in [(old, (1, 0)), (new, (1, 1)), (old, (2, 1))] {
        let hello =
            Handshake::connector(pinned(pin), det_randomness("mac1 two keys")).take_output();
        assert_eq!(
            check_hello_mac1(&l.params, &hello).unwrap(),
            Contact::Pinned
        );
        let Outcome::Done(both) = handshake(pinned(pin), l.params.clone(), &format!("two {pin}"))
        else {
            panic!("a hello keyed for {pin} was not answered")
        };
        let (c, lis) = *both;
        // The connector checked the key the listener presented against its pin and verified the
        // signature under it: the listener answered with the key the hello was keyed for.
        assert_eq!(c.peer.fingerprint(), pin);
        assert_eq!(lis.own, pin);
        assert_eq!(lis.peer.fingerprint(), connector_key().fingerprint());
        assert_eq!(c.transcript_hash, lis.transcript_hash);
        assert_eq!(l.signatures(), signed, "signatures (old, new) after {pin}");
    }
}

#[test]
fn a_hello_keyed_for_neither_key_is_dropped_before_any_signature() {
    let mut l = two_keys();
    // A connector pinned to a key the listener does not hold (here the connector's own).
    let stranger = pinned(connector_key().fingerprint());
    let hello = Handshake::connector(stranger.clone(), det_randomness("neither")).take_output();
    assert!(matches!(
        check_hello_mac1(&l.params, &hello),
        Err(HandshakeError::BadMac1)
    ));
    assert_refused!(
        handshake(stranger.clone(), l.params.clone(), "neither"),
        "listener",
        HandshakeError::BadMac1
    );
    // The same for a first contact while `allow_tofu` is off.
    let first = ConnectorParams {
        listener: ListenerPin::FirstContact,
        ..stranger
    };
    assert_refused!(
        handshake(first.clone(), l.params.clone(), "neither fc"),
        "listener",
        HandshakeError::BadMac1
    );
    assert_eq!(
        l.signatures(),
        (0, 0),
        "a signature for a hello keyed for neither key"
    );
    // With `allow_tofu`, a first contact is answered by `private_key`, never by the next key.
    l.params.allow_tofu = true;
    let Outcome::Done(both) = handshake(first, l.params.clone(), "first contact") else {
        panic!("first contact not answered")
    };
    assert_eq!(both.0.peer.fingerprint(), listener_key().fingerprint());
    assert_eq!(l.signatures(), (1, 0));
}

#[test]
fn a_ticket_resumes_only_under_the_listener_key_it_was_made_under() {
    let l = two_keys();
    let (old, new) = (listener_key().fingerprint(), untrusted_key().fingerprint());
    let cfp = connector_key().fingerprint();
    let lstore: Arc<Mutex<TicketStore>> = Arc::default();
    let policy = TicketPolicy::default();
    let now = Instant::now();
    let connect = |pin: Fingerprint, cstore: &Arc<Mutex<ConnectorTickets>>, tag: &str| {
        let c = Handshake::connector_resuming(
            pinned(pin),
            det_randomness(&format!("{tag} c")),
            Resumption {
                store: cstore.clone(),
                policy,
                now,
            },
        );
        let lis = Handshake::listener_resuming(
            l.params.clone(),
            det_randomness(&format!("{tag} l")),
            Resumption {
                store: lstore.clone(),
                policy,
                now,
            },
        );
        match drive(c, lis, |_, _| {}) {
            Outcome::Done(both) => *both,
            other => panic!("{tag}: {other:?}"),
        }
    };

    // A full handshake under the new key files a ticket; it resumes under the new key.
    let cstore: Arc<Mutex<ConnectorTickets>> = Arc::default();
    let (full, _) = connect(new, &cstore, "full");
    assert!(!full.resumed);
    assert_eq!(l.signatures(), (0, 1));
    let (c, lis) = connect(new, &cstore, "resume");
    assert!(c.resumed && lis.resumed);
    assert_eq!((c.peer.fingerprint(), lis.own), (new, new));
    assert_eq!(l.signatures(), (0, 1), "a resumption signed");

    // The same ticket in a hello keyed for the old key (a connector holding it under that pin):
    // the binder verifies, but the ticket is bound to the new key, so the listener refuses it,
    // deletes it, and runs a full handshake under the old key instead.
    let holding = |pin: &Fingerprint| {
        let store: Arc<Mutex<ConnectorTickets>> = Arc::default();
        store.lock().unwrap().file(
            &c.resumption,
            Arc::new(listener_key().public().clone()),
            ticket_context(&[&cfp, pin], None, support::SERVICE.as_bytes()),
            Some(Chain::new(policy, now)),
        );
        store
    };
    let (moved, kept) = (holding(&old), holding(&new));
    let (c, lis) = connect(old, &moved, "moved");
    assert!(!c.resumed && !lis.resumed);
    assert_eq!(lis.ticket_refused, Some(TicketRefusal::Untrusted));
    assert_eq!((c.peer.fingerprint(), lis.own), (old, old));
    assert_eq!(l.signatures(), (1, 1));
    // Deleted: a connector that holds it under the new key now gets a full handshake too.
    let (c, lis) = connect(new, &kept, "after");
    assert!(!c.resumed);
    assert_eq!(lis.ticket_refused, Some(TicketRefusal::Unknown));
    assert_eq!(l.signatures(), (1, 2));
}

// ---------------------------------------------------------------------------------------------
// Configuration

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, Path::new("/etc/sealpipe/r.toml")).map_err(|e| e.to_string())
}

fn connector_with_peer(identity: &str, peer: &str) -> String {
    format!(
        "[identity]\nprivate_key = \"c.pem\"\n{identity}\n[[connector]]\nname = \"db\"\nlisten = \"127.0.0.1:1\"\nconnect = \"db:1\"\npeer = {peer}\n"
    )
}

#[test]
fn peer_lists_and_next_private_key_are_validated_with_their_location() {
    let (a, b) = (listener_fp(), fingerprint_of("untrusted.pem"));
    // A list of two, in order; a single string as before.
    let c = parse(&connector_with_peer("", &format!("[\"{b}\", \"{a}\"]"))).unwrap();
    assert_eq!(
        c.connectors[0].peer,
        sealpipe::config::PeerPin::Keys(vec![b, a])
    );
    let c = parse(&connector_with_peer("", &format!("\"{a}\""))).unwrap();
    assert_eq!(
        c.connectors[0].peer,
        sealpipe::config::PeerPin::Keys(vec![a])
    );

    let at = "/etc/sealpipe/r.toml";
    for (peer, want) in [
        (
            "[]".to_string(),
            format!("{at}:8:8: connector \"db\": key `peer`: empty list"),
        ),
        (
            format!("[\"{a}\",\n  \"{a}\"]"),
            format!(
                "{at}:9:3: connector \"db\": key `peer`: {a} is listed twice (first on line 8)"
            ),
        ),
        (
            format!("[\"{a}\", \"{b}\", \"{}\"]", connector_fp()),
            format!(
                "{at}:8:{}: connector \"db\": key `peer`: more than 2 keys",
                9 + 2 * 54
            ),
        ),
        (
            format!("[\"{a}\", \"tofu\"]"),
            format!("{at}:8:63: connector \"db\": key `peer`: \"tofu\" is a value of its own"),
        ),
        (
            format!("[\"{a}\", \"SHA256:short\"]"),
            format!(
                "{at}:8:63: connector \"db\": key `peer`: invalid fingerprint \"SHA256:short\""
            ),
        ),
        (
            "[1]".to_string(),
            format!("{at}:8:9: connector \"db\": key `peer`: invalid type"),
        ),
    ] {
        let e = parse(&connector_with_peer("", &peer)).unwrap_err();
        assert!(e.starts_with(&want), "peer = {peer}:\n{e}\nwanted {want}");
    }

    // On a file with connectors only, `next_private_key` has no use.
    let e = parse(&connector_with_peer(
        "next_private_key = \"n.pem\"",
        &format!("\"{a}\""),
    ))
    .unwrap_err();
    assert_eq!(
        e,
        format!("{at}:3:20: [identity]: key `next_private_key`: is for listeners: a connector presents one key (`private_key`), and this file has no [[listener]]")
    );
    // On a listener: resolved like `private_key`, and not the same file.
    let listener = |next: &str| {
        format!(
            "[identity]\nprivate_key = \"l.pem\"\nnext_private_key = \"{next}\"\n[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\nforward = \"127.0.0.1:2\"\npeers = [\"{}\"]\n",
            connector_fp()
        )
    };
    let c = parse(&listener("keys/next.pem")).unwrap();
    assert_eq!(
        c.identity.next_private_key.map(|p| p.value),
        Some(PathBuf::from("/etc/sealpipe/keys/next.pem"))
    );
    assert_eq!(
        parse(&listener("l.pem")).unwrap_err(),
        format!("{at}:3:20: [identity]: key `next_private_key`: is the same file as `private_key`: the next key is a second, new key")
    );
}

#[test]
fn a_next_private_key_gets_the_checks_of_a_private_key() {
    let site = Site::new();
    let conf = |next: &str| {
        site.write(
            "listener.toml",
            &format!(
                "[identity]\nprivate_key = \"listener.pem\"\nnext_private_key = \"{next}\"\n[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:2\"\npeers = [\"{}\"]\n",
                connector_fp()
            ),
        )
    };
    let check = |path: &Path| run_cli(&["check", "--config", path.to_str().unwrap()]);
    // Both fingerprints printed.
    let (code, out, err) = check(&conf("untrusted.pem"));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "identity {}; next_private_key {}",
            listener_fp(),
            fingerprint_of("untrusted.pem")
        )),
        "{out}"
    );
    // Refused as a `private_key` would be: readable by others (naming the file); and the same
    // key again under another name.
    let loose = site.write("loose.pem", &pem("untrusted.pem"));
    set_mode(&loose, 0o644);
    let copy = site.write("copy.pem", &pem("openssl-rsa2048.pem"));
    set_mode(&copy, 0o600);
    for (file, wanted) in [
        (
            "loose.pem",
            [loose.display().to_string(), "chmod 600".into()],
        ),
        (
            "copy.pem",
            [
                "`next_private_key`".into(),
                "holds the same key as `private_key`".into(),
            ],
        ),
    ] {
        let (code, _, err) = check(&conf(file));
        assert!(
            code != 0 && wanted.iter().all(|w| err.contains(w.as_str())),
            "{file}: {err}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The procedure, with real daemons

/// The listener's config: `private_key`, optionally `next_private_key`, forwarding to `forward`.
fn listener_conf(forward: SocketAddr, key: &str, next: Option<&str>) -> String {
    let next = next.map_or(String::new(), |n| format!("next_private_key = \"{n}\"\n"));
    format!(
        "[identity]\nprivate_key = \"{key}\"\n{next}\n[[listener]]\nname = \"test\"\nlisten = \"127.0.0.1:0\"\nforward = \"{forward}\"\npeers = [\"{}\"]\n",
        connector_fp()
    )
}

/// A connector's config pinning `pins` (a list when there are several).
/// One session per client: these tests follow which key each handshake proved.
const NO_POOL: &str = "pool_max = 0\n";

fn connector_conf(connect: SocketAddr, pins: &[Fingerprint]) -> String {
    let peer = match pins {
        [one] => format!("\"{one}\""),
        many => format!(
            "[{}]",
            many.iter()
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "[identity]\nprivate_key = \"connector.pem\"\n\n[[connector]]\nname = \"test\"\nlisten = \"127.0.0.1:0\"\nconnect = \"{connect}\"\npeer = {peer}\n{NO_POOL}"
    )
}

/// Rewrites a daemon's config and reloads it; fails unless the reload took.
fn reconfigure(d: &Daemon, text: &str) {
    std::fs::write(&d.config, text).unwrap();
    let before = d.log_text().matches("configuration reloaded").count();
    let log = d.reload();
    assert!(
        log.matches("configuration reloaded").count() > before,
        "reload of {} did not take:\n{log}",
        d.config.display()
    );
}

/// Connections through each entry, every one checked byte for byte (a hash of each side):
/// none may be refused.
fn all_echo(step: &str, entries: &[SocketAddr]) {
    for (i, entry) in entries.iter().enumerate() {
        for round in 0..3u64 {
            assert_echoes(*entry, round * 100 + i as u64, 200_000);
        }
        echo_ok(*entry, format!("{step}: through connector {i}").as_bytes());
    }
}

/// Waits for a "connection open" line of `d` that contains `needle` (logs are written
/// asynchronously to the events); fails the test if none comes.
fn open_line(d: &Daemon, needle: &str) {
    let line = d.wait_line(needle);
    assert!(line.contains("connection open"), "{line}");
}

/// `sealpipe status --json` of `d`: its connections as (fingerprint, peer_name).
fn status_connections(d: &Daemon) -> Vec<(String, String)> {
    let (code, out, err) = run_cli(&["status", "--json", "--config", d.config.to_str().unwrap()]);
    assert_eq!(code, 0, "status failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["tunnels"][0]["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["fingerprint"].as_str().unwrap_or("").to_string(),
                c["peer_name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// A connection through connector `d` that fails: the client sees a reset, and the connector
/// says that the listener "did not answer a hello for `what`".
fn assert_unanswered(d: &Daemon, what: &str) {
    assert_eq!(
        try_exchange(d.addr(), b"refused"),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    let log = d.wait_log("did not answer a hello");
    assert!(
        log.contains(&format!("did not answer a hello for {what}")),
        "{log}"
    );
}

/// [`assert_unanswered`] for a connector with the one pin `pin`.
fn assert_pin_unanswered(d: &Daemon, pin: &Fingerprint) {
    assert_unanswered(
        d,
        &format!("key {pin}: the `peer` pin is probably not its key"),
    );
}

fn check_listener(d: &Daemon) -> String {
    let (code, out, err) = run_cli(&["check", "--config", d.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    out
}

#[test]
fn rotating_the_listener_key_step_by_step_refuses_no_connection() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    // "old" is the listener's key; "new" the committed untrusted key, mode 0600 in the site.
    let (old, new) = (listener_fp(), fingerprint_of("untrusted.pem"));
    let listener = site.start(
        "listener.toml",
        &listener_conf(service.addr, "listener.pem", None),
    );
    let at = listener.addr();
    // The connector that follows the procedure, pinned to the old key.
    let a = site.start("a.toml", &connector_conf(at, &[old]));
    // One that was given both pins before the listener had the new key: its hello for the new
    // key goes unanswered and it tries the old one, within the same connection attempt.
    let early = site.start("early.toml", &connector_conf(at, &[new, old]));
    // One pinned to the new key only: refused until the listener holds that key.
    let only_new = site.start("only-new.toml", &connector_conf(at, &[new]));

    all_echo("before", &[a.addr(), early.addr()]);
    // Its ticket, made under the old key, is kept while the hello for the new key goes
    // unanswered, and resumes under the old one.
    open_line(
        &early,
        &format!("fingerprint={old} pin=2 connect={at} resumed=true"),
    );
    assert_pin_unanswered(&only_new, &new);
    // A long-lived connection under the old key, carried through the steps.
    let mut long = TcpStream::connect(a.addr()).unwrap();
    long.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    echo_round(&mut long, b"opened under the old key");

    // 1. The listener gets the new key as `next_private_key`: it answers hellos for both.
    reconfigure(
        &listener,
        &listener_conf(service.addr, "listener.pem", Some("untrusted.pem")),
    );
    assert!(
        check_listener(&listener).contains(&format!("identity {old}; next_private_key {new}")),
        "{}",
        check_listener(&listener)
    );
    all_echo("step 1", &[a.addr(), early.addr(), only_new.addr()]);
    open_line(&early, &format!("fingerprint={new} pin=1"));
    open_line(&only_new, &format!("fingerprint={new}"));
    // The listener names which of its keys each connection's hello was for.
    open_line(&listener, &format!("key={old}"));
    open_line(&listener, &format!("key={new}"));
    echo_round(&mut long, b"step 1");

    // 2. The connector pins both, the new key first.
    reconfigure(&a, &connector_conf(at, &[new, old]));
    all_echo("step 2", &[a.addr(), early.addr(), only_new.addr()]);
    open_line(&a, &format!("fingerprint={new} pin=1"));
    echo_round(&mut long, b"step 2");
    // `status` names the pin of each open connection: the long one is under the old key.
    let mut second = TcpStream::connect(a.addr()).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    echo_round(&mut second, b"opened under the new key");
    let conns = status_connections(&a);
    assert!(
        conns.contains(&(old.to_string(), "pin 2 of 2".to_string()))
            && conns.contains(&(new.to_string(), "pin 1 of 2".to_string())),
        "{conns:?}"
    );
    drop(second);

    // 3. The listener swaps: the new key is `private_key`, the old one `next_private_key`.
    reconfigure(
        &listener,
        &listener_conf(service.addr, "untrusted.pem", Some("listener.pem")),
    );
    assert!(check_listener(&listener).contains(&format!("identity {new}; next_private_key {old}")));
    all_echo("step 3", &[a.addr(), early.addr(), only_new.addr()]);
    echo_round(&mut long, b"step 3");

    // 4. The connector drops the old pin: its connections under the old key are cut.
    reconfigure(&a, &connector_conf(at, &[new]));
    let mut rest = Vec::new();
    assert_eq!(
        long.read_to_end(&mut rest).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "the old key's connection was not cut: {rest:?}"
    );
    assert!(a
        .wait_log("its open connections are cut")
        .contains("key no longer trusted"));
    all_echo("step 4", &[a.addr(), early.addr(), only_new.addr()]);
    open_line(&a, &format!("fingerprint={new} connect="));

    // 5. The listener drops the old key.
    reconfigure(
        &listener,
        &listener_conf(service.addr, "untrusted.pem", None),
    );
    all_echo("step 5", &[a.addr(), early.addr(), only_new.addr()]);
    // A connector still pinned to the old key only is refused, and told why.
    let straggler = site.start("straggler.toml", &connector_conf(at, &[old]));
    assert_pin_unanswered(&straggler, &old);
    // Every connection of the procedure got through: no handshake failed on the connectors
    // that followed it (the early connector's unanswered hellos were retried, not failed).
    for d in [&a, &early] {
        let log = d.log_text();
        assert!(
            !log.contains("handshake failed") && !log.contains("did not answer a hello"),
            "{}:\n{log}",
            d.config.display()
        );
    }
}

#[test]
fn a_connector_tries_its_pins_in_order_and_names_them_all_when_none_answers() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let listener = site.start(
        "listener.toml",
        &listener_conf(service.addr, "listener.pem", Some("untrusted.pem")),
    );
    // Two fingerprints of keys the listener does not hold.
    let (x, z) = (connector_fp(), Fingerprint([7; 32]));
    // Pinned to one it does not hold, then to one it does: reached by the second.
    let c = site.start(
        "c.toml",
        &connector_conf(listener.addr(), &[x, listener_fp()]),
    );
    assert_echoes(c.addr(), 7, 10_000);
    open_line(&c, &format!("fingerprint={} pin=2", listener_fp()));
    // Pinned to two keys it holds neither of: refused, and the error names both.
    let w = site.start("w.toml", &connector_conf(listener.addr(), &[x, z]));
    assert_unanswered(
        &w,
        &format!("key {x} nor for key {z}: probably none of the `peer` pins is its key"),
    );
    // The listener dropped both hellos at mac1, naming its two keys.
    let log = listener.wait_log("hello without a valid mac1");
    assert!(
        log.contains(&format!(
            "not this listener's key {} nor its next_private_key {}",
            listener_fp(),
            fingerprint_of("untrusted.pem")
        )),
        "{log}"
    );
}
