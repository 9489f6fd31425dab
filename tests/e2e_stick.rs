//! Stick tables through the binary: rate limiting with `track_sc0`,
//! counters by status class, entries held while a request runs, `nopurge`,
//! gpc/gpt actions, fetches in values, and the admin API round-trips.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use serde_json::Value;

const TABLES: &str = r#"
[[stick_table]]
name = "per_ip"
type = "ip"
size = 1000
expire = "30s"
store = ["http_req_cnt", "http_req_rate(2s)", "http_err_cnt", "http_err_rate(10s)", "http_fail_cnt", "http_fail_rate(10s)", "conn_cur", "conn_cnt", "bytes_in_cnt", "bytes_out_cnt", "gpc0", "gpc0_rate(10s)", "gpt0"]

[[stick_table]]
name = "by_key"
type = "string"
len = 16
size = 2
nopurge = true
store = ["http_req_cnt"]
"#;

const RULES: &str = r#"http_request = [
  { track_sc0 = "src", table = "per_ip" },
  { track_sc1 = "hdr(x-api-key)", table = "by_key" },
  { deny = 429, headers = { "Retry-After" = "2" }, if = "path_beg /limited and sc0_http_req_rate gt 5" },
  { sc_inc_gpc = [0, 0], if = "path /inc" },
  { sc_set_gpt = [0, 0], expr = "url_param(v)", if = "path /gpt" },
  { sc_clr_gpc = [0, 0], if = "path /clr" },
  { return = 200, content_type = "text/plain", body = "cnt=%[sc0_http_req_cnt] gen=%[sc_http_req_cnt(0)] src=%[src_http_req_cnt(per_ip)] gpc0=%[sc0_get_gpc0] gpt0=%[sc0_get_gpt0] used=%[table_cnt(per_ip)] avl=%[table_avl(by_key)] t1=%[sc1_tracked] k=%[sc1_http_req_cnt]", if = "path_beg /info /inc /gpt /clr" },
]
http_response = [
  { set_header = "X-Req-Count", value = "%[sc0_http_req_cnt]" },
]
"#;

struct Stick {
    d: Daemon,
    ports: Ports,
    app: Backend,
}

async fn stick_proxy(workers: u32) -> Stick {
    let app = Backend::start("s1").await;
    let ports = Ports::new();
    let cfg = format!(
        "{}{TABLES}\n{}{}",
        global_section(
            ports.admin,
            &[
                ("workers", &workers.to_string()),
                ("admin_token", ADMIN_TOKEN_TOML),
            ]
        ),
        frontend_section("web", ports.web, "app", RULES),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    Stick { d, ports, app }
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// GET `path` from client address 127.0.0.`last` on a fresh connection.
async fn get_from(last: u8, addr: std::net::SocketAddr, path: &str) -> Resp {
    H1::connect_from(ip(last), addr).await.get(path).await
}

async fn admin(s: &Stick, method: Method, path: &str, body: &str) -> Resp {
    admin_send(s.ports.admin, method, path, body).await
}

/// The admin view of `key` in `table` (`None` on 404).
async fn entry(s: &Stick, table: &str, key: &str) -> Option<Value> {
    let r = get(s.ports.admin, &format!("/tables/{table}/{key}")).await;
    match r.status {
        StatusCode::OK => Some(r.json()),
        StatusCode::NOT_FOUND => None,
        other => panic!("GET entry: {other}: {}", r.text()),
    }
}

fn data(e: &Value, name: &str) -> u64 {
    e["data"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("entry has no {name}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_denies_above_the_threshold_per_client_and_recovers() {
    let s = stick_proxy(2).await;
    let mut c = H1::connect_from(ip(10), s.ports.web).await;
    for i in 1..=5 {
        let r = c.get("/limited/x").await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text());
        assert_eq!(r.header("x-req-count").as_deref(), Some(&*i.to_string()));
    }
    let r = c.get("/limited/x").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("retry-after").as_deref(), Some("2"));
    // Another client has its own entry.
    let r = get_from(11, s.ports.web, "/limited/x").await;
    assert_eq!(r.status, StatusCode::OK);
    // Denied requests never reached the server.
    assert_eq!(s.app.requests(), 6);
    // The sliding window forgets: two periods later the rate is 0 again.
    tokio::time::sleep(Duration::from_millis(4_100)).await;
    let r = c.get("/limited/x").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let e = entry(&s, "per_ip", "127.0.0.10").await.expect("entry");
    assert_eq!(data(&e, "http_req_cnt"), 7);
    assert_eq!(data(&e, "http_req_rate"), 1);
    assert_eq!(data(&e, "http_err_cnt"), 1, "the 429 is an error: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_lose_no_update_and_never_exceed_the_limit() {
    let s = stick_proxy(2).await;
    const CLIENTS: usize = 8;
    const EACH: usize = 10;
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let web = s.ports.web;
        tasks.push(tokio::spawn(async move {
            let mut c = H1::connect_from(ip(20), web).await;
            let mut ok = 0;
            for _ in 0..EACH {
                match c.get("/limited/c").await.status {
                    StatusCode::OK => ok += 1,
                    StatusCode::TOO_MANY_REQUESTS => {}
                    other => panic!("unexpected {other}"),
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.expect("client task");
    }
    // Each request reads the rate after adding itself: at most 5 can pass.
    assert!((1..=5).contains(&ok), "{ok} requests passed");
    let total = (CLIENTS * EACH) as u64;
    eventually("every exchange logged", Duration::from_secs(5), || async {
        entry(&s, "per_ip", "127.0.0.20")
            .await
            .is_some_and(|e| data(&e, "http_err_cnt") == total - ok as u64)
    })
    .await;
    let e = entry(&s, "per_ip", "127.0.0.20").await.expect("entry");
    assert_eq!(data(&e, "http_req_cnt"), total);
    assert_eq!(data(&e, "conn_cnt"), total);
    assert_eq!(data(&e, "conn_cur"), 0);
    assert_eq!(e["refs"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_follow_status_classes_and_bytes() {
    let s = stick_proxy(1).await;
    let mut c = H1::connect_from(ip(30), s.ports.web).await;
    for path in [
        "/status/404",
        "/status/404",
        "/status/503",
        "/status/200",
        "/status/501",
    ] {
        let r = c.get(path).await;
        assert_eq!(r.status.as_str(), &path[8..]);
    }
    let req = request(Method::POST, s.ports.web, "/echo")
        .body(full("x".repeat(1000)))
        .expect("request");
    assert_eq!(c.send(req).await.status, StatusCode::OK);
    eventually("six exchanges logged", Duration::from_secs(5), || async {
        entry(&s, "per_ip", "127.0.0.30")
            .await
            .is_some_and(|e| data(&e, "bytes_in_cnt") >= 1000)
    })
    .await;
    let e = entry(&s, "per_ip", "127.0.0.30").await.expect("entry");
    assert_eq!(data(&e, "http_req_cnt"), 6, "{e}");
    assert_eq!(data(&e, "http_err_cnt"), 2, "{e}");
    assert_eq!(data(&e, "http_err_rate"), 2, "{e}");
    // 501 is not a failure (HAProxy's definition); 503 is.
    assert_eq!(data(&e, "http_fail_cnt"), 1, "{e}");
    assert_eq!(data(&e, "http_fail_rate"), 1, "{e}");
    assert_eq!(data(&e, "bytes_in_cnt"), 1000, "{e}");
    assert!(data(&e, "bytes_out_cnt") > 0, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_entry_in_use_is_held_and_released() {
    let s = stick_proxy(1).await;
    let web = s.ports.web;
    let slow = tokio::spawn(async move { get_from(40, web, "/delay/800").await });
    eventually("request in flight", Duration::from_secs(5), || async {
        entry(&s, "per_ip", "127.0.0.40")
            .await
            .is_some_and(|e| e["refs"] == 1)
    })
    .await;
    let e = entry(&s, "per_ip", "127.0.0.40").await.expect("entry");
    assert_eq!(data(&e, "conn_cur"), 1);
    // Neither a delete nor a clear removes it while the request holds it.
    let r = admin(&s, Method::DELETE, "/tables/per_ip/127.0.0.40", "").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|m| m.contains("in use"))
    );
    let r = admin(&s, Method::DELETE, "/tables/per_ip", "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["in_use"], 1);
    assert!(entry(&s, "per_ip", "127.0.0.40").await.is_some());

    assert_eq!(slow.await.expect("slow request").status, StatusCode::OK);
    eventually("released", Duration::from_secs(5), || async {
        entry(&s, "per_ip", "127.0.0.40")
            .await
            .is_some_and(|e| e["refs"] == 0 && data(&e, "conn_cur") == 0)
    })
    .await;
    let r = admin(&s, Method::DELETE, "/tables/per_ip/127.0.0.40", "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(entry(&s, "per_ip", "127.0.0.40").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fetches_actions_and_nopurge() {
    let s = stick_proxy(1).await;
    let mut c = H1::connect_from(ip(50), s.ports.web).await;
    let r = c.get("/info").await;
    assert_eq!(
        r.text(),
        "cnt=1 gen=1 src=1 gpc0=0 gpt0=0 used=1 avl=2 t1=0 k="
    );
    c.get("/inc").await;
    let r = c.get("/inc").await;
    assert!(r.text().contains("gpc0=2"), "{}", r.text());
    let r = c.get("/gpt?v=42").await;
    assert!(r.text().contains("gpt0=42"), "{}", r.text());
    let r = c.get("/clr").await;
    assert!(
        r.text().contains("cnt=5 ") && r.text().contains("gpc0=0"),
        "{}",
        r.text()
    );

    // by_key holds 2 keys and refuses more (nopurge): the request goes on untracked.
    for key in ["alpha", "beta"] {
        let req = request(Method::GET, s.ports.web, "/info")
            .header("x-api-key", key)
            .body(empty())
            .expect("request");
        let r = c.send(req).await;
        assert!(r.text().ends_with("t1=1 k=1"), "{key}: {}", r.text());
    }
    let req = request(Method::GET, s.ports.web, "/info")
        .header("x-api-key", "gamma")
        .body(empty())
        .expect("request");
    let r = c.send(req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().ends_with("avl=0 t1=0 k="), "{}", r.text());
    let t = get(s.ports.admin, "/tables/by_key").await.json();
    assert_eq!(t["used"], 2);
    assert_eq!(t["refusals"], 1);
    let keys: Vec<&str> = t["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["key"].as_str())
        .collect();
    assert_eq!(keys, ["alpha", "beta"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_api_round_trips() {
    let s = stick_proxy(1).await;
    let list = get(s.ports.admin, "/tables").await.json();
    let names: Vec<&str> = list["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["per_ip", "by_key"]);
    assert_eq!(list["tables"][0]["type"], "ip");
    assert_eq!(list["tables"][0]["size"], 1000);
    assert_eq!(list["tables"][0]["expire_ms"], 30_000);

    // Set data on a new key, read it back, filter on it.
    let r = admin(
        &s,
        Method::POST,
        "/tables/per_ip/10.9.9.9",
        r#"{"gpc0": 5, "gpt0": 2}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(data(&r.json(), "gpc0"), 5);
    let r = admin(
        &s,
        Method::POST,
        "/tables/per_ip/10.9.9.8",
        r#"{"data": {"gpc0": 1}}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let e = entry(&s, "per_ip", "10.9.9.9").await.expect("entry");
    assert_eq!(data(&e, "gpt0"), 2);
    assert!(
        e["expire_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 25_000 && ms <= 30_000),
        "{e}"
    );

    let t = get(s.ports.admin, "/tables/per_ip?data.gpc0=gt:4")
        .await
        .json();
    let keys: Vec<&str> = t["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["key"].as_str())
        .collect();
    assert_eq!(keys, ["10.9.9.9"]);
    let t = get(s.ports.admin, "/tables/per_ip?limit=1").await.json();
    assert_eq!(t["entries"].as_array().map(Vec::len), Some(1));
    assert_eq!(t["used"], 2);

    let text = get(
        s.ports.admin,
        "/tables/per_ip?format=haproxy&data.gpc0=ge:5",
    )
    .await;
    assert_eq!(text.status, StatusCode::OK);
    let body = text.text();
    assert!(
        body.starts_with("# table: per_ip, type: ip, size:1000, used:2\n"),
        "{body}"
    );
    assert!(body.contains("key=10.9.9.9 use=0 exp="), "{body}");
    assert!(
        body.contains(" gpc0=5") && body.contains(" http_req_rate(2000)=0"),
        "{body}"
    );
    assert!(!body.contains("10.9.9.8"), "{body}");

    // Bad input: 4xx with a JSON error.
    for (method, path, body, status, needle) in [
        (
            Method::POST,
            "/tables/per_ip/10.9.9.9",
            r#"{"gpc9": 1}"#,
            StatusCode::BAD_REQUEST,
            "does not store gpc9",
        ),
        (
            Method::POST,
            "/tables/per_ip/10.9.9.9",
            r#"{"bogus": 1}"#,
            StatusCode::BAD_REQUEST,
            "unknown data type",
        ),
        (
            Method::POST,
            "/tables/per_ip/10.9.9.9",
            r#"{"gpc0": -1}"#,
            StatusCode::BAD_REQUEST,
            "unsigned",
        ),
        (
            Method::POST,
            "/tables/per_ip/10.9.9.9",
            r#"{"gpc0": "x"}"#,
            StatusCode::BAD_REQUEST,
            "must be an integer",
        ),
        (
            Method::POST,
            "/tables/per_ip/10.9.9.9",
            "not json",
            StatusCode::BAD_REQUEST,
            "JSON object",
        ),
        (
            Method::POST,
            "/tables/per_ip/nope",
            r#"{"gpc0": 1}"#,
            StatusCode::BAD_REQUEST,
            "not an IPv4 address",
        ),
        (
            Method::POST,
            "/tables/nope/1.2.3.4",
            r#"{"gpc0": 1}"#,
            StatusCode::NOT_FOUND,
            "declared tables: per_ip, by_key",
        ),
        (
            Method::GET,
            "/tables/per_ip?data.gpc0=zz:1",
            "",
            StatusCode::BAD_REQUEST,
            "unknown operator",
        ),
        (
            Method::GET,
            "/tables/per_ip?data.gpc0=gt:x",
            "",
            StatusCode::BAD_REQUEST,
            "not a non-negative integer",
        ),
        (
            Method::GET,
            "/tables/per_ip?limit=-1",
            "",
            StatusCode::BAD_REQUEST,
            "limit",
        ),
        (
            Method::GET,
            "/tables/per_ip?format=xml",
            "",
            StatusCode::BAD_REQUEST,
            "unknown format",
        ),
        (
            Method::GET,
            "/tables/per_ip?color=red",
            "",
            StatusCode::BAD_REQUEST,
            "unknown query parameter",
        ),
        (
            Method::GET,
            "/tables/per_ip/1.2.3.4",
            "",
            StatusCode::NOT_FOUND,
            "no entry",
        ),
        (
            Method::DELETE,
            "/tables/per_ip/1.2.3.4",
            "",
            StatusCode::NOT_FOUND,
            "no entry",
        ),
        (
            Method::PUT,
            "/tables",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            "not allowed",
        ),
        (
            Method::POST,
            "/tables/per_ip",
            "{}",
            StatusCode::METHOD_NOT_ALLOWED,
            "not allowed",
        ),
    ] {
        let r = admin(&s, method.clone(), path, body).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(
            msg.contains(needle),
            "{method} {path}: {msg:?} lacks {needle:?}"
        );
    }

    // Clear with a filter, then one key, then everything.
    let r = admin(&s, Method::DELETE, "/tables/per_ip?data.gpc0=lt:2", "").await;
    assert_eq!(r.json()["removed"], 1, "{}", r.text());
    assert!(entry(&s, "per_ip", "10.9.9.8").await.is_none());
    let r = admin(&s, Method::DELETE, "/tables/per_ip/10.9.9.9", "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(entry(&s, "per_ip", "10.9.9.9").await.is_none());

    // Metrics per table.
    let m = get(s.ports.admin, "/metrics").await.text();
    for line in [
        "portcullis_stick_table_used{table=\"per_ip\"} 0",
        "portcullis_stick_table_size{table=\"by_key\"} 2",
        "portcullis_stick_table_inserts_total{table=\"per_ip\"} 2",
        "portcullis_stick_table_evictions_total{table=\"per_ip\"} 0",
        "portcullis_stick_table_expirations_total{table=\"per_ip\"} 0",
        "portcullis_stick_table_refusals_total{table=\"by_key\"} 0",
    ] {
        assert!(
            m.lines().any(|l| l == line),
            "missing {line:?} in metrics:\n{m}"
        );
    }
    drop(s.d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entries_disappear() {
    let app = Backend::start("s1").await;
    let ports = Ports::new();
    let cfg = format!(
        "{}[[stick_table]]\nname = \"short\"\ntype = \"ip\"\nsize = 10\nexpire = \"1s\"\nstore = [\"http_req_cnt\"]\n\n{}{}",
        global_section(ports.admin, &[]),
        frontend_section(
            "web",
            ports.web,
            "app",
            "http_request = [{ track_sc0 = \"src\" }]\n"
        ),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    assert_eq!(get(ports.web, "/").await.status, StatusCode::OK);
    let t = get(ports.admin, "/tables/short").await.json();
    assert_eq!(t["used"], 1, "{t}");
    eventually("entry expired", Duration::from_secs(5), || async {
        get(ports.admin, "/tables/short").await.json()["used"] == 0
    })
    .await;
    let t = get(ports.admin, "/tables").await.json();
    assert_eq!(t["tables"][0]["expirations"], 1, "{t}");
}

#[test]
fn shipped_ratelimit_config_passes_check() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/ratelimit.toml");
    // Check the shipped file on free ports, so a busy 8080 cannot fail (or skip) the test.
    let shipped = std::fs::read_to_string(path).expect("read config");
    assert!(shipped.contains("127.0.0.1:8080") && shipped.contains("127.0.0.1:9901"));
    let text = shipped
        .replace("127.0.0.1:8080", &free_addr().to_string())
        .replace("127.0.0.1:9901", &free_addr().to_string());
    let dir = TempDir::new("stick-check");
    let p = dir.write("ratelimit.toml", &text);
    let out = run_bin(
        &["check", "-c", p.to_str().expect("utf-8")],
        Duration::from_secs(10),
    );
    assert!(
        out.status.expect("check exited").success(),
        "check failed: {}{}",
        out.stdout,
        out.stderr
    );
    // A misspelled fetch in it is refused with its location.
    let bad = text.replacen("sc0_http_req_rate gt 100", "sc0_http_req_ratee gt 100", 1);
    let p = dir.write("bad.toml", &bad);
    let out = run_bin(
        &["check", "-c", p.to_str().expect("utf-8")],
        Duration::from_secs(10),
    );
    assert!(!out.status.expect("exited").success());
    assert!(
        out.stderr
            .contains("unknown stick-counter data \"http_req_ratee\""),
        "{}",
        out.stderr
    );
    let line = bad
        .lines()
        .position(|l| l.contains("ratee"))
        .expect("bad line")
        + 1;
    assert!(
        out.stderr.contains(&format!("bad.toml:{line}:")),
        "{}",
        out.stderr
    );
}
