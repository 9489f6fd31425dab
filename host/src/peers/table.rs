//! A stick table as the peers protocol sees it: its definition (key type,
//! data types in HAProxy's ids), its entries encoded as update messages, and
//! a peer's update applied to it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::proto::{DATA_TYPE_COUNT, Definition, Update, Value, WireKey, key_type};
use crate::stick::data::{self, DataKind, DataRef, Slot};
use crate::stick::{Entry, Key, KeyType, StickTable};

/// HAProxy's wire id of a stored value (`None`: not replicated).
fn wire_id(r: DataRef, array_form: bool) -> Option<(u8, u8)> {
    use DataKind::*;
    Some(match (r.kind, array_form, r.idx) {
        (Gpt, true, i) => (22, i),
        (Gpc, true, i) => (23, i),
        (GpcRate, true, i) => (24, i),
        (Gpt, false, 0) => (1, 0),
        (Gpc, false, 0) => (2, 0),
        (Gpc, false, 1) => (17, 0),
        (GpcRate, false, 0) => (3, 0),
        (GpcRate, false, 1) => (18, 0),
        (Gpt | Gpc | GpcRate, false, _) => return None,
        (ServerId, ..) => (0, 0),
        (ConnCnt, ..) => (4, 0),
        (ConnRate, ..) => (5, 0),
        (ConnCur, ..) => (6, 0),
        (SessCnt, ..) => (7, 0),
        (SessRate, ..) => (8, 0),
        (HttpReqCnt, ..) => (9, 0),
        (HttpReqRate, ..) => (10, 0),
        (HttpErrCnt, ..) => (11, 0),
        (HttpErrRate, ..) => (12, 0),
        (BytesInCnt, ..) => (13, 0),
        (BytesInRate, ..) => (14, 0),
        (BytesOutCnt, ..) => (15, 0),
        (BytesOutRate, ..) => (16, 0),
        (HttpFailCnt, ..) => (20, 0),
        (HttpFailRate, ..) => (21, 0),
    })
}

/// Our data for HAProxy's wire id `t`, element `idx` (`gpc0` and the first
/// element of `gpc(n)` land in the same place).
fn local_ref(t: u8, idx: u8) -> Option<DataRef> {
    use DataKind::*;
    let s = |kind| (idx == 0).then_some(DataRef { kind, idx: 0 });
    match t {
        0 => s(ServerId),
        1 => s(Gpt),
        2 => s(Gpc),
        3 => s(GpcRate),
        4 => s(ConnCnt),
        5 => s(ConnRate),
        6 => s(ConnCur),
        7 => s(SessCnt),
        8 => s(SessRate),
        9 => s(HttpReqCnt),
        10 => s(HttpReqRate),
        11 => s(HttpErrCnt),
        12 => s(HttpErrRate),
        13 => s(BytesInCnt),
        14 => s(BytesInRate),
        15 => s(BytesOutCnt),
        16 => s(BytesOutRate),
        17 => (idx == 0).then_some(DataRef { kind: Gpc, idx: 1 }),
        18 => (idx == 0).then_some(DataRef {
            kind: GpcRate,
            idx: 1,
        }),
        20 => s(HttpFailCnt),
        21 => s(HttpFailRate),
        22 => Some(DataRef { kind: Gpt, idx }),
        23 => Some(DataRef { kind: Gpc, idx }),
        24 => Some(DataRef { kind: GpcRate, idx }),
        _ => None,
    }
}

/// A table's layout on the wire.
#[derive(Debug, Clone)]
pub struct Layout {
    pub key: WireKey,
    pub key_type: u64,
    pub key_len: u64,
    /// Data type bit field.
    pub data: u64,
    pub params: [(u64, u64); DATA_TYPE_COUNT],
    /// Every stored value in wire order.
    slots: Vec<Slot>,
    /// The table's `expire` in ms (0: none).
    expire: u64,
}

impl Layout {
    /// The layout of `t`.
    pub fn of(t: &StickTable) -> Layout {
        let (kt, klen) = match t.key_type() {
            KeyType::Ip => (key_type::IPV4, 4),
            KeyType::Ipv6 => (key_type::IPV6, 16),
            KeyType::Integer => (key_type::SINT, 4),
            // HAProxy counts the string's terminating NUL in its key size.
            KeyType::String { len } => (key_type::STR, len as u64 + 1),
            KeyType::Binary { len } => (key_type::BIN, len as u64),
        };
        let key = WireKey::from_wire(kt, klen).unwrap_or(WireKey::Fixed(klen as usize));
        let schema = t.schema();
        let mut by_id: BTreeMap<(u8, u8), Slot> = BTreeMap::new();
        let mut params = [(1, 0); DATA_TYPE_COUNT];
        for (r, slot) in schema.stored() {
            if let Some((id, idx)) = wire_id(r, schema.array_form(r.kind)) {
                by_id.insert((id, idx), slot);
                let p = &mut params[usize::from(id)];
                p.0 = p.0.max(u64::from(idx) + 1);
                p.1 = u64::from(slot.period);
            }
        }
        let data = by_id.keys().fold(0u64, |d, (id, _)| d | (1u64 << *id));
        Layout {
            key,
            key_type: kt,
            key_len: klen,
            data,
            params,
            slots: by_id.into_values().collect(),
            expire: t.expire().unwrap_or(0),
        }
    }

    /// The table definition message's content for our table `id` named `name`.
    pub fn definition<'a>(&self, id: u64, name: &'a [u8]) -> Definition<'a> {
        Definition {
            id,
            name,
            key_type: self.key_type,
            key_len: self.key_len,
            data: self.data,
            expire: Some(self.expire),
            params: self.params,
            unknown_types: false,
        }
    }

    /// Whether a peer's definition describes a table we can apply: same key type and length.
    pub fn accepts(&self, def: &Definition<'_>) -> bool {
        def.key_type == self.key_type && def.key_len == self.key_len && !def.unknown_types
    }

    /// `e`'s values at tick `now`, in wire order.
    pub fn values(&self, e: &Entry, now: u64) -> Vec<Value> {
        self.slots
            .iter()
            .map(|&s| {
                if s.period > 0 {
                    let (elapsed, curr, prev) = data::rate_to_wire(e.words(), s, now);
                    Value::Freq {
                        elapsed,
                        curr,
                        prev,
                    }
                } else {
                    Value::Int(data::read(e.words(), s, now))
                }
            })
            .collect()
    }
}

/// `key` as sent for a table of type `kt`; `None` for an integer key that
/// does not fit HAProxy's 32-bit integer keys.
pub fn key_bytes(kt: KeyType, key: &Key) -> Option<Vec<u8>> {
    match (kt, key) {
        (_, Key::V4(o)) => Some(o.to_vec()),
        (_, Key::V6(o)) => Some(o.to_vec()),
        (_, Key::Int(i)) => {
            // HAProxy keeps the low 32 bits of a sample: -1 and 4294967295 are one key.
            (i64::from(i32::MIN)..=i64::from(u32::MAX))
                .contains(i)
                .then(|| (*i as u32).to_be_bytes().to_vec())
        }
        (_, Key::Bytes(b)) => Some(b.to_vec()),
    }
}

/// A key received for a table of type `kt`; `None` if the bytes do not fit it.
pub fn key_from_wire(kt: KeyType, b: &[u8]) -> Option<Key> {
    match kt {
        KeyType::Ip => Some(Key::V4(b.try_into().ok()?)),
        KeyType::Ipv6 => Some(Key::V6(b.try_into().ok()?)),
        KeyType::Integer => Some(Key::Int(i64::from(u32::from_be_bytes(b.try_into().ok()?)))),
        KeyType::String { len } => {
            if b.is_empty() {
                return None;
            }
            Some(Key::Bytes(b.get(..len).unwrap_or(b).into()))
        }
        KeyType::Binary { len } => {
            let mut v = b.to_vec();
            v.resize(len, 0);
            Some(Key::Bytes(v.into()))
        }
    }
}

/// Applies a peer's update to `t` (HAProxy's semantics: the pushed values
/// replace ours, the expiry comes from the update or the table). False if
/// the key does not fit the table or the table refused it.
pub fn apply(t: &StickTable, u: &Update<'_>) -> bool {
    let Some(key) = key_from_wire(t.key_type(), u.key) else {
        return false;
    };
    let schema = t.schema();
    t.apply_remote(&key.as_ref(), u.expire.map(u64::from), |e: &Entry, now| {
        for &(id, idx, v) in &u.values {
            let Some(slot) = local_ref(id, idx).and_then(|r| schema.slot(r)) else {
                continue;
            };
            match v {
                Value::Int(n) => data::counter_from_wire(e.words(), slot, n),
                Value::Freq {
                    elapsed,
                    curr,
                    prev,
                } if slot.period > 0 => {
                    data::rate_from_wire(e.words(), slot, now, elapsed, curr, prev);
                }
                _ => {}
            }
        }
    })
}

/// Every live entry of `t` whose last push is after `acked` (all pushed ones
/// when `acked` is `None`), sorted by update id: what a reconnected peer has
/// not acknowledged.
pub fn unacked(t: &StickTable, acked: Option<u32>) -> Vec<(u32, Arc<Entry>)> {
    let mut v: Vec<(u32, Arc<Entry>)> = t
        .entries(usize::MAX, |e| {
            let id = crate::stick::replica::update_id(e);
            id != 0 && acked.is_none_or(|a| (id.wrapping_sub(a) as i32) > 0)
        })
        .into_iter()
        .map(|e| (crate::stick::replica::update_id(&e), e))
        .collect();
    let base = acked.unwrap_or(0);
    v.sort_by_key(|(id, _)| id.wrapping_sub(base));
    v
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::peers::proto;
    use crate::stick::KeyRef;
    use crate::stick::data::Schema;
    use crate::stick::{Clock, TableConfig};

    fn table(kt: KeyType, store: &[&str], clock: Clock) -> StickTable {
        StickTable::new(
            TableConfig {
                name: "t".into(),
                key_type: kt,
                size: 100,
                expire: Some(30_000),
                nopurge: false,
                schema: Schema::parse(store).expect("schema"),
                peers: None,
                peers_name: None,
            },
            clock,
        )
    }

    #[test]
    fn layout_matches_haproxy_definition() {
        let t = table(
            KeyType::Ip,
            &[
                "http_req_rate(10s)",
                "gpc0",
                "conn_cnt",
                "gpt0",
                "conn_cur",
                "http_err_rate(10s)",
                "bytes_in_cnt",
                "bytes_out_rate(1s)",
                "server_id",
                "gpc1",
                "http_req_cnt",
            ],
            Clock::manual(1_000),
        );
        let l = Layout::of(&t);
        assert_eq!(
            l.data, 210_519,
            "HAProxy's bit field for the same store list"
        );
        let mut out = Vec::new();
        proto::put_definition(&mut out, &l.definition(4, b"/t_ip"));
        let (f, _) = proto::frame(&out).expect("ok").expect("frame");
        assert_eq!(
            f.body,
            &[
                0x04, 0x05, b'/', b't', b'_', b'i', b'p', 0x04, 0x04, 0xf7, 0xd6, 0x65, 0xf0, 0xc4,
                0x0d, 0x0a, 0xf0, 0xe2, 0x03, 0x0c, 0xf0, 0xe2, 0x03, 0x10, 0xf8, 0x2f
            ][..]
        );
        let s = table(
            KeyType::String { len: 32 },
            &["gpc(2)", "gpt0"],
            Clock::Real,
        );
        let l = Layout::of(&s);
        assert_eq!((l.key_type, l.key_len), (6, 33));
        assert_eq!(l.data, (1 << 23) | (1 << 1));
        assert_eq!(l.params[23], (2, 0));
    }

    #[test]
    fn update_round_trip_between_tables() {
        let clock = Clock::manual(100_000);
        let store = &["http_req_rate(10s)", "gpc0", "conn_cnt"][..];
        let a = table(KeyType::Integer, store, clock.clone());
        let b = table(KeyType::Integer, store, clock.clone());
        let e = a.get_or_create(&KeyRef::Int(7)).expect("entry");
        for _ in 0..5 {
            e.add(DataRef::scalar(DataKind::HttpReqRate), clock.now_ms(), 1);
        }
        e.inc_gpc(0, clock.now_ms());
        let la = Layout::of(&a);
        let vals = la.values(&e, clock.now_ms());
        let key = key_bytes(KeyType::Integer, e.key()).expect("fits");
        let mut out = Vec::new();
        proto::put_update(&mut out, Some(1), None, la.key, &key, &vals);
        let (f, _) = proto::frame(&out).expect("ok").expect("frame");
        let def = la.definition(1, b"t");
        let u = proto::parse_update(f.body, true, false, la.key, &def).expect("update");
        assert!(apply(&b, &u));
        let got = b.lookup(&KeyRef::Int(7)).expect("applied");
        let now = clock.now_ms();
        assert_eq!(
            got.get(DataRef::scalar(DataKind::HttpReqRate), now),
            Some(5)
        );
        assert_eq!(
            got.get(
                DataRef {
                    kind: DataKind::Gpc,
                    idx: 0
                },
                now
            ),
            Some(1)
        );
        assert!(
            !crate::stick::replica::is_dirty(&got),
            "a remote update is not pushed back"
        );
    }

    #[test]
    fn rates_survive_the_wire_at_any_phase() {
        // A peer's rate read now equals the rate we store, whatever the
        // phase of its period against ours.
        let slot = Slot {
            word: 0,
            period: 10_000,
        };
        for now in [50_000u64, 52_500, 59_999, 60_001] {
            for (elapsed, curr, prev) in [
                (0u32, 7u32, 20u32),
                (2_000, 3, 9),
                (9_000, 1, 100),
                (12_000, 5, 8),
                (25_000, 9, 9),
            ] {
                let words = [
                    std::sync::atomic::AtomicU64::new(0),
                    std::sync::atomic::AtomicU64::new(0),
                ];
                data::rate_from_wire(&words, slot, now, elapsed, curr, prev);
                let p = 10_000u64;
                let e = u64::from(elapsed);
                let want = if e >= 2 * p {
                    0
                } else if e >= p {
                    u64::from(curr) * (p - (e - p)) / p
                } else {
                    u64::from(curr) + u64::from(prev) * (p - e) / p
                };
                let got = u64::from(data::rate_read(&words[0], &words[1], 10_000, now));
                assert!(
                    got.abs_diff(want) <= 1,
                    "now {now} wire {elapsed}/{curr}/{prev}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn keys_on_the_wire() {
        assert_eq!(
            key_bytes(KeyType::Integer, &Key::Int(7)),
            Some(vec![0, 0, 0, 7])
        );
        assert_eq!(
            key_bytes(KeyType::Integer, &Key::Int(-1)),
            Some(vec![255; 4])
        );
        assert_eq!(key_bytes(KeyType::Integer, &Key::Int(1 << 40)), None);
        assert_eq!(
            key_from_wire(KeyType::Integer, &[255; 4]),
            Some(Key::Int(4_294_967_295))
        );
        assert_eq!(key_from_wire(KeyType::Ip, &[1, 2, 3]), None);
        assert_eq!(
            key_from_wire(KeyType::String { len: 2 }, b"abc"),
            Some(Key::Bytes(b"ab".as_slice().into()))
        );
        assert_eq!(key_from_wire(KeyType::String { len: 2 }, b""), None);
    }

    /// Threads track and release entries of a replicated table while a
    /// pump drains its outbox and the expiry task reaps: an entry is never
    /// dead while a request holds it, every change reaches the pump (no
    /// entry is left flagged and unqueued), everything expires afterwards,
    /// and the expiry task does not spin.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replication_queue_under_concurrent_updates_and_expiry() {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        let t = Arc::new(StickTable::new(
            TableConfig {
                name: "t".into(),
                key_type: KeyType::Integer,
                size: 64,
                expire: Some(30),
                nopurge: false,
                schema: Schema::parse(&["http_req_rate(1s)", "gpc0"]).expect("schema"),
                peers: Some("s".into()),
                peers_name: None,
            },
            Clock::Real,
        ));
        let mut rx = t
            .outbox()
            .and_then(|o| o.take_receiver())
            .expect("receiver");
        let drained = Arc::new(AtomicU64::new(0));
        let d = Arc::clone(&drained);
        let pump = tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                if crate::stick::replica::take_dirty(&e) {
                    d.fetch_add(1, Ordering::Relaxed);
                }
                // Reading a dead entry's values is safe: the Arc keeps it alive.
                let _ = e.get(DataRef::scalar(DataKind::HttpReqRate), 0);
            }
        });
        let expiry = tokio::spawn(crate::stick::expiry_task(Arc::clone(&t)));
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..4u64)
            .map(|w| {
                let t = Arc::clone(&t);
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let k = ((n * 7 + w * 13) % 96) as i64; // more keys than slots: evictions too
                        if let Some(tr) = t.track(&KeyRef::Int(k)) {
                            assert!(
                                !tr.entry().is_dead(),
                                "an entry died while a request held it"
                            );
                            tr.entry().inc_gpc(0, tr.now());
                            tr.changed();
                            std::thread::yield_now();
                            assert!(
                                !tr.entry().is_dead(),
                                "an entry died while a request held it"
                            );
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for w in workers {
            total += w.join().expect("worker");
        }
        assert!(total > 1000, "{total} requests");
        // Every flagged entry reaches the pump (overflow walks aside, the
        // queue is far from full here).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let flagged = t.entries(usize::MAX, crate::stick::replica::is_dirty).len();
            if flagged == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{flagged} entries flagged but never drained"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(drained.load(Ordering::Relaxed) > 0);
        // Nothing holds the entries: they all expire.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while t.used() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} entries never expired",
                t.used()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Idle: the expiry task sleeps (a handful of wake-ups in 300 ms at most).
        let w0 = t.expiry.wakeups.load(Ordering::Relaxed);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let woke = t.expiry.wakeups.load(Ordering::Relaxed) - w0;
        assert!(woke <= 3, "the expiry task woke {woke} times while idle");
        expiry.abort();
        pump.abort();
    }
}
