//! The harness's network side: bodies as hyper hands them to the proxy
//! (`Incoming`, made over an in-memory HTTP/1.1 connection) and the canned
//! upstream servers that answer plugins' HTTP calls on real sockets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// Longest body the canned servers read from a plugin's call.
const MAX_CALL_BODY: usize = 1 << 20;

/// An HTTP answer: the fake server's response to the request, or a canned
/// upstream's answer to a plugin's HTTP call.
#[derive(Debug, Clone)]
pub struct Canned {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Canned {
    /// An answer with `status`, no headers and an empty body.
    pub fn status(status: u16) -> Canned {
        Canned {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// `200 OK` with an empty body.
    pub fn ok() -> Canned {
        Canned::status(200)
    }

    /// Adds a header (an invalid name or value is ignored).
    pub fn header(mut self, name: &str, value: &str) -> Canned {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            self.headers.append(n, v);
        }
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Canned {
        self.body = body.into();
        self
    }
}

impl Default for Canned {
    fn default() -> Canned {
        Canned::ok()
    }
}

/// A request a canned upstream received (a plugin's HTTP call).
#[derive(Debug, Clone)]
pub struct Call {
    /// The backend the call went to (the Proxy-Wasm "cluster").
    pub upstream: String,
    pub method: Method,
    /// Path and query.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// `data` as the unread body of a message the proxy received: hyper's
/// `Incoming`, sent over an in-memory HTTP/1.1 connection with a
/// `Content-Length`, so body hooks see it exactly as from a socket.
/// Must run inside the harness's `LocalSet`.
pub(super) async fn incoming(data: Bytes) -> Result<Incoming, String> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let svc = service_fn(move |_req: Request<Incoming>| {
        let data = data.clone();
        async move { Ok::<_, Infallible>(Response::new(Full::new(data))) }
    });
    tokio::task::spawn_local(
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server_io), svc),
    );
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_local(conn);
    let req = Request::get("/")
        .header(http::header::HOST, "harness")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.into_body())
}

/// Starts a canned upstream for `backend` on a loopback port: every request
/// is recorded in `calls` and answered with `answer`.
pub(super) async fn canned_server(
    backend: String,
    answer: Canned,
    calls: Arc<Mutex<Vec<Call>>>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let answer = Arc::new(answer);
    tokio::task::spawn_local(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let backend = backend.clone();
            let answer = Arc::clone(&answer);
            let calls = Arc::clone(&calls);
            let svc = service_fn(move |req: Request<Incoming>| {
                let backend = backend.clone();
                let answer = Arc::clone(&answer);
                let calls = Arc::clone(&calls);
                async move {
                    let (parts, body) = req.into_parts();
                    let body = http_body_util::Limited::new(body, MAX_CALL_BODY)
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    if let Ok(mut c) = calls.lock() {
                        c.push(Call {
                            upstream: backend,
                            method: parts.method,
                            path: parts
                                .uri
                                .path_and_query()
                                .map_or_else(|| "/".to_string(), |p| p.to_string()),
                            headers: parts.headers,
                            body,
                        });
                    }
                    let mut resp = Response::new(Full::new(answer.body.clone()));
                    *resp.status_mut() = answer.status;
                    *resp.headers_mut() = answer.headers.clone();
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::task::spawn_local(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    Ok(addr)
}
