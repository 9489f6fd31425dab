//! Lua's `Proxy` and `Server` objects proven against HAProxy 2.6: the same
//! script (`plugins/lua/servers.lua`) runs under both, changes server state
//! (`set_weight`, `set_drain`, `set_maint`, `set_ready`, `check_force_*`,
//! `check_disable`) and reports what `get_stats()`, `get_weight()`,
//! `is_draining()`, `get_addr()` and the proxy's `get_stats()` say; every
//! report must match line for line. Between the steps, requests through the
//! backend show that the balancer follows what the script set.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn plugins_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/lua")
}

struct Servers {
    s1: SocketAddr,
    s2: SocketAddr,
    s3: SocketAddr,
    live: SocketAddr,
    /// Nothing listens here: checks fail with a refused connection.
    dead: SocketAddr,
}

fn haproxy_config(web: SocketAddr, s: &Servers) -> String {
    format!(
        r#"global
  nbthread 1
  lua-load {script}

defaults
  mode http
  timeout connect 2s
  timeout client 10s
  timeout server 10s
  timeout check 500ms

frontend web
  bind {web}
  http-request use-service lua.servers if {{ path_beg /servers }}
  default_backend pool

backend pool
  balance roundrobin
  server s1 {s1} weight 10
  server s2 {s2} weight 20
  server s3 {s3} weight 30

backend hashed
  balance source
  server h1 {s1} weight 10

backend checked
  balance roundrobin
  option httpchk GET /health
  server live {live} check inter 100ms rise 2 fall 2
  server dead {dead} check inter 100ms rise 2 fall 2
"#,
        script = plugins_dir().join("servers.lua").display(),
        s1 = s.s1,
        s2 = s.s2,
        s3 = s.s3,
        live = s.live,
        dead = s.dead,
    )
}

fn portcullis_config(ports: &Ports, s: &Servers) -> String {
    let check = "health_check = { path = \"/health\", interval = \"100ms\", timeout = \"500ms\", rise = 2, fall = 2 }\n";
    format!(
        "{}[[plugin]]\nname = \"servers\"\nlua = \"{}\"\non_error = \"fail_closed\"\n\n{}{}{}{}",
        global_section(ports.admin, &[]),
        plugins_dir().join("servers.lua").display(),
        frontend_section(
            "web",
            ports.web,
            "pool",
            "http_request = [ { use_service = \"lua.servers\", if = \"path_beg /servers\" } ]\n"
        ),
        backend_section(
            "pool",
            "roundrobin",
            &[("s1", s.s1, 10), ("s2", s.s2, 20), ("s3", s.s3, 30)],
            ""
        ),
        backend_section("hashed", "source", &[("h1", s.s1, 10)], ""),
        backend_section(
            "checked",
            "roundrobin",
            &[("live", s.live, 1), ("dead", s.dead, 1)],
            check
        ),
    )
}

/// The steps: each is a `/servers` query (an operation, then the report).
const STEPS: &[&str] = &[
    "",
    "op=set_weight&srv=s1&arg=50%25",
    "op=set_weight&srv=s1&arg=300",
    "op=set_weight&srv=s1&arg=abc",
    "op=set_weight&srv=s1&arg=12x",
    "op=set_weight&srv=s1&arg=-5%25",
    "op=set_weight&srv=s1&arg=",
    "op=set_weight&srv=s1&arg=256",
    "op=set_weight&srv=s1&arg=10",
    "op=set_weight&px=hashed&srv=h1&arg=5",
    "op=set_weight&px=hashed&srv=h1&arg=0%25",
    "op=set_weight&px=hashed&srv=h1&arg=100%25",
    "op=set_drain&srv=s2",
    "op=set_maint&srv=s1",
    // (requests through the backend now reach s3 only: checked below)
    "op=set_ready&srv=s1",
    "op=set_ready&srv=s2",
    "op=set_maint&srv=s2",
    "op=set_drain&srv=s2",
    "op=set_ready&srv=s2",
    "op=check_force_nolb&srv=s3",
    "op=check_force_down&srv=s3",
    "op=check_force_up&srv=s3",
    "op=set_weight&srv=s1&arg=0",
    "op=set_weight&srv=s1&arg=10",
    "op=check_disable&px=checked&srv=live",
    "op=check_enable&px=checked&srv=live",
    "op=shut_sess&srv=s1",
];

async fn report(addr: SocketAddr, query: &str) -> (u16, String) {
    let path = if query.is_empty() {
        "/servers".to_string()
    } else {
        format!("/servers?{query}")
    };
    let r = get(addr, &path).await;
    (r.status.as_u16(), r.text())
}

/// Which server answered `n` requests through the `pool` backend.
async fn served_by(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..n {
        let r = get(addr, "/pool/x").await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.text());
        names.push(r.echo().server().to_string());
    }
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_objects_behave_as_under_haproxy() {
    haproxy_26();
    let (b1, b2, b3, live) = (
        Backend::start("s1").await,
        Backend::start("s2").await,
        Backend::start("s3").await,
        Backend::start("live").await,
    );
    let servers = Servers {
        s1: b1.addr,
        s2: b2.addr,
        s3: b3.addr,
        live: live.addr,
        dead: free_addr(),
    };
    let ha_web = free_addr();
    let ha = HaProxy::start(&haproxy_config(ha_web, &servers), &plugins_dir(), ha_web).await;
    let ports = Ports::new();
    let pc = Daemon::start(
        &portcullis_config(&ports, &servers),
        &[ports.web, ports.admin],
    )
    .await;
    // Let both run their checks: `live` rises to UP, `dead` falls to DOWN.
    tokio::time::sleep(Duration::from_millis(800)).await;

    let mut failures = Vec::new();
    for step in STEPS {
        let h = report(ha_web, step).await;
        let p = report(ports.web, step).await;
        eprintln!("== {step}\n{}", h.1);
        assert_eq!(
            h.0,
            200,
            "HAProxy failed on {step:?}: {}\n{}",
            h.1,
            ha.log()
        );
        if h != p {
            failures.push(format!(
                "step {step:?}\n--- haproxy ({})\n{}--- portcullis ({})\n{}",
                h.0, h.1, p.0, p.1
            ));
        }
        if *step == "op=set_maint&srv=s1" {
            // s1 in maintenance, s2 draining: only s3 takes requests.
            assert_eq!(served_by(ha_web, 6).await, ["s3"], "haproxy balancing");
            assert_eq!(
                served_by(ports.web, 6).await,
                ["s3"],
                "portcullis balancing"
            );
        }
        if *step == "op=set_ready&srv=s2" {
            assert_eq!(served_by(ports.web, 12).await, ["s1", "s2", "s3"]);
        }
        if *step == "op=check_force_down&srv=s3" {
            assert_eq!(served_by(ports.web, 6).await, ["s1", "s2"]);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} reports differ:\n{}\nportcullis log:\n{}",
        failures.len(),
        STEPS.len(),
        failures.join("\n"),
        pc.stderr()
    );
}
