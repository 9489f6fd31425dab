//! Stick-table replication with HAProxy's peers protocol: two portcullis
//! nodes and one real HAProxy 2.6 on loopback share the `per_ip` table
//! (`http_req_rate(10s)`, `gpc0`) in both directions, a rate limit trips on
//! the combined count, restarts are healed by resync, a hostile peer only
//! loses its own connection, and a flapping link under load neither loses
//! acknowledged updates nor leaves a busy loop behind.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Time a change may take to reach every node (pushes are immediate; the slack is for CI).
const SPREAD: Duration = Duration::from_secs(5);

struct Mesh {
    webs: [SocketAddr; 3],
    admins: [SocketAddr; 2],
    peers: Vec<MeshPeer>,
    dir: TempDir,
    sock: PathBuf,
}

impl Mesh {
    fn new() -> Mesh {
        let [w1, w2, w3, a1, a2, p1, p2, p3] = free_addrs();
        let dir = TempDir::new("peers");
        let sock = dir.path().join("haproxy.sock");
        Mesh {
            webs: [w1, w2, w3],
            admins: [a1, a2],
            peers: vec![
                MeshPeer {
                    name: "node1".into(),
                    addr: p1,
                },
                MeshPeer {
                    name: "node2".into(),
                    addr: p2,
                },
                MeshPeer {
                    name: "hap".into(),
                    addr: p3,
                },
            ],
            dir,
            sock,
        }
    }

    fn node_config(&self, i: usize, limit: u32) -> String {
        peer_node_config(
            self.webs[i],
            self.admins[i],
            &self.peers[i].name,
            &self.peers,
            limit,
            "",
        )
    }

    async fn node(&self, i: usize, limit: u32) -> Daemon {
        Daemon::start(
            &self.node_config(i, limit),
            &[self.webs[i], self.admins[i], self.peers[i].addr],
        )
        .await
    }

    async fn haproxy(&self, limit: u32) -> HaProxy {
        let cfg = peer_haproxy_config(self.webs[2], &self.sock, "hap", &self.peers, limit);
        HaProxy::start_with(
            &cfg,
            self.dir.path(),
            &[],
            &[self.webs[2], self.peers[2].addr],
        )
        .await
    }

    /// Waits until node `i` has an established session with every other peer.
    async fn connected(&self, i: usize) {
        self.connected_to(i, &["node1", "node2", "hap"]).await;
    }

    /// Waits until node `i` has an established session with each of `names` (itself skipped).
    async fn connected_to(&self, i: usize, names: &[&str]) {
        for p in self
            .peers
            .iter()
            .filter(|p| p.name != self.peers[i].name && names.contains(&p.name.as_str()))
        {
            let admin = self.admins[i];
            let name = p.name.clone();
            eventually(
                &format!("node{} connected to {name}", i + 1),
                Duration::from_secs(15),
                || {
                    let name = name.clone();
                    async move { node_peer(admin, "mesh", &name).await["state"] == "established" }
                },
            )
            .await;
        }
    }
}

async fn status(addr: SocketAddr, path: &str) -> u16 {
    get(addr, path).await.status.as_u16()
}

async fn node_eq(admin: SocketAddr, data: &'static str, want: u64, what: &str) {
    eventually(what, SPREAD, || async move {
        node_value(admin, "per_ip", "127.0.0.1", data).await == Some(want)
    })
    .await;
}

async fn hap_eq(sock: &std::path::Path, data: &'static str, want: u64, what: &str) {
    let sock = sock.to_path_buf();
    eventually(what, SPREAD, || {
        let sock = sock.clone();
        async move { haproxy_value(&sock, "per_ip", "127.0.0.1", data).await == Some(want) }
    })
    .await;
}

/// Requests to each of the three nodes show up in the two others' tables:
/// counters and rates pushed as values, in both directions with HAProxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_reach_every_node_both_ways() {
    haproxy_26();
    let m = Mesh::new();
    let _n1 = m.node(0, 1000).await;
    let _n2 = m.node(1, 1000).await;
    let _hap = m.haproxy(1000).await;
    m.connected(0).await;
    m.connected(1).await;

    // Three requests on node1, one of them counting gpc0.
    for p in ["/", "/", "/inc"] {
        assert_eq!(status(m.webs[0], p).await, 200);
    }
    node_eq(m.admins[1], "http_req_rate", 3, "node1's rate on node2").await;
    node_eq(m.admins[1], "gpc0", 1, "node1's gpc0 on node2").await;
    hap_eq(
        &m.sock,
        "http_req_rate(60000)",
        3,
        "node1's rate in HAProxy",
    )
    .await;
    hap_eq(&m.sock, "gpc0", 1, "node1's gpc0 in HAProxy").await;

    // Two on HAProxy: pushed back to both portcullis nodes.
    assert_eq!(status(m.webs[2], "/inc").await, 200);
    assert_eq!(status(m.webs[2], "/").await, 200);
    node_eq(m.admins[0], "http_req_rate", 5, "HAProxy's rate on node1").await;
    node_eq(m.admins[1], "http_req_rate", 5, "HAProxy's rate on node2").await;
    node_eq(m.admins[0], "gpc0", 2, "HAProxy's gpc0 on node1").await;

    // One on node2.
    assert_eq!(status(m.webs[1], "/inc").await, 200);
    node_eq(m.admins[0], "gpc0", 3, "node2's gpc0 on node1").await;
    hap_eq(&m.sock, "gpc0", 3, "node2's gpc0 in HAProxy").await;
    hap_eq(
        &m.sock,
        "http_req_rate(60000)",
        6,
        "node2's rate in HAProxy",
    )
    .await;

    let p = node_peer(m.admins[0], "mesh", "hap").await;
    assert!(p["updates_sent"].as_u64() >= Some(1), "{p}");
    assert!(p["updates_received"].as_u64() >= Some(1), "{p}");
    assert_eq!(p["status"], "ESTA", "{p}");
    // /stats and /metrics carry the same counters.
    let stats = get(m.admins[0], "/stats").await.json();
    assert_eq!(stats["peers"][0]["name"], "mesh", "{stats}");
    let metrics = get(m.admins[0], "/metrics").await.text();
    assert!(
        metrics.contains("portcullis_peer_up{section=\"mesh\",peer=\"hap\"} 1"),
        "{metrics}"
    );
}

/// A client whose requests alternate between two portcullis nodes is limited
/// at the combined rate: neither node alone sees more than the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_trips_on_the_combined_count() {
    haproxy_26();
    let m = Mesh::new();
    let limit = 10;
    let _n1 = m.node(0, limit).await;
    let _n2 = m.node(1, limit).await;
    m.connected_to(0, &["node2"]).await;
    m.connected_to(1, &["node1"]).await;
    let mut first_429 = None;
    for i in 0..16u32 {
        let web = m.webs[(i % 2) as usize];
        let s = status(web, "/").await;
        if s == 429 && first_429.is_none() {
            first_429 = Some(i + 1);
        }
        // Within one push interval: let the update cross before the next request.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // Each node served 8 requests itself: only the combined count (16) is over 10.
    let n = first_429.expect("no request was limited: the nodes did not combine their counts");
    assert!(
        (limit + 1..=limit + 2).contains(&n),
        "first 429 at request {n}"
    );
}

/// A restarted node gets the table back from its peers (it asks for a
/// resync), and so does a restarted HAProxy from the portcullis nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_are_healed_by_resync() {
    haproxy_26();
    let m = Mesh::new();
    let n1 = m.node(0, 1000).await;
    let n2 = m.node(1, 1000).await;
    let hap = m.haproxy(1000).await;
    m.connected(0).await;
    m.connected(1).await;
    for _ in 0..4 {
        assert_eq!(status(m.webs[0], "/inc").await, 200);
    }
    node_eq(m.admins[1], "gpc0", 4, "gpc0 on node2").await;
    hap_eq(&m.sock, "gpc0", 4, "gpc0 in HAProxy").await;

    // node2 restarts empty and learns the table.
    drop(n2);
    let _n2 = m.node(1, 1000).await;
    node_eq(m.admins[1], "gpc0", 4, "gpc0 on the restarted node2").await;
    eventually(
        "node2 finished its resync",
        Duration::from_secs(12),
        || async {
            let doc = get(m.admins[1], "/peers").await.json();
            doc["peers"][0]["resync"] == "finished"
        },
    )
    .await;

    // HAProxy restarts empty and learns it from the portcullis nodes.
    drop(hap);
    let _hap = m.haproxy(1000).await;
    hap_eq(&m.sock, "gpc0", 4, "gpc0 in the restarted HAProxy").await;
    let taught: u64 = {
        let a = node_peer(m.admins[0], "mesh", "hap").await["resyncs_taught"]
            .as_u64()
            .unwrap_or(0);
        let b = node_peer(m.admins[1], "mesh", "hap").await["resyncs_taught"]
            .as_u64()
            .unwrap_or(0);
        a + b
    };
    assert!(taught >= 1, "HAProxy asked one of the nodes for a resync");
    drop(n1);
}

async fn hello(peer: SocketAddr, text: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(peer).await.expect("connect");
    s.write_all(text.as_bytes()).await.expect("hello");
    let mut buf = vec![0u8; 64];
    let n = within("status line", IO_TIMEOUT, s.read(&mut buf))
        .await
        .expect("read");
    (s, String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Bad handshakes get HAProxy's status codes; a malformed message is a
/// protocol error for its connection only; other sessions stay up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_lose_only_their_connection() {
    let m = Mesh::new();
    let [rogue] = free_addrs();
    let mut peers = m.peers.clone();
    peers.truncate(2);
    peers.push(MeshPeer {
        name: "rogue".into(),
        addr: rogue,
    });
    // Only 127.0.0.1 may connect to the peers listeners.
    let cfg = |i: usize| {
        peer_node_config(m.webs[i], m.admins[i], &peers[i].name, &peers, 1000, "")
            .replace("allow = [\"127.0.0.0/8\"]", "allow = [\"127.0.0.1\"]")
    };
    let _n1 = Daemon::start(&cfg(0), &[m.webs[0], m.admins[0], peers[0].addr]).await;
    let _n2 = Daemon::start(&cfg(1), &[m.webs[1], m.admins[1], peers[1].addr]).await;
    let p1 = peers[0].addr;
    eventually(
        "node1 and node2 connected",
        Duration::from_secs(15),
        || async { node_peer(m.admins[0], "mesh", "node2").await["state"] == "established" },
    )
    .await;
    // Both nodes connect at once at start: let the collision settle first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sessions = node_peer(m.admins[0], "mesh", "node2").await["sessions"].clone();

    assert_eq!(
        hello(p1, "HAProxyS 3.0\nnode1\nrogue 1 1\n").await.1,
        "502\n"
    );
    assert_eq!(
        hello(p1, "HAProxyS 2.1\nnot-me\nrogue 1 1\n").await.1,
        "503\n"
    );
    assert_eq!(
        hello(p1, "HAProxyS 2.1\nnode1\nstranger 1 1\n").await.1,
        "504\n"
    );
    assert_eq!(
        hello(p1, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.1,
        "501\n"
    );

    // A valid hello, then an update message whose length runs past the data
    // it carries, then one of the reserved class: HAProxy's protocol error (class 1, type 0).
    let (mut s, st) = hello(p1, "HAProxyS 2.1\nnode1\nrogue 1 1\n").await;
    // 200, possibly followed by our first messages (a resync request while node1 starts).
    assert!(st.starts_with("200\n"), "{st:?}");
    // A table definition with a name that ends the message: malformed.
    s.write_all(&[10, 0x82, 3, 1, 5, b'x'])
        .await
        .expect("write");
    let mut got = Vec::new();
    let _ = within(
        "node1 closes the rogue session",
        IO_TIMEOUT,
        s.read_to_end(&mut got),
    )
    .await;
    assert!(
        got.windows(2).any(|w| w == [1, 0]),
        "protocol error message expected, got {got:?}"
    );
    let rogue_stats = node_peer(m.admins[0], "mesh", "rogue").await;
    assert_eq!(rogue_stats["protocol_errors"], 1, "{rogue_stats}");

    // A message over the size limit: "size limit reached" (class 1, type 1).
    let (mut s, st) = hello(p1, "HAProxyS 2.1\nnode1\nrogue 1 1\n").await;
    // 200, possibly followed by our first messages (a resync request while node1 starts).
    assert!(st.starts_with("200\n"), "{st:?}");
    s.write_all(&[10, 0x80, 0xf0, 0xff, 0x7f])
        .await
        .expect("write");
    let mut got = Vec::new();
    let _ = within(
        "node1 closes the oversized session",
        IO_TIMEOUT,
        s.read_to_end(&mut got),
    )
    .await;
    assert!(
        got.windows(2).any(|w| w == [1, 1]),
        "size limit message expected, got {got:?}"
    );

    // Definitions of more tables than a session keeps (1024): a protocol error, not unbounded memory.
    let (mut s, st) = hello(p1, "HAProxyS 2.1\nnode1\nrogue 1 1\n").await;
    assert!(st.starts_with("200\n"), "{st:?}");
    let mut defs = Vec::new();
    for id in 1..=1025u64 {
        let mut body = Vec::new();
        portcullis::peers::proto::put_varint(&mut body, id);
        body.extend_from_slice(&[1, b'x', 4, 4, 0, 0]);
        portcullis::peers::proto::put_message(&mut defs, 0x82, &body);
    }
    let _ = s.write_all(&defs).await;
    let mut got = Vec::new();
    let _ = within(
        "node1 closes the flooding session",
        IO_TIMEOUT,
        s.read_to_end(&mut got),
    )
    .await;
    assert!(
        got.windows(2).any(|w| w == [1, 0]),
        "protocol error expected, got {got:?}"
    );

    // A source address outside the allow-list gets no status at all.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind 127.0.0.2");
    let mut s = sock.connect(p1).await.expect("connect");
    let _ = s.write_all(b"HAProxyS 2.1\nnode1\nrogue 1 1\n").await;
    let mut got = Vec::new();
    let _ = within("refused source closed", IO_TIMEOUT, s.read_to_end(&mut got)).await;
    assert!(got.is_empty(), "a refused source gets no answer: {got:?}");
    let doc = get(m.admins[0], "/peers").await.json();
    assert_eq!(doc["peers"][0]["refused_connections"], 1, "{doc}");

    // The real peers never noticed.
    let p = node_peer(m.admins[0], "mesh", "node2").await;
    assert_eq!(p["state"], "established", "{p}");
    assert_eq!(
        p["sessions"], sessions,
        "the node1-node2 session was not disturbed: {p}"
    );
    assert_eq!(status(m.webs[0], "/").await, 200);
}

/// Several clients hammer both nodes (distinct keys, short expiry) while the
/// link between them is cut every 150 ms. Afterwards: both nodes converge on
/// the last values, entries expire normally (nothing holds them), and the
/// daemons go idle (no task left spinning).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flapping_link_under_load_converges_without_spinning() {
    let [w1, w2, a1, a2, p1, p2, r12, r21] = free_addrs();
    // Each node reaches the other through a relay the test cuts.
    let peers1 = vec![
        MeshPeer {
            name: "node1".into(),
            addr: p1,
        },
        MeshPeer {
            name: "node2".into(),
            addr: r12,
        },
    ];
    let peers2 = vec![
        MeshPeer {
            name: "node1".into(),
            addr: r21,
        },
        MeshPeer {
            name: "node2".into(),
            addr: p2,
        },
    ];
    let extra = "";
    let cfg1 = peer_node_config(w1, a1, "node1", &peers1, 1_000_000, extra)
        .replace("expire = \"60s\"", "expire = \"2s\"");
    let cfg2 = peer_node_config(w2, a2, "node2", &peers2, 1_000_000, extra)
        .replace("expire = \"60s\"", "expire = \"2s\"");
    let relay12 = Relay::start(r12, p2).await;
    let relay21 = Relay::start(r21, p1).await;
    let n1 = Daemon::start(&cfg1, &[w1, a1, p1]).await;
    let n2 = Daemon::start(&cfg2, &[w2, a2, p2]).await;
    eventually("connected", Duration::from_secs(15), || async {
        node_peer(a1, "mesh", "node2").await["state"] == "established"
    })
    .await;

    // Load: 4 clients, each on its own source address (its own key), both nodes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for c in 0..4u8 {
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let ip: std::net::IpAddr = format!("127.0.1.{}", c + 1).parse().expect("ip");
            let mut h = [
                H1::connect_from(ip, w1).await,
                H1::connect_from(ip, w2).await,
            ];
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = h[(n % 2) as usize].get("/inc").await;
                assert_eq!(r.status, 200);
                n += 1;
            }
            n
        }));
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        relay12.cut();
        relay21.cut();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for l in load {
        total += l.await.expect("client");
    }
    assert!(total > 100, "load ran ({total} requests)");
    assert!(
        relay12.accepted.load(std::sync::atomic::Ordering::Relaxed)
            + relay21.accepted.load(std::sync::atomic::Ordering::Relaxed)
            >= 4,
        "the link flapped"
    );

    // Concurrent writes on both nodes are "last writer wins" (HAProxy's
    // semantics: crossing pushes may leave the two nodes one apart). Once the
    // link has settled, one more request per key on node1 must reach node2.
    eventually("link settled", Duration::from_secs(15), || async {
        node_peer(a1, "mesh", "node2").await["state"] == "established"
            && node_peer(a2, "mesh", "node1").await["state"] == "established"
    })
    .await;
    for c in 1..=4u8 {
        let ip: std::net::IpAddr = format!("127.0.1.{c}").parse().expect("ip");
        assert_eq!(H1::connect_from(ip, w1).await.get("/inc").await.status, 200);
    }
    for c in 1..=4 {
        let key = format!("127.0.1.{c}");
        eventually(&format!("{key} converged"), Duration::from_secs(10), || {
            let key = key.clone();
            async move {
                let a = node_value(a1, "per_ip", &key, "gpc0").await;
                let b = node_value(a2, "per_ip", &key, "gpc0").await;
                a.is_some() && a == b
            }
        })
        .await;
    }
    // Nothing holds the entries: they expire (2 s) on both nodes.
    for a in [a1, a2] {
        eventually("entries expired", Duration::from_secs(10), || async move {
            get(a, "/tables/per_ip").await.json()["used"] == 0
        })
        .await;
    }
    // Idle: heartbeats only. Two seconds of CPU use well under 5 % of a core.
    let (t1, t2) = (cpu_ticks(n1.pid()), cpu_ticks(n2.pid()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks = cpu_ticks(n1.pid()) - t1 + cpu_ticks(n2.pid()) - t2;
    assert!(
        ticks <= 20,
        "idle daemons used {ticks} CPU ticks in 2 s: a task is spinning"
    );
}

/// The link between two nodes goes down while node1 keeps counting; when it
/// comes back, node1 pushes what node2 had not acknowledged (a catch-up from
/// the last acknowledgement), so nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_back_after_an_outage_gets_what_it_had_not_acknowledged() {
    let [w1, w2, a1, a2, p1, p2, r12, r21] = free_addrs();
    let peers1 = vec![
        MeshPeer {
            name: "node1".into(),
            addr: p1,
        },
        MeshPeer {
            name: "node2".into(),
            addr: r12,
        },
    ];
    let peers2 = vec![
        MeshPeer {
            name: "node1".into(),
            addr: r21,
        },
        MeshPeer {
            name: "node2".into(),
            addr: p2,
        },
    ];
    let relay12 = Relay::start(r12, p2).await;
    let relay21 = Relay::start(r21, p1).await;
    let _n1 = Daemon::start(
        &peer_node_config(w1, a1, "node1", &peers1, 1000, ""),
        &[w1, a1, p1],
    )
    .await;
    let _n2 = Daemon::start(
        &peer_node_config(w2, a2, "node2", &peers2, 1000, ""),
        &[w2, a2, p2],
    )
    .await;
    eventually("connected", Duration::from_secs(15), || async {
        node_peer(a1, "mesh", "node2").await["state"] == "established"
    })
    .await;
    for _ in 0..2 {
        assert_eq!(status(w1, "/inc").await, 200);
    }
    node_eq(a2, "gpc0", 2, "gpc0 on node2 before the outage").await;
    eventually("node2 acknowledged", SPREAD, || async {
        let p = node_peer(a1, "mesh", "node2").await;
        p["acked"]["per_ip"].as_u64().is_some_and(|a| a >= 1)
    })
    .await;

    relay12.down(true);
    relay21.down(true);
    eventually("the link is down", Duration::from_secs(10), || async {
        node_peer(a1, "mesh", "node2").await["state"] != "established"
    })
    .await;
    for _ in 0..3 {
        assert_eq!(status(w1, "/inc").await, 200);
    }
    assert_eq!(node_value(a1, "per_ip", "127.0.0.1", "gpc0").await, Some(5));
    assert_eq!(
        node_value(a2, "per_ip", "127.0.0.1", "gpc0").await,
        Some(2),
        "node2 is cut off"
    );

    relay12.down(false);
    relay21.down(false);
    node_eq(a2, "gpc0", 5, "gpc0 on node2 after the outage").await;
    let p = node_peer(a1, "mesh", "node2").await;
    assert!(p["sessions"].as_u64() >= Some(2), "{p}");
    assert!(
        p["catch_ups"].as_u64() >= Some(1),
        "pushed by a catch-up: {p}"
    );
}

/// A reload keeps the table, its entries and its replication; changing the
/// `[[peers]]` section is reported as needing a restart, and changing a
/// table's `peers` starts that table empty (replicated as a new table).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_replication() {
    let m = Mesh::new();
    let n1 = m.node(0, 1000).await;
    let _n2 = m.node(1, 1000).await;
    m.connected_to(0, &["node2"]).await;
    assert_eq!(status(m.webs[0], "/inc").await, 200);
    node_eq(m.admins[1], "gpc0", 1, "gpc0 on node2").await;

    // Same config plus a peer: the section change needs a restart, the table is kept.
    let [extra] = free_addrs();
    let text = m.node_config(0, 1000).replace(
        "peer = [\n",
        &format!("peer = [\n  {{ name = \"node9\", addr = \"{extra}\" }},\n"),
    );
    std::fs::write(&n1.config_path, text).expect("write config");
    n1.signal(libc::SIGHUP);
    let line = n1
        .wait_stderr_line(Duration::from_secs(10), |l| {
            l.contains("[[peers]] sections changed")
        })
        .await;
    assert!(line.is_some(), "restart_required reported: {}", n1.stderr());
    n1.wait_stderr_line(Duration::from_secs(10), |l| {
        l.contains("reloaded: new requests")
    })
    .await
    .expect("reloaded");
    assert_eq!(
        node_value(m.admins[0], "per_ip", "127.0.0.1", "gpc0").await,
        Some(1),
        "kept"
    );
    assert_eq!(status(m.webs[0], "/inc").await, 200);
    node_eq(m.admins[1], "gpc0", 2, "pushed after the reload").await;
    let doc = get(m.admins[0], "/peers").await.json();
    assert_eq!(
        doc["peers"][0]["peers"].as_array().map(Vec::len),
        Some(2),
        "still the started peers: {doc}"
    );
}

fn check(dir: &TempDir, text: &str) -> (bool, String) {
    let p = dir.write("peers.toml", text);
    let out = run_bin(
        &["check", "-c", p.to_str().expect("utf-8")],
        Duration::from_secs(10),
    );
    (
        out.status.expect("check exited").success(),
        format!("{}{}", out.stdout, out.stderr),
    )
}

/// `configs/peers.toml` passes `portcullis check`; mistakes in `[[peers]]`
/// are refused with their place and what would be right.
#[test]
fn peers_config_is_checked() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/peers.toml");
    let shipped = std::fs::read_to_string(path).expect("read config");
    let text = shipped
        .replace("127.0.0.1:8080", &free_addr().to_string())
        .replace("127.0.0.1:9901", &free_addr().to_string());
    let dir = TempDir::new("peers-check");
    let (ok, out) = check(&dir, &text);
    assert!(ok, "check failed: {out}");

    let cases: [(&str, &str, &str); 9] = [
        (
            "peers = \"mesh\"                     #",
            "peers = \"mseh\"                     #",
            "unknown peers section \"mseh\"; declared: mesh",
        ),
        (
            "local = \"node1\"                    #",
            "local = \"node3\"                    #",
            "the local peer \"node3\" is not in the peer list",
        ),
        (
            "{ name = \"node2\", addr = \"127.0.0.1:10002\" }",
            "{ name = \"node1\", addr = \"127.0.0.1:10002\" }",
            "duplicate peer \"node1\"",
        ),
        (
            "{ name = \"node2\", addr = \"127.0.0.1:10002\" }",
            "{ name = \"node 2\", addr = \"127.0.0.1:10002\" }",
            "invalid peer name \"node 2\"",
        ),
        (
            "{ name = \"node2\", addr = \"127.0.0.1:10002\" }",
            "{ name = \"node2\", addr = \"127.0.0.1\" }",
            "invalid peer address \"127.0.0.1\"",
        ),
        (
            "allow = [\"127.0.0.1\"]",
            "allow = [\"127.0.0.1/40\"]",
            "invalid allow entry \"127.0.0.1/40\"",
        ),
        (
            "peers = \"mesh\"                     #",
            "peers_name = \"/per ip\"\npeers = \"mesh\"                     #",
            "invalid peers_name \"/per ip\": expected 1 to 255 characters without spaces, e.g. \"/per_ip\"",
        ),
        (
            "peers = \"mesh\"                     #",
            "peers_name = \"/per_ip\"\n#",
            "peers_name is the table's name in a [[peers]] section: set the table's peers too",
        ),
        (
            "peers = \"mesh\"                     #",
            "peers = \"mesh\"\n[[stick_table]]\nname = \"other\"\ntype = \"ip\"\nsize = 10\npeers = \"mesh\"\npeers_name = \"per_ip\"\n#",
            "stick_table \"other\" and stick_table \"per_ip\" are both called \"per_ip\" in peers section \"mesh\"; give one a different peers_name",
        ),
    ];
    for (from, to, want) in cases {
        assert!(text.contains(from), "{from}");
        let (ok, out) = check(&dir, &text.replacen(from, to, 1));
        assert!(!ok, "{to}: accepted");
        assert!(out.contains(want), "{to}: {out}");
        assert!(
            out.contains("peers.toml:"),
            "the error has a location: {out}"
        );
    }
}

/// HAProxy 2.6 calls a table declared inside its `peers mesh` section
/// `/per_ip` on the wire (`mesh/per_ip` in its rules): a portcullis table
/// with `peers_name = "/per_ip"` replicates with it both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_declared_in_an_haproxy_peers_section() {
    haproxy_26();
    let m = Mesh::new();
    let node = Daemon::start(
        &peer_node_config(
            m.webs[0],
            m.admins[0],
            "node1",
            &m.peers,
            1000,
            "peers_name = \"/per_ip\"",
        ),
        &[m.webs[0], m.admins[0], m.peers[0].addr],
    )
    .await;
    let list: String = m
        .peers
        .iter()
        .map(|p| format!("  peer {} {}\n", p.name, p.addr))
        .collect();
    let cfg = format!(
        "global
  localpeer hap
  stats socket {sock} level admin
defaults
  mode http
  timeout connect 1s
  timeout client 5s
  timeout server 5s
peers mesh
{list}  table per_ip type ip size 1k expire 60s store http_req_rate(60s),gpc0
frontend web
  bind {web}
  http-request track-sc0 src table mesh/per_ip
  http-request sc-inc-gpc0(0) if {{ path /inc }}
  http-request return status 200 content-type text/plain string ok
",
        sock = m.sock.display(),
        web = m.webs[2],
    );
    let _hap = HaProxy::start_with(&cfg, m.dir.path(), &[], &[m.webs[2], m.peers[2].addr]).await;
    m.connected_to(0, &["hap"]).await;
    let doc = get(m.admins[0], "/peers").await.json();
    assert_eq!(
        doc["peers"][0]["tables"][0]["wire_name"], "/per_ip",
        "{doc}"
    );

    // portcullis → HAProxy.
    for p in ["/inc", "/"] {
        assert_eq!(status(m.webs[0], p).await, 200);
    }
    let sock = m.sock.clone();
    eventually("node1's counts in HAProxy's mesh/per_ip", SPREAD, || {
        let sock = sock.clone();
        async move {
            haproxy_value(&sock, "mesh/per_ip", "127.0.0.1", "gpc0").await == Some(1)
                && haproxy_value(&sock, "mesh/per_ip", "127.0.0.1", "http_req_rate(60000)").await
                    == Some(2)
        }
    })
    .await;
    // HAProxy → portcullis.
    for p in ["/inc", "/inc", "/"] {
        assert_eq!(status(m.webs[2], p).await, 200);
    }
    node_eq(m.admins[0], "gpc0", 3, "HAProxy's gpc0 on node1").await;
    node_eq(m.admins[0], "http_req_rate", 5, "HAProxy's rate on node1").await;
    let p = node_peer(m.admins[0], "mesh", "hap").await;
    assert_eq!(p["protocol_errors"], 0, "{p}");
    drop(node);
}

/// Reads a hello (three lines) on `s`; its lines.
async fn read_hello(s: &mut TcpStream) -> Vec<String> {
    let mut buf = Vec::new();
    while buf.iter().filter(|&&b| b == b'\n').count() < 3 {
        let mut b = [0u8; 256];
        let n = within("a hello", IO_TIMEOUT, s.read(&mut b))
            .await
            .expect("read hello");
        assert!(n > 0, "closed during the hello: {buf:?}");
        buf.extend_from_slice(&b[..n]);
    }
    String::from_utf8_lossy(&buf)
        .lines()
        .map(str::to_string)
        .collect()
}

/// As HAProxy: a peer answering our 2.1 hello with 502 is retried with 2.1
/// (there is no fallback on 502); a peer whose own hello said 2.0 gets 2.0
/// in ours from then on, and its resync pushes carry no expiry (2.0 has no
/// timed updates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_0_peer_gets_a_downgraded_hello() {
    let [web, admin, p1, old] = free_addrs();
    let peers = vec![
        MeshPeer {
            name: "node1".into(),
            addr: p1,
        },
        MeshPeer {
            name: "old".into(),
            addr: old,
        },
    ];
    let fake = tokio::net::TcpListener::bind(old).await.expect("bind");
    let _n1 = Daemon::start(
        &peer_node_config(web, admin, "node1", &peers, 1000, ""),
        &[web, admin, p1],
    )
    .await;
    assert_eq!(status(web, "/inc").await, 200);

    // Our hello is 2.1; a 2.0-only peer answers 502, and the next attempt is 2.1 again.
    for attempt in 0..2 {
        let (mut s, _) = within("node1 connects", Duration::from_secs(10), fake.accept())
            .await
            .expect("accept");
        let h = read_hello(&mut s).await;
        assert_eq!(h[0], "HAProxyS 2.1", "attempt {attempt}: {h:?}");
        assert_eq!(h[1], "old");
        assert!(h[2].starts_with("node1 "), "{h:?}");
        s.write_all(b"502\n").await.expect("status");
        drop(s);
    }
    eventually("the 502 is shown", SPREAD, || async {
        node_peer(admin, "mesh", "old").await["last_status"] == 502
    })
    .await;

    // The peer connects to us saying 2.0: accepted.
    let (s, st) = hello(p1, "HAProxyS 2.0\nnode1\nold 1 1\n").await;
    assert!(st.starts_with("200\n"), "{st:?}");
    drop(s);

    // From then on our hello to it says 2.0 (attempts made before may still say 2.1).
    let mut s = within("a downgraded hello", Duration::from_secs(15), async {
        loop {
            let (mut s, _) = fake.accept().await.expect("accept");
            let h = read_hello(&mut s).await;
            if h[0] == "HAProxyS 2.0" {
                return s;
            }
            s.write_all(b"502\n").await.expect("status");
        }
    })
    .await;
    s.write_all(b"200\n").await.expect("status");
    // A resync request: the entry comes as a plain update (0x80/0x81), not a timed one.
    s.write_all(&[0, 0]).await.expect("resync request");
    let mut buf = Vec::new();
    let mut kinds = Vec::new();
    within("the resync", IO_TIMEOUT, async {
        loop {
            let mut b = [0u8; 4096];
            let n = s.read(&mut b).await.expect("read");
            assert!(n > 0, "closed: {kinds:?}");
            buf.extend_from_slice(&b[..n]);
            let mut used = 0;
            while let Ok(Some((f, n))) = portcullis::peers::proto::frame(&buf[used..]) {
                used += n;
                kinds.push((f.class, f.kind));
            }
            buf.drain(..used);
            if kinds.iter().any(|&(c, k)| c == 0 && (k == 1 || k == 2)) {
                return;
            }
        }
    })
    .await;
    assert!(
        kinds
            .iter()
            .any(|&(c, k)| c == 10 && (k == 0x80 || k == 0x81)),
        "an update: {kinds:?}"
    );
    assert!(
        !kinds
            .iter()
            .any(|&(c, k)| c == 10 && (k == 0x85 || k == 0x86)),
        "no timed update to a 2.0 peer: {kinds:?}"
    );
}

/// A binary upgrade keeps a replicated table's values with no remote peer
/// up: as HAProxy's old process, the old one connects to the new one as the
/// local peer and teaches it every entry before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upgrade_teaches_the_new_process() {
    let [web, admin, p1, p2] = free_addrs();
    let dir = TempDir::new("peers-upgrade");
    let sock = dir.path().join("upgrade.sock");
    let sock_s = sock.to_str().expect("utf-8 path");
    // node2 never comes up.
    let peers = vec![
        MeshPeer {
            name: "node1".into(),
            addr: p1,
        },
        MeshPeer {
            name: "node2".into(),
            addr: p2,
        },
    ];
    let cfg = peer_node_config(web, admin, "node1", &peers, 1000, "");
    let mut old = Daemon::spawn_args(&cfg, &["--upgrade-socket", sock_s]);
    for a in [web, admin, p1] {
        old.wait_accepting(a, Duration::from_secs(10)).await;
    }
    for p in ["/inc", "/inc", "/inc", "/", "/"] {
        assert_eq!(status(web, p).await, 200);
    }
    assert_eq!(
        node_value(admin, "per_ip", "127.0.0.1", "gpc0").await,
        Some(3)
    );

    let mut new = Daemon::spawn_args(
        &cfg,
        &["--upgrade-socket", sock_s, "--upgrade-from", sock_s],
    );
    let exited = old.wait_exit(Duration::from_secs(20)).await;
    assert!(
        exited.is_some_and(|s| s.success()),
        "old process: {exited:?}\n{}",
        old.stderr()
    );
    assert!(
        old.stderr().contains("tables taught to the new process"),
        "{}",
        old.stderr()
    );
    new.wait_accepting(admin, Duration::from_secs(5)).await;
    // The admin API is the new process's: the values came over.
    assert_eq!(
        node_value(admin, "per_ip", "127.0.0.1", "gpc0").await,
        Some(3),
        "{}",
        new.stderr()
    );
    assert_eq!(
        node_value(admin, "per_ip", "127.0.0.1", "http_req_rate").await,
        Some(5)
    );
    let doc = get(admin, "/peers").await.json();
    let local = &doc["peers"][0]["local_peer"];
    assert_eq!(local["resyncs_learned"], 1, "{doc}");
    assert!(local["updates_received"].as_u64() >= Some(1), "{doc}");
    // And it counts on from there.
    assert_eq!(status(web, "/inc").await, 200);
    assert_eq!(
        node_value(admin, "per_ip", "127.0.0.1", "gpc0").await,
        Some(4)
    );
    // The new process has the peers listener: node2's hello would reach it.
    let (_s, st) = hello(p1, "HAProxyS 2.1\nnode1\nnode2 1 1\n").await;
    assert!(st.starts_with("200\n"), "{st:?}");
}

/// HAProxy 2.6 stores `server_id` and `server_key` (the server's name, a
/// dictionary entry on the wire) in a `stick on` table and pushes both: a
/// portcullis table storing `server_id` takes the id and skips the key
/// (portcullis has no `stick on` persistence to use it), with no protocol error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stick_on_table_from_haproxy_with_server_key() {
    haproxy_26();
    let app = Backend::start("app").await;
    let [web, admin, hweb, p1, p3] = free_addrs();
    let dir = TempDir::new("peers-srvkey");
    let sock = dir.path().join("haproxy.sock");
    let cfg = format!(
        "{global}\
[[peers]]
name = \"mesh\"
local = \"node1\"
peer = [
  {{ name = \"node1\", addr = \"{p1}\" }},
  {{ name = \"hap\", addr = \"{p3}\" }},
]

[[stick_table]]
name = \"app\"
type = \"ip\"
size = 1000
expire = \"60s\"
store = [\"server_id\"]
peers = \"mesh\"

[[frontend]]
name = \"web\"
bind = \"{web}\"
default_backend = \"none\"
http_request = [{{ return = 200, content_type = \"text/plain\", body = \"ok\" }}]

[[backend]]
name = \"none\"
server = [{{ name = \"s\", addr = \"127.0.0.1:9\" }}]
",
        global = global_section(admin, &[]),
    );
    let _node = Daemon::start(&cfg, &[web, admin, p1]).await;
    let hcfg = format!(
        "global
  localpeer hap
  stats socket {sock} level admin
defaults
  mode http
  timeout connect 1s
  timeout client 5s
  timeout server 5s
peers mesh
  peer node1 {p1}
  peer hap {p3}
backend app
  stick-table type ip size 1k expire 60s peers mesh
  stick on src
  server s7 {app} id 7
frontend web
  bind {hweb}
  default_backend app
",
        sock = sock.display(),
        app = app.addr,
    );
    let _hap = HaProxy::start_with(&hcfg, dir.path(), &[], &[hweb, p3]).await;
    eventually(
        "node1 connected to hap",
        Duration::from_secs(15),
        || async { node_peer(admin, "mesh", "hap").await["state"] == "established" },
    )
    .await;
    assert_eq!(status(hweb, "/").await, 200);
    // HAProxy's table has both (its `show table` prints server_key too).
    let shown = haproxy_cli(&sock, "show table app").await;
    assert!(
        shown.contains("server_id=7") && shown.contains("server_key=s7"),
        "{shown}"
    );
    eventually("server_id on node1", SPREAD, || async {
        node_value(admin, "app", "127.0.0.1", "server_id").await == Some(7)
    })
    .await;
    let p = node_peer(admin, "mesh", "hap").await;
    assert_eq!(p["protocol_errors"], 0, "{p}");
    assert!(p["updates_received"].as_u64() >= Some(1), "{p}");
}
