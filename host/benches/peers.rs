//! Stick-table replication throughput (issue #23): how many updates per
//! second one node can push, and how many it can apply, over loopback with
//! the real `crate::peers` runtime and HAProxy's wire format.
//!
//! - `push`: a node's table gets `KEYS` distinct entries changed (as the
//!   request path does: a value added, then `replica::changed`) by a
//!   producer thread; a sink peer on its own thread reads the node's update
//!   messages as fast as they come (acknowledging them, as HAProxy does).
//!   Figure: updates received by the sink per second, from the first change
//!   to the last update (the pump, the session's encoding and the socket).
//! - `apply`: a feeder peer writes `KEYS` pre-encoded update messages as
//!   fast as the socket takes them; the node decodes and applies them
//!   (its `updates_received` counter). Figure: updates applied per second.
//! - `relay`: two nodes in one process, each on its own control runtime (as
//!   in the daemon): changes on node A until node B applied them all.
//!
//! Each figure is the median of `ROUNDS` rounds (and the min–max), printed
//! as one line per scenario. A harness-less bench (`harness = false`):
//!
//! `cargo bench -p portcullis --bench peers` (env `PEERS_BENCH_KEYS`,
//! `PEERS_BENCH_ROUNDS` to change the defaults of 50 000 keys and 7 rounds).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use portcullis::config::peers::{Peer as PeerSpec, Section as Spec};
use portcullis::peers::proto::{self, Definition, Value, WireKey, class, control, stkt};
use portcullis::peers::{Peers, State};
use portcullis::stick::{
    Clock, DataKind, DataRef, KeyRef, KeyType, Schema, StickTable, StickTables, TableConfig,
    replica,
};

const STORE: [&str; 3] = ["http_req_rate(10s)", "gpc0", "http_req_cnt"];
/// Longest wait for one round (a round that takes longer failed).
const ROUND_LIMIT: Duration = Duration::from_secs(60);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr")
}

fn table(keys: u64) -> Arc<StickTable> {
    Arc::new(StickTable::new(
        TableConfig {
            name: "per_ip".into(),
            key_type: KeyType::Ip,
            size: keys * 2,
            expire: Some(600_000),
            nopurge: false,
            schema: Schema::parse(&STORE).expect("schema"),
            peers: Some("mesh".into()),
            peers_name: None,
        },
        Clock::Real,
    ))
}

fn spec(local: &str, bind: SocketAddr, remote: &str, raddr: SocketAddr) -> Arc<Spec> {
    Arc::new(Spec {
        name: "mesh".into(),
        local: local.into(),
        bind,
        remotes: vec![PeerSpec {
            name: remote.into(),
            addr: raddr,
        }],
        allow: vec![("127.0.0.0".parse().expect("ip"), 8)],
    })
}

/// A node: its table and replication, on a thread of its own running a
/// current-thread runtime (the daemon's control thread).
struct Node {
    table: Arc<StickTable>,
    peers: Arc<Peers>,
    stop: Arc<AtomicBool>,
}

impl Node {
    fn start(spec: Arc<Spec>, keys: u64) -> Node {
        let table = table(keys);
        let tables = StickTables::new(vec![Arc::clone(&table)]);
        let listeners = Peers::bind(std::slice::from_ref(&spec)).expect("bind the peers port");
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let peers = Peers::start(
                    &[spec],
                    listeners.into_iter().map(Some).collect(),
                    &tables,
                    false,
                );
                tx.send(peers).expect("hand the node over");
                while !stopped.load(Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        });
        let peers = rx.recv().expect("node started");
        Node { table, peers, stop }
    }

    fn peer_stats(&self) -> &portcullis::peers::PeerStats {
        &self.peers.sections()[0].peers[0].stats
    }

    fn wait_established(&self) {
        let until = Instant::now() + Duration::from_secs(10);
        while self.peer_stats().state.load(Relaxed) != State::Established as u64 {
            assert!(Instant::now() < until, "the peer session did not come up");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

fn ip(n: u64) -> [u8; 4] {
    (0x0a00_0000u32 + n as u32).to_be_bytes()
}

/// Changes `keys` distinct entries as the request path does; the time it took.
fn produce(t: &StickTable, keys: u64) -> Duration {
    let start = Instant::now();
    let now = t.now();
    for n in 0..keys {
        if let Ok(e) = t.get_or_create(&KeyRef::V4(ip(n))) {
            e.add(DataRef::scalar(DataKind::HttpReqRate), now, 1);
            e.add(DataRef::scalar(DataKind::HttpReqCnt), now, 1);
            replica::changed(&e);
        }
    }
    start.elapsed()
}

/// Reads the peer's hello on `s` and accepts it.
fn accept_hello(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut lines = 0;
    while lines < 3 {
        let mut b = [0u8; 512];
        let n = s.read(&mut b).expect("read hello");
        assert!(n > 0, "closed during the hello");
        buf.extend_from_slice(&b[..n]);
        lines = buf.iter().filter(|&&c| c == b'\n').count();
    }
    s.write_all(b"200\n").expect("status");
    let mut seen = 0;
    let end = buf
        .iter()
        .position(|&c| {
            seen += usize::from(c == b'\n');
            seen == 3
        })
        .map_or(buf.len(), |p| p + 1);
    buf.split_off(end)
}

/// A peer that reads everything a node pushes: counts updates, answers a
/// resync request with "finished" at once, acknowledges each read's last
/// update and sends heartbeats.
fn sink(l: TcpListener, received: Arc<AtomicU64>) {
    std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let _ = s.set_nodelay(true);
        let mut buf = accept_hello(&mut s);
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut last = Instant::now();
        let mut table = 0u64;
        let mut last_id = 0u32;
        loop {
            let mut used = 0;
            let mut out = Vec::new();
            let mut got = 0;
            while let Ok(Some((f, n))) = proto::frame(buf.get(used..).unwrap_or_default()) {
                used += n;
                match (f.class, f.kind) {
                    (class::CONTROL, control::RESYNC_REQUEST) => {
                        proto::put_short(&mut out, class::CONTROL, control::RESYNC_FINISHED)
                    }
                    (class::STICK_TABLE, stkt::DEFINE) => {
                        table = proto::parse_definition(f.body).expect("definition").id;
                    }
                    (class::STICK_TABLE, stkt::UPDATE | stkt::UPDATE_TIMED) => {
                        last_id = u32::from_be_bytes(f.body[..4].try_into().expect("id"));
                        got += 1;
                    }
                    (class::STICK_TABLE, stkt::INC_UPDATE | stkt::INC_UPDATE_TIMED) => {
                        last_id = last_id.wrapping_add(1);
                        got += 1;
                    }
                    _ => {}
                }
            }
            buf.drain(..used);
            if got > 0 {
                received.fetch_add(got, Relaxed);
                proto::put_ack(&mut out, table, last_id);
            }
            if last.elapsed() > Duration::from_secs(1) {
                proto::put_short(&mut out, class::CONTROL, control::HEARTBEAT);
                last = Instant::now();
            }
            if !out.is_empty() && s.write_all(&out).is_err() {
                return;
            }
            let mut b = vec![0u8; 256 * 1024];
            match s.read(&mut b) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&b[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        }
    });
}

fn wait_for(counter: &AtomicU64, target: u64) -> bool {
    let until = Instant::now() + ROUND_LIMIT;
    while counter.load(Relaxed) < target {
        if Instant::now() > until {
            return false;
        }
        std::hint::spin_loop();
        std::thread::sleep(Duration::from_micros(200));
    }
    true
}

fn bench_push(keys: u64, rounds: u64) -> Vec<f64> {
    let sink_addr = free_addr();
    let l = TcpListener::bind(sink_addr).expect("sink bind");
    let received = Arc::new(AtomicU64::new(0));
    sink(l, Arc::clone(&received));
    let node = Node::start(spec("a", free_addr(), "sink", sink_addr), keys);
    node.wait_established();
    // The start-up resync is answered at once; the entries exist before round 1.
    std::thread::sleep(Duration::from_millis(300));
    produce(&node.table, keys);
    assert!(wait_for(&received, keys), "warm-up: updates lost");
    let mut rates = Vec::new();
    for r in 0..rounds {
        let base = received.load(Relaxed);
        let start = Instant::now();
        let made = produce(&node.table, keys);
        assert!(
            wait_for(&received, base + keys),
            "round {r}: {} of {keys} updates arrived",
            received.load(Relaxed) - base
        );
        let took = start.elapsed();
        eprintln!("push round {r}: {keys} updates in {took:?} (the producer took {made:?})");
        rates.push(keys as f64 / took.as_secs_f64());
    }
    rates
}

/// `keys` update messages of a table laid out as `STORE` (the first with its
/// id `first_id`, the others incremental), with values that change per round.
fn encoded_updates(keys: u64, first_id: u32, round: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(keys as usize * 24);
    for n in 0..keys {
        // Wire order: gpc0 (2), http_req_cnt (9), http_req_rate (10).
        let values = [
            Value::Int(round),
            Value::Int(n + round),
            Value::Freq {
                elapsed: 100,
                curr: (round + n % 50) as u32,
                prev: 3,
            },
        ];
        let id = (n == 0).then_some(first_id);
        proto::put_update(&mut out, id, None, WireKey::Fixed(4), &ip(n), &values);
    }
    out
}

fn bench_apply(keys: u64, rounds: u64) -> Vec<f64> {
    let feeder_addr = free_addr();
    let l = TcpListener::bind(feeder_addr).expect("feeder bind");
    let node = Node::start(spec("b", free_addr(), "feeder", feeder_addr), keys);
    let (mut s, _) = l.accept().expect("the node connects");
    let _ = s.set_nodelay(true);
    let _ = accept_hello(&mut s);
    // Our table, as HAProxy would define it: ip key, gpc0 (2), http_req_cnt (9), http_req_rate (10).
    let mut params = [(1, 0); proto::DATA_TYPE_COUNT];
    params[10] = (1, 10_000);
    let def = Definition {
        id: 1,
        name: b"per_ip",
        key_type: proto::key_type::IPV4,
        key_len: 4,
        data: (1 << 2) | (1 << 9) | (1 << 10),
        expire: Some(600_000),
        params,
        unknown_types: false,
    };
    let mut head = Vec::new();
    proto::put_definition(&mut head, &def);
    s.write_all(&head).expect("definition");
    // The node's reads (acks, its resync request, heartbeats) are drained on a thread.
    let mut r = s.try_clone().expect("clone");
    std::thread::spawn(move || {
        let mut b = vec![0u8; 64 * 1024];
        while matches!(r.read(&mut b), Ok(n) if n > 0) {}
    });
    let applied = || node.peer_stats().updates_received.load(Relaxed);
    let mut rates = Vec::new();
    let mut next_id = 1u32;
    for r in 0..=rounds {
        let msgs = encoded_updates(keys, next_id, r);
        next_id = next_id.wrapping_add(keys as u32);
        let base = applied();
        let start = Instant::now();
        s.write_all(&msgs).expect("updates");
        let until = start + ROUND_LIMIT;
        while applied() < base + keys {
            assert!(
                Instant::now() < until,
                "round {r}: {} of {keys} applied",
                applied() - base
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        let took = start.elapsed();
        if r == 0 {
            // Warm-up: the entries are created here; later rounds update them.
            assert_eq!(node.table.used(), keys, "every key applied");
            continue;
        }
        eprintln!(
            "apply round {r}: {keys} updates ({} KiB) in {took:?}",
            msgs.len() / 1024
        );
        rates.push(keys as f64 / took.as_secs_f64());
    }
    let got = node
        .table
        .with_entry(&KeyRef::V4(ip(keys - 1)), |e| {
            e.get(DataRef::scalar(DataKind::HttpReqCnt), 0)
        })
        .flatten();
    assert_eq!(got, Some(keys - 1 + rounds), "the last value applied");
    rates
}

fn bench_relay(keys: u64, rounds: u64) -> Vec<f64> {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let a = Node::start(spec("a", a_addr, "b", b_addr), keys);
    let b = Node::start(spec("b", b_addr, "a", a_addr), keys);
    a.wait_established();
    b.wait_established();
    // Let the start-up resyncs and a possible connection collision settle.
    std::thread::sleep(Duration::from_millis(2500));
    a.wait_established();
    let received = || &b.peer_stats().updates_received;
    let base = received().load(Relaxed);
    produce(&a.table, keys);
    assert!(wait_for(received(), base + keys), "warm-up: updates lost");
    let mut rates = Vec::new();
    for r in 0..rounds {
        let base = received().load(Relaxed);
        let start = Instant::now();
        produce(&a.table, keys);
        assert!(
            wait_for(received(), base + keys),
            "round {r}: {} of {keys} updates applied",
            received().load(Relaxed) - base
        );
        let took = start.elapsed();
        eprintln!("relay round {r}: {keys} updates in {took:?}");
        rates.push(keys as f64 / took.as_secs_f64());
    }
    rates
}

fn report(name: &str, mut rates: Vec<f64>) {
    rates.sort_by(f64::total_cmp);
    let med = rates[rates.len() / 2];
    println!(
        "peers/{name:<6} median {:>9.0} updates/s  (min {:.0}, max {:.0}, {} rounds)",
        med,
        rates[0],
        rates[rates.len() - 1],
        rates.len()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects scenarios.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |n: &str| filter.is_empty() || filter.iter().any(|f| n.contains(f.as_str()));
    let keys = env_or("PEERS_BENCH_KEYS", 50_000);
    let rounds = env_or("PEERS_BENCH_ROUNDS", 7);
    if want("push") {
        report("push", bench_push(keys, rounds));
    }
    if want("apply") {
        report("apply", bench_apply(keys, rounds));
    }
    if want("relay") {
        report("relay", bench_relay(keys, rounds));
    }
}
