//! Stick tables: per-key counters and rates shared by rules, plugins and
//! operators (HAProxy's model; see `docs/STICK-TABLES.md`).
//!
//! - [`data`]: data types, a table's layout, the sliding-window rate.
//! - [`key`]: key types and conversions.
//! - [`entry`]: an entry and its reference-count / DEAD state machine.
//! - [`table`]: the table (lock-free map + expiry index), eviction, tracking.
//! - [`expiry`]: the task that reaps expired entries without ever spinning.
//! - [`replica`]: the hook that queues local changes for the peers (`crate::peers`).
//! - [`api`]: the one operation set that the admin API, Lua and Wasm bind.
//!
//! Tables are created when the config loads and live in
//! [`crate::runtime::Runtime::tables`]; compiled rules hold `Arc`s to them.

pub mod api;
pub mod clock;
pub mod data;
pub mod entry;
pub mod expiry;
pub mod key;
pub mod replica;
pub mod table;
pub mod track;

#[cfg(test)]
mod tests;

use std::sync::{Arc, LazyLock};

pub use api::{Api, StickError};
pub use clock::Clock;
pub use data::{DataKind, DataRef, Schema};
pub use entry::Entry;
pub use key::{Key, KeyRef, KeyType};
pub use table::{StickTable, TableConfig, TickPhase, Tracked};
pub use track::StickCounters;

/// Every table of a configuration, by name.
#[derive(Debug, Default)]
pub struct StickTables {
    tables: Vec<Arc<StickTable>>,
}

static NONE: LazyLock<StickTables> = LazyLock::new(StickTables::default);

impl StickTables {
    /// A registry of `tables` (names are unique; the config checks it).
    pub fn new(tables: Vec<Arc<StickTable>>) -> StickTables {
        StickTables { tables }
    }

    /// An empty registry (for tests and tools).
    pub fn none() -> &'static StickTables {
        &NONE
    }

    /// The table called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<StickTable>> {
        self.tables.iter().find(|t| t.name() == name)
    }

    /// Every table, in config order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<StickTable>> {
        self.tables.iter()
    }

    /// Table names, in config order.
    pub fn names(&self) -> Vec<&str> {
        self.tables.iter().map(|t| t.name()).collect()
    }

    /// Whether no table is declared.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// A reload: every table declared as in `old` (same name, key type and
    /// data) is replaced by `old`'s, entries included; the others start
    /// empty. Returns one message per table that changed and so starts empty.
    pub fn carry_over(&mut self, old: &StickTables) -> Vec<String> {
        let mut changed = Vec::new();
        for t in &mut self.tables {
            match old.get(t.name()) {
                Some(prev) if prev.same_definition(t) => *t = Arc::clone(prev),
                Some(prev) => changed.push(format!(
                    "stick_table {:?} changed its definition: it starts empty ({} entries dropped)",
                    t.name(),
                    prev.used()
                )),
                None => {}
            }
        }
        changed
    }

    /// Whether `table` (by identity) is one of these tables.
    pub fn contains(&self, table: &Arc<StickTable>) -> bool {
        self.tables.iter().any(|t| Arc::ptr_eq(t, table))
    }

    /// The host-function API over these tables.
    pub fn api(&self) -> Api<'_> {
        Api::new(self)
    }
}

/// The expiry task of `table` (runs until aborted; returns at once for a
/// table without `expire`).
pub async fn expiry_task(table: Arc<StickTable>) {
    expiry::run(table).await;
}

/// Starts the expiry task of every table with `expire` on the current tokio runtime.
pub fn spawn_expiry(tables: &StickTables) {
    for t in tables.iter().filter(|t| t.expire().is_some()) {
        tokio::spawn(expiry::run(Arc::clone(t)));
    }
}
