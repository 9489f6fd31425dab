// Minimal bindings to the Proxy-Wasm ABI v0.2.1 (import module "env"),
// written for portcullis's AssemblyScript demo filter: only the calls the
// filter uses, each wrapped to take and return AssemblyScript strings.
// Data the host returns is written into memory from our allocator
// (`proxy_on_memory_allocate` → `heap.alloc`), copied out here and freed.

export const OK: u32 = 0;
export const NOT_FOUND: u32 = 1;
export const CAS_MISMATCH: u32 = 8;

export const LOG_INFO: u32 = 2;
export const LOG_WARN: u32 = 3;
export const LOG_CRITICAL: u32 = 5;

export const MAP_REQUEST: u32 = 0;
export const MAP_RESPONSE: u32 = 2;
export const MAP_CALL_RESPONSE: u32 = 6;

export const BUF_REQUEST: u32 = 0;
export const BUF_RESPONSE: u32 = 1;
export const BUF_CALL_RESPONSE: u32 = 4;
export const BUF_PLUGIN_CONFIG: u32 = 7;

export const CONTINUE: u32 = 0;
export const PAUSE: u32 = 1;

// ---- raw imports ----------------------------------------------------------

@external("env", "proxy_log")
declare function proxy_log(level: u32, ptr: usize, len: usize): u32;
@external("env", "proxy_get_current_time_nanoseconds")
declare function proxy_get_current_time_nanoseconds(ret: usize): u32;
@external("env", "proxy_set_tick_period_milliseconds")
declare function proxy_set_tick_period_milliseconds(ms: u32): u32;
@external("env", "proxy_set_effective_context")
declare function proxy_set_effective_context(ctx: u32): u32;
@external("env", "proxy_get_buffer_bytes")
declare function proxy_get_buffer_bytes(kind: u32, start: u32, max: u32, retPtr: usize, retLen: usize): u32;
@external("env", "proxy_set_buffer_bytes")
declare function proxy_set_buffer_bytes(kind: u32, start: u32, size: u32, ptr: usize, len: usize): u32;
@external("env", "proxy_get_header_map_value")
declare function proxy_get_header_map_value(map: u32, kptr: usize, klen: usize, retPtr: usize, retLen: usize): u32;
@external("env", "proxy_add_header_map_value")
declare function proxy_add_header_map_value(map: u32, kptr: usize, klen: usize, vptr: usize, vlen: usize): u32;
@external("env", "proxy_replace_header_map_value")
declare function proxy_replace_header_map_value(map: u32, kptr: usize, klen: usize, vptr: usize, vlen: usize): u32;
@external("env", "proxy_remove_header_map_value")
declare function proxy_remove_header_map_value(map: u32, kptr: usize, klen: usize): u32;
@external("env", "proxy_continue_stream")
declare function proxy_continue_stream(stream: u32): u32;
@external("env", "proxy_send_local_response")
declare function proxy_send_local_response(
  status: u32, dptr: usize, dlen: usize, bptr: usize, blen: usize, hptr: usize, hlen: usize, grpc: i32,
): u32;
@external("env", "proxy_http_call")
declare function proxy_http_call(
  uptr: usize, ulen: usize, hptr: usize, hlen: usize, bptr: usize, blen: usize,
  tptr: usize, tlen: usize, timeoutMs: u32, retToken: usize,
): u32;
@external("env", "proxy_get_shared_data")
declare function proxy_get_shared_data(kptr: usize, klen: usize, retPtr: usize, retLen: usize, retCas: usize): u32;
@external("env", "proxy_set_shared_data")
declare function proxy_set_shared_data(kptr: usize, klen: usize, vptr: usize, vlen: usize, cas: u32): u32;

// ---- helpers ----------------------------------------------------------------

// Out-parameters of the host calls: pointer, length, cas / token.
const OUT: usize = memory.data(16);

function utf8(s: string): ArrayBuffer {
  return String.UTF8.encode(s);
}

// Takes the (pointer, length) the host wrote at OUT: the bytes as a string, freed.
function takeString(): string {
  const ptr = load<usize>(OUT);
  const len = load<u32>(OUT + 4);
  if (ptr == 0) return "";
  const s = String.UTF8.decodeUnsafe(ptr, len);
  heap.free(ptr);
  return s;
}

function clearOut(): void {
  store<usize>(OUT, 0);
  store<u32>(OUT + 4, 0);
  store<u32>(OUT + 8, 0);
}

/** Called by the host for the data it returns. */
export function allocate(size: usize): usize {
  return heap.alloc(size > 0 ? size : 1);
}

/** The abort of this module: a critical log line, then a trap. */
export function asAbort(message: string | null, file: string | null, line: u32, column: u32): void {
  log(
    LOG_CRITICAL,
    "abort: " + (message !== null ? message : "") + " at " + (file !== null ? file : "") +
      ":" + line.toString() + ":" + column.toString(),
  );
  unreachable();
}

export function log(level: u32, msg: string): void {
  const b = utf8(msg);
  proxy_log(level, changetype<usize>(b), b.byteLength);
}

export function nowNanos(): u64 {
  proxy_get_current_time_nanoseconds(OUT);
  return load<u64>(OUT);
}

export function setTickPeriod(ms: u32): void {
  proxy_set_tick_period_milliseconds(ms);
}

export function setEffectiveContext(ctx: u32): bool {
  return proxy_set_effective_context(ctx) == OK;
}

/** A buffer's bytes from `start`, at most `max`; null if the host has none. */
export function getBuffer(kind: u32, start: u32, max: u32): Uint8Array | null {
  clearOut();
  if (proxy_get_buffer_bytes(kind, start, max, OUT, OUT + 4) != OK) return null;
  const ptr = load<usize>(OUT);
  const len = load<u32>(OUT + 4);
  const out = new Uint8Array(len);
  if (ptr != 0) {
    memory.copy(out.dataStart, ptr, len);
    heap.free(ptr);
  }
  return out;
}

/** Replaces bytes `start..start+size` of a buffer with `data`. */
export function setBuffer(kind: u32, start: u32, size: u32, data: Uint8Array): u32 {
  return proxy_set_buffer_bytes(kind, start, size, data.dataStart, data.length);
}

/** A header's value; null if absent. */
export function getHeader(map: u32, name: string): string | null {
  const k = utf8(name);
  clearOut();
  if (proxy_get_header_map_value(map, changetype<usize>(k), k.byteLength, OUT, OUT + 4) != OK) return null;
  return takeString();
}

export function addHeader(map: u32, name: string, value: string): void {
  const k = utf8(name);
  const v = utf8(value);
  proxy_add_header_map_value(map, changetype<usize>(k), k.byteLength, changetype<usize>(v), v.byteLength);
}

export function replaceHeader(map: u32, name: string, value: string): void {
  const k = utf8(name);
  const v = utf8(value);
  proxy_replace_header_map_value(map, changetype<usize>(k), k.byteLength, changetype<usize>(v), v.byteLength);
}

export function removeHeader(map: u32, name: string): void {
  const k = utf8(name);
  proxy_remove_header_map_value(map, changetype<usize>(k), k.byteLength);
}

export function continueRequest(): void {
  proxy_continue_stream(0);
}

/**
 * Header pairs in the ABI layout: u32 count, a (u32 key length, u32 value
 * length) per pair, then every key and value followed by a NUL byte.
 */
export function encodePairs(pairs: string[][]): ArrayBuffer {
  const encoded = new Array<ArrayBuffer>();
  let size = 4 + 8 * pairs.length;
  for (let i = 0; i < pairs.length; i++) {
    for (let j = 0; j < 2; j++) {
      const b = utf8(pairs[i][j]);
      encoded.push(b);
      size += b.byteLength + 1;
    }
  }
  const out = new ArrayBuffer(size);
  const base = changetype<usize>(out);
  store<u32>(base, pairs.length);
  let data = base + 4 + 8 * pairs.length;
  for (let i = 0; i < encoded.length; i++) {
    const b = encoded[i];
    store<u32>(base + 4 + 4 * i, b.byteLength);
    memory.copy(data, changetype<usize>(b), b.byteLength);
    store<u8>(data + b.byteLength, 0);
    data += b.byteLength + 1;
  }
  return out;
}

export function sendLocalResponse(status: u32, body: string, headers: string[][]): void {
  const b = utf8(body);
  const h = encodePairs(headers);
  proxy_send_local_response(status, 0, 0, changetype<usize>(b), b.byteLength, changetype<usize>(h), h.byteLength, -1);
}

/** Dispatches an http call; the token, or -1 if the host refused it. */
export function httpCall(upstream: string, headers: string[][], timeoutMs: u32): i64 {
  const u = utf8(upstream);
  const h = encodePairs(headers);
  clearOut();
  const s = proxy_http_call(
    changetype<usize>(u), u.byteLength, changetype<usize>(h), h.byteLength, 0, 0, 0, 0, timeoutMs, OUT + 8,
  );
  if (s != OK) return -1;
  return <i64>load<u32>(OUT + 8);
}

export class Shared {
  constructor(public value: string | null, public cas: u32) {}
}

export function getShared(key: string): Shared {
  const k = utf8(key);
  clearOut();
  if (proxy_get_shared_data(changetype<usize>(k), k.byteLength, OUT, OUT + 4, OUT + 8) != OK) {
    return new Shared(null, 0);
  }
  const cas = load<u32>(OUT + 8);
  return new Shared(takeString(), cas);
}

export function setShared(key: string, value: string, cas: u32): u32 {
  const k = utf8(key);
  const v = utf8(value);
  return proxy_set_shared_data(changetype<usize>(k), k.byteLength, changetype<usize>(v), v.byteLength, cas);
}
