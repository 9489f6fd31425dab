;; bench scenario `wasm-headers`: the `headers` scenario's work done by a
;; Proxy-Wasm filter: add X-Bench-Add, set X-Bench-Set, delete X-Bench-Del on
;; the request (map 0) and on the response (map 2).
(module
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $set (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $del (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "x-bench-add")
  (data (i32.const 32) "x-bench-set")
  (data (i32.const 48) "x-bench-del")
  (data (i32.const 64) "1")
  (global $heap (mut i32) (i32.const 1024))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    global.get $heap local.set $p
    global.get $heap local.get $n i32.add global.set $heap
    local.get $p)
  (func $rewrite (param $map i32)
    (drop (call $add (local.get $map) (i32.const 16) (i32.const 11) (i32.const 64) (i32.const 1)))
    (drop (call $set (local.get $map) (i32.const 32) (i32.const 11) (i32.const 64) (i32.const 1)))
    (drop (call $del (local.get $map) (i32.const 48) (i32.const 11))))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) i32.const 1)
  (func (export "proxy_on_configure") (param i32 i32) (result i32) i32.const 1)
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $rewrite (i32.const 0)) i32.const 0)
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (call $rewrite (i32.const 2)) i32.const 0))
