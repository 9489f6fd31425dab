//! Where a connection goes, decided at run time as HAProxy does: `set_dst`
//! / `set_dst_port` / `set_src` / `set_src_port`, `do_resolve` through a
//! `[[resolvers]]` section, servers written `0.0.0.0:0` (the destination
//! the rules left), `dst_is_local`. The unmodified socks5-connect-inline-auth
//! fixture's forward proxies (SOCKS5 and HTTP CONNECT, in Lua) run with its
//! own rules under HAProxy 2.6 and portcullis, each resolving names through
//! the same test DNS server; HTTP rules are compared the same way.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use http::Request;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn fixture(file: &str) -> String {
    let p: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "..",
        "shared",
        "fixtures",
        "haproxy-lua",
        "socks5-connect-inline-auth",
        file,
    ]
    .iter()
    .collect();
    assert!(
        p.is_file(),
        "fixture {} is missing (see /work/shared/fixtures/haproxy-lua/README.md)",
        p.display()
    );
    p.display().to_string()
}

/// The fixture's `listen socks` / `listen http-connect` rules, for both
/// proxies: the Lua action, `do-resolve` when the script saw a name,
/// `set-dst`/`set-dst-port` from its variables, optionally the
/// `dst_is_local` reject, and a `0.0.0.0:0` server.
struct Forward {
    action: &'static str,
    reject_local: bool,
}

impl Forward {
    fn portcullis(&self, web: SocketAddr, admin: SocketAddr, dns: SocketAddr) -> String {
        let reject = if self.reject_local {
            "[[frontend.tcp_request]]\nreject = true\nif = \"dst_is_local\"\n"
        } else {
            ""
        };
        let pre = if self.action == "http-connect" {
            "[[frontend.tcp_request]]\nreject = true\nif = \"!METH_CONNECT\"\n"
        } else {
            ""
        };
        format!(
            "{}[[resolvers]]\nname = \"dns\"\nnameservers = [\"{dns}\"]\n\n\
             [[plugin]]\nname = \"fwd\"\nlua = \"{script}\"\n\n\
             [[frontend]]\nname = \"fwd\"\nbind = \"{web}\"\nmode = \"tcp\"\ndefault_backend = \"any\"\ninspect_delay = \"2s\"\n\
             {pre}\
             [[frontend.tcp_request]]\nlua = \"{action}\"\n\
             [[frontend.tcp_request]]\ndo_resolve = \"req.dst\"\nresolvers = \"dns\"\nexpr = \"var(req.dst)\"\nif = \"var(req.resolvedns) -m found\"\n\
             [[frontend.tcp_request]]\nset_dst = \"var(req.dst)\"\n\
             [[frontend.tcp_request]]\nset_dst_port = \"var(req.port)\"\n\
             {reject}\n\
             [[backend]]\nname = \"any\"\nserver = [{{ name = \"s\", addr = \"0.0.0.0:0\" }}]\n",
            global_section(admin, &[("log_level", "\"debug\"")]),
            script = fixture(&format!("{}.lua", self.action)),
            action = self.action,
        )
    }

    fn haproxy(&self, web: SocketAddr, dns: SocketAddr) -> String {
        let reject = if self.reject_local {
            "  tcp-request content reject if { dst_is_local }\n"
        } else {
            ""
        };
        let pre = if self.action == "http-connect" {
            "  tcp-request content reject if !METH_CONNECT\n"
        } else {
            ""
        };
        format!(
            "global\n  lua-load-per-thread {script}\n\n\
             resolvers dns\n  nameserver ns1 {dns}\n\n\
             defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n\n\
             listen fwd\n  bind {web}\n  log stdout format raw daemon debug\n  tcp-request inspect-delay 2s\n\
             {pre}\
             \x20 tcp-request content lua.{action}\n\
             \x20 tcp-request content do-resolve(req.dst,dns) var(req.dst) if {{ var(req.resolvedns) -m found }}\n\
             \x20 tcp-request content set-dst var(req.dst)\n\
             \x20 tcp-request content set-dst-port var(req.port)\n\
             {reject}\
             \x20 server s 0.0.0.0:0\n",
            script = fixture(&format!("{}.lua", self.action)),
            action = self.action,
        )
    }
}

/// A SOCKS5 exchange (no authentication) asking for `target` (the address
/// part of a CONNECT request: type byte, address, port), then "hello":
/// everything the proxy sent back until it closed or 10 s passed.
async fn socks5(addr: SocketAddr, target: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(&[5, 1, 0]).await.expect("write");
    let mut seen = read_n(&mut c, 2).await;
    let mut req = vec![5, 1, 0];
    req.extend_from_slice(target);
    req.extend_from_slice(b"hello");
    c.write_all(&req).await.expect("write");
    seen.extend(read_n(&mut c, 10 + 7).await);
    let _ = c.shutdown().await;
    seen.extend(read_n(&mut c, 1).await);
    seen
}

fn domain(name: &str, port: u16) -> Vec<u8> {
    let mut t = vec![3, name.len() as u8];
    t.extend_from_slice(name.as_bytes());
    t.extend_from_slice(&port.to_be_bytes());
    t
}

/// Both proxies, the same fixture and rules, the same DNS server.
async fn both(fwd: Forward) -> (Daemon, HaProxy, SocketAddr, SocketAddr, Dns, TempDir) {
    haproxy_26();
    let dns = dns_server(&[
        ("echo.test", LOCALHOST),
        ("v6only.test", "::1".parse().expect("ip")),
    ])
    .await;
    let [web, admin, hweb] = free_addrs();
    let d = Daemon::start(&fwd.portcullis(web, admin, dns.addr), &[web]).await;
    let dir = TempDir::new("dest");
    let h = HaProxy::start(&fwd.haproxy(hweb, dns.addr), dir.path(), hweb).await;
    (d, h, web, hweb, dns, dir)
}

#[tokio::test]
async fn socks5_forward_proxy_resolves_and_connects_as_haproxy() {
    let fwd = Forward {
        action: "socks5",
        reject_local: false,
    };
    let (_d, h, web, hweb, dns, _dir) = both(fwd).await;
    let e = tcp_echo("E:").await;
    let closed = free_addr();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // A name the DNS server knows: resolved, then connected to.
        ("name", domain("echo.test", e.port())),
        // An IPv4 address: no resolution.
        ("ipv4", {
            let mut t = vec![1, 127, 0, 0, 1];
            t.extend_from_slice(&e.port().to_be_bytes());
            t
        }),
        // NXDOMAIN: the variable keeps the name, set-dst cannot use it, so the
        // destination stays the bind address with the asked port (nothing there).
        ("nxdomain", domain("nope.test", closed.port())),
    ];
    let before = dns.questions.load(Ordering::Relaxed);
    for (what, target) in &cases {
        let theirs = socks5(hweb, target).await;
        let ours = socks5(web, target).await;
        assert_eq!(
            ours,
            theirs,
            "{what}: portcullis answers as HAProxy 2.6 (log: {})",
            h.log()
        );
        if *what != "nxdomain" {
            assert!(
                theirs.ends_with(b"E:hello"),
                "{what}: the tunnel reached the echo server: {theirs:?}"
            );
        }
    }
    assert!(
        dns.questions.load(Ordering::Relaxed) > before,
        "both proxies asked the DNS server"
    );
}

#[tokio::test]
async fn dst_is_local_rejects_as_haproxy() {
    let fwd = Forward {
        action: "socks5",
        reject_local: true,
    };
    let (_d, h, web, hweb, _dns, _dir) = both(fwd).await;
    let e = tcp_echo("E:").await;
    let target = domain("echo.test", e.port());
    let theirs = socks5(hweb, &target).await;
    let ours = socks5(web, &target).await;
    assert!(
        !theirs.ends_with(b"E:hello"),
        "HAProxy refused a local destination: {theirs:?}"
    );
    assert_eq!(
        ours,
        theirs,
        "portcullis refuses as HAProxy 2.6 (log: {})",
        h.log()
    );
}

/// The fixture's HTTP CONNECT forward proxy: the script answers 200, the
/// rules send the connection where the request line says.
#[tokio::test]
async fn http_connect_forward_proxy_matches_haproxy() {
    let fwd = Forward {
        action: "http-connect",
        reject_local: false,
    };
    let (_d, h, web, hweb, _dns, _dir) = both(fwd).await;
    let e = tcp_echo("E:").await;
    async fn run(addr: SocketAddr, line: &str) -> Vec<u8> {
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(format!("CONNECT {line} HTTP/1.1\r\nHost: {line}\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut seen = read_n(&mut c, 19).await;
        c.write_all(b"hello").await.expect("write");
        seen.extend(read_n(&mut c, 7).await);
        seen
    }
    for line in [
        format!("echo.test:{}", e.port()),
        format!("127.0.0.1:{}", e.port()),
    ] {
        let theirs = run(hweb, &line).await;
        let ours = run(web, &line).await;
        assert_eq!(
            String::from_utf8_lossy(&theirs),
            "HTTP/1.1 200 OK\r\n\r\nE:hello",
            "HAProxy tunnels {line} (log: {})",
            h.log()
        );
        assert_eq!(ours, theirs, "{line}: portcullis answers as HAProxy 2.6");
    }
}

/// HTTP rules: the name resolved into a variable (ipv4 first), the
/// destination and source rewritten, what the server and fetches see.
#[tokio::test]
async fn http_rules_set_dst_src_and_resolve_as_haproxy() {
    haproxy_26();
    let dns = dns_server(&[
        ("app.test", LOCALHOST),
        ("app.test", "::1".parse().expect("ip")),
    ])
    .await;
    let app = Backend::start("app").await;
    let [web, admin, hweb] = free_addrs();
    let cfg = format!(
        "{}[[resolvers]]\nname = \"dns\"\nnameservers = [\"{ns}\"]\nhold_valid = \"1s\"\n\n\
         [[frontend]]\nname = \"web\"\nbind = \"{web}\"\ndefault_backend = \"any\"\n\
         http_request = [\n\
           {{ do_resolve = \"txn.ip\", resolvers = \"dns\", family = \"ipv4\", expr = \"req.hdr(x-name)\" }},\n\
           {{ set_dst = \"var(txn.ip)\" }},\n\
           {{ set_dst_port = \"req.hdr(x-port)\" }},\n\
           {{ set_src = \"req.hdr(x-src)\" }},\n\
           {{ set_src_port = \"int(4242)\" }},\n\
           {{ set_header = \"x-resolved\", value = \"%[var(txn.ip)]\" }},\n\
           {{ set_header = \"x-dst\", value = \"%[dst]:%[dst_port]\" }},\n\
           {{ set_header = \"x-src\", value = \"%[src]:%[src_port]\" }},\n\
           {{ set_header = \"x-local\", value = \"%[dst_is_local]\" }},\n\
         ]\n\n\
         [[backend]]\nname = \"any\"\nserver = [{{ name = \"s\", addr = \"0.0.0.0:0\" }}]\n",
        global_section(admin, &[]),
        ns = dns.addr,
    );
    let _d = Daemon::start(&cfg, &[web]).await;
    let hcfg = format!(
        "resolvers dns\n  nameserver ns1 {ns}\n  hold valid 1s\n\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n  option forwardfor\n\n\
         frontend web\n  bind {hweb}\n\
         \x20 http-request do-resolve(txn.ip,dns,ipv4) req.hdr(x-name)\n\
         \x20 http-request set-dst var(txn.ip)\n\
         \x20 http-request set-dst-port req.hdr(x-port)\n\
         \x20 http-request set-src req.hdr(x-src)\n\
         \x20 http-request set-src-port int(4242)\n\
         \x20 http-request set-header x-resolved %[var(txn.ip)]\n\
         \x20 http-request set-header x-dst %[dst]:%[dst_port]\n\
         \x20 http-request set-header x-src %[src]:%[src_port]\n\
         \x20 http-request set-header x-local %[dst_is_local]\n\
         \x20 http-request set-header X-Forwarded-Proto http\n\
         \x20 default_backend any\n\n\
         backend any\n  server s 0.0.0.0:0\n",
        ns = dns.addr,
    );
    let dir = TempDir::new("dest-http");
    let h = HaProxy::start(&hcfg, dir.path(), hweb).await;
    let port = app.addr.port().to_string();
    let cases: [(&str, &[(&str, &str)]); 3] = [
        (
            "resolved",
            &[
                ("x-name", "app.test"),
                ("x-port", &port),
                ("x-src", "10.9.8.7"),
            ],
        ),
        (
            "ip source v6",
            &[
                ("x-name", "app.test"),
                ("x-port", &port),
                ("x-src", "2001:db8::5"),
            ],
        ),
        // Unknown name: no variable, the destination keeps its IP (the bind's).
        (
            "nxdomain",
            &[
                ("x-name", "nope.test"),
                ("x-port", &port),
                ("x-src", "not an ip"),
            ],
        ),
    ];
    for (what, headers) in cases {
        let mut seen = Vec::new();
        for addr in [hweb, web] {
            let mut req = Request::get(format!("http://{addr}/p"));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let resp = H1::connect(addr)
                .await
                .send(req.body(empty()).expect("request"))
                .await;
            assert_eq!(
                resp.status,
                200,
                "{what} via {addr}: {} (HAProxy log: {})",
                resp.text(),
                h.log()
            );
            let echo = resp.echo();
            let mut got: Vec<String> = echo
                .x_headers()
                .into_iter()
                .filter(|h| !h.starts_with("x-name") && !h.starts_with("x-port"))
                .collect();
            got.push(format!(
                "x-forwarded-for: {}",
                echo.header("x-forwarded-for").unwrap_or_default()
            ));
            seen.push(got);
        }
        assert_eq!(
            seen[1], seen[0],
            "{what}: portcullis (right) as HAProxy 2.6 (left)"
        );
    }
    assert!(
        tokio::time::timeout(LIMIT, async {}).await.is_ok(),
        "bounded"
    );
}

#[tokio::test]
async fn config_errors_say_what_is_wrong() {
    let [web, admin] = free_addrs();
    // (what, sections before the frontend, the frontend's rules, the error wanted)
    let cases: [(&str, &str, &str, &str); 9] = [
        (
            "unknown resolvers",
            "",
            "http_request = [{ do_resolve = \"txn.ip\", resolvers = \"nope\", expr = \"req.hdr(host)\" }]",
            "unknown resolvers section \"nope\"; declared: default",
        ),
        (
            "bad family",
            "",
            "http_request = [{ do_resolve = \"txn.ip\", family = \"ipv5\", expr = \"req.hdr(host)\" }]",
            "unknown family \"ipv5\" for do_resolve",
        ),
        (
            "no expr",
            "",
            "http_request = [{ do_resolve = \"txn.ip\" }]",
            "do_resolve needs `expr",
        ),
        (
            "response list",
            "",
            "http_response = [{ set_dst = \"str(1.2.3.4)\" }]",
            "set_dst",
        ),
        (
            "bad expression",
            "",
            "http_request = [{ set_dst_port = \"nosuchfetch\" }]",
            "nosuchfetch",
        ),
        (
            "no name server",
            "[[resolvers]]\nname = \"dns\"\n",
            "",
            "resolvers section \"dns\" has no name server",
        ),
        (
            "name server without port",
            "[[resolvers]]\nname = \"dns\"\nnameservers = [\"127.0.0.1\"]\n",
            "",
            "invalid name server \"127.0.0.1\": expected IP:PORT",
        ),
        (
            "checked transparent server",
            "[[backend]]\nname = \"t\"\nhealth_check = { path = \"/\" }\nserver = [{ name = \"any\", addr = \"0.0.0.0:0\" }]\n",
            "",
            "server \"any\" takes its address from each connection's destination, so it cannot be health-checked",
        ),
        (
            "bad offset",
            "[[backend]]\nname = \"t\"\nserver = [{ name = \"any\", addr = \"0.0.0.0:+x\" }]\n",
            "",
            "the port offset is not a number",
        ),
    ];
    for (what, before, rules, want) in cases {
        let cfg = format!(
            "{}{before}\n[[frontend]]\nname = \"web\"\nbind = \"{web}\"\ndefault_backend = \"b\"\n{rules}\n\n\
             [[backend]]\nname = \"b\"\nserver = [{{ name = \"s\", addr = \"127.0.0.1:9\" }}]\n",
            global_section(admin, &[])
        );
        let out = check_config(&cfg);
        assert!(!out.success, "{what}: refused");
        assert!(
            out.stderr.contains(want),
            "{what}: wanted {want:?} in:\n{}",
            out.stderr
        );
    }
}

/// Port offsets: `127.0.0.1:+N` goes to the destination port plus N, from
/// a TCP frontend whose clients reach it on its bind port.
#[tokio::test]
async fn server_port_offset_follows_the_destination_port() {
    let e = tcp_echo("E:").await;
    let [web, admin] = free_addrs();
    let offset = i32::from(e.port()) - i32::from(web.port());
    let cfg = format!(
        "{}[[frontend]]\nname = \"fe\"\nbind = \"{web}\"\nmode = \"tcp\"\ndefault_backend = \"b\"\n\n\
         [[backend]]\nname = \"b\"\nserver = [{{ name = \"s\", addr = \"127.0.0.1:{offset:+}\" }}]\n",
        global_section(admin, &[])
    );
    let _d = Daemon::start(&cfg, &[web]).await;
    let mut c = TcpStream::connect(web).await.expect("connect");
    c.write_all(b"hi").await.expect("write");
    assert_eq!(read_n(&mut c, 4).await, b"E:hi");
}

struct Checked {
    success: bool,
    stderr: String,
}

/// `portcullis check` on `cfg`.
fn check_config(cfg: &str) -> Checked {
    let dir = TempDir::new("dest-check");
    let path = dir.write("c.toml", cfg);
    let out = run_bin(&["check", "-c", path.to_str().expect("utf-8 path")], LIMIT);
    Checked {
        success: out.status.expect("check exited").success(),
        stderr: format!("{}{}", out.stdout, out.stderr),
    }
}
