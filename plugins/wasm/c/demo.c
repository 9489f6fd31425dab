/*
 * A Proxy-Wasm HTTP filter in plain C (wasi-libc), written straight against
 * the Proxy-Wasm ABI v0.2.1 with no SDK. It is the C member of the
 * "demo filter" family that tests/e2e_wasm_sdks.rs runs through portcullis;
 * the AssemblyScript (plugins/wasm/assemblyscript) and Rust
 * (plugins/wasm/sdk_demo) members behave the same, with their own name.
 *
 * Build (Debian: clang, lld, wasi-libc, libclang-rt-dev-wasm32):
 *   clang --target=wasm32-wasi -O2 -mexec-model=reactor -o demo_c.wasm demo.c
 *
 * Plugin configuration: "upstream=<backend>", the backend http calls go to.
 *
 * Behaviour (GUEST below is "c"):
 * - every request: adds `x-guest: GUEST` and `x-seen: <method> <path>`,
 *   replaces `x-replace-me` with `replaced`, removes `x-remove-me`;
 * - every response: adds `x-resp-guest: GUEST`, replaces `x-server` with
 *   `hidden`, removes `x-secret`;
 * - `/local...`: answers 403 itself (`x-local-by: GUEST`, body
 *   "GUEST says no\n"); the backend never sees it;
 * - `/call/<code>...`: pauses and asks the upstream for `GET /status/<code>`;
 *   a 2xx answer resumes the request with `x-auth-status`, `x-auth-server`
 *   (the answer's `x-server`) and `x-auth-bytes` (its body size); any other
 *   answer denies with 403 "GUEST: auth said <code>\n"; no answer, 503;
 * - `/body...`: buffers the request body and sends on "GUEST:" + the body
 *   upper-cased; buffers the response body and appends
 *   "\nGUEST saw <n> bytes\n";
 * - `/count...`: increments the shared counter `hits` (compare-and-swap,
 *   retried on a CAS mismatch, logging "GUEST cas retry", so concurrent
 *   workers never lose a count; 5 ms pass between the read and the write to
 *   make races likely) and adds `x-hits: <new value>`;
 * - `/ticks...`: adds `x-ticks: <shared tick count>`;
 * - a 100 ms tick increments the shared `ticks` counter; the first three
 *   ticks of each instance log "GUEST tick <n>";
 * - each finished request logs "GUEST log <method> <path> -> <status>".
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GUEST "c"

/* ---- Proxy-Wasm ABI v0.2.1 imports (module "env") --------------------- */

#define IMPORT(name) __attribute__((import_module("env"), import_name(#name)))
#define EXPORT(name) __attribute__((export_name(#name)))

typedef uint32_t status_t;
enum { OK = 0, NOT_FOUND = 1, CAS_MISMATCH = 8 };
enum { LOG_INFO = 2, LOG_WARN = 3 };
enum { MAP_REQUEST = 0, MAP_RESPONSE = 2, MAP_CALL_RESPONSE = 6 };
enum { BUF_REQUEST = 0, BUF_RESPONSE = 1, BUF_CALL_RESPONSE = 4, BUF_PLUGIN_CONFIG = 7 };
enum { CONTINUE = 0, PAUSE = 1 };

IMPORT(proxy_log) status_t proxy_log(uint32_t level, const char *msg, size_t len);
IMPORT(proxy_get_current_time_nanoseconds) status_t proxy_get_current_time_nanoseconds(uint64_t *ret);
IMPORT(proxy_set_tick_period_milliseconds) status_t proxy_set_tick_period_milliseconds(uint32_t ms);
IMPORT(proxy_set_effective_context) status_t proxy_set_effective_context(uint32_t ctx);
IMPORT(proxy_get_buffer_bytes)
status_t proxy_get_buffer_bytes(uint32_t type, uint32_t start, uint32_t max, char **ret, size_t *ret_len);
IMPORT(proxy_set_buffer_bytes)
status_t proxy_set_buffer_bytes(uint32_t type, uint32_t start, uint32_t size, const char *data, size_t len);
IMPORT(proxy_get_header_map_value)
status_t proxy_get_header_map_value(uint32_t map, const char *key, size_t key_len, char **ret, size_t *ret_len);
IMPORT(proxy_add_header_map_value)
status_t proxy_add_header_map_value(uint32_t map, const char *key, size_t key_len, const char *val, size_t val_len);
IMPORT(proxy_replace_header_map_value)
status_t proxy_replace_header_map_value(uint32_t map, const char *key, size_t key_len, const char *val,
                                        size_t val_len);
IMPORT(proxy_remove_header_map_value)
status_t proxy_remove_header_map_value(uint32_t map, const char *key, size_t key_len);
IMPORT(proxy_continue_stream) status_t proxy_continue_stream(uint32_t stream);
IMPORT(proxy_send_local_response)
status_t proxy_send_local_response(uint32_t status, const char *details, size_t details_len, const char *body,
                                   size_t body_len, const char *pairs, size_t pairs_len, int32_t grpc_status);
IMPORT(proxy_http_call)
status_t proxy_http_call(const char *upstream, size_t upstream_len, const char *headers, size_t headers_len,
                         const char *body, size_t body_len, const char *trailers, size_t trailers_len,
                         uint32_t timeout_ms, uint32_t *token);
IMPORT(proxy_get_shared_data)
status_t proxy_get_shared_data(const char *key, size_t key_len, char **ret, size_t *ret_len, uint32_t *cas);
IMPORT(proxy_set_shared_data)
status_t proxy_set_shared_data(const char *key, size_t key_len, const char *val, size_t val_len, uint32_t cas);

/* ---- small helpers ----------------------------------------------------- */

/* A heap string: the host's answers land in our malloc (proxy_on_memory_allocate). */
typedef struct {
    char *ptr;
    size_t len;
} str_t;

static void str_free(str_t *s) {
    free(s->ptr);
    s->ptr = NULL;
    s->len = 0;
}

static void log_msg(uint32_t level, const char *msg) { proxy_log(level, msg, strlen(msg)); }

/* Writes `n` in decimal at `out` (room for 11 bytes); returns the length. */
static size_t fmt_u32(uint32_t n, char *out) {
    char tmp[11];
    size_t i = 0, len = 0;
    do {
        tmp[i++] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    while (i) out[len++] = tmp[--i];
    out[len] = 0;
    return len;
}

static uint32_t parse_u32(const char *p, size_t len) {
    uint32_t n = 0;
    for (size_t i = 0; i < len && p[i] >= '0' && p[i] <= '9'; i++) n = n * 10 + (uint32_t)(p[i] - '0');
    return n;
}

static int starts_with(const str_t *s, const char *prefix) {
    size_t n = strlen(prefix);
    return s->len >= n && memcmp(s->ptr, prefix, n) == 0;
}

static str_t get_header(uint32_t map, const char *name) {
    str_t s = {0, 0};
    if (proxy_get_header_map_value(map, name, strlen(name), &s.ptr, &s.len) != OK) {
        s.ptr = NULL;
        s.len = 0;
    }
    return s;
}

static void add_header(uint32_t map, const char *name, const char *val, size_t val_len) {
    proxy_add_header_map_value(map, name, strlen(name), val, val_len);
}

static void replace_header(uint32_t map, const char *name, const char *val) {
    proxy_replace_header_map_value(map, name, strlen(name), val, strlen(val));
}

static void remove_header(uint32_t map, const char *name) { proxy_remove_header_map_value(map, name, strlen(name)); }

/*
 * Serialized header pairs, as the ABI lays them out: u32 count, then a
 * (u32 key length, u32 value length) per pair, then each key and value with
 * a NUL after it; little-endian, as wasm32 is.
 */
static char *encode_pairs(const char *const *kv, size_t n, size_t *out_len) {
    size_t size = 4 + 8 * n;
    for (size_t i = 0; i < 2 * n; i++) size += strlen(kv[i]) + 1;
    char *buf = malloc(size);
    if (!buf) return NULL;
    uint32_t count = (uint32_t)n;
    memcpy(buf, &count, 4);
    char *sizes = buf + 4;
    char *data = buf + 4 + 8 * n;
    for (size_t i = 0; i < 2 * n; i++) {
        uint32_t l = (uint32_t)strlen(kv[i]);
        memcpy(sizes + 4 * i, &l, 4);
        memcpy(data, kv[i], l);
        data[l] = 0;
        data += l + 1;
    }
    *out_len = size;
    return buf;
}

static void local_reply(uint32_t status, const char *body, const char *const *headers, size_t n_headers) {
    size_t pairs_len = 0;
    char *pairs = encode_pairs(headers, n_headers, &pairs_len);
    proxy_send_local_response(status, "", 0, body, strlen(body), pairs, pairs_len, -1);
    free(pairs);
}

/* Busy-waits `ms` milliseconds of the host's clock. */
static void hold(uint32_t ms) {
    uint64_t start = 0, now = 0;
    proxy_get_current_time_nanoseconds(&start);
    do proxy_get_current_time_nanoseconds(&now);
    while (now - start < (uint64_t)ms * 1000000u);
}

/* Adds `delta` to the decimal counter `key` in shared data; retries (and
 * logs "GUEST cas retry") on a CAS mismatch: another worker won the race.
 * `hold_ms` widens the window between the first read and write, so that the
 * tests can make workers race (retries go at full speed, or a loser could
 * keep losing). Returns the new value. */
static uint32_t shared_add(const char *key, uint32_t delta, uint32_t hold_ms) {
    for (int attempt = 0; attempt < 100; attempt++) {
        str_t cur = {0, 0};
        uint32_t cas = 0, value = 0;
        status_t s = proxy_get_shared_data(key, strlen(key), &cur.ptr, &cur.len, &cas);
        if (s == OK) {
            value = parse_u32(cur.ptr, cur.len);
        } else {
            cur.ptr = NULL;
            cur.len = 0;
            cas = 0; /* no entry yet: the first write */
        }
        str_free(&cur);
        if (hold_ms && attempt == 0) hold(hold_ms);
        char text[12];
        size_t len = fmt_u32(value + delta, text);
        s = proxy_set_shared_data(key, strlen(key), text, len, cas);
        if (s == OK) return value + delta;
        if (s != CAS_MISMATCH) break;
        log_msg(LOG_INFO, GUEST " cas retry");
    }
    log_msg(LOG_WARN, GUEST " shared counter update failed");
    return 0;
}

/* Creates the counter `key` at 0 unless it exists. A set with cas 0 is
 * unconditional, so two workers creating the same key could both write;
 * doing it here avoids that: the first on_configure runs once, when the
 * plugin is loaded, before any worker serves. */
static void shared_init(const char *key) {
    str_t cur = {0, 0};
    uint32_t cas = 0;
    if (proxy_get_shared_data(key, strlen(key), &cur.ptr, &cur.len, &cas) == OK) {
        str_free(&cur);
        return;
    }
    proxy_set_shared_data(key, strlen(key), "0", 1, 0);
}

static uint32_t shared_get(const char *key) {
    str_t cur = {0, 0};
    uint32_t cas = 0, value = 0;
    if (proxy_get_shared_data(key, strlen(key), &cur.ptr, &cur.len, &cas) == OK) value = parse_u32(cur.ptr, cur.len);
    else cur.ptr = NULL;
    str_free(&cur);
    return value;
}

/* ---- per-context state --------------------------------------------------- */

typedef struct stream {
    uint32_t id;
    int body;           /* a /body request: bodies are buffered and rewritten */
    int calling;        /* an http call is in flight for it */
    uint32_t token;     /* that call's token */
    str_t method, path; /* for the log line */
    struct stream *next;
} stream_t;

static uint32_t root_id;
static str_t upstream;
static uint32_t ticks_seen;
static stream_t *streams;

static stream_t *find_stream(uint32_t id) {
    for (stream_t *s = streams; s; s = s->next)
        if (s->id == id) return s;
    return NULL;
}

/* ---- exports ------------------------------------------------------------- */

EXPORT(proxy_abi_version_0_2_1) void proxy_abi_version_0_2_1(void) {}

EXPORT(proxy_on_memory_allocate) void *proxy_on_memory_allocate(size_t size) { return malloc(size ? size : 1); }

EXPORT(proxy_on_context_create) void proxy_on_context_create(uint32_t id, uint32_t parent) {
    if (parent == 0) {
        root_id = id;
        return;
    }
    stream_t *s = calloc(1, sizeof *s);
    if (!s) return;
    s->id = id;
    s->next = streams;
    streams = s;
}

EXPORT(proxy_on_vm_start) uint32_t proxy_on_vm_start(uint32_t root, uint32_t vm_config_size) {
    (void)root;
    (void)vm_config_size;
    return 1;
}

EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t root, uint32_t config_size) {
    (void)root;
    str_t cfg = {0, 0};
    if (config_size == 0 || proxy_get_buffer_bytes(BUF_PLUGIN_CONFIG, 0, config_size, &cfg.ptr, &cfg.len) != OK) {
        log_msg(LOG_WARN, GUEST " needs config \"upstream=<backend>\"");
        return 0;
    }
    const char *key = "upstream=";
    if (!starts_with(&cfg, key) || cfg.len == strlen(key)) {
        str_free(&cfg);
        log_msg(LOG_WARN, GUEST " needs config \"upstream=<backend>\"");
        return 0;
    }
    str_free(&upstream);
    upstream.len = cfg.len - strlen(key);
    upstream.ptr = malloc(upstream.len + 1);
    memcpy(upstream.ptr, cfg.ptr + strlen(key), upstream.len);
    upstream.ptr[upstream.len] = 0;
    str_free(&cfg);
    shared_init("hits");
    shared_init("ticks");
    proxy_set_tick_period_milliseconds(100);
    return 1;
}

EXPORT(proxy_on_tick) void proxy_on_tick(uint32_t root) {
    (void)root;
    uint32_t total = shared_add("ticks", 1, 0);
    if (++ticks_seen <= 3) {
        char msg[64] = GUEST " tick ";
        fmt_u32(ticks_seen, msg + strlen(msg));
        strcat(msg, " total ");
        fmt_u32(total, msg + strlen(msg));
        log_msg(LOG_INFO, msg);
    }
}

static uint32_t start_auth_call(stream_t *s) {
    /* "/call/<code>..." -> "GET /status/<code>" on the upstream. */
    char path[32] = "/status/";
    size_t at = strlen(path);
    for (size_t i = strlen("/call/"); i < s->path.len && at < sizeof path - 1; i++) {
        char c = s->path.ptr[i];
        if (c < '0' || c > '9') break;
        path[at++] = c;
    }
    path[at] = 0;
    const char *headers[] = {":method", "GET", ":path", path, ":authority", "auth", "x-from", GUEST};
    size_t hlen = 0;
    char *h = encode_pairs(headers, 4, &hlen);
    status_t st = proxy_http_call(upstream.ptr, upstream.len, h, hlen, NULL, 0, NULL, 0, 2000, &s->token);
    free(h);
    if (st != OK) {
        local_reply(503, GUEST ": cannot dispatch the auth call\n", NULL, 0);
        return PAUSE;
    }
    s->calling = 1;
    return PAUSE;
}

EXPORT(proxy_on_request_headers) uint32_t proxy_on_request_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
    (void)n;
    (void)eos;
    stream_t *s = find_stream(ctx);
    if (!s) return CONTINUE;
    s->method = get_header(MAP_REQUEST, ":method");
    s->path = get_header(MAP_REQUEST, ":path");

    add_header(MAP_REQUEST, "x-guest", GUEST, strlen(GUEST));
    size_t seen_len = s->method.len + 1 + s->path.len;
    char *seen = malloc(seen_len + 1);
    memcpy(seen, s->method.ptr, s->method.len);
    seen[s->method.len] = ' ';
    memcpy(seen + s->method.len + 1, s->path.ptr, s->path.len);
    add_header(MAP_REQUEST, "x-seen", seen, seen_len);
    free(seen);
    str_t old = get_header(MAP_REQUEST, "x-replace-me");
    if (old.ptr) replace_header(MAP_REQUEST, "x-replace-me", "replaced");
    str_free(&old);
    remove_header(MAP_REQUEST, "x-remove-me");

    if (starts_with(&s->path, "/local")) {
        const char *headers[] = {"x-local-by", GUEST};
        local_reply(403, GUEST " says no\n", headers, 1);
        return PAUSE;
    }
    if (starts_with(&s->path, "/call/")) return start_auth_call(s);
    if (starts_with(&s->path, "/body")) s->body = 1;
    char num[12];
    if (starts_with(&s->path, "/count")) {
        size_t len = fmt_u32(shared_add("hits", 1, 5), num);
        add_header(MAP_REQUEST, "x-hits", num, len);
    }
    if (starts_with(&s->path, "/ticks")) {
        size_t len = fmt_u32(shared_get("ticks"), num);
        add_header(MAP_REQUEST, "x-ticks", num, len);
    }
    return CONTINUE;
}

/* As in Envoy, the answer to an http call arrives on the root context: the
 * token says which request made it, and the effective context is switched
 * to that request before touching its headers. */
EXPORT(proxy_on_http_call_response)
void proxy_on_http_call_response(uint32_t ctx, uint32_t token, uint32_t n_headers, uint32_t body_size,
                                 uint32_t n_trailers) {
    (void)ctx;
    (void)n_trailers;
    stream_t *s = streams;
    while (s && !(s->calling && s->token == token)) s = s->next;
    if (!s) return;
    s->calling = 0;
    if (proxy_set_effective_context(s->id) != OK) return;
    if (n_headers == 0) {
        local_reply(503, GUEST ": auth unreachable\n", NULL, 0);
        return;
    }
    str_t status = get_header(MAP_CALL_RESPONSE, ":status");
    if (status.len == 3 && status.ptr[0] == '2') {
        add_header(MAP_REQUEST, "x-auth-status", status.ptr, status.len);
        str_t server = get_header(MAP_CALL_RESPONSE, "x-server");
        if (server.ptr) add_header(MAP_REQUEST, "x-auth-server", server.ptr, server.len);
        str_free(&server);
        /* Read the answer's body to count it (buffer type 4). */
        str_t body = {0, 0};
        size_t got = 0;
        if (body_size && proxy_get_buffer_bytes(BUF_CALL_RESPONSE, 0, body_size, &body.ptr, &body.len) == OK)
            got = body.len;
        else
            body.ptr = NULL;
        str_free(&body);
        char num[12];
        size_t len = fmt_u32((uint32_t)got, num);
        add_header(MAP_REQUEST, "x-auth-bytes", num, len);
        proxy_continue_stream(0);
    } else {
        char msg[64] = GUEST ": auth said ";
        size_t at = strlen(msg);
        if (status.len < 8) {
            memcpy(msg + at, status.ptr, status.len);
            at += status.len;
        }
        memcpy(msg + at, "\n", 2);
        local_reply(403, msg, NULL, 0);
    }
    str_free(&status);
}

EXPORT(proxy_on_request_body) uint32_t proxy_on_request_body(uint32_t ctx, uint32_t size, uint32_t eos) {
    stream_t *s = find_stream(ctx);
    if (!s || !s->body) return CONTINUE;
    if (!eos) return PAUSE; /* buffer it all */
    str_t body = {0, 0};
    if (size && proxy_get_buffer_bytes(BUF_REQUEST, 0, size, &body.ptr, &body.len) != OK) body.ptr = NULL, body.len = 0;
    size_t prefix = strlen(GUEST ":");
    char *out = malloc(prefix + body.len + 1);
    memcpy(out, GUEST ":", prefix);
    for (size_t i = 0; i < body.len; i++) {
        char c = body.ptr[i];
        out[prefix + i] = (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
    }
    /* Replace the whole buffer (start 0, size = all of it). */
    proxy_set_buffer_bytes(BUF_REQUEST, 0, 0xFFFFFFFFu, out, prefix + body.len);
    free(out);
    str_free(&body);
    return CONTINUE;
}

EXPORT(proxy_on_response_headers) uint32_t proxy_on_response_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
    (void)ctx;
    (void)n;
    (void)eos;
    add_header(MAP_RESPONSE, "x-resp-guest", GUEST, strlen(GUEST));
    replace_header(MAP_RESPONSE, "x-server", "hidden");
    remove_header(MAP_RESPONSE, "x-secret");
    return CONTINUE;
}

EXPORT(proxy_on_response_body) uint32_t proxy_on_response_body(uint32_t ctx, uint32_t size, uint32_t eos) {
    stream_t *s = find_stream(ctx);
    if (!s || !s->body) return CONTINUE;
    if (!eos) return PAUSE;
    char msg[64] = "\n" GUEST " saw ";
    fmt_u32(size, msg + strlen(msg));
    strcat(msg, " bytes\n");
    /* Insert at the end: replace the empty range size..size. */
    proxy_set_buffer_bytes(BUF_RESPONSE, size, 0, msg, strlen(msg));
    return CONTINUE;
}

EXPORT(proxy_on_log) void proxy_on_log(uint32_t ctx) {
    stream_t *s = find_stream(ctx);
    if (!s || !s->path.ptr) return;
    str_t status = get_header(MAP_RESPONSE, ":status");
    size_t len = strlen(GUEST " log ") + s->method.len + 1 + s->path.len + 4 + status.len;
    char *msg = malloc(len + 1);
    char *p = msg;
    memcpy(p, GUEST " log ", strlen(GUEST " log "));
    p += strlen(GUEST " log ");
    memcpy(p, s->method.ptr, s->method.len);
    p += s->method.len;
    *p++ = ' ';
    memcpy(p, s->path.ptr, s->path.len);
    p += s->path.len;
    memcpy(p, " -> ", 4);
    p += 4;
    if (status.len) memcpy(p, status.ptr, status.len);
    p += status.len;
    proxy_log(LOG_INFO, msg, (size_t)(p - msg));
    free(msg);
    str_free(&status);
}

EXPORT(proxy_on_done) uint32_t proxy_on_done(uint32_t ctx) {
    (void)ctx;
    return 1;
}

EXPORT(proxy_on_delete) void proxy_on_delete(uint32_t ctx) {
    for (stream_t **at = &streams; *at; at = &(*at)->next) {
        if ((*at)->id == ctx) {
            stream_t *s = *at;
            *at = s->next;
            str_free(&s->method);
            str_free(&s->path);
            free(s);
            return;
        }
    }
}
