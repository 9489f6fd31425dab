//! Instance-level tests: guests in WAT driven directly (no proxy), for the
//! failure classification and the header round trip through a transaction.

use std::time::Duration;

use http::{HeaderValue, StatusCode};

use super::instance::{FailureKind, PluginInstance, Verdict};
use super::{Limits, OnError, PluginSpec, WasmPlugin};
use crate::txn::{Phase, Txn};

fn wat(hook: &str) -> String {
    format!(
        r#"(module
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "x-seen")
  (data (i32.const 32) "yes")
  (data (i32.const 48) "denied")
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    {hook}))"#
    )
}

fn plugin(hook: &str, limits: Limits) -> WasmPlugin {
    let spec = PluginSpec {
        limits,
        on_error: OnError::FailOpen,
        ..PluginSpec::new("unit")
    };
    match WasmPlugin::compile(wat(hook).as_bytes(), spec) {
        Ok(p) => p,
        Err(e) => panic!("compile: {e}"),
    }
}

fn run(p: &WasmPlugin) -> (Result<Verdict, super::instance::Failure>, Txn) {
    let mut inst = PluginInstance::new(p).unwrap_or_else(|e| panic!("instance: {e}"));
    let ctx = inst
        .create_stream()
        .unwrap_or_else(|e| panic!("stream: {e}"));
    let mut txn = Txn::for_test("/x", ([127, 0, 0, 1], 4000).into());
    txn.phase = Phase::Request;
    let v = inst.request_headers(ctx, &mut txn, true);
    (v, txn)
}

#[test]
fn headers_round_trip_through_the_transaction() {
    let p = plugin(
        "(drop (call $add (i32.const 0) (i32.const 16) (i32.const 6) (i32.const 32) (i32.const 3))) i32.const 0",
        Limits::default(),
    );
    let (v, txn) = run(&p);
    assert!(matches!(v, Ok(Verdict::Continue)), "{v:?}");
    assert_eq!(
        txn.req_headers.get("x-seen"),
        Some(&HeaderValue::from_static("yes"))
    );
    // The URI went into the store and came back.
    assert_eq!(txn.uri.path(), "/x");
}

#[test]
fn local_response_becomes_a_reply() {
    let p = plugin(
        "(drop (call $reply (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 48) (i32.const 6) (i32.const 0) (i32.const 0) (i32.const 0))) i32.const 1",
        Limits::default(),
    );
    match run(&p).0 {
        Ok(Verdict::Respond(r)) => {
            assert_eq!(r.status, StatusCode::FORBIDDEN);
            assert_eq!(&r.body[..], b"denied");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn failures_are_classified() {
    let cases: [(&str, Limits, FailureKind); 5] = [
        (
            "(loop $l (br $l)) i32.const 0",
            Limits {
                cpu: Duration::from_millis(10),
                ..Limits::default()
            },
            FailureKind::CpuLimit,
        ),
        (
            "(drop (memory.grow (i32.const 64))) (if (i32.eq (memory.size) (i32.const 1)) (then unreachable)) i32.const 0",
            Limits {
                memory: 2 << 20,
                ..Limits::default()
            },
            FailureKind::MemoryLimit,
        ),
        ("unreachable", Limits::default(), FailureKind::Unreachable),
        (
            "(i32.load (i32.const -1))",
            Limits::default(),
            FailureKind::Trap,
        ),
        ("i32.const 2", Limits::default(), FailureKind::BadReturn),
    ];
    for (hook, limits, want) in cases {
        let p = plugin(hook, limits);
        match run(&p).0 {
            Err(f) => assert_eq!(f.kind, want, "{hook}: {f}"),
            Ok(v) => panic!("{hook}: expected {want:?}, got {v:?}"),
        }
    }
    assert!(FailureKind::CpuLimit.kills_instance());
    assert!(!FailureKind::BadReturn.kills_instance());
}
