//! Enrollment of connectors not known in advance: `accept_unknown` and `allow_tofu` listeners,
//! TOFU connectors with `known_peers`, and `sealpipe trust`. In memory (sans-IO) first, then
//! over real daemons.

use crate::support;

use std::io::ErrorKind;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sealpipe::config::{Config, PeerPin};
use sealpipe::proto::handshake::{
    check_hello_mac1, ConnectorParams, Contact, Handshake, HandshakeError, ListenerParams,
    ListenerPin,
};
use sealpipe::proto::identity::TrustList;
use support::daemon::*;
use support::*;

// ---------------------------------------------------------------------------------------------
// Sans-IO

#[test]
fn accept_unknown_lets_an_unlisted_connector_in_only_when_set() {
    let p = pair(None);
    let mut c = p.connector.clone();
    c.identity = Arc::new(untrusted_key());
    // Off (the default): refused after the connector's auth.
    let out = handshake(c.clone(), p.listener.clone(), "au 0");
    assert_refused!(
        out,
        "listener",
        HandshakeError::UntrustedConnector(fp, _) if fp == untrusted_key().fingerprint()
    );
    // On, with an empty trust list: in, and the listener knows exactly which key it was.
    let open = ListenerParams {
        trust: Arc::new(TrustList::new()),
        accept_unknown: true,
        ..p.listener.clone()
    };
    let out = handshake(c.clone(), open.clone(), "au 1");
    let Outcome::Done(both) = out else {
        panic!("{out:?}")
    };
    assert_eq!(both.1.peer.fingerprint(), untrusted_key().fingerprint());
    assert_eq!(both.0.peer.fingerprint(), listener_key().fingerprint());
    // The connector must still prove possession of the key it shows.
    c.identity = Arc::new(StolenPublicKey {
        shown: untrusted_key().public().clone(),
        signer: connector_key(),
    });
    let out = handshake(c, open, "au 2");
    assert_refused!(out, "listener", HandshakeError::BadSignature);
}

#[test]
fn first_contact_mac1_is_answered_only_with_allow_tofu() {
    let p = pair(None);
    let tofu_c = ConnectorParams {
        listener: ListenerPin::FirstContact,
        ..p.connector.clone()
    };
    // Without allow_tofu: the listener stays silent, before any signature.
    let hello = Handshake::connector(tofu_c.clone(), det_randomness("fc h")).take_output();
    assert!(matches!(
        check_hello_mac1(&p.listener, &hello),
        Err(HandshakeError::BadMac1)
    ));
    let before = p.listener_signer.signatures();
    let out = handshake(tofu_c.clone(), p.listener.clone(), "fc 0");
    assert_refused!(out, "listener", HandshakeError::BadMac1);
    assert_eq!(p.listener_signer.signatures(), before);

    // With allow_tofu: answered, and the connector learns the listener's key.
    let tofu_l = ListenerParams {
        allow_tofu: true,
        ..p.listener.clone()
    };
    assert_eq!(
        check_hello_mac1(&tofu_l, &hello).unwrap(),
        Contact::FirstContact
    );
    let out = handshake(tofu_c.clone(), tofu_l.clone(), "fc 1");
    let Outcome::Done(both) = out else {
        panic!("{out:?}")
    };
    let learned = both.0.peer.fingerprint();
    assert_eq!(learned, listener_key().fingerprint());
    // A pinned connector still gets through an allow_tofu listener, as Pinned.
    let pinned_hello =
        Handshake::connector(p.connector.clone(), det_randomness("fc h2")).take_output();
    assert_eq!(
        check_hello_mac1(&tofu_l, &pinned_hello).unwrap(),
        Contact::Pinned
    );
    // allow_tofu does not open the trust list: an unlisted connector is still refused.
    let mut stranger = tofu_c.clone();
    stranger.identity = Arc::new(untrusted_key());
    let out = handshake(stranger, tofu_l.clone(), "fc 2");
    assert_refused!(out, "listener", HandshakeError::UntrustedConnector(..));

    // Recorded: pinned from now on. Another listener key (with allow_tofu) is refused...
    let recorded = ConnectorParams {
        listener: ListenerPin::Key(learned),
        ..p.connector.clone()
    };
    let other = ListenerParams {
        allow_tofu: true,
        ..listener_params(Arc::new(untrusted_key()), &[connector_key().fingerprint()])
    };
    // (it cannot even answer the pinned hello)...
    let out = handshake(recorded.clone(), other.clone(), "fc 3");
    assert_refused!(out, "listener", HandshakeError::BadMac1);
    // ...and a probe (first-contact hello expecting the recorded key) names the new key and
    // stops before the connector signs anything.
    let probe = ConnectorParams {
        listener: ListenerPin::Probe(learned),
        ..recorded.clone()
    };
    let (mut c, mut l) = handshakes(probe, other.clone(), "fc 5");
    l.read(&c.take_output()).unwrap();
    let err = c.read(&l.take_output()).unwrap_err();
    assert!(
        matches!(err, HandshakeError::WrongListenerKey { expected, got }
            if expected == learned && got == untrusted_key().fingerprint()),
        "{err:?}"
    );
    assert!(
        c.take_output().is_empty(),
        "the connector answered a wrong key"
    );
    // A probe to the right listener completes like a pinned handshake.
    let probe_ok = ConnectorParams {
        listener: ListenerPin::Probe(learned),
        ..recorded.clone()
    };
    let out = handshake(probe_ok, tofu_l.clone(), "fc 6");
    assert!(out.is_done(), "{out:?}");
    // ...and a first contact accepts only a listener that holds the key it shows.
    let impostor = ListenerParams {
        identity: Arc::new(StolenPublicKey {
            shown: listener_key().public().clone(),
            signer: untrusted_key(),
        }),
        ..other
    };
    let out = handshake(tofu_c, impostor, "fc 4");
    assert_refused!(out, "connector", HandshakeError::BadSignature);
}

// ---------------------------------------------------------------------------------------------
// Config

fn with_identity(rest: &str) -> String {
    format!("[identity]\nprivate_key = \"k.pem\"\n\n{rest}")
}

fn config_err(text: &str) -> String {
    Config::parse(text, Path::new("/etc/sealpipe/e.toml"))
        .unwrap_err()
        .to_string()
}

#[test]
fn enrollment_options_are_validated() {
    let fp = listener_fp();
    // accept_unknown with no peers at all is valid; without it, it is not.
    let open = with_identity(
        "[[listener]]\nname = \"open\"\nlisten = \"0.0.0.0:7443\"\nforward = \"127.0.0.1:6379\"\naccept_unknown = true\nallow_tofu = true\n",
    );
    let c = Config::parse(&open, Path::new("/etc/sealpipe/e.toml")).unwrap();
    assert!(c.listeners[0].accept_unknown && c.listeners[0].allow_tofu);
    assert!(c.listeners[0].peers.is_empty());
    assert!(config_err(&open.replace("accept_unknown = true\n", "")).contains("no trusted peers"));
    // Wrong type.
    assert_eq!(
        config_err(&open.replace("accept_unknown = true", "accept_unknown = \"yes\"")),
        "/etc/sealpipe/e.toml:8:18: listener \"open\": key `accept_unknown`: invalid type: string \"yes\", expected a boolean"
    );
    // TOFU connector.
    let conn = |peer: &str, kp: &str| {
        with_identity(&format!(
            "[[connector]]\nname = \"db\"\nlisten = \"127.0.0.1:6379\"\nconnect = \"db.example.net:7443\"\npeer = \"{peer}\"\n{kp}"
        ))
    };
    let c = Config::parse(
        &conn("tofu", "known_peers = \"known_peers\"\n"),
        Path::new("/etc/sealpipe/e.toml"),
    )
    .unwrap();
    let PeerPin::Tofu { known_peers } = &c.connectors[0].peer else {
        panic!("{:?}", c.connectors[0].peer)
    };
    assert_eq!(**known_peers, Path::new("/etc/sealpipe/known_peers"));
    assert_eq!(
        config_err(&conn("tofu", "")),
        "/etc/sealpipe/e.toml:8:8: connector \"db\": key `peer`: `peer = \"tofu\"` needs `known_peers = \"PATH\"`, the file where the listener's key is recorded"
    );
    assert_eq!(
        config_err(&conn(&fp.to_string(), "known_peers = \"kp\"\n")),
        "/etc/sealpipe/e.toml:9:15: connector \"db\": key `known_peers`: `known_peers` is only for `peer = \"tofu\"`; this connector pins its listener's key"
    );
    assert!(config_err(&conn("tofu", "known_peers = \"\"\n")).contains("empty path"));
}

// ---------------------------------------------------------------------------------------------
// Real daemons

#[test]
fn accept_unknown_daemon_lets_any_connector_in_and_announces_each_new_key_once() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let listener = start_listener(&site, service.addr, "accept_unknown = true\n");
    let log = listener.log_text();
    assert!(
        log.contains("WARN")
            && log.contains("accept_unknown = true: ANY connector")
            && log.contains("tunnel=test"),
        "{log}"
    );
    let connector = site.start(
        "connector.toml",
        &connector_config(
            "untrusted.pem",
            any_port(),
            listener.addr(),
            &listener_fp(),
            NO_POOL,
        ),
    );
    echo_ok(connector.addr(), b"one");
    echo_ok(connector.addr(), b"two");
    let fp = fingerprint_of("untrusted.pem");
    let log = listener.wait_log_count("accepted because accept_unknown = true", 2);
    let announce =
        format!("new connector key {fp} (not in peers; accepted because accept_unknown = true)");
    assert_eq!(log.matches(&announce).count(), 1, "{log}");
    assert_eq!(
        log.matches("connector key not in peers, accepted because accept_unknown = true")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(service.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn trust_add_then_remove_take_effect_on_sighup() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let other = fingerprint_of("untrusted.pem");
    let peers = site.write(
        "peers",
        &format!("# connectors\n{other}  someone else # keep\n"),
    );
    set_mode(&peers, 0o640);
    let listener = start_listener(&site, service.addr, "peers_file = \"peers\"\n");
    let connector = start_connector(&site, listener.addr(), NO_POOL);
    assert_eq!(
        try_exchange(connector.addr(), b"x"),
        Err(ErrorKind::ConnectionReset)
    );

    // Add by public key file, with a name.
    let pub_pem = test_data_dir().join("peer-b.pub.pem");
    let c = listener.config.to_str().unwrap();
    let (code, out, err) = run_cli(&[
        "trust",
        "add",
        "--config",
        c,
        pub_pem.to_str().unwrap(),
        "--name",
        "laptop b",
    ]);
    assert_eq!(code, 0, "{err}");
    let fp = connector_fp();
    assert!(
        out.contains(&format!("added {fp}  laptop b to {}", peers.display()))
            && out.contains("SIGHUP"),
        "{out}"
    );
    let text = std::fs::read_to_string(&peers).unwrap();
    assert_eq!(
        text,
        format!("# connectors\n{other}  someone else # keep\n{fp}  laptop b\n")
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&peers).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    // Adding again changes nothing.
    let (code, out, _) = run_cli(&["trust", "add", "--config", c, &fp.to_string()]);
    assert_eq!(code, 0);
    assert!(out.contains("already trusted"), "{out}");
    assert_eq!(std::fs::read_to_string(&peers).unwrap(), text);
    // Not yet reloaded: still refused. Then SIGHUP: in.
    assert_eq!(
        try_exchange(connector.addr(), b"x"),
        Err(ErrorKind::ConnectionReset)
    );
    listener.reload();
    echo_ok(connector.addr(), b"enrolled");

    // List.
    let (code, out, _) = run_cli(&["trust", "list", "--peers-file", peers.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        format!(
            "{other}  someone else  ({p}:2)\n{fp}  laptop b  ({p}:3)\n",
            p = peers.display()
        )
    );

    // Remove by name, reload: refused again.
    let (code, out, err) = run_cli(&["trust", "remove", "--config", c, "laptop b"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("removed {fp}  laptop b")), "{out}");
    assert_eq!(
        std::fs::read_to_string(&peers).unwrap(),
        format!("# connectors\n{other}  someone else # keep\n")
    );
    listener.reload();
    assert_eq!(
        try_exchange(connector.addr(), b"x"),
        Err(ErrorKind::ConnectionReset)
    );
    // Removing the last key would make the reload fail and keep it trusted: refused.
    let before = std::fs::read_to_string(&peers).unwrap();
    let (code, _, err) = run_cli(&["trust", "remove", "--config", c, &other.to_string()]);
    assert_ne!(code, 0);
    assert!(err.contains("no trusted key"), "{err}");
    assert_eq!(std::fs::read_to_string(&peers).unwrap(), before);
}

#[test]
fn trust_refuses_bad_input_and_malformed_files_and_leaves_them_unchanged() {
    let site = Site::new();
    let good = format!("# ok\n{}  a\n", connector_fp());
    let peers = site.write("peers", &good);
    let p = peers.to_str().unwrap();
    let not_a_key = site.write("notakey.pem", "hello\n");
    for (args, expected) in [
        (
            vec!["add", "--peers-file", p, "SHA256:short"],
            "invalid fingerprint \"SHA256:short\"",
        ),
        (
            vec!["add", "--peers-file", p, "no-such-file"],
            "neither a fingerprint",
        ),
        (
            vec!["add", "--peers-file", p, not_a_key.to_str().unwrap()],
            "notakey.pem",
        ),
        (
            vec![
                "add",
                "--peers-file",
                p,
                &listener_fp().to_string(),
                "--name",
                "a # b",
            ],
            "invalid --name",
        ),
        (
            vec!["remove", "--peers-file", p, "nobody"],
            "no entry for \"nobody\"",
        ),
    ] {
        let mut all = vec!["trust"];
        all.extend(args.iter().copied());
        let (code, _, err) = run_cli(&all);
        assert_ne!(code, 0, "{all:?}");
        assert!(err.contains(expected), "{all:?}: {err}");
        assert_eq!(std::fs::read_to_string(&peers).unwrap(), good);
    }
    // A malformed file: every subcommand refuses, naming the file and line.
    let bad = format!("{}\nSHA256:broken\n", connector_fp());
    std::fs::write(&peers, &bad).unwrap();
    for sub in ["add", "remove", "list"] {
        let mut args = vec!["trust", sub, "--peers-file", p];
        let fp = listener_fp().to_string();
        if sub != "list" {
            args.push(&fp);
        }
        let (code, _, err) = run_cli(&args);
        assert_ne!(code, 0, "{sub}");
        assert!(err.contains(&format!("{p}:2:")), "{sub}: {err}");
        assert_eq!(std::fs::read_to_string(&peers).unwrap(), bad);
    }
    // --config: a listener without peers_file, and several listeners without --listener.
    let conf = site.write(
        "l.toml",
        &listener_toml(any_port(), "127.0.0.1:9", "listener.pem", &trusted_peers()),
    );
    // `list` shows its inline `peers` (issue 35); an edit is refused.
    let (code, out, err) = run_cli(&["trust", "list", "--config", conf.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{}  -  (", connector_fp())), "{out}");
    let (code, _, err) = run_cli(&["trust", "add", "--config", conf.to_str().unwrap(), "x.pem"]);
    assert_ne!(code, 0);
    assert!(err.contains("has no `peers_file`"), "{err}");
    let two = format!(
        "{}\n[[listener]]\nname = \"second\"\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:9\"\npeers_file = \"peers\"\n",
        std::fs::read_to_string(&conf).unwrap()
    );
    std::fs::write(&peers, &good).unwrap();
    let conf2 = site.write("l2.toml", &two);
    let c2 = conf2.to_str().unwrap();
    let (code, _, err) = run_cli(&["trust", "list", "--config", c2]);
    assert_ne!(code, 0);
    assert!(err.contains("choose one with --listener NAME"), "{err}");
    let (code, out, err) = run_cli(&["trust", "list", "--config", c2, "--listener", "second"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&connector_fp().to_string()), "{out}");
}

#[test]
fn trust_add_enrolls_the_first_key_into_an_empty_or_missing_peers_file() {
    let service = Service::start(Behaviour::Echo);
    let pub_pem = test_data_dir().join("peer-b.pub.pem");
    let fp = connector_fp();
    for initial in [None, Some("# connectors allowed in\n")] {
        let site = Site::new();
        let peers = site.path("peers");
        if let Some(text) = initial {
            site.write("peers", text);
        }
        // A listener that trusts only its peers file, which lists nobody yet.
        let config = site.write(
            "listener.toml",
            &listener_toml(
                any_port(),
                service.addr,
                "listener.pem",
                "peers_file = \"peers\"\n",
            ),
        );
        let c = config.to_str().unwrap();
        let (code, _, _) = run_cli(&["check", "--config", c]);
        assert_eq!(code, 1, "the daemon refuses a listener that trusts nobody");
        let (code, out, err) = run_cli(&["trust", "list", "--config", c]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains(&format!("{}: no trusted keys", peers.display())),
            "{out}"
        );
        let add = ["trust", "add", "--config", c, pub_pem.to_str().unwrap()];
        let (code, out, err) = run_cli(&[&add[..], &["--name", "host-a"]].concat());
        assert_eq!(code, 0, "{initial:?}: {err}");
        assert_eq!(
            out,
            format!(
                "added {fp}  host-a to {} (line {}); to apply it, send SIGHUP to the daemon running {c}\n",
                peers.display(),
                if initial.is_some() { 2 } else { 1 }
            )
        );
        assert_eq!(
            std::fs::read_to_string(&peers).unwrap(),
            format!("{}{fp}  host-a\n", initial.unwrap_or(""))
        );
        // The config is whole now: the daemon starts and lets the connector in.
        let (code, _, err) = run_cli(&["check", "--config", c]);
        assert_eq!(code, 0, "{err}");
        let listener = Daemon::start(&config);
        let connector = start_connector(&site, listener.addr(), NO_POOL);
        echo_ok(connector.addr(), b"first key enrolled");
    }
}

#[test]
fn trust_add_still_refuses_a_config_broken_otherwise() {
    let site = Site::new();
    let config = site.write(
        "listener.toml",
        &listener_toml(
            any_port(),
            "127.0.0.1",
            "listener.pem",
            "peers_file = \"peers\"\n",
        ),
    );
    let c = config.to_str().unwrap();
    assert_cli_error(
        &["trust", "add", "--config", c, &connector_fp().to_string()],
        1,
        &format!("{c}:7:11: listener \"test\": key `forward`: invalid address \"127.0.0.1\": missing `:port`"),
    );
    assert!(!site.path("peers").exists());
}

#[test]
fn tofu_records_the_first_key_then_refuses_a_changed_one() {
    let service = Service::start(Behaviour::Echo);
    let mut t = tofu_tunnel(service.addr);
    assert!(
        t.listener
            .log_text()
            .contains("allow_tofu = true: this listener answers"),
        "{}",
        t.listener.log_text()
    );
    let addr = t.listener.addr();
    let (connector, site) = (&t.connector, &t.site);
    let known = site.path("known_peers");
    assert!(!known.exists());

    // First connection: recorded. Later ones: pinned (no more first contacts at the listener).
    echo_ok(connector.addr(), b"first");
    let lfp = listener_fp();
    let text = std::fs::read_to_string(&known).unwrap();
    assert!(text.ends_with(&format!("\n{addr} {lfp}\n")), "{text}");
    let clog = connector.wait_log("first contact: recorded");
    assert!(
        clog.contains(&format!("recorded listener key {lfp} for {addr}")),
        "{clog}"
    );
    echo_ok(connector.addr(), b"second");
    echo_ok(connector.addr(), b"third");
    let llog = t.listener.wait_log_count("connection open", 3);
    assert_eq!(
        llog.matches("first contact from a TOFU connector").count(),
        1,
        "{llog}"
    );
    assert_eq!(std::fs::read_to_string(&known).unwrap(), text);

    // The listener comes back on the same address with another key: refused, loudly.
    t.listener.kill();
    let mut listener2 = site.start(
        "listener2.toml",
        &allow_tofu_listener(addr, service.addr, "untrusted.pem"),
    );
    assert_eq!(
        try_exchange(connector.addr(), b"x"),
        Err(ErrorKind::ConnectionReset)
    );
    let line = connector.wait_line("LISTENER KEY CHANGED");
    let other = fingerprint_of("untrusted.pem");
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&format!(
            "known_peers has {lfp}, the listener presented {other}"
        )),
        "{line}"
    );
    assert!(
        line.contains(&format!("delete line 3 of {}", known.display())),
        "{line}"
    );
    assert_eq!(std::fs::read_to_string(&known).unwrap(), text);

    // Another key and no allow_tofu: the new key cannot be seen, but the failure is explained.
    listener2.kill();
    let _listener3 = site.start(
        "listener3.toml",
        &listener_toml(addr, service.addr, "untrusted.pem", &trusted_peers()),
    );
    assert_eq!(
        try_exchange(connector.addr(), b"x"),
        Err(ErrorKind::ConnectionReset)
    );
    let clog = connector.wait_log("answers neither");
    assert!(
        clog.contains(&format!("recorded in known_peers ({lfp})"))
            && clog.contains(&format!("delete line 3 of {}", known.display())),
        "{clog}"
    );
    assert_eq!(std::fs::read_to_string(&known).unwrap(), text);
    assert_eq!(service.accepted.load(Ordering::SeqCst), 3);
}

#[test]
fn turning_accept_unknown_on_at_reload_warns_once() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let peers = trusted_peers();
    let listener = start_listener(&site, service.addr, &peers);
    let warning = "accept_unknown = true: ANY connector";
    assert!(!listener.log_text().contains(warning));
    // The same `listen` text (port 0), so that the reload keeps the socket.
    site.write(
        "listener.toml",
        &listener_toml(
            any_port(),
            service.addr,
            "listener.pem",
            &format!("{peers}accept_unknown = true\n"),
        ),
    );
    let log = listener.reload();
    assert_eq!(log.matches(warning).count(), 1, "{log}");
    // Still on at the next reload: no new warning.
    let log = listener.reload();
    assert_eq!(log.matches(warning).count(), 1, "{log}");
}

#[test]
fn tofu_first_contact_to_a_listener_without_allow_tofu_fails_clearly() {
    let service = Service::start(Behaviour::Echo);
    let site = Site::new();
    let listener = start_listener(&site, service.addr, &trusted_peers());
    let connector = Daemon::start(&tofu_connector(&site, listener.addr()));
    assert_eq!(
        try_exchange(connector.addr(), b"x"),
        Err(ErrorKind::ConnectionReset)
    );
    let log = connector.wait_log("got no answer");
    assert!(
        log.contains("ERROR") && log.contains("only with `allow_tofu = true`"),
        "{log}"
    );
    assert!(!site.path("known_peers").exists());
    assert_eq!(service.accepted.load(Ordering::SeqCst), 0);
}

#[test]
fn check_validates_known_peers() {
    let site = Site::new();
    let conf = tofu_connector(&site, "127.0.0.1:7443".parse().unwrap());
    let c = conf.to_str().unwrap();
    let (code, _, err) = run_cli(&["check", "--config", c]);
    assert_eq!(code, 0, "{err}");
    let known = site.write("known_peers", "127.0.0.1:7443 SHA256:nope\n");
    let (code, _, err) = run_cli(&["check", "--config", c]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("{}:1: invalid fingerprint", known.display())),
        "{err}"
    );
}
