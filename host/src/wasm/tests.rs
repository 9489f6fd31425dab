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
        .create_stream(super::instance::ROOT_ID)
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

/// A module that imports `imports` and runs `hook` as its request-headers hook.
fn module_with(imports: &str, data: &str, hook: &str) -> String {
    format!(
        r#"(module
  {imports}
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  {data}
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    global.get $heap local.set $p
    global.get $heap local.get $n i32.add global.set $heap
    local.get $p)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    {hook}))"#
    )
}

fn compile(src: &str) -> Result<WasmPlugin, super::WasmLoadError> {
    WasmPlugin::compile(src.as_bytes(), PluginSpec::new("unit"))
}

#[test]
fn every_wasi_preview1_function_resolves_under_both_names() {
    // Every preview1 name, imported once per module name with the
    // signature a WASI toolchain declares; wasmtime refuses a mismatch.
    let linker = super::abi::linker(super::engine::engine().expect("engine")).expect("linker");
    let mut store = wasmtime::Store::new(
        super::engine::engine().expect("engine"),
        super::instance::HostState::new(std::sync::Arc::new(super::instance::PluginShared {
            spec: PluginSpec::new("unit"),
            shared_data: super::shared::shared_data("unit"),
            stats: Default::default(),
        })),
    );
    for m in ["wasi_snapshot_preview1", "wasi_unstable"] {
        for f in super::abi::wasi::FUNCTIONS {
            assert!(
                linker.get(&mut store, m, f).is_ok(),
                "{m}.{f} is not linked"
            );
        }
    }
    // What Emscripten and wasi-sdk C++ builds import from `env` besides the ABI.
    for f in ["emscripten_notify_memory_growth", "pthread_equal"] {
        assert!(linker.get(&mut store, "env", f).is_ok(), "env.{f}");
    }
}

#[test]
fn go_runtime_wasi_calls_behave_as_in_envoy() {
    // fd_fdstat_set_flags is ENOSYS (52); poll_oneoff succeeds with zero
    // events (the Go runtime sleeps through it); the same import twice is
    // legal (Go modules import fd_write twice).
    let imports = r#"
  (import "wasi_snapshot_preview1" "fd_write" (func $w1 (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $w2 (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_fdstat_set_flags" (func $setfl (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#;
    let hook = r#"
    (i32.store (i32.const 200) (i32.const 99))
    (if (i32.ne (call $setfl (i32.const 1) (i32.const 4)) (i32.const 52)) (then unreachable))
    (if (i32.ne (call $poll (i32.const 300) (i32.const 400) (i32.const 1) (i32.const 200)) (i32.const 0)) (then unreachable))
    (if (i32.ne (i32.load (i32.const 200)) (i32.const 0)) (then unreachable))
    ;; a bad result pointer is a fault (21), not a host crash
    (if (i32.ne (call $poll (i32.const 300) (i32.const 400) (i32.const 1) (i32.const -2)) (i32.const 21)) (then unreachable))
    (drop (call $reply (i32.const 204) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
    i32.const 1"#;
    let p = compile(&module_with(imports, "", hook)).unwrap_or_else(|e| panic!("{e}"));
    match run(&p).0 {
        Ok(Verdict::Respond(r)) => assert_eq!(r.status, StatusCode::NO_CONTENT),
        other => panic!("{other:?}"),
    }
}

#[test]
fn memory_grow_past_the_limit_returns_minus_one_and_the_instance_lives() {
    // The guest asks for 4 MiB more under a 2 MiB limit: memory.grow says -1
    // (the guest may cope, as a Go or Rust allocator does), nothing traps,
    // and the same instance serves the next request.
    let p = plugin(
        "(if (i32.ne (memory.grow (i32.const 64)) (i32.const -1)) (then unreachable)) (drop (call $add (i32.const 0) (i32.const 16) (i32.const 6) (i32.const 32) (i32.const 3))) i32.const 0",
        Limits {
            memory: 2 << 20,
            ..Limits::default()
        },
    );
    let mut inst = PluginInstance::new(&p).unwrap_or_else(|e| panic!("instance: {e}"));
    for _ in 0..2 {
        let ctx = inst
            .create_stream(super::instance::ROOT_ID)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut txn = Txn::for_test("/x", ([127, 0, 0, 1], 4000).into());
        let v = inst.request_headers(ctx, &mut txn, true);
        assert!(matches!(v, Ok(Verdict::Continue)), "{v:?}");
        assert_eq!(
            txn.req_headers.get("x-seen").map(|v| v.as_bytes()),
            Some(&b"yes"[..])
        );
    }
    assert_eq!(p.shared().stats.failures_of(FailureKind::MemoryLimit), 0);
}

#[test]
fn abi_versions_are_checked() {
    let with_export = |name: &str, imports: &str| {
        module_with(imports, "", "i32.const 0").replacen(
            "(memory",
            &format!("(func (export \"{name}\"))\n  (memory"),
            1,
        )
    };
    let p = compile(&with_export("proxy_abi_version_0_2_0", "")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.abi, super::module::AbiVersion::V0_2_0);
    let p = compile(&with_export("proxy_abi_version_0_2_1", "")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.abi, super::module::AbiVersion::V0_2_1);
    let e = compile(&with_export("proxy_abi_version_0_1_0", ""))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("ABI 0.1.0"), "{e}");
    // proxy_get_log_level is ABI 0.2.1's: a 0.2.0 module cannot import it (Envoy does not link it).
    let e = compile(&with_export(
        "proxy_abi_version_0_2_0",
        r#"(import "env" "proxy_get_log_level" (func (param i32) (result i32)))"#,
    ))
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(e.contains("proxy_get_log_level"), "{e}");
}

#[test]
fn a_rejected_config_fails_the_load_with_what_the_plugin_logged() {
    // on_configure logs why (critical, as the Go SDK's LogCritical) and says no.
    let src = module_with(
        r#"(import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 16) "bad config: want JSON")"#,
        "i32.const 0",
    )
    .replacen(
        "(func (export \"proxy_on_context_create\")",
        "(func (export \"proxy_on_configure\") (param i32 i32) (result i32)\n    (drop (call $log (i32.const 5) (i32.const 16) (i32.const 21))) i32.const 0)\n  (func (export \"proxy_on_context_create\")",
        1,
    );
    let e = compile(&src)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("rejected its config"), "{e}");
    assert!(e.contains("bad config: want JSON"), "{e}");
}

#[test]
fn what_a_dying_guest_printed_is_flushed() {
    // Like a Go panic: a message on stderr without a final newline, then a
    // trap. The partial line reaches the log (here: the load error).
    let src = module_with(
        r#"(import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 16) "panic: boom") (data (i32.const 32) "\10\00\00\00\0b\00\00\00")"#,
        "i32.const 0",
    )
    .replacen(
        "(func (export \"proxy_on_context_create\")",
        "(func (export \"proxy_on_vm_start\") (param i32 i32) (result i32)\n    (drop (call $w (i32.const 2) (i32.const 32) (i32.const 1) (i32.const 48))) unreachable)\n  (func (export \"proxy_on_context_create\")",
        1,
    );
    let e = compile(&src)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("panic: boom"), "{e}");
}

#[test]
fn the_request_map_shows_host_as_authority_only() {
    // As Envoy's HTTP/1 codec: `Host` is `:authority`; no `host` entry.
    let imports = r#"
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $rep (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))"#;
    let data = r#"(data (i32.const 16) "host") (data (i32.const 32) "new.example") (data (i32.const 48) "x-pairs")"#;
    // Reading `host` finds nothing (1); the pairs go to x-pairs for the test to read;
    // writing `host` writes :authority.
    let hook = r#"
    (if (i32.ne (call $get (i32.const 0) (i32.const 16) (i32.const 4) (i32.const 100) (i32.const 104)) (i32.const 1)) (then unreachable))
    (if (i32.ne (call $pairs (i32.const 0) (i32.const 100) (i32.const 104)) (i32.const 0)) (then unreachable))
    (i32.store (i32.const 108) (i32.load (i32.const 104)))
    (drop (call $rep (i32.const 0) (i32.const 16) (i32.const 4) (i32.const 32) (i32.const 11)))
    i32.const 0"#;
    let p = compile(&module_with(imports, data, hook)).unwrap_or_else(|e| panic!("{e}"));
    let mut inst = PluginInstance::new(&p).unwrap_or_else(|e| panic!("{e}"));
    let ctx = inst
        .create_stream(super::instance::ROOT_ID)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut txn = Txn::for_test("/x", ([127, 0, 0, 1], 4000).into());
    txn.req_headers
        .insert(http::header::HOST, HeaderValue::from_static("old.example"));
    let v = inst.request_headers(ctx, &mut txn, true);
    assert!(matches!(v, Ok(Verdict::Continue)), "{v:?}");
    assert_eq!(
        txn.req_headers
            .get_all(http::header::HOST)
            .iter()
            .collect::<Vec<_>>(),
        vec![&HeaderValue::from_static("new.example")]
    );
    let size = inst.guest_memory(104, 4);
    let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]);
    let at = inst.guest_memory(100, 4);
    let at = u32::from_le_bytes([at[0], at[1], at[2], at[3]]);
    let pairs = inst.guest_memory(at, size);
    let decoded = super::abi::pairs::decode(&pairs).map(|l| {
        l.iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect::<Vec<_>>()
    });
    let list = decoded.unwrap_or_else(|e| panic!("pairs: {e:?}"));
    assert!(
        list.iter()
            .any(|(k, v)| k == ":authority" && v == "old.example"),
        "{list:?}"
    );
    assert!(list.iter().all(|(k, _)| k != "host"), "{list:?}");
    for p in [":method", ":path", ":scheme"] {
        assert!(list.iter().any(|(k, _)| k == p), "{p}: {list:?}");
    }
}

#[test]
fn config_reads_for_0x7fffffff_bytes_get_the_whole_config() {
    // The Go SDK reads its configuration asking for math.MaxInt32 bytes.
    let src = module_with(
        r#"(import "env" "proxy_get_buffer_bytes" (func $buf (param i32 i32 i32 i32 i32) (result i32)))"#,
        "",
        "i32.const 0",
    )
    .replacen(
        "(func (export \"proxy_on_context_create\")",
        "(func (export \"proxy_on_configure\") (param i32 i32) (result i32)\n    (if (i32.ne (call $buf (i32.const 7) (i32.const 0) (i32.const 0x7fffffff) (i32.const 100) (i32.const 104)) (i32.const 0)) (then (return (i32.const 0))))\n    (i32.eq (i32.load (i32.const 104)) (i32.const 11)))\n  (func (export \"proxy_on_context_create\")",
        1,
    );
    let spec = PluginSpec {
        config: b"{\"a\": true}".to_vec(),
        ..PluginSpec::new("unit")
    };
    if let Err(e) = WasmPlugin::compile(src.as_bytes(), spec) {
        panic!("the config read failed: {e}");
    }
}

#[test]
fn a_file_that_is_no_module_says_what_a_module_looks_like() {
    // A text file named .wasm used to get wat's "expected `(`".
    for (bytes, want) in [
        (&b"hello"[..], "but this file starts with 68 65 6c 6c 6f"),
        (&b""[..], "but this file is empty"),
        (
            &b"\x7fELF\x02\x01"[..],
            "but this file starts with 7f 45 4c 46 02 01",
        ),
    ] {
        let e = WasmPlugin::compile(bytes, PluginSpec::new("x"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("a binary module starts with the bytes 00 61 73 6d"),
            "{e}"
        );
        assert!(e.contains(want), "{e}");
    }
    // Text modules (comments first) still compile.
    let ok = WasmPlugin::compile_unchecked(b";; a comment\n(module)", PluginSpec::new("x"));
    assert!(ok.is_ok() || ok.is_err_and(|e| !e.to_string().contains("binary module starts")));
}

#[test]
fn a_trap_is_one_line_with_demangled_frames() {
    // wasmtime's own message is a multi-line backtrace of mangled symbols.
    let wat = r#"(module
  (memory (export "memory") 1)
  (func (export "malloc") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) i32.const 1)
  (func (export "proxy_on_configure") (param i32 i32) (result i32) i32.const 1)
  (func $_ZN4core9panicking5panic17h1234567890abcdefE unreachable)
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    call $_ZN4core9panicking5panic17h1234567890abcdefE i32.const 0))"#;
    let p = WasmPlugin::compile(wat.as_bytes(), PluginSpec::new("trap"))
        .unwrap_or_else(|e| panic!("compile: {e}"));
    let (r, _) = run(&p);
    let f = r.expect_err("the guest traps");
    assert_eq!(f.kind, FailureKind::Unreachable);
    assert!(!f.message.contains('\n'), "{}", f.message);
    assert!(
        f.message
            .starts_with("wasm `unreachable` instruction executed (in core::panicking::panic <- "),
        "{}",
        f.message
    );
}

#[test]
fn grpc_host_calls_check_their_arguments_and_limits() {
    // Cluster "g" is a backend; "zz" is not. Nothing is started here (no
    // worker): the calls stay queued in the instance.
    let imports = r#"
  (import "env" "proxy_grpc_call" (func $gc (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_stream" (func $gs (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_send" (func $send (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_cancel" (func $cancel (param i32) (result i32)))
  (import "env" "proxy_grpc_close" (func $close (param i32) (result i32)))
  (import "env" "proxy_get_status" (func $status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#;
    let data = r#"
  (data (i32.const 16) "g")
  (data (i32.const 32) "test.Echo")
  (data (i32.const 48) "Unary")
  (data (i32.const 80) "hi")
  (data (i32.const 112) "zz")
  (data (i32.const 120) "bad/name")"#;
    // Arguments after the cluster: service, method, empty metadata, message, timeout, token.
    let call = |cluster: &str, len: u32| {
        format!(
            "(call $gc (i32.const {cluster}) (i32.const {len}) (i32.const 32) (i32.const 9) (i32.const 48) (i32.const 5) (i32.const 64) (i32.const 4) (i32.const 80) (i32.const 2) (i32.const 1000) (i32.const 96))"
        )
    };
    let ok = call("16", 1);
    let hook = format!(
        r#"(local $i i32)
    ;; a bare name that is no backend: PARSE_FAILURE, as Envoy
    (if (i32.ne {unknown} (i32.const 4)) (then unreachable))
    ;; a method name with '/': BAD_ARGUMENT
    (if (i32.ne (call $gc (i32.const 16) (i32.const 1) (i32.const 32) (i32.const 9) (i32.const 120) (i32.const 8) (i32.const 64) (i32.const 4) (i32.const 80) (i32.const 2) (i32.const 0) (i32.const 96)) (i32.const 2)) (then unreachable))
    ;; bad memory: INVALID_MEMORY_ACCESS
    (if (i32.ne (call $gc (i32.const 16) (i32.const -1) (i32.const 32) (i32.const 9) (i32.const 48) (i32.const 5) (i32.const 64) (i32.const 4) (i32.const 80) (i32.const 2) (i32.const 0) (i32.const 96)) (i32.const 6)) (then unreachable))
    ;; the first call: OK, Envoy's first call token 5
    (if (i32.ne {ok} (i32.const 0)) (then unreachable))
    (if (i32.ne (i32.load (i32.const 96)) (i32.const 5)) (then unreachable))
    ;; sending on a call token: BAD_ARGUMENT; on an unknown stream: NOT_FOUND
    (if (i32.ne (call $send (i32.const 5) (i32.const 80) (i32.const 2) (i32.const 0)) (i32.const 2)) (then unreachable))
    (if (i32.ne (call $send (i32.const 10) (i32.const 80) (i32.const 2) (i32.const 0)) (i32.const 1)) (then unreachable))
    ;; cancel: OK, then NOT_FOUND
    (if (i32.ne (call $cancel (i32.const 5)) (i32.const 0)) (then unreachable))
    (if (i32.ne (call $cancel (i32.const 5)) (i32.const 1)) (then unreachable))
    ;; a stream: token 6; send OK; close OK; close again OK (the server has not closed)
    (if (i32.ne (call $gs (i32.const 16) (i32.const 1) (i32.const 32) (i32.const 9) (i32.const 48) (i32.const 5) (i32.const 64) (i32.const 4) (i32.const 96)) (i32.const 0)) (then unreachable))
    (if (i32.ne (i32.load (i32.const 96)) (i32.const 6)) (then unreachable))
    (if (i32.ne (call $send (i32.const 6) (i32.const 80) (i32.const 2) (i32.const 0)) (i32.const 0)) (then unreachable))
    (if (i32.ne (call $close (i32.const 6)) (i32.const 0)) (then unreachable))
    (if (i32.ne (call $cancel (i32.const 6)) (i32.const 0)) (then unreachable))
    ;; not a gRPC token at all: BAD_ARGUMENT
    (if (i32.ne (call $cancel (i32.const 8)) (i32.const 2)) (then unreachable))
    ;; 64 live calls are accepted, the 65th is INTERNAL_FAILURE
    (block $done (loop $l
      (br_if $done (i32.eq (local.get $i) (i32.const 64)))
      (if (i32.ne {ok} (i32.const 0)) (then unreachable))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (if (i32.ne {ok} (i32.const 10)) (then unreachable))
    ;; proxy_get_status is always OK
    (if (i32.ne (call $status (i32.const 200) (i32.const 204) (i32.const 208)) (i32.const 0)) (then unreachable))
    (drop (call $reply (i32.const 204) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
    i32.const 1"#,
        unknown = call("112", 2),
    );
    let mut spec = PluginSpec::new("unit");
    let upstream = super::cluster::Cluster::fixed(
        "g",
        &[([127, 0, 0, 1], 9).into()],
        std::time::Duration::from_secs(1),
    );
    spec.clusters = std::sync::Arc::new(
        [("g".to_string(), std::sync::Arc::new(upstream))]
            .into_iter()
            .collect(),
    );
    let p = WasmPlugin::compile(module_with(imports, data, &hook).as_bytes(), spec)
        .unwrap_or_else(|e| panic!("{e}"));
    match run(&p).0 {
        Ok(Verdict::Respond(r)) => assert_eq!(r.status, StatusCode::NO_CONTENT),
        other => panic!("{other:?}"),
    }
}
