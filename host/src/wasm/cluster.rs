//! A backend as Proxy-Wasm's calls see it: Envoy's *cluster*. A plugin's
//! `proxy_http_call` and `proxy_grpc_call`/`proxy_grpc_stream` name a
//! backend; each call goes to one of its servers, taken in turn among those
//! that take traffic (up by their health checks, not in maintenance or
//! drain, a weight above zero: the state the balancer reads), over TLS when
//! the server has `tls`, within the backend's connect timeout. With no such
//! server the call fails as Envoy's does: an HTTP call gets a `503` "no
//! healthy upstream", a gRPC call `UNAVAILABLE`.
//!
//! Servers that follow the connection's destination (`0.0.0.0:0`, port 0,
//! `+N`) have no address of their own and are not called.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::tls::client::{Target, Upstream};

/// What Envoy answers a call to a cluster without a usable host.
pub const NO_HEALTHY_UPSTREAM: &str = "no healthy upstream";

/// One server of a [`Cluster`].
#[derive(Debug, Clone)]
pub struct Member {
    /// Its index among the backend's servers (its live state's).
    index: usize,
    pub addr: SocketAddr,
    /// The address as written (the TLS name when `sni` is the address).
    pub addr_text: String,
    pub tls: Option<Arc<Upstream>>,
}

impl Member {
    /// The TLS target of a call with `host` as its authority, and `alpn`
    /// offered; `None` for a plain-text server. `Err` when a TLS server has
    /// no name to send (SNI from a Host the call does not have).
    pub fn tls_target(&self, host: Option<&str>, alpn: &[&[u8]]) -> Result<Option<Target>, String> {
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        let target = tls
            .target(&self.addr_text, host.or(Some(&self.addr_text)))
            .ok_or_else(|| format!("no TLS server name for {}", self.addr_text))?;
        let mut config = (*target.config).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Some(Target {
            config: Arc::new(config),
            name: target.name,
        }))
    }
}

/// A backend's servers for plugin calls, with the live state that says
/// which take traffic.
pub struct Cluster {
    /// The backend's name.
    pub name: String,
    /// The backend's index in the runtime (its live state's).
    backend: usize,
    members: Vec<Member>,
    /// `None` (unit tests): every member is taken as up.
    live: Option<crate::servers::Backends>,
    next: AtomicUsize,
    /// The backend's `timeout.connect`.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("members", &self.members)
            .finish()
    }
}

impl Cluster {
    /// The cluster of backend `index` (`b`), reading server state from
    /// `live`; `None` when no server has an address of its own.
    pub fn of_backend(
        index: usize,
        b: &crate::config::Backend,
        live: Option<crate::servers::Backends>,
    ) -> Option<Cluster> {
        let members: Vec<Member> = b
            .servers
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.follows_dst())
            .map(|(i, s)| Member {
                index: i,
                addr: s.addr,
                addr_text: s.addr_text.clone(),
                tls: s.tls.clone(),
            })
            .collect();
        if members.is_empty() {
            return None;
        }
        Some(Cluster {
            name: b.name.to_string(),
            backend: index,
            members,
            live,
            next: AtomicUsize::new(0),
            connect_timeout: b.connect_timeout,
        })
    }

    /// A cluster of fixed members, all taken as up (unit tests).
    pub fn fixed(name: &str, addrs: &[SocketAddr], connect_timeout: Duration) -> Cluster {
        Cluster {
            name: name.to_string(),
            backend: 0,
            members: addrs
                .iter()
                .enumerate()
                .map(|(i, a)| Member {
                    index: i,
                    addr: *a,
                    addr_text: a.to_string(),
                    tls: None,
                })
                .collect(),
            live: None,
            next: AtomicUsize::new(0),
            connect_timeout,
        }
    }

    fn takes_traffic(&self, m: &Member) -> bool {
        match &self.live {
            None => true,
            Some(live) => live
                .get(self.backend)
                .and_then(|b| b.servers.get(m.index))
                .is_some_and(|s| s.lb_weight() > 0),
        }
    }

    /// The next member taking traffic, in turn; `None` when none does.
    pub fn pick(&self) -> Option<&Member> {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Relaxed);
        (0..n)
            .filter_map(|i| self.members.get(start.wrapping_add(i) % n))
            .find(|m| self.takes_traffic(m))
    }
}

/// A connection a call speaks over: TCP, or TLS over it.
pub trait CallIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> CallIo for T {}

/// Connects to `m` (TLS to `tls` when given) within `timeout`: the stream
/// and the protocol ALPN settled, if any.
pub async fn connect(
    m: &Member,
    tls: Option<Target>,
    timeout: Duration,
) -> Result<(Pin<Box<dyn CallIo>>, Option<Vec<u8>>), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let tcp = match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(m.addr)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("connect to {} failed: {e}", m.addr)),
        Err(_) => return Err(format!("connect to {} timed out", m.addr)),
    };
    let _ = tcp.set_nodelay(true);
    let Some(t) = tls else {
        return Ok((Box::pin(tcp), None));
    };
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(&t.config)).connect(t.name.clone(), tcp);
    let tls = tokio::time::timeout_at(deadline, tls)
        .await
        .map_err(|_| format!("TLS handshake with {} timed out", m.addr))?
        .map_err(|e| format!("TLS handshake with {} failed: {e}", m.addr))?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    Ok((Box::pin(tls), alpn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_taken_in_turn() {
        let a: SocketAddr = ([127, 0, 0, 1], 1).into();
        let b: SocketAddr = ([127, 0, 0, 1], 2).into();
        let c = Cluster::fixed("x", &[a, b], Duration::from_secs(1));
        let picked: Vec<SocketAddr> = (0..4).filter_map(|_| c.pick().map(|m| m.addr)).collect();
        assert_eq!(picked, [a, b, a, b]);
    }
}
