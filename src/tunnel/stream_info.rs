//! The StreamInfo record over a socket: the connector sends it first, the listener reads it
//! before it contacts any target; and the original destination of a redirected connection.
//!
//! The pump never sees this record: it runs on the bytes that follow it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proto::record::{
    parse_header, Opened, Opener, RecordError, RecordType, Sealer, HEADER_LEN, KEY_SHARE_LEN,
    OVERHEAD,
};
use crate::proto::stream::{canonical, StreamInfo, StreamInfoError, MAX_STREAM_INFO_LEN};
use crate::proto::{Liveness, LivenessAction};
use crate::tunnel::kex::SessionKex;

/// Why the StreamInfo record could not be sent or read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    /// The connector did not send its first record in time.
    #[error("no StreamInfo record within {0:?} of accepting the connection")]
    Timeout(Duration),
    /// The connection ended before the first record.
    #[error("connection closed before the StreamInfo record")]
    Eof,
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The record was refused (not first, not StreamInfo, did not authenticate).
    #[error("{0}")]
    Record(#[from] RecordError),
    /// The record opened but its body is malformed.
    #[error("{0}")]
    Info(#[from] StreamInfoError),
    /// Nothing heard from the connector for `dead_peer_timeout`, a Ping unanswered
    /// (PROTOCOL.md §4.4).
    #[error("peer silent for {0:?} (dead_peer_timeout)")]
    PeerSilent(Duration),
    /// A record of the fresh hybrid exchange was refused (PROTOCOL.md §4.5).
    #[error("key exchange: {0}")]
    Kex(crate::proto::kex::KexError),
}

/// Seals `info` as the first record of the session and writes it to `sealed`, behind `unsent`
/// (the handshake's last message, so that both go in one write).
pub(crate) async fn send_stream_info<W: AsyncWrite + Unpin>(
    sealed: &mut W,
    sealer: &mut Sealer,
    info: &StreamInfo,
    unsent: Vec<u8>,
) -> Result<(), StreamError> {
    let body = info.encode();
    let at = unsent.len();
    let mut buf = unsent;
    buf.resize(at + body.len() + OVERHEAD, 0);
    buf[at + HEADER_LEN..at + HEADER_LEN + body.len()].copy_from_slice(&body);
    sealer.seal_stream_info(&mut buf[at..])?;
    sealed.write_all(&buf).await?;
    Ok(())
}

/// The record layer and the keepalive rule of a session waiting for its next stream.
pub(crate) struct Waiting<'a, W> {
    /// Where Pongs and Pings go.
    pub reply: &'a mut W,
    /// The connector's direction.
    pub opener: &'a mut Opener,
    /// Ours (keepalives only: it is closed, or before its first record).
    pub sealer: &'a mut Sealer,
    /// `dead_peer_timeout` (PROTOCOL.md §4.4); `None`: no keepalive.
    pub dead_peer_timeout: Option<Duration>,
    /// The session's fresh hybrid exchange (PROTOCOL.md §4.5): a KeyShare, or the Done of an
    /// exchange, may come between streams; `None`: refused.
    pub kex: Option<&'a SessionKex>,
}

/// Reads and opens the connector's first record of a stream, which must be StreamInfo, before
/// `deadline`, answering its Pings meanwhile and applying the liveness rule (PROTOCOL.md §4.4).
/// `leftover` holds the bytes already read after the handshake or the last stream; what follows
/// the record is returned for the pump. Each read takes up to the largest StreamInfo record, so
/// one read usually brings the whole record (and the client's first bytes behind it); nothing
/// is buffered beyond that, and a record of another type than StreamInfo, Ping or Pong is
/// refused from its header, before its body is opened.
pub(crate) async fn read_stream_info<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    sealed: &mut R,
    waiting: Waiting<'_, W>,
    leftover: Vec<u8>,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<(StreamInfo, Vec<u8>), StreamError> {
    match tokio::time::timeout_at(deadline, read(sealed, waiting, leftover)).await {
        Ok(r) => r,
        Err(_) => Err(StreamError::Timeout(timeout)),
    }
}

/// The largest StreamInfo record.
const MOST: usize = OVERHEAD + MAX_STREAM_INFO_LEN;
/// The largest record of the exchange a listener may get (a KeyShare).
const MOST_KEX: usize = OVERHEAD + KEY_SHARE_LEN;

/// Reads until `buf` holds at least `want` bytes (at most [`MOST`]), each read taking what is
/// there up to [`MOST`] bytes in all. Cancel safe: a byte read is in `buf`.
async fn fill<R: AsyncRead + Unpin>(
    sealed: &mut R,
    buf: &mut Vec<u8>,
    want: usize,
) -> Result<(), StreamError> {
    let mut chunk = [0u8; MOST];
    while buf.len() < want {
        let room = MOST.max(want).saturating_sub(buf.len()).min(MOST);
        let n = sealed.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Err(StreamError::Eof);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// Reads the next whole record into `buf` (its first bytes may be there already): a StreamInfo
/// record or a keepalive, refused from its header otherwise. Its type and length.
async fn next_record<R: AsyncRead + Unpin>(
    sealed: &mut R,
    buf: &mut Vec<u8>,
    kex: bool,
) -> Result<(RecordType, usize), StreamError> {
    fill(sealed, buf, HEADER_LEN).await?;
    let header: [u8; HEADER_LEN] = buf[..HEADER_LEN]
        .try_into()
        .map_err(|_| RecordError::Buffer(buf.len()))?;
    let (kind, total) = parse_header(&header)?;
    if kind != RecordType::StreamInfo && !kind.is_keepalive() && !(kex && kind.is_key_share()) {
        return Err(RecordError::Unexpected(kind).into());
    }
    if total > MOST && !(kex && kind.is_key_share() && total <= MOST_KEX) {
        return Err(RecordError::Malformed(kind).into());
    }
    fill(sealed, buf, total).await?;
    Ok((kind, total))
}

async fn read<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    sealed: &mut R,
    w: Waiting<'_, W>,
    mut buf: Vec<u8>,
) -> Result<(StreamInfo, Vec<u8>), StreamError> {
    let now = || tokio::time::Instant::now().into_std();
    let mut live = w.dead_peer_timeout.map(|t| Liveness::new(t, now()));
    loop {
        let next = next_record(sealed, &mut buf, w.kex.is_some());
        let got = match &live {
            Some(l) => {
                let due = tokio::time::Instant::from_std(l.next_due());
                tokio::time::timeout_at(due, next).await.ok()
            }
            None => Some(next.await),
        };
        let Some(got) = got else {
            // Silence: a Ping when half the timeout has passed, the end after all of it.
            match live
                .as_mut()
                .map_or(LivenessAction::None, |l| l.poll(now()))
            {
                LivenessAction::None => {}
                LivenessAction::SendPing => {
                    let ping = w.sealer.seal_ping()?;
                    w.reply.write_all(&ping).await?;
                }
                LivenessAction::Dead(d) => return Err(StreamError::PeerSilent(d)),
            }
            continue;
        };
        let (kind, total) = got?;
        if let Some(l) = live.as_mut() {
            l.heard(now());
        }
        if kind == RecordType::StreamInfo {
            let rest = buf.split_off(total);
            let body = w.opener.open_stream_info(&mut buf)?;
            return Ok((StreamInfo::decode(body)?, rest));
        }
        let rest = buf.split_off(total);
        let ping = match w.opener.open(&mut buf)? {
            Opened::Ping => true,
            Opened::KeyShare(kind, body) => {
                // A record of the fresh hybrid exchange (PROTOCOL.md §4.5): answered here.
                if let Some(kex) = w.kex {
                    kex.receive(w.opener, kind, body, std::time::Instant::now())
                        .map_err(StreamError::Kex)?;
                    if let Some(r) = kex
                        .outgoing(w.sealer, std::time::Instant::now())
                        .map_err(StreamError::Kex)?
                    {
                        w.reply.write_all(&r).await?;
                    }
                }
                false
            }
            _ => false,
        };
        buf = rest;
        if ping {
            let pong = w.sealer.seal_pong()?;
            w.reply.write_all(&pong).await?;
        }
    }
}

/// Redirect mode: where `stream` was going before a NAT `REDIRECT` rule sent it here
/// (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`). `None` when it was not redirected: no
/// conntrack entry, or an original destination that is the socket's own local address.
pub(crate) fn original_destination(stream: &TcpStream) -> Option<SocketAddr> {
    let local = canonical(stream.local_addr().ok()?);
    let sock = socket2::SockRef::from(stream);
    let orig = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    let orig = canonical(orig.ok()?.as_socket()?);
    (orig != local).then_some(orig)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::key_schedule::Secret;

    fn pair() -> (Sealer, Opener) {
        let s = Secret::from_bytes([3u8; 32]);
        (Sealer::new(s.clone(), 1 << 30), Opener::new(s))
    }

    fn info() -> StreamInfo {
        StreamInfo {
            client: Some("192.0.2.1:4000".parse().unwrap()),
            local: Some("127.0.0.1:5000".parse().unwrap()),
            destination: None,
        }
    }

    fn waiting<'a, W>(
        reply: &'a mut W,
        opener: &'a mut Opener,
        sealer: &'a mut Sealer,
    ) -> Waiting<'a, W> {
        Waiting {
            reply,
            opener,
            sealer,
            dead_peer_timeout: None,
            kex: None,
        }
    }

    /// Keepalives before the StreamInfo record are opened and each Ping answered with a Pong
    /// (PROTOCOL.md §4.4); a record of another type is still refused from its header.
    #[tokio::test]
    async fn pings_before_the_stream_info_are_answered() {
        let (mut csealer, mut lopener) = pair();
        let (mut lsealer, mut copener) = {
            let s = Secret::from_bytes([4u8; 32]);
            (Sealer::new(s.clone(), 1 << 30), Opener::new(s))
        };
        let mut wire = Vec::new();
        wire.extend_from_slice(&csealer.seal_ping().unwrap());
        wire.extend_from_slice(&csealer.seal_pong().unwrap());
        wire.extend_from_slice(&csealer.seal_ping().unwrap());
        send_stream_info(&mut wire, &mut csealer, &info(), Vec::new())
            .await
            .unwrap();
        let mut rd = &wire[..];
        let mut replies = Vec::new();
        let (got, rest) = read_stream_info(
            &mut rd,
            waiting(&mut replies, &mut lopener, &mut lsealer),
            Vec::new(),
            deadline(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!((got, rest.len()), (info(), 0));
        assert_eq!(replies.len(), 2 * OVERHEAD, "one Pong per Ping");
        for rec in replies.chunks_mut(OVERHEAD) {
            assert_eq!(copener.open(rec), Ok(Opened::Pong));
        }
    }

    /// A connector silent between streams gets one Ping after half the timeout, and the wait
    /// ends after the whole of it (time stepped, not slept).
    #[tokio::test(start_paused = true)]
    async fn a_silent_connector_is_pinged_then_given_up() {
        let (_, mut lopener) = pair();
        let (mut lsealer, mut copener) = {
            let s = Secret::from_bytes([4u8; 32]);
            (Sealer::new(s.clone(), 1 << 30), Opener::new(s))
        };
        let (mut near, mut far) = tokio::io::duplex(1024);
        let (mut r, mut w) = tokio::io::split(&mut near);
        let t = Duration::from_secs(20);
        let started = tokio::time::Instant::now();
        let res = read_stream_info(
            &mut r,
            Waiting {
                reply: &mut w,
                opener: &mut lopener,
                sealer: &mut lsealer,
                dead_peer_timeout: Some(t),
                kex: None,
            },
            Vec::new(),
            started + Duration::from_secs(120),
            Duration::from_secs(120),
        )
        .await;
        assert!(
            matches!(res, Err(StreamError::PeerSilent(d)) if d == t),
            "{res:?}"
        );
        assert_eq!(started.elapsed(), t);
        let mut ping = [0u8; OVERHEAD];
        far.read_exact(&mut ping).await.unwrap();
        assert_eq!(copener.open(&mut ping), Ok(Opened::Ping));
    }

    fn deadline() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn sent_then_read_keeping_what_follows() {
        let (mut sealer, mut opener) = pair();
        let mut wire = Vec::new();
        send_stream_info(&mut wire, &mut sealer, &info(), Vec::new())
            .await
            .unwrap();
        wire.extend_from_slice(b"following bytes");
        // Split anywhere between leftover and socket: same result.
        for split in [0, 2, 9, wire.len()] {
            let mut o = Opener::new(Secret::from_bytes([3u8; 32]));
            let mut rd = &wire[split..];
            let (mut ps, mut sink) = (pair().0, tokio::io::sink());
            let (got, rest) = read_stream_info(
                &mut rd,
                waiting(&mut sink, &mut o, &mut ps),
                wire[..split].to_vec(),
                deadline(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
            assert_eq!(got, info());
            let mut all = rest;
            all.extend_from_slice(rd);
            assert_eq!(all, b"following bytes");
        }
        let _ = &mut opener;
    }

    #[tokio::test]
    async fn first_record_must_be_stream_info() {
        let (mut sealer, mut opener) = pair();
        let mut data = vec![0u8; 5 + OVERHEAD];
        sealer.seal_data(&mut data).unwrap();
        let mut rd = &data[..];
        let (mut ps, mut sink) = (pair().0, tokio::io::sink());
        let r = read_stream_info(
            &mut rd,
            waiting(&mut sink, &mut opener, &mut ps),
            Vec::new(),
            deadline(),
            Duration::from_secs(5),
        )
        .await;
        assert!(matches!(
            r,
            Err(StreamError::Record(RecordError::Unexpected(
                RecordType::Data
            )))
        ));
        let mut empty: &[u8] = &[];
        let (_, mut o) = pair();
        let (mut ps, mut sink) = (pair().0, tokio::io::sink());
        let r = read_stream_info(
            &mut empty,
            waiting(&mut sink, &mut o, &mut ps),
            Vec::new(),
            deadline(),
            Duration::from_secs(5),
        )
        .await;
        assert!(matches!(r, Err(StreamError::Eof)));
    }
}
