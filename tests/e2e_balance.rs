//! Load balancing (roundrobin, weights, leastconn, source) and health checks.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::*;
use http::StatusCode;

/// Starts frontend `web` → backend `app` with `balance` over `servers` (backend, weight).
async fn balanced(balance: &str, servers: &[(&Backend, u32)], extra: &str) -> (Daemon, Ports) {
    let ports = Ports::new();
    let list: Vec<(&str, std::net::SocketAddr, u32)> = servers
        .iter()
        .map(|(b, w)| (b.name(), b.addr, *w))
        .collect();
    let cfg = format!(
        "{}{}{}",
        global_section(ports.admin, &[]),
        frontend_section("web", ports.web, "app", ""),
        backend_section("app", balance, &list, extra)
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    (d, ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn roundrobin_spreads_evenly() {
    let s1 = Backend::start("s1").await;
    let s2 = Backend::start("s2").await;
    let (_d, ports) = balanced("roundrobin", &[(&s1, 1), (&s2, 1)], "").await;
    let mut c = H1::connect(ports.web).await;
    for i in 0..100 {
        let r = c.get(&format!("/rr/{i}")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let (a, b) = (s1.requests(), s2.requests());
    assert_eq!(a + b, 100);
    assert!(
        a.abs_diff(50) <= 2 && b.abs_diff(50) <= 2,
        "roundrobin split {a}/{b}, expected 50/50 (±2)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn roundrobin_respects_weights() {
    let s1 = Backend::start("s1").await;
    let s2 = Backend::start("s2").await;
    let (_d, ports) = balanced("roundrobin", &[(&s1, 3), (&s2, 1)], "").await;
    let mut c = H1::connect(ports.web).await;
    for i in 0..100 {
        let r = c.get(&format!("/w/{i}")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let (a, b) = (s1.requests(), s2.requests());
    assert_eq!(a + b, 100);
    assert!(
        a.abs_diff(75) <= 3 && b.abs_diff(25) <= 3,
        "weights 3:1 gave {a}/{b}, expected ~75/25 (±3)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leastconn_avoids_the_busy_server() {
    let s1 = Backend::start("s1").await;
    let s2 = Backend::start("s2").await;
    let (_d, ports) = balanced("leastconn", &[(&s1, 1), (&s2, 1)], "").await;

    let web = ports.web;
    let slow = tokio::spawn(async move { H1::connect(web).await.get("/delay/1500").await });
    eventually(
        "the slow request reached a server",
        Duration::from_secs(5),
        || async { s1.active() + s2.active() == 1 },
    )
    .await;
    let (busy, idle) = if s1.active() == 1 {
        (&s1, &s2)
    } else {
        (&s2, &s1)
    };

    let mut c = H1::connect(ports.web).await;
    for i in 0..10 {
        let r = c.get(&format!("/lc/{i}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.header("x-server").as_deref(),
            Some(idle.name()),
            "request {i} went to the busy server {}",
            busy.name()
        );
    }
    assert_eq!(busy.requests(), 1);
    assert_eq!(idle.requests(), 10);
    let r = within("slow request", Duration::from_secs(5), slow)
        .await
        .expect("slow task");
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn source_hash_is_sticky_per_client_ip() {
    let s1 = Backend::start("s1").await;
    let s2 = Backend::start("s2").await;
    let (_d, ports) = balanced("source", &[(&s1, 1), (&s2, 1)], "").await;

    let mut chosen: HashMap<IpAddr, String> = HashMap::new();
    for last in 2u8..18 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
        for round in 0..5 {
            // A fresh connection each time, so stickiness is not per connection.
            let mut c = H1::connect_from(ip, ports.web).await;
            let r = c.get(&format!("/src/{last}/{round}")).await;
            assert_eq!(r.status, StatusCode::OK);
            let e = r.echo();
            assert_eq!(
                e.header_all("x-forwarded-for"),
                vec![ip.to_string()],
                "the proxy saw another client address"
            );
            let server = e.server().to_string();
            let first = chosen.entry(ip).or_insert_with(|| server.clone());
            assert_eq!(
                *first, server,
                "client {ip} moved from {first} to {server} on round {round}"
            );
        }
    }
    let used: HashSet<&String> = chosen.values().collect();
    assert_eq!(
        used.len(),
        2,
        "16 client IPs all hashed to one server: {chosen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_check_takes_a_failing_server_out_and_back() {
    let s1 = Backend::start("s1").await;
    let s2 = Backend::start("s2").await;
    let (_d, ports) = balanced(
        "roundrobin",
        &[(&s1, 1), (&s2, 1)],
        "health_check = { path = \"/health\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }\n",
    )
    .await;
    let admin = ports.admin;
    let up = |server: &'static str, want: bool| async move {
        server_up(&stats(admin).await, "app", server) == Some(want)
    };

    eventually("both servers up", Duration::from_secs(3), || async {
        up("s1", true).await && up("s2", true).await
    })
    .await;
    eventually(
        "both servers get GET /health",
        Duration::from_secs(2),
        || async { s1.health_checks() > 0 && s2.health_checks() > 0 },
    )
    .await;

    s1.set_healthy(false);
    eventually("s1 marked down in /stats", Duration::from_secs(3), || {
        up("s1", false)
    })
    .await;
    let before = s1.requests();
    let mut c = H1::connect(ports.web).await;
    for i in 0..20 {
        let r = c.get(&format!("/hc-down/{i}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-server").as_deref(), Some("s2"));
    }
    assert_eq!(s1.requests(), before, "a down server got traffic");

    s1.set_healthy(true);
    eventually("s1 back up in /stats", Duration::from_secs(3), || {
        up("s1", true)
    })
    .await;
    let before1 = s1.requests();
    let before2 = s2.requests();
    for i in 0..20 {
        let r = c.get(&format!("/hc-up/{i}")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let got1 = s1.requests() - before1;
    let got2 = s2.requests() - before2;
    assert!(
        got1 >= 8 && got2 >= 8,
        "after recovery traffic split {got1}/{got2}, expected about 10/10"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_check_marks_refused_and_slow_servers_down() {
    let good = Backend::start("good").await;
    let slow = Backend::start("slow").await;
    slow.set_health_delay(Duration::from_millis(600));
    let refused = free_addr();
    let ports = Ports::new();
    let cfg = format!(
        "{}{}{}",
        global_section(ports.admin, &[]),
        frontend_section("web", ports.web, "app", ""),
        backend_section(
            "app",
            "roundrobin",
            &[
                ("good", good.addr, 1),
                ("refused", refused, 1),
                ("slow", slow.addr, 1)
            ],
            "health_check = { path = \"/health\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }\n",
        )
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let admin = ports.admin;
    eventually(
        "refused and slow servers marked down, good one up",
        Duration::from_secs(3),
        || async move {
            let s = stats(admin).await;
            server_up(&s, "app", "refused") == Some(false)
                && server_up(&s, "app", "slow") == Some(false)
                && server_up(&s, "app", "good") == Some(true)
        },
    )
    .await;
    let mut c = H1::connect(ports.web).await;
    for i in 0..12 {
        let r = c.get(&format!("/hc/{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text());
        assert_eq!(r.header("x-server").as_deref(), Some("good"));
    }
    assert_eq!(slow.requests(), 0);
}
