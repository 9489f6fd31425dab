//! Process lifecycle: graceful shutdown on SIGTERM / SIGINT.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let s1 = Backend::start("s1").await;
    let (mut d, ports) = simple_proxy(&[&s1]).await; // grace = 5s
    let web = ports.web;
    let slow = tokio::spawn(async move { H1::connect(web).await.get("/delay/1000").await });
    eventually(
        "the slow request reached the backend",
        Duration::from_secs(5),
        || async { s1.active() == 1 },
    )
    .await;

    let t0 = Instant::now();
    d.signal(libc::SIGTERM);

    // New connections are refused soon after the signal.
    eventually(
        "new connections refused after SIGTERM",
        Duration::from_millis(1500),
        || async move {
            matches!(
                tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(web)).await,
                Ok(Err(_))
            )
        },
    )
    .await;

    let r = within(
        "in-flight request during shutdown",
        Duration::from_secs(5),
        slow,
    )
    .await
    .expect("slow task");
    assert_eq!(
        r.status,
        StatusCode::OK,
        "in-flight request was cut: {}",
        r.text()
    );
    assert_eq!(r.echo().path(), "/delay/1000");

    let status = d
        .wait_exit(Duration::from_secs(3))
        .await
        .expect("daemon still running 3s after its last request completed");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigint_with_idle_keep_alive_connection_exits_0_promptly() {
    let s1 = Backend::start("s1").await;
    let (mut d, ports) = simple_proxy(&[&s1]).await; // grace = 5s
    // An idle keep-alive client connection must not hold the shutdown for the whole grace.
    let mut idle = H1::connect(ports.web).await;
    assert_eq!(idle.get("/before").await.status, StatusCode::OK);

    let t0 = Instant::now();
    d.signal(libc::SIGINT);
    let status = d
        .wait_exit(Duration::from_secs(4))
        .await
        .expect("daemon still running 4s after SIGINT");
    assert_eq!(status.code(), Some(0), "exit status after SIGINT: {status}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "an idle keep-alive connection delayed shutdown to {:?}",
        t0.elapsed()
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_is_bounded_by_grace() {
    let s1 = Backend::start("s1").await;
    let ports = Ports::new();
    let cfg = simple_config(
        &ports,
        &[&s1],
        &[("grace", "\"1s\""), ("timeout.server", "\"20s\"")],
    );
    let mut d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let web = ports.web;
    let stuck = tokio::spawn(async move {
        let mut c = H1::connect(web).await;
        c.try_send(get_req(web, "/delay/8000")).await
    });
    eventually(
        "the slow request reached the backend",
        Duration::from_secs(5),
        || async { s1.active() == 1 },
    )
    .await;
    let t0 = Instant::now();
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(4)).await;
    assert!(
        status.is_some(),
        "daemon still running {:?} after SIGTERM with grace = 1s",
        t0.elapsed()
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(800),
        "daemon exited after {:?}, before the 1s grace for an in-flight request",
        t0.elapsed()
    );
    stuck.abort();
}
