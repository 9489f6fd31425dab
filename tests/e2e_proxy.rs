//! End-to-end proxying: methods, bodies (large, chunked, streamed), upstream
//! keep-alive, hop-by-hop and forwarding headers, h2c.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode, Version};
use http_body_util::BodyExt;

const TEN_MIB: usize = 10 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_and_post_are_proxied() {
    let b = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&b]).await;

    let mut c = H1::connect(ports.web).await;
    let r = c.get("/some/path?q=1&r=two").await;
    assert_eq!(r.status, StatusCode::OK, "body: {}", r.text());
    assert_eq!(r.header("x-server").as_deref(), Some("s1"));
    let e = r.echo();
    assert_eq!(e.method(), "GET");
    assert_eq!(e.path(), "/some/path?q=1&r=two");
    assert_eq!(e.version(), "HTTP/1.1", "upstream must be HTTP/1.1");
    assert_eq!(
        e.header("host").as_deref(),
        Some(ports.web.to_string().as_str()),
        "Host must be forwarded unchanged"
    );

    let req = request(Method::POST, ports.web, "/submit")
        .header("content-type", "text/plain")
        .body(full("hello world"))
        .expect("request");
    let r = c.send(req).await;
    assert_eq!(r.status, StatusCode::OK);
    let e = r.echo();
    assert_eq!(e.method(), "POST");
    assert_eq!(e.path(), "/submit");
    assert_eq!(e.body(), "hello world");
    assert_eq!(e.header("content-length").as_deref(), Some("11"));
    assert_eq!(e.header("content-type").as_deref(), Some("text/plain"));

    // Other methods and an empty-bodied status pass through too.
    for m in [Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS] {
        let req = request(m.clone(), ports.web, "/m")
            .body(full("x"))
            .expect("request");
        let r = c.send(req).await;
        assert_eq!(r.status, StatusCode::OK, "{m}");
        assert_eq!(r.echo().method(), m.as_str());
    }
    let r = c.get("/status/404").await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "backend status passes through"
    );
    let req = request(Method::HEAD, ports.web, "/head")
        .body(empty())
        .expect("request");
    let r = c.send(req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty(), "HEAD response has no body");
    assert_eq!(b.requests(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_mib_upload_is_streamed_intact() {
    let b = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&b]).await;
    let data = pattern(TEN_MIB);
    let expected = fnv_hex(&data);
    let req = request(Method::POST, ports.web, "/upload")
        .body(full(data))
        .expect("request");
    let r = H1::connect(ports.web).await.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "body: {}", r.text());
    let e = r.echo();
    assert_eq!(e.body_len(), TEN_MIB as u64);
    assert_eq!(e.body_hash(), expected);
    assert_eq!(
        e.header("content-length").as_deref(),
        Some(TEN_MIB.to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_mib_chunked_download_is_streamed_intact() {
    let b = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&b]).await;
    let expected = fnv_hex(&pattern(TEN_MIB));
    let mut c = H1::connect(ports.web).await;

    let r = c.get(&format!("/large/{TEN_MIB}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), TEN_MIB);
    assert_eq!(fnv_hex(&r.body), expected);
    assert!(
        r.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked")),
        "a streamed response of unknown length goes out chunked; headers: {:?}",
        r.headers
    );

    // The same with a Content-Length from the server.
    let r = c.get(&format!("/large/{TEN_MIB}?cl=1")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("content-length").as_deref(),
        Some(TEN_MIB.to_string().as_str())
    );
    assert_eq!(fnv_hex(&r.body), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunked_request_body_is_forwarded_chunked() {
    let b = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&b]).await;
    let req = format!(
        "POST /chunked HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n\
         5\r\nhello\r\n1\r\n \r\n10\r\n0123456789abcdef\r\n0\r\n\r\n",
        ports.web
    );
    let (_s, r) = raw_exchange(ports.web, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = Echo(serde_json::from_slice(&r.body).expect("echo json"));
    assert_eq!(e.body(), "hello 0123456789abcdef");
    assert!(
        e.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked")),
        "backend should receive the body chunked; headers: {:?}",
        e.0["headers"]
    );
    assert_eq!(
        e.header("content-length"),
        None,
        "chunked body must not gain a Content-Length"
    );

    // A large chunked upload through hyper (no size hint → chunked).
    let (tx, body) = chan_body();
    let data = pattern(3 * 1024 * 1024 + 17);
    let expected = fnv_hex(&data);
    let feed = {
        let data = Bytes::from(data);
        tokio::spawn(async move {
            for piece in data.chunks(100_000) {
                if tx.send(Bytes::copy_from_slice(piece)).await.is_err() {
                    break;
                }
            }
        })
    };
    let req = request(Method::PUT, ports.web, "/chunked-big")
        .body(body)
        .expect("request");
    let r = H1::connect(ports.web).await.send(req).await;
    within("feeder", Duration::from_secs(5), feed)
        .await
        .expect("feeder task");
    assert_eq!(r.status, StatusCode::OK);
    let e = r.echo();
    assert_eq!(e.body_len(), 3 * 1024 * 1024 + 17);
    assert_eq!(e.body_hash(), expected);
    assert!(
        e.header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_body_streams_before_it_ends() {
    let b = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&b]).await;
    let (tx, body) = chan_body();
    let req = request(Method::POST, ports.web, "/gated-upload")
        .body(body)
        .expect("request");
    let mut c = H1::connect(ports.web).await;
    let pending = tokio::spawn(async move { c.send(req).await });
    tx.send(Bytes::from_static(b"part1;"))
        .await
        .expect("send part1");
    // The backend must see the first part while the client still holds the rest.
    eventually(
        "backend received the first part of a still-open request body",
        Duration::from_secs(5),
        || async { b.received() >= 6 },
    )
    .await;
    tx.send(Bytes::from_static(b"part2"))
        .await
        .expect("send part2");
    drop(tx);
    let r = within("response", Duration::from_secs(10), pending)
        .await
        .expect("request task");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.echo().body(), "part1;part2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn response_body_streams_before_it_ends() {
    let b = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&b]).await;
    let mut c = H1::connect(ports.web).await;
    let resp = c
        .try_send_streaming(get_req(ports.web, "/gated-download"))
        .await
        .expect("response head");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    // The client must get the first part while the backend still holds the rest.
    within(
        "first part of a still-open response body",
        Duration::from_secs(5),
        async {
            while got.len() < 6 {
                match body.frame().await {
                    Some(Ok(f)) => {
                        if let Some(d) = f.data_ref() {
                            got.extend_from_slice(d);
                        }
                    }
                    other => panic!("body ended early: {other:?}"),
                }
            }
        },
    )
    .await;
    assert_eq!(&got[..6], b"first;");
    b.open_gate();
    let rest = within("rest of body", Duration::from_secs(5), body.collect())
        .await
        .expect("body")
        .to_bytes();
    got.extend_from_slice(&rest);
    assert_eq!(String::from_utf8_lossy(&got), "first;second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_connections_are_kept_alive_and_reused() {
    let b = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&b]).await;
    for conn in 0..4 {
        let mut c = H1::connect(ports.web).await;
        for i in 0..50 {
            let r = c.get(&format!("/ka/{conn}/{i}")).await;
            assert_eq!(r.status, StatusCode::OK);
        }
    }
    assert_eq!(b.requests(), 200);
    assert!(
        b.connections() <= 5,
        "200 sequential requests opened {} upstream connections; expected pooled reuse (<= 5)",
        b.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hop_by_hop_request_headers_removed_and_forwarding_headers_added() {
    let b = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&b]).await;
    let req = format!(
        "GET /hop HTTP/1.1\r\nHost: {}\r\n\
         Connection: keep-alive, X-Foo\r\n\
         X-Foo: 1\r\n\
         Keep-Alive: timeout=5, max=100\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: trailers\r\n\
         Trailer: X-Checksum\r\n\
         X-Keep: yes\r\n\
         X-Forwarded-For: 1.2.3.4\r\n\r\n",
        ports.web
    );
    let (_s, r) = raw_exchange(ports.web, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = Echo(serde_json::from_slice(&r.body).expect("echo json"));
    // `TE: trailers` stays as that one value (HAProxy, Envoy; gRPC needs
    // it), and `Trailer` is end to end (it declares the trailer fields).
    assert_eq!(e.header("te").as_deref(), Some("trailers"));
    assert_eq!(e.header("trailer").as_deref(), Some("X-Checksum"));
    for h in ["x-foo", "keep-alive", "proxy-connection"] {
        assert!(
            e.header(h).is_none(),
            "hop-by-hop header {h} reached the backend: {:?}",
            e.0["headers"]
        );
    }
    for v in e.header_all("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-foo"),
            "client's Connection header was forwarded: {v}"
        );
    }
    assert_eq!(e.header("x-keep").as_deref(), Some("yes"));
    assert_eq!(
        e.header_all("x-forwarded-for").join(", "),
        "1.2.3.4, 127.0.0.1"
    );
    assert_eq!(e.header("x-forwarded-proto").as_deref(), Some("http"));

    // Without an incoming X-Forwarded-For, the client IP alone.
    let r = get(ports.web, "/xff").await;
    let e = r.echo();
    assert_eq!(
        e.header_all("x-forwarded-for"),
        vec!["127.0.0.1".to_string()]
    );
    assert_eq!(e.header_all("x-forwarded-proto"), vec!["http".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hop_by_hop_response_headers_removed() {
    let b = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&b]).await;
    let req = format!("GET /hop-resp HTTP/1.1\r\nHost: {}\r\n\r\n", ports.web);
    let (_s, r) = raw_exchange(ports.web, req.as_bytes()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-keep-resp"), Some("yes"));
    for h in ["x-bar", "proxy-connection"] {
        assert!(!r.has_header(h), "{h} reached the client:\n{}", r.head);
    }
    assert!(
        r.header("keep-alive") != Some("timeout=99"),
        "server's Keep-Alive reached the client:\n{}",
        r.head
    );
    if let Some(c) = r.header("connection") {
        assert!(
            !c.to_ascii_lowercase().contains("x-bar"),
            "server's Connection header reached the client:\n{}",
            r.head
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn h2c_prior_knowledge_get_and_post() {
    let b = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&b]).await;
    let mut c = H2::connect(ports.web).await;

    let req = c
        .request(Method::GET, "/h2/get?x=1")
        .body(empty())
        .expect("request");
    let r = c.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.header("x-server").as_deref(), Some("s1"));
    let e = r.echo();
    assert_eq!(e.method(), "GET");
    assert_eq!(e.path(), "/h2/get?x=1");
    assert_eq!(e.version(), "HTTP/1.1", "upstream is HTTP/1.1");
    assert_eq!(
        e.header("host").as_deref(),
        Some(ports.web.to_string().as_str()),
        "the :authority becomes the upstream Host"
    );

    let req = c
        .request(Method::POST, "/h2/post")
        .body(full("h2 body"))
        .expect("request");
    let r = c.send(req).await;
    assert_eq!(r.status, StatusCode::OK);
    let e = r.echo();
    assert_eq!(e.method(), "POST");
    assert_eq!(e.body(), "h2 body");

    // A body larger than the default flow-control windows, both ways.
    let data = pattern(1024 * 1024 + 3);
    let req = c
        .request(Method::POST, "/h2/big")
        .body(full(data.clone()))
        .expect("request");
    let r = c.send(req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.echo().body_hash(), fnv_hex(&data));
    let req = c
        .request(Method::GET, "/large/2000000")
        .body(empty())
        .expect("request");
    let r = c.send(req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 2_000_000);
    assert_eq!(fnv_hex(&r.body), fnv_hex(&pattern(2_000_000)));

    // Concurrent streams on one connection.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let req = c
            .request(Method::GET, &format!("/delay/100/{i}"))
            .body(empty())
            .expect("request");
        let mut c2 = c.clone();
        tasks.push(tokio::spawn(async move { c2.send(req).await }));
    }
    for t in tasks {
        let r = within("h2 stream", Duration::from_secs(10), t)
            .await
            .expect("task");
        assert_eq!(r.status, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn path_query_and_repeated_headers_pass_through() {
    let b = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&b]).await;
    let mut c = H1::connect(ports.web).await;
    let r = c.get("/a%20b/c%2Fd?x=%2F&y=1&y=2&empty").await;
    assert_eq!(r.echo().path(), "/a%20b/c%2Fd?x=%2F&y=1&y=2&empty");

    let req = request(Method::GET, ports.web, "/multi")
        .header("x-multi", "one")
        .header("x-multi", "two")
        .body(empty())
        .expect("request");
    let r = c.send(req).await;
    assert_eq!(r.echo().header_all("x-multi").join(", "), "one, two");

    let r = c.get("/cookies").await;
    assert_eq!(
        r.header_all("set-cookie"),
        vec![
            "a=1; Path=/".to_string(),
            "b=2; Path=/; HttpOnly".to_string()
        ],
        "each Set-Cookie must stay a separate header"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multiple_bind_addresses() {
    let b = Backend::start("s1").await;
    let ports = Ports::new();
    let second = free_addr();
    let cfg = format!(
        "{}[[frontend]]\nname = \"web\"\nbind = [\"{}\", \"{second}\"]\ndefault_backend = \"app\"\n\n{}",
        global_section(ports.admin, &[]),
        ports.web,
        backend_section("app", "roundrobin", &[("s1", b.addr, 1)], "")
    );
    let _d = Daemon::start(&cfg, &[ports.web, second, ports.admin]).await;
    assert_eq!(get(ports.web, "/one").await.status, StatusCode::OK);
    assert_eq!(get(second, "/two").await.status, StatusCode::OK);
    assert_eq!(b.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_pooled_upstream_connections_are_not_used() {
    let flaky = FlakyKeepAliveBackend::start().await;
    let ports = Ports::new();
    let cfg = format!(
        "{}{}{}",
        global_section(ports.admin, &[]),
        frontend_section("web", ports.web, "app", ""),
        backend_section("app", "roundrobin", &[("s1", flaky.addr, 1)], "")
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let mut c = H1::connect(ports.web).await;
    for i in 0..5 {
        let r = c.get(&format!("/stale/{i}")).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "request {i} after the server closed its idle connection: {}",
            r.text()
        );
        assert_eq!(r.text(), "flaky");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        flaky.connections.load(std::sync::atomic::Ordering::SeqCst),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_connection_close_does_not_close_the_client_connection() {
    let b = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&b]).await;
    let mut c = H1::connect(ports.web).await;
    for i in 0..10 {
        let r = c.get(&format!("/close/{i}")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(b.requests(), 10);
    assert_eq!(
        b.connections(),
        10,
        "a connection the server closed must not be reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expect_100_continue() {
    use tokio::io::AsyncWriteExt;
    let b = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&b]).await;
    let mut s = within(
        "connect",
        IO_TIMEOUT,
        tokio::net::TcpStream::connect(ports.web),
    )
    .await
    .expect("connect");
    s.write_all(
        format!(
            "POST /expect HTTP/1.1\r\nHost: {}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
            ports.web
        )
        .as_bytes(),
    )
    .await
    .expect("write head");
    let interim = read_response(&mut s, Duration::from_secs(2))
        .await
        .expect("a 100 Continue before the body is sent");
    assert_eq!(interim.status, 100);
    s.write_all(b"hello").await.expect("write body");
    let r = read_response(&mut s, Duration::from_secs(5))
        .await
        .expect("final response");
    assert_eq!(r.status, 200);
    let e = Echo(serde_json::from_slice(&r.body).expect("echo"));
    assert_eq!(e.body(), "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_clients() {
    let s1 = Backend::start("s1").await;
    let s2 = Backend::start("s2").await;
    let (_d, ports) = simple_proxy(&[&s1, &s2]).await;
    let mut tasks = Vec::new();
    for client in 0..50 {
        let web = ports.web;
        tasks.push(tokio::spawn(async move {
            let mut c = H1::connect(web).await;
            for i in 0..10 {
                let r = c.get(&format!("/delay/5/{client}/{i}")).await;
                assert_eq!(r.status, StatusCode::OK);
                assert_eq!(r.echo().path(), format!("/delay/5/{client}/{i}"));
            }
        }));
    }
    for t in tasks {
        within("client task", Duration::from_secs(15), t)
            .await
            .expect("client task");
    }
    assert_eq!(s1.requests() + s2.requests(), 500);
}

/// Regression: a server's 4xx response must reach the client untouched on a
/// keep-alive connection. The daemon replaces hyper's own bodiless 400/431
/// replies with text ones, and once mistook a server's 404 whose body had
/// already been handed to hyper for such a reply, closing the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_client_errors_pass_through_on_keep_alive() {
    let b = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&b]).await;
    let mut c = H1::connect(ports.web).await;
    for i in 0..30 {
        let status = [400u16, 404, 431, 499][i % 4];
        let r = c.get(&format!("/status/{status}?i={i}")).await;
        assert_eq!(r.status.as_u16(), status, "request {i}");
        let e = r.echo();
        assert_eq!(
            e.path(),
            format!("/status/{status}?i={i}"),
            "the server's own body"
        );
    }
    assert_eq!(b.requests(), 30);
    assert!(
        b.connections() <= 2,
        "keep-alive kept: {} connections",
        b.connections()
    );
}

/// TCP states (hex, as in `/proc/net/tcp`) of IPv4 sockets whose remote end is `peer`.
fn tcp_states_to(peer: std::net::SocketAddr) -> Vec<String> {
    let std::net::SocketAddr::V4(v4) = peer else {
        return Vec::new();
    };
    // /proc/net/tcp writes the address as the in-memory u32, hex, then the port.
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(v4.ip().octets()),
        v4.port()
    );
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&want.as_str())).then(|| f.get(3).map(|s| s.to_string()))?
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_idle_pool_closes_upstream_at_once_without_time_wait() {
    let b = Backend::start("s1").await;
    let ports = Ports::new();
    let cfg = format!(
        "{}{}{}",
        global_section(ports.admin, &[]),
        frontend_section("web", ports.web, "app", ""),
        backend_section(
            "app",
            "roundrobin",
            &[("s1", b.addr, 1)],
            "max_idle_per_server = 0"
        )
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let mut c = H1::connect(ports.web).await;
    for i in 0..20 {
        let r = c.get(&format!("/close-each/{i}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.text().contains("close-each"), "body: {}", r.text());
    }
    assert_eq!(b.requests(), 20);
    assert_eq!(b.connections(), 20, "one upstream connection per request");
    // Every upstream connection is gone once its response is over: none left
    // open (01 ESTABLISHED, 08 CLOSE_WAIT...) and, since the proxy resets
    // instead of closing gracefully, none in TIME_WAIT (06) either.
    eventually(
        "no upstream socket left towards the backend",
        Duration::from_secs(5),
        || async { tcp_states_to(b.addr).is_empty() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwardfor_false_sends_the_forwarding_headers_as_received() {
    let b = Backend::start("s1").await;
    let ports = Ports::new();
    let cfg = format!(
        "{}{}{}",
        global_section(ports.admin, &[]),
        frontend_section("web", ports.web, "app", "forwardfor = false"),
        backend_section("app", "roundrobin", &[("s1", b.addr, 1)], ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let e = get(ports.web, "/none").await.echo();
    assert!(
        e.header("x-forwarded-for").is_none(),
        "{:?}",
        e.0["headers"]
    );
    assert!(
        e.header("x-forwarded-proto").is_none(),
        "{:?}",
        e.0["headers"]
    );
    // What the client sent passes unchanged (HAProxy without `option forwardfor`).
    let req = format!(
        "GET /client HTTP/1.1\r\nHost: {}\r\nX-Forwarded-For: 1.2.3.4\r\nConnection: close\r\n\r\n",
        ports.web
    );
    let (_s, r) = raw_exchange(ports.web, req.as_bytes()).await;
    let e = Echo(serde_json::from_slice(&r.body).expect("echo json"));
    assert_eq!(e.header_all("x-forwarded-for"), vec!["1.2.3.4".to_string()]);
}
