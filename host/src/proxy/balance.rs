//! Server selection: roundrobin, leastconn and source, over the servers'
//! weights in force (zero for a server down, in maintenance or draining).
//!
//! Round-robin state is per worker (no shared counter to contend on); leastconn
//! reads the shared per-server active counts; source hashes the client address
//! over the up servers' weights, so a client sticks to one server while the set
//! of up servers is unchanged (HAProxy's map-based hashing).

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;

use crate::config::Balance;
use crate::runtime::Runtime;
use crate::servers::BackendState;

/// One worker's balancing state.
pub struct Balancer {
    /// Smooth weighted round-robin "current weights", per backend per server.
    current: RefCell<Vec<Vec<i64>>>,
    /// Rotating start for leastconn ties, per backend.
    rotor: RefCell<Vec<usize>>,
}

impl Balancer {
    /// Fresh state for `config`'s backends.
    pub fn new(config: &Runtime) -> Balancer {
        Balancer {
            current: RefCell::new(
                config
                    .backends
                    .iter()
                    .map(|b| vec![0; b.servers.len()])
                    .collect(),
            ),
            rotor: RefCell::new(vec![0; config.backends.len()]),
        }
    }

    /// Picks a server of backend `idx`; `None` if no server is up or (for
    /// roundrobin and leastconn, which pass over a server at its `maxconn`
    /// as HAProxy's do) every up server is full. `source` picks the
    /// client's server even when full: the request then waits for it.
    pub fn pick(
        &self,
        idx: usize,
        algo: Balance,
        state: &BackendState,
        client: IpAddr,
    ) -> Option<usize> {
        match algo {
            Balance::RoundRobin => self.round_robin(idx, state),
            Balance::LeastConn => self.least_conn(idx, state),
            Balance::Source => source_hash(state, client),
        }
    }

    /// Nginx's smooth weighted round-robin: even spreading, weights respected, no bursts.
    fn round_robin(&self, idx: usize, state: &BackendState) -> Option<usize> {
        let mut current = self.current.borrow_mut();
        let cw = current.get_mut(idx)?;
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, s) in state.servers.iter().enumerate() {
            let w = i64::from(s.lb_weight());
            if w == 0 || s.is_full() {
                continue;
            }
            let value = {
                let slot = cw.get_mut(i)?;
                *slot += w;
                *slot
            };
            total += w;
            if best.is_none_or(|b| value > cw[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        cw[b] -= total;
        Some(b)
    }

    /// Fewest active requests relative to weight; ties rotate so idle servers share load.
    fn least_conn(&self, idx: usize, state: &BackendState) -> Option<usize> {
        let n = state.servers.len();
        if n == 0 {
            return None;
        }
        let mut rotor = self.rotor.borrow_mut();
        let start = rotor.get(idx).copied().unwrap_or(0) % n;
        let mut best: Option<(usize, u64, u64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let s = &state.servers[i];
            let w = u64::from(s.lb_weight());
            if w == 0 || s.is_full() {
                continue;
            }
            let active = u64::from(s.active.load(Relaxed));
            // active/w < best_active/best_w, compared without division.
            if best.is_none_or(|(_, ba, bw)| active * bw < ba * w) {
                best = Some((i, active, w));
            }
        }
        if let Some(r) = rotor.get_mut(idx) {
            *r = r.wrapping_add(1);
        }
        best.map(|(i, _, _)| i)
    }
}

/// FNV-1a over the address bytes, then a weighted slot among the up servers.
fn source_hash(state: &BackendState, client: IpAddr) -> Option<usize> {
    let bytes: Vec<u8> = match client {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => a.octets().to_vec(),
        },
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Mix the high bits in: FNV's low bits are weak for short inputs.
    h ^= h >> 29;
    let total: u64 = state.servers.iter().map(|s| u64::from(s.lb_weight())).sum();
    if total == 0 {
        return None;
    }
    let mut slot = h % total;
    for (i, s) in state.servers.iter().enumerate() {
        let w = u64::from(s.lb_weight());
        if slot < w {
            return Some(i);
        }
        slot -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BindCheck;
    use crate::proxy::stats::Shared;
    use std::path::Path;
    use std::sync::Arc;

    fn shared(balance: &str, weights: &[u32]) -> Shared {
        let servers: Vec<String> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                format!(
                    "{{ name = \"s{i}\", addr = \"127.0.0.1:{}\", weight = {w} }}",
                    9000 + i
                )
            })
            .collect();
        let text = format!(
            "[[backend]]\nname = \"b\"\nbalance = \"{balance}\"\nserver = [{}]\n",
            servers.join(", ")
        );
        let config = crate::runtime::parse(Path::new("t.toml"), &text, BindCheck::Skip)
            .expect("valid test config");
        Shared::new(Arc::new(config))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn round_robin_respects_weights_and_spreads() {
        let sh = shared("roundrobin", &[3, 1]);
        let bal = Balancer::new(&sh.config);
        let picks: Vec<usize> = (0..8)
            .filter_map(|_| bal.pick(0, Balance::RoundRobin, &sh.backends[0], ip("127.0.0.1")))
            .collect();
        assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 6);
        // Smooth: never three in a row go to the light server.
        assert!(picks.windows(2).all(|w| !(w[0] == 1 && w[1] == 1)));
    }

    #[test]
    fn round_robin_skips_down_servers() {
        let sh = shared("roundrobin", &[1, 1, 1]);
        sh.backends[0].servers[1].set_up(false);
        let bal = Balancer::new(&sh.config);
        for _ in 0..10 {
            assert_ne!(
                bal.pick(0, Balance::RoundRobin, &sh.backends[0], ip("127.0.0.1")),
                Some(1)
            );
        }
        for s in &sh.backends[0].servers {
            s.set_up(false);
        }
        assert_eq!(
            bal.pick(0, Balance::RoundRobin, &sh.backends[0], ip("127.0.0.1")),
            None
        );
    }

    #[test]
    fn least_conn_prefers_idle() {
        let sh = shared("leastconn", &[1, 1]);
        sh.backends[0].servers[0].active.store(3, Relaxed);
        let bal = Balancer::new(&sh.config);
        for _ in 0..5 {
            assert_eq!(
                bal.pick(0, Balance::LeastConn, &sh.backends[0], ip("127.0.0.1")),
                Some(1)
            );
        }
    }

    #[test]
    fn source_is_sticky_and_spreads() {
        let sh = shared("source", &[1, 1, 1]);
        let bal = Balancer::new(&sh.config);
        let mut seen = [0usize; 3];
        for i in 1..=60u8 {
            let client = ip(&format!("10.0.0.{i}"));
            let first = bal.pick(0, Balance::Source, &sh.backends[0], client);
            let again = bal.pick(0, Balance::Source, &sh.backends[0], client);
            assert_eq!(first, again);
            seen[first.expect("a server is up")] += 1;
        }
        assert!(seen.iter().all(|&n| n > 5), "poor spread: {seen:?}");
    }
}
