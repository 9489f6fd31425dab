//! Lua compatibility against HAProxy on scripts we did not write: the public
//! HAProxy Lua scripts in `<repo>/../shared/fixtures/haproxy-lua/` (copied
//! unmodified from their repositories; see that directory's README.md) run
//! under HAProxy 2.6 and under the portcullis binary, with equivalent configs,
//! in front of the same in-test backends. Every request goes to both and the
//! status, headers and body must match, up to the deliberate differences of
//! docs/LUA.md (see [`normalize`]).
//!
//! Fixtures compared: cookie-version-routing, crowdsec-remediation-page,
//! ingress-error-pages, sliderule-ilb-orchestrator, socks5-connect-inline-auth
//! (its HTTP part, `auth-inline.lua`), geoip2-mmdb-converter (with a .mmdb
//! file this test writes) and selfie-prometheus-exporter (reading a stats
//! socket this test serves, the same answer for both). Not compared, and why:
//! - socks5-connect-inline-auth's `socks5.lua` and haproxy-mailers'
//!   `healthcheckmail.lua` run on TCP frontends: `tests/e2e_tcp.rs` compares
//!   them with HAProxy. Here `socks5.lua` and `http-connect.lua` are loaded
//!   beside the HTTP part, so their loading is compared too.
//! - haproxy-h2-tracer is a Lua filter on a TCP frontend (`tcp_payload`):
//!   `tests/e2e_tcp_filter.rs` runs it under both in front of an h2c
//!   server and compares the traffic and the frames it prints.
//! - haproxy-mailers' `mailers.lua`, events-backend-down-webhook,
//!   couchbase-kv-client need HAProxy 2.7/2.8 (`core.queue`, `event_sub`,
//!   lua-load arguments).
//!
//! The fixture files are used in place, never copied: what a script needs
//! beside it (map files, the .mmdb file, a log directory) is written to a
//! temp dir. HAProxy and the fixture directory must exist: without them this
//! test fails; it never skips.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use http::{Method, Request};

/// Where the fixtures live: `/work/shared/...` next to the repository.
fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/haproxy-lua")
}

/// A fixture's directory; fails the test with a clear message when it is missing.
fn fixture(name: &str) -> PathBuf {
    let d = fixtures_root().join(name);
    assert!(
        d.is_dir(),
        "fixture directory {} is missing: this test needs the shared HAProxy Lua fixtures \
         (see /work/shared/fixtures/haproxy-lua/README.md)",
        d.display()
    );
    d
}

/// A fixture file's absolute path (checked to exist).
fn fx(name: &str, file: &str) -> String {
    let p = fixture(name).join(file);
    assert!(p.is_file(), "fixture file {} is missing", p.display());
    p.display().to_string()
}

// ---------------------------------------------------------------------------
// What both proxies load besides the fixtures
// ---------------------------------------------------------------------------

/// The `maps/` files cookie-version-routing expects (not in its repository).
const CODE_VSN_PATH_MAP: &str = "\
# path_version -> backend
user_1.0.0 user_v1
user_2.0.0 user_v2
biz_1.0.0  biz_v1
biz_2.0.0  biz_v2
";
const IP_SVC_MAP: &str = "127.0.0.1 local_svc\n";

/// Values both processes get in their environment (HAProxy's `setenv`).
fn env_vars(stats_sock: &Path) -> Vec<(String, String)> {
    let cs = fixture("crowdsec-remediation-page");
    vec![
        (
            "HAPROXY_STATS_SOCKET_PATH".into(),
            stats_sock.display().to_string(),
        ),
        ("HAPROXY_STATS_REFRESH_INTERVAL".into(), "1".into()),
        (
            "CROWDSEC_BAN_TEMPLATE_PATH".into(),
            cs.join("templates/ban.html").display().to_string(),
        ),
        (
            "CROWDSEC_CAPTCHA_TEMPLATE_PATH".into(),
            cs.join("templates/captcha.html").display().to_string(),
        ),
        ("CLUSTER".into(), "sliderule-test".into()),
    ]
}

/// A shim the test writes: `haproxy_mmdb.lua` hard-codes
/// `/var/lib/GeoIP/*.mmdb`; the shim points those opens at the test's files
/// while the unmodified script loads, then restores `io.open`.
fn geoip_shim(mmdb_dir: &Path) -> String {
    let dir = fixture("geoip2-mmdb-converter");
    format!(
        r#"-- Written by tests/e2e_lua_fixtures.rs; loads the fixture unmodified.
local real_open = io.open
io.open = function(path, ...)
  local name = type(path) == "string" and path:match("^/var/lib/GeoIP/(.+)$")
  if name then path = "{mmdb}/" .. name end
  return real_open(path, ...)
end
package.path = "{dir}/?.lua;" .. package.path
dofile("{dir}/haproxy_mmdb.lua")
io.open = real_open
"#,
        mmdb = mmdb_dir.display(),
        dir = dir.display(),
    )
}

/// A shim the test writes: `metrics.lua` does
/// `dofile("/etc/haproxy/system/prometheus.lua")`; the shim points that one
/// path at the fixture's file while the unmodified script loads.
fn selfie_shim() -> String {
    let dir = fixture("selfie-prometheus-exporter");
    format!(
        r#"-- Written by tests/e2e_lua_fixtures.rs; loads the fixture unmodified.
local real_dofile = dofile
dofile = function(path, ...)
  if path == "/etc/haproxy/system/prometheus.lua" then path = "{dir}/prometheus.lua" end
  return real_dofile(path, ...)
end
real_dofile("{dir}/metrics.lua")
dofile = real_dofile
"#,
        dir = dir.display(),
    )
}

/// What the test's stats socket answers to `show stat typed`: a frontend, a
/// backend and two servers (one up, one down), in HAProxy's typed format.
const SHOW_STAT_TYPED: &str = "\
F.2.0.0.pxname.1:KNSN:str:web
F.2.0.1.svname.1:KNSN:str:FRONTEND
F.2.0.4.scur.1:MGP:u32:3
F.2.0.7.stot.1:MCP:u64:1200
F.2.0.8.bin.1:MCP:u64:52000
F.2.0.9.bout.1:MCP:u64:990000
F.2.0.17.status.1:SGP:str:OPEN
F.2.0.40.hrsp_2xx.1:MCP:u64:1100
F.2.0.42.hrsp_4xx.1:MCP:u64:90
F.2.0.43.hrsp_5xx.1:MCP:u64:10
B.3.0.0.pxname.1:KNSN:str:app
B.3.0.1.svname.1:KNSN:str:BACKEND
B.3.0.4.scur.1:MGP:u32:1
B.3.0.17.status.1:SGP:str:UP
B.3.0.19.act.1:MGP:u32:1
S.3.1.0.pxname.1:KNSN:str:app
S.3.1.1.svname.1:KNSN:str:s1
S.3.1.4.scur.1:MGP:u32:1
S.3.1.17.status.1:SGP:str:UP
S.3.1.18.weight.1:MAP:u32:1
S.3.1.73.addr.1:CGS:str:10.0.0.1
S.3.2.0.pxname.1:KNSN:str:app
S.3.2.1.svname.1:KNSN:str:s2
S.3.2.4.scur.1:MGP:u32:0
S.3.2.17.status.1:SGP:str:DOWN 1/2
S.3.2.18.weight.1:MAP:u32:1
S.3.2.73.addr.1:CGS:str:10.0.0.2
";

/// Serves [`SHOW_STAT_TYPED`] on a Unix socket, one answer per connection
/// (then closes, as HAProxy's socket does without `prompt`); counts them.
async fn serve_stats(path: &Path) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::UnixListener::bind(path).expect("bind the stats socket");
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = std::sync::Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let c = std::sync::Arc::clone(&c);
            tokio::spawn(async move {
                let mut cmd = Vec::new();
                let mut buf = [0u8; 256];
                while !cmd.contains(&b'\n') {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => cmd.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = if cmd.starts_with(b"show stat typed") {
                    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    SHOW_STAT_TYPED
                } else {
                    "Unknown command.\n"
                };
                let _ = sock.write_all(answer.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    count
}

/// A working directory for one proxy: the map files (HAProxy reads them
/// relative to its working directory, portcullis relative to the script:
/// docs/LUA.md difference 15, so the script is linked in beside them), the
/// log directory `log_requests.lua` appends to, the .mmdb files and the shim.
struct Workdir {
    dir: TempDir,
}

impl Workdir {
    fn new(tag: &str) -> Workdir {
        let dir = TempDir::new(tag);
        std::fs::create_dir_all(dir.path().join("maps")).expect("maps dir");
        std::fs::create_dir_all(dir.path().join("logs")).expect("logs dir");
        std::fs::create_dir_all(dir.path().join("GeoIP")).expect("GeoIP dir");
        dir.write("maps/code_vsn_path.map", CODE_VSN_PATH_MAP);
        dir.write("maps/ip_svc.map", IP_SVC_MAP);
        for s in ["code_vsn_path.lua", "log_requests.lua"] {
            std::os::unix::fs::symlink(fx("cookie-version-routing", s), dir.path().join(s))
                .expect("symlink script");
        }
        std::fs::write(
            dir.path().join("GeoIP/GeoLite2-Country.mmdb"),
            mmdb::country(),
        )
        .expect("write country mmdb");
        std::fs::write(dir.path().join("GeoIP/GeoLite2-ASN.mmdb"), mmdb::asn())
            .expect("write asn mmdb");
        dir.write("geoip_shim.lua", &geoip_shim(&dir.path().join("GeoIP")));
        dir.write("selfie_shim.lua", &selfie_shim());
        Workdir { dir }
    }

    fn path(&self, f: &str) -> String {
        self.dir.path().join(f).display().to_string()
    }

    fn demo_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/demo_logs.txt")).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------
// A minimal MaxMind DB writer (https://maxmind.github.io/MaxMind-DB/)
// ---------------------------------------------------------------------------

mod mmdb {
    /// A value of the data section.
    pub enum V {
        S(&'static str),
        U32(u32),
        Map(Vec<(&'static str, V)>),
    }

    /// The control byte(s): type (extended past 7), then the size (29..284 in one extra byte).
    fn ctrl(out: &mut Vec<u8>, ty: u8, size: usize) {
        assert!(size < 285, "small values only");
        let small = if size < 29 { size as u8 } else { 29 };
        if ty <= 7 {
            out.push((ty << 5) | small);
        } else {
            out.push(small);
            out.push(ty - 7);
        }
        if size >= 29 {
            out.push((size - 29) as u8);
        }
    }

    fn encode(v: &V, out: &mut Vec<u8>) {
        match v {
            V::S(s) => {
                ctrl(out, 2, s.len());
                out.extend_from_slice(s.as_bytes());
            }
            V::U32(n) => {
                let b = n.to_be_bytes();
                let skip = b.iter().take_while(|x| **x == 0).count();
                ctrl(out, 6, 4 - skip);
                out.extend_from_slice(&b[skip..]);
            }
            V::Map(kv) => {
                ctrl(out, 7, kv.len());
                for (k, v) in kv {
                    encode(&V::S(k), out);
                    encode(v, out);
                }
            }
        }
    }

    #[derive(Clone, Copy)]
    enum Rec {
        Empty,
        Node(usize),
        Data(usize),
    }

    /// An IPv4 database (record size 24) holding `nets` (disjoint `a.b.c.d/len`).
    fn build(db_type: &'static str, nets: &[([u8; 4], u32, V)]) -> Vec<u8> {
        let mut nodes: Vec<[Rec; 2]> = vec![[Rec::Empty; 2]];
        let mut data = Vec::new();
        for (ip, len, v) in nets {
            let off = data.len();
            encode(v, &mut data);
            let bits = u32::from_be_bytes(*ip);
            let mut node = 0;
            for i in 0..*len {
                let bit = ((bits >> (31 - i)) & 1) as usize;
                if i + 1 == *len {
                    nodes[node][bit] = Rec::Data(off);
                } else {
                    node = match nodes[node][bit] {
                        Rec::Node(n) => n,
                        _ => {
                            nodes.push([Rec::Empty; 2]);
                            let n = nodes.len() - 1;
                            nodes[node][bit] = Rec::Node(n);
                            n
                        }
                    };
                }
            }
        }
        let count = nodes.len();
        let mut out = Vec::new();
        for n in &nodes {
            for r in n {
                let v = match *r {
                    Rec::Empty => count,
                    Rec::Node(i) => i,
                    Rec::Data(off) => count + 16 + off,
                };
                out.extend_from_slice(&(v as u32).to_be_bytes()[1..]);
            }
        }
        out.extend_from_slice(&[0u8; 16]);
        out.extend_from_slice(&data);
        out.extend_from_slice(b"\xab\xcd\xefMaxMind.com");
        encode(
            &V::Map(vec![
                ("binary_format_major_version", V::U32(2)),
                ("binary_format_minor_version", V::U32(0)),
                ("database_type", V::S(db_type)),
                ("ip_version", V::U32(4)),
                ("node_count", V::U32(count as u32)),
                ("record_size", V::U32(24)),
            ]),
            &mut out,
        );
        out
    }

    fn country_rec(iso: &'static str, cont: &'static str) -> V {
        V::Map(vec![
            ("country", V::Map(vec![("iso_code", V::S(iso))])),
            ("continent", V::Map(vec![("code", V::S(cont))])),
        ])
    }

    /// `GeoLite2-Country.mmdb`.
    pub fn country() -> Vec<u8> {
        build(
            "GeoLite2-Country",
            &[
                ([81, 2, 69, 0], 24, country_rec("GB", "EU")),
                ([127, 0, 0, 0], 8, country_rec("ZZ", "XX")),
                ([2, 125, 160, 0], 19, country_rec("CN", "AS")),
            ],
        )
    }

    /// `GeoLite2-ASN.mmdb`.
    pub fn asn() -> Vec<u8> {
        let rec = |n, org| {
            V::Map(vec![
                ("autonomous_system_number", V::U32(n)),
                ("autonomous_system_organization", V::S(org)),
            ])
        };
        build(
            "GeoLite2-ASN",
            &[
                ([1, 128, 0, 0], 11, rec(1221, "Telstra Pty Ltd")),
                ([127, 0, 0, 0], 8, rec(64512, "Loopback")),
            ],
        )
    }
}

// ---------------------------------------------------------------------------
// The two proxies
// ---------------------------------------------------------------------------

/// The listening addresses of one proxy, one per fixture frontend.
#[derive(Clone, Copy)]
struct Fronts {
    cookie_path: SocketAddr,
    cookie_vsn: SocketAddr,
    crowdsec: SocketAddr,
    ingress: SocketAddr,
    discovery: SocketAddr,
    cluster: SocketAddr,
    auth: SocketAddr,
    geoip: SocketAddr,
    metrics: SocketAddr,
}

impl Fronts {
    fn new() -> Fronts {
        let [a, b, c, d, e, f, g, h, i] = free_addrs::<9>();
        Fronts {
            cookie_path: a,
            cookie_vsn: b,
            crowdsec: c,
            ingress: d,
            discovery: e,
            cluster: f,
            auth: g,
            geoip: h,
            metrics: i,
        }
    }

    fn all(&self) -> [SocketAddr; 9] {
        [
            self.cookie_path,
            self.cookie_vsn,
            self.crowdsec,
            self.ingress,
            self.discovery,
            self.cluster,
            self.auth,
            self.geoip,
            self.metrics,
        ]
    }

    fn get(&self, f: Front) -> SocketAddr {
        match f {
            Front::CookiePath => self.cookie_path,
            Front::CookieVsn => self.cookie_vsn,
            Front::Crowdsec => self.crowdsec,
            Front::Ingress => self.ingress,
            Front::Discovery => self.discovery,
            Front::Cluster => self.cluster,
            Front::Auth => self.auth,
            Front::Geoip => self.geoip,
            Front::Metrics => self.metrics,
        }
    }
}

/// The in-test servers: `app` echoes; `v1`..`v3` stand for code versions.
struct Servers {
    app: Backend,
    v1: Backend,
    v2: Backend,
    v3: Backend,
    /// The stats socket both proxies' selfie-prometheus-exporter reads.
    stats_sock: PathBuf,
}

async fn start_haproxy(f: &Fronts, s: &Servers, wd: &Workdir) -> HaProxy {
    let cv = |x| fx("cookie-version-routing", x);
    let cfg = format!(
        r#"global
  nbthread 1
  lua-prepend-path {sliderule}/?.lua
  lua-load {code_vsn_path}
  lua-load {servers_path}
  lua-load {log_requests}
  lua-load {code_vsn}
  lua-load {crowdsec}
  lua-load {ingress}
  lua-load {orchestrator}
  lua-load {analyzer}
  lua-load {auth}
  lua-load {http_connect}
  lua-load {geoip}
  lua-load {selfie}

defaults
  mode http
  timeout connect 2s
  timeout client 10s
  timeout server 10s

# cookie-version-routing: example-haproxy.cfg
frontend cookie_path
  bind {a_cookie_path}
  http-request set-var(req.backend_name) lua.code_vsn_path
  http-request set-var(txn.from_svc) lua.log_from
  use_backend %[var(req.backend_name)]

backend default_backend
  http-request lua.log_to
  http-request use-service lua.default_server
  server srv1 {app}

backend user_v1
  http-request lua.log_to
  http-request use-service lua.user_v1_server

backend user_v2
  http-request lua.log_to
  http-request use-service lua.user_v2_server

backend biz_v1
  http-request lua.log_to
  http-request use-service lua.biz_v1_server

backend biz_v2
  http-request lua.log_to
  http-request use-service lua.biz_v2_server

# cookie-version-routing: example-haproxy-code_vsn.cfg
frontend cookie_vsn
  bind {a_cookie_vsn}
  use_backend %[lua.code_vsn]

backend version1
  server s {v1}

backend version2
  server s {v2}

backend version3
  server s {v3}

# crowdsec-remediation-page: the SPOE agent's variables come from request headers
frontend crowdsec
  bind {a_crowdsec}
  http-request set-var(txn.crowdsec.remediation) req.hdr(x-remediation) if {{ req.hdr(x-remediation) -m found }}
  http-request set-var(txn.crowdsec.captcha_site_key) req.hdr(x-site-key) if {{ req.hdr(x-site-key) -m found }}
  http-request set-var(txn.crowdsec.contact_us_url) req.hdr(x-contact) if {{ req.hdr(x-contact) -m found }}
  http-request set-header X-Crowdsec-Remediation %[var(txn.crowdsec.remediation)] if {{ var(txn.crowdsec.remediation) -m found }}
  http-request lua.crowdsec_handle if {{ var(txn.crowdsec.remediation) -m str "captcha" }}
  http-request lua.crowdsec_handle if {{ var(txn.crowdsec.remediation) -m str "ban" }}
  http-request lua.crowdsec_handle if {{ path_beg /always }}
  default_backend app

# ingress-error-pages
frontend ingress
  bind {a_ingress}
  http-request set-var(txn.cors_max_age) str(86400) if {{ method OPTIONS }} {{ path_beg /cors }}
  http-request use-service lua.send-cors-preflight if {{ method OPTIONS }}
  http-request use-service lua.send-prometheus-root if {{ path / }}
  http-request use-service lua.send-413 if {{ path_beg /413 }}
  http-request use-service lua.send-421 if {{ path_beg /421 }}
  http-request use-service lua.send-495 if {{ path_beg /495 }}
  http-request use-service lua.send-496 if {{ path_beg /496 }}
  http-request use-service lua.send-404

# sliderule-ilb-orchestrator: example-haproxy.cfg's discovery frontend
frontend discovery
  bind {a_discovery}
  http-request use-service lua.orchestrator_register if {{ path /discovery/register }}
  http-request use-service lua.orchestrator_selflock if {{ path /discovery/selflock }}
  http-request use-service lua.orchestrator_lock if {{ path /discovery/lock }}
  http-request use-service lua.orchestrator_unlock if {{ path /discovery/unlock }}
  http-request use-service lua.orchestrator_status if {{ path /discovery/status }}
  http-request use-service lua.orchestrator_whoami if {{ path /discovery/whoami }}
  http-request use-service lua.orchestrator_prometheus if {{ path /discovery/prometheus/orchestrator }}
  http-request use-service lua.orchestrator_health if {{ path /discovery/health }}
  http-request use-service lua.analyzer_prometheus if {{ path /discovery/prometheus/analyzer }}
  default_backend app

# its cluster backend, without JWT checks and set-dst: the chosen node is echoed
frontend cluster
  bind {a_cluster}
  http-request set-var(txn.sub) req.hdr(x-sub) if {{ req.hdr(x-sub) -m found }}
  http-request set-var(txn.requested_service) req.hdr(x-sliderule-service)
  http-request set-var(txn.service) var(txn.requested_service) if {{ var(txn.requested_service) -m found }}
  http-request set-var(txn.service) str(sliderule-test) unless {{ var(txn.requested_service) -m found }}
  http-request lua.analyzer_ratelimit
  http-request return status 429 content-type "text/plain" string "rate limited" if {{ var(txn.block_this_ip) -m bool }}
  http-request set-var(txn.request_path) path
  http-response lua.analyzer_metric
  http-request set-var(txn.server_address) lua.next_node
  http-request set-header x-node %[var(txn.server_address)]
  http-request set-header x-node-ip %[var(txn.server_address),lua.extract_ip]
  http-request set-header x-node-port %[var(txn.server_address),lua.extract_port]
  default_backend app

# socks5-connect-inline-auth: the auth listener of example-haproxy.cfg
frontend auth
  bind {a_auth}
  http-request set-var(req.password) str(moo) unless {{ path_beg /nopass }}
  http-request set-var(req.cookie_name) str(authsession)
  http-request wait-for-body time 1s at-least 1k if METH_POST
  http-request lua.auth
  http-request return status 200 content-type "text/plain" string "success\n"

# geoip2-mmdb-converter: example-haproxy.cfg, the address from a header
frontend geoip
  bind {a_geoip}
  http-request set-header X-Country %[req.hdr(x-ip),lua.mmdb_lookup("country","country","iso_code")]
  http-request set-header X-Continent %[req.hdr(x-ip),lua.mmdb_lookup("country","continent","code")]
  http-request set-header X-ASN %[req.hdr(x-ip),lua.mmdb_lookup("asn","autonomous_system_number")]
  http-request set-header X-ASN-Org %[req.hdr(x-ip),lua.mmdb_lookup("asn","autonomous_system_organization")]
  http-request set-header X-ASN-Default %[req.hdr(x-ip),lua.mmdb_lookup("asn")]
  http-request set-header X-Bad-Db %[req.hdr(x-ip),lua.mmdb_lookup("city","city")]
  http-request set-header X-Src-Country %[src,lua.mmdb_lookup("country","country","iso_code")]
  default_backend app

# selfie-prometheus-exporter: example-haproxy.cfg's metrics frontend
frontend metrics
  bind {a_metrics}
  http-request use-service lua.metrics

backend app
  server s1 {app}
"#,
        sliderule = fixture("sliderule-ilb-orchestrator").display(),
        code_vsn_path = cv("code_vsn_path.lua"),
        servers_path = cv("servers_code_vsn_path.lua"),
        log_requests = cv("log_requests.lua"),
        code_vsn = cv("code_vsn.lua"),
        crowdsec = fx("crowdsec-remediation-page", "crowdsec.lua"),
        ingress = fx("ingress-error-pages", "services.lua"),
        orchestrator = fx("sliderule-ilb-orchestrator", "orchestrator.lua"),
        analyzer = fx("sliderule-ilb-orchestrator", "analyzer.lua"),
        auth = fx("socks5-connect-inline-auth", "auth-inline.lua"),
        http_connect = fx("socks5-connect-inline-auth", "http-connect.lua"),
        geoip = wd.path("geoip_shim.lua"),
        selfie = wd.path("selfie_shim.lua"),
        a_cookie_path = f.cookie_path,
        a_cookie_vsn = f.cookie_vsn,
        a_crowdsec = f.crowdsec,
        a_ingress = f.ingress,
        a_discovery = f.discovery,
        a_cluster = f.cluster,
        a_auth = f.auth,
        a_geoip = f.geoip,
        a_metrics = f.metrics,
        app = s.app.addr,
        v1 = s.v1.addr,
        v2 = s.v2.addr,
        v3 = s.v3.addr,
    );
    HaProxy::start_with(&cfg, wd.dir.path(), &env_vars(&s.stats_sock), &f.all()).await
}

/// portcullis with the same scripts and the equivalent rules. portcullis has
/// no backend-level rules: a HAProxy backend's rules become frontend rules
/// guarded by the variable that chose the backend.
async fn start_portcullis(f: &Fronts, admin: SocketAddr, s: &Servers, wd: &Workdir) -> Daemon {
    let plugin = |name: &str, path: String, extra: &str| {
        format!(
            "[[plugin]]\nname = \"{name}\"\nlua = \"{path}\"\non_error = \"fail_closed\"\n{extra}\n"
        )
    };
    let cv = |x| fx("cookie-version-routing", x);
    let sliderule_path = format!(
        "lua_path = \"{}/?.lua\"\n",
        fixture("sliderule-ilb-orchestrator").display()
    );
    let plugins = [
        // Linked into the workdir, beside maps/ (docs/LUA.md difference 15).
        plugin("code_vsn_path", wd.path("code_vsn_path.lua"), ""),
        plugin("servers_code_vsn_path", cv("servers_code_vsn_path.lua"), ""),
        plugin("log_requests", wd.path("log_requests.lua"), ""),
        plugin("code_vsn", cv("code_vsn.lua"), ""),
        plugin(
            "crowdsec",
            fx("crowdsec-remediation-page", "crowdsec.lua"),
            "",
        ),
        plugin("ingress", fx("ingress-error-pages", "services.lua"), ""),
        plugin(
            "orchestrator",
            fx("sliderule-ilb-orchestrator", "orchestrator.lua"),
            &sliderule_path,
        ),
        plugin(
            "analyzer",
            fx("sliderule-ilb-orchestrator", "analyzer.lua"),
            "",
        ),
        plugin(
            "auth_inline",
            fx("socks5-connect-inline-auth", "auth-inline.lua"),
            "",
        ),
        plugin(
            "http_connect",
            fx("socks5-connect-inline-auth", "http-connect.lua"),
            "",
        ),
        plugin("geoip", wd.path("geoip_shim.lua"), ""),
        plugin("selfie", wd.path("selfie_shim.lua"), ""),
    ]
    .concat();
    let front = |name: &str, bind: SocketAddr, default: Option<&str>, rules: &str| {
        let default = default.map_or(String::new(), |d| format!("default_backend = \"{d}\"\n"));
        format!("[[frontend]]\nname = \"{name}\"\nbind = \"{bind}\"\n{default}{rules}\n")
    };
    let backend =
        |name: &str, addr: SocketAddr| backend_section(name, "roundrobin", &[("s", addr, 1)], "");
    let svc = |be: &str, service: &str| {
        format!(
            "  {{ use_service = \"lua.{service}\", if = \"var(req.backend_name) -m str {be}\" }},\n"
        )
    };
    let cookie_path = format!(
        r#"http_request = [
  {{ set_var = "req.backend_name", expr = "lua.code_vsn_path" }},
  {{ set_var = "txn.from_svc", expr = "lua.log_from" }},
  {{ use_backend = "%[var(req.backend_name)]" }},
  {{ lua = "log_to", if = "var(req.backend_name) -m found" }},
{}{}{}{}{}]
"#,
        svc("default_backend", "default_server"),
        svc("user_v1", "user_v1_server"),
        svc("user_v2", "user_v2_server"),
        svc("biz_v1", "biz_v1_server"),
        svc("biz_v2", "biz_v2_server"),
    );
    let crowdsec = r#"http_request = [
  { set_var = "txn.crowdsec.remediation", expr = "req.hdr(x-remediation)", if = "req.hdr(x-remediation) -m found" },
  { set_var = "txn.crowdsec.captcha_site_key", expr = "req.hdr(x-site-key)", if = "req.hdr(x-site-key) -m found" },
  { set_var = "txn.crowdsec.contact_us_url", expr = "req.hdr(x-contact)", if = "req.hdr(x-contact) -m found" },
  { set_header = "X-Crowdsec-Remediation", value = "%[var(txn.crowdsec.remediation)]", if = "var(txn.crowdsec.remediation) -m found" },
  { lua = "crowdsec_handle", if = "var(txn.crowdsec.remediation) -m str captcha" },
  { lua = "crowdsec_handle", if = "var(txn.crowdsec.remediation) -m str ban" },
  { lua = "crowdsec_handle", if = "path_beg /always" },
]
"#;
    let ingress = r#"http_request = [
  { set_var = "txn.cors_max_age", expr = "str(86400)", if = "method OPTIONS and path_beg /cors" },
  { use_service = "lua.send-cors-preflight", if = "method OPTIONS" },
  { use_service = "lua.send-prometheus-root", if = "path /" },
  { use_service = "lua.send-413", if = "path_beg /413" },
  { use_service = "lua.send-421", if = "path_beg /421" },
  { use_service = "lua.send-495", if = "path_beg /495" },
  { use_service = "lua.send-496", if = "path_beg /496" },
  { use_service = "lua.send-404" },
]
"#;
    let discovery = r#"http_request = [
  { use_service = "lua.orchestrator_register", if = "path /discovery/register" },
  { use_service = "lua.orchestrator_selflock", if = "path /discovery/selflock" },
  { use_service = "lua.orchestrator_lock", if = "path /discovery/lock" },
  { use_service = "lua.orchestrator_unlock", if = "path /discovery/unlock" },
  { use_service = "lua.orchestrator_status", if = "path /discovery/status" },
  { use_service = "lua.orchestrator_whoami", if = "path /discovery/whoami" },
  { use_service = "lua.orchestrator_prometheus", if = "path /discovery/prometheus/orchestrator" },
  { use_service = "lua.orchestrator_health", if = "path /discovery/health" },
  { use_service = "lua.analyzer_prometheus", if = "path /discovery/prometheus/analyzer" },
]
"#;
    let cluster = r#"http_request = [
  { set_var = "txn.sub", expr = "req.hdr(x-sub)", if = "req.hdr(x-sub) -m found" },
  { set_var = "txn.requested_service", expr = "req.hdr(x-sliderule-service)" },
  { set_var = "txn.service", expr = "var(txn.requested_service)", if = "var(txn.requested_service) -m found" },
  { set_var = "txn.service", expr = "str(sliderule-test)", unless = "var(txn.requested_service) -m found" },
  { lua = "analyzer_ratelimit" },
  { return = 429, content_type = "text/plain", body = "rate limited", if = "var(txn.block_this_ip) -m bool" },
  { set_var = "txn.request_path", expr = "path" },
  { set_var = "txn.server_address", expr = "lua.next_node" },
  { set_header = "x-node", value = "%[var(txn.server_address)]" },
  { set_header = "x-node-ip", value = "%[var(txn.server_address),lua.extract_ip]" },
  { set_header = "x-node-port", value = "%[var(txn.server_address),lua.extract_port]" },
]
http_response = [ { lua = "analyzer_metric" } ]
"#;
    let auth = r#"http_request = [
  { set_var = "req.password", expr = "str(moo)", unless = "path_beg /nopass" },
  { set_var = "req.cookie_name", expr = "str(authsession)" },
  { wait_for_body = "1s", at_least = "1k", if = "method POST" },
  { lua = "auth" },
  { return = 200, content_type = "text/plain", body = "success\n" },
]
"#;
    let geoip = r#"http_request = [
  { set_header = "X-Country", value = '%[req.hdr(x-ip),lua.mmdb_lookup("country","country","iso_code")]' },
  { set_header = "X-Continent", value = '%[req.hdr(x-ip),lua.mmdb_lookup("country","continent","code")]' },
  { set_header = "X-ASN", value = '%[req.hdr(x-ip),lua.mmdb_lookup("asn","autonomous_system_number")]' },
  { set_header = "X-ASN-Org", value = '%[req.hdr(x-ip),lua.mmdb_lookup("asn","autonomous_system_organization")]' },
  { set_header = "X-ASN-Default", value = '%[req.hdr(x-ip),lua.mmdb_lookup("asn")]' },
  { set_header = "X-Bad-Db", value = '%[req.hdr(x-ip),lua.mmdb_lookup("city","city")]' },
  { set_header = "X-Src-Country", value = '%[src,lua.mmdb_lookup("country","country","iso_code")]' },
]
"#;
    let cfg = [
        global_section(
            admin,
            &[("timeout.client", "\"10s\""), ("timeout.server", "\"10s\"")],
        ),
        plugins,
        front("cookie_path", f.cookie_path, None, &cookie_path),
        front(
            "cookie_vsn",
            f.cookie_vsn,
            None,
            "http_request = [ { use_backend = \"%[lua.code_vsn]\" } ]\n",
        ),
        front("crowdsec", f.crowdsec, Some("app"), crowdsec),
        front("ingress", f.ingress, Some("app"), ingress),
        front("discovery", f.discovery, Some("app"), discovery),
        front("cluster", f.cluster, Some("app"), cluster),
        front("auth", f.auth, Some("app"), auth),
        front("geoip", f.geoip, Some("app"), geoip),
        front(
            "metrics",
            f.metrics,
            None,
            "http_request = [ { use_service = \"lua.metrics\" } ]\n",
        ),
        backend("app", s.app.addr),
        backend("default_backend", s.app.addr),
        backend("user_v1", s.app.addr),
        backend("user_v2", s.app.addr),
        backend("biz_v1", s.app.addr),
        backend("biz_v2", s.app.addr),
        backend("version1", s.v1.addr),
        backend("version2", s.v2.addr),
        backend("version3", s.v3.addr),
    ]
    .concat();
    let env = env_vars(&s.stats_sock);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut ready = f.all().to_vec();
    ready.push(admin);
    Daemon::start_with(&cfg, &ready, &env, Some(wd.dir.path())).await
}

// ---------------------------------------------------------------------------
// The requests
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Front {
    CookiePath,
    CookieVsn,
    Crowdsec,
    Ingress,
    Discovery,
    Cluster,
    Auth,
    Geoip,
    Metrics,
}

/// How much of a body's order is compared (see [`Case::order`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    /// As sent.
    Kept,
    /// Blank-line-separated blocks in any order.
    Blocks,
    /// Lines in any order, and the `k="v"` labels inside a line's `{...}` too.
    LinesAndLabels,
}

/// Sorts what `order` says may come in any order.
fn reorder(body: &str, order: Order) -> String {
    match order {
        Order::Kept => body.to_string(),
        Order::Blocks => {
            let mut blocks: Vec<&str> = body.split("\n\n").collect();
            blocks.sort_unstable();
            blocks.join("\n\n")
        }
        Order::LinesAndLabels => {
            let mut lines: Vec<String> = body
                .lines()
                .map(|l| match (l.find('{'), l.rfind('}')) {
                    (Some(a), Some(b)) if a < b => {
                        let mut labels: Vec<&str> = l[a + 1..b].split(',').collect();
                        labels.sort_unstable();
                        format!("{}{{{}}}{}", &l[..a], labels.join(","), &l[b + 1..])
                    }
                    _ => l.to_string(),
                })
                .collect();
            lines.sort_unstable();
            lines.join("\n")
        }
    }
}

/// One request sent to both proxies.
struct Case {
    front: Front,
    method: Method,
    path: &'static str,
    /// `{cookie}` in a value is replaced by what [`Case::capture`] kept from an
    /// earlier answer of the same proxy.
    headers: Vec<(&'static str, &'static str)>,
    body: Option<&'static str>,
    /// A regex whose matches are replaced by `<masked>` in both answers: values
    /// that differ by nature (a random session id, a time in seconds).
    mask: Option<&'static str>,
    /// Keep this answer's `set-cookie` (up to `;`) for later cases.
    capture: bool,
    /// Wait before sending (a script's background task must have run).
    pause: Duration,
    /// Parts of the body the script writes in `pairs()` order, which differs
    /// between Lua 5.3 (HAProxy's) and 5.4 (docs/LUA.md, "Lua is 5.4"): they
    /// are compared as sets.
    order: Order,
}

fn case(front: Front, method: Method, path: &'static str) -> Case {
    Case {
        front,
        method,
        path,
        headers: Vec::new(),
        body: None,
        mask: None,
        capture: false,
        pause: Duration::ZERO,
        order: Order::Kept,
    }
}

impl Case {
    fn h(mut self, k: &'static str, v: &'static str) -> Case {
        self.headers.push((k, v));
        self
    }
    fn body(mut self, b: &'static str) -> Case {
        self.body = Some(b);
        self
    }
    fn mask(mut self, re: &'static str) -> Case {
        self.mask = Some(re);
        self
    }
    fn capture(mut self) -> Case {
        self.capture = true;
        self
    }
    fn order(mut self, o: Order) -> Case {
        self.order = o;
        self
    }
    fn pause(mut self, d: Duration) -> Case {
        self.pause = d;
        self
    }
}

const REGISTER: &str = r#"{"service": "sliderule-test", "lifetime": 600, "address": "http://10.1.2.3:9081", "reset": true}"#;

fn cases() -> Vec<Case> {
    use Front::*;
    use Method as M;
    vec![
        // cookie-version-routing: path + cookie version → map → backend → service.
        case(CookiePath, M::GET, "/user/profile"),
        case(CookiePath, M::GET, "/user/profile").h("cookie", "version=2.0.0"),
        case(CookiePath, M::GET, "/biz/report").h("cookie", "Version=2.0.0"),
        case(CookiePath, M::GET, "/biz").h("cookie", "version=1.0.0"),
        // No map entry (user_3.0.0, "_1.0.0"): the default backend's service.
        case(CookiePath, M::GET, "/user/x").h("cookie", "version=3.0.0"),
        case(CookiePath, M::GET, "/"),
        case(CookiePath, M::GET, "/user").h("cookie", "theme=dark"),
        // A cookie without '=': the fetch fails (string.lower(nil)), no backend.
        case(CookiePath, M::GET, "/user").h("cookie", "garbage"),
        case(CookieVsn, M::GET, "/"),
        case(CookieVsn, M::GET, "/a").h("cookie", "version=2.0.0"),
        case(CookieVsn, M::GET, "/b").h("cookie", "a=3.0.0; b=1"),
        case(CookieVsn, M::GET, "/c").h("cookie", "v=9"),
        // Two Cookie lines: [0] is the first.
        case(CookieVsn, M::GET, "/d")
            .h("cookie", "version=3.0.0")
            .h("cookie", "version=2.0.0"),
        // crowdsec: ban / captcha pages, content negotiation, odd remediations.
        case(Crowdsec, M::GET, "/page")
            .h("x-remediation", "ban")
            .h("accept", "text/html,application/xhtml+xml")
            .h("x-contact", "https://contact.example/"),
        case(Crowdsec, M::GET, "/page").h("x-remediation", "ban"),
        case(Crowdsec, M::GET, "/api")
            .h("x-remediation", "ban")
            .h("accept", "application/json"),
        case(Crowdsec, M::GET, "/page")
            .h("x-remediation", "captcha")
            .h("x-site-key", "site-key-123")
            .h("accept", "*/*"),
        // Two Accept lines: utils.accept_html walks every value.
        case(Crowdsec, M::GET, "/two-accepts")
            .h("x-remediation", "ban")
            .h("accept", "application/json")
            .h("accept", "text/html"),
        case(Crowdsec, M::GET, "/always/allow").h("x-remediation", "allow"),
        case(Crowdsec, M::GET, "/always/none"),
        case(Crowdsec, M::GET, "/clean"),
        // ingress-error-pages.
        case(Ingress, M::GET, "/"),
        case(Ingress, M::GET, "/missing"),
        case(Ingress, M::HEAD, "/missing"),
        case(Ingress, M::POST, "/413").body("too much"),
        case(Ingress, M::GET, "/421"),
        case(Ingress, M::GET, "/495"),
        case(Ingress, M::GET, "/496"),
        case(Ingress, M::OPTIONS, "/cors/x").h("origin", "https://a.example"),
        // OPTIONS without the variable: add_header(name, nil) fails the service.
        case(Ingress, M::OPTIONS, "/other"),
        // sliderule: the orchestrator's API, then proxied traffic.
        case(Discovery, M::GET, "/discovery/health"),
        case(Discovery, M::GET, "/discovery/whoami"),
        case(Discovery, M::POST, "/discovery/status").body(r#"{"service": "sliderule-test"}"#),
        case(Discovery, M::POST, "/discovery/register")
            .body(REGISTER)
            .mask(r"[0-9]{9,}"),
        case(Discovery, M::POST, "/discovery/status").body("not json"),
        case(Discovery, M::POST, "/discovery/lock").body(
            r#"{"service": "sliderule-test", "nodesNeeded": 2, "locksPerNode": 1, "timeout": 60}"#,
        ),
        case(Discovery, M::POST, "/discovery/selflock").body(
            r#"{"service": "sliderule-test", "address": "http://10.1.2.3:9081", "locksPerNode": 2, "timeout": 60}"#,
        ),
        case(Discovery, M::POST, "/discovery/selflock").body(
            r#"{"service": "sliderule-test", "address": "http://10.9.9.9:1", "locksPerNode": 1, "timeout": 60}"#,
        ),
        case(Discovery, M::POST, "/discovery/lock").body(
            r#"{"service": "nope", "nodesNeeded": 1, "timeout": 60}"#,
        ),
        // No timeout: nil < number raises, the service fails.
        case(Discovery, M::POST, "/discovery/lock")
            .body(r#"{"service": "sliderule-test", "nodesNeeded": 1}"#),
        case(Discovery, M::POST, "/discovery/unlock").body(r#"{"transactions": [0, 1, 7]}"#),
        // An empty body: json.decode fails, the service fails.
        case(Discovery, M::POST, "/discovery/register"),
        case(Cluster, M::GET, "/source/atl06"),
        case(Cluster, M::GET, "/source/bad-name/"),
        case(Cluster, M::GET, "/source/x").h("x-sliderule-service", "unknown"),
        case(Cluster, M::GET, "/source/atl03").h("x-sub", "alice"),
        case(Discovery, M::GET, "/discovery/prometheus/analyzer").order(Order::Blocks),
        // After a scrubber tick (every second): member counts are filled in.
        case(Discovery, M::GET, "/discovery/prometheus/orchestrator")
            .pause(Duration::from_millis(1500)),
        // socks5-connect-inline-auth: auth-inline.lua's login flow.
        case(Auth, M::GET, "/private"),
        case(Auth, M::GET, "/private").h("cookie", "authsession=forged"),
        case(Auth, M::POST, "/login")
            .h("content-type", "text/plain")
            .body("password=moo"),
        case(Auth, M::POST, "/login")
            .h("content-type", "application/x-www-form-urlencoded")
            .body("password=wrong"),
        case(Auth, M::POST, "/private/area")
            .h("content-type", "application/x-www-form-urlencoded")
            .body("user=me&password=moo")
            .mask(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
            .capture(),
        case(Auth, M::GET, "/private").h("cookie", "{cookie}"),
        case(Auth, M::GET, "/private").h("authsession", "{cookie_value}"),
        // No req.password: the action returns act.ERROR.
        case(Auth, M::GET, "/nopass"),
        // geoip2-mmdb-converter: hits in both databases, misses, bad input.
        case(Geoip, M::GET, "/").h("x-ip", "81.2.69.160"),
        case(Geoip, M::GET, "/").h("x-ip", "1.128.0.1"),
        case(Geoip, M::GET, "/").h("x-ip", "2.125.160.216"),
        case(Geoip, M::GET, "/").h("x-ip", "8.8.8.8"),
        case(Geoip, M::GET, "/").h("x-ip", "not-an-ip"),
        case(Geoip, M::GET, "/").h("x-ip", "2001:db8::1"),
        case(Geoip, M::GET, "/"),
        // selfie-prometheus-exporter: the stats socket rendered for Prometheus.
        case(Metrics, M::GET, "/metrics").order(Order::LinesAndLabels),
        case(Metrics, M::POST, "/anything")
            .body("x")
            .order(Order::LinesAndLabels),
    ]
}

// ---------------------------------------------------------------------------
// Comparing
// ---------------------------------------------------------------------------

/// What is compared of one response.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    /// Response headers, lower-case names, sorted by name (values in order).
    headers: Vec<(String, String)>,
    /// The body, or for a backend echo: server, method, path and the `x-*` request headers it saw.
    body: String,
}

/// Turns a response into what must match, dropping the documented, deliberate differences:
/// - `date`: portcullis (hyper) sends it on every response, HAProxy not on its
///   own replies (docs/LUA.md difference 9);
/// - a backend echo's `content-length`: the echoed request differs by the next item;
/// - `x-forwarded-for` / `x-forwarded-proto`: portcullis adds them to every
///   forwarded request (difference 9);
/// - `mask`: values that differ by nature (see [`Case::mask`]).
fn normalize(r: &Resp, mask: Option<&regex::Regex>) -> Seen {
    let masked = |s: String| match mask {
        Some(re) => re.replace_all(&s, "<masked>").into_owned(),
        None => s,
    };
    let is_echo = r
        .header("content-type")
        .is_some_and(|c| c == "application/json")
        && r.header("x-server").is_some();
    let mut headers: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| *k != "date" && !(is_echo && *k == "content-length"))
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                masked(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let body = if is_echo {
        let e = r.echo();
        let seen = e.x_headers();
        format!(
            "echo {} {} {}\n{}",
            e.server(),
            e.method(),
            e.path(),
            seen.join("\n")
        )
    } else {
        masked(r.text())
    };
    Seen {
        status: r.status.as_u16(),
        headers,
        body,
    }
}

/// Values one proxy's earlier answers left for later cases.
#[derive(Default)]
struct Captured(HashMap<&'static str, String>);

impl Captured {
    fn fill(&self, v: &str) -> String {
        let mut out = v.to_string();
        for (k, val) in &self.0 {
            out = out.replace(&format!("{{{k}}}"), val);
        }
        out
    }

    fn keep(&mut self, r: &Resp) {
        let c = r.header("set-cookie").unwrap_or_default();
        let pair = c.split(';').next().unwrap_or("").to_string();
        let value = pair.split_once('=').map(|x| x.1).unwrap_or("").to_string();
        self.0.insert("cookie", pair);
        self.0.insert("cookie_value", value);
    }
}

async fn send(addr: SocketAddr, c: &Case, cap: &Captured) -> Resp {
    let mut b = Request::builder()
        .method(c.method.clone())
        .uri(c.path)
        .header("host", "compat.test");
    for (k, v) in &c.headers {
        b = b.header(*k, cap.fill(v));
    }
    let body = match c.body {
        Some(t) => full(t),
        None => empty(),
    };
    H1::connect(addr)
        .await
        .send(b.body(body).expect("request"))
        .await
}

/// `log_requests.lua`'s file, its dates (from `http_date`) replaced.
fn demo_log(wd: &Workdir) -> String {
    let re = regex::Regex::new(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")
        .expect("date regex");
    re.replace_all(&wd.demo_log(), "<date>").into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_fixture_scripts_behave_as_under_haproxy() {
    haproxy_26();
    let stats_dir = TempDir::new("fixtures-stats");
    let servers = Servers {
        app: Backend::start("app").await,
        v1: Backend::start("v1").await,
        v2: Backend::start("v2").await,
        v3: Backend::start("v3").await,
        stats_sock: stats_dir.path().join("haproxy.sock"),
    };
    let stats_served = serve_stats(&servers.stats_sock).await;
    let ha_wd = Workdir::new("fixtures-ha");
    let pc_wd = Workdir::new("fixtures-pc");
    let ha_f = Fronts::new();
    let ha = start_haproxy(&ha_f, &servers, &ha_wd).await;
    let pc_f = Fronts::new();
    let [admin] = free_addrs::<1>();
    let pc = start_portcullis(&pc_f, admin, &servers, &pc_wd).await;

    let mut failures = Vec::new();
    let (mut ha_cap, mut pc_cap) = (Captured::default(), Captured::default());
    let all = cases();
    for c in &all {
        tokio::time::sleep(c.pause).await;
        let mask = c.mask.map(|m| regex::Regex::new(m).expect("mask regex"));
        let hr = send(ha_f.get(c.front), c, &ha_cap).await;
        let pr = send(pc_f.get(c.front), c, &pc_cap).await;
        if c.capture {
            ha_cap.keep(&hr);
            pc_cap.keep(&pr);
        }
        let (mut h, mut p) = (normalize(&hr, mask.as_ref()), normalize(&pr, mask.as_ref()));
        for s in [&mut h, &mut p] {
            s.body = reorder(&s.body, c.order);
        }
        // Shown with --nocapture: what was compared.
        eprintln!("{:?} {} {}\n  {h:?}", c.front, c.method, c.path);
        if h != p {
            failures.push(format!(
                "{:?} {} {} {:?}\n  haproxy:    {h:?}\n  portcullis: {p:?}",
                c.front, c.method, c.path, c.headers
            ));
        }
    }
    // Shown with --nocapture: what the scripts logged under each proxy.
    eprintln!(
        "--- portcullis log ---\n{}\n--- haproxy log ---\n{}",
        pc.stderr(),
        ha.log()
    );
    let (hl, pl) = (demo_log(&ha_wd), demo_log(&pc_wd));
    if hl != pl {
        failures.push(format!(
            "log_requests.lua's logs/demo_logs.txt differs\n  haproxy:\n{hl}\n  portcullis:\n{pl}"
        ));
    }
    assert!(
        failures.is_empty(),
        "{} of {} comparisons differ:\n{}\nportcullis log:\n{}\nhaproxy log:\n{}",
        failures.len(),
        all.len() + 1,
        failures.join("\n"),
        pc.stderr(),
        ha.log()
    );
    // The scripts really ran under HAProxy (a rule that never fired would compare equal too).
    assert!(hl.contains("Request to: user_v2"), "demo log: {hl}");
    let r = send(
        ha_f.geoip,
        &case(Front::Geoip, Method::GET, "/").h("x-ip", "81.2.69.1"),
        &ha_cap,
    )
    .await;
    assert_eq!(r.echo().header("x-country").as_deref(), Some("GB"));
    let r = send(
        ha_f.crowdsec,
        &case(Front::Crowdsec, Method::GET, "/").h("x-remediation", "ban"),
        &ha_cap,
    )
    .await;
    assert_eq!(r.status.as_u16(), 403);
    // Both exporters read the stats socket (at start, then every second).
    assert!(
        stats_served.load(std::sync::atomic::Ordering::Relaxed) >= 2,
        "the stats socket was not read by both proxies"
    );
    let r = send(
        ha_f.metrics,
        &case(Front::Metrics, Method::GET, "/metrics"),
        &ha_cap,
    )
    .await;
    assert!(
        r.text().contains("haproxy_server_up{"),
        "selfie's metrics under HAProxy: {}",
        r.text()
    );
}
