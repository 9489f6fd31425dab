//! Rule evaluation: compiled config rules run as request filters on a typical
//! transaction (the work `http_request` rules add to every request).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use portcullis_bench::{browser_headers, request_rules, rulesets, run_request, txn};

const URI: &str = "/api/v1/users?page=2";

fn bench_rules(c: &mut Criterion) {
    let mut g = c.benchmark_group("rules");
    let sets: &[(&str, &[&str])] = &[
        ("cond_set_header", rulesets::COND_SET_HEADER),
        ("deny_no_match", rulesets::DENY_NO_MATCH),
        ("log_format", rulesets::LOG_FORMAT),
        ("header_rewrite_add_set_del", rulesets::HEADER_REWRITE),
        ("typical_chain_6_rules", rulesets::TYPICAL_CHAIN),
    ];
    for (name, rules) in sets {
        let filters = request_rules(rules);
        // A fresh transaction per iteration (built outside the timing): rules
        // like add_header are not idempotent.
        g.bench_function(*name, |b| {
            b.iter_batched_ref(
                || txn(URI, browser_headers()),
                |t| black_box(run_request(&filters, t).is_none()),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench_rules);
criterion_main!(benches);
