//! The worker's own HTTP/1.1 client (`http1_client = "native"`, the
//! default) against a hostile or odd server speaking raw bytes: heads split
//! across reads, obsolete line folding, duplicate or conflicting lengths,
//! chunk extensions and trailers, oversized heads, early closes, interim
//! responses, HTTP/1.0 servers; and what goes back to the pool after each.
//! The same cases run with `http1_client = "hyper"` where both must agree.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A daemon proxying to `server` with `overrides` in `[global]`.
async fn proxy_to(server: &ScriptedServer, overrides: &[(&str, &str)]) -> (Daemon, Ports) {
    let ports = Ports::new();
    let cfg = format!(
        "{}{}{}",
        global_section(ports.admin, overrides),
        frontend_section("web", ports.web, "app", ""),
        backend_section("app", "roundrobin", &[("s1", server.addr, 1)], "")
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    (d, ports)
}

/// A client connection to the proxy.
async fn client(ports: &Ports) -> TcpStream {
    within("connect", IO_TIMEOUT, TcpStream::connect(ports.web))
        .await
        .expect("connect to the proxy")
}

/// Sends `GET path` on `s` and reads the response.
async fn get(s: &mut TcpStream, path: &str) -> Result<RawResp, String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    read_response(s, IO_TIMEOUT).await
}

/// A response of `status` with body `body` (Content-Length).
fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

const BOTH: [&str; 2] = ["\"native\"", "\"hyper\""];

/// A head split in the middle of a header name, and the body split from it:
/// the response is whole, and the connection goes back to the pool.
#[tokio::test]
async fn head_and_body_split_across_reads() {
    let server = ScriptedServer::start(|_, _| {
        vec![
            send("HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Le"),
            pause(50),
            send("ngth: 10\r\n\r\nhello"),
            pause(50),
            send("world"),
        ]
    })
    .await;
    let (_d, ports) = proxy_to(&server, &[]).await;
    let mut s = client(&ports).await;
    for _ in 0..3 {
        let r = get(&mut s, "/split").await.expect("response");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"helloworld");
        assert_eq!(r.header("x-a"), Some("1"));
    }
    assert_eq!(server.connections(), 1, "the server connection is reused");
}

/// Obsolete line folding in a response head is refused (502), as both
/// clients do; the log says why.
#[tokio::test]
async fn obsolete_line_folding_is_a_502() {
    for mode in BOTH {
        let server = ScriptedServer::start(|_, _| {
            vec![send(
                "HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 2\r\n\r\nok",
            )]
        })
        .await;
        let (d, ports) = proxy_to(&server, &[("http1_client", mode)]).await;
        let r = get(&mut client(&ports).await, "/fold")
            .await
            .expect("response");
        assert_eq!(r.status, 502, "{mode}");
        let line = d
            .wait_stderr_line(IO_TIMEOUT, |l| l.contains("/fold"))
            .await
            .expect("access log line");
        assert!(line.contains("invalid response"), "{mode}: {line}");
    }
}

/// Two equal Content-Length values are one length; two different ones are
/// a 502 (request smuggling otherwise).
#[tokio::test]
async fn duplicate_content_length() {
    let same = ScriptedServer::start(|_, _| {
        vec![send(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        )]
    })
    .await;
    let (_d, ports) = proxy_to(&same, &[]).await;
    let mut s = client(&ports).await;
    for _ in 0..2 {
        let r = get(&mut s, "/same").await.expect("response");
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    }
    assert_eq!(same.connections(), 1);

    for mode in BOTH {
        let differ = ScriptedServer::start(|_, _| {
            vec![send(
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
            )]
        })
        .await;
        let (_d, ports) = proxy_to(&differ, &[("http1_client", mode)]).await;
        let r = get(&mut client(&ports).await, "/differ")
            .await
            .expect("response");
        assert_eq!(r.status, 502, "{mode}");
    }
}

/// Content-Length and Transfer-Encoding: chunked wins, the length is not
/// forwarded, and the server connection is not trusted again.
#[tokio::test]
async fn content_length_with_chunked() {
    let server = ScriptedServer::start(|_, _| {
        vec![send(
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )]
    })
    .await;
    let (_d, ports) = proxy_to(&server, &[]).await;
    let mut s = client(&ports).await;
    for _ in 0..2 {
        let r = get(&mut s, "/clte").await.expect("response");
        assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
        assert_ne!(r.header("content-length"), Some("100"));
    }
    assert_eq!(server.connections(), 2, "not reused after CL + TE");
}

/// Chunk extensions are ignored, trailers are read (and the connection
/// reused after them), a last chunk split from its CRLF works.
#[tokio::test]
async fn chunk_extensions_and_trailers() {
    let server = ScriptedServer::start(|_, r| {
        if r % 2 == 0 {
            vec![
                send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n"),
                send("5;name=value;q=\"x\"\r\nhello\r\n"),
                pause(30),
                send("6\r\n world\r\n0;last\r\nx-sum: 42\r\n"),
                pause(30),
                send("\r\n"),
            ]
        } else {
            vec![
                send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r"),
                pause(30),
                send("\n\r\n"),
            ]
        }
    })
    .await;
    let (_d, ports) = proxy_to(&server, &[]).await;
    let mut s = client(&ports).await;
    for _ in 0..2 {
        let r = get(&mut s, "/chunked").await.expect("response");
        assert_eq!((r.status, &r.body[..]), (200, &b"hello world"[..]));
        let r = get(&mut s, "/chunked").await.expect("response");
        assert_eq!((r.status, &r.body[..]), (200, &b"abc"[..]));
    }
    assert_eq!(server.connections(), 1, "reused after trailers");
}

/// Malformed chunked framing mid-body ends the response with an error
/// (the client's connection closes) and the server connection is dropped.
#[tokio::test]
async fn bad_chunk_size_mid_body() {
    let server = ScriptedServer::start(|_, _| {
        vec![send(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
        )]
    })
    .await;
    let (d, ports) = proxy_to(&server, &[]).await;
    let mut s = client(&ports).await;
    assert!(
        get(&mut s, "/badchunk").await.is_err(),
        "truncated response"
    );
    let line = d
        .wait_stderr_line(IO_TIMEOUT, |l| l.contains("/badchunk"))
        .await
        .expect("access log line");
    assert!(line.contains("upstream_error"), "{line}");
}

/// A head over `max_header_size` (16 KiB in tests) or with more than
/// `max_headers` (50) fields is a 502 naming the limit in the log.
#[tokio::test]
async fn oversized_heads() {
    let big = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
        "a".repeat(20 << 10)
    );
    let mut many = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..60 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("Content-Length: 2\r\n\r\nok");
    for (path, head, why) in [
        ("/big", big, "max_header_size"),
        ("/many", many, "max_headers"),
    ] {
        let server =
            ScriptedServer::start(move |_, _| vec![Step::Send(head.clone().into_bytes())]).await;
        let (d, ports) = proxy_to(&server, &[]).await;
        let r = get(&mut client(&ports).await, path)
            .await
            .expect("response");
        assert_eq!(r.status, 502, "{path}");
        let line = d
            .wait_stderr_line(IO_TIMEOUT, |l| l.contains(path))
            .await
            .expect("access log line");
        assert!(line.contains(why), "{path}: {line}");
    }
}

/// A server that closes in the middle of a Content-Length body: the client
/// sees its connection closed after the partial body, the log says the
/// server failed, and the next request gets a fresh server connection.
#[tokio::test]
async fn early_close_mid_body() {
    let server = ScriptedServer::start(|c, _| {
        if c == 0 {
            vec![
                send("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"),
                Step::Close,
            ]
        } else {
            vec![send(&ok("fine"))]
        }
    })
    .await;
    let (d, ports) = proxy_to(&server, &[]).await;
    let mut s = client(&ports).await;
    assert!(get(&mut s, "/early").await.is_err());
    let line = d
        .wait_stderr_line(IO_TIMEOUT, |l| l.contains("/early"))
        .await
        .expect("access log line");
    assert!(line.contains("upstream_error"), "{line}");
    let r = get(&mut client(&ports).await, "/after")
        .await
        .expect("response");
    assert_eq!((r.status, &r.body[..]), (200, &b"fine"[..]));
    assert_eq!(server.connections(), 2);
}

/// 100 Continue and 103 Early Hints before the final response are skipped.
#[tokio::test]
async fn interim_responses_skipped() {
    let server = ScriptedServer::start(|_, _| {
        vec![
            send("HTTP/1.1 100 Continue\r\n\r\n"),
            pause(20),
            send("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        ]
    })
    .await;
    let (_d, ports) = proxy_to(&server, &[]).await;
    let mut s = client(&ports).await;
    for _ in 0..2 {
        let r = get(&mut s, "/interim").await.expect("response");
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    }
    assert_eq!(server.connections(), 1);
}

/// An HTTP/1.0 server without a length: the body runs to the close, and
/// each request gets its own server connection.
#[tokio::test]
async fn http10_until_close() {
    let server = ScriptedServer::start(|_, _| {
        vec![
            send("HTTP/1.0 200 OK\r\nX-Old: yes\r\n\r\nall of "),
            pause(30),
            send("this"),
            Step::Close,
        ]
    })
    .await;
    let (_d, ports) = proxy_to(&server, &[]).await;
    let mut s = client(&ports).await;
    for _ in 0..2 {
        let r = get(&mut s, "/old").await.expect("response");
        assert_eq!((r.status, &r.body[..]), (200, &b"all of this"[..]));
    }
    assert_eq!(server.connections(), 2);
}

/// `Connection: close` from the server: the response is whole, the
/// connection is not pooled.
#[tokio::test]
async fn server_connection_close() {
    let server = ScriptedServer::start(|_, _| {
        vec![
            send("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye"),
            Step::Close,
        ]
    })
    .await;
    let (_d, ports) = proxy_to(&server, &[]).await;
    let mut s = client(&ports).await;
    for _ in 0..2 {
        let r = get(&mut s, "/close").await.expect("response");
        assert_eq!((r.status, &r.body[..]), (200, &b"bye"[..]));
    }
    assert_eq!(server.connections(), 2);
}

/// A pooled connection the server closed while idle is noticed: the next
/// request goes out on a fresh connection and succeeds.
#[tokio::test]
async fn idle_close_then_fresh_connection() {
    let server = ScriptedServer::start(|_, _| vec![send(&ok("hi")), pause(100), Step::Close]).await;
    let (_d, ports) = proxy_to(&server, &[]).await;
    let mut s = client(&ports).await;
    for _ in 0..3 {
        let r = get(&mut s, "/idle").await.expect("response");
        assert_eq!((r.status, &r.body[..]), (200, &b"hi"[..]));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(server.connections(), 3);
}

/// HEAD, 204 and 304 have no body whatever their length says; the
/// connection is reused after each.
#[tokio::test]
async fn bodiless_responses() {
    let server = ScriptedServer::start(|_, r| {
        vec![send(match r {
            0 => "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
            1 => "HTTP/1.1 204 No Content\r\n\r\n",
            _ => "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
        })]
    })
    .await;
    let (_d, ports) = proxy_to(&server, &[]).await;
    let mut h1 = H1::connect(ports.web).await;
    let head = h1
        .send(
            request(http::Method::HEAD, ports.web, "/head")
                .body(empty())
                .expect("request"),
        )
        .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length").as_deref(), Some("1234"));
    assert!(head.body.is_empty());
    let r = h1.get("/nocontent").await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    let r = h1.get("/notmodified").await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(server.connections(), 1);
}

/// A server that never answers: 504 after the server timeout (2 s here).
#[tokio::test]
async fn server_timeout() {
    let server = ScriptedServer::start(|_, _| vec![pause(5000)]).await;
    let (_d, ports) = proxy_to(&server, &[]).await;
    let start = std::time::Instant::now();
    let r = get(&mut client(&ports).await, "/slow")
        .await
        .expect("response");
    assert_eq!(r.status, 504);
    assert!(start.elapsed() < Duration::from_secs(4));
}

/// Request bodies go out framed as the client sent them: a Content-Length
/// body as such, a chunked one chunked; the server reads both whole.
#[tokio::test]
async fn request_bodies() {
    let server = ScriptedServer::start(|_, _| vec![send(&ok("got"))]).await;
    let (_d, ports) = proxy_to(&server, &[]).await;
    let mut s = client(&ports).await;
    s.write_all(b"POST /cl HTTP/1.1\r\nHost: test\r\nContent-Length: 11\r\n\r\nhello world")
        .await
        .expect("write");
    let r = read_response(&mut s, IO_TIMEOUT).await.expect("response");
    assert_eq!(r.status, 200);
    s.write_all(
        b"POST /chunked HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"6\r\n again\r\n0\r\n\r\n")
        .await
        .expect("write");
    let r = read_response(&mut s, IO_TIMEOUT).await.expect("response");
    assert_eq!(r.status, 200);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].body, b"hello world");
    assert_eq!(reqs[0].header_all("content-length"), vec!["11"]);
    assert_eq!(reqs[1].body, b"hello again");
    assert_eq!(reqs[1].header_all("transfer-encoding"), vec!["chunked"]);
    assert!(reqs[1].header_all("content-length").is_empty());
    assert_eq!(server.connections(), 1);
}

/// A large body in both directions streams through intact (several reads
/// of the server's body, several writes of the client's).
#[tokio::test]
async fn large_bodies_stream() {
    let big = "0123456789abcdef".repeat(64 << 10); // 1 MiB
    let body = big.clone();
    let server = ScriptedServer::start(move |_, _| vec![send(&ok(&body))]).await;
    let (_d, ports) = proxy_to(&server, &[]).await;
    let mut s = client(&ports).await;
    let head = format!(
        "POST /big HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(big.as_bytes()).await.expect("write");
    let r = read_response(&mut s, IO_TIMEOUT).await.expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), big.len());
    assert!(r.body == big.as_bytes());
    assert_eq!(server.requests()[0].body.len(), big.len());
    let r = get(&mut s, "/again").await.expect("response");
    assert_eq!(r.body.len(), big.len());
    assert_eq!(server.connections(), 1);
}

/// A 101 to a request that asked for no upgrade is a 502 (as HAProxy).
#[tokio::test]
async fn unexpected_switching_protocols() {
    let server = ScriptedServer::start(|_, _| {
        vec![send(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        )]
    })
    .await;
    let (_d, ports) = proxy_to(&server, &[]).await;
    let r = get(&mut client(&ports).await, "/ws")
        .await
        .expect("response");
    assert_eq!(r.status, 502);
}

/// Garbage instead of a status line, and a close before any byte: 502s.
#[tokio::test]
async fn garbage_and_empty_responses() {
    for (path, steps) in [
        ("/garbage", vec![send("SSH-2.0-OpenSSH\r\n\r\n")]),
        ("/empty", vec![Step::Close]),
        (
            "/badlen",
            vec![send("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello")],
        ),
        (
            "/te10",
            vec![send(
                "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            )],
        ),
    ] {
        let server = ScriptedServer::start(move |_, _| steps.clone()).await;
        let (_d, ports) = proxy_to(&server, &[]).await;
        let r = get(&mut client(&ports).await, path)
            .await
            .expect("response");
        assert_eq!(r.status, 502, "{path}");
    }
}
