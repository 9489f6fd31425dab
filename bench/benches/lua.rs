//! Lua plugins on the request path: what one `lua` action costs per request
//! (the reused state and coroutine of the worker, as in production), next to
//! a plain `set_header` rule doing the same header work. The scripts are the
//! ones `bench/run` uses (scenarios `lua-noop`, `lua-headers`).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use portcullis::config::BindCheck;
use portcullis::filter::Filter;
use portcullis_bench::{browser_headers, request_rules, run_request, txn};

// The daemon's allocator (host/src/main.rs): Lua allocates through it, so
// timing the action under glibc malloc would overstate its cost.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const URI: &str = "/api/v1/users?page=2";

/// The request filters of `rule`, with `script` (under bench/lua/) loaded as plugin "p".
fn lua_rules(script: &str, rule: &str) -> Vec<Arc<dyn Filter>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("lua")
        .join(script);
    let text = format!(
        "[[plugin]]\nname = \"p\"\nlua = \"{}\"\n\n[[frontend]]\nname = \"bench\"\nbind = \"127.0.0.1:8080\"\nhttp_request = [ {rule} ]\n",
        path.display()
    );
    let mut config = portcullis::runtime::parse(Path::new("bench.toml"), &text, BindCheck::Skip)
        .unwrap_or_else(|e| panic!("bench config does not load: {e}\n{text}"));
    std::mem::take(&mut config.frontends[0].chain.request)
}

fn bench_lua(c: &mut Criterion) {
    let mut g = c.benchmark_group("lua");
    let sets = [
        (
            "set_header_rule_baseline",
            request_rules(&[r#"{ set_header = "x-bench-set", value = "rule" }"#]),
        ),
        (
            "lua_noop",
            lua_rules("noop.lua", r#"{ lua = "bench_noop" }"#),
        ),
        (
            "lua_headers_get_set",
            lua_rules("headers.lua", r#"{ lua = "bench_headers" }"#),
        ),
    ];
    for (name, filters) in sets {
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || {
                    let mut h = browser_headers();
                    h.insert("x-bench-set", http::HeaderValue::from_static("client"));
                    txn(URI, h)
                },
                |t| black_box(run_request(&filters, t).is_none()),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench_lua);
criterion_main!(benches);
