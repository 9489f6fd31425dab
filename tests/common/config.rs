//! Config text and the places it points to: free loopback ports, temp
//! directories, and the `[global]` / `[[frontend]]` / `[[backend]]` snippets
//! the tests assemble their configs from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Backend;

// ---------------------------------------------------------------------------
// Ports, temp dirs
// ---------------------------------------------------------------------------

/// A loopback address with a port that was free a moment ago.
///
/// Ports come from below the kernel's ephemeral range (read from
/// `ip_local_port_range`), walked by a per-process counter: a port probed
/// with `bind(:0)` and released is an ephemeral port, which the next
/// outgoing connection of a parallel test may take before the daemon binds
/// it (CI saw "Address already in use" that way). Below the range, only a
/// listener can take a port, and this process never hands one out twice.
pub fn free_addr() -> SocketAddr {
    use std::sync::OnceLock;
    static RANGE: OnceLock<(u32, u32)> = OnceLock::new();
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let (lo, span) = *RANGE.get_or_init(|| {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(32768);
        let lo = 10_000u32;
        let hi = ephemeral_low.clamp(lo + 1_000, 65_000);
        (lo, hi - lo)
    });
    // Test binaries run one after another, but a process seeds its walk
    // from its pid so a rerun does not retrace a predecessor's TIME_WAITs.
    let seed = std::process::id() as usize * 7919;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = lo + ((seed + n) % span as usize) as u32;
        let addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free loopback port in {lo}..{}", lo + span);
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "portcullis-e2e-{tag}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Config snippets
// ---------------------------------------------------------------------------

/// Frontend and admin addresses of one daemon.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub web: SocketAddr,
    pub admin: SocketAddr,
}

impl Ports {
    pub fn new() -> Ports {
        let [web, admin] = free_addrs();
        Ports { web, admin }
    }
}

/// `N` distinct free loopback addresses (see [`free_addr`]).
pub fn free_addrs<const N: usize>() -> [SocketAddr; N] {
    std::array::from_fn(|_| free_addr())
}

impl Default for Ports {
    fn default() -> Self {
        Ports::new()
    }
}

/// A `[global]` + `[global.timeout]` section with short test timeouts.
///
/// `overrides` replace (or add) keys; values are TOML literals. Timeout keys
/// are written `timeout.server` etc.
pub fn global_section(admin: SocketAddr, overrides: &[(&str, &str)]) -> String {
    let admin_v = format!("\"{admin}\"");
    let mut global: Vec<(String, String)> = vec![
        ("workers".into(), "1".into()),
        ("admin".into(), admin_v),
        ("grace".into(), "\"5s\"".into()),
        ("access_log".into(), "\"json\"".into()),
        ("max_header_size".into(), "\"16KiB\"".into()),
        ("max_headers".into(), "50".into()),
    ];
    let mut timeout: Vec<(String, String)> = vec![
        ("connect".into(), "\"1s\"".into()),
        ("client".into(), "\"2s\"".into()),
        ("server".into(), "\"2s\"".into()),
        ("http_request".into(), "\"1s\"".into()),
        ("keep_alive".into(), "\"5s\"".into()),
    ];
    for (k, v) in overrides {
        let (list, key) = match k.strip_prefix("timeout.") {
            Some(t) => (&mut timeout, t),
            None => (&mut global, *k),
        };
        match list.iter_mut().find(|(name, _)| name == key) {
            Some(entry) => entry.1 = (*v).to_string(),
            None => list.push((key.to_string(), (*v).to_string())),
        }
    }
    let mut out = String::from("[global]\n");
    for (k, v) in &global {
        out.push_str(&format!("{k} = {v}\n"));
    }
    out.push_str("\n[global.timeout]\n");
    for (k, v) in &timeout {
        out.push_str(&format!("{k} = {v}\n"));
    }
    out.push('\n');
    out
}

/// A `[[frontend]]` table; `extra` holds further keys (e.g. rules).
pub fn frontend_section(
    name: &str,
    bind: SocketAddr,
    default_backend: &str,
    extra: &str,
) -> String {
    format!(
        "[[frontend]]\nname = \"{name}\"\nbind = \"{bind}\"\ndefault_backend = \"{default_backend}\"\n{extra}\n"
    )
}

/// A `[[backend]]` table with `servers` as (name, addr, weight); `extra` holds further keys.
pub fn backend_section(
    name: &str,
    balance: &str,
    servers: &[(&str, SocketAddr, u32)],
    extra: &str,
) -> String {
    let mut out = format!("[[backend]]\nname = \"{name}\"\nbalance = \"{balance}\"\nserver = [\n");
    for (sname, addr, weight) in servers {
        out.push_str(&format!(
            "  {{ name = \"{sname}\", addr = \"{addr}\", weight = {weight} }},\n"
        ));
    }
    out.push_str("]\n");
    out.push_str(extra);
    out.push('\n');
    out
}

/// The usual test setup: frontend `web` → backend `app` (roundrobin) over `backends`,
/// whose config server names are the backends' names.
pub fn simple_config(
    ports: &Ports,
    backends: &[&Backend],
    global_overrides: &[(&str, &str)],
) -> String {
    let servers: Vec<(&str, SocketAddr, u32)> = backends
        .iter()
        .map(|b| (b.state.name.as_str(), b.addr, 1))
        .collect();
    format!(
        "{}{}{}",
        global_section(ports.admin, global_overrides),
        frontend_section("web", ports.web, "app", ""),
        backend_section("app", "roundrobin", &servers, "")
    )
}
