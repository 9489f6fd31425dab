//! Server `maxconn` and the backend queue through the real binary: a
//! server at its limit takes no new request, a free server is chosen
//! first, the rest wait in arrival order and end after `timeout.queue`
//! with HAProxy's 503 and termination state `sQ`; `/stats` shows
//! `qcur`/`qmax`/`scur`/`smax`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(15);

fn config(ports: &Ports, servers: &str, timeouts: &str) -> String {
    format!(
        "{}{}log_format = \"%HU %ST %ts %Tw\"\n[[backend]]\nname = \"app\"\nbalance = \"roundrobin\"\nserver = [\n{servers}]\n{timeouts}\n",
        global_section(
            ports.admin,
            &[("access_log", "\"text\""), ("timeout.server", "\"10s\"")]
        ),
        frontend_section("web", ports.web, "app", ""),
    )
}

/// Watches the highest number of requests a backend serves at once.
fn watch_peak(
    b: &Backend,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(AtomicUsize::new(0));
    let st = Arc::clone(&b.state);
    let p = Arc::clone(&peak);
    let task = tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            p.fetch_max(st.active.load(Ordering::SeqCst), Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    (peak, task)
}

#[tokio::test]
async fn full_servers_take_no_request_and_the_queue_serves_in_order() {
    let s1 = Backend::start("s1").await;
    let s2 = Backend::start("s2").await;
    let ports = Ports::new();
    let servers = format!(
        "  {{ name = \"s1\", addr = \"{}\", maxconn = 1 }},\n  {{ name = \"s2\", addr = \"{}\", maxconn = 1 }},\n",
        s1.addr, s2.addr
    );
    let d = Daemon::start(
        &config(&ports, &servers, "[backend.timeout]\nqueue = \"5s\"\n"),
        &[ports.web, ports.admin],
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let (peak1, t1) = watch_peak(&s1, Arc::clone(&stop));
    let (peak2, t2) = watch_peak(&s2, Arc::clone(&stop));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..5u64 {
        let web = ports.web;
        tasks.push(tokio::spawn(async move {
            // Staggered so the arrival order is known.
            tokio::time::sleep(Duration::from_millis(30 * i)).await;
            let r = get(web, &format!("/delay/400?n={i}")).await;
            (i, r.status.as_u16(), start.elapsed())
        }));
    }
    // While they wait: the queue shows in /stats.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let stats = get(ports.admin, "/stats").await.json();
    let app = &stats["backends"][0];
    assert_eq!(app["qcur"], 3, "three requests wait: {app}");
    assert_eq!(app["servers"][0]["scur"], 1, "{app}");
    assert_eq!(app["servers"][0]["maxconn"], 1, "{app}");
    let mut done = Vec::new();
    for t in tasks {
        done.push(within("queued request", LIMIT, t).await.expect("task"));
    }
    stop.store(true, Ordering::SeqCst);
    let _ = (t1.await, t2.await);
    for (i, status, _) in &done {
        assert_eq!(*status, 200, "request {i}");
    }
    assert_eq!(
        peak1.load(Ordering::SeqCst),
        1,
        "s1 never served two at once"
    );
    assert_eq!(
        peak2.load(Ordering::SeqCst),
        1,
        "s2 never served two at once"
    );
    // FIFO: the two first ones at once, then in arrival order, two by two.
    let ends: Vec<Duration> = done.iter().map(|(_, _, e)| *e).collect();
    assert!(ends[0] < Duration::from_millis(700), "{ends:?}");
    assert!(ends[2] >= Duration::from_millis(750), "{ends:?}");
    assert!(
        ends[2] <= ends[3] && ends[3] <= ends[4],
        "served in order: {ends:?}"
    );
    assert!(ends[4] >= Duration::from_millis(1150), "{ends:?}");
    let stats = get(ports.admin, "/stats").await.json();
    let app = &stats["backends"][0];
    assert_eq!(app["qcur"], 0, "{app}");
    assert_eq!(app["qmax"], 3, "{app}");
    assert_eq!(app["servers"][0]["smax"], 1, "{app}");
    assert_eq!(app["servers"][1]["smax"], 1, "{app}");
    assert_eq!(s1.requests() + s2.requests(), 5);
    // %Tw: the first two went straight to a server, the last waited for two turns.
    d.wait_stderr_line(LIMIT, |l| l.starts_with("/delay/400?n=4 "))
        .await
        .expect("the last request's log line");
    let tw = |n: u64| {
        d.stderr()
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("/delay/400?n={n} 200 -- "))
                    .and_then(|t| t.trim().parse::<u64>().ok())
            })
            .unwrap_or_else(|| panic!("no log line with %Tw for n={n}: {}", d.stderr()))
    };
    assert_eq!((tw(0), tw(1)), (0, 0), "no wait for the first two");
    assert!(tw(4) >= 500, "the last one waited: {} ms", tw(4));
    drop(d);
}

#[tokio::test]
async fn a_free_server_is_chosen_before_waiting() {
    let s1 = Backend::start("s1").await;
    let s2 = Backend::start("s2").await;
    let ports = Ports::new();
    let servers = format!(
        "  {{ name = \"s1\", addr = \"{}\", maxconn = 1 }},\n  {{ name = \"s2\", addr = \"{}\" }},\n",
        s1.addr, s2.addr
    );
    let _d = Daemon::start(&config(&ports, &servers, ""), &[ports.web, ports.admin]).await;
    let web = ports.web;
    let slow = tokio::spawn(async move { get(web, "/delay/1500").await });
    eventually("s1 busy", LIMIT, || async {
        s1.active() + s2.active() == 1
    })
    .await;
    let busy_is_s1 = s1.active() == 1;
    // Every other request goes to the free server at once.
    for _ in 0..6 {
        let t = Instant::now();
        let r = get(web, "/quick").await;
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        if busy_is_s1 {
            assert_eq!(r.header("x-server").as_deref(), Some("s2"));
        }
    }
    assert_eq!(within("slow", LIMIT, slow).await.expect("task").status, 200);
}

#[tokio::test]
async fn queue_timeout_answers_503_with_sq() {
    let s1 = Backend::start("s1").await;
    let ports = Ports::new();
    let servers = format!(
        "  {{ name = \"s1\", addr = \"{}\", maxconn = 1 }},\n",
        s1.addr
    );
    let d = Daemon::start(
        &config(&ports, &servers, "[backend.timeout]\nqueue = \"300ms\"\n"),
        &[ports.web, ports.admin],
    )
    .await;
    let web = ports.web;
    let slow = tokio::spawn(async move { get(web, "/delay/1500").await });
    eventually("s1 busy", LIMIT, || async { s1.active() == 1 }).await;
    let t = Instant::now();
    let r = get(web, "/waits").await;
    let waited = t.elapsed();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        waited >= Duration::from_millis(280) && waited < Duration::from_millis(1200),
        "waited {waited:?}"
    );
    d.wait_stderr_line(LIMIT, |l| {
        // %Tw: the time it waited in the queue, as HAProxy logs it.
        l.strip_prefix("/waits 503 sQ ")
            .and_then(|t| t.trim().parse::<u64>().ok())
            .is_some_and(|ms| (280..1200).contains(&ms))
    })
    .await
    .expect("the queue timeout logged sQ");
    assert_eq!(within("slow", LIMIT, slow).await.expect("task").status, 200);
    // The queue is empty again and the server takes the next request.
    let r = get(web, "/after").await;
    assert_eq!(r.status, 200);
    let stats = get(ports.admin, "/stats").await.json();
    assert_eq!(stats["backends"][0]["qcur"], 0);
    assert_eq!(stats["backends"][0]["qmax"], 1);
}

#[tokio::test]
async fn a_client_that_leaves_the_queue_frees_its_place() {
    let s1 = Backend::start("s1").await;
    let ports = Ports::new();
    let servers = format!(
        "  {{ name = \"s1\", addr = \"{}\", maxconn = 1 }},\n",
        s1.addr
    );
    let _d = Daemon::start(
        &config(&ports, &servers, "[backend.timeout]\nqueue = \"5s\"\n"),
        &[ports.web, ports.admin],
    )
    .await;
    let web = ports.web;
    let slow = tokio::spawn(async move { get(web, "/delay/800").await });
    eventually("s1 busy", LIMIT, || async { s1.active() == 1 }).await;
    // A client queues, then gives up.
    let gone = tokio::spawn(async move { get(web, "/gives-up").await });
    eventually("one queued", LIMIT, || async {
        get(ports.admin, "/stats").await.json()["backends"][0]["qcur"] == 1
    })
    .await;
    gone.abort();
    eventually("queue empty", LIMIT, || async {
        get(ports.admin, "/stats").await.json()["backends"][0]["qcur"] == 0
    })
    .await;
    assert_eq!(within("slow", LIMIT, slow).await.expect("task").status, 200);
    // Its slot was not leaked: the server still takes one request at a time.
    let r = get(web, "/next").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        get(ports.admin, "/stats").await.json()["backends"][0]["servers"][0]["scur"],
        0
    );
}

#[test]
fn check_refuses_bad_maxconn_and_queue_timeout() {
    let dir = TempDir::new("queue-check");
    let ports = Ports::new();
    for (servers, timeouts, want) in [
        (
            "  { name = \"s1\", addr = \"127.0.0.1:9\", maxconn = -1 },\n",
            "",
            "maxconn must be between 0 and 1000000, got -1",
        ),
        (
            "  { name = \"s1\", addr = \"127.0.0.1:9\", maxconn = \"ten\" },\n",
            "",
            "expected an integer, got the string \"ten\"",
        ),
        (
            "  { name = \"s1\", addr = \"127.0.0.1:9\" },\n",
            "[backend.timeout]\nqueue = \"soon\"\n",
            "queue",
        ),
    ] {
        let path = dir.write("c.toml", &config(&ports, servers, timeouts));
        let out = run_bin(
            &["check", "-c", path.to_str().expect("path")],
            Duration::from_secs(10),
        );
        assert!(
            out.status.is_some_and(|s| !s.success()),
            "accepted: {servers}{timeouts}"
        );
        assert!(
            out.stderr.contains(want) && out.stderr.contains("c.toml:"),
            "{want}: {}",
            out.stderr
        );
    }
}

/// A TCP echo server counting the connections open at once.
async fn tcp_echo() -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let (open, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (o, p) = (Arc::clone(&open), Arc::clone(&peak));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let now = o.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            let o = Arc::clone(&o);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open, peak)
}

#[tokio::test]
async fn tcp_mode_connections_wait_for_the_servers_maxconn() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, _open, peak) = tcp_echo().await;
    let ports = Ports::new();
    let cfg = format!(
        "{}[[frontend]]\nname = \"tcpfe\"\nbind = \"{}\"\nmode = \"tcp\"\ndefault_backend = \"t\"\n\n[[backend]]\nname = \"t\"\nserver = [{{ name = \"s1\", addr = \"{server}\", maxconn = 1 }}]\ntimeout = {{ queue = \"1s\" }}\n",
        global_section(ports.admin, &[("access_log", "\"text\"")]),
        ports.web,
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let mut first = tokio::net::TcpStream::connect(ports.web)
        .await
        .expect("connect");
    first.write_all(b"one").await.expect("write");
    let mut buf = [0u8; 3];
    within("first echo", LIMIT, first.read_exact(&mut buf))
        .await
        .expect("read");
    // The second connection is accepted but waits for the server's slot.
    let mut second = tokio::net::TcpStream::connect(ports.web)
        .await
        .expect("connect");
    second.write_all(b"two").await.expect("write");
    let early = tokio::time::timeout(Duration::from_millis(400), second.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "answered while the server was full: {early:?}"
    );
    let stats = get(ports.admin, "/stats").await.json();
    assert_eq!(stats["backends"][0]["qcur"], 1, "{stats}");
    drop(first);
    within("second echo", LIMIT, second.read_exact(&mut buf))
        .await
        .expect("read");
    assert_eq!(&buf, b"two");
    assert_eq!(
        peak.load(Ordering::SeqCst),
        1,
        "never two connections at once"
    );
    // With the slot held (the second connection is open, idle for less
    // than timeout.client), a third one gives up after timeout.queue: sQ.
    let mut third = tokio::net::TcpStream::connect(ports.web)
        .await
        .expect("connect");
    third.write_all(b"three").await.expect("write");
    let mut rest = Vec::new();
    let n = within("third closed", LIMIT, third.read_to_end(&mut rest)).await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?} {rest:?}");
    assert!(rest.is_empty(), "{rest:?}");
    d.wait_stderr_line(LIMIT, |l| l.contains(" tcpfe t/") && l.ends_with(" sQ"))
        .await
        .expect("the queued connection logged sQ");
}
