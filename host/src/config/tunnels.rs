//! A frontend's tunnel settings: the HTTP/1.1 `Upgrade` tokens it forwards
//! (`upgrades`, WebSocket by default as in HAProxy and Envoy) and where a
//! `CONNECT` may open a forward tunnel (`connect.allow`; absent: CONNECT is
//! answered 405).
//!
//! A destination pattern is `HOST:PORT`:
//! - `HOST`: a name (`db.example`, case-insensitive), `*.example` (any name
//!   under `example`, at any depth, not `example` itself), `*` (any host),
//!   an IP address (`10.1.2.3`, `[::1]`) or a network (`10.0.0.0/8`,
//!   `[fd00::]/8`); an address or network matches the address the proxy
//!   connects to (a name's resolved addresses too, as Squid's `dst`);
//! - `PORT`: a port (`443`), a range (`8000-8999`) or `*`.

use std::net::IpAddr;

use serde::Deserialize;
use toml::Spanned;

use super::diag::{ConfigError, SourceMap};

/// The upgrade tokens when `upgrades` is absent.
pub const DEFAULT_UPGRADES: [&str; 1] = ["websocket"];

/// `connect = { allow = [...] }` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConnect {
    /// Destination patterns a CONNECT may reach (`HOST:PORT`).
    pub allow: Spanned<Vec<Spanned<String>>>,
}

/// A frontend's upgrade and CONNECT settings, checked.
#[derive(Debug, Clone)]
pub struct Tunnels {
    /// Protocol names (lower case, without a `/version`) an `Upgrade` may ask for.
    pub upgrades: Vec<Box<str>>,
    /// CONNECT destinations; `None`: CONNECT is refused (405).
    pub connect: Option<Vec<Dest>>,
}

impl Default for Tunnels {
    fn default() -> Self {
        Tunnels {
            upgrades: DEFAULT_UPGRADES.iter().map(|t| Box::from(*t)).collect(),
            connect: None,
        }
    }
}

impl Tunnels {
    /// Whether `protocol` (an `Upgrade` token, `name[/version]`) is allowed.
    pub fn allows_upgrade(&self, protocol: &str) -> bool {
        let name = protocol.split('/').next().unwrap_or("").trim();
        self.upgrades
            .iter()
            .any(|t| t.as_bytes().eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// The host part of a destination pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Any host.
    Any,
    /// One name, lower case.
    Name(Box<str>),
    /// Names under a domain: the suffix with its leading dot (`.example`).
    Under(Box<str>),
    /// An address network (`/32` or `/128` for one address).
    Net(IpAddr, u8),
}

/// One `connect.allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    pub host: HostPattern,
    /// Inclusive port range (`*` is `1..=65535`).
    pub ports: (u16, u16),
}

impl Dest {
    fn port_ok(&self, port: u16) -> bool {
        self.ports.0 <= port && port <= self.ports.1
    }

    /// Whether this entry allows the name `host` (lower case, not an
    /// address) on `port` whatever it resolves to.
    pub fn allows_name(&self, host: &str, port: u16) -> bool {
        self.port_ok(port)
            && match &self.host {
                HostPattern::Any => true,
                HostPattern::Name(n) => **n == *host,
                HostPattern::Under(s) => host.len() > s.len() && host.ends_with(&**s),
                HostPattern::Net(..) => false,
            }
    }

    /// Whether this entry allows a connection to `ip` on `port`.
    pub fn allows_addr(&self, ip: IpAddr, port: u16) -> bool {
        self.port_ok(port)
            && match &self.host {
                HostPattern::Any => true,
                HostPattern::Net(net, bits) => in_net(ip, *net, *bits),
                HostPattern::Name(_) | HostPattern::Under(_) => false,
            }
    }
}

/// Whether `ip` is in `net/bits` (IPv4-mapped IPv6 addresses count as IPv4).
pub fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let ip = ip.to_canonical();
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Checks a frontend's `upgrades` and `connect`.
pub fn tunnels(
    source: &SourceMap,
    upgrades: Option<&Spanned<Vec<Spanned<String>>>>,
    connect: Option<&Spanned<RawConnect>>,
) -> Result<Tunnels, ConfigError> {
    let mut out = Tunnels::default();
    if let Some(list) = upgrades {
        out.upgrades.clear();
        for t in list.get_ref() {
            let token = t.get_ref();
            if token.is_empty() || !token.bytes().all(is_tchar) {
                return Err(source.error(
                    t.span(),
                    format!("upgrades: {token:?} is not a protocol name (an HTTP token such as \"websocket\"; no version, no spaces)"),
                ));
            }
            if token.eq_ignore_ascii_case("h2c") {
                return Err(source.error(
                    t.span(),
                    "upgrades: \"h2c\" cannot be forwarded (the proxy speaks HTTP/2 to clients itself, and HAProxy and Envoy refuse it too); clients use h2c with prior knowledge",
                ));
            }
            out.upgrades
                .push(token.to_ascii_lowercase().into_boxed_str());
        }
    }
    if let Some(c) = connect {
        let allow = &c.get_ref().allow;
        if allow.get_ref().is_empty() {
            return Err(source.error(
                allow.span(),
                "connect.allow is empty: list the destinations CONNECT may reach (e.g. [\"*.example:443\", \"10.0.0.0/8:22\"]), or remove `connect` to refuse CONNECT",
            ));
        }
        let mut dests = Vec::with_capacity(allow.get_ref().len());
        for p in allow.get_ref() {
            dests.push(
                parse_dest(p.get_ref()).map_err(|why| {
                    source.error(p.span(), format!("connect.allow: {:?}: {why}; expected HOST:PORT such as \"db.example:5432\", \"*.example:443\", \"10.0.0.0/8:22\", \"[::1]:8080\" or \"*:443\"", p.get_ref()))
                })?,
            );
        }
        out.connect = Some(dests);
    }
    Ok(out)
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses one `HOST:PORT` destination pattern; the error says what is wrong.
pub fn parse_dest(text: &str) -> Result<Dest, String> {
    let text = text.trim();
    let Some(colon) = text.rfind(':') else {
        return Err("no port (the part after the last ':')".into());
    };
    let (host, port) = (&text[..colon], &text[colon + 1..]);
    let ports = parse_ports(port)?;
    let host = parse_host(host)?;
    Ok(Dest { host, ports })
}

fn parse_ports(p: &str) -> Result<(u16, u16), String> {
    if p == "*" {
        return Ok((1, u16::MAX));
    }
    let one = |s: &str| -> Result<u16, String> {
        match s.parse::<u16>() {
            Ok(n) if n > 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(format!("port {s:?} is not 1-65535")),
        }
    };
    match p.split_once('-') {
        Some((lo, hi)) => {
            let (lo, hi) = (one(lo)?, one(hi)?);
            if lo > hi {
                return Err(format!("port range {p:?} ends before it starts"));
            }
            Ok((lo, hi))
        }
        None => one(p).map(|n| (n, n)),
    }
}

fn parse_host(h: &str) -> Result<HostPattern, String> {
    if h.is_empty() {
        return Err("no host before the port".into());
    }
    if h == "*" {
        return Ok(HostPattern::Any);
    }
    // An address or a network: `10.0.0.0/8`, `[fd00::]/8`, `[::1]`, `10.1.2.3`.
    let (addr, bits) = match h.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (h, None),
    };
    let addr_text = addr
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(addr);
    if let Ok(ip) = addr_text.parse::<IpAddr>() {
        if ip.is_ipv6() && addr_text.len() == addr.len() {
            return Err("an IPv6 address goes in brackets (\"[::1]:443\")".into());
        }
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => match b.parse::<u8>() {
                Ok(n) if n <= max && b.bytes().all(|c| c.is_ascii_digit()) => n,
                _ => return Err(format!("prefix length {b:?} is not 0-{max}")),
            },
        };
        return Ok(HostPattern::Net(ip, bits));
    }
    if bits.is_some() {
        return Err(format!("{addr:?} before '/' is not an IP address"));
    }
    let lower = h.to_ascii_lowercase();
    let (name, under) = match lower.strip_prefix("*.") {
        Some(rest) => (rest.to_string(), true),
        None => (lower, false),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.contains('*') {
        return Err("'*' may only be the whole host or its first label (\"*.example\")".into());
    }
    if !name.split('.').all(label_ok) {
        return Err(format!("{name:?} is not a host name"));
    }
    Ok(if under {
        HostPattern::Under(format!(".{name}").into_boxed_str())
    } else {
        HostPattern::Name(name.into_boxed_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let d = parse_dest("*.example:443").expect("ok");
        assert!(d.allows_name("a.example", 443));
        assert!(d.allows_name("b.a.example", 443));
        assert!(!d.allows_name("example", 443));
        assert!(!d.allows_name("a.example", 80));
        assert!(!d.allows_name("aexample", 443));
        let d = parse_dest("10.0.0.0/8:22").expect("ok");
        assert!(d.allows_addr("10.9.8.7".parse().expect("ip"), 22));
        assert!(d.allows_addr("::ffff:10.9.8.7".parse().expect("ip"), 22));
        assert!(!d.allows_addr("11.0.0.1".parse().expect("ip"), 22));
        assert!(!d.allows_name("10.0.0.1", 22));
        let d = parse_dest("[::1]:8000-8999").expect("ok");
        assert!(d.allows_addr("::1".parse().expect("ip"), 8080));
        assert!(!d.allows_addr("::1".parse().expect("ip"), 9000));
        let d = parse_dest("*:*").expect("ok");
        assert!(d.allows_name("x", 1) && d.allows_addr("1.2.3.4".parse().expect("ip"), 65535));
        let d = parse_dest("DB.Example:5432").expect("ok");
        assert!(d.allows_name("db.example", 5432));
        assert!(matches!(
            parse_dest("0.0.0.0/0:1").expect("ok").host,
            HostPattern::Net(_, 0)
        ));
        for bad in [
            "example",
            "example:",
            "example:0",
            "example:70000",
            ":443",
            "a.*.example:443",
            "::1:443",
            "10.0.0.0/33:22",
            "name/8:22",
            "ex ample:80",
            "example:90-80",
        ] {
            assert!(parse_dest(bad).is_err(), "{bad} must be refused");
        }
    }
}
