//! Engine tests: concurrency (many threads, many iterations), eviction,
//! expiry and the expiry task's wake-ups.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use super::table::{ExpireStep, Refused};
use super::*;

fn table(
    size: u64,
    expire: Option<u64>,
    nopurge: bool,
    store: &[&str],
    clock: Clock,
) -> Arc<StickTable> {
    Arc::new(StickTable::new(
        TableConfig {
            name: "t".into(),
            key_type: KeyType::Integer,
            size,
            expire,
            nopurge,
            schema: Schema::parse(store).expect("schema"),
            peers: None,
            peers_name: None,
        },
        clock,
    ))
}

fn k(i: i64) -> KeyRef<'static> {
    KeyRef::Int(i)
}

fn r(name: &str) -> DataRef {
    DataRef::parse(name).expect("data name")
}

/// Entries actually in the map (must equal `used` when nothing is in flight).
fn live(t: &StickTable) -> u64 {
    t.entries(usize::MAX, |_| true).len() as u64
}

#[test]
fn concurrent_get_or_create_yields_one_entry() {
    let t = table(10_000, Some(60_000), false, &["gpc0"], Clock::manual(1));
    let threads = 8;
    let rounds = 300;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (t, b) = (t.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::with_capacity(rounds);
                for i in 0..rounds {
                    b.wait();
                    let e = t.get_or_create(&k(i as i64)).expect("room");
                    seen.push(Arc::as_ptr(&e) as usize);
                }
                seen
            })
        })
        .collect();
    let all: Vec<Vec<usize>> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    for i in 0..rounds {
        let ptrs: HashSet<usize> = all.iter().map(|v| v[i]).collect();
        assert_eq!(
            ptrs.len(),
            1,
            "key {i} got {} different entries",
            ptrs.len()
        );
    }
    assert_eq!(t.used(), rounds as u64);
    assert_eq!(live(&t), rounds as u64);
    assert_eq!(t.counters.inserts.load(Ordering::Relaxed), rounds as u64);
}

#[test]
fn concurrent_updates_are_never_lost() {
    let t = table(
        100,
        Some(60_000),
        false,
        &[
            "gpc0",
            "http_req_cnt",
            "http_req_rate(10m)",
            "conn_cur",
            "conn_cnt",
        ],
        Clock::Real,
    );
    let threads = 4;
    let per: usize = 20_000;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let t = t.clone();
            std::thread::spawn(move || {
                for i in 0..per {
                    let tr = t.track(&k(7)).expect("tracked");
                    tr.entry().inc_gpc(0, tr.now());
                    if i % 3 == 0 {
                        // Also hold a second reference on the same entry for a while.
                        let again = t.track(&k(7)).expect("tracked");
                        drop(again);
                    }
                    drop(tr);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    let e = t.lookup(&k(7)).expect("entry");
    let now = t.now();
    let tracks = (threads * per + threads * per.div_ceil(3)) as u64;
    assert_eq!(e.get(r("gpc0"), now), Some((threads * per) as u64));
    assert_eq!(e.get(r("http_req_cnt"), now), Some(tracks));
    assert_eq!(e.get(r("conn_cnt"), now), Some(tracks));
    assert_eq!(e.get(r("conn_cur"), now), Some(0), "every track released");
    assert_eq!(e.refs(), 0);
    // The 10-minute rate window has not rotated mid-test on any sane machine,
    // unless the test straddled a boundary: then curr + prev still sum up.
    assert!(e.get(r("http_req_rate"), now).expect("stored") <= tracks);
}

#[test]
fn referenced_entry_is_never_evicted_and_used_never_exceeds_size() {
    let size = 32;
    let t = table(size, Some(60_000), false, &["gpc0"], Clock::Real);
    let stop = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicU64::new(0));
    let monitor = {
        let (t, stop, max_seen) = (t.clone(), stop.clone(), max_seen.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                max_seen.fetch_max(t.used(), Ordering::Relaxed);
                std::hint::spin_loop();
            }
        })
    };
    // Holders keep a few keys referenced and check they stay the same entry.
    let holders: Vec<_> = (0..2)
        .map(|h| {
            let t = t.clone();
            std::thread::spawn(move || {
                for round in 0..300 {
                    let key = 1_000_000 + h * 10 + (round % 4);
                    let Some(tr) = t.track(&k(key)) else { continue };
                    for _ in 0..20 {
                        let now_e = t.lookup(&k(key)).expect("held entry stays in the table");
                        assert!(std::ptr::eq(&*now_e, tr.entry()), "held entry was replaced");
                        std::thread::yield_now();
                    }
                    drop(tr);
                }
            })
        })
        .collect();
    // Churners insert many distinct keys, forcing evictions.
    let churners: Vec<_> = (0..2)
        .map(|c| {
            let t = t.clone();
            std::thread::spawn(move || {
                for i in 0..20_000 {
                    let _ = t.get_or_create(&k(c * 100_000 + i));
                }
            })
        })
        .collect();
    for h in holders.into_iter().chain(churners) {
        h.join().expect("thread");
    }
    stop.store(true, Ordering::Relaxed);
    monitor.join().expect("monitor");
    assert!(
        max_seen.load(Ordering::Relaxed) <= size,
        "used exceeded size"
    );
    assert_eq!(t.used(), live(&t), "used is exact");
    assert!(t.used() <= size);
    let c = &t.counters;
    let (ins, ev, ex) = (
        c.inserts.load(Ordering::Relaxed),
        c.evictions.load(Ordering::Relaxed),
        c.expirations.load(Ordering::Relaxed),
    );
    assert!(ev > 1_000, "a full table evicts ({ev})");
    assert_eq!(
        ins - ev - ex,
        t.used(),
        "every insert is accounted for once"
    );
}

#[test]
fn eviction_takes_the_oldest_expiring_entries_first() {
    let clock = Clock::manual(1_000);
    let t = table(3, Some(10_000), false, &["gpc0"], clock.clone());
    for i in 0..3 {
        t.get_or_create(&k(i)).expect("room");
        clock.advance(100);
    }
    // Key 0 is used again: it now expires last.
    t.track(&k(0)).expect("tracked");
    t.get_or_create(&k(3)).expect("evicts");
    assert!(t.lookup(&k(1)).is_none(), "oldest-expiring entry evicted");
    assert!(t.lookup(&k(0)).is_some() && t.lookup(&k(2)).is_some());
    assert_eq!(t.counters.evictions.load(Ordering::Relaxed), 1);
    assert_eq!(t.used(), 3);
}

#[test]
fn full_nopurge_table_refuses_new_keys() {
    let t = table(2, Some(10_000), true, &["gpc0"], Clock::manual(1));
    t.get_or_create(&k(1)).expect("room");
    t.get_or_create(&k(2)).expect("room");
    assert_eq!(t.get_or_create(&k(3)).err(), Some(Refused::Full));
    assert!(t.track(&k(4)).is_none(), "the request goes on untracked");
    assert!(t.get_or_create(&k(1)).is_ok(), "existing keys still work");
    assert_eq!(t.counters.refusals.load(Ordering::Relaxed), 2);
    assert_eq!(t.used(), 2);
}

#[test]
fn a_table_full_of_referenced_entries_refuses_in_bounded_work() {
    let t = table(100, Some(10_000), false, &["gpc0"], Clock::manual(1));
    let held: Vec<Tracked> = (0..100).map(|i| t.track(&k(i)).expect("room")).collect();
    let start = std::time::Instant::now();
    for i in 0..1_000 {
        assert!(t.track(&k(1_000 + i)).is_none());
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(t.used(), 100);
    for (i, h) in held.iter().enumerate() {
        assert!(std::ptr::eq(
            &*t.lookup(&k(i as i64)).expect("still there"),
            h.entry()
        ));
    }
    drop(held);
    assert!(t.track(&k(5_000)).is_some(), "room again once released");
}

#[test]
fn expiry_waits_for_the_last_reference() {
    let clock = Clock::manual(1_000);
    let t = table(10, Some(1_000), false, &["conn_cur"], clock.clone());
    let tr = t.track(&k(1)).expect("room");
    t.get_or_create(&k(2)).expect("room");
    clock.advance(5_000);
    // Key 2 is reaped; key 1 is referenced and stays, re-queued for later.
    let step = t.expire_step(clock.now_ms(), 100);
    assert!(
        matches!(step, ExpireStep::Next(at) if at > clock.now_ms()),
        "{step:?}"
    );
    assert!(t.lookup(&k(2)).is_none());
    assert_eq!(
        t.lookup(&k(1)).expect("held").get(r("conn_cur"), 0),
        Some(1)
    );
    assert_eq!(t.counters.expirations.load(Ordering::Relaxed), 1);
    drop(tr);
    let e = t.lookup(&k(1)).expect("still there right after release");
    assert_eq!(e.get(r("conn_cur"), 0), Some(0));
    assert_eq!(e.expires_in(clock.now_ms()), Some(1_000), "release touches");
    drop(e);
    // Not due before its date, even when the task looks early.
    clock.advance(999);
    t.expire_step(clock.now_ms(), 100);
    assert!(t.lookup(&k(1)).is_some());
    clock.advance(2_000);
    let step = t.expire_step(clock.now_ms(), 100);
    assert_eq!(step, ExpireStep::Idle);
    assert!(t.lookup(&k(1)).is_none());
    assert_eq!(t.counters.expirations.load(Ordering::Relaxed), 2);
    assert_eq!(t.used(), 0);
}

#[test]
fn a_used_entry_moves_to_its_real_date() {
    let clock = Clock::manual(1_000);
    let t = table(10, Some(1_000), false, &["gpc0"], clock.clone());
    t.get_or_create(&k(1)).expect("room");
    clock.advance(900);
    drop(t.track(&k(1)).expect("room")); // expires at 2900 now
    clock.advance(200); // 2100: the queued date (2000) has passed
    assert_eq!(t.expire_step(clock.now_ms(), 100), ExpireStep::Next(2_900));
    assert!(t.lookup(&k(1)).is_some());
    clock.set(2_900);
    assert_eq!(t.expire_step(clock.now_ms(), 100), ExpireStep::Idle);
    assert!(t.lookup(&k(1)).is_none());
}

/// Trackers, deleters, an expirer and inserters race on a small key space:
/// every entry leaves exactly once and `used` matches the map at the end.
#[test]
fn racing_removals_count_each_entry_once() {
    let clock = Clock::manual(1_000);
    let t = table(64, Some(50), false, &["gpc0", "conn_cur"], clock.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let deleted = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for w in 0..3i64 {
        let t = t.clone();
        handles.push(std::thread::spawn(move || {
            for i in 0..20_000i64 {
                let key = (i * 7 + w) % 200;
                if let Some(tr) = t.track(&k(key)) {
                    tr.entry().inc_gpc(0, tr.now());
                    assert!(!tr.entry().state.is_dead(), "tracked entry died");
                }
            }
        }));
    }
    {
        let (t, deleted) = (t.clone(), deleted.clone());
        handles.push(std::thread::spawn(move || {
            for i in 0..20_000i64 {
                if t.delete(&k(i % 200)).is_ok() {
                    deleted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let expirer = {
        let (t, stop, clock) = (t.clone(), stop.clone(), clock.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                clock.advance(10);
                let _ = t.expire_step(clock.now_ms(), 64);
            }
        })
    };
    for h in handles {
        h.join().expect("thread");
    }
    stop.store(true, Ordering::Relaxed);
    expirer.join().expect("expirer");
    let c = &t.counters;
    let gone = c.evictions.load(Ordering::Relaxed)
        + c.expirations.load(Ordering::Relaxed)
        + deleted.load(Ordering::Relaxed);
    assert_eq!(t.used(), live(&t));
    assert_eq!(c.inserts.load(Ordering::Relaxed) - gone, t.used());
    for e in t.entries(usize::MAX, |_| true) {
        assert_eq!(e.refs(), 0);
        assert_eq!(e.get(r("conn_cur"), 0), Some(0));
    }
}

#[test]
fn tables_without_expire_evict_least_recently_used() {
    let clock = Clock::manual(1);
    let t = table(2, None, false, &["gpc0"], clock.clone());
    t.get_or_create(&k(1)).expect("room");
    clock.advance(10);
    t.get_or_create(&k(2)).expect("room");
    clock.advance(10);
    drop(t.track(&k(1)));
    clock.advance(10);
    t.get_or_create(&k(3)).expect("evicts");
    assert!(t.lookup(&k(2)).is_none());
    assert!(t.lookup(&k(1)).is_some());
    assert_eq!(
        t.expire_step(clock.now_ms(), 10),
        ExpireStep::Idle,
        "nothing expires"
    );
    assert_eq!(t.lookup(&k(1)).and_then(|e| e.expires_in(1)), None);
}

// ---------------------------------------------------------------------------
// The expiry task
// ---------------------------------------------------------------------------

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn idle_or_empty_table_causes_no_wakeups() {
    let t = table(10, Some(100), false, &["gpc0"], Clock::Real);
    let task = tokio::spawn(expiry::run(t.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        t.expiry.wakeups.load(Ordering::Relaxed),
        0,
        "an empty table sleeps"
    );
    // One entry: the task wakes about once, at its expiry, then goes idle again.
    t.get_or_create(&k(1)).expect("room");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(t.lookup(&k(1)).is_none(), "reaped");
    let woke = t.expiry.wakeups.load(Ordering::Relaxed);
    assert!((1..=3).contains(&woke), "woke {woke} times");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        t.expiry.wakeups.load(Ordering::Relaxed),
        woke,
        "idle again: no wake-up"
    );
    task.abort();
}

#[tokio::test(flavor = "current_thread")]
async fn an_entry_in_the_past_is_reaped_once() {
    let clock = Clock::manual(1_000);
    let t = table(10, Some(1_000), false, &["gpc0"], clock.clone());
    t.get_or_create(&k(1)).expect("room");
    // The date is already long past when the task first looks.
    clock.advance(60_000);
    let task = tokio::spawn(expiry::run(t.clone()));
    settle().await;
    assert!(t.lookup(&k(1)).is_none());
    assert_eq!(t.counters.expirations.load(Ordering::Relaxed), 1);
    assert_eq!(
        t.expiry.wakeups.load(Ordering::Relaxed),
        0,
        "reaped on the first pass"
    );
    clock.advance(60_000);
    settle().await;
    assert_eq!(
        t.expiry.wakeups.load(Ordering::Relaxed),
        0,
        "nothing left: no wake-up"
    );
    assert_eq!(t.counters.expirations.load(Ordering::Relaxed), 1);

    // An insert wakes the idle task once; it then sleeps until the entry's date.
    t.get_or_create(&k(2)).expect("room");
    settle().await;
    assert_eq!(t.expiry.wakeups.load(Ordering::Relaxed), 1);
    clock.advance(500);
    settle().await;
    assert_eq!(
        t.expiry.wakeups.load(Ordering::Relaxed),
        1,
        "not due: still asleep"
    );
    clock.advance(600);
    settle().await;
    assert!(t.lookup(&k(2)).is_none());
    assert_eq!(t.expiry.wakeups.load(Ordering::Relaxed), 2);
    task.abort();
}

#[tokio::test(flavor = "current_thread")]
async fn a_referenced_entry_past_its_date_does_not_spin_the_task() {
    let clock = Clock::manual(1_000);
    let t = table(10, Some(100), false, &["gpc0"], clock.clone());
    let held = t.track(&k(1)).expect("room");
    let task = tokio::spawn(expiry::run(t.clone()));
    settle().await;
    clock.advance(10_000);
    settle().await;
    let woke = t.expiry.wakeups.load(Ordering::Relaxed);
    assert!(woke <= 2, "woke {woke} times");
    assert!(t.lookup(&k(1)).is_some(), "never reaped while referenced");
    // Time does not move: the task must stay asleep (a spin would count here).
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(t.expiry.wakeups.load(Ordering::Relaxed), woke);
    drop(held);
    clock.advance(super::table::RECHECK_MS + 200);
    settle().await;
    assert!(t.lookup(&k(1)).is_none(), "reaped once released and due");
    assert_eq!(t.counters.expirations.load(Ordering::Relaxed), 1);
    assert!(t.expiry.wakeups.load(Ordering::Relaxed) <= woke + 2);
    task.abort();
}

// ---------------------------------------------------------------------------
// Model checks (loom)
// ---------------------------------------------------------------------------

/// Three concurrent reservations of a 2-slot table: exactly two succeed.
#[test]
fn loom_reservations_never_exceed_size() {
    use loom::sync::atomic::AtomicU64 as L;
    // A preemption bound of 3 covers every bug class seen in practice (loom's
    // own guidance) and keeps the search to seconds instead of ten minutes.
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(3);
    model.check(|| {
        let used = loom::sync::Arc::new(<L as entry::Word>::new(0));
        let ok = loom::sync::Arc::new(L::new(0));
        let hs: Vec<_> = (0..3)
            .map(|_| {
                let (used, ok) = (used.clone(), ok.clone());
                loom::thread::spawn(move || {
                    if table::try_reserve(&*used, 2) {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().expect("thread");
        }
        assert_eq!(ok.load(Ordering::SeqCst), 2);
        assert_eq!(entry::Word::load(&*used, Ordering::SeqCst), 2);
    });
}

#[test]
fn one_clock_read_per_phase_and_release_counts_from_the_end() {
    let clock = Clock::manual(1_000);
    let t = table(
        10,
        Some(1_000),
        false,
        &["http_req_rate(10s)"],
        clock.clone(),
    );
    let tr = t.track(&k(1)).expect("room");
    clock.advance(50);
    // Request phase: the tick read when tracking started.
    assert_eq!(tr.now(), 1_000);
    assert_eq!(tr.now_in(TickPhase::Request), 1_000);
    // Response phase: one read on first use, then reused.
    assert_eq!(tr.now_in(TickPhase::Response), 1_050);
    clock.advance(50);
    assert_eq!(tr.now_in(TickPhase::Response), 1_050);
    assert_eq!(tr.now_in(TickPhase::Request), 1_050, "time never goes back");
    // The outcome reads the clock once; the release reuses its tick.
    tr.record_outcome(200, 0, 0);
    assert_eq!(tr.now(), 1_100);
    clock.advance(10);
    let e = t.lookup(&k(1)).expect("entry");
    drop(tr);
    assert_eq!(
        e.expires_in(1_100),
        Some(1_000),
        "expiry counted from the outcome"
    );
    assert_eq!(e.get(r("http_req_rate"), 1_100), Some(1));
    // Without an outcome, the release reads the clock itself (never a stale date).
    let tr = t.track(&k(1)).expect("room");
    clock.advance(30_000);
    drop(tr);
    assert_eq!(e.expires_in(clock.now_ms()), Some(1_000));
}
