//! The client-side HTTP/1 server, native (`http1_server = "native"`,
//! proxy/server_h1.rs) and hyper's (`"hyper"`), driven with raw bytes: each
//! case runs on both and must get the same answers (statuses, framing,
//! keep-alive or close); the hostile ones are also checked against HAProxy
//! 2.6's answers.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MODES: [&str; 2] = ["native", "hyper"];

/// One response as the client read it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    status: u16,
    /// `HTTP/1.0` or `HTTP/1.1`.
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The body was chunked.
    chunked: bool,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn echo(&self) -> Echo {
        Echo(serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not an echo ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        }))
    }
}

/// One response at the start of `buf`: the response and its length, `None`
/// while incomplete. `head` says the request was HEAD (no body); at `eof`
/// a body without length runs to the end.
fn parse_one(buf: &[u8], head: bool, eof: bool) -> Option<(Got, usize)> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut fields);
    let httparse::Status::Complete(n) = r.parse(buf).expect("a valid response head") else {
        return None;
    };
    let status = r.code.expect("status");
    let version = format!("HTTP/1.{}", r.version.expect("version"));
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let rest = &buf[n..];
    let no_body = head || (100..200).contains(&status) || status == 204 || status == 304;
    let got = |body: Vec<u8>, chunked: bool| Got {
        status,
        version: version.clone(),
        headers: headers.clone(),
        body,
        chunked,
    };
    if no_body {
        return Some((got(Vec::new(), false), n));
    }
    if get("transfer-encoding").is_some_and(|t| t.to_ascii_lowercase().ends_with("chunked")) {
        let mut at = 0;
        let mut body = Vec::new();
        loop {
            let line_end = rest[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let line = std::str::from_utf8(&rest[at..line_end]).expect("chunk line");
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .expect("chunk size");
            at = line_end + 2;
            if size == 0 {
                // Trailers, then an empty line.
                loop {
                    let e = rest[at..].windows(2).position(|w| w == b"\r\n")? + at;
                    let empty = e == at;
                    at = e + 2;
                    if empty {
                        return Some((got(body, true), n + at));
                    }
                }
            }
            if rest.len() < at + size + 2 {
                return None;
            }
            body.extend_from_slice(&rest[at..at + size]);
            at += size + 2;
        }
    }
    match get("content-length") {
        Some(cl) => {
            let len: usize = cl.trim().parse().expect("content-length");
            (rest.len() >= len).then(|| (got(rest[..len].to_vec(), false), n + len))
        }
        None if eof => Some((got(rest.to_vec(), false), buf.len())),
        None => None,
    }
}

/// What a client got on one connection.
#[derive(Debug)]
struct Exchange {
    responses: Vec<Got>,
    /// The proxy closed the connection (within a short wait after the
    /// responses expected).
    closed: bool,
}

/// Reads responses from `s` until `want` final (non-1xx) ones came or the
/// proxy closed; `heads[i]` says the i-th final response answers a HEAD.
async fn read_responses(s: &mut TcpStream, want: usize, heads: &[bool]) -> Exchange {
    let mut buf = Vec::new();
    let mut responses = Vec::new();
    let mut finals = 0;
    let mut eof = false;
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    loop {
        while let Some((got, used)) =
            parse_one(&buf, heads.get(finals).copied().unwrap_or(false), eof)
        {
            buf.drain(..used);
            if got.status >= 200 {
                finals += 1;
            }
            responses.push(got);
            if buf.is_empty() && eof {
                break;
            }
        }
        if finals >= want || eof {
            break;
        }
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => eof = true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!(
                "no {want} responses within {IO_TIMEOUT:?}: got {responses:?}, pending {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
    let closed = eof || wait_closed(s, Duration::from_millis(300)).await;
    Exchange { responses, closed }
}

/// A proxy on `mode` in front of the echo backend.
struct Proxy {
    _daemon: Daemon,
    web: SocketAddr,
    _backend: Backend,
}

async fn proxy(mode: &str) -> Proxy {
    let backend = Backend::start("s1").await;
    let ports = Ports::new();
    let mode_v = format!("\"{mode}\"");
    let cfg = format!(
        "{}{}{}",
        global_section(ports.admin, &[("http1_server", &mode_v)]),
        frontend_section("web", ports.web, "app", ""),
        backend_section("app", "roundrobin", &[("s1", backend.addr, 1)], "")
    );
    let daemon = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    Proxy {
        _daemon: daemon,
        web: ports.web,
        _backend: backend,
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let s = within("connect", IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect to the proxy");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Sends `bytes` in one write and reads `want` responses.
async fn exchange(addr: SocketAddr, bytes: &[u8], want: usize, heads: &[bool]) -> Exchange {
    let mut s = connect(addr).await;
    s.write_all(bytes).await.expect("write");
    read_responses(&mut s, want, heads).await
}

/// Runs `case` on both servers and returns their results, native first.
async fn both<F, Fut, T>(case: F) -> (T, T)
where
    F: Fn(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut out = Vec::new();
    for mode in MODES {
        let p = proxy(mode).await;
        out.push(within(mode, Duration::from_secs(30), case(p.web)).await);
    }
    let hyper = out.pop().expect("hyper");
    let native = out.pop().expect("native");
    (native, hyper)
}

/// Statuses and whether the connection closed: what both servers must agree on.
fn outline(e: &Exchange) -> (Vec<u16>, bool) {
    (e.responses.iter().map(|r| r.status).collect(), e.closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_split_byte_by_byte() {
    let (native, hyper) = both(|web| async move {
        let mut s = connect(web).await;
        for b in b"GET /split?q=1 HTTP/1.1\r\nHost: split.example\r\nX-A: b\r\n\r\n" {
            s.write_all(&[*b]).await.expect("write");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        read_responses(&mut s, 1, &[]).await
    })
    .await;
    for e in [&native, &hyper] {
        assert_eq!(outline(e), (vec![200], false), "{e:?}");
        let echo = e.responses[0].echo();
        assert_eq!(echo.path(), "/split?q=1");
        assert_eq!(echo.header("x-a").as_deref(), Some("b"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let (native, hyper) = both(|web| async move {
        exchange(
            web,
            b"GET /one HTTP/1.1\r\nHost: p\r\n\r\nPOST /two HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\n\r\nhelloGET /three HTTP/1.1\r\nHost: p\r\n\r\n",
            3,
            &[],
        )
        .await
    })
    .await;
    for e in [&native, &hyper] {
        assert_eq!(outline(e), (vec![200, 200, 200], false), "{e:?}");
        let paths: Vec<String> = e
            .responses
            .iter()
            .map(|r| r.echo().path().to_string())
            .collect();
        assert_eq!(paths, ["/one", "/two", "/three"]);
        assert_eq!(e.responses[1].echo().body(), "hello");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_with_extensions_and_trailers() {
    let (native, hyper) = both(|web| async move {
        exchange(
            web,
            b"POST /c HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value;x\r\nhello\r\n6 ; ext\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nGET /after HTTP/1.1\r\nHost: c\r\n\r\n",
            2,
            &[],
        )
        .await
    })
    .await;
    for e in [&native, &hyper] {
        assert_eq!(outline(e), (vec![200, 200], false), "{e:?}");
        assert_eq!(e.responses[0].echo().body(), "hello world");
        assert_eq!(e.responses[1].echo().path(), "/after");
    }
}

/// Raw requests refused before the backend, with the status each server
/// answers (HAProxy 2.6 too, for the request heads: a body's framing
/// error reaches it after it forwarded the head, see `hostile_heads_match_haproxy`).
const REFUSED: &[(&str, &str, u16)] = &[
    (
        "bad chunk size",
        "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk size overflow",
        "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "differing content lengths",
        "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    (
        "obs-fold",
        "GET /a HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\r\n",
        400,
    ),
    (
        "last coding not chunked",
        "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "space before colon",
        "GET /a HTTP/1.1\r\nHost : h\r\n\r\n",
        400,
    ),
    ("bad method", "G@T /a HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("bad version", "GET /a HTTP/2.5\r\nHost: h\r\n\r\n", 400),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_heads_get_the_same_refusals() {
    let (native, hyper) = both(|web| async move {
        let mut out = Vec::new();
        for (what, raw, _) in REFUSED {
            out.push((*what, exchange(web, raw.as_bytes(), 1, &[]).await));
        }
        out
    })
    .await;
    for ((what, n), (_, h)) in native.iter().zip(&hyper) {
        let want = REFUSED
            .iter()
            .find(|(w, _, _)| w == what)
            .map(|(_, _, s)| *s)
            .expect("row");
        assert_eq!(outline(n), (vec![want], true), "native, {what}: {n:?}");
        assert_eq!(
            outline(h),
            outline(n),
            "hyper and native disagree on {what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_heads_match_haproxy() {
    haproxy_26();
    let backend = Backend::start("s1").await;
    let web = free_addr();
    let cfg = format!(
        "global\n  maxconn 100\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 2s\n  timeout server 2s\n  timeout http-request 1s\nfrontend web\n  bind {web}\n  default_backend app\nbackend app\n  server s1 {}\n",
        backend.addr
    );
    let dir = TempDir::new("h1srv-haproxy");
    let _h = HaProxy::start(&cfg, dir.path(), web).await;
    let p = proxy("native").await;
    // The first two rows are body framing errors: HAProxy has forwarded
    // the head by then (the server answers), so only heads are compared.
    // HAProxy unfolds obs-fold where both our servers refuse it (RFC 9112
    // §5.2 allows either; the project refuses, see e2e_hostile_clients),
    // and takes any `HTTP/x.y` version where hyper's parser (and ours, the
    // same httparse) accepts only 1.0 and 1.1.
    for (what, raw, want) in &REFUSED[2..] {
        if ["obs-fold", "bad version"].contains(what) {
            let theirs = exchange(web, raw.as_bytes(), 1, &[]).await;
            assert_eq!(
                outline(&theirs).0,
                vec![200],
                "HAProxy now refuses {what}: {theirs:?}"
            );
            continue;
        }
        let ours = exchange(p.web, raw.as_bytes(), 1, &[]).await;
        let theirs = exchange(web, raw.as_bytes(), 1, &[]).await;
        assert_eq!(outline(&ours), (vec![*want], true), "{what}: {ours:?}");
        assert_eq!(
            outline(&theirs).0,
            outline(&ours).0,
            "HAProxy answers {what} otherwise"
        );
    }
    // CL + TE: chunked wins, then the connection closes on both.
    let raw = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let ours = exchange(p.web, raw, 1, &[]).await;
    let theirs = exchange(web, raw, 1, &[]).await;
    assert_eq!(outline(&ours), (vec![200], true), "{ours:?}");
    assert_eq!(outline(&theirs), outline(&ours), "HAProxy: {theirs:?}");
    assert_eq!(ours.responses[0].echo().body(), "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_and_chunked_chunked_wins_and_closes() {
    let (native, hyper) = both(|web| async move {
        exchange(
            web,
            b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            2,
            &[],
        )
        .await
    })
    .await;
    for e in [&native, &hyper] {
        assert_eq!(outline(e), (vec![200], true), "{e:?}");
        let echo = e.responses[0].echo();
        assert_eq!(echo.body(), "hello");
        assert_eq!(echo.header("content-length"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_content_lengths_pass() {
    let (native, hyper) = both(|web| async move {
        exchange(
            web,
            b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            1,
            &[],
        )
        .await
    })
    .await;
    for e in [&native, &hyper] {
        assert_eq!(outline(e), (vec![200], false), "{e:?}");
        assert_eq!(e.responses[0].echo().body(), "hello");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_is_431() {
    let (native, hyper) = both(|web| async move {
        let raw = format!(
            "GET /a HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
            "b".repeat(20 << 10)
        );
        exchange(web, raw.as_bytes(), 1, &[]).await
    })
    .await;
    assert_eq!(outline(&native), (vec![431], true), "{native:?}");
    assert_eq!(outline(&hyper), outline(&native), "{hyper:?}");
    assert_eq!(native.responses[0].body, hyper.responses[0].body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_head_is_408() {
    let (native, hyper) = both(|web| async move {
        let mut s = connect(web).await;
        s.write_all(b"GET /a HTTP/1.1\r\nHost: h\r\n")
            .await
            .expect("write");
        let started = std::time::Instant::now();
        let e = read_responses(&mut s, 1, &[]).await;
        (e, started.elapsed())
    })
    .await;
    for (e, took) in [&native, &hyper] {
        assert_eq!(outline(e), (vec![408], true), "{e:?}");
        assert!(
            *took >= Duration::from_millis(900) && *took < Duration::from_secs(4),
            "408 after {took:?}; http_request is 1s"
        );
    }
    assert_eq!(native.0.responses[0].body, hyper.0.responses[0].body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_closes_unless_keep_alive() {
    let (native, hyper) = both(|web| async move {
        let plain = exchange(web, b"GET /ten HTTP/1.0\r\nHost: h\r\n\r\n", 1, &[]).await;
        let kept = exchange(
            web,
            b"GET /ten HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\nGET /again HTTP/1.0\r\nHost: h\r\n\r\n",
            2,
            &[],
        )
        .await;
        (plain, kept)
    })
    .await;
    for (plain, kept) in [&native, &hyper] {
        assert_eq!(outline(plain), (vec![200], true), "{plain:?}");
        assert_eq!(plain.responses[0].version, "HTTP/1.0");
        assert_eq!(plain.responses[0].echo().path(), "/ten");
        assert!(!plain.responses[0].chunked);
        assert_eq!(outline(kept), (vec![200, 200], true), "{kept:?}");
        assert_eq!(
            kept.responses[0].header("connection"),
            Some("keep-alive"),
            "{kept:?}"
        );
        assert_eq!(kept.responses[1].echo().path(), "/again");
    }
    assert_eq!(
        native.1.responses[0].header("connection"),
        hyper.1.responses[0].header("connection")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_gets_no_body() {
    let (native, hyper) = both(|web| async move {
        exchange(
            web,
            b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\nGET /after HTTP/1.1\r\nHost: h\r\n\r\n",
            2,
            &[true, false],
        )
        .await
    })
    .await;
    for e in [&native, &hyper] {
        assert_eq!(outline(e), (vec![200, 200], false), "{e:?}");
        assert!(e.responses[0].body.is_empty());
        assert_eq!(e.responses[1].echo().path(), "/after");
    }
    assert_eq!(
        native.responses[0].header("content-length").is_some(),
        hyper.responses[0].header("content-length").is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue() {
    let (native, hyper) = both(|web| async move {
        let mut s = connect(web).await;
        s.write_all(
            b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .expect("write");
        let mut first = [0u8; 25];
        within("100 Continue", IO_TIMEOUT, s.read_exact(&mut first))
            .await
            .expect("read 100 Continue");
        s.write_all(b"hello").await.expect("write body");
        (first, read_responses(&mut s, 1, &[]).await)
    })
    .await;
    for (first, e) in [&native, &hyper] {
        assert_eq!(&first[..], b"HTTP/1.1 100 Continue\r\n\r\n");
        assert_eq!(outline(e), (vec![200], false), "{e:?}");
        assert_eq!(e.responses[0].echo().body(), "hello");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_keeps_bytes_after_the_head() {
    for mode in MODES {
        let server = RawBackend::start(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        )
        .await;
        let ports = Ports::new();
        let mode_v = format!("\"{mode}\"");
        let cfg = format!(
            "{}{}{}",
            global_section(ports.admin, &[("http1_server", &mode_v)]),
            frontend_section("web", ports.web, "app", ""),
            backend_section("app", "roundrobin", &[("s1", server.addr, 1)], "")
        );
        let _daemon = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
        let mut s = connect(ports.web).await;
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nbytes-after-the-head")
            .await
            .expect("write");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            within("101", IO_TIMEOUT, s.read_exact(&mut b))
                .await
                .expect("read the 101");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        assert!(head.starts_with("HTTP/1.1 101 "), "{mode}: {head}");
        s.write_all(b"+more").await.expect("write after 101");
        let deadline = std::time::Instant::now() + IO_TIMEOUT;
        loop {
            let got = String::from_utf8_lossy(&server.received()).into_owned();
            if got.contains("bytes-after-the-head+more") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{mode}: the server got {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A client that half-closes after its request still gets its answer, as
/// from HAProxy 2.6 (no `abortonclose`); hyper's server takes the
/// half-close for an abort and closes without answering, which is the one
/// place the two servers differ on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_after_a_request() {
    haproxy_26();
    let half = |web: SocketAddr| async move {
        let mut s = connect(web).await;
        s.write_all(b"GET /half HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .expect("write");
        s.shutdown().await.expect("half-close");
        read_responses(&mut s, 1, &[]).await
    };
    let (native, hyper) = both(half).await;
    assert_eq!(outline(&native), (vec![200], true), "{native:?}");
    assert_eq!(native.responses[0].echo().path(), "/half");
    assert_eq!(outline(&hyper), (vec![], true), "{hyper:?}");
    let backend = Backend::start("s1").await;
    let web = free_addr();
    let cfg = format!(
        "defaults\n  mode http\n  timeout connect 1s\n  timeout client 2s\n  timeout server 2s\nfrontend web\n  bind {web}\n  default_backend app\nbackend app\n  server s1 {}\n",
        backend.addr
    );
    let dir = TempDir::new("h1srv-haproxy");
    let _h = HaProxy::start(&cfg, dir.path(), web).await;
    let theirs = half(web).await;
    assert_eq!(outline(&theirs), outline(&native), "HAProxy: {theirs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_heads_match_hyper() {
    // What clients see of a response head: the same fields in the same
    // order and case (the date aside), the same framing.
    let (native, hyper) = both(|web| async move {
        exchange(
            web,
            b"GET /status/404 HTTP/1.1\r\nHost: h\r\n\r\nGET /large/20000 HTTP/1.1\r\nHost: h\r\n\r\nGET /status/204 HTTP/1.1\r\nHost: h\r\n\r\nGET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            4,
            &[],
        )
        .await
    })
    .await;
    assert_eq!(
        outline(&native),
        (vec![404, 200, 204, 200], true),
        "{native:?}"
    );
    assert_eq!(outline(&hyper), outline(&native));
    for (n, h) in native.responses.iter().zip(&hyper.responses) {
        let names = |g: &Got| {
            g.headers
                .iter()
                .filter(|(k, _)| k != "date")
                .map(|(k, v)| {
                    if k == "x-request-id" {
                        (k.clone(), String::new())
                    } else {
                        (k.clone(), v.clone())
                    }
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(n.status, h.status);
        assert_eq!(n.chunked, h.chunked, "framing of {}", n.status);
        assert!(n.header("date").is_some() && h.header("date").is_some());
        if n.status != 200 || n.chunked {
            assert_eq!(names(n), names(h), "fields of {}", n.status);
        }
        if n.chunked {
            assert_eq!(n.body, h.body);
        }
    }
}
