//! Header tables for Lua: HAProxy's `{ name = { [0] = v1, [1] = v2 } }`.
//!
//! `txn.http:req_get_headers()` / `res_get_headers()` return a *lazy* table:
//! the headers are copied into one plain userdata (a snapshot taken at the
//! call, counted against the plugin's memory limit, no finalizer), and the
//! table's C metamethods move a name into the table on its first read, or
//! every remaining name on `pairs()`. Most scripts read one or two of a
//! dozen headers, so this saves building a dozen tables per call, which was
//! most of the cost of a "get + set header" action. What a script can see
//! is HAProxy's table, except `next()`/`rawget()` before a `pairs()` and
//! `getmetatable()` returning `false` (docs/LUA.md).
//!
//! This file holds the snapshot's format: written in one pass, parsed with
//! bounds checks and a magic number, so even a forged argument cannot make
//! a reader go outside it. The C parts are in `ffi`: the lazy tables'
//! metamethods (`ffi/lazy_headers.rs`) and whole tables
//! (`ffi/whole_headers.rs`).

use http::{HeaderMap, HeaderName};

/// First 4 bytes of a snapshot: marks the userdata as one of ours.
const MAGIC: u32 = 0x5043_4853;

/// Little-endian `u32` of a length (header fields are far below 4 GiB).
fn le32(n: usize) -> [u8; 4] {
    u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes()
}

/// Writes the snapshot of `h` into `out` (cleared first).
///
/// The layout, after `MAGIC`, one group per header name: `taken: u8`,
/// `len: u32` (bytes of the rest of the group), `name_len: u32`,
/// `values: u32`, the name, then each value as `len: u32` + bytes. `taken`
/// is set once the name is in the table (read, assigned or iterated).
///
/// One pass over `iter()` (a name's values come together, in order; the
/// same entry yields the same `&HeaderName`): a `get_all` per name would
/// hash every name again, and sizing first would walk the map twice. A
/// group's length and count are patched in at its end.
pub(crate) fn write_snapshot(h: &HeaderMap, out: &mut Vec<u8>) {
    fn end_group(out: &mut [u8], start: usize, count: usize) {
        let (len, count) = (le32(out.len() - (start + 5)), le32(count));
        for (at, v) in [(start + 1, len), (start + 9, count)] {
            if let Some(dst) = out.get_mut(at..).and_then(|d| d.first_chunk_mut::<4>()) {
                *dst = v;
            }
        }
    }
    out.clear();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    let mut current: Option<&HeaderName> = None;
    let (mut start, mut count) = (0, 0);
    for (name, v) in h.iter() {
        if !current.is_some_and(|c| std::ptr::eq(c, name)) {
            if current.is_some() {
                end_group(out, start, count);
            }
            current = Some(name);
            (start, count) = (out.len(), 0);
            let n = name.as_str().as_bytes();
            let l = le32(n.len());
            // taken, len and count (patched at the end), name length.
            out.extend_from_slice(&[0, 0, 0, 0, 0, l[0], l[1], l[2], l[3], 0, 0, 0, 0]);
            out.extend_from_slice(n);
        }
        out.extend_from_slice(&le32(v.len()));
        out.extend_from_slice(v.as_bytes());
        count += 1;
    }
    if current.is_some() {
        end_group(out, start, count);
    }
}

fn read32(b: &[u8], at: usize) -> Option<usize> {
    let s = b.get(at..at.checked_add(4)?)?;
    usize::try_from(u32::from_le_bytes([s[0], s[1], s[2], s[3]])).ok()
}

/// One name of a snapshot.
pub(super) struct Group {
    /// Offset of the `taken` byte.
    pub(super) taken_at: usize,
    pub(super) taken: bool,
    pub(super) name: std::ops::Range<usize>,
    /// Offset of the first value and the number of values.
    pub(super) values_at: usize,
    pub(super) count: usize,
    /// Offset of the next group.
    pub(super) next: usize,
}

/// Offset of the first group of snapshot `b` (its end if `b` is not a snapshot).
pub(super) fn first_group(b: &[u8]) -> usize {
    if read32(b, 0) == Some(MAGIC as usize) {
        4
    } else {
        b.len()
    }
}

/// The group at offset `at` of snapshot `b`.
pub(super) fn group_at(b: &[u8], at: usize) -> Option<Group> {
    let taken = *b.get(at)?;
    let len = read32(b, at + 1)?;
    let name_len = read32(b, at + 5)?;
    let count = read32(b, at + 9)?;
    let name = at + 13..(at + 13).checked_add(name_len)?;
    b.get(name.clone())?;
    Some(Group {
        taken_at: at,
        taken: taken != 0,
        values_at: name.end,
        name,
        count,
        next: (at + 5).checked_add(len)?,
    })
}

/// The group of header `key` in snapshot `b`.
pub(super) fn find(b: &[u8], key: &[u8]) -> Option<Group> {
    let mut at = first_group(b);
    while let Some(g) = group_at(b, at) {
        if b.get(g.name.clone()) == Some(key) {
            return Some(g);
        }
        at = g.next;
    }
    None
}

/// The values of a group, as byte ranges of the snapshot.
pub(super) fn values<'a>(
    b: &'a [u8],
    g: &Group,
) -> impl Iterator<Item = std::ops::Range<usize>> + 'a {
    let mut at = g.values_at;
    (0..g.count).map_while(move |_| {
        let len = read32(b, at)?;
        let r = at + 4..(at + 4).checked_add(len)?;
        b.get(r.clone())?;
        at = r.end;
        Some(r)
    })
}

/// Marks group `g` of `snap` taken.
pub(super) fn mark_taken(snap: &mut [u8], g: &Group) {
    if let Some(b) = snap.get_mut(g.taken_at) {
        *b = 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(h: &HeaderMap) -> Vec<u8> {
        let mut b = Vec::new();
        write_snapshot(h, &mut b);
        b
    }

    #[test]
    fn snapshot_round_trips_names_and_values_in_order() {
        let mut h = HeaderMap::new();
        for (k, v) in [("host", "a"), ("x-m", "1"), ("accept", ""), ("x-m", "2")] {
            h.append(k, v.parse().expect("hv"));
        }
        let b = snapshot(&h);
        let g = find(&b, b"x-m").expect("x-m");
        let vals: Vec<&[u8]> = values(&b, &g).map(|r| &b[r]).collect();
        assert_eq!(vals, [b"1".as_slice(), b"2"]);
        let g = find(&b, b"accept").expect("accept");
        assert_eq!(values(&b, &g).map(|r| r.len()).collect::<Vec<_>>(), [0]);
        assert!(find(&b, b"Host").is_none() && find(&b, b"hos").is_none());
        let mut b = b;
        let g = find(&b, b"host").expect("host");
        mark_taken(&mut b, &g);
        assert!(find(&b, b"host").is_some_and(|g| g.taken));
        assert!(find(&b, b"x-m").is_some_and(|g| !g.taken));
    }

    #[test]
    fn forged_or_truncated_snapshots_are_read_safely() {
        let mut h = HeaderMap::new();
        h.append("x-a", "value".parse().expect("hv"));
        h.append("x-b", "other".parse().expect("hv"));
        let good = snapshot(&h);
        // Every truncation and every single-byte corruption: no panic, and
        // whatever is found lies inside the buffer.
        for cut in 0..good.len() {
            let b = &good[..cut];
            for key in [&b"x-a"[..], b"x-b"] {
                if let Some(g) = find(b, key) {
                    for r in values(b, &g) {
                        assert!(r.end <= b.len());
                    }
                }
            }
        }
        for i in 0..good.len() {
            for byte in [0u8, 1, 0x7f, 0xff] {
                let mut b = good.clone();
                b[i] = byte;
                if let Some(g) = find(&b, b"x-b") {
                    assert!(values(&b, &g).all(|r| r.end <= b.len()));
                    mark_taken(&mut b, &g);
                }
            }
        }
        assert!(find(b"not a snapshot", b"x-a").is_none());
    }
}
