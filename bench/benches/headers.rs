//! Header handling on the proxy path: hop-by-hop removal on typical messages
//! (the Connection options, removed before the rules, plus the fixed
//! hop-by-hop headers, removed when forwarding).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use portcullis::proxy::head::{remove_connection_options, strip_hop_by_hop};
use portcullis_bench::{browser_headers, hop_by_hop_headers, response_headers};

fn bench_headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("strip_hop_by_hop");
    let maps = [
        ("response_none_present", response_headers()),
        ("browser_request_keep_alive", browser_headers()),
        ("request_with_5_hop_by_hop", hop_by_hop_headers()),
    ];
    for (name, map) in maps {
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || map.clone(),
                |h| {
                    remove_connection_options(h);
                    strip_hop_by_hop(h);
                    black_box(h.len())
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench_headers);
criterion_main!(benches);
