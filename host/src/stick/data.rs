//! What an entry stores: data types, a table's layout, and HAProxy's
//! sliding-window rate counter.
//!
//! Every stored value lives in one or two `AtomicU64` words of the entry, so
//! updates are single atomic operations and are never lost. A table's
//! [`Schema`] says which values it stores and at which word.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::config::units::parse_duration;

/// Most elements of a `gpc(n)` / `gpt(n)` / `gpc_rate(n,...)` array (HAProxy's limit).
pub const MAX_ARRAY: usize = 100;

/// A kind of stored data. Array kinds (`Gpt`, `Gpc`, `GpcRate`) need an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataKind {
    ServerId,
    Gpt,
    Gpc,
    GpcRate,
    ConnCnt,
    ConnCur,
    ConnRate,
    SessCnt,
    SessRate,
    HttpReqCnt,
    HttpReqRate,
    HttpErrCnt,
    HttpErrRate,
    HttpFailCnt,
    HttpFailRate,
    BytesInCnt,
    BytesInRate,
    BytesOutCnt,
    BytesOutRate,
}

/// Scalar (non-array) kinds with their names, in display order.
const SCALARS: [(DataKind, &str); 16] = [
    (DataKind::ServerId, "server_id"),
    (DataKind::ConnCnt, "conn_cnt"),
    (DataKind::ConnCur, "conn_cur"),
    (DataKind::ConnRate, "conn_rate"),
    (DataKind::SessCnt, "sess_cnt"),
    (DataKind::SessRate, "sess_rate"),
    (DataKind::HttpReqCnt, "http_req_cnt"),
    (DataKind::HttpReqRate, "http_req_rate"),
    (DataKind::HttpErrCnt, "http_err_cnt"),
    (DataKind::HttpErrRate, "http_err_rate"),
    (DataKind::HttpFailCnt, "http_fail_cnt"),
    (DataKind::HttpFailRate, "http_fail_rate"),
    (DataKind::BytesInCnt, "bytes_in_cnt"),
    (DataKind::BytesInRate, "bytes_in_rate"),
    (DataKind::BytesOutCnt, "bytes_out_cnt"),
    (DataKind::BytesOutRate, "bytes_out_rate"),
];

impl DataKind {
    /// Whether values of this kind are rates (need a period).
    pub fn is_rate(self) -> bool {
        matches!(
            self,
            DataKind::GpcRate
                | DataKind::ConnRate
                | DataKind::SessRate
                | DataKind::HttpReqRate
                | DataKind::HttpErrRate
                | DataKind::HttpFailRate
                | DataKind::BytesInRate
                | DataKind::BytesOutRate
        )
    }

    /// Whether this kind is an array (`gpt`, `gpc`, `gpc_rate`).
    pub fn is_array(self) -> bool {
        matches!(self, DataKind::Gpt | DataKind::Gpc | DataKind::GpcRate)
    }

    /// Position in [`SCALARS`] (a match, not a search: this is on the request path).
    #[inline]
    fn scalar_index(self) -> Option<usize> {
        Some(match self {
            DataKind::ServerId => 0,
            DataKind::ConnCnt => 1,
            DataKind::ConnCur => 2,
            DataKind::ConnRate => 3,
            DataKind::SessCnt => 4,
            DataKind::SessRate => 5,
            DataKind::HttpReqCnt => 6,
            DataKind::HttpReqRate => 7,
            DataKind::HttpErrCnt => 8,
            DataKind::HttpErrRate => 9,
            DataKind::HttpFailCnt => 10,
            DataKind::HttpFailRate => 11,
            DataKind::BytesInCnt => 12,
            DataKind::BytesInRate => 13,
            DataKind::BytesOutCnt => 14,
            DataKind::BytesOutRate => 15,
            DataKind::Gpt | DataKind::Gpc | DataKind::GpcRate => return None,
        })
    }
}

/// One stored value: a kind and, for arrays, an element index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DataRef {
    pub kind: DataKind,
    /// Element index for array kinds; 0 otherwise.
    pub idx: u8,
}

impl DataRef {
    /// A scalar data reference.
    pub const fn scalar(kind: DataKind) -> DataRef {
        DataRef { kind, idx: 0 }
    }

    /// Parses a data name as used by fetches, filters and the API:
    /// `http_req_rate`, `conn_cur`, `gpc0`, `gpc12`, `gpt0`, `gpc1_rate`,
    /// and the array forms `gpc(3)`, `gpt(0)`, `gpc_rate(2)`.
    pub fn parse(name: &str) -> Option<DataRef> {
        if let Some((k, _)) = SCALARS.iter().find(|(_, n)| *n == name) {
            return Some(DataRef::scalar(*k));
        }
        fn paren(s: &str) -> Option<&str> {
            s.strip_prefix('(').and_then(|s| s.strip_suffix(')'))
        }
        let array = |kind: DataKind, digits: &str| -> Option<DataRef> {
            if digits.is_empty() || digits.len() > 2 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            let idx: u8 = digits.parse().ok()?;
            (usize::from(idx) < MAX_ARRAY).then_some(DataRef { kind, idx })
        };
        if let Some(rest) = name.strip_prefix("gpc_rate") {
            return array(DataKind::GpcRate, paren(rest)?);
        }
        if let Some(rest) = name.strip_prefix("gpc") {
            if let Some(d) = rest.strip_suffix("_rate") {
                return array(DataKind::GpcRate, d);
            }
            return array(DataKind::Gpc, paren(rest).unwrap_or(rest));
        }
        if let Some(rest) = name.strip_prefix("gpt") {
            return array(DataKind::Gpt, paren(rest).unwrap_or(rest));
        }
        None
    }

    /// Every data name [`DataRef::parse`] accepts (array kinds shown with index 0), for messages.
    pub fn known_names() -> Vec<&'static str> {
        let mut v: Vec<&str> = SCALARS.iter().map(|(_, n)| *n).collect();
        v.extend(["gpt0", "gpc0", "gpc1", "gpc0_rate", "gpc1_rate"]);
        v
    }
}

impl fmt::Display for DataRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            DataKind::Gpt => write!(f, "gpt{}", self.idx),
            DataKind::Gpc => write!(f, "gpc{}", self.idx),
            DataKind::GpcRate => write!(f, "gpc{}_rate", self.idx),
            k => {
                let name = SCALARS
                    .iter()
                    .find(|(s, _)| *s == k)
                    .map_or("?", |(_, n)| n);
                f.write_str(name)
            }
        }
    }
}

/// Where one stored value lives in an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// First word (rates use two).
    pub word: u16,
    /// Rate period in ms; 0 for counters.
    pub period: u32,
}

/// The values a table stores and where: built once from the `store` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    scalars: [Option<Slot>; 16],
    gpt: Vec<Option<Slot>>,
    gpc: Vec<Option<Slot>>,
    gpc_rate: Vec<Option<Slot>>,
    words: usize,
    /// `gpt(n)`, `gpc(n)`, `gpc_rate(n,p)` were declared in their array form
    /// (HAProxy replicates those as other data types than `gpt0`/`gpc0`...).
    arrays: [bool; 3],
}

impl Schema {
    /// Builds a schema from `store` items such as `"http_req_rate(10s)"`,
    /// `"gpc0"`, `"gpc(3)"`, `"gpc_rate(2,1m)"`; `Err((item index, message))`.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Schema, (usize, String)> {
        let mut s = Schema::default();
        let mut seen: Vec<DataRef> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let text = item.as_ref().trim();
            let (name, args) = match text.split_once('(') {
                Some((n, rest)) => {
                    let Some(args) = rest.strip_suffix(')') else {
                        return Err((i, format!("missing ')' in {text:?}")));
                    };
                    (n.trim(), Some(args))
                }
                None => (text, None),
            };
            let args: Vec<&str> = args
                .map(|a| a.split(',').map(str::trim).collect())
                .unwrap_or_default();
            let period = |a: &str| -> Result<u32, (usize, String)> {
                let d = parse_duration(a).map_err(|m| (i, format!("in {text:?}: {m}")))?;
                let ms = u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
                if ms == 0 || d.as_millis() > u128::from(u32::MAX) {
                    return Err((
                        i,
                        format!("in {text:?}: a rate period must be between 1ms and 49 days"),
                    ));
                }
                Ok(ms)
            };
            let count = |a: &str| -> Result<usize, (usize, String)> {
                match a.parse::<usize>() {
                    Ok(n @ 1..=MAX_ARRAY) => Ok(n),
                    _ => Err((
                        i,
                        format!("in {text:?}: the array size must be between 1 and {MAX_ARRAY}"),
                    )),
                }
            };
            // (refs to add, period)
            let (refs, per): (Vec<DataRef>, u32) = match (name, args.as_slice()) {
                ("gpc", [n]) => {
                    s.arrays[1] = true;
                    (arr(DataKind::Gpc, count(n)?), 0)
                }
                ("gpt", [n]) => {
                    s.arrays[0] = true;
                    (arr(DataKind::Gpt, count(n)?), 0)
                }
                ("gpc_rate", [n, p]) => {
                    s.arrays[2] = true;
                    (arr(DataKind::GpcRate, count(n)?), period(p)?)
                }
                ("gpc" | "gpt", _) => {
                    return Err((i, format!("{name} needs an array size, e.g. \"{name}(2)\"")));
                }
                ("gpc_rate", _) => {
                    return Err((
                        i,
                        "gpc_rate needs a size and a period, e.g. \"gpc_rate(2,10s)\"".into(),
                    ));
                }
                ("gpt0", []) => (
                    vec![DataRef {
                        kind: DataKind::Gpt,
                        idx: 0,
                    }],
                    0,
                ),
                ("gpc0" | "gpc1", []) => (
                    vec![DataRef {
                        kind: DataKind::Gpc,
                        idx: u8::from(name == "gpc1"),
                    }],
                    0,
                ),
                ("gpc0_rate" | "gpc1_rate", [p]) => (
                    vec![DataRef {
                        kind: DataKind::GpcRate,
                        idx: u8::from(name == "gpc1_rate"),
                    }],
                    period(p)?,
                ),
                (n, a) => {
                    let Some(r) = DataRef::parse(n).filter(|r| !r.kind.is_array()) else {
                        return Err((
                            i,
                            format!(
                                "unknown data type {n:?}; known: server_id, gpt0, gpt(n), gpc0, gpc1, gpc(n), gpc0_rate(period), gpc1_rate(period), gpc_rate(n,period), conn_cnt, conn_cur, conn_rate(period), sess_cnt, sess_rate(period), http_req_cnt, http_req_rate(period), http_err_cnt, http_err_rate(period), http_fail_cnt, http_fail_rate(period), bytes_in_cnt, bytes_in_rate(period), bytes_out_cnt, bytes_out_rate(period)"
                            ),
                        ));
                    };
                    match (r.kind.is_rate(), a) {
                        (true, [p]) => (vec![r], period(p)?),
                        (true, _) => {
                            return Err((i, format!("{n} needs a period, e.g. \"{n}(10s)\"")));
                        }
                        (false, []) => (vec![r], 0),
                        (false, _) => {
                            return Err((i, format!("{n} takes no argument; write just \"{n}\"")));
                        }
                    }
                }
            };
            for r in refs {
                if seen.contains(&r) {
                    return Err((i, format!("{r} is stored twice")));
                }
                seen.push(r);
                let words = if r.kind.is_rate() { 2 } else { 1 };
                let slot = Slot {
                    word: u16::try_from(s.words).unwrap_or(u16::MAX),
                    period: per,
                };
                s.words += words;
                match r.kind {
                    DataKind::Gpt => set_elem(&mut s.gpt, r.idx, slot),
                    DataKind::Gpc => set_elem(&mut s.gpc, r.idx, slot),
                    DataKind::GpcRate => set_elem(&mut s.gpc_rate, r.idx, slot),
                    k => {
                        if let Some(j) = k.scalar_index() {
                            s.scalars[j] = Some(slot);
                        }
                    }
                }
            }
        }
        Ok(s)
    }

    /// Whether `kind` (`Gpt`, `Gpc` or `GpcRate`) was declared in its array form.
    pub fn array_form(&self, kind: DataKind) -> bool {
        match kind {
            DataKind::Gpt => self.arrays[0],
            DataKind::Gpc => self.arrays[1],
            DataKind::GpcRate => self.arrays[2],
            _ => false,
        }
    }

    /// Number of `u64` words an entry needs.
    pub fn words(&self) -> usize {
        self.words
    }

    /// Where `r` is stored, if this table stores it.
    #[inline]
    pub fn slot(&self, r: DataRef) -> Option<Slot> {
        let arr = |v: &[Option<Slot>]| v.get(usize::from(r.idx)).copied().flatten();
        match r.kind {
            DataKind::Gpt => arr(&self.gpt),
            DataKind::Gpc => arr(&self.gpc),
            DataKind::GpcRate => arr(&self.gpc_rate),
            k => k.scalar_index().and_then(|i| self.scalars[i]),
        }
    }

    /// Whether `r` is stored.
    pub fn has(&self, r: DataRef) -> bool {
        self.slot(r).is_some()
    }

    /// Every stored value with its slot, in HAProxy's display order.
    pub fn stored(&self) -> Vec<(DataRef, Slot)> {
        let mut out = Vec::new();
        let arr = |out: &mut Vec<(DataRef, Slot)>, kind, v: &[Option<Slot>]| {
            for (i, s) in v.iter().enumerate() {
                if let (Some(s), Ok(idx)) = (s, u8::try_from(i)) {
                    out.push((DataRef { kind, idx }, *s));
                }
            }
        };
        if let Some(s) = self.scalars[0] {
            out.push((DataRef::scalar(DataKind::ServerId), s));
        }
        arr(&mut out, DataKind::Gpt, &self.gpt);
        arr(&mut out, DataKind::Gpc, &self.gpc);
        arr(&mut out, DataKind::GpcRate, &self.gpc_rate);
        for (j, (k, _)) in SCALARS.iter().enumerate().skip(1) {
            if let Some(s) = self.scalars[j] {
                out.push((DataRef::scalar(*k), s));
            }
        }
        out
    }

    /// The `store` list this schema was built from, normalised (e.g. `http_req_rate(10000)`).
    pub fn describe(&self) -> Vec<String> {
        self.stored()
            .into_iter()
            .map(|(r, s)| {
                if s.period > 0 {
                    format!("{r}({})", s.period)
                } else {
                    r.to_string()
                }
            })
            .collect()
    }
}

fn arr(kind: DataKind, n: usize) -> Vec<DataRef> {
    (0..n)
        .filter_map(|i| u8::try_from(i).ok())
        .map(|idx| DataRef { kind, idx })
        .collect()
}

fn set_elem(v: &mut Vec<Option<Slot>>, idx: u8, slot: Slot) {
    let i = usize::from(idx);
    if v.len() <= i {
        v.resize(i + 1, None);
    }
    v[i] = Some(slot);
}

// ---------------------------------------------------------------------------
// Value operations on an entry's words
// ---------------------------------------------------------------------------

/// Reads the value at `slot` (a rate is read at tick `now`).
#[inline]
pub fn read(words: &[AtomicU64], slot: Slot, now: u64) -> u64 {
    let w = usize::from(slot.word);
    if slot.period > 0 {
        match (words.get(w), words.get(w + 1)) {
            (Some(a), Some(b)) => u64::from(rate_read(a, b, slot.period, now)),
            _ => 0,
        }
    } else {
        words.get(w).map_or(0, |a| a.load(Relaxed))
    }
}

/// Adds `n` to the value at `slot` (an event count for a rate).
#[inline]
pub fn add(words: &[AtomicU64], slot: Slot, now: u64, n: u64) {
    let w = usize::from(slot.word);
    if slot.period > 0 {
        if let (Some(a), Some(b)) = (words.get(w), words.get(w + 1)) {
            rate_add(a, b, slot.period, now, n);
        }
    } else if let Some(a) = words.get(w) {
        // fetch_update keeps the counter from wrapping to 0 (HAProxy wraps; a
        // saturated counter is the less surprising failure for rate limits).
        let _ = a.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_add(n)));
    }
}

/// Subtracts `n` from a counter, stopping at 0 (rates cannot go down).
#[inline]
pub fn sub(words: &[AtomicU64], slot: Slot, n: u64) {
    if slot.period == 0
        && let Some(a) = words.get(usize::from(slot.word))
    {
        let _ = a.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
    }
}

/// Sets the value at `slot`. For a rate, like HAProxy's `set table`: the
/// current period holds `v` and the previous one nothing.
pub fn set(words: &[AtomicU64], slot: Slot, now: u64, v: u64) {
    let w = usize::from(slot.word);
    if slot.period > 0 {
        if let (Some(a), Some(b)) = (words.get(w), words.get(w + 1)) {
            let idx = window(now, slot.period);
            let v = u32::try_from(v).unwrap_or(u32::MAX);
            b.store(pack(idx.wrapping_sub(1), 0), Relaxed);
            a.store(pack(idx, v), Relaxed);
        }
    } else if let Some(a) = words.get(w) {
        a.store(v, Relaxed);
    }
}

/// Sets a counter and returns its previous value (rates: the previous rate).
pub fn swap(words: &[AtomicU64], slot: Slot, now: u64, v: u64) -> u64 {
    if slot.period > 0 {
        let old = read(words, slot, now);
        set(words, slot, now, v);
        old
    } else {
        words
            .get(usize::from(slot.word))
            .map_or(0, |a| a.swap(v, Relaxed))
    }
}

// ---------------------------------------------------------------------------
// Sliding-window rate (HAProxy's freq_ctr_period)
// ---------------------------------------------------------------------------
//
// A rate is two words. Word A packs (window index << 32 | count in that
// window); word B packs (index of the previous window << 32 | its count).
// Windows are aligned on multiples of the period. An add is one CAS on A
// (retried on contention, never lost); when it finds A in an older window it
// swaps A to the new window and then publishes the old count into B. The
// read is HAProxy's: curr + prev * (period - elapsed) / period, where
// elapsed is the time since the current window started.
//
// Counts are 32-bit per window, as in HAProxy (saturating here). Window
// indexes are 32-bit too and compared with wrapping arithmetic, so a period
// of 1ms wraps after 49 days, like HAProxy's ticks.

#[inline]
fn window(now: u64, period: u32) -> u32 {
    // Truncation intended: indexes compare with wrapping arithmetic.
    (now / u64::from(period)) as u32
}

#[inline]
fn pack(idx: u32, count: u32) -> u64 {
    (u64::from(idx) << 32) | u64::from(count)
}

#[inline]
fn unpack(w: u64) -> (u32, u32) {
    ((w >> 32) as u32, w as u32)
}

/// Adds `n` events at tick `now` to the rate in words `a`/`b`.
pub fn rate_add(a: &AtomicU64, b: &AtomicU64, period: u32, now: u64, n: u64) {
    let idx = window(now, period);
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    let mut cur = a.load(Relaxed);
    loop {
        let (ai, c) = unpack(cur);
        let ahead = (ai.wrapping_sub(idx) as i32) > 0;
        let (next, rotated) = if ai == idx || ahead {
            // Same window, or another thread with a later clock already moved on.
            (pack(ai, c.saturating_add(n)), false)
        } else {
            (pack(idx, n), true)
        };
        match a.compare_exchange_weak(cur, next, Relaxed, Relaxed) {
            Ok(_) => {
                if rotated {
                    publish_prev(b, ai, c);
                }
                return;
            }
            Err(actual) => cur = actual,
        }
    }
}

/// Stores (idx, count) as the previous window unless B already holds a newer one.
fn publish_prev(b: &AtomicU64, idx: u32, count: u32) {
    let mut cur = b.load(Relaxed);
    loop {
        let (bi, _) = unpack(cur);
        if cur != 0 && (bi.wrapping_sub(idx) as i32) > 0 {
            return;
        }
        match b.compare_exchange_weak(cur, pack(idx, count), Relaxed, Relaxed) {
            Ok(_) => return,
            Err(actual) => cur = actual,
        }
    }
}

/// Reads the rate in words `a`/`b` at tick `now`.
pub fn rate_read(a: &AtomicU64, b: &AtomicU64, period: u32, now: u64) -> u32 {
    let idx = window(now, period);
    let (ai, c) = unpack(a.load(Relaxed));
    let (curr, prev) = match idx.wrapping_sub(ai) {
        0 => {
            let (bi, p) = unpack(b.load(Relaxed));
            (c, if bi == ai.wrapping_sub(1) { p } else { 0 })
        }
        1 => (0, c),
        d if (d as i32) < 0 => return c, // clock behind the last writer: report its window
        _ => (0, 0),
    };
    let period = u64::from(period);
    let elapsed = now % period;
    let from_prev = u64::from(prev) * (period - elapsed) / period;
    u32::try_from(u64::from(curr) + from_prev).unwrap_or(u32::MAX)
}

/// A rate as HAProxy's peers protocol sends it at tick `now`: ms since its
/// current period started, the current period's count, the previous one's.
pub fn rate_to_wire(words: &[AtomicU64], slot: Slot, now: u64) -> (u32, u32, u32) {
    let w = usize::from(slot.word);
    let (Some(a), Some(b)) = (words.get(w), words.get(w + 1)) else {
        return (u32::MAX, 0, 0);
    };
    let period = u64::from(slot.period.max(1));
    let (ai, c) = unpack(a.load(Relaxed));
    let (bi, p) = unpack(b.load(Relaxed));
    let idx = window(now, slot.period.max(1));
    // Windows behind: a later clock on another thread counts as "now".
    let behind = (idx.wrapping_sub(ai) as i32).max(0) as u64;
    let elapsed = behind
        .saturating_mul(period)
        .saturating_add(now % period)
        .min(u64::from(u32::MAX));
    let prev = if bi == ai.wrapping_sub(1) { p } else { 0 };
    (elapsed as u32, c, prev)
}

/// Sets a rate from HAProxy's wire form received at tick `now` (a peer's
/// push overwrites the local value, as in HAProxy). The peer's periods start
/// `elapsed` ms ago while ours are aligned on multiples of the period, so
/// the counts are shifted between the two windows such that the rate read
/// now is exactly the peer's; it then decays with our window.
pub fn rate_from_wire(
    words: &[AtomicU64],
    slot: Slot,
    now: u64,
    elapsed: u32,
    curr: u32,
    prev: u32,
) {
    let w = usize::from(slot.word);
    let (Some(a), Some(b)) = (words.get(w), words.get(w + 1)) else {
        return;
    };
    let period = u64::from(slot.period.max(1));
    let e = u64::from(elapsed);
    let (curr, prev, e) = if e >= 2 * period {
        (0, 0, 0)
    } else if e >= period {
        (0, u64::from(curr), e - period)
    } else {
        (u64::from(curr), u64::from(prev), e)
    };
    let el = now % period;
    let (c2, p2) = if el <= e {
        (curr, prev * (period - e) / (period - el))
    } else {
        (curr + prev * (el - e) / period, prev)
    };
    let idx = window(now, slot.period.max(1));
    let sat = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    b.store(pack(idx.wrapping_sub(1), sat(p2)), Relaxed);
    a.store(pack(idx, sat(c2)), Relaxed);
}

/// Stores a counter pushed by a peer (no rate: see [`rate_from_wire`]).
pub fn counter_from_wire(words: &[AtomicU64], slot: Slot, v: u64) {
    if slot.period == 0
        && let Some(a) = words.get(usize::from(slot.word))
    {
        a.store(v, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(period: u32) -> (AtomicU64, AtomicU64, u32) {
        (AtomicU64::new(0), AtomicU64::new(0), period)
    }

    #[test]
    fn rate_worked_examples() {
        // Period 10s. 20 events in window [10s, 20s), 5 in [20s, 30s).
        let (a, b, p) = rate(10_000);
        for i in 0..20 {
            rate_add(&a, &b, p, 10_000 + i * 400, 1);
        }
        assert_eq!(
            rate_read(&a, &b, p, 19_999),
            20,
            "whole window, no previous"
        );
        for i in 0..5 {
            rate_add(&a, &b, p, 20_000 + i * 100, 1);
        }
        // 2.5s into the new window: 5 + 20 * 7.5/10 = 20.
        assert_eq!(rate_read(&a, &b, p, 22_500), 20);
        // 0.5s into the window: 5 + 20 * 9.5/10 = 24.
        assert_eq!(rate_read(&a, &b, p, 20_500), 24);
        // At 29.999s: 5 + 20 * 1/10000 = 5 (integer division, as HAProxy).
        assert_eq!(rate_read(&a, &b, p, 29_999), 5);
        // Next window with no event: the 5 fade out: at 35s, 0 + 5 * 5/10 = 2.
        assert_eq!(rate_read(&a, &b, p, 35_000), 2);
        // Two windows later everything is gone.
        assert_eq!(rate_read(&a, &b, p, 40_000), 0);
        assert_eq!(rate_read(&a, &b, p, 1_000_000), 0);
        // An event after a long pause starts fresh (no stale previous window).
        rate_add(&a, &b, p, 1_000_000, 3);
        assert_eq!(rate_read(&a, &b, p, 1_005_000), 3);
    }

    #[test]
    fn rate_one_second_example_from_haproxy_docs() {
        // 1s period: 100 events in the previous second, 30 so far, 300ms in → 30 + 100*0.7 = 100.
        let (a, b, p) = rate(1_000);
        rate_add(&a, &b, p, 5_000, 100);
        rate_add(&a, &b, p, 6_100, 30);
        assert_eq!(rate_read(&a, &b, p, 6_300), 100);
    }

    #[test]
    fn rate_set_holds_for_the_period_then_fades() {
        let (a, b, p) = rate(10_000);
        rate_add(&a, &b, p, 1_000, 50);
        let s = Slot { word: 0, period: p };
        let words = [a, b];
        set(&words, s, 12_000, 7);
        assert_eq!(read(&words, s, 12_000), 7);
        assert_eq!(read(&words, s, 19_999), 7);
        assert_eq!(read(&words, s, 25_000), 3);
    }

    #[test]
    fn concurrent_rate_adds_are_never_lost() {
        let words = std::sync::Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let w = words.clone();
                std::thread::spawn(move || {
                    for _ in 0..50_000 {
                        rate_add(&w[0], &w[1], 60_000, 1_000, 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(rate_read(&words[0], &words[1], 60_000, 1_000), 200_000);
    }

    #[test]
    fn concurrent_rotation_keeps_every_event_in_some_window() {
        // Threads add while the window rotates: curr + prev == all events.
        let words = std::sync::Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let clock = std::sync::Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (w, c) = (words.clone(), clock.clone());
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        // Half the events land in window 0, half in window 1.
                        let now = if i < 10_000 { 500 } else { 1_500 };
                        c.fetch_max(now, Relaxed);
                        rate_add(&w[0], &w[1], 1_000, now, 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        // At the start of window 1, the rate is curr + prev * 1000/1000.
        assert_eq!(rate_read(&words[0], &words[1], 1_000, 1_000), 80_000);
    }

    #[test]
    fn schema_parsing() {
        let s = Schema::parse(&[
            "http_req_rate(10s)",
            "gpc0",
            "conn_cur",
            "gpc(3)",
            "gpt0",
            "gpc_rate(2,1m)",
        ]);
        let e = s.expect_err("gpc0 twice");
        assert_eq!(e.0, 3);
        assert!(e.1.contains("gpc0 is stored twice"), "{}", e.1);

        let s = Schema::parse(&[
            "http_req_rate(10s)",
            "gpc(3)",
            "conn_cur",
            "gpt0",
            "gpc_rate(2,1m)",
            "bytes_out_cnt",
        ])
        .expect("valid");
        assert_eq!(s.words(), 2 + 3 + 1 + 1 + 4 + 1);
        let rate = s
            .slot(DataRef::parse("http_req_rate").expect("name"))
            .expect("stored");
        assert_eq!(rate.period, 10_000);
        assert!(s.has(DataRef::parse("gpc2").expect("name")));
        assert!(s.has(DataRef::parse("gpc(2)").expect("name")));
        assert!(!s.has(DataRef::parse("gpc3").expect("name")));
        assert!(s.has(DataRef::parse("gpc1_rate").expect("name")));
        assert!(!s.has(DataRef::parse("conn_cnt").expect("name")));
        assert_eq!(
            s.describe(),
            [
                "gpt0",
                "gpc0",
                "gpc1",
                "gpc2",
                "gpc0_rate(60000)",
                "gpc1_rate(60000)",
                "conn_cur",
                "http_req_rate(10000)",
                "bytes_out_cnt"
            ]
        );

        for (bad, msg) in [
            (&["http_req_rate"][..], "needs a period"),
            (&["conn_cur(10s)"][..], "takes no argument"),
            (&["http_req_rat(10s)"][..], "unknown data type"),
            (&["gpc(0)"][..], "between 1 and 100"),
            (&["gpc(101)"][..], "between 1 and 100"),
            (&["gpc"][..], "needs an array size"),
            (&["http_req_rate(0s)"][..], "between 1ms"),
            (&["http_req_rate(ten)"][..], "invalid duration"),
            (&["gpc_rate(2)"][..], "a size and a period"),
        ] {
            let e = Schema::parse(bad).expect_err("invalid");
            assert!(e.1.contains(msg), "{bad:?}: {}", e.1);
        }
    }

    #[test]
    fn data_names() {
        for n in [
            "gpc0",
            "gpc7",
            "gpt0",
            "gpc1_rate",
            "conn_cur",
            "http_fail_rate",
        ] {
            assert_eq!(DataRef::parse(n).expect(n).to_string(), n);
        }
        assert_eq!(
            DataRef::parse("gpc_rate(3)").expect("ok").to_string(),
            "gpc3_rate"
        );
        for bad in ["gpc", "gpc100", "gpcx", "gpc-1", "foo", "gpc_rate", "gpc(1"] {
            assert!(DataRef::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn counters_saturate() {
        let words = [AtomicU64::new(u64::MAX - 1)];
        let s = Slot { word: 0, period: 0 };
        add(&words, s, 0, 5);
        assert_eq!(read(&words, s, 0), u64::MAX);
        sub(&words, s, u64::MAX);
        assert_eq!(read(&words, s, 0), 0);
        sub(&words, s, 1);
        assert_eq!(read(&words, s, 0), 0);
        assert_eq!(swap(&words, s, 0, 9), 0);
    }
}
