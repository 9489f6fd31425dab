//! An HTTP/2 server written with the `h2` crate, for what real gRPC servers
//! do not do on demand: a GOAWAY after a number of streams, a stream reset,
//! REFUSED_STREAM, a small SETTINGS_MAX_CONCURRENT_STREAMS. It answers
//! gRPC-shaped: the request body back, `grpc-status: 0` in trailers.
//!
//! Paths: `/reset` resets the stream (INTERNAL_ERROR) after reading the
//! request; `/refuse-once/KEY` refuses (REFUSED_STREAM), after reading its
//! body, the first stream for KEY and answers the next; `/slow/MS` answers after MS ms;
//! `/stall/MS` sends the response head at once and its body after MS ms; anything
//! else is echoed (request trailers come back as `x-echo-NAME` trailers).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use tokio::net::TcpListener;

/// How the server behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct H2ServerOpts {
    /// Graceful GOAWAY once a connection accepted this many streams (0: never).
    pub goaway_after: usize,
    /// SETTINGS_MAX_CONCURRENT_STREAMS (0: the h2 crate's default, none).
    pub max_streams: u32,
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441): an extended CONNECT is
    /// answered 200 and its stream echoes what it receives.
    pub extended_connect: bool,
}

/// An extended CONNECT the server accepted.
#[derive(Debug, Clone)]
pub struct ConnectSeen {
    pub protocol: Option<String>,
    pub path: String,
    /// Header names, lowercase.
    pub headers: Vec<String>,
}

/// What the server saw.
#[derive(Debug, Default)]
pub struct H2ServerState {
    pub connections: AtomicUsize,
    pub streams: AtomicUsize,
    pub goaways: AtomicUsize,
    pub resets: AtomicUsize,
    pub refused: AtomicUsize,
    /// Most streams open at once on one connection.
    pub max_open: AtomicUsize,
    /// Streams seen per path.
    pub paths: Mutex<HashMap<String, usize>>,
    /// Extended CONNECTs, in order.
    pub connects: Mutex<Vec<ConnectSeen>>,
}

impl H2ServerState {
    pub fn path_count(&self, p: &str) -> usize {
        self.paths
            .lock()
            .expect("lock")
            .get(p)
            .copied()
            .unwrap_or(0)
    }
}

/// A running h2c server (aborted on drop).
pub struct H2Server {
    pub addr: SocketAddr,
    pub state: Arc<H2ServerState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2Server {
    /// Listens on a free loopback port.
    pub async fn start(opts: H2ServerOpts) -> H2Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(H2ServerState::default());
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let st = Arc::clone(&st);
                tokio::spawn(serve_conn(sock, opts, st));
            }
        });
        H2Server { addr, state, task }
    }
}

async fn serve_conn(sock: tokio::net::TcpStream, opts: H2ServerOpts, st: Arc<H2ServerState>) {
    st.connections.fetch_add(1, SeqCst);
    let mut b = h2::server::Builder::new();
    if opts.max_streams > 0 {
        b.max_concurrent_streams(opts.max_streams);
    }
    if opts.extended_connect {
        b.enable_connect_protocol();
    }
    let Ok(mut conn) = b.handshake::<_, Bytes>(sock).await else {
        return;
    };
    let open = Arc::new(AtomicUsize::new(0));
    let mut accepted = 0usize;
    while let Some(r) = conn.accept().await {
        let Ok((req, respond)) = r else {
            return;
        };
        accepted += 1;
        st.streams.fetch_add(1, SeqCst);
        let now = open.fetch_add(1, SeqCst) + 1;
        st.max_open.fetch_max(now, SeqCst);
        let (st2, open2) = (Arc::clone(&st), Arc::clone(&open));
        tokio::spawn(async move {
            handle(req, respond, &st2).await;
            open2.fetch_sub(1, SeqCst);
        });
        if opts.goaway_after > 0 && accepted == opts.goaway_after {
            st.goaways.fetch_add(1, SeqCst);
            conn.graceful_shutdown();
        }
    }
}

async fn handle(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    st: &H2ServerState,
) {
    let path = req.uri().path().to_owned();
    let seen = {
        let mut paths = st.paths.lock().expect("lock");
        let n = paths.entry(path.clone()).or_insert(0);
        *n += 1;
        *n
    };
    if req.method() == http::Method::CONNECT {
        tunnel(req, respond, st).await;
        return;
    }
    let mut body = req.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else {
            return;
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    // Request trailers come back as response trailers, prefixed `x-echo-`.
    let mut trailers = HeaderMap::new();
    if let Ok(Some(t)) = body.trailers().await {
        for (k, v) in &t {
            if let Ok(name) = http::HeaderName::from_bytes(format!("x-echo-{k}").as_bytes()) {
                trailers.append(name, v.clone());
            }
        }
    }
    // Refused once the body is in: the proxy must send it again.
    if path.starts_with("/refuse-once/") && seen == 1 {
        st.refused.fetch_add(1, SeqCst);
        respond.send_reset(h2::Reason::REFUSED_STREAM);
        return;
    }
    if path == "/reset" {
        st.resets.fetch_add(1, SeqCst);
        respond.send_reset(h2::Reason::INTERNAL_ERROR);
        return;
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        let ms = ms.parse().unwrap_or(100);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut resp = Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("x-path", path.as_str());
    if !trailers.is_empty() {
        // Declared, so that an HTTP/1.1 client behind a proxy gets them too.
        let mut names: Vec<String> = trailers.keys().map(|k| k.to_string()).collect();
        names.push("grpc-status".into());
        resp = resp.header("trailer", names.join(", "));
    }
    let resp = resp.body(()).expect("response");
    let Ok(mut send) = respond.send_response(resp, false) else {
        return;
    };
    if let Some(ms) = path.strip_prefix("/stall/") {
        // The head goes out at once, the body after `ms`.
        let ms = ms.parse().unwrap_or(100);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let _ = send.send_data(Bytes::from(data), false);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let _ = send.send_trailers(trailers);
}

/// An extended CONNECT: answered 200, then every DATA frame is sent back
/// until the client ends its side.
async fn tunnel(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    st: &H2ServerState,
) {
    st.connects.lock().expect("lock").push(ConnectSeen {
        protocol: req
            .extensions()
            .get::<h2::ext::Protocol>()
            .map(|p| p.as_str().to_owned()),
        path: req.uri().path().to_owned(),
        headers: req.headers().keys().map(|k| k.to_string()).collect(),
    });
    let resp = Response::builder()
        .status(200)
        .header("x-tunnel", "yes")
        .body(())
        .expect("response");
    let Ok(mut send) = respond.send_response(resp, false) else {
        return;
    };
    let mut body = req.into_body();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else {
            return;
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        if send.send_data(chunk, false).is_err() {
            return;
        }
    }
    let _ = send.send_data(Bytes::new(), true);
}
