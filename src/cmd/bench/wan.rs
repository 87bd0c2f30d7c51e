//! A user-space WAN: a TCP relay that delays what it carries as a link of a given round-trip
//! time would (these machines have no `netem`), for `sealpipe bench --rtt` and `sealpipe bench
//! --relay` (what `bench/compare.sh --rtt` puts between each tunnel's two ends).
//!
//! The model of one connection through a link of round-trip time RTT, with the relay's accept
//! at time A (on loopback the client's `connect()` returns at once; over the link it would
//! return at A + RTT, and the first bytes would reach the far side at A + 1.5 RTT):
//!
//! * the relay connects to the far side at A + 1.5 RTT (when the handshake's last ACK would
//!   arrive there), so a service that speaks first is heard at A + 2 RTT, as over the link;
//! * bytes from the client read at time t are delivered to the far side at
//!   max(t, A + RTT) + RTT/2: the first request arrives at A + 1.5 RTT, its answer back at
//!   the client at A + 2 RTT at the earliest;
//! * bytes from the far side read at time t are delivered to the client at t + RTT/2;
//! * each direction keeps its order; a half-close (EOF) is passed on after the same delay, and
//!   so is a reset (the relay resets the other side: `SO_LINGER` 0 and close); a far side that
//!   refuses the connection resets the client at A + 1.5 RTT.
//!
//! Not modelled: loss, reordering, a bandwidth cap or jitter. Each direction holds at most
//! [`QUEUE_CHUNKS`] reads in flight (reads of up to [`CHUNK`] bytes) and stops reading when
//! they are all in flight, which bounds the relay's memory per connection and, like a window,
//! the bytes per RTT. The relay runs on the same machine as everything else, so its own CPU
//! is shared with the loads and the tunnel ends.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

/// Largest read the relay does at once.
const CHUNK: usize = 64 * 1024;
/// Reads each direction holds in flight before it stops reading.
const QUEUE_CHUNKS: usize = 256;

/// What one direction carries, each with the time it is due at the other side.
enum Event {
    Data(Vec<u8>),
    Eof,
    Reset,
}

/// A relay from `listener` to `to` with round-trip time `rtt`, until `stop` is cancelled (the
/// connections it carries end with it).
pub(crate) async fn relay(
    listener: TcpListener,
    to: SocketAddr,
    rtt: Duration,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.cancelled() => return,
        };
        let Ok((client, _)) = accepted else {
            // Out of file descriptors or a connection gone before accept: go on.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let accepted_at = Instant::now();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = connection(client, accepted_at, to, rtt) => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

/// Binds a loopback port, relays it to `to` with round-trip time `rtt` until `stop`; returns
/// the port's address.
pub(crate) async fn spawn_relay(
    to: SocketAddr,
    rtt: Duration,
    stop: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port for the WAN relay")?;
    let addr = l.local_addr()?;
    tokio::spawn(relay(l, to, rtt, stop.clone()));
    Ok(addr)
}

/// Resets `s`: `SO_LINGER` 0, so that closing it sends RST.
fn reset(s: &TcpStream) {
    let _ = s.set_zero_linger();
}

async fn connection(client: TcpStream, accepted_at: Instant, to: SocketAddr, rtt: Duration) {
    let _ = client.set_nodelay(true);
    let half = rtt / 2;
    let (c_tx, c_rx) = mpsc::channel(QUEUE_CHUNKS);
    let (u_tx, u_rx) = mpsc::channel(QUEUE_CHUNKS);
    // The client's bytes are read (and timestamped) from now on; the far side is connected at
    // A + 1.5 RTT.
    let upstream = async {
        sleep_until(accepted_at + rtt + half).await;
        TcpStream::connect(to).await
    };
    let from_client = read_side(&client, c_tx, accepted_at + rtt, half);
    tokio::pin!(from_client);
    let mut client_done = false;
    let upstream = tokio::select! {
        u = upstream => u,
        // The client may send everything and even half-close before the far side is connected.
        () = &mut from_client => {
            client_done = true;
            upstream_after(accepted_at + rtt + half, to).await
        }
    };
    let Ok(upstream) = upstream else {
        reset(&client);
        return;
    };
    let _ = upstream.set_nodelay(true);
    let now = Instant::now();
    let result = tokio::try_join!(
        async {
            if !client_done {
                (&mut from_client).await;
            }
            Ok(())
        },
        async {
            read_side(&upstream, u_tx, now, half).await;
            Ok(())
        },
        write_side(&upstream, c_rx),
        write_side(&client, u_rx),
    );
    // A reset was passed on (the side it went to is set to reset on close); dropping both
    // sockets closes them.
    drop(result);
}

/// Connects to `to` at `at`.
async fn upstream_after(at: Instant, to: SocketAddr) -> std::io::Result<TcpStream> {
    sleep_until(at).await;
    TcpStream::connect(to).await
}

/// Reads `s` until EOF or an error, queueing each read for delivery at max(read time, `floor`)
/// + `delay`; EOF and errors (as a reset) are queued too.
async fn read_side(
    s: &TcpStream,
    tx: mpsc::Sender<(Instant, Event)>,
    floor: Instant,
    delay: Duration,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        if s.readable().await.is_err() {
            let _ = tx
                .send((Instant::now().max(floor) + delay, Event::Reset))
                .await;
            return;
        }
        let event = match s.try_read(&mut buf) {
            Ok(0) => Event::Eof,
            Ok(n) => Event::Data(buf[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => Event::Reset,
        };
        let last = !matches!(event, Event::Data(_));
        let due = Instant::now().max(floor) + delay;
        if tx.send((due, event)).await.is_err() || last {
            return;
        }
    }
}

/// Delivers what `rx` carries to `s`, each at its time. Returns an error once it has passed a
/// reset on (after setting `s` to reset when closed), so that the connection ends at once.
async fn write_side(
    s: &TcpStream,
    mut rx: mpsc::Receiver<(Instant, Event)>,
) -> std::io::Result<()> {
    let mut broken = false;
    while let Some((due, event)) = rx.recv().await {
        sleep_until(due).await;
        match event {
            Event::Data(bytes) if !broken => {
                // A write error means the far side reset: its read side sees it too and passes
                // it on; until then, what comes is dropped.
                broken = write_all(s, &bytes).await.is_err();
            }
            Event::Data(_) => {}
            Event::Eof => {
                let _ = socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write);
            }
            Event::Reset => {
                reset(s);
                return Err(std::io::ErrorKind::ConnectionReset.into());
            }
        }
    }
    Ok(())
}

async fn write_all(s: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        s.writable().await?;
        match s.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const RTT: Duration = Duration::from_millis(50);

    /// A service that answers each connection's bytes with their hash after its EOF, then
    /// sends `size` patterned bytes and closes.
    async fn hashing_service(l: TcpListener, size: usize) {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 8192];
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                s.write_all(&h.finalize()).await.unwrap();
                s.write_all(&pattern(size)).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_in_order_with_half_close_passed_on() {
        let stop = CancellationToken::new();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = l.local_addr().unwrap();
        let back = 3 * 1024 * 1024 + 17;
        tokio::spawn(hashing_service(l, back));
        let relay = spawn_relay(target, RTT, &stop).await.unwrap();

        let mut s = TcpStream::connect(relay).await.unwrap();
        let out = pattern(5 * 1024 * 1024 + 3);
        // In pieces, so that order across many reads matters.
        for piece in out.chunks(100_000) {
            s.write_all(piece).await.unwrap();
        }
        // The service answers only after our EOF: the half-close must cross.
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..32], Sha256::digest(&out).as_slice());
        assert_eq!(
            Sha256::digest(&got[32..]),
            Sha256::digest(pattern(back)),
            "{} bytes back",
            got.len() - 32
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn first_answer_comes_no_earlier_than_two_round_trips() {
        let stop = CancellationToken::new();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = l.local_addr().unwrap();
        tokio::spawn(crate::daemon::pair::echo_service(l));
        let relay = spawn_relay(target, RTT, &stop).await.unwrap();
        let t0 = std::time::Instant::now();
        let mut s = TcpStream::connect(relay).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        assert!(t0.elapsed() >= 2 * RTT, "{:?}", t0.elapsed());
        assert_eq!(&b, b"x");
        // Once connected, one exchange costs one round trip (a lower bound too).
        let t1 = std::time::Instant::now();
        s.write_all(b"y").await.unwrap();
        s.read_exact(&mut b).await.unwrap();
        assert!(t1.elapsed() >= RTT, "{:?}", t1.elapsed());
        assert_eq!(&b, b"y");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_reset_is_passed_on() {
        let stop = CancellationToken::new();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = l.local_addr().unwrap();
        let relay = spawn_relay(target, RTT, &stop).await.unwrap();
        let mut s = TcpStream::connect(relay).await.unwrap();
        let (far, _) = l.accept().await.unwrap();
        far.set_zero_linger().unwrap();
        drop(far);
        let mut b = [0u8; 1];
        let e = s.read(&mut b).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_refused_far_side_resets_the_client() {
        let stop = CancellationToken::new();
        // A port nothing listens on: bound, then closed.
        let target = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let relay = spawn_relay(target, Duration::from_millis(10), &stop)
            .await
            .unwrap();
        let mut s = TcpStream::connect(relay).await.unwrap();
        let mut b = [0u8; 1];
        let e = s.read(&mut b).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        stop.cancel();
    }
}
