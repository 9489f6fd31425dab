//! Helpers for the peers (stick-table replication) tests: portcullis node
//! configs, HAProxy's stats socket, a relay that cuts a peer link on demand.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;

use super::{IO_TIMEOUT, get, global_section, within};

/// One peer of a mesh: its name and the address its peers listener binds.
#[derive(Debug, Clone)]
pub struct MeshPeer {
    pub name: String,
    pub addr: SocketAddr,
}

/// A portcullis node's config: one frontend on `web` tracking `src` in the
/// replicated `per_ip` table (`http_req_rate(60s)`: one rate window for a whole test, `gpc0`), `/inc`
/// incrementing gpc0, 429 above `limit` requests per minute, 200 otherwise;
/// a `[[peers]]` section `mesh` where `local` is this node and `peers`
/// every peer (this one included, as in HAProxy). `table_extra`: more table keys.
pub fn peer_node_config(
    web: SocketAddr,
    admin: SocketAddr,
    local: &str,
    peers: &[MeshPeer],
    limit: u32,
    table_extra: &str,
) -> String {
    let list: Vec<String> = peers
        .iter()
        .map(|p| format!("  {{ name = \"{}\", addr = \"{}\" }},", p.name, p.addr))
        .collect();
    format!(
        "{global}\
[[peers]]
name = \"mesh\"
local = \"{local}\"
allow = [\"127.0.0.0/8\"]
peer = [
{list}
]

[[stick_table]]
name = \"per_ip\"
type = \"ip\"
size = 1000
expire = \"60s\"
store = [\"http_req_rate(60s)\", \"gpc0\"]
peers = \"mesh\"
{table_extra}

[[frontend]]
name = \"web\"
bind = \"{web}\"
default_backend = \"none\"
http_request = [
  {{ track_sc0 = \"src\", table = \"per_ip\" }},
  {{ sc_inc_gpc = [0, 0], if = \"path /inc\" }},
  {{ deny = 429, if = \"sc0_http_req_rate gt {limit}\" }},
  {{ return = 200, content_type = \"text/plain\", body = \"ok\" }},
]

[[backend]]
name = \"none\"
server = [{{ name = \"s\", addr = \"127.0.0.1:9\" }}]
",
        global = global_section(admin, &[]),
        list = list.join("\n"),
    )
}

/// HAProxy 2.6's side of the same mesh: `localpeer`, a stats socket at
/// `sock`, the `per_ip` table in a backend (`stick-table ... peers mesh`,
/// so it is called `per_ip` on the wire) and the same rules on `web`.
pub fn peer_haproxy_config(
    web: SocketAddr,
    sock: &Path,
    local: &str,
    peers: &[MeshPeer],
    limit: u32,
) -> String {
    let list: String = peers
        .iter()
        .map(|p| format!("  peer {} {}\n", p.name, p.addr))
        .collect();
    format!(
        "global
  localpeer {local}
  stats socket {sock} level admin
defaults
  mode http
  timeout connect 1s
  timeout client 5s
  timeout server 5s
peers mesh
{list}backend per_ip
  stick-table type ip size 1k expire 60s store http_req_rate(60s),gpc0 peers mesh
frontend web
  bind {web}
  http-request track-sc0 src table per_ip
  http-request sc-inc-gpc0(0) if {{ path /inc }}
  http-request deny deny_status 429 if {{ sc0_http_req_rate gt {limit} }}
  http-request return status 200 content-type text/plain string ok
",
        sock = sock.display()
    )
}

/// Sends one command to HAProxy's stats socket; its answer.
pub async fn haproxy_cli(sock: &Path, cmd: &str) -> String {
    try_haproxy_cli(sock, cmd)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", sock.display()))
}

/// [`haproxy_cli`], or why the socket did not answer (a restarted HAProxy
/// has not opened it yet).
pub async fn try_haproxy_cli(sock: &Path, cmd: &str) -> std::io::Result<String> {
    within("haproxy stats socket", IO_TIMEOUT, async {
        let mut s = UnixStream::connect(sock).await?;
        s.write_all(format!("{cmd}\n").as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    })
    .await
}

/// A data value of `key`'s line in HAProxy's `show table <table>`
/// (`gpc0`, `http_req_rate(10000)`); `None` if the key or data is absent.
pub async fn haproxy_value(sock: &Path, table: &str, key: &str, data: &str) -> Option<u64> {
    // Not answering yet (restarting): no value, so `eventually` asks again.
    let out = try_haproxy_cli(sock, &format!("show table {table}"))
        .await
        .ok()?;
    let line = out.lines().find(|l| l.contains(&format!(" key={key} ")))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{data}=")))
        .and_then(|v| v.parse().ok())
}

/// A data value of `key` in a portcullis node's table (`/tables/<t>/<key>`).
pub async fn node_value(admin: SocketAddr, table: &str, key: &str, data: &str) -> Option<u64> {
    let r = get(admin, &format!("/tables/{table}/{key}")).await;
    if r.status != 200 {
        return None;
    }
    r.json()["data"][data].as_u64()
}

/// The `/peers` entry of peer `name` in section `section` of a node.
pub async fn node_peer(admin: SocketAddr, section: &str, name: &str) -> Value {
    let doc = get(admin, "/peers").await.json();
    let s = doc["peers"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == section))
        .cloned()
        .unwrap_or(Value::Null);
    s["peers"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == name))
        .cloned()
        .unwrap_or(Value::Null)
}

/// A TCP relay `listen` → `target` whose connections can all be cut at
/// once ([`Relay::cut`]), to make a peer link flap.
pub struct Relay {
    pub addr: SocketAddr,
    cut: watch::Sender<u64>,
    /// Connections relayed so far.
    pub accepted: Arc<AtomicU64>,
    hold: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    /// Relays `addr` (already free) to `target`.
    pub async fn start(addr: SocketAddr, target: SocketAddr) -> Relay {
        let l = TcpListener::bind(addr).await.expect("relay bind");
        let (cut, rx) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let acc = Arc::clone(&accepted);
        let hold = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = Arc::clone(&hold);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut a, _)) = l.accept().await else {
                    continue;
                };
                if held.load(Ordering::Relaxed) {
                    // The link is down: the connection closes at once.
                    continue;
                }
                acc.fetch_add(1, Ordering::Relaxed);
                let mut rx = rx.clone();
                rx.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(Ok(mut b)) =
                        tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(target))
                            .await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        _ = rx.changed() => {}
                    }
                });
            }
        });
        Relay {
            addr,
            cut,
            accepted,
            hold,
            task,
        }
    }

    /// Takes the link down (`true`: every connection, new ones included, is
    /// closed) or back up.
    pub fn down(&self, down: bool) {
        self.hold.store(down, Ordering::Relaxed);
        if down {
            self.cut();
        }
    }

    /// Closes every connection relayed so far.
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

/// CPU time (user + system) a process has used, in clock ticks (from `/proc/<pid>/stat`).
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f[11].parse().expect("utime");
    let stime: u64 = f[12].parse().expect("stime");
    utime + stime
}
