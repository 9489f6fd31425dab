//! The daemon's figures for plugin APIs (Lua's `core.get_info()`), read
//! from [`Shared`] (atomics only; nothing here changes it).

use std::sync::atomic::Ordering::Relaxed;

use super::stats::Shared;
use crate::plugin::{ProcessInfo, ProcessSource};

impl ProcessSource for Shared {
    fn process_info(&self) -> ProcessInfo {
        let to_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let binds: usize = self.config.frontends.iter().map(|f| f.binds.len()).sum();
        ProcessInfo {
            uptime: self.started.elapsed(),
            workers: to_u64(self.config.global.workers),
            curr_conns: to_u64(self.conns.current()),
            cum_conns: self
                .frontends
                .iter()
                .map(|f| f.connections_total.load(Relaxed))
                .sum(),
            cum_req: self
                .frontends
                .iter()
                .map(|f| f.requests.load(Relaxed))
                .sum(),
            maxconn: to_u64(self.conns.max()),
            listeners: to_u64(binds.saturating_mul(self.config.global.workers)),
        }
    }
}
