//! The StreamInfo record body: where a tunneled connection came from, and where it was going.
//!
//! The connector sends exactly one StreamInfo record as the first record of every session, before
//! any data (PROTOCOL.md §4.1); the listener reads it before it contacts any target. Its body is
//!
//! ```text
//! version (u8, = 1) || flags (u8) || client || local || [original destination, if flags & 1]
//! address = family (u8: 0 none, 4 IPv4, 6 IPv6) || ip (0, 4 or 16 bytes) || port (u16 BE)
//! ```
//!
//! `client` is the local client's address as the connector saw it, `local` the address that
//! client connected to (the connector's end of the accepted socket), and the original destination
//! the address a `REDIRECT` rule sent the client away from (redirect mode only). Family 0 (with
//! port 0) is "none": a client on a Unix socket has no IP address. Decoding is strict: exact
//! length, known version, flags and families, IPv4 never written as IPv4-mapped IPv6.
//!
//! This module also builds the PROXY protocol v2 header ([`proxy_v2_header`]) a listener may
//! write to its target from a StreamInfo.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The only StreamInfo version.
pub(crate) const STREAM_INFO_VERSION: u8 = 1;
/// Flag: an original destination follows.
pub const FLAG_DESTINATION: u8 = 1;
/// Largest StreamInfo body: version, flags and three IPv6 addresses.
pub const MAX_STREAM_INFO_LEN: usize = 2 + 3 * ADDR_V6_LEN;
const ADDR_V6_LEN: usize = 1 + 16 + 2;

/// What the connector tells the listener about one tunneled connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    /// The local client's address as the connector saw it (`None`: not an IP client).
    pub client: Option<SocketAddr>,
    /// The address the client connected to: the connector's end of the accepted socket.
    pub local: Option<SocketAddr>,
    /// Redirect mode: where the client was going before a `REDIRECT` rule sent it to the connector.
    pub destination: Option<SocketAddr>,
}

/// Why a StreamInfo body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamInfoError {
    /// Shorter or longer than its fields say.
    #[error("StreamInfo has the wrong length")]
    Length,
    /// A version other than 1.
    #[error("unknown StreamInfo version {0}")]
    Version(u8),
    /// Flag bits other than [`FLAG_DESTINATION`].
    #[error("unknown StreamInfo flags {0:#04x}")]
    Flags(u8),
    /// An address family other than 0, 4 or 6.
    #[error("unknown address family {0}")]
    Family(u8),
    /// A non-canonical address: family 0 with a port, or IPv4 written as IPv4-mapped IPv6.
    #[error("non-canonical address in StreamInfo")]
    NonCanonical,
}

/// `addr` with an IPv4-mapped IPv6 address written as IPv4 (what a dual-stack socket reports).
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn put_addr(out: &mut Vec<u8>, addr: Option<SocketAddr>) {
    match addr.map(canonical) {
        None => out.extend_from_slice(&[0, 0, 0]),
        Some(SocketAddr::V4(a)) => {
            out.push(4);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        Some(SocketAddr::V6(a)) => {
            out.push(6);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
    }
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], StreamInfoError> {
    if input.len() < n {
        return Err(StreamInfoError::Length);
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

fn take_port(input: &mut &[u8]) -> Result<u16, StreamInfoError> {
    let p = take(input, 2)?;
    Ok(u16::from_be_bytes([p[0], p[1]]))
}

fn get_addr(input: &mut &[u8]) -> Result<Option<SocketAddr>, StreamInfoError> {
    let family = take(input, 1)?[0];
    match family {
        0 => {
            if take_port(input)? != 0 {
                return Err(StreamInfoError::NonCanonical);
            }
            Ok(None)
        }
        4 => {
            let ip: [u8; 4] = take(input, 4)?
                .try_into()
                .map_err(|_| StreamInfoError::Length)?;
            let port = take_port(input)?;
            Ok(Some(SocketAddr::new(Ipv4Addr::from(ip).into(), port)))
        }
        6 => {
            let ip: [u8; 16] = take(input, 16)?
                .try_into()
                .map_err(|_| StreamInfoError::Length)?;
            let ip = Ipv6Addr::from(ip);
            if ip.to_ipv4_mapped().is_some() {
                return Err(StreamInfoError::NonCanonical);
            }
            let port = take_port(input)?;
            Ok(Some(SocketAddr::new(ip.into(), port)))
        }
        f => Err(StreamInfoError::Family(f)),
    }
}

impl StreamInfo {
    /// The body of the StreamInfo record (at most [`MAX_STREAM_INFO_LEN`] bytes). IPv4-mapped
    /// IPv6 addresses are written as IPv4.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_STREAM_INFO_LEN);
        out.push(STREAM_INFO_VERSION);
        out.push(if self.destination.is_some() {
            FLAG_DESTINATION
        } else {
            0
        });
        put_addr(&mut out, self.client);
        put_addr(&mut out, self.local);
        if self.destination.is_some() {
            put_addr(&mut out, self.destination);
        }
        out
    }

    /// Parses a StreamInfo body, strictly: exactly the bytes its fields call for.
    pub fn decode(body: &[u8]) -> Result<StreamInfo, StreamInfoError> {
        let mut input = body;
        let head = take(&mut input, 2)?;
        let (version, flags) = (head[0], head[1]);
        if version != STREAM_INFO_VERSION {
            return Err(StreamInfoError::Version(version));
        }
        if flags & !FLAG_DESTINATION != 0 {
            return Err(StreamInfoError::Flags(flags));
        }
        let client = get_addr(&mut input)?;
        let local = get_addr(&mut input)?;
        let destination = if flags & FLAG_DESTINATION != 0 {
            // A destination of family 0 says nothing: refused rather than read as "none".
            Some(get_addr(&mut input)?.ok_or(StreamInfoError::NonCanonical)?)
        } else {
            None
        };
        if !input.is_empty() {
            return Err(StreamInfoError::Length);
        }
        Ok(StreamInfo {
            client,
            local,
            destination,
        })
    }
}

/// The 12-byte signature that starts every PROXY protocol v2 header.
pub(crate) const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The PROXY protocol v2 header for a connection described by `info`: command PROXY over TCP with
/// source = the client and destination = the original destination if there is one, else the
/// address the client connected to. When the client (or that destination) has no IP address, the
/// LOCAL command with family UNSPEC and no addresses. IPv4 and IPv6 mixed are both sent as IPv6
/// (IPv4-mapped).
pub fn proxy_v2_header(info: &StreamInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&PROXY_V2_SIGNATURE);
    let dst = info.destination.or(info.local);
    let (Some(src), Some(dst)) = (info.client.map(canonical), dst.map(canonical)) else {
        // LOCAL, UNSPEC, no address block.
        out.extend_from_slice(&[0x20, 0x00, 0, 0]);
        return out;
    };
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x21, 0x11, 0, 12]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            out.extend_from_slice(&[0x21, 0x21, 0, 36]);
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn round_trips_and_exact_bytes() {
        let info = StreamInfo {
            client: Some(sa("192.0.2.1:40000")),
            local: Some(sa("[2001:db8::1]:5432")),
            destination: None,
        };
        let b = info.encode();
        assert_eq!(
            b[..9],
            [1, 0, 4, 192, 0, 2, 1, 0x9c, 0x40],
            "version, flags, client"
        );
        assert_eq!(b.len(), 2 + 7 + 19);
        assert_eq!(StreamInfo::decode(&b), Ok(info));
        let full = StreamInfo {
            client: None,
            local: Some(sa("127.0.0.1:1")),
            destination: Some(sa("10.1.2.3:80")),
        };
        let b = full.encode();
        assert_eq!(b[..5], [1, 1, 0, 0, 0]);
        assert_eq!(StreamInfo::decode(&b), Ok(full));
        let max = StreamInfo {
            client: Some(sa("[::2]:1")),
            local: Some(sa("[::3]:2")),
            destination: Some(sa("[::4]:3")),
        };
        assert_eq!(max.encode().len(), MAX_STREAM_INFO_LEN);
    }

    #[test]
    fn mapped_addresses_are_written_as_ipv4() {
        let info = StreamInfo {
            client: Some(sa("[::ffff:192.0.2.9]:7")),
            local: None,
            destination: None,
        };
        let b = info.encode();
        assert_eq!(b[2], 4);
        assert_eq!(
            StreamInfo::decode(&b).unwrap().client,
            Some(sa("192.0.2.9:7"))
        );
        // Written by hand as mapped IPv6: refused.
        let mut bad = vec![1, 0, 6];
        bad.extend_from_slice(&Ipv4Addr::new(1, 2, 3, 4).to_ipv6_mapped().octets());
        bad.extend_from_slice(&[0, 7, 0, 0, 0]);
        assert_eq!(StreamInfo::decode(&bad), Err(StreamInfoError::NonCanonical));
    }

    #[test]
    fn strict_decoding() {
        let good = StreamInfo {
            client: Some(sa("192.0.2.1:1")),
            local: Some(sa("192.0.2.2:2")),
            destination: None,
        }
        .encode();
        assert_eq!(StreamInfo::decode(&[]), Err(StreamInfoError::Length));
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(StreamInfo::decode(&longer), Err(StreamInfoError::Length));
        assert_eq!(
            StreamInfo::decode(&good[..good.len() - 1]),
            Err(StreamInfoError::Length)
        );
        let mut v = good.clone();
        v[0] = 2;
        assert_eq!(StreamInfo::decode(&v), Err(StreamInfoError::Version(2)));
        let mut f = good.clone();
        f[1] = 2;
        assert_eq!(StreamInfo::decode(&f), Err(StreamInfoError::Flags(2)));
        let mut f = good.clone();
        f[1] = 1; // says a destination follows, but none does
        assert_eq!(StreamInfo::decode(&f), Err(StreamInfoError::Length));
        let mut fam = good.clone();
        fam[2] = 5;
        assert_eq!(StreamInfo::decode(&fam), Err(StreamInfoError::Family(5)));
        assert_eq!(
            StreamInfo::decode(&[1, 0, 0, 0, 1, 0, 0, 0]),
            Err(StreamInfoError::NonCanonical),
            "family none with a port"
        );
        assert_eq!(
            StreamInfo::decode(&[1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(StreamInfoError::NonCanonical),
            "a destination of family none"
        );
    }

    #[test]
    fn proxy_v2_headers() {
        let v4 = StreamInfo {
            client: Some(sa("192.0.2.1:40000")),
            local: Some(sa("192.0.2.2:5432")),
            destination: None,
        };
        let mut want = PROXY_V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 1, 192, 0, 2, 2]);
        want.extend_from_slice(&[0x9c, 0x40, 0x15, 0x38]);
        assert_eq!(proxy_v2_header(&v4), want);

        let redirected = StreamInfo {
            destination: Some(sa("10.0.0.1:80")),
            ..v4
        };
        assert_eq!(&proxy_v2_header(&redirected)[20..24], &[10, 0, 0, 1]);

        let v6 = StreamInfo {
            client: Some(sa("[::1]:1")),
            local: Some(sa("[::2]:2")),
            destination: None,
        };
        let h = proxy_v2_header(&v6);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h[16 + 15], 1);
        assert_eq!(h[32 + 15], 2);
        assert_eq!(&h[48..], &[0, 1, 0, 2]);

        let mixed = StreamInfo {
            client: Some(sa("192.0.2.1:1")),
            local: Some(sa("[::2]:2")),
            destination: None,
        };
        let h = proxy_v2_header(&mixed);
        assert_eq!(&h[13..14], &[0x21]);
        assert_eq!(
            &h[16..32],
            &Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped().octets()
        );

        let unix = StreamInfo { client: None, ..v4 };
        let mut want = PROXY_V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(proxy_v2_header(&unix), want);
    }
}
