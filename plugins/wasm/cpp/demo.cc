// A Proxy-Wasm HTTP filter in C++17 (libc++ and wasi-libc for wasm32), written
// against the Proxy-Wasm ABI v0.2.1 with no SDK: a thin typed layer over the
// host calls (namespace host), then root and HTTP contexts as classes kept
// in maps by context id, as an SDK would. It is the C++ member of the "demo
// filter" family that tests/e2e_wasm_sdks.rs runs through portcullis; the
// behaviour (documented in plugins/wasm/c/demo.c) is the same, with the
// guest name "cpp".
//
// Build (Debian: clang, lld, wasi-libc, libclang-rt-dev-wasm32, libc++-dev-wasm32):
//   clang++ --target=wasm32-wasi -std=c++17 -O2 -fno-exceptions \
//     -mexec-model=reactor -o demo_cpp.wasm demo.cc
//
// Unlike the C demo, every root context gets its own object (several
// plugins may share one VM through `vm_id`, each with its root context and
// configuration), and HTTP contexts find their root through the parent id
// given to proxy_on_context_create.

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

constexpr std::string_view kGuest = "cpp";

// ---- Proxy-Wasm ABI v0.2.1 imports (module "env") -------------------------

#define IMPORT(name) __attribute__((import_module("env"), import_name(#name)))

using Status = uint32_t;
enum : Status { kOk = 0, kNotFound = 1, kCasMismatch = 8 };
enum LogLevel : uint32_t { kInfo = 2, kWarn = 3 };
enum MapType : uint32_t { kRequestHeaders = 0, kResponseHeaders = 2, kCallResponseHeaders = 6 };
enum BufferType : uint32_t { kRequestBody = 0, kResponseBody = 1, kCallResponseBody = 4, kPluginConfig = 7 };
enum Action : uint32_t { kContinue = 0, kPause = 1 };

extern "C" {
IMPORT(proxy_log) Status proxy_log(uint32_t level, const char *msg, size_t len);
IMPORT(proxy_get_current_time_nanoseconds) Status proxy_get_current_time_nanoseconds(uint64_t *ret);
IMPORT(proxy_set_tick_period_milliseconds) Status proxy_set_tick_period_milliseconds(uint32_t ms);
IMPORT(proxy_set_effective_context) Status proxy_set_effective_context(uint32_t ctx);
IMPORT(proxy_get_buffer_bytes)
Status proxy_get_buffer_bytes(uint32_t type, uint32_t start, uint32_t max, char **ret, size_t *ret_len);
IMPORT(proxy_set_buffer_bytes)
Status proxy_set_buffer_bytes(uint32_t type, uint32_t start, uint32_t size, const char *data, size_t len);
IMPORT(proxy_get_header_map_value)
Status proxy_get_header_map_value(uint32_t map, const char *key, size_t key_len, char **ret, size_t *ret_len);
IMPORT(proxy_add_header_map_value)
Status proxy_add_header_map_value(uint32_t map, const char *key, size_t key_len, const char *val, size_t val_len);
IMPORT(proxy_replace_header_map_value)
Status proxy_replace_header_map_value(uint32_t map, const char *key, size_t key_len, const char *val,
                                      size_t val_len);
IMPORT(proxy_remove_header_map_value) Status proxy_remove_header_map_value(uint32_t map, const char *key, size_t len);
IMPORT(proxy_continue_stream) Status proxy_continue_stream(uint32_t stream);
IMPORT(proxy_send_local_response)
Status proxy_send_local_response(uint32_t status, const char *details, size_t details_len, const char *body,
                                 size_t body_len, const char *pairs, size_t pairs_len, int32_t grpc_status);
IMPORT(proxy_http_call)
Status proxy_http_call(const char *upstream, size_t upstream_len, const char *headers, size_t headers_len,
                       const char *body, size_t body_len, const char *trailers, size_t trailers_len,
                       uint32_t timeout_ms, uint32_t *token);
IMPORT(proxy_get_shared_data)
Status proxy_get_shared_data(const char *key, size_t key_len, char **ret, size_t *ret_len, uint32_t *cas);
IMPORT(proxy_set_shared_data)
Status proxy_set_shared_data(const char *key, size_t key_len, const char *val, size_t val_len, uint32_t cas);
}

// ---- a typed layer over the host calls -------------------------------------

namespace host {

// Takes ownership of a buffer the host allocated with proxy_on_memory_allocate.
std::string take(char *ptr, size_t len) {
  std::string s(ptr ? ptr : "", ptr ? len : 0);
  std::free(ptr);
  return s;
}

void log(LogLevel level, std::string_view msg) { proxy_log(level, msg.data(), msg.size()); }

uint64_t now_ns() {
  uint64_t t = 0;
  proxy_get_current_time_nanoseconds(&t);
  return t;
}

std::optional<std::string> header(MapType map, std::string_view name) {
  char *ptr = nullptr;
  size_t len = 0;
  if (proxy_get_header_map_value(map, name.data(), name.size(), &ptr, &len) != kOk) return std::nullopt;
  return take(ptr, len);
}

void add_header(MapType map, std::string_view name, std::string_view value) {
  proxy_add_header_map_value(map, name.data(), name.size(), value.data(), value.size());
}

void replace_header(MapType map, std::string_view name, std::string_view value) {
  proxy_replace_header_map_value(map, name.data(), name.size(), value.data(), value.size());
}

void remove_header(MapType map, std::string_view name) { proxy_remove_header_map_value(map, name.data(), name.size()); }

std::optional<std::string> buffer(BufferType type, uint32_t size) {
  char *ptr = nullptr;
  size_t len = 0;
  if (size == 0) return std::string();
  if (proxy_get_buffer_bytes(type, 0, size, &ptr, &len) != kOk) return std::nullopt;
  return take(ptr, len);
}

using Pairs = std::vector<std::pair<std::string_view, std::string_view>>;

// The ABI's pairs layout: u32 count, (u32 key length, u32 value length) per
// pair, then each key and value followed by a NUL; little-endian as wasm32 is.
std::string encode(const Pairs &pairs) {
  std::string out;
  auto u32 = [&out](size_t n) {
    auto v = static_cast<uint32_t>(n);
    out.append(reinterpret_cast<const char *>(&v), 4);
  };
  u32(pairs.size());
  for (const auto &[k, v] : pairs) {
    u32(k.size());
    u32(v.size());
  }
  for (const auto &[k, v] : pairs) {
    out.append(k).push_back('\0');
    out.append(v).push_back('\0');
  }
  return out;
}

void local_reply(uint32_t status, std::string_view body, const Pairs &headers = {}) {
  std::string pairs = encode(headers);
  proxy_send_local_response(status, "", 0, body.data(), body.size(), pairs.data(), pairs.size(), -1);
}

struct Shared {
  std::optional<std::string> value;
  uint32_t cas = 0;
};

Shared shared_get(std::string_view key) {
  char *ptr = nullptr;
  size_t len = 0;
  Shared s;
  if (proxy_get_shared_data(key.data(), key.size(), &ptr, &len, &s.cas) == kOk) s.value = take(ptr, len);
  else s.cas = 0;
  return s;
}

Status shared_set(std::string_view key, std::string_view value, uint32_t cas) {
  return proxy_set_shared_data(key.data(), key.size(), value.data(), value.size(), cas);
}

}  // namespace host

std::string cat(std::initializer_list<std::string_view> parts) {
  std::string s;
  for (auto p : parts) s.append(p);
  return s;
}

uint32_t to_u32(std::string_view s) {
  uint32_t n = 0;
  for (char c : s) {
    if (c < '0' || c > '9') break;
    n = n * 10 + static_cast<uint32_t>(c - '0');
  }
  return n;
}

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

// Busy-waits `ms` milliseconds of the host's clock.
void hold(uint32_t ms) {
  uint64_t start = host::now_ns();
  while (host::now_ns() - start < uint64_t{ms} * 1000000u) {
  }
}

// Adds `delta` to the decimal counter `key` in shared data, retrying (and
// logging "cpp cas retry") on a CAS mismatch, so concurrent workers never
// lose a count; `hold_ms` widens the first read-to-write window so that the
// tests can make workers race. The new value.
uint32_t shared_add(std::string_view key, uint32_t delta, uint32_t hold_ms) {
  for (int attempt = 0; attempt < 100; attempt++) {
    host::Shared cur = host::shared_get(key);
    uint32_t next = to_u32(cur.value.value_or("0")) + delta;
    if (hold_ms && attempt == 0) hold(hold_ms);
    Status s = host::shared_set(key, std::to_string(next), cur.cas);
    if (s == kOk) return next;
    if (s != kCasMismatch) break;
    host::log(kInfo, cat({kGuest, " cas retry"}));
  }
  host::log(kWarn, cat({kGuest, " shared counter update failed"}));
  return 0;
}

// Creates counter `key` at 0 unless it exists (on_configure runs when the
// plugin loads, before any worker serves, so workers never race to create it).
void shared_init(std::string_view key) {
  if (!host::shared_get(key).value) host::shared_set(key, "0", 0);
}

// ---- contexts ----------------------------------------------------------------

class Root {
 public:
  bool configure(uint32_t size) {
    std::string cfg = host::buffer(kPluginConfig, size).value_or("");
    constexpr std::string_view key = "upstream=";
    if (!starts_with(cfg, key) || cfg.size() == key.size()) {
      host::log(kWarn, cat({kGuest, " needs config \"upstream=<backend>\""}));
      return false;
    }
    upstream_ = cfg.substr(key.size());
    shared_init("hits");
    shared_init("ticks");
    proxy_set_tick_period_milliseconds(100);
    return true;
  }

  void tick() {
    uint32_t total = shared_add("ticks", 1, 0);
    if (++ticks_seen_ <= 3) {
      host::log(kInfo, cat({kGuest, " tick ", std::to_string(ticks_seen_), " total ", std::to_string(total)}));
    }
  }

  const std::string &upstream() const { return upstream_; }

 private:
  std::string upstream_;
  uint32_t ticks_seen_ = 0;
};

class Http {
 public:
  Http(uint32_t id, Root *root) : id_(id), root_(root) {}

  Action on_request_headers() {
    method_ = host::header(kRequestHeaders, ":method").value_or("");
    path_ = host::header(kRequestHeaders, ":path").value_or("");
    host::add_header(kRequestHeaders, "x-guest", kGuest);
    host::add_header(kRequestHeaders, "x-seen", cat({method_, " ", path_}));
    if (host::header(kRequestHeaders, "x-replace-me")) host::replace_header(kRequestHeaders, "x-replace-me", "replaced");
    host::remove_header(kRequestHeaders, "x-remove-me");

    if (starts_with(path_, "/local")) {
      host::local_reply(403, cat({kGuest, " says no\n"}), {{"x-local-by", kGuest}});
      return kPause;
    }
    if (starts_with(path_, "/call/")) return start_auth_call();
    body_ = starts_with(path_, "/body");
    if (starts_with(path_, "/count")) {
      host::add_header(kRequestHeaders, "x-hits", std::to_string(shared_add("hits", 1, 5)));
    }
    if (starts_with(path_, "/ticks")) {
      host::add_header(kRequestHeaders, "x-ticks", host::shared_get("ticks").value.value_or("0"));
    }
    return kContinue;
  }

  // The answer to this context's call (routed here by token from the root
  // context, where the host delivers it, with the effective context set).
  void on_call_response(uint32_t n_headers, uint32_t body_size) {
    token_.reset();
    if (n_headers == 0) {
      host::local_reply(503, cat({kGuest, ": auth unreachable\n"}));
      return;
    }
    std::string status = host::header(kCallResponseHeaders, ":status").value_or("");
    if (status.size() == 3 && status[0] == '2') {
      host::add_header(kRequestHeaders, "x-auth-status", status);
      if (auto server = host::header(kCallResponseHeaders, "x-server")) {
        host::add_header(kRequestHeaders, "x-auth-server", *server);
      }
      size_t got = host::buffer(kCallResponseBody, body_size).value_or("").size();
      host::add_header(kRequestHeaders, "x-auth-bytes", std::to_string(got));
      proxy_continue_stream(0);
    } else {
      host::local_reply(403, cat({kGuest, ": auth said ", status.substr(0, 8), "\n"}));
    }
  }

  Action on_request_body(uint32_t size, bool eos) {
    if (!body_) return kContinue;
    if (!eos) return kPause;  // buffer it all
    std::string out = cat({kGuest, ":"});
    for (char c : host::buffer(kRequestBody, size).value_or("")) {
      out.push_back(c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c);
    }
    // Replace the whole buffer (start 0, size = all of it).
    proxy_set_buffer_bytes(kRequestBody, 0, 0xFFFFFFFFu, out.data(), out.size());
    return kContinue;
  }

  Action on_response_headers() {
    host::add_header(kResponseHeaders, "x-resp-guest", kGuest);
    host::replace_header(kResponseHeaders, "x-server", "hidden");
    host::remove_header(kResponseHeaders, "x-secret");
    return kContinue;
  }

  Action on_response_body(uint32_t size, bool eos) {
    if (!body_) return kContinue;
    if (!eos) return kPause;
    std::string note = cat({"\n", kGuest, " saw ", std::to_string(size), " bytes\n"});
    // Insert at the end: replace the empty range size..size.
    proxy_set_buffer_bytes(kResponseBody, size, 0, note.data(), note.size());
    return kContinue;
  }

  void on_log() {
    if (path_.empty()) return;
    std::string status = host::header(kResponseHeaders, ":status").value_or("");
    host::log(kInfo, cat({kGuest, " log ", method_, " ", path_, " -> ", status}));
  }

  std::optional<uint32_t> token() const { return token_; }
  uint32_t id() const { return id_; }

 private:
  Action start_auth_call() {
    // "/call/<code>..." -> "GET /status/<code>" on the upstream.
    std::string code;
    for (char c : std::string_view(path_).substr(6)) {
      if (c < '0' || c > '9') break;
      code.push_back(c);
    }
    std::string path = cat({"/status/", code});
    std::string headers =
        host::encode({{":method", "GET"}, {":path", path}, {":authority", "auth"}, {"x-from", kGuest}});
    const std::string &up = root_->upstream();
    uint32_t token = 0;
    if (proxy_http_call(up.data(), up.size(), headers.data(), headers.size(), nullptr, 0, nullptr, 0, 2000,
                        &token) != kOk) {
      host::local_reply(503, cat({kGuest, ": cannot dispatch the auth call\n"}));
      return kPause;
    }
    token_ = token;
    return kPause;
  }

  uint32_t id_;
  Root *root_;
  bool body_ = false;
  std::optional<uint32_t> token_;
  std::string method_, path_;
};

std::unordered_map<uint32_t, std::unique_ptr<Root>> roots;
std::unordered_map<uint32_t, std::unique_ptr<Http>> streams;

Root *root(uint32_t id) {
  auto it = roots.find(id);
  return it == roots.end() ? nullptr : it->second.get();
}

Http *stream(uint32_t id) {
  auto it = streams.find(id);
  return it == streams.end() ? nullptr : it->second.get();
}

}  // namespace

// ---- exports -------------------------------------------------------------------

#define EXPORT(name) extern "C" __attribute__((export_name(#name)))

EXPORT(proxy_abi_version_0_2_1) void proxy_abi_version_0_2_1() {}

EXPORT(proxy_on_memory_allocate) void *proxy_on_memory_allocate(size_t size) { return std::malloc(size ? size : 1); }

EXPORT(proxy_on_context_create) void proxy_on_context_create(uint32_t id, uint32_t parent) {
  if (parent == 0) {
    roots[id] = std::make_unique<Root>();
  } else if (Root *r = root(parent)) {
    streams[id] = std::make_unique<Http>(id, r);
  }
}

EXPORT(proxy_on_vm_start) uint32_t proxy_on_vm_start(uint32_t, uint32_t) { return 1; }

EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t id, uint32_t size) {
  Root *r = root(id);
  return r && r->configure(size) ? 1 : 0;
}

EXPORT(proxy_on_tick) void proxy_on_tick(uint32_t id) {
  if (Root *r = root(id)) r->tick();
}

EXPORT(proxy_on_request_headers) uint32_t proxy_on_request_headers(uint32_t id, uint32_t, uint32_t) {
  Http *s = stream(id);
  return s ? s->on_request_headers() : kContinue;
}

// As in Envoy, an http call's answer arrives on the root context: the token
// names the stream, which becomes the effective context for its handler.
EXPORT(proxy_on_http_call_response)
void proxy_on_http_call_response(uint32_t, uint32_t token, uint32_t n_headers, uint32_t body_size, uint32_t) {
  for (auto &[id, s] : streams) {
    if (s->token() == token) {
      if (proxy_set_effective_context(id) == kOk) s->on_call_response(n_headers, body_size);
      return;
    }
  }
}

EXPORT(proxy_on_request_body) uint32_t proxy_on_request_body(uint32_t id, uint32_t size, uint32_t eos) {
  Http *s = stream(id);
  return s ? s->on_request_body(size, eos != 0) : kContinue;
}

EXPORT(proxy_on_response_headers) uint32_t proxy_on_response_headers(uint32_t id, uint32_t, uint32_t) {
  Http *s = stream(id);
  return s ? s->on_response_headers() : kContinue;
}

EXPORT(proxy_on_response_body) uint32_t proxy_on_response_body(uint32_t id, uint32_t size, uint32_t eos) {
  Http *s = stream(id);
  return s ? s->on_response_body(size, eos != 0) : kContinue;
}

EXPORT(proxy_on_log) void proxy_on_log(uint32_t id) {
  if (Http *s = stream(id)) s->on_log();
}

EXPORT(proxy_on_done) uint32_t proxy_on_done(uint32_t) { return 1; }

EXPORT(proxy_on_delete) void proxy_on_delete(uint32_t id) {
  streams.erase(id);
  roots.erase(id);
}
