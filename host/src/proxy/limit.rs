//! Connection limits (HAProxy's `maxconn`) and the file-descriptor limit
//! they are derived from.
//!
//! A slot is reserved *after* a listener is readable and *before* `accept`,
//! as HAProxy does: at the limit the accept loops pause and new connections
//! wait in the kernel's backlog instead of being accepted and starved.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};

use tokio::sync::Notify;

/// File descriptors kept back from the connection budget: listeners, the
/// admin API, health checks, log files, plugin sockets.
const FD_RESERVE: u64 = 128;

/// A count of open connections against a maximum.
#[derive(Debug)]
pub struct ConnLimit {
    max: usize,
    current: AtomicUsize,
    /// Times an accept loop found this limit reached and paused.
    reached: AtomicU64,
    released: Notify,
}

impl ConnLimit {
    /// A limit of `max` connections (at least one).
    pub fn new(max: usize) -> ConnLimit {
        ConnLimit {
            max: max.max(1),
            current: AtomicUsize::new(0),
            reached: AtomicU64::new(0),
            released: Notify::new(),
        }
    }

    /// The maximum number of connections.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open now.
    pub fn current(&self) -> usize {
        self.current.load(Relaxed)
    }

    /// How many times the limit was reached.
    pub fn reached(&self) -> u64 {
        self.reached.load(Relaxed)
    }

    /// Takes a slot if one is free.
    pub fn try_acquire(&self) -> bool {
        let mut cur = self.current.load(Relaxed);
        loop {
            if cur >= self.max {
                return false;
            }
            match self
                .current
                .compare_exchange_weak(cur, cur + 1, Relaxed, Relaxed)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Counts one pause of an accept loop on this limit.
    pub fn note_reached(&self) {
        self.reached.fetch_add(1, Relaxed);
    }

    /// Gives a slot back, waking accept loops paused on this limit.
    pub fn release(&self) {
        let before = self.current.fetch_sub(1, Relaxed);
        if before >= self.max {
            self.released.notify_waiters();
        }
    }

    /// Resolves after the next [`release`](Self::release) that freed a slot
    /// at the limit. Create it before checking, so no release is missed.
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }
}

/// The soft `RLIMIT_NOFILE` in force.
pub fn fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (as HAProxy does at
/// start-up) and returns the soft limit in force afterwards.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        } else {
            tracing::warn!(
                soft = lim.rlim_cur,
                hard = lim.rlim_max,
                "cannot raise the open-file limit to its hard limit"
            );
        }
    }
    lim.rlim_cur
}

/// The default global `maxconn` for `fd_limit` open files: each proxied
/// connection needs two descriptors (client and server), less a reserve
/// (HAProxy derives its default from `ulimit -n` the same way).
pub fn default_maxconn(fd_limit: u64) -> usize {
    let usable = fd_limit.saturating_sub(FD_RESERVE) / 2;
    usize::try_from(usable.clamp(64, 1 << 20)).unwrap_or(1 << 20)
}

/// Whether `maxconn` connections fit in `fd_limit` descriptors; a warning otherwise.
pub fn check_maxconn(maxconn: usize, fd_limit: u64) -> Option<String> {
    let needed = (maxconn as u64)
        .saturating_mul(2)
        .saturating_add(FD_RESERVE);
    (needed > fd_limit).then(|| {
        format!(
            "maxconn = {maxconn} needs about {needed} file descriptors but the open-file limit is {fd_limit}; \
             accept will fail with EMFILE before maxconn is reached (raise `ulimit -n` or lower maxconn)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_and_capped() {
        let l = ConnLimit::new(2);
        assert!(l.try_acquire());
        assert!(l.try_acquire());
        assert!(!l.try_acquire());
        assert_eq!(l.current(), 2);
        l.release();
        assert!(l.try_acquire());
    }

    #[test]
    fn default_maxconn_follows_the_fd_limit() {
        assert_eq!(default_maxconn(1024), (1024 - 128) / 2);
        assert_eq!(default_maxconn(100), 64);
        assert_eq!(default_maxconn(u64::MAX), 1 << 20);
        assert!(check_maxconn(10_000, 1024).is_some());
        assert!(check_maxconn(100, 1024).is_none());
    }

    #[tokio::test]
    async fn release_at_the_limit_wakes_a_waiter() {
        let l = std::sync::Arc::new(ConnLimit::new(1));
        assert!(l.try_acquire());
        let waiter = {
            let l = std::sync::Arc::clone(&l);
            tokio::spawn(async move {
                loop {
                    let n = l.released();
                    tokio::pin!(n);
                    n.as_mut().enable();
                    if l.try_acquire() {
                        return;
                    }
                    n.await;
                }
            })
        };
        tokio::task::yield_now().await;
        l.release();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("waiter woke")
            .expect("waiter ran");
    }
}
