//! Stick-table engine costs, in ns per operation on 1 and 2 threads:
//!
//! - `lookup`: read a rate of an existing key (lock-free map read);
//! - `lookup_update`: the same plus one event counted in the rate;
//! - `track`: what a `track_sc0` request costs: track (get-or-create,
//!   reference, touch, counters), read the rate, record the outcome, release;
//! - `track_rate_release_replicated`: the same on a table replicated with a
//!   `[[peers]]` section (the change flag and the outbox queue; a thread
//!   drains the queue as the peers pump does, resting `replica::LINGER`
//!   after each batch); `_eager`: with a pump that does not rest;
//! - `track_many_keys` / `track_many_keys_replicated`: tracking a different
//!   key on each request (100 000 keys in turn), local and replicated: every
//!   request's change queues its entry;
//! - `insert_full`: insert a new key into a full table, evicting the oldest;
//! - `clock_read` (1 thread): one read of the real clock.
//!
//! On 2 threads both hit the same key (the contended worst case) for
//! `lookup` and `track`, and distinct new keys for `insert_full`; the figure
//! is wall time per operation per thread.
//!
//! `cargo bench -p portcullis --bench stick -- --quick`

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::stick::{Clock, DataRef, KeyRef, KeyType, Schema, StickTable, TableConfig};

fn table(size: u64, expire: Option<u64>) -> Arc<StickTable> {
    table_with(size, expire, None)
}

/// A table replicated with section `peers`, its outbox drained on a thread
/// as the peers pump does: each entry's change flag cleared, then a rest of
/// `replica::LINGER` after each batch (`linger` false: the pump before it
/// rested, taking each entry as soon as it was queued).
fn replicated(size: u64, expire: Option<u64>, linger: bool) -> Arc<StickTable> {
    use portcullis::stick::replica;
    let t = table_with(size, expire, Some("mesh"));
    let mut rx = t
        .outbox()
        .and_then(|o| o.take_receiver())
        .expect("outbox receiver");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            while let Some(e) = rx.recv().await {
                replica::take_dirty(&e);
                while let Ok(e) = rx.try_recv() {
                    replica::take_dirty(&e);
                }
                if linger {
                    tokio::time::sleep(replica::LINGER).await;
                }
            }
        });
    });
    t
}

fn table_with(size: u64, expire: Option<u64>, peers: Option<&str>) -> Arc<StickTable> {
    let schema = Schema::parse(&[
        "http_req_cnt",
        "http_req_rate(10s)",
        "http_err_cnt",
        "conn_cur",
        "conn_cnt",
        "bytes_out_cnt",
    ])
    .expect("schema");
    Arc::new(StickTable::new(
        TableConfig {
            name: "bench".into(),
            key_type: KeyType::Ip,
            size,
            expire,
            nopurge: false,
            schema,
            peers: peers.map(str::to_string),
            peers_name: None,
        },
        Clock::Real,
    ))
}

/// Keys of the `track_many_keys` benchmarks.
const MANY: u32 = 100_000;

fn ip(n: u32) -> KeyRef<'static> {
    KeyRef::V4(n.to_be_bytes())
}

/// Runs `op(thread, i)` `iters` times on each of `threads` threads; returns wall time.
fn threaded(threads: usize, iters: u64, op: &(dyn Fn(usize, u64) + Sync)) -> Duration {
    if threads == 1 {
        let start = Instant::now();
        for i in 0..iters {
            op(0, i);
        }
        return start.elapsed();
    }
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                for i in 0..iters {
                    op(t, i);
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

fn bench_stick(c: &mut Criterion) {
    let rate = DataRef::parse("http_req_rate").expect("rate");
    for threads in [1usize, 2] {
        let mut g = c.benchmark_group(format!("stick/{threads}t"));

        // One read of the real clock: what tracking saves per read it avoids.
        if threads == 1 {
            g.bench_function("clock_read", |b| b.iter(|| black_box(Clock::Real.now_ms())));
        }

        // Lookup of an existing key among 10k, reading its rate.
        let t = table(100_000, Some(30_000));
        for n in 0..10_000 {
            let _ = t.get_or_create(&ip(n));
        }
        g.bench_function("lookup", |b| {
            b.iter_custom(|iters| {
                threaded(threads, iters, &|_, _| {
                    let now = t.now();
                    black_box(t.with_entry(&ip(4242), |e| e.get(rate, now)));
                })
            })
        });

        // Lookup + update: count an event in a key's rate and read it back.
        g.bench_function("lookup_update", |b| {
            b.iter_custom(|iters| {
                threaded(threads, iters, &|_, _| {
                    let now = t.now();
                    black_box(t.with_entry(&ip(4243), |e| {
                        e.add(rate, now, 1);
                        e.get(rate, now)
                    }));
                })
            })
        });

        // One tracked request: track, rate check, outcome, release.
        g.bench_function("track_rate_release", |b| {
            b.iter_custom(|iters| {
                threaded(threads, iters, &|_, _| {
                    if let Some(tr) = t.track(&ip(777)) {
                        black_box(tr.entry().get(rate, tr.now()));
                        tr.record_outcome(200, 0, 512);
                    }
                })
            })
        });

        // The same on a replicated table: the difference is the replication
        // cost; `_eager` with a pump that takes each change at once (no rest).
        for (name, linger) in [
            ("track_rate_release_replicated", true),
            ("track_rate_release_replicated_eager", false),
        ] {
            let rt = replicated(1 << 16, Some(30_000), linger);
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    threaded(threads, iters, &|_, _| {
                        if let Some(tr) = rt.track(&ip(777)) {
                            black_box(tr.entry().get(rate, tr.now()));
                            tr.record_outcome(200, 0, 512);
                        }
                    })
                })
            });
        }
        // Many keys (a new one per request, as from many clients): every
        // change queues its entry, the worst case for the queue.
        let many = replicated(1 << 18, Some(30_000), true);
        let local_many = table(1 << 18, Some(30_000));
        for n in 0..MANY {
            let _ = many.get_or_create(&ip(n));
            let _ = local_many.get_or_create(&ip(n));
        }
        let seq = AtomicU32::new(0);
        for (name, t) in [
            ("track_many_keys", &local_many),
            ("track_many_keys_replicated", &many),
        ] {
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    threaded(threads, iters, &|_, _| {
                        let n = seq.fetch_add(1, Ordering::Relaxed) % MANY;
                        if let Some(tr) = t.track(&ip(n)) {
                            black_box(tr.entry().get(rate, tr.now()));
                            tr.record_outcome(200, 0, 512);
                        }
                    })
                })
            });
        }

        // Inserts of new keys into a full table (LRU eviction, no expire).
        let full = table(4096, None);
        for n in 0..4096 {
            let _ = full.get_or_create(&ip(n));
        }
        let next = AtomicU32::new(1 << 24);
        g.bench_function("insert_full_evict", |b| {
            b.iter_custom(|iters| {
                threaded(threads, iters, &|_, _| {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    black_box(full.get_or_create(&ip(n)).is_ok());
                })
            })
        });
        assert!(full.used() <= full.size());
        let c = &full.counters;
        eprintln!(
            "insert_full_evict ({threads}t): inserts {} evictions {} refusals {}",
            c.inserts.load(Ordering::Relaxed),
            c.evictions.load(Ordering::Relaxed),
            c.refusals.load(Ordering::Relaxed)
        );
        g.finish();
    }
}

criterion_group!(benches, bench_stick);
criterion_main!(benches);
