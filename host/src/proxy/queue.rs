//! A request's server slot under HAProxy's `maxconn` rules: the balancer's
//! choice if it has room and nobody waits before us, else a place in the
//! backend's queue ([`crate::servers::queue`]) until a slot frees or
//! `timeout queue` passes. Every slot taken here is given back by
//! [`release`], which hands it straight to the oldest waiter.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::worker::Epoch;
use crate::config::Balance;

/// How often a waiter offers the free slots around itself, so a slot that
/// appears without a release (`set_maxconn` raised, a server back up) is
/// not missed for longer than this.
const RECHECK: Duration = Duration::from_millis(100);

/// Why no server slot was had.
#[derive(Debug)]
pub enum Unavailable {
    /// No server of the backend is up.
    NoServer,
    /// Waited `timeout queue` (the duration) in the queue.
    Timeout(Duration),
    /// The queue holds its maximum already.
    QueueFull,
}

/// A slot on a server of backend `b` for a request from `client`: the
/// server's index, its `active` count already raised (give it back with
/// [`release`]), and the time spent in the queue (HAProxy's `%Tw`; zero,
/// with no clock read, when a server had room at once).
pub async fn acquire(
    epoch: &Epoch,
    b: usize,
    client: IpAddr,
) -> Result<(usize, Duration), Unavailable> {
    let shared = &epoch.shared;
    let backend = &shared.config.backends[b];
    let st = &shared.backends[b];
    let first = epoch.balancer.pick(b, backend.balance, st, client);
    let pinned = match (backend.balance, first) {
        (Balance::Source, Some(s)) => Some(s),
        (Balance::Source, None) => return Err(Unavailable::NoServer),
        (_, None) if st.usable_servers() == 0 => return Err(Unavailable::NoServer),
        _ => None,
    };
    if let Some(s) = first
        && st.queue.is_empty()
        && st.servers[s].try_begin_request()
    {
        return Ok((s, Duration::ZERO));
    }
    // Boxed: the wait's state (timer, ticket) is not in every request's future.
    Box::pin(wait(epoch, b, pinned)).await
}

/// [`acquire`]'s wait in the queue of backend `b` (for server `pinned`, if any).
async fn wait(
    epoch: &Epoch,
    b: usize,
    pinned: Option<usize>,
) -> Result<(usize, Duration), Unavailable> {
    let shared = &epoch.shared;
    let backend = &shared.config.backends[b];
    let st = &shared.backends[b];
    let (id, rx) = st
        .queue
        .push(pinned.map(|s| &st.servers[s]))
        .map_err(|_| Unavailable::QueueFull)?;
    let mut ticket = Ticket {
        epoch,
        b,
        id,
        rx,
        settled: false,
    };
    // A slot may have freed between the balancer's answer and the push.
    dispatch(epoch, b);
    let queued_at = Instant::now();
    let deadline = queued_at + backend.queue_timeout;
    loop {
        let tick = deadline.min(Instant::now() + RECHECK);
        match tokio::time::timeout_at(tick, &mut ticket.rx).await {
            Ok(Ok(s)) => {
                ticket.settled = true;
                return Ok((s, queued_at.elapsed()));
            }
            // The queue dropped its sender without a grant: it is gone.
            Ok(Err(_)) => return Err(Unavailable::NoServer),
            Err(_) if Instant::now() >= deadline => {
                return Err(Unavailable::Timeout(backend.queue_timeout));
            }
            Err(_) => {
                if shared.backends[b].usable_servers() == 0 && pinned.is_none() {
                    // Every server went down while we waited: HAProxy
                    // answers the queue's requests 503 at once too.
                    return Err(Unavailable::NoServer);
                }
                dispatch(epoch, b);
            }
        }
    }
}

/// A place in the queue; dropped before its grant was read (timeout, the
/// client gone), it leaves the queue, or gives back a slot granted meanwhile.
struct Ticket<'a> {
    epoch: &'a Epoch,
    b: usize,
    id: u64,
    rx: oneshot::Receiver<usize>,
    settled: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let st = &self.epoch.shared.backends[self.b];
        if !st.queue.remove(self.id, &st.servers)
            && let Ok(s) = self.rx.try_recv()
        {
            release(self.epoch, self.b, s);
        }
    }
}

/// Gives back the slot of server `s` of backend `b` and hands free slots
/// to the queue's waiters.
pub fn release(epoch: &Epoch, b: usize, s: usize) {
    let Some(st) = epoch.shared.backends.get(b) else {
        return;
    };
    if let Some(server) = st.servers.get(s) {
        server.active.fetch_sub(1, Relaxed);
    }
    dispatch(epoch, b);
}

/// Hands free slots of backend `b` to its waiters, oldest first.
fn dispatch(epoch: &Epoch, b: usize) {
    let shared = &epoch.shared;
    let st = &shared.backends[b];
    if st.queue.is_empty() {
        return;
    }
    let balance = shared.config.backends[b].balance;
    let n = st.servers.len();
    let mut pick = || {
        // Source-hashed waiters are pinned; the others take what the
        // backend's algorithm gives among the servers with room.
        let algo = if balance == Balance::Source {
            Balance::RoundRobin
        } else {
            balance
        };
        for _ in 0..n.max(1) {
            let s = epoch
                .balancer
                .pick(b, algo, st, IpAddr::V4(Ipv4Addr::UNSPECIFIED))?;
            if st.servers[s].try_begin_request() {
                return Some(s);
            }
        }
        None
    };
    let mut give_back = |s: usize| {
        if let Some(server) = st.servers.get(s) {
            server.active.fetch_sub(1, Relaxed);
        }
    };
    st.queue.dispatch(&st.servers, &mut pick, &mut give_back);
}
