//! Connection bounds through the real binary: HTTP/2 idle and head
//! timeouts, a client that stops reading, `maxconn` (global and per
//! frontend) with shedding of silent connections, the open-file limit, and a
//! SIGTERM under keep-alive load that loses no request.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const H2_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

async fn connect(addr: SocketAddr) -> TcpStream {
    within("connect", IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

/// Reads and discards until EOF or reset; returns when that happened.
async fn closed_after(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    wait_closed(s, limit).await.then(|| t0.elapsed())
}

async fn proxy_with(
    backends: &[&Backend],
    overrides: &[(&str, &str)],
    frontend_extra: &str,
) -> (Daemon, Ports) {
    let ports = Ports::new();
    let servers: Vec<(&str, SocketAddr, u32)> =
        backends.iter().map(|b| (b.name(), b.addr, 1)).collect();
    let cfg = format!(
        "{}{}{}",
        global_section(ports.admin, overrides),
        frontend_section("web", ports.web, "app", frontend_extra),
        backend_section("app", "roundrobin", &servers, "")
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    (d, ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn h2_connection_without_a_request_is_closed_after_the_head_timeout() {
    let s1 = Backend::start("s1").await;
    let (_d, ports) = proxy_with(&[&s1], &[("timeout.http_request", "\"1s\"")], "").await;
    // Preface and SETTINGS, then nothing: before, such connections stayed forever.
    let mut s = connect(ports.web).await;
    s.write_all(H2_PREFACE).await.expect("preface");
    s.write_all(&H2_SETTINGS).await.expect("settings");
    let after = closed_after(&mut s, Duration::from_secs(8))
        .await
        .expect("idle h2 connection still open 8s after a 1s head timeout");
    assert!(
        after >= Duration::from_millis(800),
        "closed after {after:?}, before the 1s head timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn h2_headers_block_that_never_ends_is_closed() {
    let s1 = Backend::start("s1").await;
    let (_d, ports) = proxy_with(&[&s1], &[("timeout.http_request", "\"1s\"")], "").await;
    let mut s = connect(ports.web).await;
    s.write_all(H2_PREFACE).await.expect("preface");
    s.write_all(&H2_SETTINGS).await.expect("settings");
    // HEADERS on stream 1 with END_STREAM but without END_HEADERS: the block
    // never completes, so the handler never runs.
    let headers = [0, 0, 1, 1, 0x1, 0, 0, 0, 1, 0x82];
    s.write_all(&headers).await.expect("headers");
    closed_after(&mut s, Duration::from_secs(8))
        .await
        .expect("h2 connection with an unfinished HEADERS block still open after 8s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn h2_connection_idle_after_a_request_is_closed_after_keep_alive() {
    let s1 = Backend::start("s1").await;
    let (_d, ports) = proxy_with(&[&s1], &[("timeout.keep_alive", "\"1s\"")], "").await;
    let stream = connect(ports.web).await;
    let (mut sender, conn) = within(
        "h2 handshake",
        IO_TIMEOUT,
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
    )
    .await
    .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://{}/a", ports.web))
        .body(empty())
        .expect("request");
    let resp = within("h2 response", IO_TIMEOUT, sender.send_request(req))
        .await
        .expect("h2 response");
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);
    let t0 = Instant::now();
    let _ = within(
        "h2 connection closed by the proxy after keep_alive",
        Duration::from_secs(8),
        conn,
    )
    .await
    .expect("connection task");
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "closed after {:?}, before keep_alive",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_that_stops_reading_is_closed_after_timeout_client() {
    let s1 = Backend::start("s1").await;
    let (_d, ports) = proxy_with(&[&s1], &[("timeout.client", "\"1s\"")], "").await;
    let mut s = connect(ports.web).await;
    // 256 MiB: far more than the socket buffers on both sides can hold.
    s.write_all(b"GET /large/268435456 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut first = [0u8; 64];
    let n = within("first response bytes", IO_TIMEOUT, s.read(&mut first))
        .await
        .expect("read");
    assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &first[..n]);
    // Read nothing more: the proxy's writes stall.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    eventually(
        "the stalled connection is closed (stats connections_current = 0)",
        Duration::from_secs(8),
        || async {
            let st = stats(ports.admin).await;
            named(&st["frontends"], "web").expect("web")["connections_current"] == 0
        },
    )
    .await;
    closed_after(&mut s, Duration::from_secs(10))
        .await
        .expect("client socket not closed by the proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maxconn_pauses_accept_until_a_slot_frees() {
    let s1 = Backend::start("s1").await;
    let (_d, ports) = proxy_with(&[&s1], &[("maxconn", "2")], "").await;
    let st = stats(ports.admin).await;
    assert_eq!(st["maxconn"], 2, "{st}");
    assert_eq!(named(&st["frontends"], "web").expect("web")["maxconn"], 2);

    // Two slow exchanges hold both slots.
    let busy: Vec<_> = (0..2)
        .map(|i| {
            let web = ports.web;
            tokio::spawn(async move {
                let mut c = H1::connect(web).await;
                let r = c.get(&format!("/delay/1500?{i}")).await;
                assert_eq!(r.status, StatusCode::OK);
                // The connection closes here, freeing its slot.
            })
        })
        .collect();
    eventually("both slots taken", Duration::from_secs(5), || async {
        stats(ports.admin).await["connections_current"] == 2
    })
    .await;
    let t0 = Instant::now();
    let mut third = H1::connect(ports.web).await; // waits in the backlog
    let r = third.get("/third").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "third connection served after {:?}: maxconn = 2 did not hold it",
        t0.elapsed()
    );
    for b in busy {
        b.await.expect("busy client");
    }
    let st = stats(ports.admin).await;
    assert!(
        st["maxconn_reached"].as_u64().unwrap_or(0) > 0,
        "limit hits not counted: {st}"
    );
    let metrics = get(ports.admin, "/metrics").await.text();
    assert!(metrics.contains("portcullis_maxconn 2\n"), "{metrics}");
    assert!(
        metrics.contains("portcullis_frontend_maxconn{frontend=\"web\"} 2\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frontend_maxconn_limits_only_its_frontend() {
    let s1 = Backend::start("s1").await;
    let [web2] = free_addrs::<1>();
    let ports = Ports::new();
    let cfg = format!(
        "{}{}{}{}",
        global_section(ports.admin, &[]),
        frontend_section("web", ports.web, "app", "maxconn = 1"),
        frontend_section("other", web2, "app", ""),
        backend_section("app", "roundrobin", &[("s1", s1.addr, 1)], "")
    );
    let _d = Daemon::start(&cfg, &[ports.web, web2, ports.admin]).await;
    let st = stats(ports.admin).await;
    assert_eq!(named(&st["frontends"], "web").expect("web")["maxconn"], 1);
    let busy = tokio::spawn(async move {
        let mut c = H1::connect(ports.web).await;
        c.get("/delay/1500").await.status
    });
    eventually("web's slot taken", Duration::from_secs(5), || async {
        named(&stats(ports.admin).await["frontends"], "web").expect("web")["connections_current"]
            == 1
    })
    .await;
    // The other frontend is not held back by web's limit.
    let t0 = Instant::now();
    assert_eq!(get(web2, "/x").await.status, StatusCode::OK);
    assert!(t0.elapsed() < Duration::from_millis(1000));
    // web's second connection waits for the first.
    let t0 = Instant::now();
    assert_eq!(get(ports.web, "/y").await.status, StatusCode::OK);
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "second web connection served after {:?} despite maxconn = 1",
        t0.elapsed()
    );
    assert_eq!(busy.await.expect("busy"), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_connections_at_maxconn_are_shed_for_real_clients() {
    let s1 = Backend::start("s1").await;
    let (_d, ports) = proxy_with(
        &[&s1],
        // Without shedding, the real client would wait the whole 10s head timeout.
        &[("maxconn", "8"), ("timeout.http_request", "\"10s\"")],
        "",
    )
    .await;
    // The readiness probe's connection must be gone, or the eighth silent
    // connection already hits the limit.
    eventually("no connection open", Duration::from_secs(5), || async {
        stats(ports.admin).await["connections_current"] == 0
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(connect(ports.web).await);
    }
    eventually(
        "silent connections hold every slot",
        Duration::from_secs(5),
        || async { stats(ports.admin).await["connections_current"] == 8 },
    )
    .await;
    let t0 = Instant::now();
    let r = within(
        "real client served",
        Duration::from_secs(5),
        get(ports.web, "/real"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "real client waited {:?} behind silent connections",
        t0.elapsed()
    );
    for s in &mut silent {
        assert!(
            wait_closed(s, Duration::from_secs(5)).await,
            "a silent connection was kept while a real client waited"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soft_open_file_limit_is_raised_to_the_hard_limit() {
    let s1 = Backend::start("s1").await;
    let (d, _ports) = proxy_with(&[&s1], &[], "").await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files <soft> <hard> files"
    assert_eq!(fields[3], fields[4], "soft limit not raised: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_keep_alive_load_loses_no_request() {
    let s1 = Backend::start("s1").await;
    let (mut d, ports) = proxy_with(&[&s1], &[("grace", "\"5s\"")], "").await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let closes = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let (stop, ok, closes, failures) = (
                Arc::clone(&stop),
                Arc::clone(&ok),
                Arc::clone(&closes),
                Arc::clone(&failures),
            );
            let web = ports.web;
            tokio::spawn(async move {
                let mut c = H1::connect(web).await;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    // Some exchanges take a while, so SIGTERM finds both busy and idle connections.
                    let path = if n.is_multiple_of(3) {
                        format!("/delay/20?c={i}&n={n}")
                    } else {
                        format!("/a?c={i}&n={n}")
                    };
                    match c.try_send(get_req(web, &path)).await {
                        Ok(r) if r.status == StatusCode::OK => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if r.header("connection").as_deref() == Some("close") {
                                closes.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            // Think time, as real clients have: SIGTERM finds
                            // many connections idle between two requests.
                            tokio::time::sleep(Duration::from_millis(10 * (n % 4) + 5)).await;
                        }
                        Ok(r) => {
                            failures
                                .lock()
                                .expect("lock")
                                .push(format!("status {}", r.status));
                            return;
                        }
                        Err(e) => {
                            failures
                                .lock()
                                .expect("lock")
                                .push(format!("client {i} request {n}: {e}"));
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.signal(libc::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(8))
        .await
        .expect("daemon still running 8s after SIGTERM");
    stop.store(true, Ordering::Relaxed);
    // A client that panicked (a request unanswered within IO_TIMEOUT) lost a
    // request too: its join error must not be dropped.
    for (i, c) in clients.into_iter().enumerate() {
        within("client task", Duration::from_secs(15), c)
            .await
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
    }
    assert_eq!(status.code(), Some(0), "exit status: {status}");
    let failures = failures.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "{} requests failed across SIGTERM ({} ok): {failures:?}",
        failures.len(),
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(
        closes.load(Ordering::Relaxed),
        16,
        "every keep-alive client must get a response with Connection: close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_answers_an_idle_keep_alive_connection_with_close() {
    let s1 = Backend::start("s1").await;
    let (mut d, ports) = proxy_with(&[&s1], &[("grace", "\"5s\"")], "").await;
    let mut c = H1::connect(ports.web).await;
    assert_eq!(c.get("/before").await.status, StatusCode::OK);
    d.signal(libc::SIGTERM);
    // The client's next request was already on its way when the proxy began
    // to stop: it is answered, with Connection: close (before, the idle
    // connection was closed under it).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = c
        .try_send(get_req(ports.web, "/after"))
        .await
        .expect("request on an idle keep-alive connection after SIGTERM");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    let status = d
        .wait_exit(Duration::from_secs(4))
        .await
        .expect("daemon still running 4s after SIGTERM");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn h2_client_that_grants_no_window_is_closed_after_timeout_client() {
    let s1 = Backend::start("s1").await;
    let (_d, ports) = proxy_with(&[&s1], &[("timeout.client", "\"1s\"")], "").await;
    let mut s = connect(ports.web).await;
    s.write_all(H2_PREFACE).await.expect("preface");
    s.write_all(&H2_SETTINGS).await.expect("settings");
    // GET /large/10000000: :method GET, :scheme http, :path (literal), :authority x.
    let mut block = vec![0x82, 0x86, 0x04, 15];
    block.extend_from_slice(b"/large/10000000");
    block.extend_from_slice(&[0x01, 1, b'x']);
    let mut frame = vec![0, 0, block.len() as u8, 1, 0x5, 0, 0, 0, 1];
    frame.extend_from_slice(&block);
    s.write_all(&frame).await.expect("headers");
    // Read everything the proxy sends (the socket never fills up) but grant
    // no flow-control window beyond the initial 64 KiB: the stream stalls.
    let t0 = Instant::now();
    let mut got = 0usize;
    let mut buf = vec![0u8; 65536];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(8), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got += n,
            Err(_) => break false,
        }
        if t0.elapsed() > Duration::from_secs(10) {
            break false;
        }
    };
    assert!(
        got > 60_000,
        "the first window of data was not sent ({got} bytes)"
    );
    assert!(
        closed && t0.elapsed() < Duration::from_secs(8),
        "h2 connection stalled by flow control still open after {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parked_keep_alive_connection_serves_its_next_request_and_keeps_a_partial_one() {
    let s1 = Backend::start("s1").await;
    // A head may take 10 s to arrive: the pause below is not a 408.
    let (_d, ports) = proxy_with(&[&s1], &[("timeout.http_request", "\"10s\"")], "").await;
    let mut s = connect(ports.web).await;
    // One full request and the start of a second one in the same write: the
    // second head's first bytes wait in hyper's buffer while the connection
    // parks (idle > 1 s) and must survive it.
    s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTT")
        .await
        .expect("write");
    let first = read_response(&mut s, IO_TIMEOUT)
        .await
        .expect("first response");
    assert_eq!(first.status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.write_all(b"P/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write rest");
    let second = read_response(&mut s, IO_TIMEOUT)
        .await
        .expect("second response");
    assert_eq!(second.status, 200);
    assert!(second.text().contains("\"/b\""), "{}", second.text());
    // Parked again with nothing buffered: the next request wakes it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.write_all(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let third = read_response(&mut s, IO_TIMEOUT)
        .await
        .expect("third response");
    assert_eq!(third.status, 200);
    assert!(third.text().contains("\"/c\""), "{}", third.text());
}
