//! Tunnels opened by a request: an HTTP/1.1 `Upgrade` (WebSocket, or
//! another protocol the frontend's `upgrades` lists), WebSockets over
//! HTTP/2 (RFC 8441 extended CONNECT, forwarded to the server as an
//! HTTP/1.1 upgrade as Envoy does), and `CONNECT` forward tunnels to the
//! destinations of the frontend's `connect.allow`.
//!
//! The request goes through the request rules and plugins like any other;
//! an upgrade's `101` goes through the response rules (a non-`101` answer
//! is an ordinary response). Then [`Tunnel::run`] splices the client and
//! the server with `tunnel.rs` until either side closes or the tunnel idle
//! timeout passes, and the exchange is logged once, with the bytes moved
//! both ways and HAProxy's termination state.
//!
//! The client side of an HTTP/1 tunnel comes back from hyper's connection
//! once it wrote the `101` (or the `200` to a CONNECT): `proxy/conn.rs`
//! takes the socket and what hyper had read past the request head
//! ([`Rewound`]) and runs the [`Tunnel`] the handler left in the connection
//! state. An HTTP/2 tunnel is a stream: the handler runs it on a task of
//! its own with hyper's upgraded stream.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::header::{self, HeaderValue};
use http::{Method, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::error::ProxyError;
use super::pool::PooledConn;
use super::stats::FrontendStats;
use super::tunnel::{self, End, Idle, Outcome};
use super::worker::ShutdownSignal;
use crate::config::tunnels::{Dest, HostPattern, Tunnels};

/// What a request asks to open, settled before the rules run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// HTTP/1.1 `Upgrade` to a protocol the frontend allows.
    Upgrade,
    /// HTTP/2 extended CONNECT (RFC 8441): the request was turned into the
    /// HTTP/1.1 upgrade the server will see (`GET`, `Upgrade`, `Connection`).
    Extended,
    /// `CONNECT host:port`: a forward tunnel.
    Connect,
}

/// Whether `headers` hold `token` in a comma-separated list header `name`.
fn has_token(headers: &http::HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// What the request in `parts` asks to open, given the frontend's
/// `tunnels`. An HTTP/2 extended CONNECT for an allowed protocol is turned
/// into the HTTP/1.1 upgrade request the rules and the server see (as
/// Envoy's codec does), with a `Sec-WebSocket-Key` made up when a WebSocket
/// client sent none (RFC 8441 drops it; HTTP/1.1 servers require it).
pub fn classify(
    parts: &mut http::request::Parts,
    tunnels: &Tunnels,
) -> Result<Option<Ask>, ProxyError> {
    if parts.method == Method::CONNECT {
        if let Some(protocol) = parts.extensions.get::<hyper::ext::Protocol>() {
            let protocol = protocol.as_str().to_string();
            if !tunnels.allows_upgrade(&protocol) {
                return Err(ProxyError::ProtocolNotAllowed(protocol));
            }
            let value = HeaderValue::from_str(&protocol)
                .map_err(|_| ProxyError::ProtocolNotAllowed(protocol.clone()))?;
            parts.method = Method::GET;
            parts.headers.insert(header::UPGRADE, value);
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if protocol.eq_ignore_ascii_case("websocket")
                && !parts.headers.contains_key(header::SEC_WEBSOCKET_KEY)
            {
                parts
                    .headers
                    .insert(header::SEC_WEBSOCKET_KEY, websocket_key());
            }
            return Ok(Some(Ask::Extended));
        }
        if tunnels.connect.is_none() {
            // Refused with 405 by `head::prepare_request`.
            return Ok(None);
        }
        let Some(authority) = parts.uri.authority() else {
            return Err(ProxyError::ConnectTarget(
                "the target must be host:port (authority form)",
            ));
        };
        if authority.port_u16().is_none() {
            return Err(ProxyError::ConnectTarget("the target has no port"));
        }
        if parts
            .uri
            .path_and_query()
            .is_some_and(|p| !p.as_str().is_empty() && p.as_str() != "/")
        {
            return Err(ProxyError::ConnectTarget(
                "the target must be host:port, without a path",
            ));
        }
        return Ok(Some(Ask::Connect));
    }
    if parts.version != Version::HTTP_11
        || !has_token(&parts.headers, header::CONNECTION, "upgrade")
    {
        return Ok(None);
    }
    let allowed = parts.headers.get_all(header::UPGRADE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|p| tunnels.allows_upgrade(p.trim())))
    });
    Ok(allowed.then_some(Ask::Upgrade))
}

/// A `Sec-WebSocket-Key` for a server: 16 bytes, base64 (RFC 6455 §4.1).
/// Only a nonce the server echoes back hashed (it guards against caches
/// replaying answers), so the process's hash seed plus a clock reading and
/// a counter are enough.
fn websocket_key() -> HeaderValue {
    use base64::Engine as _;
    use std::hash::{BuildHasher, Hasher};
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let state = std::collections::hash_map::RandomState::new();
    let mut raw = [0u8; 16];
    for (i, chunk) in raw.chunks_mut(8).enumerate() {
        let mut h = state.build_hasher();
        h.write_u64(seq);
        h.write_u128(now);
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    let text = base64::engine::general_purpose::STANDARD.encode(raw);
    HeaderValue::from_str(&text)
        .unwrap_or_else(|_| HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

/// Opens the TCP connection of a CONNECT to `authority` if `allow` lets it:
/// a name is allowed by a name pattern whatever it resolves to, else by an
/// address pattern matching the address connected to; an address literal
/// by an address pattern. Every address that is allowed is tried in turn
/// within `timeout` (resolution included).
pub async fn dial(
    authority: &http::uri::Authority,
    allow: &[Dest],
    timeout: Duration,
) -> Result<TcpStream, ProxyError> {
    let target = authority.as_str().to_string();
    let Some(port) = authority.port_u16() else {
        return Err(ProxyError::ConnectTarget("the target has no port"));
    };
    let host = authority.host();
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let deadline = Instant::now() + timeout;
    let candidates: Vec<SocketAddr> = if let Ok(ip) = bare.parse::<IpAddr>() {
        let addr = SocketAddr::new(ip, port);
        if !allow.iter().any(|d| d.allows_addr(ip, port)) {
            return Err(ProxyError::ConnectDenied(target));
        }
        vec![addr]
    } else {
        let name = bare.trim_end_matches('.').to_ascii_lowercase();
        let by_name = allow.iter().any(|d| d.allows_name(&name, port));
        let by_addr = allow.iter().any(|d| {
            d.ports.0 <= port && port <= d.ports.1 && matches!(d.host, HostPattern::Net(..))
        });
        if !by_name && !by_addr {
            return Err(ProxyError::ConnectDenied(target));
        }
        let resolved =
            match tokio::time::timeout_at(deadline, tokio::net::lookup_host((name.as_str(), port)))
                .await
            {
                Ok(Ok(addrs)) => addrs,
                Ok(Err(e)) => {
                    return Err(ProxyError::ConnectFailed {
                        target,
                        why: format!("cannot resolve the name: {e}"),
                    });
                }
                Err(_) => return Err(ProxyError::ConnectTimeout(target, timeout)),
            };
        let list: Vec<SocketAddr> = resolved
            .filter(|a| by_name || allow.iter().any(|d| d.allows_addr(a.ip(), port)))
            .collect();
        if list.is_empty() {
            return Err(ProxyError::ConnectDenied(target));
        }
        list
    };
    let mut last = String::from("no address");
    for addr in candidates {
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = format!("connect to {addr} failed: {e}"),
            Err(_) => return Err(ProxyError::ConnectTimeout(target, timeout)),
        }
    }
    Err(ProxyError::ConnectFailed { target, why: last })
}

/// A byte stream both ways (either side of a tunnel).
pub trait Duplex: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Duplex for T {}

/// A client stream with the bytes already read from it (by hyper past the
/// request head, or before hyper took over) served first.
pub struct Rewound<S> {
    prefix: Bytes,
    io: S,
}

impl<S> Rewound<S> {
    /// `io` with `read` (what hyper buffered) then `unread` (what it had
    /// not taken yet) in front of it.
    pub fn new(read: Bytes, unread: Bytes, io: S) -> Rewound<S> {
        let prefix = match (read.is_empty(), unread.is_empty()) {
            (_, true) => read,
            (true, false) => unread,
            (false, false) => {
                let mut all = Vec::with_capacity(read.len() + unread.len());
                all.extend_from_slice(&read);
                all.extend_from_slice(&unread);
                Bytes::from(all)
            }
        };
        Rewound { prefix, io }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(self.prefix.get(..n).unwrap_or(&[]));
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The server side of a tunnel.
pub enum ServerSide {
    /// The server answered `101` (or `200` to an extended CONNECT on an
    /// HTTP/2 connection): its side comes from hyper's upgrade.
    Upgrade { on: OnUpgrade, conn: Carrier },
    /// A CONNECT's destination.
    Stream(TcpStream),
}

/// What carries an upgraded exchange to the server.
pub enum Carrier {
    /// An HTTP/1.1 connection: its socket becomes the tunnel's.
    H1(PooledConn),
    /// A stream on a multiplexed HTTP/2 connection (RFC 8441): held while
    /// the tunnel lives, so that it counts against the connection's streams.
    H2(super::upstream_h2::H2Stream),
}

impl Carrier {
    /// The tunnel could not open: an HTTP/1.1 connection is closed (its
    /// exchange is not over); an HTTP/2 stream is simply released (hyper
    /// resets it when its upgrade is dropped).
    pub fn discard(self) {
        match self {
            Carrier::H1(c) => c.discard(),
            Carrier::H2(_) => {}
        }
    }
}

/// What is told how a tunnel ended (the exchange's log and counters).
pub trait TunnelEnd {
    /// The tunnel is over: `out` says what it moved and how it ended.
    fn end(self: Box<Self>, out: Outcome);
}

/// A tunnel answered and waiting for its client side.
pub struct Tunnel {
    pub end: Box<dyn TunnelEnd>,
    pub server: ServerSide,
    pub idle: Idle,
    pub stats: Arc<FrontendStats>,
    /// A CONNECT tunnel (else an upgrade), for the counters.
    pub connect: bool,
    pub stop: ShutdownSignal,
}

/// Counts an open tunnel while it lives.
struct Open(Arc<FrontendStats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.tunnels_current.fetch_sub(1, Relaxed);
    }
}

impl Tunnel {
    /// Splices `client` with the server until either closes, one fails, the
    /// idle limit passes or the worker shuts down; then ends the exchange.
    pub async fn run(self, mut client: Box<dyn Duplex>) {
        let Tunnel {
            end,
            server,
            idle,
            stats,
            connect,
            mut stop,
        } = self;
        // An HTTP/2 tunnel's stream stays taken on its connection while
        // the tunnel moves bytes.
        let mut held = None;
        let mut server: Box<dyn Duplex> = match server {
            ServerSide::Stream(s) => Box::new(s),
            // hyper hands the socket over once its connection task saw the
            // 101; bounded all the same.
            ServerSide::Upgrade { on, conn } => match tokio::time::timeout(idle.server, on).await {
                Ok(Ok(up)) => {
                    match conn {
                        Carrier::H1(c) => c.into_tunnel(),
                        Carrier::H2(stream) => held = Some(stream),
                    }
                    Box::new(TokioIo::new(up))
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "the server's upgraded connection was lost");
                    conn.discard();
                    end.end(failed(End::ServerError));
                    return;
                }
                Err(_) => {
                    conn.discard();
                    end.end(failed(End::ServerTimeout));
                    return;
                }
            },
        };
        if connect {
            stats.connects.fetch_add(1, Relaxed);
        } else {
            stats.upgrades.fetch_add(1, Relaxed);
        }
        stats.tunnels_current.fetch_add(1, Relaxed);
        let open = Open(Arc::clone(&stats));
        let out = tunnel::splice(&mut client, &mut server, &[], idle, async move {
            stop.wait().await;
        })
        .await;
        drop(open);
        drop(held);
        end.end(out);
    }

    /// The client side never came (its connection failed after the
    /// answer): the exchange ends with nothing moved.
    pub fn abandon(self) {
        if let ServerSide::Upgrade { conn, .. } = self.server {
            conn.discard();
        }
        self.end.end(failed(End::ClientError));
    }
}

fn failed(end: End) -> Outcome {
    Outcome {
        to_server: 0,
        to_client: 0,
        end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::Request<()>) -> http::request::Parts {
        req.into_parts().0
    }

    #[test]
    fn upgrades_need_an_allowed_token_and_connection_upgrade() {
        let t = Tunnels::default();
        let mut p = parts(
            http::Request::get("/ws")
                .header("connection", "keep-alive, Upgrade")
                .header("upgrade", "WebSocket")
                .body(())
                .expect("req"),
        );
        assert_eq!(classify(&mut p, &t).ok(), Some(Some(Ask::Upgrade)));
        let mut p = parts(
            http::Request::get("/ws")
                .header("upgrade", "websocket")
                .body(())
                .expect("req"),
        );
        assert_eq!(
            classify(&mut p, &t).ok(),
            Some(None),
            "no Connection: upgrade"
        );
        let mut p = parts(
            http::Request::get("/ws")
                .header("connection", "upgrade")
                .header("upgrade", "foo/2")
                .body(())
                .expect("req"),
        );
        assert_eq!(classify(&mut p, &t).ok(), Some(None), "foo is not allowed");
        let mut p = parts(
            http::Request::get("/ws")
                .version(Version::HTTP_10)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(())
                .expect("req"),
        );
        assert_eq!(
            classify(&mut p, &t).ok(),
            Some(None),
            "HTTP/1.0 cannot upgrade"
        );
    }

    #[test]
    fn connect_needs_the_setting_and_a_port() {
        let mut t = Tunnels::default();
        let mut p = parts(
            http::Request::connect("a.example:443")
                .body(())
                .expect("req"),
        );
        assert_eq!(classify(&mut p, &t).ok(), Some(None), "405 later");
        t.connect = Some(vec![]);
        assert_eq!(classify(&mut p, &t).ok(), Some(Some(Ask::Connect)));
        let mut p = parts(http::Request::connect("a.example").body(()).expect("req"));
        assert!(matches!(
            classify(&mut p, &t),
            Err(ProxyError::ConnectTarget(_))
        ));
    }

    #[test]
    fn rewound_serves_the_prefix_first() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        rt.block_on(async {
            use tokio::io::AsyncReadExt;
            let (mut a, b) = tokio::io::duplex(64);
            tokio::io::AsyncWriteExt::write_all(&mut a, b"3")
                .await
                .expect("write");
            drop(a);
            let mut r = Rewound::new(Bytes::from_static(b"1"), Bytes::from_static(b"2"), b);
            let mut out = Vec::new();
            r.read_to_end(&mut out).await.expect("read");
            assert_eq!(out, b"123");
        });
    }
}
