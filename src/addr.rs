//! Addresses and destination rules, as written in the config and used by the tunnels:
//! `host:port`, `[v6]:port`, `unix:PATH`, `systemd:NAME` ([`Address`], resolved anew for each
//! connection) and redirect mode's `allow_destinations` entries ([`DestinationRule`]).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// One `allow_destinations` entry: a network and a port range.
///
/// Written `NETWORK:PORTS`, where NETWORK is an IPv4 address or CIDR (`10.0.0.0/8`, `192.0.2.7`)
/// or an IPv6 one in brackets (`[2001:db8::/32]`, `[::1]`), and PORTS is a port (`5432`), a range
/// (`80-90`) or `*` (any port). Host bits set in a CIDR are refused as a likely mistake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationRule {
    /// The network.
    pub net: ipnet::IpNet,
    /// First and last allowed port.
    pub ports: (u16, u16),
}

impl DestinationRule {
    /// True if `dest` is in the network and the port range. An IPv4-mapped IPv6 address is
    /// matched as the IPv4 address it is.
    pub fn matches(&self, dest: &SocketAddr) -> bool {
        let ip = dest.ip().to_canonical();
        self.net.contains(&ip) && (self.ports.0..=self.ports.1).contains(&dest.port())
    }
}

impl fmt::Display for DestinationRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.net {
            ipnet::IpNet::V4(n) => write!(f, "{n}:")?,
            ipnet::IpNet::V6(n) => write!(f, "[{n}]:")?,
        }
        match self.ports {
            (1, 65535) => write!(f, "*"),
            (a, b) if a == b => write!(f, "{a}"),
            (a, b) => write!(f, "{a}-{b}"),
        }
    }
}

impl FromStr for DestinationRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (net, ports) = if let Some(rest) = s.strip_prefix('[') {
            let (net, after) = rest
                .split_once(']')
                .ok_or("missing `]` after the IPv6 network")?;
            let ports = after
                .strip_prefix(':')
                .ok_or("missing `:PORTS` after `]` (a port, a range like 80-90, or *)")?;
            if net.contains('.') && !net.contains(':') {
                return Err("IPv4 networks are written without brackets".into());
            }
            (net, ports)
        } else {
            let (net, ports) = s
                .rsplit_once(':')
                .ok_or("missing `:PORTS` (a port, a range like 80-90, or *)")?;
            if net.contains(':') {
                return Err(
                    "IPv6 networks are written in brackets, like [2001:db8::/32]:443".into(),
                );
            }
            (net, ports)
        };
        let net: ipnet::IpNet = if net.contains('/') {
            net.parse()
                .map_err(|_| format!("invalid network {net:?}: expected an address or CIDR"))?
        } else {
            let ip: IpAddr = net
                .parse()
                .map_err(|_| format!("invalid network {net:?}: expected an address or CIDR"))?;
            ipnet::IpNet::from(ip)
        };
        if net.trunc() != net {
            return Err(format!(
                "network {net} has host bits set (did you mean {}?)",
                net.trunc()
            ));
        }
        if let ipnet::IpNet::V6(n) = net {
            if n.addr().to_ipv4_mapped().is_some() {
                return Err(
                    "IPv4-mapped IPv6 networks are not allowed: write the IPv4 network".into(),
                );
            }
        }
        let port = |p: &str| -> Result<u16, String> {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("invalid port {p:?}: expected 1 to 65535")),
                Ok(n) => Ok(n),
            }
        };
        let ports = match ports {
            "*" => (1, 65535),
            p => match p.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (port(a)?, port(b)?);
                    if a > b {
                        return Err(format!("invalid port range {p:?}: {a} is above {b}"));
                    }
                    (a, b)
                }
                None => {
                    let n = port(p)?;
                    (n, n)
                }
            },
        };
        Ok(DestinationRule { net, ports })
    }
}

/// host:port; IPv4 `1.2.3.4:80`, IPv6 `[::1]:80`, or a host name `db.example.net:7443`; or
/// `unix:PATH`, a Unix domain socket (plaintext side only); or `systemd:NAME`, a listening
/// socket passed by systemd (listen addresses only). Not resolved here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// The listening socket systemd passed under this name (`FileDescriptorName=` in the
    /// `.socket` unit; docs/operations.md, "Socket activation").
    Systemd(String),
    /// A Unix domain socket path (`unix:/run/app.sock`); in a config file a relative path is
    /// resolved against the file's directory.
    Unix(PathBuf),
    /// A literal IP address and port.
    Ip(SocketAddr),
    /// A host name, resolved when used.
    Host {
        /// The DNS name (or `localhost`).
        host: String,
        /// The TCP port.
        port: u16,
    },
}

impl Address {
    /// The port (0 for a Unix socket, which has none).
    pub fn port(&self) -> u16 {
        match self {
            Address::Ip(sa) => sa.port(),
            Address::Host { port, .. } => *port,
            Address::Unix(_) | Address::Systemd(_) => 0,
        }
    }

    /// The name of a socket passed by systemd (`systemd:NAME`).
    pub fn systemd_name(&self) -> Option<&str> {
        match self {
            Address::Systemd(name) => Some(name),
            _ => None,
        }
    }

    /// The path of a Unix socket address.
    pub fn unix_path(&self) -> Option<&Path> {
        match self {
            Address::Unix(p) => Some(p),
            _ => None,
        }
    }

    /// Resolves to socket addresses: an IP address as is, a host name through the system
    /// resolver ([`tokio::net::lookup_host`]). Callers resolve anew for each connection.
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        match self {
            Address::Ip(sa) => Ok(vec![*sa]),
            Address::Unix(p) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("unix:{} is a Unix socket, not a TCP address", p.display()),
            )),
            Address::Systemd(name) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("systemd:{name} is a socket passed by systemd, not a TCP address"),
            )),
            Address::Host { host, port } => {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map_err(|e| {
                        let text = e.to_string();
                        // std's words for a failed getaddrinfo; the resolver's follow them.
                        let why = text.strip_prefix("failed to lookup address information: ");
                        let why = why.unwrap_or(&text);
                        std::io::Error::new(
                            e.kind(),
                            format!("cannot resolve host name {host}: {why}"),
                        )
                    })?
                    .collect();
                if addrs.is_empty() {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{host} has no addresses"),
                    ))
                } else {
                    Ok(addrs)
                }
            }
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ip(sa) => write!(f, "{sa}"),
            Address::Host { host, port } => write!(f, "{host}:{port}"),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Systemd(name) => write!(f, "systemd:{name}"),
        }
    }
}

/// Why a string is not an [`Address`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// No `:port` at the end.
    #[error("missing `:port`")]
    MissingPort,
    /// The port is not a number in 0..=65535.
    #[error("port `{0}` is not a number from 0 to 65535")]
    BadPort(String),
    /// Nothing before the `:port`.
    #[error("empty host")]
    EmptyHost,
    /// An IPv6 address must be written in brackets.
    #[error("an IPv6 address needs brackets, as in `[::1]:443`")]
    UnbracketedIpv6,
    /// Something in brackets that is not an IPv6 address.
    #[error("`[{0}]` is not an IPv6 address")]
    BadIpv6(String),
    /// An IPv6 address with a zone (`fe80::1%eth0`).
    #[error(
        "`[{0}]`: zone ids (`%{1}`) are not supported; use a global or unique-local IPv6 \
         address, or an IPv4 one"
    )]
    Ipv6Zone(String, String),
    /// A host name with characters DNS does not allow.
    #[error("`{0}` is not a valid host name")]
    BadHost(String),
    /// `unix:` with nothing after it.
    #[error("empty Unix socket path after `unix:`")]
    EmptyUnixPath,
    /// `systemd:` with nothing after it.
    #[error("empty socket name after `systemd:` (the `FileDescriptorName=` of the .socket unit)")]
    EmptySystemdName,
    /// A name systemd cannot pass in `LISTEN_FDNAMES`.
    #[error("`{0}` is not a valid systemd socket name: {1}")]
    BadSystemdName(String, &'static str),
}

/// The longest name `FileDescriptorName=` takes (sd_listen_fds(3)).
const MAX_FDNAME: usize = 255;

/// Why `name` cannot be a `FileDescriptorName=` as systemd passes it in `LISTEN_FDNAMES`
/// (sd_listen_fds(3)): ASCII without control characters and `:` (the separator), at most 255
/// characters. Empty names are checked by the caller.
fn systemd_name_problem(name: &str) -> Option<&'static str> {
    if name.len() > MAX_FDNAME {
        Some("longer than 255 characters")
    } else if name.contains(':') {
        Some("`:` separates the names in LISTEN_FDNAMES")
    } else if !name.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        Some("only printable ASCII characters are allowed")
    } else {
        None
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(AddressError::EmptyUnixPath);
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if let Some(name) = s.strip_prefix("systemd:") {
            if name.is_empty() {
                return Err(AddressError::EmptySystemdName);
            }
            if let Some(problem) = systemd_name_problem(name) {
                return Err(AddressError::BadSystemdName(name.to_string(), problem));
            }
            return Ok(Address::Systemd(name.to_string()));
        }
        let parse_port = |p: &str| -> Result<u16, AddressError> {
            if p.is_empty() {
                return Err(AddressError::MissingPort);
            }
            if !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(AddressError::BadPort(p.to_string()));
            }
            p.parse::<u16>()
                .map_err(|_| AddressError::BadPort(p.to_string()))
        };
        if let Some(rest) = s.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or(AddressError::MissingPort)?;
            if let Some((ip, zone)) = inside.split_once('%') {
                if ip.parse::<Ipv6Addr>().is_ok() {
                    return Err(AddressError::Ipv6Zone(inside.to_string(), zone.to_string()));
                }
            }
            let ip: Ipv6Addr = inside
                .parse()
                .map_err(|_| AddressError::BadIpv6(inside.to_string()))?;
            let port = after.strip_prefix(':').ok_or(AddressError::MissingPort)?;
            return Ok(Address::Ip(SocketAddr::new(
                IpAddr::V6(ip),
                parse_port(port)?,
            )));
        }
        let colons = s.matches(':').count();
        if colons > 1 {
            return Err(AddressError::UnbracketedIpv6);
        }
        let (host, port) = s.rsplit_once(':').ok_or(AddressError::MissingPort)?;
        if host.is_empty() {
            return Err(AddressError::EmptyHost);
        }
        let port = parse_port(port)?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Address::Ip(SocketAddr::new(ip, port)));
        }
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        let name = host.strip_suffix('.').unwrap_or(host);
        if name.len() > 253 || !name.split('.').all(valid_label) {
            return Err(AddressError::BadHost(host.to_string()));
        }
        Ok(Address::Host {
            host: host.to_string(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_names_parse_as_sd_listen_fds_passes_them() {
        let ok = |s: &str| s.parse::<Address>().unwrap();
        assert_eq!(ok("systemd:sealed"), Address::Systemd("sealed".into()));
        assert_eq!(ok(" systemd:sealed ").to_string(), "systemd:sealed");
        assert_eq!(ok("systemd:sealpipe@redis.socket").port(), 0);
        let longest = format!("systemd:{}", "n".repeat(MAX_FDNAME));
        assert_eq!(ok(&longest).systemd_name().map(str::len), Some(255));
        let bad = |s: &str| s.parse::<Address>().unwrap_err().to_string();
        assert_eq!(
            bad("systemd:"),
            "empty socket name after `systemd:` (the `FileDescriptorName=` of the .socket unit)"
        );
        assert_eq!(
            bad("systemd:a:b"),
            "`a:b` is not a valid systemd socket name: `:` separates the names in LISTEN_FDNAMES"
        );
        assert!(bad("systemd:sé").ends_with("only printable ASCII characters are allowed"));
        assert!(bad("systemd:a\tb").ends_with("only printable ASCII characters are allowed"));
        assert!(bad(&format!("{longest}n")).ends_with("longer than 255 characters"));
    }

    #[tokio::test]
    async fn a_systemd_socket_is_not_resolved() {
        let e = Address::Systemd("sealed".into())
            .resolve()
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "systemd:sealed is a socket passed by systemd, not a TCP address"
        );
    }
}
