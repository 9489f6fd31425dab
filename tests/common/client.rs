//! Clients of the proxy: hyper HTTP/1.1 ([`H1`]) and h2c ([`H2`]) with
//! collected responses, HTTP over a Unix socket, and raw TCP (write any
//! bytes, read one response off the wire).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::{Body, BoxError, Echo, IO_TIMEOUT, empty, find, within};

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// A response with its body collected.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
    /// The backend's echo; panics with the body if it is not one.
    pub fn echo(&self) -> Echo {
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(v) if v.get("server").is_some() => Echo(v),
            _ => panic!(
                "expected a backend echo, got {} with body {:?}",
                self.status,
                self.text()
            ),
        }
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

async fn collect_resp(resp: Response<Incoming>) -> Result<Resp, BoxError> {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Resp {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// A request builder for `path` with a Host header naming `addr`.
pub fn request(method: Method, addr: SocketAddr, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
}

pub fn get_req(addr: SocketAddr, path: &str) -> Request<Body> {
    request(Method::GET, addr, path)
        .body(empty())
        .expect("build request")
}

/// One HTTP/1.1 client connection (hyper).
pub struct H1 {
    pub addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Body>,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> H1 {
        let stream = within("connect to proxy", IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        H1::handshake(addr, stream).await
    }

    /// Connects from a chosen local IP (e.g. 127.0.0.2).
    pub async fn connect_from(local: IpAddr, addr: SocketAddr) -> H1 {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::new(local, 0))
            .unwrap_or_else(|e| panic!("bind {local}: {e}"));
        let stream = within("connect to proxy", IO_TIMEOUT, sock.connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connect {addr} from {local}: {e}"));
        H1::handshake(addr, stream).await
    }

    async fn handshake(addr: SocketAddr, stream: TcpStream) -> H1 {
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("http1 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        H1 { addr, sender }
    }

    /// Sends a request and returns the response head with a streaming body.
    pub async fn try_send_streaming(
        &mut self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, BoxError> {
        within("client connection ready", IO_TIMEOUT, self.sender.ready()).await?;
        Ok(within("response head", IO_TIMEOUT, self.sender.send_request(req)).await?)
    }

    pub async fn try_send(&mut self, req: Request<Body>) -> Result<Resp, BoxError> {
        let resp = self.try_send_streaming(req).await?;
        within("response body", IO_TIMEOUT, collect_resp(resp)).await
    }

    pub async fn send(&mut self, req: Request<Body>) -> Resp {
        let what = format!("{} {}", req.method(), req.uri());
        self.try_send(req)
            .await
            .unwrap_or_else(|e| panic!("{what} via {}: {e:?}", self.addr))
    }

    pub async fn get(&mut self, path: &str) -> Resp {
        let req = get_req(self.addr, path);
        self.send(req).await
    }
}

/// GET `path` on a fresh HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    H1::connect(addr).await.get(path).await
}

/// One h2c (prior knowledge) client connection; clones share it.
#[derive(Clone)]
pub struct H2 {
    pub addr: SocketAddr,
    sender: hyper::client::conn::http2::SendRequest<Body>,
}

impl H2 {
    pub async fn connect(addr: SocketAddr) -> H2 {
        let stream = within("connect to proxy", IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let _ = stream.set_nodelay(true);
        let (sender, conn) = within(
            "h2 handshake",
            IO_TIMEOUT,
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
        )
        .await
        .expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        H2 { addr, sender }
    }

    pub async fn send(&mut self, req: Request<Body>) -> Resp {
        let what = format!("{} {}", req.method(), req.uri());
        let res: Result<Resp, BoxError> = async {
            within("h2 ready", IO_TIMEOUT, self.sender.ready()).await?;
            let resp = within(
                "h2 response head",
                IO_TIMEOUT,
                self.sender.send_request(req),
            )
            .await?;
            within("h2 response body", IO_TIMEOUT, collect_resp(resp)).await
        }
        .await;
        res.unwrap_or_else(|e| panic!("h2 {what}: {e:?}"))
    }

    /// A request builder with an absolute URI (HTTP/2 needs scheme and authority).
    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .version(Version::HTTP_2)
            .uri(format!("http://{}{path}", self.addr))
    }
}

// ---------------------------------------------------------------------------
// Raw TCP
// ---------------------------------------------------------------------------

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one HTTP/1.x response from `s` (Content-Length, chunked or until EOF).
/// Bytes past the end of that response are dropped (no pipelining).
pub async fn read_response(s: &mut TcpStream, limit: Duration) -> Result<RawResp, String> {
    tokio::time::timeout(limit, read_response_inner(s))
        .await
        .map_err(|_| format!("no complete response within {limit:?}"))?
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, String> {
    let mut chunk = [0u8; 16 * 1024];
    let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

async fn read_response_inner(s: &mut TcpStream) -> Result<RawResp, String> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if read_more(s, &mut buf).await? == 0 {
            return Err(format!(
                "connection closed before a response head; got {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let hdr = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if hdr("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&rest, b"\r\n") {
                    break i;
                }
                let mut tmp = std::mem::take(&mut rest);
                if read_more(s, &mut tmp).await? == 0 {
                    return Err("EOF inside chunked body".into());
                }
                rest = tmp;
            };
            let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            rest.drain(..line_end + 2);
            if size == 0 {
                // Trailers until an empty line.
                loop {
                    if let Some(i) = find(&rest, b"\r\n") {
                        let empty = i == 0;
                        rest.drain(..i + 2);
                        if empty {
                            break;
                        }
                        continue;
                    }
                    let mut tmp = std::mem::take(&mut rest);
                    if read_more(s, &mut tmp).await? == 0 {
                        return Err("EOF inside chunked trailers".into());
                    }
                    rest = tmp;
                }
                break;
            }
            while rest.len() < size + 2 {
                let mut tmp = std::mem::take(&mut rest);
                if read_more(s, &mut tmp).await? == 0 {
                    return Err("EOF inside chunk".into());
                }
                rest = tmp;
            }
            body.extend_from_slice(&rest[..size]);
            rest.drain(..size + 2);
        }
        body
    } else if let Some(cl) = hdr("content-length") {
        let n: usize = cl
            .parse()
            .map_err(|_| format!("bad content-length {cl:?}"))?;
        while rest.len() < n {
            let mut tmp = std::mem::take(&mut rest);
            if read_more(s, &mut tmp).await? == 0 {
                return Err("EOF inside body".into());
            }
            rest = tmp;
        }
        rest.truncate(n);
        rest
    } else {
        while read_more(s, &mut rest).await? > 0 {}
        rest
    };
    Ok(RawResp {
        status,
        head,
        headers,
        body,
    })
}

/// Connects, writes `bytes`, reads one response.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> (TcpStream, RawResp) {
    let mut s = within("raw connect", IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    within("raw write", IO_TIMEOUT, s.write_all(bytes))
        .await
        .expect("raw write");
    let resp = read_response(&mut s, IO_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("raw request to {addr}: {e}"));
    (s, resp)
}

/// Waits until the peer closes `s` (EOF or reset); false if still open after `limit`.
pub async fn wait_closed(s: &mut TcpStream, limit: Duration) -> bool {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
    false
}

// ---------------------------------------------------------------------------
// HTTP over a Unix socket
// ---------------------------------------------------------------------------

/// Sends `req` over a fresh connection to the Unix socket at `path`.
pub async fn unix_send(path: &Path, req: Request<Body>) -> Resp {
    let stream = within(
        "connect to the admin socket",
        IO_TIMEOUT,
        tokio::net::UnixStream::connect(path),
    )
    .await
    .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http1 handshake over the Unix socket");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let what = format!("{} {} via {}", req.method(), req.uri(), path.display());
    let res: Result<Resp, BoxError> = async {
        let resp = within("response head", IO_TIMEOUT, sender.send_request(req)).await?;
        within("response body", IO_TIMEOUT, collect_resp(resp)).await
    }
    .await;
    res.unwrap_or_else(|e| panic!("{what}: {e:?}"))
}

/// Reads from a raw socket until `want` bytes arrived, the peer closed or
/// 10 s passed; what arrived.
pub async fn read_n(s: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}
