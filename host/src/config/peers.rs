//! `[[peers]]` sections (HAProxy's `peers`): the processes a stick table is
//! replicated with, and a table's `peers = "<section>"`. Checked here into
//! [`Section`]s; `crate::peers` runs them.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::diag::{ConfigError, SourceMap};
use super::schema::RawStickTable;

/// `[[peers]]`: HAProxy's `peers <name>` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeers {
    pub name: Spanned<String>,
    /// The name of this process among the peers (HAProxy's `localpeer` / `-L`).
    pub local: Spanned<String>,
    /// Where the peers listener binds; default: the local peer's `addr`.
    pub bind: Option<Spanned<String>>,
    /// Every peer, the local one included, as HAProxy's `peer <name> <addr>` lines.
    #[serde(default)]
    pub peer: Vec<Spanned<RawPeer>>,
    /// Source addresses allowed to connect to the listener: addresses or
    /// CIDR prefixes (`"10.0.0.0/8"`); absent: the peers' own addresses only.
    pub allow: Option<Vec<Spanned<String>>>,
}

/// One `peer` of a `[[peers]]` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeer {
    pub name: Spanned<String>,
    pub addr: Spanned<String>,
}

/// A remote peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: Arc<str>,
    pub addr: SocketAddr,
}

/// A checked `[[peers]]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: Arc<str>,
    /// This process's peer name.
    pub local: Arc<str>,
    /// The listener's address.
    pub bind: SocketAddr,
    /// The other peers, in the order written.
    pub remotes: Vec<Peer>,
    /// Allowed source prefixes (address, prefix length).
    pub allow: Vec<(IpAddr, u8)>,
}

impl Section {
    /// Whether a connection from `ip` may speak to the listener.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allow.iter().any(|&(net, len)| in_prefix(ip, net, len))
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_prefix(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

fn addr(source: &SourceMap, s: &Spanned<String>, what: &str) -> Result<SocketAddr, ConfigError> {
    let text = s.get_ref();
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    let bad = |why: String| {
        source.error(
            s.span(),
            format!("invalid {what} {text:?}: {why}; expected HOST:PORT, e.g. \"127.0.0.1:10000\""),
        )
    };
    if !text.contains(':') {
        return Err(bad("no port".into()));
    }
    text.to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("the host resolves to no address".into()))
}

fn prefix(source: &SourceMap, s: &Spanned<String>) -> Result<(IpAddr, u8), ConfigError> {
    let text = s.get_ref().trim();
    let bad = || {
        source.error(
            s.span(),
            format!("invalid allow entry {text:?}: expected an address or a CIDR prefix, e.g. \"10.0.0.0/8\" or \"192.0.2.7\""),
        )
    };
    let (ip, len) = match text.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (text, None),
    };
    let ip = canonical(ip.parse::<IpAddr>().map_err(|_| bad())?);
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(bad)?,
        None => max,
    };
    Ok((ip, len))
}

/// Checks every `[[peers]]` section.
pub fn build(
    raw: &[Spanned<RawPeers>],
    source: &SourceMap,
) -> Result<Vec<Arc<Section>>, ConfigError> {
    let mut out: Vec<Arc<Section>> = Vec::with_capacity(raw.len());
    for p in raw {
        let p = p.get_ref();
        super::check_name(source, &p.name, "peers")?;
        if out.iter().any(|s| &*s.name == p.name.get_ref()) {
            return Err(source.error(
                p.name.span(),
                format!(
                    "duplicate peers section {:?}; every [[peers]] needs a unique name",
                    p.name.get_ref()
                ),
            ));
        }
        super::check_name(source, &p.local, "local peer")?;
        let mut names = HashSet::new();
        let mut local_addr = None;
        let mut remotes = Vec::new();
        for peer in &p.peer {
            let peer = peer.get_ref();
            super::check_name(source, &peer.name, "peer")?;
            let name = peer.name.get_ref();
            if !names.insert(name.as_str()) {
                return Err(source.error(
                    peer.name.span(),
                    format!(
                        "duplicate peer {name:?} in peers section {:?}",
                        p.name.get_ref()
                    ),
                ));
            }
            let a = addr(source, &peer.addr, "peer address")?;
            if name == p.local.get_ref() {
                local_addr = Some(a);
            } else {
                if remotes.iter().any(|r: &Peer| r.addr == a) {
                    return Err(source.error(
                        peer.addr.span(),
                        format!("peer {name:?} has the same address {a} as another peer"),
                    ));
                }
                remotes.push(Peer {
                    name: Arc::from(name.as_str()),
                    addr: a,
                });
            }
        }
        let Some(local_addr) = local_addr else {
            let listed: Vec<&str> = p
                .peer
                .iter()
                .map(|x| x.get_ref().name.get_ref().as_str())
                .collect();
            return Err(source.error(
                p.local.span(),
                format!(
                    "the local peer {:?} is not in the peer list of peers section {:?} (listed: {}); add {{ name = {:?}, addr = \"HOST:PORT\" }} as in HAProxy, where the local peer's line gives its address",
                    p.local.get_ref(),
                    p.name.get_ref(),
                    if listed.is_empty() { "none".to_string() } else { listed.join(", ") },
                    p.local.get_ref()
                ),
            ));
        };
        let bind = match &p.bind {
            Some(b) => addr(source, b, "peers bind address")?,
            None => local_addr,
        };
        if let Some(other) = out.iter().find(|s| s.bind == bind) {
            return Err(source.error(
                p.bind.as_ref().map_or_else(|| p.name.span(), Spanned::span),
                format!(
                    "peers section {:?} binds {bind}, as peers section {:?} does",
                    p.name.get_ref(),
                    other.name
                ),
            ));
        }
        let allow = match &p.allow {
            Some(list) => list
                .iter()
                .map(|s| prefix(source, s))
                .collect::<Result<Vec<_>, _>>()?,
            // The remote peers, and this host: a binary upgrade's old
            // process connects to the new one as the local peer (from the
            // local address, or loopback when the listener binds all addresses).
            None => {
                let mut ips: Vec<IpAddr> = remotes.iter().map(|r| r.addr.ip()).collect();
                ips.push(local_addr.ip());
                if bind.ip().is_unspecified() {
                    ips.extend(["127.0.0.1", "::1"].map(|a| a.parse().unwrap_or(bind.ip())));
                }
                ips.into_iter()
                    .map(|ip| {
                        let ip = canonical(ip);
                        (ip, if ip.is_ipv4() { 32 } else { 128 })
                    })
                    .collect()
            }
        };
        out.push(Arc::new(Section {
            name: Arc::from(p.name.get_ref().as_str()),
            local: Arc::from(p.local.get_ref().as_str()),
            bind,
            remotes,
            allow,
        }));
    }
    Ok(out)
}

/// Checks each table's `peers = "..."` against the sections.
pub fn check_tables(
    tables: &[Spanned<RawStickTable>],
    sections: &[Arc<Section>],
    source: &SourceMap,
) -> Result<(), ConfigError> {
    let mut wire: Vec<(&str, &str, &str)> = Vec::new();
    for t in tables {
        let raw = t.get_ref();
        if let Some(n) = &raw.peers_name {
            let Some(p) = &raw.peers else {
                return Err(source.error(
                    n.span(),
                    "peers_name is the table's name in a [[peers]] section: set the table's peers too",
                ));
            };
            let name = n.get_ref();
            if name.is_empty()
                || name.len() > 255
                || name.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(source.error(
                    n.span(),
                    format!("invalid peers_name {name:?}: expected 1 to 255 characters without spaces, e.g. \"/{}\" for a table HAProxy declares in its peers section {:?}", raw.name.get_ref(), p.get_ref()),
                ));
            }
        }
        let Some(p) = &raw.peers else {
            continue;
        };
        let name = raw.name.get_ref().as_str();
        let w = raw
            .peers_name
            .as_ref()
            .map_or(name, |n| n.get_ref().as_str());
        if let Some((_, other, _)) = wire.iter().find(|(s, _, x)| *s == p.get_ref() && *x == w) {
            return Err(source.error(
                raw.peers_name.as_ref().map_or_else(|| raw.name.span(), Spanned::span),
                format!(
                    "stick_table {name:?} and stick_table {other:?} are both called {w:?} in peers section {:?}; give one a different peers_name",
                    p.get_ref()
                ),
            ));
        }
        wire.push((p.get_ref(), name, w));
        if !sections.iter().any(|s| &*s.name == p.get_ref()) {
            let known: Vec<&str> = sections.iter().map(|s| &*s.name).collect();
            return Err(source.error(
                p.span(),
                format!(
                    "unknown peers section {:?}; {}",
                    p.get_ref(),
                    if known.is_empty() {
                        "declare it with [[peers]]".to_string()
                    } else {
                        format!("declared: {}", known.join(", "))
                    }
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match() {
        let s = Section {
            name: "p".into(),
            local: "a".into(),
            bind: "127.0.0.1:1".parse().expect("addr"),
            remotes: Vec::new(),
            allow: vec![
                ("10.0.0.0".parse().expect("ip"), 8),
                ("2001:db8::".parse().expect("ip"), 32),
                ("192.0.2.7".parse().expect("ip"), 32),
            ],
        };
        assert!(s.allows("10.1.2.3".parse().expect("ip")));
        assert!(s.allows("::ffff:10.1.2.3".parse().expect("ip")));
        assert!(!s.allows("11.0.0.1".parse().expect("ip")));
        assert!(s.allows("2001:db8:1::5".parse().expect("ip")));
        assert!(s.allows("192.0.2.7".parse().expect("ip")));
        assert!(!s.allows("192.0.2.8".parse().expect("ip")));
    }
}
