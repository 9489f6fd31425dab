//! Lua `AppletHTTP` services answering HTTP/2 clients (issue #21), side by
//! side with HAProxy 2.6: curl over h2c (prior knowledge) and over TLS with
//! ALPN h2 sends the same requests to both proxies, running the same script
//! (`use_service`), and the status, the headers the script sets and the body
//! must match: request line and headers as the service sees them
//! (`applet.version` is "HTTP/2.0", as HAProxy 2.6 says), the request body through `getline` and
//! `receive`, several `send`s, repeated response headers, and a response
//! larger than HTTP/2's initial flow-control window, with and without a
//! `content-length`.
//!
//! HAProxy and curl must be installed (`bash scripts/setup.sh`): without
//! them this test fails; it never skips.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use rcgen::{CertificateParams, DnType, KeyPair};

const SCRIPT: &str = r#"
core.register_service("info", "http", function(applet)
  local out = {}
  out[#out + 1] = "version=" .. applet.version
  out[#out + 1] = "method=" .. applet.method
  out[#out + 1] = "path=" .. applet.path
  out[#out + 1] = "qs=" .. applet.qs
  out[#out + 1] = "length=" .. applet.length
  local h = applet.headers
  out[#out + 1] = "x-a=" .. (h["x-a"] and h["x-a"][0] or "-")
  out[#out + 1] = "line=[" .. applet:getline() .. "]"
  out[#out + 1] = "three=[" .. applet:receive(3) .. "]"
  out[#out + 1] = "rest=[" .. applet:receive() .. "]"
  applet:set_status(201)
  applet:add_header("content-type", "text/plain")
  applet:add_header("x-multi", "one")
  applet:add_header("x-multi", "two")
  applet:start_response()
  for _, l in ipairs(out) do applet:send(l .. "\n") end
end)

core.register_service("big", "http", function(applet)
  local body = string.rep("0123456789", 20000)
  if applet.qs == "cl=1" then
    applet:add_header("content-length", tostring(#body))
  end
  applet:add_header("x-big", "1")
  applet:start_response()
  for i = 1, 4 do applet:send(body:sub((i - 1) * 50000 + 1, i * 50000)) end
end)
"#;

/// What curl saw: status, the `x-*` and `content-type` headers by name, body.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    version: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// One request with curl (`extra`: protocol options), its answer parsed.
fn curl(extra: &[&str], url: &str, args: &[&str]) -> Seen {
    let dir = TempDir::new("curl");
    let head = dir.path().join("head");
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "10", "-D"])
        .arg(&head)
        .args(extra)
        .args(args)
        .arg(url)
        .output()
        .expect("curl is required (bash scripts/setup.sh)");
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = std::fs::read_to_string(&head).expect("curl head");
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default().to_string();
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .filter(|(k, _)| k.starts_with("x-") || k == "content-type")
        .collect();
    // The order of different fields carries no meaning (HAProxy's differs
    // between its h2c and TLS binds); that of one field's values does, and
    // a stable sort keeps it.
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    Seen {
        version,
        status,
        headers,
        body: out.stdout,
    }
}

fn require_curl() {
    let ok = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("HTTP2"));
    assert!(ok, "curl with HTTP/2 is required (bash scripts/setup.sh)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applet_http_answers_h2_clients_as_haproxy() {
    require_curl();
    haproxy_26();
    let dir = TempDir::new("lua-h2");
    let script = dir.write("svc.lua", SCRIPT);
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    p.distinguished_name.push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().expect("key");
    let cert = p.self_signed(&key).expect("cert");
    let cert_pem = dir.write("cert.pem", &cert.pem());
    let key_pem = dir.write("key.pem", &key.serialize_pem());
    // HAProxy takes the certificate and key in one file.
    let both = dir.write(
        "both.pem",
        &format!("{}{}", cert.pem(), key.serialize_pem()),
    );

    let app = Backend::start("s1").await;
    let [h_plain, h_tls] = free_addrs();
    let haproxy_cfg = format!(
        r#"global
  nbthread 1
  lua-load {script}

defaults
  mode http
  timeout connect 2s
  timeout client 10s
  timeout server 10s

frontend web
  bind {h_plain} proto h2
  bind {h_tls} ssl crt {both} alpn h2
  http-request use-service lua.info if {{ path_beg /info }}
  http-request use-service lua.big if {{ path_beg /big }}
  default_backend app

backend app
  server s1 {app}
"#,
        script = script.display(),
        both = both.display(),
        app = app.addr,
    );
    let _h = HaProxy::start_with(&haproxy_cfg, Path::new("."), &[], &[h_plain, h_tls]).await;

    let ports = Ports::new();
    let p_tls = free_addr();
    let cfg = format!(
        "{}[[plugin]]\nname = \"svc\"\nlua = \"{}\"\non_error = \"fail_closed\"\n\n[[frontend]]\nname = \"web\"\nbind = [\"{}\", \"{p_tls}\"]\ndefault_backend = \"app\"\ntls = {{ cert = \"{}\", key = \"{}\", binds = [\"{p_tls}\"] }}\nhttp_request = [\n  {{ use_service = \"lua.info\", if = \"path_beg /info\" }},\n  {{ use_service = \"lua.big\", if = \"path_beg /big\" }},\n]\n\n{}",
        global_section(ports.admin, &[]),
        script.display(),
        ports.web,
        cert_pem.display(),
        key_pem.display(),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, p_tls, ports.admin]).await;

    let h2c = ["--http2-prior-knowledge"];
    let tls = ["--http2", "-k"];
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("/info/a?x=1", vec!["-H", "x-a: hello"]),
        (
            "/info/post",
            vec![
                "--data-binary",
                "first line\nabcdef and the rest",
                "-H",
                "x-a: p",
            ],
        ),
        // A body without content-length (DATA frames only).
        (
            "/info/nolen",
            vec!["--data-binary", "no\nlength", "-H", "content-length:"],
        ),
        ("/big", vec![]),
        ("/big?cl=1", vec![]),
    ];
    for (path, args) in &cases {
        for (proto, ours, theirs) in [
            (
                &h2c[..],
                format!("http://{}{path}", ports.web),
                format!("http://{h_plain}{path}"),
            ),
            (
                &tls[..],
                format!("https://{p_tls}{path}"),
                format!("https://{h_tls}{path}"),
            ),
        ] {
            let a = curl(proto, &ours, args);
            let mut b = curl(proto, &theirs, args);
            if *path == "/info/nolen" {
                // Without a content-length HAProxy's applet.length is 0, or
                // the body's length when the whole body came with the
                // headers (its H2 mux then knows it): timing, not semantics.
                let text = String::from_utf8_lossy(&b.body).replace("length=9\n", "length=0\n");
                b.body = text.into_bytes();
            }
            assert_eq!(
                a.version, "HTTP/2",
                "{path} {proto:?}: portcullis answered {}",
                a.version
            );
            assert_eq!(
                (a.status, &a.headers, String::from_utf8_lossy(&a.body)),
                (b.status, &b.headers, String::from_utf8_lossy(&b.body)),
                "{path} {proto:?}: portcullis (left) and HAProxy (right) differ"
            );
        }
    }
    // The service saw an HTTP/2 request.
    let r = curl(&h2c, &format!("http://{}/info/v", ports.web), &[]);
    assert!(
        String::from_utf8_lossy(&r.body).starts_with("version=HTTP/2.0\n"),
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    let r = curl(&h2c, &format!("http://{}/big", ports.web), &[]);
    assert_eq!(r.body.len(), 200_000);
}
