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
    /// A record of the exchange was refused.
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

/// Reads and opens the connector's first record, which must be StreamInfo, before `deadline`.
/// `leftover` holds the bytes already read after the handshake; what follows the record is
/// returned for the pump. Each read takes up to the largest StreamInfo record, so one read
/// usually brings the whole record (and the client's first bytes behind it); nothing is
/// buffered beyond that, and a first record of another type is refused from its header, before
/// its body is opened.
///
/// Between streams a record of the fresh hybrid exchange (PROTOCOL.md §4.5) may come first
/// (`kex` given: the listener's between streams): it is opened and handed to `kex`, and
/// [`First::Exchange`] returned with the bytes that follow; the caller sends what the exchange
/// owes and reads again.
pub(crate) async fn read_stream_info<R: AsyncRead + Unpin>(
    sealed: &mut R,
    opener: &mut Opener,
    kex: Option<&SessionKex>,
    leftover: Vec<u8>,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<First, StreamError> {
    match tokio::time::timeout_at(deadline, read(sealed, opener, kex, leftover)).await {
        Ok(r) => r,
        Err(_) => Err(StreamError::Timeout(timeout)),
    }
}

/// What the first record between streams was.
#[derive(Debug)]
pub(crate) enum First {
    /// The next stream's StreamInfo, and the bytes that follow it.
    Info(StreamInfo, Vec<u8>),
    /// A record of the fresh hybrid exchange, handled; the bytes that follow it.
    Exchange(Vec<u8>),
}

/// The largest StreamInfo record.
const MOST: usize = OVERHEAD + MAX_STREAM_INFO_LEN;
/// The largest record of the exchange a listener may get (a KeyShare).
const MOST_KEX: usize = OVERHEAD + KEY_SHARE_LEN;

/// Reads until `buf` holds at least `want` bytes (at most [`MOST`]), each read taking what is
/// there up to [`MOST`] bytes in all.
async fn fill<R: AsyncRead + Unpin>(
    sealed: &mut R,
    buf: &mut Vec<u8>,
    want: usize,
) -> Result<(), StreamError> {
    while buf.len() < want {
        let have = buf.len();
        buf.resize(MOST.max(want), 0);
        let read = sealed.read(&mut buf[have..]).await;
        buf.truncate(have + read.as_ref().copied().unwrap_or(0));
        if read? == 0 {
            return Err(StreamError::Eof);
        }
    }
    Ok(())
}

async fn read<R: AsyncRead + Unpin>(
    sealed: &mut R,
    opener: &mut Opener,
    kex: Option<&SessionKex>,
    mut buf: Vec<u8>,
) -> Result<First, StreamError> {
    fill(sealed, &mut buf, HEADER_LEN).await?;
    let header: [u8; HEADER_LEN] = buf[..HEADER_LEN]
        .try_into()
        .map_err(|_| RecordError::Buffer(buf.len()))?;
    let (kind, total) = parse_header(&header)?;
    if let Some(kex) = kex.filter(|_| kind.is_key_share()) {
        if total > MOST_KEX {
            return Err(RecordError::Malformed(kind).into());
        }
        fill(sealed, &mut buf, total).await?;
        let rest = buf.split_off(total);
        match opener.open(&mut buf)? {
            Opened::KeyShare(kind, body) => kex
                .receive(opener, kind, body, std::time::Instant::now())
                .map_err(StreamError::Kex)?,
            _ => return Err(RecordError::Unexpected(kind).into()),
        }
        return Ok(First::Exchange(rest));
    }
    if kind != RecordType::StreamInfo {
        return Err(RecordError::Unexpected(kind).into());
    }
    if total > MOST {
        return Err(RecordError::Malformed(kind).into());
    }
    fill(sealed, &mut buf, total).await?;
    let rest = buf.split_off(total);
    let body = opener.open_stream_info(&mut buf)?;
    Ok(First::Info(StreamInfo::decode(body)?, rest))
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
            let Ok(First::Info(got, rest)) = read_stream_info(
                &mut rd,
                &mut o,
                None,
                wire[..split].to_vec(),
                deadline(),
                Duration::from_secs(5),
            )
            .await
            else {
                panic!("a StreamInfo")
            };
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
        let r = read_stream_info(
            &mut rd,
            &mut opener,
            None,
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
        let r = read_stream_info(
            &mut empty,
            &mut o,
            None,
            Vec::new(),
            deadline(),
            Duration::from_secs(5),
        )
        .await;
        assert!(matches!(r, Err(StreamError::Eof)));
    }
}
