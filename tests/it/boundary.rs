//! A man in the middle at the stream boundary of reused sessions (PROTOCOL.md §4.3), between a
//! real connector (warm and reused sessions on) and a real listener.
//!
//! Each test opens one clean connection through the adversary that stays open throughout, then
//! arms one attack at a time *live* ([`Mitm::arm_live`]): which pooled session will carry a
//! given stream is not known in advance, so the attack goes to the first session that meets its
//! frame (for most, a frame of a session's second stream). Clients then come one after the other
//! until one meets it. Every client before it must be served whole; the one that meets it must
//! be reset (or, when the attack poisons a session between streams, be served whole by another
//! session); every target connection received only a prefix of what its client sent, a clean
//! end only after all of it; the side that detects it logs why; the attacked session ends and
//! carries no further stream; and the clean connection keeps flowing.

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::daemon::*;
use support::mitm::*;
use support::pseudo_random;

/// Small records, so that each client makes several records each way; warm and reused sessions
/// at their defaults. Resumption off: the adversary's parser follows the full handshake.
const TUNING: &str = "record_size = \"1KiB\"\nhandshake_timeout = \"3s\"\nresumption = false";

/// What each client sends (and reads back).
const BYTES: usize = 8 * 1024;

/// Clients tried per attack before it is declared never met.
const MAX_CLIENTS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// The client that meets the attack is reset.
    Reset,
    /// The client that meets the attack is served whole (its stream had ended); the attacked
    /// session carries no further client.
    Served,
}

#[derive(Clone, Copy, Debug)]
enum Side {
    Listener,
    Connector,
}

struct Lab {
    _site: Site,
    service: RecordingEcho,
    listener: Daemon,
    connector: Daemon,
    mitm: Mitm,
    entry: SocketAddr,
    clean: Option<Clean>,
    sent: Vec<Vec<u8>>,
    seed: u64,
    /// Client streams that ended (the clean connection not counted).
    ended: usize,
    name: &'static str,
    tried: usize,
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
            seed: 0,
            ended: 0,
            name,
            tried: 0,
            failures: Vec::new(),
        }
    }

    /// Streams the connector has ended (cleanly or not).
    fn connector_streams_ended(&self) -> usize {
        let log = self.connector.log_text();
        log.matches("connection closed").count() + log.matches("connection reset").count()
    }

    /// One client: sends fresh data, reads to the end; then waits until the connector has
    /// ended its stream too (so that its session is back in the pool for the next client).
    fn client(&mut self) -> (Vec<u8>, Outcome) {
        self.seed += 1;
        let data = pseudo_random(self.seed + 7000 * self.tried as u64, BYTES);
        self.sent.push(data.clone());
        let out = client_exchange(self.entry, &data);
        self.ended += 1;
        let want = self.ended;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.connector_streams_ended() < want {
            assert!(
                std::time::Instant::now() < deadline,
                "{}: timed out waiting for the connector to end the client's stream ({out:?})\nconnector: {}\nlistener: {}",
                self.name,
                self.connector.log_text(),
                self.listener.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        (data, out)
    }

    /// A clean client, served whole.
    fn served(&mut self) {
        let (data, out) = self.client();
        assert_eq!(out.end, End::Eof, "{}: clean client: {out:?}", self.name);
        assert!(
            out.read == data,
            "{}: clean client: echo differs",
            self.name
        );
    }

    /// Clients until one has carried a second stream on a session (so that a recorded session
    /// with two streams exists); returns that session's frames of its second stream, up.
    fn second_stream_frames(&mut self) -> Vec<Vec<u8>> {
        for _ in 0..MAX_CLIENTS {
            self.served();
            let n = self.mitm.session_count();
            for i in 0..n {
                let s = self.mitm.sessions.lock().unwrap()[i]
                    .lock()
                    .unwrap()
                    .clone();
                let recs: Vec<&Frame> = s.up.iter().filter(|f| f.is_record()).collect();
                let infos: Vec<usize> =
                    (0..recs.len()).filter(|&k| recs[k].bytes[0] == 4).collect();
                if infos.len() >= 2 {
                    let from = infos[1];
                    let to = (from..recs.len()).find(|&k| recs[k].bytes[0] == 2);
                    if let Some(to) = to {
                        return recs[from..=to].iter().map(|f| f.bytes.clone()).collect();
                    }
                }
            }
        }
        panic!("{}: no session carried a second stream", self.name);
    }

    /// Arms `attack` live and sends clients until one meets it; checks everything (a failed
    /// expectation is recorded, and fails the test at the end, so that every attack is tried).
    fn attack(&mut self, label: &str, attack: Attack, expect: Expect, log: Option<(Side, &str)>) {
        let label = format!("{} {label}: {attack:?}", self.name)
            .chars()
            .take(200)
            .collect::<String>();
        self.tried += 1;
        let mut problems = Vec::new();
        let n0 = self.service.count();
        let fired0 = self.mitm.fired.load(Ordering::SeqCst);
        let daemon = |lab: &Lab, side: Side| match side {
            Side::Listener => lab.listener.log_text(),
            Side::Connector => lab.connector.log_text(),
        };
        let logged0 = log.map(|(side, needle)| daemon(self, side).matches(needle).count());
        self.mitm.arm_live(attack);
        let mut met = None;
        for _ in 0..MAX_CLIENTS {
            let (data, out) = self.client();
            if self.mitm.fired.load(Ordering::SeqCst) > fired0 {
                met = Some((data, out));
                break;
            }
            if !(out.end == End::Eof && out.read == data) {
                problems.push(format!(
                    "a client before the attack fired was not served whole: {:?} after {} bytes",
                    out.end,
                    out.read.len()
                ));
            }
        }
        self.mitm.disarm_live();
        let Some((data, out)) = met else {
            self.failures.push(format!(
                "{label}: never met in {MAX_CLIENTS} clients (test setup)"
            ));
            return;
        };
        match expect {
            Expect::Reset if out.end != End::Reset => problems.push(format!(
                "client saw {:?} at {} after {} of {} bytes (expected a reset)",
                out.end,
                out.at,
                out.read.len(),
                data.len()
            )),
            Expect::Served if !(out.end == End::Eof && out.read == data) => problems.push(format!(
                "client saw {:?} after {} of {} bytes (expected to be served whole)",
                out.end,
                out.read.len(),
                data.len()
            )),
            _ => {}
        }
        if !data.starts_with(&out.read) {
            problems.push("client read bytes that are not a prefix of what it sent".into());
        }
        // The attacked session ends, and carries no stream after the attack.
        let taken = *self.mitm.live_taken_by.lock().unwrap();
        match taken {
            None => problems.push("no session took the attack".into()),
            Some(i) => {
                let infos = |s: &Session| {
                    s.up.iter()
                        .filter(|f| f.is_record() && f.bytes[0] == 4)
                        .count()
                };
                let streams_then = infos(&self.mitm.sessions.lock().unwrap()[i].lock().unwrap());
                if expect == Expect::Served {
                    // Poisoned between streams: the next client must not ride it.
                    self.served();
                }
                let s = self.mitm.finished_session(i);
                if !s.finished {
                    problems.push(format!("the attacked session {i} did not end"));
                }
                if infos(&s) != streams_then {
                    problems.push(format!(
                        "the attacked session carried {} streams after the attack",
                        infos(&s) - streams_then
                    ));
                }
            }
        }
        // Every target connection since the attack got a prefix of a client's bytes, and a
        // clean end only after all of them.
        for i in n0..self.service.count() {
            match self.service.ended(i, Duration::from_secs(10)) {
                None => problems.push(format!("service connection {i} did not end")),
                Some(c) => {
                    if !self.sent.iter().any(|d| d.starts_with(&c.received)) {
                        problems.push(format!(
                            "service connection {i} received {} bytes no client sent",
                            c.received.len()
                        ));
                    }
                    if c.end == Some(End::Eof) && !self.sent.contains(&c.received) {
                        problems.push(format!(
                            "service connection {i} saw a clean EOF after {} bytes, not all",
                            c.received.len()
                        ));
                    }
                }
            }
        }
        if let (Some((side, needle)), Some(n)) = (log, logged0) {
            let ok = {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                loop {
                    if daemon(self, side).matches(needle).count() > n {
                        break true;
                    }
                    if std::time::Instant::now() > deadline {
                        break false;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            };
            if !ok {
                problems.push(format!("the {side:?} did not log {needle:?}"));
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

    fn finish(mut self) {
        let clean = self.clean.take().unwrap();
        let sent = clean.finish();
        let c = self
            .service
            .ended(0, Duration::from_secs(10))
            .expect("clean service connection ended");
        assert_eq!(c.end, Some(End::Eof));
        assert!(c.received == sent, "clean connection: service bytes differ");
        // After all the attacks, clients are still served.
        self.served();
        self.served();
        eprintln!("BOUNDARY {}: tried {}", self.name, self.tried);
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
    }
}

/// The first record of a session's second stream, up: its StreamInfo record.
const INFO2: Unit = Unit::InStream { stream: 2, rec: 0 };
/// The first data record of a session's second stream, up.
const DATA2: Unit = Unit::InStream { stream: 2, rec: 1 };
/// The listener's first record of a session's second stream.
const DOWN2: Unit = Unit::InStream { stream: 2, rec: 0 };

const AUTH: &str = "record failed authentication";
const NO_INFO: &str = "no valid StreamInfo record from the connector";

#[test]
fn dropped_and_reordered_records_at_the_boundary_reset_the_client() {
    use Dir::*;
    let mut lab = Lab::start("drop/swap");
    let l = |n| Some((Side::Listener, n));
    lab.attack(
        "drop the StreamInfo of stream 2",
        Attack::Drop {
            dir: Up,
            unit: INFO2,
        },
        Expect::Reset,
        l("unexpected Data record"),
    );
    lab.attack(
        "stream 2's first data record before its StreamInfo",
        Attack::Swap {
            dir: Up,
            unit: INFO2,
        },
        Expect::Reset,
        l("unexpected Data record"),
    );
    lab.attack(
        "drop stream 2's first data record",
        Attack::Drop {
            dir: Up,
            unit: DATA2,
        },
        Expect::Reset,
        l(AUTH),
    );
    lab.attack(
        "stream 2's StreamInfo twice",
        Attack::Duplicate {
            dir: Up,
            unit: INFO2,
        },
        Expect::Reset,
        l(AUTH),
    );
    lab.attack(
        "drop the listener's first record of stream 2",
        Attack::Drop {
            dir: Down,
            unit: DOWN2,
        },
        Expect::Reset,
        Some((Side::Connector, AUTH)),
    );
    lab.attack(
        "the listener's first two records of stream 2 swapped",
        Attack::Swap {
            dir: Down,
            unit: DOWN2,
        },
        Expect::Reset,
        Some((Side::Connector, AUTH)),
    );
    lab.attack(
        "flip the StreamInfo type of stream 2 (to Alert)",
        Attack::Flip {
            dir: Up,
            unit: INFO2,
            offset: 0,
            bit: 0,
        },
        Expect::Reset,
        l("unexpected Alert record"),
    );
    lab.attack(
        "flip the StreamInfo tag of stream 2",
        Attack::Flip {
            dir: Up,
            unit: INFO2,
            offset: -1,
            bit: 3,
        },
        Expect::Reset,
        l(NO_INFO),
    );
    lab.finish();
}

#[test]
fn stream_one_records_replayed_into_stream_two_reset_the_client() {
    use Dir::*;
    let mut lab = Lab::start("replay");
    let l = |n| Some((Side::Listener, n));
    let stream1 = |rec| Unit::InStream { stream: 1, rec };
    lab.attack(
        "stream 1's StreamInfo in place of stream 2's",
        Attack::Replay {
            dir: Up,
            at: INFO2,
            copy: stream1(0),
            when: When::Instead,
        },
        Expect::Reset,
        l(NO_INFO),
    );
    lab.attack(
        "stream 1's first data record after stream 2's StreamInfo",
        Attack::Replay {
            dir: Up,
            at: DATA2,
            copy: stream1(1),
            when: When::Before,
        },
        Expect::Reset,
        l(AUTH),
    );
    lab.attack(
        "stream 1's close record as the start of stream 2",
        Attack::Replay {
            dir: Up,
            at: INFO2,
            copy: Unit::CloseOf(1),
            when: When::Instead,
        },
        Expect::Reset,
        l("unexpected Close record"),
    );
    lab.attack(
        "the listener's first record of stream 1 again in stream 2",
        Attack::Replay {
            dir: Down,
            at: DOWN2,
            copy: stream1(0),
            when: When::Before,
        },
        Expect::Reset,
        Some((Side::Connector, AUTH)),
    );
    // Between streams the listener sends nothing: a record there (here its first record of
    // the session again, right after one of its close records) poisons the pooled session,
    // which is discarded. The client whose stream just ended was served; the next one rides
    // another session.
    lab.attack(
        "a listener record between streams",
        Attack::Replay {
            dir: Down,
            at: Unit::Close,
            copy: stream1(0),
            when: When::After,
        },
        Expect::Served,
        None,
    );
    lab.finish();
}

#[test]
fn another_sessions_second_stream_spliced_in_resets_the_client() {
    // Session B: a session (of another pair of daemons, with the same keys) that carried two
    // streams; its second stream's records, up.
    let mut other = Lab::start("splice source");
    let b2 = other.second_stream_frames();
    other.finish();
    let mut lab = Lab::start("splice");
    assert_eq!(b2[0][0], 4, "B's second stream starts with its StreamInfo");
    lab.attack(
        "B's stream 2 (StreamInfo onwards) for A's",
        Attack::SpliceAt {
            dir: Dir::Up,
            at: INFO2,
            with: b2.clone(),
        },
        Expect::Reset,
        Some((Side::Listener, NO_INFO)),
    );
    lab.attack(
        "B's stream 2 data after A's StreamInfo",
        Attack::SpliceAt {
            dir: Dir::Up,
            at: DATA2,
            with: b2[1..].to_vec(),
        },
        Expect::Reset,
        Some((Side::Listener, AUTH)),
    );
    lab.finish();
}
