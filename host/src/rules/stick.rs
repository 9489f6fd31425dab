//! Stick-table rules: `track_sc0..2`, the `sc_inc_gpc` / `sc_clr_gpc` /
//! `sc_set_gpt` actions, the `sc*_` / `src_` / `table_` fetches, and the
//! log filter that records each exchange's outcome in the tracked entries.
//!
//! Everything is resolved at load time (table names, data types, counter
//! numbers); at run time a fetch is a lock-free map read or a read of the
//! entry the request already holds.

use std::sync::Arc;

use toml::Spanned;

use super::action::RuleEnv;
use super::fetch::{Arg, Call, Expr, Fetch, Value};
use super::format::LogFormat;
use super::{Env, ParseError, did_you_mean, suggest};
use crate::config::ConfigError;
use crate::config::schema::RawRule;
use crate::filter::{Filter, Flow};
use crate::stick::data::{DataKind, DataRef, MAX_ARRAY};
use crate::stick::track::COUNTERS;
use crate::stick::{Entry, StickTable, StickTables};
use crate::txn::Txn;

// ---------------------------------------------------------------------------
// Table resolution
// ---------------------------------------------------------------------------

/// The table called `name`, or an error listing the declared ones.
fn named_table(tables: &StickTables, name: &str) -> Result<Arc<StickTable>, String> {
    if let Some(t) = tables.get(name) {
        return Ok(Arc::clone(t));
    }
    let names = tables.names();
    if names.is_empty() {
        return Err(format!(
            "no stick table {name:?}: no [[stick_table]] is declared"
        ));
    }
    let hint = suggest(name, names.iter().copied())
        .map(did_you_mean)
        .unwrap_or_default();
    Err(format!(
        "no stick table {name:?}{hint}; declared tables: {}",
        names.join(", ")
    ))
}

/// The only declared table (for a rule or fetch that names none).
fn only_table(tables: &StickTables, what: &str) -> Result<Arc<StickTable>, String> {
    let names = tables.names();
    match (names.len(), tables.iter().next()) {
        (1, Some(t)) => Ok(Arc::clone(t)),
        (0, _) => Err(format!(
            "{what} needs a stick table, but no [[stick_table]] is declared"
        )),
        _ => Err(format!(
            "{what} needs a table name: several stick tables are declared ({})",
            names.join(", ")
        )),
    }
}

// ---------------------------------------------------------------------------
// Fetches
// ---------------------------------------------------------------------------

/// Whose entry a fetch reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The entry tracked by stick counter N.
    Counter(usize),
    /// The client address looked up in a table (`src_*`).
    Src,
}

/// What a fetch reads from (or does to) an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    Data(DataRef),
    /// `kbytes_in` / `kbytes_out`: a byte counter in KiB.
    KBytes(DataKind),
    Tracked,
    Trackers,
    IncGpc(u8),
    ClrGpc(u8),
}

impl What {
    /// The data that must be stored for this to make sense.
    fn needs(self) -> Option<DataRef> {
        match self {
            What::Data(r) => Some(r),
            What::KBytes(k) => Some(DataRef::scalar(k)),
            What::ClrGpc(i) => Some(DataRef {
                kind: DataKind::Gpc,
                idx: i,
            }),
            What::IncGpc(_) | What::Tracked | What::Trackers => None,
        }
    }

    fn stored_in(self, t: &StickTable) -> bool {
        match self {
            What::IncGpc(i) => {
                t.schema().has(DataRef {
                    kind: DataKind::Gpc,
                    idx: i,
                }) || t.schema().has(DataRef {
                    kind: DataKind::GpcRate,
                    idx: i,
                })
            }
            w => w.needs().is_none_or(|r| t.schema().has(r)),
        }
    }

    fn describe(self) -> String {
        match self {
            What::Data(r) => r.to_string(),
            What::KBytes(k) => DataRef::scalar(k).to_string(),
            What::IncGpc(i) | What::ClrGpc(i) => format!("gpc{i}"),
            What::Tracked => "tracked".into(),
            What::Trackers => "trackers".into(),
        }
    }
}

/// A stick-counter fetch (`sc0_http_req_rate`, `sc_get_gpc(1,0)`, `src_conn_cur(per_ip)`, ...).
#[derive(Debug)]
struct ScFetch {
    source: Source,
    what: What,
    /// The table to read: for counters, only when it differs from the tracked one.
    table: Option<Arc<StickTable>>,
}

fn int(v: u64) -> Value<'static> {
    Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

impl ScFetch {
    /// Reads `e` at `now`; `None` when the entry's table does not store the data.
    fn read(&self, e: &Entry, now: u64) -> Option<Value<'static>> {
        match self.what {
            What::Data(r) => e.get(r, now).map(int),
            What::KBytes(k) => e.get(DataRef::scalar(k), now).map(|v| int(v >> 10)),
            What::Tracked => Some(Value::Bool(true)),
            What::Trackers => Some(int(e.refs())),
            What::IncGpc(i) => e.inc_gpc(i, now).map(int),
            What::ClrGpc(i) => e
                .swap(
                    DataRef {
                        kind: DataKind::Gpc,
                        idx: i,
                    },
                    now,
                    0,
                )
                .map(int),
        }
    }

    /// The value when the table has no entry for the key (HAProxy answers 0).
    fn absent(&self) -> Option<Value<'static>> {
        match self.what {
            What::Tracked => Some(Value::Bool(false)),
            _ => Some(Value::Int(0)),
        }
    }

    /// Reads the entry for `key` in `t` (creating it for `inc_gpc`, as HAProxy's `src_inc_gpc0` does).
    fn in_table(&self, t: &StickTable, key: &crate::stick::KeyRef<'_>) -> Option<Value<'static>> {
        let now = t.now();
        if let What::IncGpc(_) = self.what {
            return match t.get_or_create(key) {
                Ok(e) => {
                    e.touch(now);
                    let v = self.read(&e, now);
                    crate::stick::replica::changed(&e);
                    v
                }
                Err(_) => None,
            };
        }
        if let What::ClrGpc(_) = self.what {
            return match t.lookup(key) {
                Some(e) => {
                    let v = self.read(&e, now);
                    crate::stick::replica::changed(&e);
                    v
                }
                None => self.absent(),
            };
        }
        match t.with_entry(key, |e| self.read(e, now)) {
            Some(v) => v,
            None => self.absent(),
        }
    }
}

impl Fetch for ScFetch {
    fn fetch<'t>(&'t self, txn: &'t Txn) -> Option<Value<'t>> {
        match self.source {
            Source::Counter(n) => {
                let tracked = txn.sc.get(n);
                if self.what == What::Tracked {
                    return Some(Value::Bool(tracked.is_some()));
                }
                let tr = tracked?;
                let e = tr.entry();
                match &self.table {
                    // Another table than the tracked one: look the tracked key up there.
                    Some(t) if !t.owns(e) => {
                        if t.key_type() != e.meta.key_type {
                            return None;
                        }
                        self.in_table(t, &e.key().as_ref())
                    }
                    // The phase's tick: no clock read after the first in a phase.
                    _ => {
                        let v = self.read(e, tr.now_in(txn.phase.into()));
                        if matches!(self.what, What::IncGpc(_) | What::ClrGpc(_)) {
                            tr.changed();
                        }
                        v
                    }
                }
            }
            Source::Src => {
                let t = self.table.as_ref()?;
                let ip = Value::Ip(txn.client_addr.ip());
                let key = t.key_of(&ip)?;
                self.in_table(t, &key)
            }
        }
    }
}

/// Parses the data part of a stick-counter fetch name; `true` if it takes an index argument.
fn parse_what(name: &str) -> Option<(What, bool)> {
    let idx = |s: &str| -> Option<u8> {
        if s.is_empty() || s.len() > 2 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u8>().ok().filter(|i| usize::from(*i) < MAX_ARRAY)
    };
    let gpc = |i| DataRef {
        kind: DataKind::Gpc,
        idx: i,
    };
    let gpt = |i| DataRef {
        kind: DataKind::Gpt,
        idx: i,
    };
    let rate = |i| DataRef {
        kind: DataKind::GpcRate,
        idx: i,
    };
    Some(match name {
        "tracked" => (What::Tracked, false),
        "trackers" => (What::Trackers, false),
        "kbytes_in" => (What::KBytes(DataKind::BytesInCnt), false),
        "kbytes_out" => (What::KBytes(DataKind::BytesOutCnt), false),
        "get_gpc" => (What::Data(gpc(0)), true),
        "get_gpt" => (What::Data(gpt(0)), true),
        "gpc_rate" => (What::Data(rate(0)), true),
        "inc_gpc" => (What::IncGpc(0), true),
        "clr_gpc" => (What::ClrGpc(0), true),
        _ => {
            if let Some(n) = name.strip_prefix("get_gpc") {
                (What::Data(gpc(idx(n)?)), false)
            } else if let Some(n) = name.strip_prefix("get_gpt") {
                (What::Data(gpt(idx(n)?)), false)
            } else if let Some(n) = name.strip_prefix("inc_gpc") {
                (What::IncGpc(idx(n)?), false)
            } else if let Some(n) = name.strip_prefix("clr_gpc") {
                (What::ClrGpc(idx(n)?), false)
            } else {
                (What::Data(DataRef::parse(name)?), false)
            }
        }
    })
}

fn with_idx(w: What, i: u8) -> What {
    match w {
        What::Data(r) => What::Data(DataRef {
            kind: r.kind,
            idx: i,
        }),
        What::IncGpc(_) => What::IncGpc(i),
        What::ClrGpc(_) => What::ClrGpc(i),
        other => other,
    }
}

fn arg_num(a: &Arg, what: &str, max: usize) -> Result<usize, ParseError> {
    a.text
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n < max)
        .ok_or_else(|| {
            ParseError::new(
                a.offset,
                format!(
                    "{what} must be an integer from 0 to {}, got \"{}\"",
                    max - 1,
                    a.text
                ),
            )
        })
}

/// Builds `sc0_*`, `sc1_*`, `sc2_*`, `sc_*` and `src_*` fetches.
pub fn build_sc_fetch(call: &Call<'_>, env: &Env<'_>) -> Result<Box<dyn Fetch>, ParseError> {
    let tables = env.ctx.tables;
    let name = call.name;
    let (source, generic, rest) = if let Some(r) = name.strip_prefix("src_") {
        (Source::Src, false, r)
    } else if let Some(r) = name.strip_prefix("sc_") {
        (Source::Counter(0), true, r)
    } else {
        let n = name
            .strip_prefix("sc")
            .and_then(|r| r.split_once('_'))
            .and_then(|(d, r)| d.parse::<usize>().ok().map(|d| (d, r)));
        match n {
            Some((d, r)) if d < COUNTERS => (Source::Counter(d), false, r),
            _ => {
                return Err(ParseError::new(
                    call.offset,
                    format!(
                        "unknown fetch \"{name}\": stick counters are sc0, sc1 and sc2 (e.g. sc0_http_req_rate)"
                    ),
                ));
            }
        }
    };
    let (mut what, takes_idx) = parse_what(rest).ok_or_else(|| {
        ParseError::new(
            call.offset,
            format!(
                "unknown stick-counter data \"{rest}\" in \"{name}\"; use e.g. http_req_rate, http_req_cnt, http_err_rate, conn_cur, get_gpc0, gpc0_rate, get_gpt0, inc_gpc0, tracked or trackers"
            ),
        )
    })?;
    if source == Source::Src && what == What::Tracked {
        return Err(ParseError::new(
            call.offset,
            "src_tracked does not exist; use sc0_tracked to test a stick counter",
        ));
    }
    let mut args = call.args.iter();
    let mut usage = String::from(name);
    usage.push('(');
    if takes_idx {
        usage.push_str("<idx>,");
        let a = args.next().ok_or_else(|| {
            ParseError::new(
                call.offset,
                format!(
                    "\"{name}\" needs the array index first, e.g. {name}(0{})",
                    if generic { ",0" } else { "" }
                ),
            )
        })?;
        let i = arg_num(a, "the array index", MAX_ARRAY)?;
        what = with_idx(what, u8::try_from(i).unwrap_or(0));
    }
    let source = if generic {
        let a = args.next().ok_or_else(|| {
            ParseError::new(
                call.offset,
                format!(
                    "\"{name}\" needs the stick counter number (0, 1 or 2), e.g. {name}({}0)",
                    if takes_idx { "0," } else { "" }
                ),
            )
        })?;
        Source::Counter(arg_num(a, "the stick counter", COUNTERS)?)
    } else {
        source
    };
    let table_arg = args.next();
    if let Some(extra) = args.next() {
        return Err(ParseError::new(
            extra.offset,
            format!("too many arguments to \"{name}\"; usage: {usage}[<table>])"),
        ));
    }
    let table = match table_arg {
        Some(a) => {
            Some(named_table(tables, a.text.trim()).map_err(|m| ParseError::new(a.offset, m))?)
        }
        None if source == Source::Src => {
            Some(only_table(tables, &format!("\"{name}\"")).map_err(|m| {
                ParseError::new(call.offset, format!("{m}; write e.g. {name}(<table>)"))
            })?)
        }
        None => None,
    };
    // Check at load time that the data exists where it will be read.
    match &table {
        Some(t) if !what.stored_in(t) => {
            return Err(ParseError::new(
                table_arg.map_or(call.offset, |a| a.offset),
                format!(
                    "stick table \"{}\" does not store {}; add it to its store list (it stores: {})",
                    t.name(),
                    what.describe(),
                    stored_list(t)
                ),
            ));
        }
        None if what.needs().is_some() || matches!(what, What::IncGpc(_)) => {
            if tables.is_empty() {
                return Err(ParseError::new(
                    call.offset,
                    format!("\"{name}\" reads a stick counter, but no [[stick_table]] is declared"),
                ));
            }
            if !tables.iter().any(|t| what.stored_in(t)) {
                return Err(ParseError::new(
                    call.offset,
                    format!(
                        "no stick table stores {}; add it to a table's store list",
                        what.describe()
                    ),
                ));
            }
        }
        _ => {}
    }
    Ok(Box::new(ScFetch {
        source,
        what,
        table,
    }))
}

fn stored_list(t: &StickTable) -> String {
    let v = t.schema().describe();
    if v.is_empty() {
        "nothing".into()
    } else {
        v.join(", ")
    }
}

/// `table_cnt([table])` / `table_avl([table])`.
#[derive(Debug)]
struct TableFetch {
    table: Arc<StickTable>,
    avail: bool,
}

impl Fetch for TableFetch {
    fn fetch<'t>(&'t self, _txn: &'t Txn) -> Option<Value<'t>> {
        let used = self.table.used();
        Some(int(if self.avail {
            self.table.size().saturating_sub(used)
        } else {
            used
        }))
    }
}

/// Builds `table_cnt` and `table_avl`.
pub fn build_table_fetch(call: &Call<'_>, env: &Env<'_>) -> Result<Box<dyn Fetch>, ParseError> {
    let tables = env.ctx.tables;
    let table = match call.args.first() {
        Some(a) => named_table(tables, a.text.trim()).map_err(|m| ParseError::new(a.offset, m))?,
        None => only_table(tables, &format!("\"{}\"", call.name)).map_err(|m| {
            ParseError::new(
                call.offset,
                format!("{m}; write e.g. {}(<table>)", call.name),
            )
        })?,
    };
    Ok(Box::new(TableFetch {
        table,
        avail: call.name == "table_avl",
    }))
}

// ---------------------------------------------------------------------------
// Actions
// ---------------------------------------------------------------------------

/// `track_scN = "<expr>"`: tracks the key in counter N for the request's life.
#[derive(Debug)]
struct Track {
    counter: usize,
    key: Expr,
    table: Arc<StickTable>,
}

impl Track {
    fn apply(&self, txn: &mut Txn) -> Flow {
        if txn.sc.is_tracked(self.counter) {
            return Flow::Continue;
        }
        let tracked = {
            let Some(v) = self.key.eval(txn) else {
                return Flow::Continue;
            };
            let Some(k) = self.table.key_of(&v) else {
                return Flow::Continue;
            };
            self.table.track(&k)
        };
        match tracked {
            Some(t) => txn.sc.set(self.counter, t),
            // Full with nopurge (or nothing evictable): the request goes on untracked.
            None => tracing::debug!(
                table = self.table.name(),
                "stick table full; request not tracked"
            ),
        }
        Flow::Continue
    }
}

/// Builds `track_sc0`, `track_sc1` and `track_sc2`.
pub fn build_track(raw: &RawRule, re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, ConfigError> {
    let (counter, expr) = match (&raw.track_sc0, &raw.track_sc1, &raw.track_sc2) {
        (Some(e), _, _) => (0, e),
        (_, Some(e), _) => (1, e),
        (_, _, Some(e)) => (2, e),
        _ => return Err(re.error(re.span.clone(), "internal error: track_sc key missing")),
    };
    let key = re.expr(expr)?;
    let tables = re.env.ctx.tables;
    let table = match &raw.table {
        Some(t) => named_table(tables, t.get_ref()).map_err(|m| re.error(t.span(), m))?,
        None => only_table(tables, &format!("track_sc{counter}"))
            .map_err(|m| re.error(expr.span(), format!("{m}; add table = \"<name>\"")))?,
    };
    Ok(re.head(
        Track::apply,
        Track {
            counter,
            key,
            table,
        },
    ))
}

/// `[idx, sc]` of `sc_inc_gpc` / `sc_clr_gpc` / `sc_set_gpt` (HAProxy's argument order).
fn idx_sc(re: &RuleEnv<'_>, v: &Spanned<Vec<i64>>, key: &str) -> Result<(u8, usize), ConfigError> {
    match v.get_ref().as_slice() {
        [i, s] => {
            let idx = usize::try_from(*i).ok().filter(|i| *i < MAX_ARRAY);
            let sc = usize::try_from(*s).ok().filter(|s| *s < COUNTERS);
            match (idx, sc) {
                (Some(i), Some(s)) => Ok((u8::try_from(i).unwrap_or(0), s)),
                (None, _) => Err(re.error(
                    v.span(),
                    format!(
                        "{key}: the array index must be 0 to {}, got {i}",
                        MAX_ARRAY - 1
                    ),
                )),
                (_, None) => Err(re.error(
                    v.span(),
                    format!("{key}: the stick counter must be 0, 1 or 2, got {s}"),
                )),
            }
        }
        _ => Err(re.error(
            v.span(),
            format!("{key} takes [<idx>, <sc>], e.g. {key} = [0, 0] for gpc0 of sc0"),
        )),
    }
}

/// Checks at load time that some table stores `r`.
fn some_table_stores(
    re: &RuleEnv<'_>,
    span: std::ops::Range<usize>,
    rs: &[DataRef],
    key: &str,
) -> Result<(), ConfigError> {
    let tables = re.env.ctx.tables;
    if tables.is_empty() {
        return Err(re.error(
            span,
            format!("{key} updates a stick counter, but no [[stick_table]] is declared"),
        ));
    }
    if !tables.iter().any(|t| rs.iter().any(|r| t.schema().has(*r))) {
        return Err(re.error(
            span,
            format!(
                "{key}: no stick table stores {}; add it to a table's store list",
                rs[0]
            ),
        ));
    }
    Ok(())
}

/// What a gpc/gpt action does.
#[derive(Debug)]
enum GpOp {
    IncGpc,
    ClrGpc,
    SetGpt(GptValue),
}

/// The value of `sc_set_gpt`.
#[derive(Debug)]
enum GptValue {
    Fmt(LogFormat),
    Expr(Expr),
}

#[derive(Debug)]
struct Gp {
    idx: u8,
    counter: usize,
    op: GpOp,
}

impl Gp {
    fn apply(&self, txn: &mut Txn) -> Flow {
        let Some(t) = txn.sc.get(self.counter) else {
            return Flow::Continue;
        };
        let now = t.now_in(txn.phase.into());
        let e = t.entry();
        match &self.op {
            GpOp::IncGpc => {
                e.inc_gpc(self.idx, now);
            }
            GpOp::ClrGpc => e.set(
                DataRef {
                    kind: DataKind::Gpc,
                    idx: self.idx,
                },
                now,
                0,
            ),
            GpOp::SetGpt(v) => {
                let n = match v {
                    GptValue::Fmt(f) => f.render_string(txn).trim().parse::<i64>().ok(),
                    GptValue::Expr(x) => x.eval(txn).and_then(|v| v.to_int()),
                };
                // A value that is not a non-negative integer leaves gpt unchanged (HAProxy ignores it).
                if let Some(n) = n.and_then(|n| u64::try_from(n).ok()) {
                    e.set(
                        DataRef {
                            kind: DataKind::Gpt,
                            idx: self.idx,
                        },
                        now,
                        n,
                    );
                }
            }
        }
        t.changed();
        Flow::Continue
    }
}

/// Builds `sc_inc_gpc`, `sc_clr_gpc` and `sc_set_gpt`.
pub fn build_gp(raw: &RawRule, re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, ConfigError> {
    let (key, v) = match (&raw.sc_inc_gpc, &raw.sc_clr_gpc, &raw.sc_set_gpt) {
        (Some(v), _, _) => ("sc_inc_gpc", v),
        (_, Some(v), _) => ("sc_clr_gpc", v),
        (_, _, Some(v)) => ("sc_set_gpt", v),
        _ => return Err(re.error(re.span.clone(), "internal error: sc_* key missing")),
    };
    let (idx, counter) = idx_sc(re, v, key)?;
    let gpc = DataRef {
        kind: DataKind::Gpc,
        idx,
    };
    let op = match key {
        "sc_inc_gpc" => {
            let rate = DataRef {
                kind: DataKind::GpcRate,
                idx,
            };
            some_table_stores(re, v.span(), &[gpc, rate], key)?;
            GpOp::IncGpc
        }
        "sc_clr_gpc" => {
            some_table_stores(re, v.span(), &[gpc], key)?;
            GpOp::ClrGpc
        }
        _ => {
            let gpt = DataRef {
                kind: DataKind::Gpt,
                idx,
            };
            some_table_stores(re, v.span(), &[gpt], key)?;
            match (&raw.value, &raw.expr) {
                (Some(_), Some(e)) => {
                    return Err(re.error(
                        e.span(),
                        "sc_set_gpt takes either `value` (text) or `expr` (a fetch expression), not both",
                    ));
                }
                (Some(val), None) => GpOp::SetGpt(GptValue::Fmt(re.log_format(val)?)),
                (None, Some(e)) => GpOp::SetGpt(GptValue::Expr(re.expr(e)?)),
                (None, None) => {
                    return Err(re.error(
                        v.span(),
                        "sc_set_gpt needs `value = \"<integer>\"` or `expr = \"<fetch>\"`, e.g. expr = \"sc0_http_req_rate\"",
                    ));
                }
            }
        }
    };
    Ok(re.head(Gp::apply, Gp { idx, counter, op }))
}

// ---------------------------------------------------------------------------
// The log filter
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::Path;

    use crate::config::{BindCheck, SourceMap};
    use crate::filter::Flow;
    use crate::runtime::parse;
    use crate::txn::Txn;

    const HEAD: &str = r#"[[stick_table]]
name = "a"
type = "ip"
size = 10
store = ["http_req_cnt", "gpc0", "gpt0"]

[[stick_table]]
name = "b"
type = "string"
size = 10
store = ["http_req_rate(10s)"]

[[backend]]
name = "app"
server = [{ name = "s1", addr = "127.0.0.1:9000" }]

[[frontend]]
name = "web"
bind = "127.0.0.1:18080"
default_backend = "app"
"#;

    #[track_caller]
    fn fails_at(rules: &str, marker: &str, msg: &str) {
        let text = format!("{HEAD}{rules}");
        let err = parse(Path::new("t.toml"), &text, BindCheck::Skip).expect_err("rejected");
        let at = text.rfind(marker).expect("marker");
        let loc = SourceMap::new(Path::new("t.toml"), &text).location(at);
        assert_eq!(err.location, Some((loc.line, loc.col)), "{err}");
        assert!(err.message.contains(msg), "{:?} lacks {msg:?}", err.message);
    }

    #[test]
    fn load_time_errors() {
        fails_at(
            "http_request = [{ track_sc0 = \"src\" }]\n",
            "\"src\"",
            "track_sc0 needs a table name: several stick tables are declared (a, b)",
        );
        fails_at(
            "http_request = [{ track_sc0 = \"src\", table = \"zzz\" }]\n",
            "\"zzz\"",
            "no stick table \"zzz\"; declared tables: a, b",
        );
        fails_at(
            "http_request = [{ deny = true, if = \"sc3_http_req_cnt gt 1\" }]\n",
            "sc3_",
            "unknown fetch \"sc3_http_req_cnt\"",
        );
        fails_at(
            "http_request = [{ deny = true, if = \"sc0_http_req_cnt(b) gt 1\" }]\n",
            "b) gt",
            "stick table \"b\" does not store http_req_cnt",
        );
        fails_at(
            "http_request = [{ deny = true, if = \"sc0_conn_cur gt 1\" }]\n",
            "sc0_conn_cur",
            "no stick table stores conn_cur",
        );
        fails_at(
            "http_request = [{ deny = true, if = \"src_http_req_cnt gt 1\" }]\n",
            "src_http_req_cnt",
            "several stick tables are declared",
        );
        fails_at(
            "http_request = [{ deny = true, if = \"sc_http_req_cnt gt 1\" }]\n",
            "sc_http_req_cnt",
            "usage: sc_<data>(<sc>[,<table>])",
        );
        fails_at(
            "http_request = [{ sc_inc_gpc = [0] }]\n",
            "[0]",
            "sc_inc_gpc takes [<idx>, <sc>]",
        );
        fails_at(
            "http_request = [{ sc_inc_gpc = [0, 3] }]\n",
            "[0, 3]",
            "must be 0, 1 or 2",
        );
        fails_at(
            "http_request = [{ sc_set_gpt = [1, 0], value = \"1\" }]\n",
            "[1, 0]",
            "no stick table stores gpt1",
        );
        fails_at(
            "http_request = [{ sc_set_gpt = [0, 0] }]\n",
            "[0, 0]",
            "sc_set_gpt needs `value",
        );
        fails_at(
            "http_response = [{ track_sc0 = \"src\", table = \"a\" }]\n",
            "\"src\"",
            "cannot be used in http_response rules",
        );
    }

    #[test]
    fn track_and_read_through_the_chain() {
        let cfg = parse(
            Path::new("t.toml"),
            &format!(
                "{HEAD}http_request = [\n  {{ track_sc1 = \"src\", table = \"a\" }},\n  {{ track_sc1 = \"str(x)\", table = \"b\" }},\n  {{ sc_inc_gpc = [0, 1] }},\n  {{ sc_set_gpt = [0, 1], expr = \"sc1_get_gpc0,add(10)\" }},\n  {{ deny = 429, if = \"sc1_get_gpc0 gt 2\" }},\n]\n"
            ),
            BindCheck::Skip,
        )
        .expect("loads");
        let chain = &cfg.frontends[0].chain;
        // Outcomes are recorded by the exchange itself, not by a log filter.
        assert!(chain.log.is_empty());
        let table = cfg.tables.get("a").expect("a");
        let run = || {
            let mut t = Txn::for_test("/", SocketAddr::from(([10, 0, 0, 1], 1)));
            for f in &chain.request {
                if let Flow::Respond(r) = f.on_request(&mut t) {
                    return (r.status.as_u16(), t);
                }
            }
            (200, t)
        };
        let (s1, t1) = run();
        assert_eq!(s1, 200);
        // The second track_sc1 is ignored: counter 1 is taken.
        assert_eq!(cfg.tables.get("b").expect("b").used(), 0);
        let e = t1.sc.get(1).expect("tracked").entry();
        assert_eq!(e.refs(), 1);
        let now = table.now();
        let gpt = crate::stick::DataRef::parse("gpt0").expect("gpt0");
        assert_eq!(e.get(gpt, now), Some(11));
        drop(t1);
        let api = cfg.tables.api();
        let v = api.lookup("a", "10.0.0.1").expect("ok").expect("entry");
        assert_eq!(v.refs, 0, "released with the Txn");
        let (s2, _t2) = run();
        assert_eq!(s2, 200);
        let (s3, _t3) = run();
        assert_eq!(s3, 429);
        assert_eq!(api.lookup("a", "10.0.0.1").expect("ok").expect("e").refs, 2);
    }
}
