//! gRPC servers for the tests: the real one (Python `grpcio`, run from
//! tests/wasm_grpc_peer.py with Debian's interpreter) and a hyper HTTP/2 server
//! that misbehaves on purpose (resets, compressed messages, HTTP errors).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{BoxError, free_addr};

/// Fails (never skips) when the Python gRPC library is missing.
pub fn require_grpcio() {
    super::require_python_module("grpc", "python3-grpcio");
}

/// The Python gRPC server of tests/wasm_grpc_peer.py (h2c, or TLS with
/// `tls` = (cert, key)), killed on drop.
pub async fn grpc_peer(tls: Option<(&Path, &Path)>) -> super::PyServer {
    require_grpcio();
    let addr = free_addr();
    super::PyServer::start(
        "wasm_grpc_peer.py",
        &super::serve_args(addr, true, tls),
        addr,
    )
    .await
}

/// A hyper h2c server answering gRPC paths badly on purpose:
/// - `/test.Bad/ResetBefore`: the stream is reset before any answer;
/// - `/test.Bad/ResetAfter`: 200 headers and a message, then the stream is reset;
/// - `/test.Bad/Compressed`: one message with the compressed flag, grpc-status 0;
/// - `/test.Bad/Http503`: a plain 503 without grpc-status;
/// - `/test.Bad/NoTrailers`: one message, then the body ends without trailers;
/// - `/test.Bad/Hang`: no answer for 30 s.
pub struct BadGrpc {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for BadGrpc {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response body that sends `frames` then fails (a reset, 100 ms later,
/// so the answer's head and frames are on the wire first) or ends.
struct Script {
    frames: std::collections::VecDeque<Frame<Bytes>>,
    fail: bool,
    delay: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for Script {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.frames.pop_front() {
            return std::task::Poll::Ready(Some(Ok(f)));
        }
        if self.fail {
            let d = self
                .delay
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(100))));
            if d.as_mut().poll(cx).is_pending() {
                return std::task::Poll::Pending;
            }
            return std::task::Poll::Ready(Some(Err("reset on purpose".into())));
        }
        std::task::Poll::Ready(None)
    }
}

fn grpc_frame(flags: u8, msg: &[u8]) -> Bytes {
    let mut b = vec![flags];
    b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    b.extend_from_slice(msg);
    Bytes::from(b)
}

async fn bad_answer(req: Request<Incoming>) -> Result<Response<Script>, BoxError> {
    let ok = |frames: Vec<Frame<Bytes>>, fail: bool| {
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/grpc")
            .body(Script {
                frames: frames.into(),
                fail,
                delay: None,
            })
            .expect("response")
    };
    let trailers = |status: &str| {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", status.parse().expect("value"));
        Frame::trailers(t)
    };
    match req.uri().path() {
        "/test.Bad/ResetBefore" => Err("reset before the answer".into()),
        "/test.Bad/ResetAfter" => Ok(ok(vec![Frame::data(grpc_frame(0, b"first"))], true)),
        "/test.Bad/Compressed" => Ok(ok(
            vec![Frame::data(grpc_frame(1, b"zipped")), trailers("0")],
            false,
        )),
        "/test.Bad/NoTrailers" => Ok(ok(vec![Frame::data(grpc_frame(0, b"one"))], false)),
        "/test.Bad/Hang" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(ok(vec![], false))
        }
        _ => Ok(Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .body(Script {
                frames: Default::default(),
                fail: false,
                delay: None,
            })
            .expect("response")),
    }
}

impl BadGrpc {
    pub async fn start() -> BadGrpc {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), service_fn(bad_answer))
                        .await;
                });
            }
        });
        BadGrpc { addr, task }
    }
}
