//! Admin listener (/health, /stats, /metrics) and the JSON access log.

mod common;

use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_health_is_ok() {
    let s1 = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&s1]).await;
    let r = get(ports.admin, "/health").await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_endpoint_lists_every_endpoint() {
    let s1 = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&s1]).await;
    let r = get(ports.admin, "/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let v = r.json();
    let endpoints: Vec<&str> = v["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("no endpoints list: {v}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "/health",
        "/stats",
        "/metrics",
        "/plugins",
        "/tables",
        "/logs/reopen",
    ] {
        assert!(
            endpoints.iter().any(|e| e.contains(want)),
            "{want} missing from {endpoints:?}"
        );
    }
}

fn u(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not an unsigned number: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_counters_match_traffic() {
    let s1 = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&s1]).await;
    let mut c = H1::connect(ports.web).await;
    for i in 0..4 {
        assert_eq!(c.get(&format!("/ok/{i}")).await.status, StatusCode::OK);
    }
    let req = request(Method::POST, ports.web, "/ok/post")
        .body(full(vec![b'x'; 1000]))
        .expect("request");
    assert_eq!(c.send(req).await.status, StatusCode::OK);
    for _ in 0..2 {
        assert_eq!(c.get("/status/404").await.status, StatusCode::NOT_FOUND);
    }
    let admin = ports.admin;
    eventually(
        "frontend requests == 7 in /stats",
        Duration::from_secs(2),
        || async move {
            let s = stats(admin).await;
            named(&s["frontends"], "web").is_some_and(|f| f["requests"].as_u64() == Some(7))
        },
    )
    .await;
    // The client connection is still open while we look.
    let s = stats(admin).await;
    let fe = named(&s["frontends"], "web").expect("frontend web in /stats");
    assert_eq!(u(&fe["requests"], "requests"), 7, "{fe}");
    assert_eq!(u(&fe["responses"]["2xx"], "2xx"), 5, "{fe}");
    assert_eq!(u(&fe["responses"]["4xx"], "4xx"), 2, "{fe}");
    for k in ["1xx", "3xx", "5xx", "other"] {
        assert_eq!(u(&fe["responses"][k], k), 0, "{k}: {fe}");
    }
    assert!(
        u(&fe["connections_current"], "connections_current") >= 1,
        "{fe}"
    );
    assert!(
        u(&fe["connections_total"], "connections_total") >= 1,
        "{fe}"
    );
    // At least the 1000-byte request body in, the JSON echo bodies out.
    assert!(u(&fe["bytes_in"], "bytes_in") >= 1000, "{fe}");
    assert!(u(&fe["bytes_out"], "bytes_out") >= 5 * 100, "{fe}");

    let be = named(&s["backends"], "app").expect("backend app in /stats");
    assert_eq!(u(&be["requests"], "requests"), 7, "{be}");
    assert_eq!(u(&be["responses"]["2xx"], "2xx"), 5, "{be}");
    assert_eq!(u(&be["responses"]["4xx"], "4xx"), 2, "{be}");
    let sv = named(&be["servers"], "s1").expect("server s1 in /stats");
    assert_eq!(
        sv["addr"].as_str(),
        Some(s1.addr.to_string().as_str()),
        "{sv}"
    );
    assert_eq!(sv["up"].as_bool(), Some(true), "{sv}");
    assert_eq!(u(&sv["weight"], "weight"), 1, "{sv}");
    assert_eq!(u(&sv["requests"], "requests"), 7, "{sv}");
    assert_eq!(u(&sv["active"], "active"), 0, "{sv}");
    assert_eq!(u(&sv["failures"], "failures"), 0, "{sv}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_exposes_request_counter_and_server_up_gauge() {
    let s1 = Backend::start("s1").await;
    let s2 = Backend::start("s2").await;
    s2.set_healthy(false);
    let ports = Ports::new();
    let cfg = format!(
        "{}{}{}",
        global_section(ports.admin, &[]),
        frontend_section("web", ports.web, "app", ""),
        backend_section(
            "app",
            "roundrobin",
            &[("s1", s1.addr, 1), ("s2", s2.addr, 1)],
            "health_check = { path = \"/health\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }\n"
        )
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let admin = ports.admin;
    eventually("s2 down in /stats", Duration::from_secs(3), || async move {
        server_up(&stats(admin).await, "app", "s2") == Some(false)
    })
    .await;
    for i in 0..3 {
        assert_eq!(
            get(ports.web, &format!("/m/{i}")).await.status,
            StatusCode::OK
        );
    }
    let want = [
        "portcullis_frontend_requests_total{frontend=\"web\"} 3",
        "portcullis_server_up{backend=\"app\",server=\"s1\"} 1",
        "portcullis_server_up{backend=\"app\",server=\"s2\"} 0",
    ];
    let start = std::time::Instant::now();
    let (ok, last) = loop {
        let r = get(admin, "/metrics").await;
        assert_eq!(r.status, StatusCode::OK);
        let text = r.text();
        if want.iter().all(|w| text.lines().any(|l| l.trim() == *w)) {
            break (true, text);
        }
        if start.elapsed() > Duration::from_secs(2) {
            break (false, text);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(ok, "/metrics lacks one of {want:?}:\n{last}");
    let r = get(admin, "/metrics").await;
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("text/plain")),
        "content-type {:?}",
        r.header("content-type")
    );
}

/// The JSON access-log line whose `path` is `path`.
async fn access_line(d: &Daemon, path: &str) -> Value {
    let line = d
        .wait_stderr_line(Duration::from_secs(2), |l| {
            serde_json::from_str::<Value>(l.trim()).is_ok_and(|v| v["path"].as_str() == Some(path))
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "no JSON access-log line with path {path:?} on stderr within 2s; stderr:\n{}",
                d.stderr()
            )
        });
    serde_json::from_str(line.trim()).expect("json line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_access_log_line_per_request() {
    let s1 = Backend::start("s1").await;
    let (d, ports) = simple_proxy(&[&s1]).await;
    let r = get(ports.web, "/logme").await;
    assert_eq!(r.status, StatusCode::OK);
    let v = access_line(&d, "/logme").await;
    assert!(
        v["client"]
            .as_str()
            .is_some_and(|c| c.contains("127.0.0.1")),
        "client: {v}"
    );
    assert_eq!(v["frontend"], "web", "{v}");
    assert_eq!(v["backend"], "app", "{v}");
    assert_eq!(v["server"], "s1", "{v}");
    assert_eq!(v["method"], "GET", "{v}");
    assert_eq!(v["status"], 200, "{v}");
    assert!(v["bytes"].as_u64().is_some_and(|b| b > 0), "bytes: {v}");
    assert!(v["total_ms"].is_number(), "total_ms: {v}");
    assert!(v["upstream_ms"].is_number(), "upstream_ms: {v}");

    let req = request(Method::POST, ports.web, "/status/404")
        .body(full("payload"))
        .expect("request");
    let r = H1::connect(ports.web).await.send(req).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let v = access_line(&d, "/status/404").await;
    assert_eq!(v["method"], "POST", "{v}");
    assert_eq!(v["status"], 404, "{v}");

    // Exactly one line per request.
    let r = get(ports.web, "/once").await;
    assert_eq!(r.status, StatusCode::OK);
    access_line(&d, "/once").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let count = d
        .stderr()
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l.trim())
                .is_ok_and(|v| v["path"].as_str() == Some("/once"))
        })
        .count();
    assert_eq!(count, 1, "one access-log line per request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_log_off_writes_nothing() {
    let s1 = Backend::start("s1").await;
    let ports = Ports::new();
    let cfg = simple_config(&ports, &[&s1], &[("access_log", "\"off\"")]);
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let r = get(ports.web, "/quiet-path").await;
    assert_eq!(r.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !d.stderr().contains("/quiet-path"),
        "access_log = \"off\" still logged the request:\n{}",
        d.stderr()
    );
}
