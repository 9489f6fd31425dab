//! A backend's queue (HAProxy's pending connections): requests that found
//! every server at its `maxconn` wait here in arrival order until a slot
//! frees, their `timeout queue` passes, or their client leaves.
//!
//! The waiters' list is the backend's own (one short critical section per
//! enqueue, grant or departure, as HAProxy's per-proxy queue lock), touched
//! only by requests that must wait and by releases while someone waits
//! (`len` is read first, lock-free). Nothing else on the request path sees
//! it. A waiter pinned to one server (`balance = "source"`) counts in that
//! server's `qcur` too and is served only by it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::oneshot;

use super::ServerState;

/// Most requests one backend keeps waiting; more are refused at once (503),
/// so a stuck backend cannot hold unbounded memory.
pub const MAX_QUEUE: u32 = 10_000;

/// One waiting request: its server if pinned, and where its grant goes.
#[derive(Debug)]
struct Waiter {
    id: u64,
    pinned: Option<usize>,
    grant: oneshot::Sender<usize>,
}

/// A backend's queue.
#[derive(Debug, Default)]
pub struct Queue {
    waiters: Mutex<VecDeque<Waiter>>,
    next_id: AtomicU64,
    /// Requests waiting now (`qcur`).
    len: AtomicU32,
    /// Most requests seen waiting at once (`qmax`).
    max: AtomicU32,
}

/// Why a request could not join the queue.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull;

impl Queue {
    /// Requests waiting now (HAProxy's `qcur`).
    pub fn len(&self) -> u32 {
        self.len.load(Relaxed)
    }

    /// Whether no request waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most requests seen waiting at once (`qmax`).
    pub fn max(&self) -> u32 {
        self.max.load(Relaxed)
    }

    /// Joins the queue; the receiver gets the index of a server whose slot
    /// was taken for the request (see [`Queue::dispatch`]).
    pub fn push(
        &self,
        pinned: Option<&ServerState>,
    ) -> Result<(u64, oneshot::Receiver<usize>), QueueFull> {
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Relaxed);
        let mut w = self.waiters.lock().map_err(|_| QueueFull)?;
        let n = u32::try_from(w.len()).unwrap_or(u32::MAX);
        if n >= MAX_QUEUE {
            return Err(QueueFull);
        }
        w.push_back(Waiter {
            id,
            pinned: pinned.map(|s| s.index),
            grant: tx,
        });
        self.len.store(n + 1, Relaxed);
        self.max.fetch_max(n + 1, Relaxed);
        if let Some(s) = pinned {
            let q = s.queued.fetch_add(1, Relaxed).saturating_add(1);
            s.max_queued.fetch_max(q, Relaxed);
        }
        Ok((id, rx))
    }

    /// Leaves the queue (timeout, client gone); false if the request was
    /// granted a server meanwhile (its receiver holds the slot).
    pub fn remove(&self, id: u64, servers: &[ServerState]) -> bool {
        let Ok(mut w) = self.waiters.lock() else {
            return false;
        };
        let Some(pos) = w.iter().position(|x| x.id == id) else {
            return false;
        };
        if let Some(x) = w.remove(pos) {
            unpin(&x, servers);
        }
        self.len
            .store(u32::try_from(w.len()).unwrap_or(u32::MAX), Relaxed);
        true
    }

    /// Hands free slots to waiters, oldest first: a pinned waiter gets its
    /// server's slot when it has one; the others get what `pick` chooses
    /// among the servers with room (`pick` takes the slot, as
    /// [`ServerState::try_begin_request`]). A waiter that left meanwhile
    /// gives its slot back (`release`) and the next one is served.
    pub fn dispatch(
        &self,
        servers: &[ServerState],
        pick: &mut dyn FnMut() -> Option<usize>,
        release: &mut dyn FnMut(usize),
    ) {
        if self.is_empty() {
            return;
        }
        let Ok(mut w) = self.waiters.lock() else {
            return;
        };
        let mut i = 0;
        // Once `pick` finds nothing, only pinned waiters can still be served.
        let mut room = true;
        while i < w.len() {
            let Some(x) = w.get(i) else { break };
            let got = match x.pinned {
                Some(s) => servers
                    .get(s)
                    .filter(|st| st.lb_weight() > 0 && st.try_begin_request())
                    .map(|_| s),
                None if room => {
                    let p = pick();
                    room = p.is_some();
                    p
                }
                None => None,
            };
            let Some(s) = got else {
                i += 1;
                continue;
            };
            if let Some(x) = w.remove(i) {
                unpin(&x, servers);
                if x.grant.send(s).is_err() {
                    // Its request is gone: the slot goes to the next waiter.
                    release(s);
                }
            }
        }
        self.len
            .store(u32::try_from(w.len()).unwrap_or(u32::MAX), Relaxed);
    }
}

fn unpin(x: &Waiter, servers: &[ServerState]) {
    if let Some(s) = x.pinned.and_then(|s| servers.get(s)) {
        let _ = s
            .queued
            .fetch_update(Relaxed, Relaxed, |q| Some(q.saturating_sub(1)));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::servers::events::EventBus;

    fn servers(maxconn: &[u32]) -> Vec<ServerState> {
        maxconn
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let s = ServerState::new(
                    (0, i),
                    EventBus::default(),
                    Arc::from(format!("s{i}")),
                    "127.0.0.1:1".parse().expect("addr"),
                    1,
                    None,
                );
                s.maxconn.store(*m, Relaxed);
                s
            })
            .collect()
    }

    /// `pick` as the proxy's: the first server with room, slot taken.
    fn first_free(servers: &[ServerState]) -> impl FnMut() -> Option<usize> + '_ {
        move || (0..servers.len()).find(|&i| servers[i].try_begin_request())
    }

    #[test]
    fn slots_are_never_overshot() {
        let s = servers(&[2]);
        assert!(s[0].try_begin_request());
        assert!(s[0].try_begin_request());
        assert!(!s[0].try_begin_request());
        assert!(s[0].is_full());
        assert_eq!(s[0].max_active.load(Relaxed), 2);
        s[0].active.fetch_sub(1, Relaxed);
        assert!(s[0].try_begin_request());
    }

    #[test]
    fn waiters_are_served_oldest_first_and_pinned_ones_by_their_server() {
        let s = servers(&[1, 1]);
        assert!(s[0].try_begin_request() && s[1].try_begin_request());
        let q = Queue::default();
        let (_, mut a) = q.push(None).expect("a");
        let (_, mut b) = q.push(Some(&s[1])).expect("b");
        let (_, mut c) = q.push(None).expect("c");
        assert_eq!((q.len(), q.max(), s[1].queued.load(Relaxed)), (3, 3, 1));
        // Server 0 frees a slot: the oldest unpinned waiter gets it; the
        // pinned one waits for server 1.
        s[0].active.fetch_sub(1, Relaxed);
        q.dispatch(&s, &mut first_free(&s), &mut |_| {});
        assert_eq!(a.try_recv(), Ok(0));
        assert!(b.try_recv().is_err() && c.try_recv().is_err());
        // Server 1 frees one: the pinned waiter, though c could take it too.
        s[1].active.fetch_sub(1, Relaxed);
        q.dispatch(&s, &mut first_free(&s), &mut |_| {});
        assert_eq!(b.try_recv(), Ok(1));
        assert_eq!((q.len(), s[1].queued.load(Relaxed)), (1, 0));
        assert!(c.try_recv().is_err());
    }

    #[test]
    fn a_departed_waiter_gives_its_slot_to_the_next() {
        let s = servers(&[1]);
        assert!(s[0].try_begin_request());
        let q = Queue::default();
        let (_, gone) = q.push(None).expect("gone");
        let (id, mut next) = q.push(None).expect("next");
        drop(gone);
        s[0].active.fetch_sub(1, Relaxed);
        let mut released = Vec::new();
        q.dispatch(&s, &mut first_free(&s), &mut |i| {
            released.push(i);
            s[0].active.fetch_sub(1, Relaxed);
        });
        assert_eq!(released, vec![0]);
        assert_eq!(next.try_recv(), Ok(0));
        assert_eq!(s[0].active.load(Relaxed), 1);
        assert!(q.is_empty());
        // Already granted: removing reports it.
        assert!(!q.remove(id, &s));
    }

    #[test]
    fn removal_and_the_cap() {
        let s = servers(&[1]);
        let q = Queue::default();
        let (id, _rx) = q.push(Some(&s[0])).expect("push");
        assert!(q.remove(id, &s));
        assert_eq!((q.len(), s[0].queued.load(Relaxed), q.max()), (0, 0, 1));
        let held: Vec<_> = (0..MAX_QUEUE)
            .map(|_| q.push(None).expect("push"))
            .collect();
        assert_eq!(q.push(None).err(), Some(QueueFull));
        assert_eq!(held.len(), MAX_QUEUE as usize);
    }
}
