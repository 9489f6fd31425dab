//! The stick-table host-function API: one operation set, string arguments,
//! every argument validated, every failure a [`StickError`] value.
//!
//! The admin API uses it now; the Lua `StickTable` class and the Wasm host
//! functions bind the same calls unchanged. Nothing here panics on bad
//! input: a wrong key type, an unknown data type or a missing table is an
//! error the caller can report.

use std::fmt::Write as _;
use std::sync::Arc;

use super::data::{DataKind, DataRef};
use super::entry::Entry;
use super::table::{DeleteError, StickTable};
use super::{Key, StickTables};

/// Why a stick-table operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StickError {
    #[error("no stick table {name:?}{}", known_list(.known))]
    NoSuchTable { name: String, known: Vec<String> },
    #[error("invalid key for table {table:?} (type {key_type}): {reason}")]
    BadKey {
        table: String,
        key_type: &'static str,
        reason: String,
    },
    #[error("unknown data type {name:?}; known: {}", DataRef::known_names().join(", "))]
    UnknownData { name: String },
    #[error("table {table:?} does not store {data}; it stores: {}", if .stored.is_empty() { "nothing".to_string() } else { .stored.join(", ") })]
    NotStored {
        table: String,
        data: String,
        stored: Vec<String>,
    },
    #[error("invalid value for {data}: {reason}")]
    BadValue { data: String, reason: String },
    #[error("invalid filter {text:?}: {reason}")]
    BadFilter { text: String, reason: String },
    #[error("table {table:?} is full and cannot store a new key")]
    Full { table: String },
    #[error("no entry {key:?} in table {table:?}")]
    NotFound { table: String, key: String },
    #[error(
        "entry {key:?} of table {table:?} is in use by {refs} request(s); it cannot be removed now"
    )]
    InUse {
        table: String,
        key: String,
        refs: u64,
    },
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "; no stick table is declared".to_string()
    } else {
        format!("; declared tables: {}", known.join(", "))
    }
}

/// A table's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub name: String,
    /// `ip`, `ipv6`, `integer`, `string` or `binary`.
    pub key_type: &'static str,
    /// Key length for `string` / `binary`.
    pub key_len: Option<usize>,
    pub size: u64,
    pub used: u64,
    pub expire_ms: Option<u64>,
    pub nopurge: bool,
    /// Stored data, e.g. `["gpc0", "http_req_rate(10000)"]`.
    pub store: Vec<String>,
    pub inserts: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub refusals: u64,
}

/// A snapshot of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryView {
    /// The key as text (hex for binary keys).
    pub key: String,
    /// Milliseconds until expiry; `None` if the table has no `expire`.
    pub expire_ms: Option<u64>,
    /// Requests currently tracking the entry.
    pub refs: u64,
    /// Stored values by name (`gpc0`, `http_req_rate`, ...), in display order.
    pub data: Vec<(String, u64)>,
    /// Rate periods in ms, parallel to `data` (0 for counters).
    pub periods: Vec<u32>,
}

/// A comparison for dumps and clears: `data.<type> <op> <value>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter {
    pub data: DataRef,
    pub op: Op,
    pub value: u64,
}

/// Comparison operators (HAProxy's `eq`, `ne`, `lt`, `le`, `gt`, `ge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "lt" => Op::Lt,
            "le" => Op::Le,
            "gt" => Op::Gt,
            "ge" => Op::Ge,
            _ => return None,
        })
    }

    fn test(self, a: u64, b: u64) -> bool {
        match self {
            Op::Eq => a == b,
            Op::Ne => a != b,
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
        }
    }
}

impl Filter {
    fn matches(&self, e: &Entry, now: u64) -> bool {
        e.get(self.data, now)
            .is_some_and(|v| self.op.test(v, self.value))
    }
}

/// Whether a status/kind of data may be written by [`Api::set`] / [`Api::add`].
fn check_value(r: DataRef, v: i64) -> Result<u64, StickError> {
    let bad = |reason: &str| StickError::BadValue {
        data: r.to_string(),
        reason: reason.to_string(),
    };
    let v = u64::try_from(v).map_err(|_| bad("values are unsigned; use 0 or more"))?;
    if r.kind.is_rate() && v > u64::from(u32::MAX) {
        return Err(bad("a rate holds at most 4294967295 events per period"));
    }
    Ok(v)
}

/// The operation set over a [`StickTables`] registry.
#[derive(Debug, Clone, Copy)]
pub struct Api<'a> {
    tables: &'a StickTables,
}

impl<'a> Api<'a> {
    /// The API over `tables`.
    pub fn new(tables: &'a StickTables) -> Api<'a> {
        Api { tables }
    }

    /// The table called `name`.
    pub fn table(&self, name: &str) -> Result<&'a Arc<StickTable>, StickError> {
        self.tables
            .get(name)
            .ok_or_else(|| StickError::NoSuchTable {
                name: name.to_string(),
                known: self.tables.names().iter().map(|s| s.to_string()).collect(),
            })
    }

    /// Parses `key` for table `t`.
    pub fn key(&self, t: &StickTable, key: &str) -> Result<Key, StickError> {
        t.key_type()
            .parse_key(key)
            .map_err(|reason| StickError::BadKey {
                table: t.name().to_string(),
                key_type: t.key_type().name(),
                reason,
            })
    }

    /// Parses a data type name and checks that `t` stores it.
    pub fn data(&self, t: &StickTable, name: &str) -> Result<DataRef, StickError> {
        let r = DataRef::parse(name).ok_or_else(|| StickError::UnknownData {
            name: name.to_string(),
        })?;
        if !t.schema().has(r) {
            return Err(StickError::NotStored {
                table: t.name().to_string(),
                data: r.to_string(),
                stored: t.schema().describe(),
            });
        }
        Ok(r)
    }

    /// Parses a filter `data.<type>` = `<op>:<value>` (also `<op> <value>`).
    pub fn filter(&self, t: &StickTable, data: &str, cond: &str) -> Result<Filter, StickError> {
        let text = format!("{data}={cond}");
        let bad = |reason: String| StickError::BadFilter {
            text: text.clone(),
            reason,
        };
        let r = self.data(t, data.strip_prefix("data.").unwrap_or(data))?;
        let (op, value) = cond
            .split_once([':', ' '])
            .ok_or_else(|| bad("write <op>:<value>, e.g. gt:10".into()))?;
        let op = Op::parse(op.trim()).ok_or_else(|| {
            bad(format!(
                "unknown operator {op:?}; use eq, ne, lt, le, gt or ge"
            ))
        })?;
        let value = value
            .trim()
            .parse::<u64>()
            .map_err(|_| bad(format!("{value:?} is not a non-negative integer")))?;
        Ok(Filter { data: r, op, value })
    }

    /// Every table's description.
    pub fn list(&self) -> Vec<TableInfo> {
        self.tables.iter().map(|t| info_of(t)).collect()
    }

    /// One table's description.
    pub fn info(&self, table: &str) -> Result<TableInfo, StickError> {
        Ok(info_of(self.table(table)?))
    }

    /// The entry for `key`, if present.
    pub fn lookup(&self, table: &str, key: &str) -> Result<Option<EntryView>, StickError> {
        let t = self.table(table)?;
        let k = self.key(t, key)?;
        Ok(t.lookup(&k.as_ref()).map(|e| view(&e, t.now())))
    }

    /// The entry for `key`, created if absent.
    pub fn get_or_create(&self, table: &str, key: &str) -> Result<EntryView, StickError> {
        let t = self.table(table)?;
        let k = self.key(t, key)?;
        let e = self.create(t, &k)?;
        let now = t.now();
        e.touch(now);
        super::replica::changed(&e);
        Ok(view(&e, now))
    }

    fn create(&self, t: &StickTable, k: &Key) -> Result<Arc<Entry>, StickError> {
        t.get_or_create(&k.as_ref()).map_err(|_| StickError::Full {
            table: t.name().to_string(),
        })
    }

    /// Adds `delta` to `data` of `key` (creating the entry); returns the new value.
    /// A negative delta lowers a counter (not below 0); rates only go up.
    /// Incrementing `gpcN` also counts an event in `gpcN_rate`, as `sc_inc_gpc` does.
    pub fn add(&self, table: &str, key: &str, data: &str, delta: i64) -> Result<u64, StickError> {
        let t = self.table(table)?;
        let k = self.key(t, key)?;
        let r = self.data(t, data)?;
        if delta < 0 && r.kind.is_rate() {
            return Err(StickError::BadValue {
                data: r.to_string(),
                reason: "a rate counts events; it cannot be lowered".into(),
            });
        }
        let e = self.create(t, &k)?;
        let now = t.now();
        e.touch(now);
        if delta >= 0 {
            let n = delta.unsigned_abs();
            e.add(r, now, n);
            if r.kind == DataKind::Gpc {
                e.add(
                    DataRef {
                        kind: DataKind::GpcRate,
                        idx: r.idx,
                    },
                    now,
                    n,
                );
            }
        } else {
            e.sub(r, delta.unsigned_abs());
        }
        super::replica::changed(&e);
        Ok(e.get(r, now).unwrap_or(0))
    }

    /// Sets several values of `key` at once (creating the entry); all names
    /// and values are checked before anything is written.
    pub fn set(
        &self,
        table: &str,
        key: &str,
        values: &[(&str, i64)],
    ) -> Result<EntryView, StickError> {
        let t = self.table(table)?;
        let k = self.key(t, key)?;
        let mut checked = Vec::with_capacity(values.len());
        for (name, v) in values {
            let r = self.data(t, name)?;
            checked.push((r, check_value(r, *v)?));
        }
        let e = self.create(t, &k)?;
        let now = t.now();
        for (r, v) in checked {
            e.set(r, now, v);
        }
        e.touch(now);
        super::replica::changed(&e);
        Ok(view(&e, now))
    }

    /// Removes the entry for `key` (refused while a request tracks it).
    pub fn clear_entry(&self, table: &str, key: &str) -> Result<(), StickError> {
        let t = self.table(table)?;
        let k = self.key(t, key)?;
        t.delete(&k.as_ref()).map_err(|e| match e {
            DeleteError::NotFound => StickError::NotFound {
                table: table.to_string(),
                key: key.to_string(),
            },
            DeleteError::InUse(refs) => StickError::InUse {
                table: table.to_string(),
                key: key.to_string(),
                refs,
            },
        })
    }

    /// Removes every entry matching all `filters` that no request tracks;
    /// returns (removed, kept because in use).
    pub fn clear_table(&self, table: &str, filters: &[Filter]) -> Result<(u64, u64), StickError> {
        let t = self.table(table)?;
        let now = t.now();
        Ok(t.clear(|e| filters.iter().all(|f| f.matches(e, now))))
    }

    /// Up to `limit` entries matching all `filters`, sorted by key text.
    pub fn dump(
        &self,
        table: &str,
        filters: &[Filter],
        limit: usize,
    ) -> Result<Vec<EntryView>, StickError> {
        let t = self.table(table)?;
        let now = t.now();
        let mut v: Vec<EntryView> = t
            .entries(usize::MAX, |e| filters.iter().all(|f| f.matches(e, now)))
            .iter()
            .map(|e| view(e, now))
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v.truncate(limit);
        Ok(v)
    }

    /// HAProxy's `show table <name>` text for up to `limit` matching entries.
    pub fn show_table(
        &self,
        table: &str,
        filters: &[Filter],
        limit: usize,
    ) -> Result<String, StickError> {
        let t = self.table(table)?;
        let entries = self.dump(table, filters, limit)?;
        let mut out = format!(
            "# table: {}, type: {}, size:{}, used:{}\n",
            t.name(),
            t.key_type().name(),
            t.size(),
            t.used()
        );
        for (i, e) in entries.iter().enumerate() {
            // HAProxy prints the entry's address; an index serves the same purpose here.
            let _ = write!(
                out,
                "0x{:x}: key={} use={} exp={}",
                i + 1,
                e.key,
                e.refs,
                e.expire_ms.unwrap_or(0)
            );
            for ((name, v), p) in e.data.iter().zip(&e.periods) {
                if *p > 0 {
                    let _ = write!(out, " {name}({p})={v}");
                } else {
                    let _ = write!(out, " {name}={v}");
                }
            }
            out.push('\n');
        }
        Ok(out)
    }
}

fn info_of(t: &StickTable) -> TableInfo {
    use std::sync::atomic::Ordering::Relaxed;
    let key_len = match t.key_type() {
        super::KeyType::String { len } | super::KeyType::Binary { len } => Some(len),
        _ => None,
    };
    TableInfo {
        name: t.name().to_string(),
        key_type: t.key_type().name(),
        key_len,
        size: t.size(),
        used: t.used(),
        expire_ms: t.expire(),
        nopurge: t.nopurge(),
        store: t.schema().describe(),
        inserts: t.counters.inserts.load(Relaxed),
        evictions: t.counters.evictions.load(Relaxed),
        expirations: t.counters.expirations.load(Relaxed),
        refusals: t.counters.refusals.load(Relaxed),
    }
}

fn view(e: &Entry, now: u64) -> EntryView {
    let snap = e.snapshot(now);
    EntryView {
        key: e.key_text(),
        expire_ms: e.expires_in(now),
        refs: e.refs(),
        periods: snap.iter().map(|(_, s, _)| s.period).collect(),
        data: snap
            .into_iter()
            .map(|(r, _, v)| (r.to_string(), v))
            .collect(),
    }
}
