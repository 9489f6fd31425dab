//! Lua's network-facing APIs through the real binary: `Socket:connect_ssl`
//! against a local TLS server (self-signed certificate made here), side by
//! side with HAProxy 2.6 running the same script.
//!
//! HAProxy must be installed (`bash scripts/setup.sh`): without it these
//! tests fail; they never skip.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------
// A TLS server that remembers the SNI each client sent
// ---------------------------------------------------------------------------

/// A TLS server on loopback with a self-signed certificate for
/// `peer.test`. A first line `GET ...` gets an HTTP/1.1 response (closed
/// after it, without `close_notify`), any other line is echoed back with the
/// SNI the client sent (`-` for none).
struct TlsServer {
    addr: SocketAddr,
    snis: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsServer {
    #[allow(deprecated)] // ring's provider, as the daemon's
    async fn start() -> TlsServer {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(vec!["peer.test".to_string()]).expect("cert params");
        let cert = params.self_signed(&key).expect("self-signed");
        let der: CertificateDer<'static> = cert.der().clone();
        let key_der = PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![der], key_der)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let snis = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&snis);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().unwrap_or("-").to_string();
                    seen.lock().expect("snis").push(sni.clone());
                    let mut r = BufReader::new(tls);
                    let mut line = String::new();
                    if r.read_line(&mut line).await.is_err() {
                        return;
                    }
                    let line = line.trim_end().to_string();
                    if line.starts_with("GET ") {
                        // The rest of the head, then a response and a close.
                        loop {
                            let mut h = String::new();
                            match r.read_line(&mut h).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) if h.trim_end().is_empty() => break,
                                Ok(_) => {}
                            }
                        }
                        let body = format!("over tls: {line}");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let mut tls = r.into_inner();
                        let _ = tls.write_all(resp.as_bytes()).await;
                        let _ = tls.flush().await;
                        // Dropped without close_notify, as many servers do.
                    } else {
                        let mut tls = r.into_inner();
                        let _ = tls
                            .write_all(format!("echo:{line} sni:{sni}\n").as_bytes())
                            .await;
                        let _ = tls.flush().await;
                        let mut rest = [0u8; 64];
                        let _ =
                            tokio::time::timeout(Duration::from_secs(2), tls.read(&mut rest)).await;
                    }
                });
            }
        });
        TlsServer { addr, snis, task }
    }

    fn snis(&self) -> Vec<String> {
        self.snis.lock().expect("snis").clone()
    }
}

/// A plain TCP server: `speak` writes a line at once (not TLS), otherwise
/// it accepts and stays silent.
async fn plain_server(speak: bool) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held: Vec<TcpStream> = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            if speak {
                let _ = s.write_all(b"220 plain text here\r\n").await;
            }
            held.push(s);
        }
    });
    (addr, task)
}

// ---------------------------------------------------------------------------
// The script both proxies run
// ---------------------------------------------------------------------------

/// Ports substituted into the script: TLS server, plain speaker, silent
/// peer, closed port.
fn script(tls: u16, plain: u16, silent: u16, closed: u16) -> String {
    format!(
        r#"
local TLS, PLAIN, SILENT, CLOSED = {tls}, {plain}, {silent}, {closed}

local function echo(port, line)
  local s = core.tcp()
  s:settimeout(1)
  local ok, err = s:connect_ssl("127.0.0.1", port)
  if not ok then return "connect failed" end
  local n, e = s:send(line .. "\n")
  if not n then return "send failed: " .. tostring(e) end
  local got, e2 = s:receive("*l")
  s:close()
  if not got then return "receive failed: " .. tostring(e2) end
  return got
end

-- What a pure-Lua HTTP client (haproxy-lua-http's shape) does for https:
-- connect_ssl(addr, port), a request, the status line, headers up to the
-- blank line, then the body by Content-Length or up to the close.
local function https_get(port, path, whole)
  local s = core.tcp()
  s:settimeout(2)
  local ok = s:connect_ssl("127.0.0.1", port)
  if not ok then return "connect failed" end
  s:send("GET " .. path .. " HTTP/1.1\r\nHost: peer.test\r\nConnection: close\r\n\r\n")
  local status = s:receive("*l")
  if not status then return "no status line" end
  local len
  while true do
    local h = s:receive("*l")
    if h == nil then return "headers cut" end
    if h == "" then break end
    local k, v = h:match("^([^:]+):%s*(.*)$")
    if k and k:lower() == "content-length" then len = tonumber(v) end
  end
  local body, e
  if whole then body, e = s:receive("*a") else body, e = s:receive(len) end
  s:close()
  if not body then return status .. " | body failed: " .. tostring(e) end
  return status .. " | " .. body
end

local function probe(path)
  if path == "/echo" then return echo(TLS, "hello")
  elseif path == "/https" then return https_get(TLS, "/index", false)
  elseif path == "/https-all" then return https_get(TLS, "/all", true)
  elseif path == "/not-tls" then return echo(PLAIN, "x")
  elseif path == "/silent" then
    local t0 = core.now()
    local r = echo(SILENT, "x")
    local t1 = core.now()
    local ms = (t1.sec - t0.sec) * 1000 + (t1.usec - t0.usec) // 1000
    return r .. (ms >= 900 and ms < 3000 and " after the timeout" or (" after " .. ms .. " ms"))
  elseif path == "/refused" then return echo(CLOSED, "x")
  elseif path == "/one-arg" then
    local ok, err = pcall(function() return core.tcp():connect_ssl("127.0.0.1:" .. TLS) end)
    return tostring(ok) .. " " .. tostring(err):gsub("^.-:%d+: ", "")
  end
  return "unknown probe " .. path
end

core.register_service("tls_probe", "http", function(applet)
  local body = probe(applet.path)
  applet:set_status(200)
  applet:add_header("content-type", "text/plain")
  applet:add_header("content-length", tostring(#body))
  applet:start_response()
  applet:send(body)
end)

core.register_action("tls_action", {{ "http-req" }}, function(txn)
  txn:set_var("txn.tls", echo(TLS, "from action"))
end)
"#
    )
}

const PROBES: &[&str] = &[
    "/echo",
    "/https",
    "/https-all",
    "/not-tls",
    "/silent",
    "/refused",
    "/one-arg",
];

struct Peers {
    tls: TlsServer,
    _plain: tokio::task::JoinHandle<()>,
    _silent: tokio::task::JoinHandle<()>,
    closed: SocketAddr,
    plain: SocketAddr,
    silent: SocketAddr,
}

impl Drop for Peers {
    fn drop(&mut self) {
        self._plain.abort();
        self._silent.abort();
    }
}

async fn peers() -> Peers {
    let tls = TlsServer::start().await;
    let (plain, plain_task) = plain_server(true).await;
    let (silent, silent_task) = plain_server(false).await;
    Peers {
        tls,
        _plain: plain_task,
        _silent: silent_task,
        closed: free_addr(),
        plain,
        silent,
    }
}

async fn start_portcullis(ports: &Ports, dir: &TempDir, p: &Peers) -> Daemon {
    let path = dir.write(
        "tls_probe.lua",
        &script(
            p.tls.addr.port(),
            p.plain.port(),
            p.silent.port(),
            p.closed.port(),
        ),
    );
    let rules = r#"http_request = [
  { lua = "tls_action", if = "path_beg /action" },
  { return = 200, body = "%[var(txn.tls)]", if = "path_beg /action" },
  { use_service = "lua.tls_probe" },
]
"#;
    let cfg = format!(
        "{}[[plugin]]\nname = \"tls_probe\"\nlua = \"{}\"\non_error = \"fail_closed\"\n\n{}{}",
        global_section(ports.admin, &[("timeout.client", "\"5s\"")]),
        path.display(),
        frontend_section("web", ports.web, "app", rules),
        backend_section("app", "roundrobin", &[("s1", p.closed, 1)], ""),
    );
    Daemon::start(&cfg, &[ports.web, ports.admin]).await
}

async fn start_haproxy(web: SocketAddr, dir: &TempDir, p: &Peers) -> HaProxy {
    let path = dir.write(
        "tls_probe_ha.lua",
        &script(
            p.tls.addr.port(),
            p.plain.port(),
            p.silent.port(),
            p.closed.port(),
        ),
    );
    let cfg = format!(
        r#"global
  nbthread 1
  lua-load {}

defaults
  mode http
  timeout connect 2s
  timeout client 10s
  timeout server 10s

frontend web
  bind {web}
  http-request lua.tls_action if {{ path_beg /action }}
  http-request return status 200 content-type text/plain lf-string "%[var(txn.tls)]" if {{ path_beg /action }}
  http-request use-service lua.tls_probe
"#,
        path.display()
    );
    HaProxy::start(&cfg, dir.path(), web).await
}

/// What each proxy answered, probe by probe.
async fn run_probes(web: SocketAddr) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for path in PROBES.iter().copied().chain(["/action"]) {
        let r = within(path, Duration::from_secs(15), get(web, path)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        out.push((path.to_string(), r.text()));
    }
    out
}

#[tokio::test]
async fn connect_ssl_talks_tls_without_sni_or_verification() {
    let p = peers().await;
    let dir = TempDir::new("lua-tls");
    let ports = Ports::new();
    let daemon = start_portcullis(&ports, &dir, &p).await;
    let got = run_probes(ports.web).await;
    let want: Vec<(&str, &str)> = vec![
        ("/echo", "echo:hello sni:-"),
        ("/https", "HTTP/1.1 200 OK | over tls: GET /index HTTP/1.1"),
        (
            "/https-all",
            "HTTP/1.1 200 OK | over tls: GET /all HTTP/1.1",
        ),
        ("/not-tls", "connect failed"),
        ("/silent", "connect failed after the timeout"),
        ("/refused", "connect failed"),
        ("/one-arg", "false 'connect_ssl' needs 3 arguments"),
        ("/action", "echo:from action sni:-"),
    ];
    for ((path, body), (wpath, wbody)) in got.iter().zip(&want) {
        assert_eq!(path, wpath);
        assert_eq!(body, wbody, "{path}\nportcullis log:\n{}", daemon.stderr());
    }
    // HAProxy 2.6's Lua socket sends no SNI; neither do we.
    assert!(
        p.tls.snis().iter().all(|s| s == "-"),
        "SNI sent: {:?}",
        p.tls.snis()
    );
}

#[tokio::test]
async fn connect_ssl_answers_as_haproxy_26_does() {
    haproxy_26();
    let p = peers().await;
    let dir = TempDir::new("lua-tls-ha");
    let ports = Ports::new();
    let ha_web = free_addr();
    let daemon = start_portcullis(&ports, &dir, &p).await;
    let ha = start_haproxy(ha_web, &dir, &p).await;
    let ours = run_probes(ports.web).await;
    let theirs = run_probes(ha_web).await;
    let mut diffs = Vec::new();
    for ((path, a), (_, b)) in ours.iter().zip(&theirs) {
        if a != b {
            diffs.push(format!("{path}\n  haproxy:    {b:?}\n  portcullis: {a:?}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differ:\n{}\nportcullis log:\n{}\nhaproxy log:\n{}",
        diffs.len(),
        diffs.join("\n"),
        daemon.stderr(),
        ha.log()
    );
}

// ---------------------------------------------------------------------------
// Server:get_maxconn / set_maxconn and the queue counters, beside HAProxy
// ---------------------------------------------------------------------------

const MAXCONN_SCRIPT: &str = r#"
core.register_service("srv_api", "http", function(applet)
  local be = core.backends["app"]
  local srv = be.servers["s1"]
  local out = {}
  local function add(k, v) out[#out + 1] = k .. "=" .. tostring(v) end
  add("get_maxconn", srv:get_maxconn())
  for _, v in ipairs({ "7", "", "abc", "12x", " 5", "+4", "0" }) do
    add("set_maxconn(" .. v .. ")", srv:set_maxconn(v))
    add("now", srv:get_maxconn())
  end
  add("set_maxconn(number)", srv:set_maxconn(9))
  add("now", srv:get_maxconn())
  srv:set_maxconn("3")
  local st = srv:get_stats()
  for _, k in ipairs({ "qcur", "qmax", "scur", "smax", "stot" }) do add("srv." .. k, st[k]) end
  local pst = be:get_stats()
  for _, k in ipairs({ "qcur", "qmax" }) do add("be." .. k, pst[k]) end
  local body = table.concat(out, "\n") .. "\n"
  applet:set_status(200)
  applet:add_header("content-length", tostring(#body))
  applet:start_response()
  applet:send(body)
end)
"#;

#[tokio::test]
async fn server_maxconn_api_and_queue_stats_match_haproxy_26() {
    haproxy_26();
    let app = Backend::start("s1").await;
    let dir = TempDir::new("lua-maxconn");
    let script = dir.write("srv_api.lua", MAXCONN_SCRIPT);
    let ports = Ports::new();
    let rules =
        "http_request = [\n  { use_service = \"lua.srv_api\", if = \"path_beg /api\" },\n]\n";
    let cfg = format!(
        "{}[[plugin]]\nname = \"srv_api\"\nlua = \"{}\"\n\n{}[[backend]]\nname = \"app\"\nserver = [{{ name = \"s1\", addr = \"{}\", maxconn = 3 }}]\n[backend.timeout]\nqueue = \"2s\"\n",
        global_section(ports.admin, &[]),
        script.display(),
        frontend_section("web", ports.web, "app", rules),
        app.addr,
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let ha_web = free_addr();
    let hcfg = format!(
        "global\n  nbthread 1\n  lua-load {}\n\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n  timeout queue 2s\n\nfrontend web\n  bind {ha_web}\n  http-request use-service lua.srv_api if {{ path_beg /api }}\n  default_backend app\n\nbackend app\n  server s1 {} maxconn 3\n",
        script.display(),
        app.addr
    );
    let ha = HaProxy::start(&hcfg, dir.path(), ha_web).await;
    let mut answers = Vec::new();
    for web in [ports.web, ha_web] {
        // One request through the server first: smax and stot move.
        assert_eq!(get(web, "/through").await.status, 200);
        // The request's slot is given back once its exchange is recorded.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = get(web, "/api").await;
        assert_eq!(r.status, 200, "{}", r.text());
        answers.push(r.text());
    }
    assert_eq!(
        answers[0],
        answers[1],
        "portcullis (left) and HAProxy (right) differ\nportcullis log:\n{}\nhaproxy log:\n{}",
        d.stderr(),
        ha.log()
    );
    // What HAProxy answers, spelled out (so the comparison cannot pass on two empty pages).
    assert!(
        answers[1].starts_with("get_maxconn=3\nset_maxconn(7)=nil\nnow=7\n"),
        "{}",
        answers[1]
    );
    assert!(
        answers[1].contains("set_maxconn(12x)=Trailing garbage in maxconn string\n"),
        "{}",
        answers[1]
    );
    assert!(
        answers[1].contains("srv.smax=1\nsrv.stot=1\n"),
        "{}",
        answers[1]
    );
}

// ---------------------------------------------------------------------------
// HAProxy's mailers.lua, unmodified, against a local SMTP sink
// ---------------------------------------------------------------------------

/// An SMTP sink: answers every command as a server that accepts the mail
/// and keeps each session's transcript (commands and DATA).
async fn smtp_sink() -> (
    SocketAddr,
    Arc<Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sessions = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&sessions);
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut r = BufReader::new(s);
                let mut log = String::new();
                if r.get_mut()
                    .write_all(b"220 sink.test ESMTP\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                let mut in_data = false;
                loop {
                    let mut line = String::new();
                    match tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line))
                        .await
                    {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => break,
                    }
                    log.push_str(&line);
                    let reply: &[u8] = if in_data {
                        if line == ".\r\n" {
                            in_data = false;
                            b"250 queued\r\n"
                        } else {
                            continue;
                        }
                    } else if line.starts_with("DATA") {
                        in_data = true;
                        b"354 go ahead\r\n"
                    } else if line.starts_with("QUIT") {
                        let _ = r.get_mut().write_all(b"221 bye\r\n").await;
                        break;
                    } else {
                        b"250 ok\r\n"
                    };
                    if r.get_mut().write_all(reply).await.is_err() {
                        break;
                    }
                }
                seen.lock().expect("sessions").push(log);
            });
        }
    });
    (addr, sessions, task)
}

fn mailers_fixture() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/haproxy-lua/haproxy-mailers/mailers.lua")
        .display()
        .to_string()
}

#[tokio::test]
async fn mailers_lua_sends_the_alert_when_a_server_goes_down() {
    let (smtp, sessions, sink) = smtp_sink().await;
    let srv = Backend::start("srv1").await;
    let ports = Ports::new();
    let cfg = format!(
        "{}[[plugin]]\nname = \"mailers\"\nlua = \"{}\"\n\n{}[[mailers]]\nname = \"mymailers\"\ntimeout_mail = \"5s\"\nmailer = [{{ name = \"smtp1\", addr = \"{smtp}\" }}]\n\n[[backend]]\nname = \"be1\"\nserver = [{{ name = \"srv1\", addr = \"{}\" }}]\nhealth_check = {{ path = \"/health\", interval = \"200ms\", rise = 1, fall = 1 }}\nemail_alert = {{ mailers = \"mymailers\", level = \"info\", from = \"from@domain.tld\", to = \"to@domain.tld\", myhostname = \"proxy.test\", track_server_health = true }}\n",
        global_section(ports.admin, &[]),
        mailers_fixture(),
        frontend_section("fe1", ports.web, "be1", ""),
        srv.addr,
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    // The script's mail task runs once its init function subscribed to the
    // server events (HAProxy runs init functions before any check too).
    eventually("the mailers task running", LIMIT_MAIL, || async {
        get(ports.admin, "/plugins/mailers").await.json()["calls"].as_u64() >= Some(1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The server starts failing its checks: with fall = 1 it goes DOWN.
    srv.set_healthy(false);
    let want_state = "Subject: [HAProxy Alert] Server be1/srv1 is DOWN, reason: Layer7 wrong status, code: 503, check duration: ";
    eventually("the DOWN alert mail", LIMIT_MAIL, || async {
        sessions
            .lock()
            .expect("sessions")
            .iter()
            .any(|s| s.contains(want_state))
    })
    .await;
    let all = sessions.lock().expect("sessions").clone();
    let mail = all
        .iter()
        .find(|s| s.contains(want_state))
        .expect("the DOWN alert");
    // The SMTP dialogue the script drives, with the table get_mailers() gave it.
    assert!(
        mail.starts_with("HELO proxy.test\r\nMAIL FROM: <from@domain.tld>\r\nRCPT TO: <to@domain.tld>\r\nDATA\r\nFrom: from@domain.tld\r\nTo: to@domain.tld\r\nDate: "),
        "{mail}\nportcullis log:\n{}",
        d.stderr()
    );
    // The message as srv_state_handler builds it: subject and body.
    let summary = "ms. 0 active and 0 backup servers left. 0 sessions active, 0 requeued, 0 remaining in queue";
    assert_eq!(mail.matches(summary).count(), 2, "{mail}");
    assert!(
        mail.ends_with(" remaining in queue\r\n\r\n.\r\nQUIT\r\n"),
        "{mail:?}"
    );
    // The failed check is mailed too, with HAProxy's health figures.
    eventually("the failed-check mail", LIMIT_MAIL, || async {
        sessions.lock().expect("sessions").iter().any(|s| {
            s.contains("Subject: [HAProxy Alert] Health check for server be1/srv1 failed, reason: Layer7 wrong status, code: 503")
                && s.contains("status: 0/1 DOWN")
        })
    })
    .await;
    sink.abort();
}

/// A server that is down from the start is mailed about too: health checks
/// begin only after every worker ran its Lua init functions (HAProxy's
/// order), so the subscription mailers.lua makes there sees the first
/// failed check. Before that order was kept, the first check could run
/// while the init function was still loading and the alert was lost.
#[tokio::test]
async fn mailers_lua_mails_a_server_down_at_start() {
    let (smtp, sessions, sink) = smtp_sink().await;
    let refused = free_addr();
    let ports = Ports::new();
    let cfg = format!(
        "{}[[plugin]]\nname = \"mailers\"\nlua = \"{}\"\n\n{}[[mailers]]\nname = \"mymailers\"\ntimeout_mail = \"5s\"\nmailer = [{{ name = \"smtp1\", addr = \"{smtp}\" }}]\n\n[[backend]]\nname = \"be1\"\nserver = [{{ name = \"srv1\", addr = \"{refused}\" }}]\nhealth_check = {{ path = \"/health\", interval = \"100ms\", rise = 1, fall = 1 }}\nemail_alert = {{ mailers = \"mymailers\", level = \"info\", from = \"from@domain.tld\", to = \"to@domain.tld\", myhostname = \"proxy.test\" }}\n",
        global_section(ports.admin, &[]),
        mailers_fixture(),
        frontend_section("fe1", ports.web, "be1", ""),
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    eventually(
        "the DOWN alert for a server down at start",
        LIMIT_MAIL,
        || async {
            sessions
                .lock()
                .expect("sessions")
                .iter()
                .any(|s| s.contains("Subject: [HAProxy Alert] Server be1/srv1 is DOWN"))
        },
    )
    .await;
    let all = sessions.lock().expect("sessions").clone();
    assert!(
        all.iter().any(|s| s.contains("Layer4 connection problem")),
        "the reason is the refused connection: {all:#?}\n{}",
        d.stderr()
    );
    sink.abort();
}

const LIMIT_MAIL: Duration = Duration::from_secs(15);

const MAILERS_DUMP: &str = r#"
core.use_native_mailers_config()
core.disable_legacy_mailers()
core.register_service("dump", "http", function(applet)
  local out = {}
  for _, name in ipairs({ "be1", "plain" }) do
    local m = core.backends[name]:get_mailers()
    if m == nil then
      out[#out + 1] = name .. ": nil"
    else
      local servers = {}
      for k, v in pairs(m.mailservers) do servers[#servers + 1] = k .. "=" .. v end
      table.sort(servers)
      out[#out + 1] = string.format("%s: %s %s %s %s %s %s %s [%s]", name,
        tostring(m.track_server_health), math.type(m.log_level), m.log_level,
        math.type(m.mailservers_timeout), m.mailservers_timeout,
        m.smtp_hostname ~= "" and "host" or "nohost",
        m.smtp_from .. ">" .. m.smtp_to, table.concat(servers, ","))
    end
  end
  out[#out + 1] = "frontend: " .. tostring(core.frontends["web"]:get_mailers())
  local body = table.concat(out, "\n")
  applet:set_status(200)
  applet:add_header("content-length", tostring(#body))
  applet:start_response()
  applet:send(body)
end)
"#;

#[tokio::test]
async fn get_mailers_gives_haproxy_28s_table() {
    let dir = TempDir::new("lua-mailers");
    let script = dir.write("dump.lua", MAILERS_DUMP);
    let ports = Ports::new();
    let dead = free_addr();
    let cfg = format!(
        "{}[[plugin]]\nname = \"dump\"\nlua = \"{}\"\n\n{}[[mailers]]\nname = \"m\"\nmailer = [{{ name = \"a\", addr = \"127.0.0.1:2525\" }}, {{ name = \"b\", addr = \"[::1]:25\" }}]\n\n[[backend]]\nname = \"be1\"\nserver = [{{ name = \"s1\", addr = \"{dead}\" }}]\nemail_alert = {{ mailers = \"m\", from = \"f@x.test\", to = \"t@x.test\" }}\n\n[[backend]]\nname = \"plain\"\nserver = [{{ name = \"s1\", addr = \"{dead}\" }}]\n",
        global_section(ports.admin, &[]),
        script.display(),
        frontend_section(
            "web",
            ports.web,
            "be1",
            "http_request = [{ use_service = \"lua.dump\" }]\n"
        ),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let r = get(ports.web, "/").await;
    assert_eq!(
        r.text(),
        "be1: false integer 1 integer 10000 host f@x.test>t@x.test [a=127.0.0.1:2525,b=::1:25]\nplain: nil\nfrontend: nil"
    );
}

#[test]
fn check_refuses_bad_mailers_settings() {
    let dir = TempDir::new("mailers-check");
    let ports = Ports::new();
    let section =
        "[[mailers]]\nname = \"m\"\nmailer = [{ name = \"a\", addr = \"127.0.0.1:25\" }]\n";
    for (mailers, alert, want) in [
        (
            section,
            "{ mailers = \"nope\", from = \"f@x\", to = \"t@x\" }",
            "unknown mailers section \"nope\"; declared: m",
        ),
        (
            "",
            "{ mailers = \"nope\", from = \"f@x\", to = \"t@x\" }",
            "unknown mailers section \"nope\"; no [[mailers]] section is declared",
        ),
        (
            section,
            "{ mailers = \"m\", from = \"f@x\", to = \"t@x\", level = \"loud\" }",
            "unknown email_alert level \"loud\"; expected one of emerg, alert, crit, err, warning, notice, info, debug",
        ),
        (
            section,
            "{ mailers = \"m\", to = \"t@x\" }",
            "missing key `from`",
        ),
        (
            section,
            "{ mailers = \"m\", from = \"\", to = \"t@x\" }",
            "email_alert from must be a mail address",
        ),
        (
            "[[mailers]]\nname = \"m\"\n",
            "{ mailers = \"m\", from = \"f@x\", to = \"t@x\" }",
            "mailers section \"m\" has no mailer",
        ),
        (
            "[[mailers]]\nname = \"m\"\nmailer = [{ name = \"a\", addr = \"127.0.0.1:25\" }, { name = \"a\", addr = \"127.0.0.1:26\" }]\n",
            "{ mailers = \"m\", from = \"f@x\", to = \"t@x\" }",
            "duplicate mailer name \"a\" in mailers section \"m\"",
        ),
        (
            "[[mailers]]\nname = \"m\"\ntimeout_mail = \"0s\"\nmailer = [{ name = \"a\", addr = \"127.0.0.1:25\" }]\n",
            "{ mailers = \"m\", from = \"f@x\", to = \"t@x\" }",
            "timeout_mail must be above 0",
        ),
        (
            "[[mailers]]\nname = \"m\"\nmailer = [{ name = \"a\", addr = \"127.0.0.1\" }]\n",
            "{ mailers = \"m\", from = \"f@x\", to = \"t@x\" }",
            "invalid mailer address \"127.0.0.1\"",
        ),
    ] {
        let cfg = format!(
            "{}{}{mailers}\n[[backend]]\nname = \"app\"\nserver = [{{ name = \"s1\", addr = \"127.0.0.1:9\" }}]\nemail_alert = {alert}\n",
            global_section(ports.admin, &[]),
            frontend_section("web", ports.web, "app", ""),
        );
        let path = dir.write("c.toml", &cfg);
        let out = run_bin(
            &["check", "-c", path.to_str().expect("path")],
            Duration::from_secs(10),
        );
        assert!(
            out.status.is_some_and(|s| !s.success()),
            "accepted: {mailers}{alert}"
        );
        assert!(
            out.stderr.contains(want) && out.stderr.contains("c.toml:"),
            "{want}: {}",
            out.stderr
        );
    }
}
