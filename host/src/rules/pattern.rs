//! Map files as HAProxy reads them (`key value` per line), indexed for one
//! match method: exact keys in a hash map, longest-prefix methods (`beg`,
//! `ip`) by key length, the others tried in file order — the same winner
//! HAProxy's trees and lists pick. Used by the Lua `Map` class.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use regex::Regex;

use super::cond::{
    DIR_DELIMS, DOM_DELIMS, IpNet, MatchMethod, find_from, match_word, parse_int_range, parse_net,
};
use super::fetch::compile_regex;

/// Largest map file read (HAProxy has no limit; this bounds a typo'd path to a huge file).
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// Most entries one file may hold after run-time additions (HAProxy has no
/// limit; this bounds a script that adds a key per request). Additions past
/// it are dropped, as HAProxy drops an entry it cannot allocate.
pub const MAX_ENTRIES: usize = 1 << 20;

/// A map loaded from a file: keys matched by one method, each with a value
/// (none for an entry added by `core.add_acl`).
#[derive(Debug)]
pub struct PatternMap {
    method: MatchMethod,
    values: Box<[Option<Box<[u8]>>]>,
    index: Index,
}

/// Keys of one length (or addresses under one mask) to their entry.
type KeysTo = HashMap<Box<[u8]>, u32>;

/// How the keys are searched; `u32` values index `PatternMap::values`.
#[derive(Debug)]
enum Index {
    /// Exact keys; the first of duplicate keys wins.
    Exact(KeysTo),
    /// Longest prefix: keys by length, longest first.
    Prefix(Vec<(usize, KeysTo)>),
    /// Longest network: networks by mask, longest first (IPv4 mapped into IPv6).
    Ip(Vec<(u128, HashMap<u128, u32>)>),
    /// `sub`, `end`, `dir`, `dom`: first match in file order.
    Words(Vec<(Box<[u8]>, u32)>),
    Regex(Vec<(Regex, u32)>),
    Int(Vec<((i64, i64), u32)>),
}

/// Why a map file was refused; `line` is 1-based, 0 for the whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    pub line: usize,
    pub message: String,
}

impl PatternMap {
    /// Reads and indexes `path`.
    pub fn load(path: &Path, method: MatchMethod) -> Result<PatternMap, String> {
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("failed to open pattern file <{}>: {e}", path.display()))?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(format!(
                "pattern file <{}> is {} bytes; at most {MAX_FILE_BYTES} are read",
                path.display(),
                meta.len()
            ));
        }
        let text = std::fs::read(path)
            .map_err(|e| format!("failed to open pattern file <{}>: {e}", path.display()))?;
        PatternMap::parse(&text, method).map_err(|e| match e.line {
            0 => e.message,
            n => format!("{} at line {n} of file <{}>", e.message, path.display()),
        })
    }

    /// Indexes the text of a map file.
    pub fn parse(text: &[u8], method: MatchMethod) -> Result<PatternMap, PatternError> {
        let mut values = Vec::new();
        let mut b = Builder::new(method)?;
        for (n, line) in text.split(|&c| c == b'\n').enumerate() {
            let Some((key, value)) = split_line(line) else {
                continue;
            };
            let id = u32::try_from(values.len()).map_err(|_| PatternError {
                line: n + 1,
                message: "too many entries".into(),
            })?;
            b.add(key, id).map_err(|message| PatternError {
                line: n + 1,
                message,
            })?;
            values.push(Some(Box::from(value)));
        }
        Ok(PatternMap {
            method,
            values: values.into_boxed_slice(),
            index: b.finish(),
        })
    }

    /// Indexes entries in order. An entry whose key `method` cannot read
    /// is an error when `strict` (loading), else skipped (a rebuild: such
    /// keys are refused when added).
    fn from_entries(
        entries: &[Entry],
        method: MatchMethod,
        strict: bool,
    ) -> Result<PatternMap, PatternError> {
        let mut values = Vec::with_capacity(entries.len());
        let mut b = Builder::new(method)?;
        for e in entries {
            let id = u32::try_from(values.len()).map_err(|_| PatternError {
                line: e.line,
                message: "too many entries".into(),
            })?;
            match b.add(&e.key, id) {
                Ok(()) => values.push(e.value.clone()),
                Err(message) if strict => {
                    return Err(PatternError {
                        line: e.line,
                        message,
                    });
                }
                Err(_) => {}
            }
        }
        Ok(PatternMap {
            method,
            values: values.into_boxed_slice(),
            index: b.finish(),
        })
    }

    /// The match method the keys were indexed for.
    pub fn method(&self) -> MatchMethod {
        self.method
    }

    /// Entries in the file.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the file held no entry.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The value of the entry `key` matches; for `int` maps, `key` must be a
    /// decimal integer and for `ip` maps an address, else nothing matches.
    pub fn lookup(&self, key: &[u8]) -> Option<&[u8]> {
        let id = match &self.index {
            Index::Exact(m) => m.get(key).copied(),
            Index::Prefix(by_len) => by_len
                .iter()
                .filter(|(len, _)| *len <= key.len())
                .find_map(|(len, m)| key.get(..*len).and_then(|p| m.get(p)).copied()),
            Index::Ip(by_mask) => {
                let ip: IpAddr = std::str::from_utf8(key).ok()?.trim().parse().ok()?;
                let bits = super::cond::ip_bits(ip);
                by_mask
                    .iter()
                    .find_map(|(mask, m)| m.get(&(bits & mask)).copied())
            }
            Index::Words(pats) => pats
                .iter()
                .find(|(p, _)| word_test(self.method, key, p))
                .map(|&(_, id)| id),
            Index::Regex(res) => {
                let text = String::from_utf8_lossy(key);
                res.iter()
                    .find(|(r, _)| r.is_match(&text))
                    .map(|&(_, id)| id)
            }
            Index::Int(_) => {
                let n = std::str::from_utf8(key).ok()?.trim().parse().ok()?;
                return self.lookup_int(n);
            }
        };
        self.value(id?)
    }

    /// The value of the entry an integer matches (`int` maps; others compare its decimal text).
    pub fn lookup_int(&self, n: i64) -> Option<&[u8]> {
        match &self.index {
            Index::Int(ranges) => ranges
                .iter()
                .find(|((lo, hi), _)| *lo <= n && n <= *hi)
                .and_then(|&(_, id)| self.value(id)),
            _ => self.lookup(n.to_string().as_bytes()),
        }
    }

    /// The entry's value; none for a key without one (`core.add_acl`), which
    /// still wins the lookup, as in HAProxy (a map lookup then finds nothing).
    fn value(&self, id: u32) -> Option<&[u8]> {
        self.values.get(usize::try_from(id).ok()?)?.as_deref()
    }
}

/// One entry of a file: its key as written and its value.
#[derive(Debug, Clone)]
struct Entry {
    key: Box<[u8]>,
    value: Option<Box<[u8]>>,
    /// Its line in the file (for load errors); 0 when added at run time.
    line: usize,
}

/// A file's map for one match method as the workers see it: the current
/// index and a version bumped after each change. Readers keep a copy
/// ([`MapReader`]) and take the lock only when the version moved.
#[derive(Debug)]
pub struct LiveMap {
    version: AtomicU64,
    current: RwLock<Arc<PatternMap>>,
}

impl LiveMap {
    fn new(map: PatternMap) -> LiveMap {
        LiveMap {
            version: AtomicU64::new(0),
            current: RwLock::new(Arc::new(map)),
        }
    }

    /// The current index (takes the read lock; see [`MapReader`] for lookups).
    pub fn snapshot(&self) -> Arc<PatternMap> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn publish(&self, map: PatternMap) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(map);
        // After the store: a reader that sees the new version reads the new map.
        self.version.fetch_add(1, Release);
    }
}

/// A worker's view of a [`LiveMap`]: the copy it last read and its version.
#[derive(Debug)]
pub struct MapReader {
    live: Arc<LiveMap>,
    seen: u64,
    map: Arc<PatternMap>,
}

impl MapReader {
    /// A reader of `live`, starting at its current index.
    pub fn new(live: Arc<LiveMap>) -> MapReader {
        let seen = live.version.load(Acquire);
        let map = live.snapshot();
        MapReader { live, seen, map }
    }

    /// The current index: one atomic load, and the read lock only after a change.
    pub fn get(&mut self) -> &PatternMap {
        let v = self.live.version.load(Acquire);
        if v != self.seen {
            self.map = self.live.snapshot();
            self.seen = v;
        }
        &self.map
    }
}

/// HAProxy's `pat_ref`: a file's entries, changed at run time, and the
/// indexes built from them for each method a script asked for.
#[derive(Debug)]
pub struct PatternRef {
    state: Mutex<RefState>,
}

#[derive(Debug)]
struct RefState {
    entries: Vec<Entry>,
    /// Bytes of the entries' keys and values (bounded by [`MAX_FILE_BYTES`]).
    bytes: usize,
    maps: Vec<(MatchMethod, Arc<LiveMap>)>,
}

impl RefState {
    /// Whether `more` bytes more (and `less` fewer) stay within the bound.
    fn fits(&self, more: usize, less: usize) -> bool {
        self.bytes.saturating_sub(less).saturating_add(more)
            <= usize::try_from(MAX_FILE_BYTES).unwrap_or(usize::MAX)
    }
}

fn entry_bytes(e: &Entry) -> usize {
    e.key.len() + e.value.as_ref().map_or(0, |v| v.len())
}

/// What a run-time change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Entries changed (and every index was rebuilt).
    Changed,
    /// Nothing to do (`del_*` of an absent key, `add_acl` of a present one).
    Unchanged,
    /// The file holds [`MAX_ENTRIES`] or [`MAX_FILE_BYTES`]: the change was dropped.
    Full,
}

impl PatternRef {
    fn read(path: &Path) -> Result<PatternRef, String> {
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("failed to open pattern file <{}>: {e}", path.display()))?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(format!(
                "pattern file <{}> is {} bytes; at most {MAX_FILE_BYTES} are read",
                path.display(),
                meta.len()
            ));
        }
        let text = std::fs::read(path)
            .map_err(|e| format!("failed to open pattern file <{}>: {e}", path.display()))?;
        let entries: Vec<Entry> = text
            .split(|&c| c == b'\n')
            .enumerate()
            .filter_map(|(n, line)| {
                let (k, v) = split_line(line)?;
                Some(Entry {
                    key: Box::from(k),
                    value: Some(Box::from(v)),
                    line: n + 1,
                })
            })
            .collect();
        let bytes = entries.iter().map(entry_bytes).sum();
        Ok(PatternRef {
            state: Mutex::new(RefState {
                entries,
                bytes,
                maps: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RefState> {
        // A panic while holding the lock leaves consistent entries (each change
        // is applied before the rebuild): go on.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `core.set_map`: every entry with `key` gets `value`, or a new entry is appended.
    pub fn set(&self, key: &[u8], value: &[u8]) -> Change {
        let mut st = self.lock();
        let (mut n, mut old) = (0usize, 0usize);
        for e in st.entries.iter().filter(|e| &*e.key == key) {
            n += 1;
            old += e.value.as_ref().map_or(0, |v| v.len());
        }
        if n == 0 {
            return Self::append(&mut st, key, Some(value));
        }
        if !st.fits(value.len().saturating_mul(n), old) {
            return Change::Full;
        }
        for e in st.entries.iter_mut().filter(|e| &*e.key == key) {
            e.value = Some(Box::from(value));
        }
        st.bytes = st.bytes - old + value.len() * n;
        Self::rebuild(&st);
        Change::Changed
    }

    /// `core.add_acl`: appends `key` (without a value) unless an entry has it.
    pub fn add_key(&self, key: &[u8]) -> Change {
        let mut st = self.lock();
        if st.entries.iter().any(|e| &*e.key == key) {
            return Change::Unchanged;
        }
        Self::append(&mut st, key, None)
    }

    /// `core.del_map` / `core.del_acl`: removes every entry with `key`.
    pub fn delete(&self, key: &[u8]) -> Change {
        let mut st = self.lock();
        let before = st.entries.len();
        let mut freed = 0;
        st.entries.retain(|e| {
            let keep = &*e.key != key;
            if !keep {
                freed += entry_bytes(e);
            }
            keep
        });
        if st.entries.len() == before {
            return Change::Unchanged;
        }
        st.bytes -= freed;
        Self::rebuild(&st);
        Change::Changed
    }

    /// Appends an entry; like HAProxy's `pat_ref_add`, an entry a method
    /// cannot index (`not-an-ip` in an `ip` map) is dropped again.
    fn append(st: &mut RefState, key: &[u8], value: Option<&[u8]>) -> Change {
        let size = key.len() + value.map_or(0, <[u8]>::len);
        if st.entries.len() >= MAX_ENTRIES || !st.fits(size, 0) {
            return Change::Full;
        }
        let readable = st
            .maps
            .iter()
            .all(|(m, _)| Builder::new(*m).is_ok_and(|mut b| b.add(key, 0).is_ok()));
        if !readable {
            return Change::Unchanged;
        }
        st.entries.push(Entry {
            key: Box::from(key),
            value: value.map(Box::from),
            line: 0,
        });
        st.bytes += size;
        Self::rebuild(st);
        Change::Changed
    }

    fn rebuild(st: &RefState) {
        for (method, live) in &st.maps {
            // Every key was readable when it was added: this cannot fail.
            if let Ok(m) = PatternMap::from_entries(&st.entries, *method, false) {
                live.publish(m);
            }
        }
    }

    /// The index for `method`, built on first use from the current entries.
    fn live(&self, method: MatchMethod) -> Result<Arc<LiveMap>, PatternError> {
        let mut st = self.lock();
        if let Some((_, l)) = st.maps.iter().find(|(m, _)| *m == method) {
            return Ok(Arc::clone(l));
        }
        let map = PatternMap::from_entries(&st.entries, method, true)?;
        let live = Arc::new(LiveMap::new(map));
        st.maps.push((method, Arc::clone(&live)));
        Ok(live)
    }
}

/// Maps loaded so far, by file: every worker's Lua state (and a rebuilt
/// one), and every plugin of one config, share one [`PatternRef`] per file
/// instead of reading it again, and see each other's run-time changes.
#[derive(Debug, Default)]
pub struct PatternCache {
    files: Mutex<HashMap<PathBuf, Arc<PatternRef>>>,
}

impl PatternCache {
    /// The map of `path` for `method`, read on first use (only while scripts load).
    pub fn get_or_load(&self, path: &Path, method: MatchMethod) -> Result<Arc<LiveMap>, String> {
        let r = {
            // A panic while holding the lock leaves at worst a missing entry: go on.
            let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
            match files.get(path) {
                Some(r) => Arc::clone(r),
                None => {
                    let r = Arc::new(PatternRef::read(path)?);
                    files.insert(path.to_path_buf(), Arc::clone(&r));
                    r
                }
            }
        };
        r.live(method).map_err(|e| match e.line {
            0 => e.message,
            n => format!("{} at line {n} of file <{}>", e.message, path.display()),
        })
    }

    /// The loaded file `path` (`core.set_map` and friends), if any script loaded it.
    pub fn loaded(&self, path: &Path) -> Option<Arc<PatternRef>> {
        let files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        files.get(path).cloned()
    }
}

fn word_test(method: MatchMethod, s: &[u8], p: &[u8]) -> bool {
    match method {
        MatchMethod::Sub => find_from(s, p, 0, false).is_some(),
        MatchMethod::End => s.ends_with(p),
        MatchMethod::Dir => !p.is_empty() && match_word(s, p, DIR_DELIMS, false),
        MatchMethod::Dom => !p.is_empty() && match_word(s, p, DOM_DELIMS, false),
        _ => false,
    }
}

/// One map-file line as HAProxy splits it: `#` in the first column starts a
/// comment; the key is the first word after leading blanks, the value the
/// rest of the line after the blanks that follow it, trailing blanks cut.
/// Blank lines give `None`.
fn split_line(line: &[u8]) -> Option<(&[u8], &[u8])> {
    if line.first() == Some(&b'#') {
        return None;
    }
    // A CR or NUL ends the line, as in HAProxy's reader.
    let end = line
        .iter()
        .position(|&c| c == b'\r' || c == 0)
        .unwrap_or(line.len());
    let line = line.get(..end)?;
    let blank = |c: &u8| *c == b' ' || *c == b'\t';
    let start = line.iter().position(|c| !blank(c))?;
    let rest = line.get(start..)?;
    let key_len = rest.iter().position(blank).unwrap_or(rest.len());
    let (key, after) = rest.split_at(key_len);
    let value_start = after.iter().position(|c| !blank(c)).unwrap_or(after.len());
    let value = after.get(value_start..)?;
    let value_len = value.iter().rposition(|c| !blank(c)).map_or(0, |i| i + 1);
    Some((key, value.get(..value_len)?))
}

/// Collects keys into the method's index.
enum Builder {
    Exact(HashMap<Box<[u8]>, u32>),
    Prefix(HashMap<usize, HashMap<Box<[u8]>, u32>>),
    Ip(HashMap<u128, HashMap<u128, u32>>),
    Words(MatchMethod, Vec<(Box<[u8]>, u32)>),
    Regex(Vec<(Regex, u32)>),
    Int(Vec<((i64, i64), u32)>),
}

impl Builder {
    fn new(method: MatchMethod) -> Result<Builder, PatternError> {
        Ok(match method {
            MatchMethod::Str => Builder::Exact(HashMap::new()),
            MatchMethod::Beg => Builder::Prefix(HashMap::new()),
            MatchMethod::Ip => Builder::Ip(HashMap::new()),
            MatchMethod::Sub | MatchMethod::End | MatchMethod::Dir | MatchMethod::Dom => {
                Builder::Words(method, Vec::new())
            }
            MatchMethod::Reg => Builder::Regex(Vec::new()),
            MatchMethod::Int => Builder::Int(Vec::new()),
            MatchMethod::Found | MatchMethod::Bool | MatchMethod::Len => {
                return Err(PatternError {
                    line: 0,
                    message: format!(
                        "maps cannot match with -m {}; use str, beg, sub, dir, dom, end, reg, int or ip",
                        method.as_str()
                    ),
                });
            }
        })
    }

    fn add(&mut self, key: &[u8], id: u32) -> Result<(), String> {
        let text = || String::from_utf8_lossy(key).into_owned();
        match self {
            // The first of duplicate keys wins, as in HAProxy's unique trees.
            Builder::Exact(m) => {
                m.entry(Box::from(key)).or_insert(id);
            }
            Builder::Prefix(by_len) => {
                by_len
                    .entry(key.len())
                    .or_default()
                    .entry(Box::from(key))
                    .or_insert(id);
            }
            Builder::Ip(by_mask) => {
                let IpNet { addr, mask } = std::str::from_utf8(key)
                    .ok()
                    .and_then(parse_net)
                    .ok_or_else(|| format!("'{}' is not a valid IPv4 or IPv6 address", text()))?;
                by_mask.entry(mask).or_default().entry(addr).or_insert(id);
            }
            Builder::Words(method, pats) => {
                // Like HAProxy, delimiters at the ends of a dir/dom key are ignored.
                let delims: &[u8] = match method {
                    MatchMethod::Dir => DIR_DELIMS,
                    MatchMethod::Dom => DOM_DELIMS,
                    _ => &[],
                };
                let start = key
                    .iter()
                    .position(|c| !delims.contains(c))
                    .unwrap_or(key.len());
                let end = key
                    .iter()
                    .rposition(|c| !delims.contains(c))
                    .map_or(start, |i| i + 1);
                pats.push((Box::from(key.get(start..end).unwrap_or_default()), id));
            }
            Builder::Regex(res) => {
                let pattern = std::str::from_utf8(key)
                    .map_err(|_| format!("regex '{}' is not valid UTF-8", text()))?;
                res.push((compile_regex(pattern, false)?, id));
            }
            Builder::Int(ranges) => {
                let range = std::str::from_utf8(key)
                    .ok()
                    .and_then(parse_int_range)
                    .ok_or_else(|| {
                        format!("'{}' is not a number or a range (N, N:M, N: or :M)", text())
                    })?;
                ranges.push((range, id));
            }
        }
        Ok(())
    }

    fn finish(self) -> Index {
        match self {
            Builder::Exact(m) => Index::Exact(m),
            Builder::Prefix(by_len) => {
                let mut v: Vec<_> = by_len.into_iter().collect();
                v.sort_by_key(|e| std::cmp::Reverse(e.0));
                Index::Prefix(v)
            }
            Builder::Ip(by_mask) => {
                let mut v: Vec<_> = by_mask.into_iter().collect();
                // A longer mask has more leading ones: larger as an integer.
                v.sort_by_key(|e| std::cmp::Reverse(e.0));
                Index::Ip(v)
            }
            Builder::Words(_, pats) => Index::Words(pats),
            Builder::Regex(res) => Index::Regex(res),
            Builder::Int(ranges) => Index::Int(ranges),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(text: &str, m: MatchMethod) -> PatternMap {
        PatternMap::parse(text.as_bytes(), m).expect("map parses")
    }

    fn get<'a>(m: &'a PatternMap, k: &str) -> Option<&'a str> {
        m.lookup(k.as_bytes())
            .map(|v| std::str::from_utf8(v).expect("utf8"))
    }

    const STR: &str = "# comment\nexample.com   backend_a\nexample.com   second\n  www.example.com\tbackend_b   \nempty.key\n/api          api\n/api/v2       api_v2\n  # not a comment\nk\\ x  two  words\r\n\n   \n";

    #[test]
    fn lines_split_as_haproxy_does() {
        let m = map(STR, MatchMethod::Str);
        assert_eq!(m.len(), 8);
        assert_eq!(get(&m, "example.com"), Some("backend_a"));
        assert_eq!(get(&m, "www.example.com"), Some("backend_b"));
        assert_eq!(get(&m, "empty.key"), Some(""));
        assert_eq!(get(&m, "#"), Some("not a comment"));
        assert_eq!(get(&m, "k\\"), Some("x  two  words"));
        assert_eq!(get(&m, "k\\ x"), None);
        assert_eq!(get(&m, "/api/v2/x"), None);
        assert_eq!(get(&m, ""), None);
    }

    #[test]
    fn prefix_and_word_methods_pick_haproxys_winner() {
        let beg = map(STR, MatchMethod::Beg);
        assert_eq!(get(&beg, "/api/v2/x"), Some("api_v2"), "longest prefix");
        assert_eq!(get(&beg, "/api/x"), Some("api"));
        assert_eq!(get(&beg, "x/api"), None);
        let sub = map(STR, MatchMethod::Sub);
        assert_eq!(
            get(&sub, "www.example.com"),
            Some("backend_a"),
            "file order"
        );
        assert_eq!(get(&sub, "x/api/v2"), Some("api"));
        let end = map(STR, MatchMethod::End);
        assert_eq!(get(&end, "x/api/v2"), Some("api_v2"));
        assert_eq!(get(&end, "/api/x"), None);
        let dir = map(STR, MatchMethod::Dir);
        assert_eq!(get(&dir, "/api/v2/x"), Some("api"));
        assert_eq!(get(&dir, "/apix/v2"), None);
        let dom = map("example.com ex\n.org org\n/// none\n", MatchMethod::Dom);
        assert_eq!(get(&dom, "www.example.com"), Some("ex"));
        assert_eq!(get(&dom, "example.com.evil"), Some("ex"));
        assert_eq!(get(&dom, "notexample.com"), None);
        assert_eq!(get(&dom, "foo.org"), Some("org"));
        assert_eq!(
            get(&dom, "///"),
            None,
            "a key of delimiters only matches nothing"
        );
    }

    #[test]
    fn ip_maps_take_the_longest_network() {
        let m = map(
            "10.0.0.0/8 ten\n10.1.0.0/16 ten-one\n192.168.1.1 host\n::ffff:172.16.0.0/108 mapped\n2001:db8::/32 doc6\n10.0.0.0/255.255.0.0 ten-zero\n",
            MatchMethod::Ip,
        );
        assert_eq!(get(&m, "10.2.3.4"), Some("ten"));
        assert_eq!(get(&m, "10.1.2.3"), Some("ten-one"));
        assert_eq!(get(&m, "10.0.9.9"), Some("ten-zero"));
        assert_eq!(get(&m, "192.168.1.1"), Some("host"));
        assert_eq!(get(&m, "192.168.1.2"), None);
        assert_eq!(get(&m, "172.16.0.5"), Some("mapped"));
        assert_eq!(get(&m, "::ffff:10.1.2.3"), Some("ten-one"));
        assert_eq!(get(&m, "2001:db8::1"), Some("doc6"));
        assert_eq!(get(&m, "garbage"), None);
        let e = PatternMap::parse(b"10.0.0.0/8 ok\nnot-an-ip bad\n", MatchMethod::Ip)
            .expect_err("bad address");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("'not-an-ip' is not a valid"), "{e:?}");
    }

    #[test]
    fn int_and_regex_maps_go_in_file_order() {
        let m = map(
            "200 ok\n100:199 info\n500: server\n:99 low\n150 never\n",
            MatchMethod::Int,
        );
        assert_eq!(m.lookup_int(200), Some(&b"ok"[..]));
        assert_eq!(m.lookup_int(150), Some(&b"info"[..]));
        assert_eq!(m.lookup_int(600), Some(&b"server"[..]));
        assert_eq!(m.lookup_int(-5), Some(&b"low"[..]));
        assert_eq!(m.lookup_int(300), None);
        assert_eq!(get(&m, "200"), Some("ok"));
        assert_eq!(get(&m, "x"), None);
        let e = PatternMap::parse(b"1 a\nx b\n", MatchMethod::Int).expect_err("bad int");
        assert_eq!(
            (e.line, e.message.starts_with("'x' is not a number")),
            (2, true)
        );

        let r = map("^/img/.*\\.png$ png\n^/img/ img\n", MatchMethod::Reg);
        assert_eq!(get(&r, "/img/a.png"), Some("png"));
        assert_eq!(get(&r, "/img/b.jpg"), Some("img"));
        assert_eq!(get(&r, "/other"), None);
        let e = PatternMap::parse(b"( bad\n", MatchMethod::Reg).expect_err("bad regex");
        assert_eq!(e.line, 1);
        assert!(e.message.contains("invalid regex"), "{e:?}");
    }

    #[test]
    fn run_time_changes_reach_every_method_and_reader() {
        let dir = std::env::temp_dir().join(format!("portcullis-patref-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("r.map");
        std::fs::write(&path, "# c\n/a one\n/a dup\n10.0.0.0/8 net\n").expect("write");
        let cache = PatternCache::default();
        let s = cache.get_or_load(&path, MatchMethod::Str).expect("str");
        let b = cache.get_or_load(&path, MatchMethod::Beg).expect("beg");
        let (mut rs, mut rb) = (MapReader::new(s), MapReader::new(b));
        let r = cache.loaded(&path).expect("loaded");
        assert!(cache.loaded(&dir.join("other.map")).is_none());
        assert_eq!(rs.get().lookup(b"/a"), Some(&b"one"[..]));
        // set: every duplicate gets the value; a new key is appended.
        assert_eq!(r.set(b"/a", b"ONE"), Change::Changed);
        assert_eq!(r.set(b"/b", b"two"), Change::Changed);
        assert_eq!(rs.get().lookup(b"/a"), Some(&b"ONE"[..]));
        assert_eq!(rb.get().lookup(b"/b/x"), Some(&b"two"[..]));
        // add_key: no value, and nothing if the key is there.
        assert_eq!(r.add_key(b"/a"), Change::Unchanged);
        assert_eq!(r.add_key(b"/c"), Change::Changed);
        assert_eq!(rs.get().lookup(b"/c"), None);
        assert_eq!(rb.get().lookup(b"/c/x"), None, "the valueless entry wins");
        assert_eq!(r.delete(b"/a"), Change::Changed);
        assert_eq!(r.delete(b"/a"), Change::Unchanged);
        assert_eq!(rs.get().lookup(b"/a"), None);
        // An ip index loaded after the changes reads the entries, not the file;
        // from then on a key it cannot read is refused for every method.
        let ip = cache.get_or_load(&path, MatchMethod::Ip);
        assert!(ip.is_err(), "'/b' is no address: a load error");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unusable_methods_and_files_are_refused() {
        let e = PatternMap::parse(b"a b\n", MatchMethod::Found).expect_err("found");
        assert!(
            e.message.contains("maps cannot match with -m found"),
            "{e:?}"
        );
        let e = PatternMap::load(Path::new("/nonexistent/x.map"), MatchMethod::Str)
            .expect_err("missing file");
        assert!(
            e.starts_with("failed to open pattern file </nonexistent/x.map>"),
            "{e}"
        );
        // Non-UTF-8 keys and values are kept as bytes.
        let m = PatternMap::parse(b"\xff\xfe v\xff\n", MatchMethod::Str).expect("bytes");
        assert_eq!(m.lookup(b"\xff\xfe"), Some(&b"v\xff"[..]));
    }
}
