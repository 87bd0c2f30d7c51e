//! A man in the middle between a real connector and a real listener: the on-path attacker of
//! SECURITY.md, against the defences of PROTOCOL.md §7 (tampering, truncation, replay, splicing,
//! reflection).
//!
//! Each test starts a listener, the adversary, a connector and a recording echo service, opens
//! one clean connection through the adversary that stays open for the whole test, then attacks
//! one connection at a time. For every attack: the attacked connection ends, its plaintext
//! client sees a reset (never a clean EOF), the service never receives a byte the client did not
//! send (what it got is a prefix of what was sent, and a clean EOF only ever follows all of it),
//! handshake attacks never reach the service at all, and the clean connection keeps flowing.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use support::daemon::*;
use support::mitm::*;
use support::pseudo_random;

/// Small records and frequent rekeys, so that a few KiB make many records of every type; a short
/// handshake timeout bounds the attacks that leave a side waiting for bytes. Resumption is off:
/// the adversary's parser and its attack table follow the full handshake (resumed handshakes
/// are attacked byte by byte in tests/it/handshake.rs).
const TUNING: &str = "record_size = \"1KiB\"\nrekey_bytes = \"3KiB\"\nhandshake_timeout = \"3s\"\nresumption = false\npool_max = 0";

/// What each attacked client sends: 8 KiB, so at least 8 data records, 2 rekey records and a
/// close record each way. Up, the connector's StreamInfo record comes first: `Rec(0)` is the
/// StreamInfo, `Rec(1)` the first data record, `Rec(4)` the first rekey record.
const ATTACK_BYTES: usize = 8 * 1024;

/// "Promptly".
const PROMPT: Duration = Duration::from_secs(5);

struct Lab {
    _site: Site,
    service: RecordingEcho,
    listener: Daemon,
    connector: Daemon,
    mitm: Mitm,
    entry: SocketAddr,
    clean: Option<Clean>,
    /// Data of every attacked connection (for the final check of the service's connections).
    sent: Vec<Vec<u8>>,
    name: &'static str,
    tried: usize,
    detected: usize,
    failures: Vec<String>,
}

impl Lab {
    fn start(name: &'static str) -> Lab {
        let MitmRig {
            site,
            service,
            listener,
            connector,
            mitm,
            entry,
            clean,
        } = MitmRig::start(TUNING);
        Lab {
            _site: site,
            service,
            listener,
            connector,
            mitm,
            entry,
            clean: Some(clean),
            sent: Vec::new(),
            name,
            tried: 0,
            detected: 0,
            failures: Vec::new(),
        }
    }

    /// A clean exchange through the adversary (not attacked); returns its recorded session.
    fn record_session(&mut self, data: &[u8]) -> Session {
        let i = self.mitm.session_count();
        let n0 = self.service.count();
        let out = client_exchange(self.entry, data);
        assert_eq!(out.end, End::Eof, "clean exchange: {out:?}");
        assert!(out.read == data, "clean exchange echo differs");
        let s = self.mitm.finished_session(i);
        assert!(s.finished);
        let c = self.service.ended(n0, PROMPT).expect("service conn ended");
        assert!(c.received == data);
        self.sent.push(data.to_vec());
        s
    }

    /// Runs one attacked connection and checks everything; a failed expectation is recorded
    /// (and fails the test at the end) so that all variants are tried and counted.
    fn attack(&mut self, label: &str, attack: Attack, data: &[u8]) {
        // A record after both close records comes after the client's stream has ended: the
        // receiver of a close record passes the end on at once (PROTOCOL.md §4.3), so the client
        // has seen its whole, correct echo end cleanly; the session itself is reset (checked
        // below: the adversary's connection ends) and carries no other stream.
        let after_close = matches!(
            attack,
            Attack::Duplicate {
                unit: Unit::Close,
                ..
            }
        );
        let handshake = match &attack {
            Attack::Flip { unit, .. } | Attack::Reflect { unit, .. } => unit.is_handshake(),
            Attack::Splice { after, .. } => *after < HANDSHAKE_MESSAGES,
            Attack::ReplayDown { .. } => true,
            _ => false,
        };
        // The connector's first record is its StreamInfo; the listener reads it before it
        // contacts the target, so an attack on it never reaches the target either (except a
        // duplicate: the first copy is genuine, the second ends the connection in the pump).
        let before_target = handshake
            || match &attack {
                Attack::Flip {
                    dir: Dir::Up,
                    unit: Unit::Rec(0),
                    ..
                }
                | Attack::Drop {
                    dir: Dir::Up,
                    unit: Unit::Rec(0),
                }
                | Attack::Swap {
                    dir: Dir::Up,
                    unit: Unit::Rec(0),
                }
                | Attack::Truncate {
                    dir: Dir::Up,
                    at: Unit::Rec(0),
                }
                | Attack::Reflect {
                    dir: Dir::Up,
                    unit: Unit::Rec(0),
                } => true,
                Attack::Splice {
                    dir: Dir::Up,
                    after,
                    ..
                } => *after <= HANDSHAKE_MESSAGES,
                _ => false,
            };
        let label = format!("{} {label}: {attack:?}", self.name)
            .chars()
            .take(200)
            .collect::<String>();
        let n0 = self.service.count();
        let s0 = self.mitm.session_count();
        let fired0 = self.mitm.fired.load(std::sync::atomic::Ordering::SeqCst);
        self.sent.push(data.to_vec());
        self.mitm.arm(attack);
        let out = client_exchange(self.entry, data);
        self.tried += 1;
        assert!(
            !self.mitm.is_armed(),
            "{label}: the connection did not pass the adversary"
        );
        // The adversary's connection has ended on both sides.
        let session = self.mitm.finished_session(s0);
        let fired = self.mitm.fired.load(std::sync::atomic::Ordering::SeqCst) > fired0;
        assert!(
            fired,
            "{label}: the manipulation never fired (test setup: frames seen up {} down {})",
            session.up.len(),
            session.down.len()
        );
        let mut problems = Vec::new();
        if out.end == End::Reset || (after_close && out.end == End::Eof && out.read == data) {
            self.detected += 1;
        } else {
            problems.push(format!(
                "client saw {:?} at {} (expected a reset) after {} of {} bytes echoed",
                out.end,
                out.at,
                out.read.len(),
                data.len()
            ));
        }
        if out.elapsed > PROMPT {
            problems.push(format!("client ended only after {:?}", out.elapsed));
        }
        if !data.starts_with(&out.read) {
            problems.push("client read bytes that are not a prefix of the echo".into());
        }
        if !session.finished {
            problems.push("the adversary's connection did not end".into());
        }
        // Give the service's accept thread a moment, then check every new service connection.
        std::thread::sleep(Duration::from_millis(50));
        let n1 = self.service.count();
        if before_target && n1 != n0 {
            problems.push(format!(
                "handshake or StreamInfo attack, yet the target was contacted ({} new connections)",
                n1 - n0
            ));
        }
        for i in n0..n1 {
            match self.service.ended(i, PROMPT) {
                None => problems.push(format!("service connection {i} did not end")),
                Some(c) => {
                    if !data.starts_with(&c.received) {
                        problems.push(format!(
                            "service received {} bytes that are not a prefix of what the client sent",
                            c.received.len()
                        ));
                    }
                    if c.end == Some(End::Eof) && c.received != data {
                        problems.push(format!(
                            "service saw a clean EOF after {} of {} bytes",
                            c.received.len(),
                            data.len()
                        ));
                    }
                }
            }
        }
        // Other connections through the same processes are unaffected.
        self.clean.as_mut().unwrap().round();
        if !problems.is_empty() {
            let msg = format!("{label}: {}", problems.join("; "));
            eprintln!("FAILED {msg}");
            self.failures.push(msg);
        }
    }

    /// Finishes the clean connection, checks every service connection again, prints the tally
    /// and fails the test if any attack went wrong.
    fn finish(mut self) {
        let clean = self.clean.take().unwrap();
        let sent = clean.finish();
        let c = self
            .service
            .ended(0, PROMPT)
            .expect("clean service connection ended");
        assert_eq!(c.end, Some(End::Eof));
        assert!(c.received == sent, "clean connection: service bytes differ");
        // A fresh connection after all the attacks works too.
        let fresh = pseudo_random(999, 50_000);
        let out = client_exchange(self.entry, &fresh);
        assert_eq!(
            out.end,
            End::Eof,
            "fresh connection after the attacks: {out:?}"
        );
        assert!(out.read == fresh);
        self.sent.push(fresh);
        for i in 1..self.service.count() {
            let c = self.service.conns.lock().unwrap()[i]
                .lock()
                .unwrap()
                .clone();
            assert!(
                self.sent.iter().any(|d| d.starts_with(&c.received)),
                "service connection {i} received bytes no client sent"
            );
        }
        eprintln!(
            "MITM {}: tried {}, detected {} (client reset), clean connection intact",
            self.name, self.tried, self.detected
        );
        if !self.failures.is_empty() {
            panic!(
                "{} of {} attacks not handled:\n{}\nconnector log tail:\n{}\nlistener log tail:\n{}",
                self.failures.len(),
                self.tried,
                self.failures.join("\n"),
                tail(&self.connector),
                tail(&self.listener)
            );
        }
        assert_eq!(self.tried, self.detected);
    }
}

fn data(seed: u64) -> Vec<u8> {
    pseudo_random(seed, ATTACK_BYTES)
}

#[test]
fn flipped_bits_in_handshake_and_records_end_the_connection() {
    use Dir::*;
    use Unit::*;
    let mut lab = Lab::start("flip");
    let flips: &[(Dir, Unit, isize, u8, &str)] = &[
        (Up, Hs(0), 0, 0, "ConnectorHello type"),
        (Up, Hs(0), 2, 3, "ConnectorHello length"),
        (Up, Hs(0), 3, 1, "ConnectorHello version"),
        (Up, Hs(0), 4, 0, "ConnectorHello options (psk bit)"),
        (Up, Hs(0), 10, 7, "ConnectorHello random"),
        (Up, Hs(0), 40, 2, "ConnectorHello ephemeral"),
        (Up, Hs(0), -1, 0, "ConnectorHello mac1"),
        (Down, Hs(0), 0, 1, "ListenerHello type"),
        (Down, Hs(0), 3, 0, "ListenerHello version"),
        (Down, Hs(0), 4, 0, "ListenerHello options"),
        (Down, Hs(0), 20, 5, "ListenerHello random"),
        (Down, Hs(0), -1, 6, "ListenerHello ephemeral"),
        (Down, Hs(1), 1, 0, "ListenerAuth length (longer)"),
        (Down, Hs(1), 10, 0, "ListenerAuth ciphertext"),
        (Down, Hs(1), -1, 7, "ListenerAuth tag"),
        (Up, Hs(1), 0, 2, "ConnectorAuth type"),
        (Up, Hs(1), 2, 0, "ConnectorAuth length"),
        (Up, Hs(1), 300, 4, "ConnectorAuth ciphertext"),
        (Up, Hs(1), -1, 0, "ConnectorAuth tag"),
        (Up, Rec(0), 0, 2, "StreamInfo record type (4->0)"),
        (Up, Rec(0), 0, 1, "StreamInfo record type (4->6)"),
        (Up, Rec(0), 3, 0, "StreamInfo record length"),
        (
            Up,
            Rec(0),
            4,
            0,
            "StreamInfo first ciphertext byte (version)",
        ),
        (Up, Rec(0), 6, 2, "StreamInfo client address family"),
        (Up, Rec(0), -1, 7, "StreamInfo tag"),
        (Up, Rec(1), 0, 1, "data record type (data->rekey)"),
        (Up, Rec(1), 0, 0, "data record type (data->0)"),
        (Up, Rec(1), 1, 7, "record length high bit"),
        (Up, Rec(1), 3, 0, "record length low bit"),
        (Up, Rec(1), 4, 0, "record first ciphertext byte"),
        (Up, Rec(2), 500, 3, "record ciphertext middle"),
        (Up, Rec(3), -1, 7, "record tag"),
        (Up, Rec(4), 4, 0, "rekey record"),
        (Up, Rec(4), 0, 1, "rekey record type (rekey->data)"),
        (Up, Rec(6), 600, 6, "record after a rekey"),
        (Up, Close, 0, 0, "close record type (close->rekey)"),
        (Up, Close, -1, 0, "close record tag"),
        (Down, Rec(0), 0, 1, "echo record type"),
        (Down, Rec(0), 3, 4, "echo record length"),
        (Down, Rec(0), 100, 0, "echo record ciphertext"),
        (Down, Rec(3), -2, 1, "echo rekey record tag"),
        (Down, Rec(4), 7, 7, "echo record after rekey"),
        (Down, Close, -1, 3, "echo close record tag"),
    ];
    for (i, &(dir, unit, offset, bit, label)) in flips.iter().enumerate() {
        let attack = Attack::Flip {
            dir,
            unit,
            offset,
            bit,
        };
        lab.attack(label, attack, &data(i as u64));
    }
    lab.finish();
}

#[test]
fn dropped_duplicated_and_reordered_records_end_the_connection() {
    use Dir::*;
    use Unit::*;
    let mut lab = Lab::start("drop/dup/swap");
    let mut seed = 100;
    let mut next = || {
        seed += 1;
        data(seed)
    };
    for (dir, unit) in [
        (Up, Rec(0)),
        (Up, Rec(1)),
        (Up, Rec(4)),
        (Up, Rec(6)),
        (Up, Close),
        (Down, Rec(0)),
        (Down, Rec(3)),
        (Down, Close),
    ] {
        lab.attack("drop", Attack::Drop { dir, unit }, &next());
    }
    for (dir, unit) in [
        (Up, Rec(0)),
        (Up, Rec(1)),
        (Up, Rec(4)),
        (Down, Rec(1)),
        (Down, Rec(3)),
    ] {
        lab.attack("duplicate", Attack::Duplicate { dir, unit }, &next());
    }
    for (dir, unit) in [
        (Up, Rec(0)),
        (Up, Rec(1)),
        (Up, Rec(3)),
        (Up, Rec(4)),
        (Down, Rec(1)),
    ] {
        lab.attack("swap", Attack::Swap { dir, unit }, &next());
    }
    lab.finish();
}

#[test]
fn truncation_with_a_bare_fin_resets_the_client() {
    use Dir::*;
    use Unit::*;
    let mut lab = Lab::start("truncate");
    for (i, (dir, at)) in [
        (Up, Rec(0)),
        (Up, Rec(1)),
        (Up, Rec(5)),
        (Up, Close),
        (Down, Rec(0)),
        (Down, Rec(3)),
        (Down, Close),
        (Up, Hs(1)),
        (Down, Hs(1)),
    ]
    .into_iter()
    .enumerate()
    {
        lab.attack(
            "truncate",
            Attack::Truncate { dir, at },
            &data(200 + i as u64),
        );
    }
    lab.finish();
}

#[test]
fn replayed_sessions_are_refused_by_both_sides() {
    let mut lab = Lab::start("replay");
    let recorded_data = data(300);
    let rec = lab.record_session(&recorded_data);
    let listener = lab.listener.addr();
    let n0 = lab.service.count();
    // To the listener: the whole connector side of the session, then only its handshake.
    let up = rec.bytes(Dir::Up);
    let hs: Vec<u8> = rec.up[..2].iter().flat_map(|f| f.bytes.clone()).collect();
    for (label, bytes) in [("whole session", &up), ("handshake only", &hs)] {
        lab.tried += 1;
        let Some((got, end)) = replay(listener, bytes, PROMPT) else {
            lab.failures.push(format!(
                "replay {label}: the listener kept the connection open"
            ));
            continue;
        };
        let frames = frames_of(&got);
        // The listener does not answer a replayed hello (its ephemeral key was seen before:
        // SECURITY.md, "Flooding the listener"); were it answered, only with a fresh flight.
        let fresh = frames.first() != Some(&rec.down[0].bytes);
        if (frames.is_empty() || (frames.len() <= 2 && fresh)) && lab.service.count() == n0 {
            lab.detected += 1;
        } else {
            lab.failures.push(format!(
                "replay {label} to the listener: {} frames back, fresh hello {fresh}, end {end:?}, target contacted {}",
                frames.len(),
                lab.service.count() - n0
            ));
        }
        lab.clean.as_mut().unwrap().round();
    }
    // To the connector: the listener side of the session, in answer to a fresh hello.
    lab.attack(
        "replay to connector",
        Attack::ReplayDown {
            bytes: rec.bytes(Dir::Down),
        },
        &recorded_data,
    );
    lab.finish();
}

#[test]
fn spliced_sessions_are_refused() {
    let mut lab = Lab::start("splice");
    // Session B, recorded; session A sends the same plaintext, so only the keys differ.
    let same = data(400);
    let b = lab.record_session(&same);
    let from = |frames: &[Frame], k: usize| -> Vec<Vec<u8>> {
        frames[k..].iter().map(|f| f.bytes.clone()).collect()
    };
    // Up, frame 2 is the StreamInfo record and 3 the first data record.
    for (dir, after) in [
        (Dir::Up, 1),
        (Dir::Up, 2),
        (Dir::Up, 3),
        (Dir::Up, 5),
        (Dir::Down, 1),
        (Dir::Down, 2),
        (Dir::Down, 5),
    ] {
        let with = from(b.frames(dir), after);
        lab.attack("splice", Attack::Splice { dir, after, with }, &same);
    }
    lab.finish();
}

#[test]
fn reflected_frames_are_refused() {
    use Dir::*;
    use Unit::*;
    let mut lab = Lab::start("reflect");
    for (i, (dir, unit)) in [
        (Up, Hs(0)),
        (Up, Hs(1)),
        (Down, Hs(0)),
        (Down, Hs(1)),
        (Up, Rec(0)),
        (Up, Rec(1)),
        (Up, Rec(4)),
        (Down, Rec(0)),
        (Down, Rec(2)),
    ]
    .into_iter()
    .enumerate()
    {
        lab.attack(
            "reflect",
            Attack::Reflect { dir, unit },
            &data(500 + i as u64),
        );
    }
    lab.finish();
}

/// PROTOCOL.md §4: "after it, that direction carries nothing (a record after Close is an
/// error)". A duplicated close record must end the connection with a reset, not a clean end.
#[test]
fn records_after_close_end_the_connection() {
    let mut lab = Lab::start("after-close");
    for (i, dir) in [Dir::Up, Dir::Down].into_iter().enumerate() {
        lab.attack(
            "duplicate close",
            Attack::Duplicate {
                dir,
                unit: Unit::Close,
            },
            &data(600 + i as u64),
        );
    }
    lab.finish();
}
