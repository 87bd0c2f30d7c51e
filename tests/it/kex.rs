//! Fresh hybrid keys inside a session (PROTOCOL.md §4.5), end to end with real daemons: the
//! exchanges on the wire at `rekey_interval`, the bytes intact across them, and the listener's
//! hard limit on a connector that does not refresh its keys.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::support::daemon::*;
use crate::support::mitm::*;

/// Record types of the exchange.
const KEY_SHARE: u8 = 8;
const KEY_SHARE_REPLY: u8 = 9;
const KEY_SHARE_DONE: u8 = 10;

/// Records of `kind` in direction `dir` of every connection the proxy carried so far.
fn count(mitm: &Mitm, dir: Dir, kind: u8) -> usize {
    let sessions = mitm.sessions.lock().unwrap().clone();
    sessions
        .iter()
        .map(|s| {
            let s = s.lock().unwrap();
            s.frames(dir)
                .iter()
                .filter(|f| f.is_record() && f.bytes.first() == Some(&kind))
                .count()
        })
        .sum()
}

/// Sends one byte every `every` for `total` through `entry`, reading each echo back; returns
/// the hashes of what was sent and what came back, and how the stream ended (`None`: cleanly,
/// everything echoed; `Some(elapsed)`: it failed then).
fn trickle(
    entry: std::net::SocketAddr,
    every: Duration,
    total: Duration,
) -> ([u8; 32], [u8; 32], Option<Duration>) {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(entry).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut sent, mut got) = (Sha256::new(), Sha256::new());
    let mut i = 0u8;
    while t0.elapsed() < total {
        let b = [i];
        i = i.wrapping_add(1);
        let mut back = [0u8; 1];
        let ok = s.write_all(&b).is_ok() && matches!(s.read(&mut back), Ok(1));
        if !ok {
            return (
                sent.finalize().into(),
                got.finalize().into(),
                Some(t0.elapsed()),
            );
        }
        sent.update(b);
        got.update(back);
        std::thread::sleep(every);
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let clean = s.read_to_end(&mut rest).is_ok() && rest.is_empty();
    let end = (!clean).then(|| t0.elapsed());
    (sent.finalize().into(), got.finalize().into(), end)
}

/// With `rekey_interval = "3s"` on both ends, a stream that carries a byte every 500 ms for 10 s
/// gets a fresh hybrid exchange about every 3 s (KeyShare up, Reply down, Done up, seen on the
/// wire by a relay that parses the records), and every byte arrives intact.
#[test]
fn a_lightly_used_stream_gets_fresh_hybrid_keys_every_interval() {
    let site = Site::new();
    let service = RecordingEcho::start();
    let tuning = "rekey_interval = \"3s\"\npool_max = 0";
    let listener = site.start("listener.toml", &listener_for(service.addr, tuning));
    let mitm = Mitm::start(listener.addr());
    let connector = start_connector(&site, mitm.addr, tuning);
    let (sent, got, failed) = trickle(
        connector.addr(),
        Duration::from_millis(500),
        Duration::from_secs(10),
    );
    assert_eq!(
        failed,
        None,
        "the stream ended cleanly: {}",
        tail(&connector)
    );
    assert_eq!(sent, got, "every byte came back intact");
    let conn = service
        .ended(0, Duration::from_secs(5))
        .expect("service connection ended");
    assert_eq!(conn.received.len(), 20, "the service got every byte");
    let session = mitm.finished_session(0);
    let kinds = |dir: Dir, kind: u8| {
        session
            .frames(dir)
            .iter()
            .filter(|f| f.is_record() && f.bytes.first() == Some(&kind))
            .count()
    };
    let shares = kinds(Dir::Up, KEY_SHARE);
    // At about 3, 6 and 9 s into the session (the handshake's clock): 3, give or take one.
    assert!(
        (2..=4).contains(&shares),
        "{shares} exchanges in 10 s at a 3 s interval"
    );
    assert_eq!(kinds(Dir::Down, KEY_SHARE_REPLY), shares, "one Reply each");
    assert_eq!(kinds(Dir::Up, KEY_SHARE_DONE), shares, "one Done each");
    assert_eq!(
        kinds(Dir::Down, KEY_SHARE),
        0,
        "the listener never initiates"
    );
    // Each message has its size on the wire: header, plaintext, tag.
    for f in session
        .frames(Dir::Up)
        .iter()
        .filter(|f| f.bytes[0] == KEY_SHARE)
    {
        assert_eq!(f.bytes.len(), 4 + 1216 + 16);
    }
    for f in session
        .frames(Dir::Down)
        .iter()
        .filter(|f| f.bytes[0] == KEY_SHARE_REPLY)
    {
        assert_eq!(f.bytes.len(), 4 + 1120 + 16);
    }
    assert_eq!(count(&mitm, Dir::Up, KEY_SHARE), shares);
    let log = connector.wait_log("connection closed");
    assert!(log.contains(&format!("key_exchanges={shares}")), "{log}");
}

/// A connector that never refreshes its keys (`rekey_interval = "off"`) meets a listener with
/// `rekey_interval = "2s"`: the listener refuses its keys once they are 3 s old and the stream
/// is cut, never carried on under stale keys.
#[test]
fn a_connector_without_fresh_keys_is_cut_off_at_the_listeners_hard_limit() {
    let site = Site::new();
    let service = RecordingEcho::start();
    let listener = site.start(
        "listener.toml",
        &listener_for(service.addr, "rekey_interval = \"2s\""),
    );
    let connector = start_connector(
        &site,
        listener.addr(),
        "rekey_interval = \"off\"\npool_max = 0",
    );
    let (_, _, failed) = trickle(
        connector.addr(),
        Duration::from_millis(250),
        Duration::from_secs(8),
    );
    let at = failed.expect("the stream is cut");
    assert!(
        at >= Duration::from_millis(2500) && at < Duration::from_secs(7),
        "cut after {at:?} (limit 3 s after the handshake)"
    );
    listener.wait_log("older than 1.5 x rekey_interval");
}

/// A stream one direction of which has ended keeps getting fresh keys (on a reused session,
/// whose close records are not followed by a FIN): the client sends its request and
/// half-closes, the service then sends a byte every 250 ms for 8 s; with `rekey_interval =
/// "2s"` on both ends (limit 3 s) the download outlives several limits, the exchanges go on
/// after the connector's close record, and every byte arrives.
#[test]
fn a_half_closed_stream_keeps_getting_fresh_keys() {
    let site = Site::new();
    let service = serve("127.0.0.1:0", |mut s: TcpStream| {
        let mut req = Vec::new();
        s.read_to_end(&mut req).unwrap();
        for i in 0..32u8 {
            if s.write_all(&[i]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    let tuning = "rekey_interval = \"2s\"\npool_min = 1";
    let listener = site.start("listener.toml", &listener_for(service.addr, tuning));
    let mitm = Mitm::start(listener.addr());
    let connector = start_connector(&site, mitm.addr, tuning);
    let mut s = TcpStream::connect(connector.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"request").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .unwrap_or_else(|e| panic!("{e}: {}", tail(&listener)));
    assert_eq!(got, (0..32u8).collect::<Vec<_>>(), "{}", tail(&listener));
    connector.wait_log("closed by both ends");
    // The connection that carried the stream: KeyShare records after the connector's close.
    let sessions = mitm.sessions.lock().unwrap().clone();
    let after: usize = sessions
        .iter()
        .map(|s| {
            let s = s.lock().unwrap();
            let up = s.frames(Dir::Up);
            match up.iter().position(|f| f.is_record() && f.bytes[0] == 2) {
                Some(close) => up[close..]
                    .iter()
                    .filter(|f| f.bytes[0] == KEY_SHARE)
                    .count(),
                None => 0,
            }
        })
        .sum();
    assert!(after >= 2, "{after} exchanges after the connector's close");
}
