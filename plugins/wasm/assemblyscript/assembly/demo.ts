// The AssemblyScript member of portcullis's demo filter family (see
// plugins/wasm/c/demo.c for the behaviour, shared by the C and Rust
// members; tests/e2e_wasm_sdks.rs checks it through the proxy). Here the
// guest name is "as".
//
// Build: npm ci && npx asc assembly/demo.ts --outFile demo_as.wasm
// (the flags are in asconfig.json).

import * as abi from "./abi";

const GUEST = "as";

class Stream {
  body: bool = false;
  calling: bool = false;
  token: u32 = 0;
  method: string = "";
  path: string = "";
}

let upstream = "";
let ticksSeen: u32 = 0;
const streams = new Map<u32, Stream>();

// ---- exports the host calls -------------------------------------------------

export function proxy_abi_version_0_2_1(): void {}

export function proxy_on_memory_allocate(size: usize): usize {
  return abi.allocate(size);
}

export function proxy_on_context_create(id: u32, parent: u32): void {
  if (parent != 0) streams.set(id, new Stream());
}

export function proxy_on_vm_start(root: u32, size: u32): u32 {
  return 1;
}

export function proxy_on_configure(root: u32, size: u32): u32 {
  const cfg = size > 0 ? abi.getBuffer(abi.BUF_PLUGIN_CONFIG, 0, size) : null;
  const text = cfg !== null ? String.UTF8.decode(cfg.buffer) : "";
  if (!text.startsWith("upstream=") || text.length == 9) {
    abi.log(abi.LOG_WARN, GUEST + " needs config \"upstream=<backend>\"");
    return 0;
  }
  upstream = text.substring(9);
  sharedInit("hits");
  sharedInit("ticks");
  abi.setTickPeriod(100);
  return 1;
}

// Creates the counter `key` at 0 unless it exists. A set with cas 0 is
// unconditional, so two workers creating the same key could both write;
// doing it here avoids that: the first on_configure runs once, when the
// plugin is loaded, before any worker serves.
function sharedInit(key: string): void {
  if (abi.getShared(key).value === null) abi.setShared(key, "0", 0);
}

// Busy-waits `ms` milliseconds of the host's clock.
function hold(ms: u32): void {
  const start = abi.nowNanos();
  while (abi.nowNanos() - start < <u64>ms * 1000000) {}
}

// Adds `delta` to the decimal counter `key` in shared data, retrying (and
// logging "as cas retry") when another worker changed it in between (CAS
// mismatch). `holdMs` widens the window between the first read and write so
// that the tests can make workers race (retries go at full speed, or a loser
// could keep losing). The new value.
function sharedAdd(key: string, delta: u32, holdMs: u32): u32 {
  for (let attempt = 0; attempt < 100; attempt++) {
    const cur = abi.getShared(key);
    const value: u32 = cur.value !== null ? <u32>parseInt(cur.value!) : 0;
    if (holdMs > 0 && attempt == 0) hold(holdMs);
    const s = abi.setShared(key, (value + delta).toString(), cur.cas);
    if (s == abi.OK) return value + delta;
    if (s != abi.CAS_MISMATCH) break;
    abi.log(abi.LOG_INFO, GUEST + " cas retry");
  }
  abi.log(abi.LOG_WARN, GUEST + " shared counter update failed");
  return 0;
}

export function proxy_on_tick(root: u32): void {
  const total = sharedAdd("ticks", 1, 0);
  ticksSeen++;
  if (ticksSeen <= 3) {
    abi.log(abi.LOG_INFO, GUEST + " tick " + ticksSeen.toString() + " total " + total.toString());
  }
}

function startAuthCall(s: Stream): u32 {
  // "/call/<code>..." -> "GET /status/<code>" on the upstream.
  let code = "";
  for (let i = 6; i < s.path.length; i++) {
    const c = s.path.charCodeAt(i);
    if (c < 48 || c > 57) break;
    code += String.fromCharCode(c);
  }
  const token = abi.httpCall(
    upstream,
    [[":method", "GET"], [":path", "/status/" + code], [":authority", "auth"], ["x-from", GUEST]],
    2000,
  );
  if (token < 0) {
    abi.sendLocalResponse(503, GUEST + ": cannot dispatch the auth call\n", []);
    return abi.PAUSE;
  }
  s.calling = true;
  s.token = <u32>token;
  return abi.PAUSE;
}

export function proxy_on_request_headers(ctx: u32, n: u32, eos: u32): u32 {
  if (!streams.has(ctx)) return abi.CONTINUE;
  const s = streams.get(ctx);
  const m = abi.getHeader(abi.MAP_REQUEST, ":method");
  const p = abi.getHeader(abi.MAP_REQUEST, ":path");
  s.method = m !== null ? m : "";
  s.path = p !== null ? p : "";

  abi.addHeader(abi.MAP_REQUEST, "x-guest", GUEST);
  abi.addHeader(abi.MAP_REQUEST, "x-seen", s.method + " " + s.path);
  if (abi.getHeader(abi.MAP_REQUEST, "x-replace-me") !== null) {
    abi.replaceHeader(abi.MAP_REQUEST, "x-replace-me", "replaced");
  }
  abi.removeHeader(abi.MAP_REQUEST, "x-remove-me");

  if (s.path.startsWith("/local")) {
    abi.sendLocalResponse(403, GUEST + " says no\n", [["x-local-by", GUEST]]);
    return abi.PAUSE;
  }
  if (s.path.startsWith("/call/")) return startAuthCall(s);
  if (s.path.startsWith("/body")) s.body = true;
  if (s.path.startsWith("/count")) {
    abi.addHeader(abi.MAP_REQUEST, "x-hits", sharedAdd("hits", 1, 5).toString());
  }
  if (s.path.startsWith("/ticks")) {
    const t = abi.getShared("ticks");
    abi.addHeader(abi.MAP_REQUEST, "x-ticks", t.value !== null ? t.value! : "0");
  }
  return abi.CONTINUE;
}

// As in Envoy, the answer of an http call is delivered on the root context:
// the token says which request made the call; switch to it first.
export function proxy_on_http_call_response(ctx: u32, token: u32, nHeaders: u32, bodySize: u32, nTrailers: u32): void {
  const ids = streams.keys();
  let found: Stream | null = null;
  let id: u32 = 0;
  for (let i = 0; i < ids.length; i++) {
    const s = streams.get(ids[i]);
    if (s.calling && s.token == token) {
      found = s;
      id = ids[i];
      break;
    }
  }
  if (found === null) return;
  const s = found;
  s.calling = false;
  if (!abi.setEffectiveContext(id)) return;
  if (nHeaders == 0) {
    abi.sendLocalResponse(503, GUEST + ": auth unreachable\n", []);
    return;
  }
  const st = abi.getHeader(abi.MAP_CALL_RESPONSE, ":status");
  const status = st !== null ? st : "";
  if (status.length == 3 && status.startsWith("2")) {
    abi.addHeader(abi.MAP_REQUEST, "x-auth-status", status);
    const server = abi.getHeader(abi.MAP_CALL_RESPONSE, "x-server");
    if (server !== null) abi.addHeader(abi.MAP_REQUEST, "x-auth-server", server);
    const body = bodySize > 0 ? abi.getBuffer(abi.BUF_CALL_RESPONSE, 0, bodySize) : null;
    abi.addHeader(abi.MAP_REQUEST, "x-auth-bytes", (body !== null ? body.length : 0).toString());
    abi.continueRequest();
  } else {
    abi.sendLocalResponse(403, GUEST + ": auth said " + status + "\n", []);
  }
}

export function proxy_on_request_body(ctx: u32, size: u32, eos: u32): u32 {
  if (!streams.has(ctx) || !streams.get(ctx).body) return abi.CONTINUE;
  if (eos == 0) return abi.PAUSE; // buffer it all
  const got = size > 0 ? abi.getBuffer(abi.BUF_REQUEST, 0, size) : null;
  const body = got !== null ? got : new Uint8Array(0);
  const prefix = Uint8Array.wrap(String.UTF8.encode(GUEST + ":"));
  const out = new Uint8Array(prefix.length + body.length);
  out.set(prefix, 0);
  for (let i = 0; i < body.length; i++) {
    const c = body[i];
    out[prefix.length + i] = c >= 97 && c <= 122 ? c - 32 : c;
  }
  // Replace the whole buffer.
  abi.setBuffer(abi.BUF_REQUEST, 0, 0xffffffff, out);
  return abi.CONTINUE;
}

export function proxy_on_response_headers(ctx: u32, n: u32, eos: u32): u32 {
  abi.addHeader(abi.MAP_RESPONSE, "x-resp-guest", GUEST);
  abi.replaceHeader(abi.MAP_RESPONSE, "x-server", "hidden");
  abi.removeHeader(abi.MAP_RESPONSE, "x-secret");
  return abi.CONTINUE;
}

export function proxy_on_response_body(ctx: u32, size: u32, eos: u32): u32 {
  if (!streams.has(ctx) || !streams.get(ctx).body) return abi.CONTINUE;
  if (eos == 0) return abi.PAUSE;
  const tail = Uint8Array.wrap(String.UTF8.encode("\n" + GUEST + " saw " + size.toString() + " bytes\n"));
  // Insert at the end: replace the empty range size..size.
  abi.setBuffer(abi.BUF_RESPONSE, size, 0, tail);
  return abi.CONTINUE;
}

export function proxy_on_log(ctx: u32): void {
  if (!streams.has(ctx)) return;
  const s = streams.get(ctx);
  if (s.path.length == 0) return;
  const st = abi.getHeader(abi.MAP_RESPONSE, ":status");
  abi.log(abi.LOG_INFO, GUEST + " log " + s.method + " " + s.path + " -> " + (st !== null ? st : ""));
}

export function proxy_on_done(ctx: u32): u32 {
  return 1;
}

export function proxy_on_delete(ctx: u32): void {
  streams.delete(ctx);
}
