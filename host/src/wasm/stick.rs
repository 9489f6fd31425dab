//! The stick-table interface Wasm host functions call.
//!
//! One operation set with string arguments — the same one the Lua
//! `StickTable` class and the admin API use — behind a trait object, so the
//! Wasm ABI does not depend on the table engine's internals. The daemon binds
//! it to the config's stick tables; tests use [`MemoryStick`].

use std::collections::HashMap;
use std::sync::Mutex;

/// Why a stick-table call failed (mapped to Proxy-Wasm statuses by the ABI).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StickFail {
    /// No such table, an invalid key for the table's type, an unknown or
    /// unstored data type, or an invalid value.
    #[error("{0}")]
    BadArgument(String),
    /// No entry for the key.
    #[error("no such entry")]
    NotFound,
    /// The table is full and cannot store a new key.
    #[error("{0}")]
    Full(String),
}

/// Stick-table operations reachable from plugins.
pub trait StickApi: Send + Sync {
    /// The value of `data` (e.g. `gpc0`, `http_req_rate`) for `key`; `NotFound` if no entry.
    fn get(&self, table: &str, key: &str, data: &str) -> Result<u64, StickFail>;
    /// Adds `delta` to `data` of `key` (creating the entry); the new value.
    fn add(&self, table: &str, key: &str, data: &str, delta: i64) -> Result<u64, StickFail>;
    /// Sets `data` of `key` to `value` (creating the entry).
    fn set(&self, table: &str, key: &str, data: &str, value: i64) -> Result<(), StickFail>;
    /// Removes the entry for `key`.
    fn clear(&self, table: &str, key: &str) -> Result<(), StickFail>;
}

/// A simple in-memory [`StickApi`] (plain counters, no rates or expiry) for tests and tools.
#[derive(Debug, Default)]
pub struct MemoryStick {
    tables: Vec<String>,
    entries: Mutex<HashMap<(String, String, String), u64>>,
}

impl MemoryStick {
    /// A store with the given table names.
    pub fn new(tables: &[&str]) -> MemoryStick {
        MemoryStick {
            tables: tables.iter().map(|s| s.to_string()).collect(),
            entries: Mutex::default(),
        }
    }

    fn check(&self, table: &str) -> Result<(), StickFail> {
        if self.tables.iter().any(|t| t == table) {
            Ok(())
        } else {
            Err(StickFail::BadArgument(format!("no stick table {table:?}")))
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String, String), u64>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StickApi for MemoryStick {
    fn get(&self, table: &str, key: &str, data: &str) -> Result<u64, StickFail> {
        self.check(table)?;
        self.lock()
            .get(&(table.into(), key.into(), data.into()))
            .copied()
            .ok_or(StickFail::NotFound)
    }

    fn add(&self, table: &str, key: &str, data: &str, delta: i64) -> Result<u64, StickFail> {
        self.check(table)?;
        let mut m = self.lock();
        let v = m
            .entry((table.into(), key.into(), data.into()))
            .or_default();
        *v = v.saturating_add_signed(delta);
        Ok(*v)
    }

    fn set(&self, table: &str, key: &str, data: &str, value: i64) -> Result<(), StickFail> {
        self.check(table)?;
        let value = u64::try_from(value)
            .map_err(|_| StickFail::BadArgument(format!("negative value {value}")))?;
        self.lock()
            .insert((table.into(), key.into(), data.into()), value);
        Ok(())
    }

    fn clear(&self, table: &str, key: &str) -> Result<(), StickFail> {
        self.check(table)?;
        let mut m = self.lock();
        let before = m.len();
        m.retain(|(t, k, _), _| !(t == table && k == key));
        if m.len() == before {
            Err(StickFail::NotFound)
        } else {
            Ok(())
        }
    }
}

/// [`StickApi`] over the config's stick tables, through the one operation set
/// ([`crate::stick::api::Api`]) that rules, Lua and the admin API use.
#[derive(Debug, Clone)]
pub struct TablesStick(pub std::sync::Arc<crate::stick::StickTables>);

fn stick_fail(e: crate::stick::api::StickError) -> StickFail {
    use crate::stick::api::StickError;
    match e {
        StickError::NotFound { .. } => StickFail::NotFound,
        StickError::Full { .. } => StickFail::Full(e.to_string()),
        other => StickFail::BadArgument(other.to_string()),
    }
}

impl StickApi for TablesStick {
    fn get(&self, table: &str, key: &str, data: &str) -> Result<u64, StickFail> {
        let api = crate::stick::api::Api::new(&self.0);
        let t = api.table(table).map_err(stick_fail)?;
        let name = api.data(t, data).map_err(stick_fail)?.to_string();
        let entry = api
            .lookup(table, key)
            .map_err(stick_fail)?
            .ok_or(StickFail::NotFound)?;
        entry
            .data
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or(StickFail::NotFound)
    }

    fn add(&self, table: &str, key: &str, data: &str, delta: i64) -> Result<u64, StickFail> {
        crate::stick::api::Api::new(&self.0)
            .add(table, key, data, delta)
            .map_err(stick_fail)
    }

    fn set(&self, table: &str, key: &str, data: &str, value: i64) -> Result<(), StickFail> {
        crate::stick::api::Api::new(&self.0)
            .set(table, key, &[(data, value)])
            .map(|_| ())
            .map_err(stick_fail)
    }

    fn clear(&self, table: &str, key: &str) -> Result<(), StickFail> {
        crate::stick::api::Api::new(&self.0)
            .clear_entry(table, key)
            .map_err(stick_fail)
    }
}
