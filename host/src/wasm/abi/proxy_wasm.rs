//! The Proxy-Wasm ABI v0.2.1 host functions (import module `env`).
//!
//! Statuses follow the spec call by call, because SDKs panic on a status
//! they do not expect: e.g. `proxy_log` and the header-map setters return
//! only `OK` for valid input, `proxy_get_buffer_bytes` `OK` or `NOT_FOUND`.
//! Calls that need a stream context made from the root context (or after a
//! `proxy_set_effective_context` to the root) return `NOT_FOUND`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use wasmtime::{Caller, Linker};

use super::maps::{self, MapKind};
use super::{mem_state, pairs, properties, refuse, tri};
use crate::wasm::Status;
use crate::wasm::instance::{Callback, HostState, MAX_CALLS, PendingCall, local_reply};
use crate::wasm::memory::{self, HostResult, copy_out};
use crate::wasm::shared::{self, MetricKind};

type C<'a> = Caller<'a, HostState>;

/// Longest `proxy_http_call` timeout honoured.
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes a guest log line may carry.
pub const MAX_LOG_LINE: u32 = 64 << 10;

/// Where guest log lines go: tracing target of every plugin line, so the
/// daemon's `portcullis=<log_level>` filter applies to them as to its own.
pub const LOG_TARGET: &str = "portcullis::wasm";

/// The configured `log_level` in Proxy-Wasm numbering (what
/// `proxy_get_log_level` answers before the log subscriber exists).
static CONFIGURED_LEVEL: AtomicU32 = AtomicU32::new(2);

/// Most lines kept from plugin start-up before logging is set up.
const MAX_PENDING: usize = 1024;

/// Lines plugins logged while the config loaded, before the daemon set up
/// its logging (which needs the loaded config): replayed by [`replay_load_logs`].
static PENDING: Mutex<Vec<(u32, String, String, String)>> = Mutex::new(Vec::new());

/// Sets the level plugin lines are kept at until logging is set up (from `log_level`).
pub fn set_configured_level(level: &str) {
    let n = match level {
        "trace" => 0,
        "debug" => 1,
        "info" => 2,
        "warn" => 3,
        _ => 4,
    };
    CONFIGURED_LEVEL.store(n, Ordering::Relaxed);
}

/// Emits a guest log line at a Proxy-Wasm level (0 trace … 5 critical).
/// Before a log subscriber exists (plugins start while the config loads)
/// the line is kept, at the configured level, for [`replay_load_logs`].
pub(crate) fn emit(plugin: &str, level: u32, msg: &str, fields: &str) {
    if !tracing::dispatcher::has_been_set() {
        if level >= CONFIGURED_LEVEL.load(Ordering::Relaxed)
            && let Ok(mut p) = PENDING.lock()
            && p.len() < MAX_PENDING
        {
            p.push((
                level,
                plugin.to_string(),
                msg.to_string(),
                fields.to_string(),
            ));
        }
        return;
    }
    // Structured fields (portcullis_v1.log) only when there are some.
    match (level, fields.is_empty()) {
        (0, true) => tracing::trace!(target: LOG_TARGET, plugin, "{msg}"),
        (1, true) => tracing::debug!(target: LOG_TARGET, plugin, "{msg}"),
        (2, true) => tracing::info!(target: LOG_TARGET, plugin, "{msg}"),
        (3, true) => tracing::warn!(target: LOG_TARGET, plugin, "{msg}"),
        (_, true) => tracing::error!(target: LOG_TARGET, plugin, "{msg}"),
        (0, false) => tracing::trace!(target: LOG_TARGET, plugin, fields, "{msg}"),
        (1, false) => tracing::debug!(target: LOG_TARGET, plugin, fields, "{msg}"),
        (2, false) => tracing::info!(target: LOG_TARGET, plugin, fields, "{msg}"),
        (3, false) => tracing::warn!(target: LOG_TARGET, plugin, fields, "{msg}"),
        (_, false) => tracing::error!(target: LOG_TARGET, plugin, fields, "{msg}"),
    }
}

/// Logs the lines plugins logged during load (call once logging is set up).
pub fn replay_load_logs() {
    let lines = PENDING
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default();
    for (level, plugin, msg, fields) in lines {
        emit(&plugin, level, &msg, &fields);
    }
}

/// The current log level in Proxy-Wasm numbering.
pub(crate) fn log_level() -> u32 {
    use tracing::level_filters::LevelFilter;
    if !tracing::dispatcher::has_been_set() {
        return CONFIGURED_LEVEL.load(Ordering::Relaxed);
    }
    match LevelFilter::current() {
        LevelFilter::TRACE => 0,
        LevelFilter::DEBUG => 1,
        LevelFilter::INFO => 2,
        LevelFilter::WARN => 3,
        LevelFilter::ERROR => 4,
        _ => 5,
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Registers every `env` function.
pub fn add(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    logging(l)?;
    buffers(l)?;
    header_maps(l)?;
    props(l)?;
    stream(l)?;
    http_call(l)?;
    shared_state(l)?;
    metrics(l)?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        super::portcullis::foreign,
    )?;
    toolchain(l)?;
    Ok(())
}

/// The two `env` functions C/C++ toolchains link besides WASI, which
/// proxy-wasm-cpp-host provides too: Emscripten's memory-growth hook (a
/// host without JavaScript views has nothing to update) and `pthread_equal`
/// (a single-threaded guest compares thread ids).
fn toolchain(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "emscripten_notify_memory_growth",
        |_c: C<'_>, _memory_index: u32| {},
    )?;
    l.func_wrap("env", "pthread_equal", |_c: C<'_>, a: u32, b: u32| -> u32 {
        u32::from(a == b)
    })?;
    Ok(())
}

fn logging(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_log",
        |mut c: C<'_>, level: u32, ptr: u32, len: u32| -> HostResult {
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            if level > 5 {
                return Ok(refuse(st, Status::BadArgument, "proxy_log: level above 5"));
            }
            let bytes = tri!(
                st,
                memory::read(mem, ptr, len.min(MAX_LOG_LINE)),
                "proxy_log: message out of bounds"
            );
            let msg = String::from_utf8_lossy(bytes).into_owned();
            st.guest_log(level, &msg, "");
            Ok(Status::Ok.raw())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: C<'_>, ret: u32| -> HostResult {
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            tri!(
                st,
                memory::write_u32(mem, ret, log_level()),
                "proxy_get_log_level: bad pointer"
            );
            Ok(Status::Ok.raw())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ret: u32| -> HostResult {
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            tri!(
                st,
                memory::write_u64(mem, ret, now_nanos()),
                "proxy_get_current_time_nanoseconds: bad pointer"
            );
            Ok(Status::Ok.raw())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, ms: u32| -> HostResult {
            let st = c.data_mut();
            st.root.tick_period = (ms > 0).then(|| Duration::from_millis(u64::from(ms.max(10))));
            Ok(Status::Ok.raw())
        },
    )?;
    l.func_wrap("env", "proxy_done", |_c: C<'_>| -> HostResult {
        Ok(Status::Ok.raw())
    })?;
    l.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: C<'_>, id: u32| -> HostResult {
            let st = c.data_mut();
            // A stream, or a root context: the caller's own, or (in a VM
            // shared through `vm_id`) another plugin's; host calls then act
            // for that context's plugin.
            if let Some(root) = st.root_of(id) {
                st.select(root);
                st.effective = id;
                Ok(Status::Ok.raw())
            } else {
                Ok(refuse(
                    st,
                    Status::BadArgument,
                    "proxy_set_effective_context: unknown context",
                ))
            }
        },
    )?;
    Ok(())
}

/// Which byte buffer a buffer type names, read-only or writable.
fn buffer(st: &mut HostState, t: u32, write: bool) -> Result<&mut Vec<u8>, Status> {
    let body_ok = st.io_available() && !st.io.read_only;
    match t {
        0 if body_ok => Ok(&mut st.io.req_body),
        1 if body_ok => Ok(&mut st.io.resp_body),
        4 if !write && st.callback == Callback::CallResponse => st
            .call_response
            .as_mut()
            .map(|r| &mut r.body)
            .ok_or(Status::NotFound),
        5 if !write && st.callback == Callback::GrpcReceive => Ok(&mut st.grpc.message),
        0..=8 => Err(Status::NotFound),
        _ => Err(Status::BadArgument),
    }
}

fn buffers(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, t: u32, start: u32, max: u32, ret_ptr: u32, ret_size: u32| -> HostResult {
            let data: Vec<u8> = {
                let st = c.data_mut();
                // Sizes are clamped: `max` is often 0xFFFFFFFF for "the whole buffer".
                let clamp = |whole: &[u8]| -> Vec<u8> {
                    let start = usize::try_from(start)
                        .unwrap_or(usize::MAX)
                        .min(whole.len());
                    let len = usize::try_from(max)
                        .unwrap_or(usize::MAX)
                        .min(whole.len() - start);
                    whole[start..start + len].to_vec()
                };
                match t {
                    6 => clamp(&st.root.plugin.spec.vm_config),
                    7 => clamp(&st.root.plugin.spec.config),
                    _ => {
                        let b = tri!(
                            st,
                            buffer(st, t, false),
                            "proxy_get_buffer_bytes: bad buffer type"
                        );
                        clamp(b)
                    }
                }
            };
            copy_out(&mut c, &data, ret_ptr, ret_size)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, t: u32, start: u32, size: u32, ptr: u32, len: u32| -> HostResult {
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            let data = tri!(
                st,
                memory::read(mem, ptr, len),
                "proxy_set_buffer_bytes: data out of bounds"
            );
            let buf = tri!(
                st,
                buffer(st, t, true),
                "proxy_set_buffer_bytes: bad buffer type"
            );
            let start = usize::try_from(start).unwrap_or(usize::MAX).min(buf.len());
            let end = start
                .saturating_add(usize::try_from(size).unwrap_or(usize::MAX))
                .min(buf.len());
            buf.splice(start..end, data.iter().copied());
            Ok(Status::Ok.raw())
        },
    )?;
    Ok(())
}

fn header_maps(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, t: u32, ret_ptr: u32, ret_size: u32| -> HostResult {
            let data = {
                let st = c.data_mut();
                let kind = tri!(
                    st,
                    MapKind::from_raw(t),
                    "proxy_get_header_map_pairs: bad map type"
                );
                tri!(st, maps::get_pairs(st, kind), "proxy_get_header_map_pairs")
            };
            copy_out(&mut c, &data, ret_ptr, ret_size)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, t: u32, ptr: u32, len: u32| -> HostResult {
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            let kind = tri!(
                st,
                MapKind::from_raw(t),
                "proxy_set_header_map_pairs: bad map type"
            );
            let buf = tri!(
                st,
                memory::read(mem, ptr, len),
                "proxy_set_header_map_pairs: out of bounds"
            );
            let s = maps::set_pairs(st, kind, buf);
            if s == Status::BadArgument {
                return Ok(refuse(st, s, "proxy_set_header_map_pairs: invalid pairs"));
            }
            Ok(s.raw())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C<'_>, t: u32, kptr: u32, klen: u32, ret_ptr: u32, ret_size: u32| -> HostResult {
            let value = {
                let Some((mem, st)) = mem_state(&mut c) else {
                    return Ok(Status::InternalFailure.raw());
                };
                let kind = tri!(
                    st,
                    MapKind::from_raw(t),
                    "proxy_get_header_map_value: bad map type"
                );
                let key = tri!(
                    st,
                    memory::read(mem, kptr, klen),
                    "proxy_get_header_map_value: key out of bounds"
                );
                match tri!(
                    st,
                    maps::get_value(st, kind, key),
                    "proxy_get_header_map_value"
                ) {
                    Some(v) => v,
                    None => return Ok(Status::NotFound.raw()),
                }
            };
            copy_out(&mut c, &value, ret_ptr, ret_size)
        },
    )?;
    #[allow(clippy::too_many_arguments)] // the ABI call's five values plus what/op
    fn set_like(
        mut c: C<'_>,
        t: u32,
        kptr: u32,
        klen: u32,
        vptr: u32,
        vlen: u32,
        what: &str,
        op: fn(&mut HostState, MapKind, &[u8], &[u8]) -> Status,
    ) -> HostResult {
        let Some((mem, st)) = mem_state(&mut c) else {
            return Ok(Status::InternalFailure.raw());
        };
        let kind = tri!(st, MapKind::from_raw(t), what);
        let key = tri!(st, memory::read(mem, kptr, klen), what);
        let value = tri!(st, memory::read(mem, vptr, vlen), what);
        let s = op(st, kind, key, value);
        if s == Status::BadArgument {
            return Ok(refuse(st, s, what));
        }
        Ok(s.raw())
    }
    l.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |c: C<'_>, t: u32, kp: u32, kl: u32, vp: u32, vl: u32| -> HostResult {
            set_like(
                c,
                t,
                kp,
                kl,
                vp,
                vl,
                "proxy_add_header_map_value",
                maps::add,
            )
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |c: C<'_>, t: u32, kp: u32, kl: u32, vp: u32, vl: u32| -> HostResult {
            set_like(
                c,
                t,
                kp,
                kl,
                vp,
                vl,
                "proxy_replace_header_map_value",
                maps::replace,
            )
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |c: C<'_>, t: u32, kp: u32, kl: u32| -> HostResult {
            set_like(
                c,
                t,
                kp,
                kl,
                0,
                0,
                "proxy_remove_header_map_value",
                |st, k, n, _| maps::remove(st, k, n),
            )
        },
    )?;
    Ok(())
}

fn props(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C<'_>, pptr: u32, plen: u32, ret_ptr: u32, ret_size: u32| -> HostResult {
            let value = {
                let Some((mem, st)) = mem_state(&mut c) else {
                    return Ok(Status::InternalFailure.raw());
                };
                let path = tri!(
                    st,
                    memory::read(mem, pptr, plen),
                    "proxy_get_property: path out of bounds"
                );
                tri!(st, properties::get(st, path), "proxy_get_property")
            };
            copy_out(&mut c, &value, ret_ptr, ret_size)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C<'_>, pptr: u32, plen: u32, vptr: u32, vlen: u32| -> HostResult {
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            let path = tri!(
                st,
                memory::read(mem, pptr, plen),
                "proxy_set_property: path out of bounds"
            );
            let value = tri!(
                st,
                memory::read(mem, vptr, vlen),
                "proxy_set_property: value out of bounds"
            );
            let s = properties::set(st, path, value);
            if s == Status::BadArgument {
                return Ok(refuse(st, s, "proxy_set_property: invalid value"));
            }
            Ok(s.raw())
        },
    )?;
    Ok(())
}

fn resume(st: &mut HostState, t: u32) -> u32 {
    if t > 1 {
        return refuse(
            st,
            Status::BadArgument,
            "proxy_continue_stream: not an HTTP stream type",
        );
    }
    match st.effective_stream() {
        Some(s) => {
            if s.paused {
                s.paused = false;
                s.pause_deadline = None;
                if let Some(w) = &s.waker {
                    w.notify.notify_one();
                }
            }
            Status::Ok.raw()
        }
        None => Status::NotFound.raw(),
    }
}

fn stream(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: C<'_>, t: u32| -> HostResult { Ok(resume(c.data_mut(), t)) },
    )?;
    // ABI 0.2.0 names, still linked by older SDK builds.
    l.func_wrap(
        "env",
        "proxy_continue_request",
        |mut c: C<'_>| -> HostResult { Ok(resume(c.data_mut(), 0)) },
    )?;
    l.func_wrap(
        "env",
        "proxy_continue_response",
        |mut c: C<'_>| -> HostResult { Ok(resume(c.data_mut(), 1)) },
    )?;
    l.func_wrap(
        "env",
        "proxy_clear_route_cache",
        |_c: C<'_>| -> HostResult { Ok(Status::Ok.raw()) },
    )?;
    l.func_wrap(
        "env",
        "proxy_close_stream",
        |mut c: C<'_>, t: u32| -> HostResult {
            let st = c.data_mut();
            if t > 1 {
                return Ok(refuse(
                    st,
                    Status::BadArgument,
                    "proxy_close_stream: not an HTTP stream type",
                ));
            }
            match st.effective_stream() {
                Some(s) => {
                    s.closed = true;
                    s.paused = false;
                    if let Some(w) = &s.waker {
                        w.notify.notify_one();
                    }
                    Ok(Status::Ok.raw())
                }
                None => Ok(Status::NotFound.raw()),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C<'_>,
         code: u32,
         _dptr: u32,
         _dlen: u32,
         bptr: u32,
         blen: u32,
         hptr: u32,
         hlen: u32,
         _grpc: i32|
         -> HostResult {
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            let status = tri!(
                st,
                u16::try_from(code)
                    .ok()
                    .filter(|c| (200..=599).contains(c))
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .ok_or(Status::BadArgument),
                "proxy_send_local_response: status not in 200..=599"
            );
            let body = tri!(
                st,
                memory::read(mem, bptr, blen),
                "proxy_send_local_response: body out of bounds"
            )
            .to_vec();
            let raw = tri!(
                st,
                memory::read(mem, hptr, hlen),
                "proxy_send_local_response: headers out of bounds"
            );
            let list = tri!(
                st,
                pairs::decode(raw),
                "proxy_send_local_response: invalid header pairs"
            );
            let mut headers = HeaderMap::with_capacity(list.len());
            for (k, v) in list {
                let (Ok(n), Ok(v)) = (HeaderName::from_bytes(k), HeaderValue::from_bytes(v)) else {
                    return Ok(refuse(
                        st,
                        Status::BadArgument,
                        "proxy_send_local_response: invalid header",
                    ));
                };
                headers.append(n, v);
            }
            match st.effective_stream() {
                Some(s) => {
                    s.reply = Some(local_reply(status, headers, body));
                    s.paused = false;
                    if let Some(w) = &s.waker {
                        w.notify.notify_one();
                    }
                    Ok(Status::Ok.raw())
                }
                None => Ok(Status::NotFound.raw()),
            }
        },
    )?;
    Ok(())
}

fn http_call(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: C<'_>,
         uptr: u32,
         ulen: u32,
         hptr: u32,
         hlen: u32,
         bptr: u32,
         blen: u32,
         _tptr: u32,
         _tlen: u32,
         timeout_ms: u32,
         ret_token: u32|
         -> HostResult {
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            tri!(
                st,
                memory::check(mem, ret_token, 4),
                "proxy_http_call: bad token pointer"
            );
            let upstream = tri!(
                st,
                memory::read_str(mem, uptr, ulen),
                "proxy_http_call: bad upstream name"
            );
            let Some(cluster) = st.root.plugin.spec.clusters.get(upstream).cloned() else {
                return Ok(refuse(
                    st,
                    Status::BadArgument,
                    "proxy_http_call: unknown upstream",
                ));
            };
            let raw = tri!(
                st,
                memory::read(mem, hptr, hlen),
                "proxy_http_call: headers out of bounds"
            );
            let list = tri!(
                st,
                pairs::decode(raw),
                "proxy_http_call: invalid header pairs"
            );
            let (mut method, mut path, mut authority) = (None, None, None);
            let mut headers = Vec::with_capacity(list.len());
            for (k, v) in list {
                match k {
                    b":method" => method = Method::from_bytes(v).ok(),
                    b":path" => path = std::str::from_utf8(v).ok().map(str::to_string),
                    b":authority" => authority = std::str::from_utf8(v).ok().map(str::to_string),
                    _ if k.first() == Some(&b':') => {}
                    _ => match std::str::from_utf8(k) {
                        Ok(name) => headers.push((name.to_string(), v.to_vec())),
                        Err(_) => {
                            return Ok(refuse(
                                st,
                                Status::BadArgument,
                                "proxy_http_call: invalid header name",
                            ));
                        }
                    },
                }
            }
            let (Some(method), Some(path), Some(authority)) = (method, path, authority) else {
                return Ok(refuse(
                    st,
                    Status::BadArgument,
                    "proxy_http_call: :method, :path and :authority are required",
                ));
            };
            let body = tri!(
                st,
                memory::read(mem, bptr, blen),
                "proxy_http_call: body out of bounds"
            )
            .to_vec();
            let timeout = if timeout_ms == 0 {
                Duration::from_secs(5)
            } else {
                Duration::from_millis(u64::from(timeout_ms)).min(MAX_CALL_TIMEOUT)
            };
            let token = st.next_token;
            st.next_token = st.next_token.wrapping_add(1).max(1);
            let call = PendingCall {
                token,
                upstream: cluster,
                authority,
                method,
                path,
                headers,
                body,
                timeout,
            };
            if st.effective == st.root.id {
                // From the root context (e.g. on_tick refreshing keys, as Envoy
                // allows): started by the worker after this callback, answered
                // to the root context on this worker.
                if st.root.calls.len() + st.root.inflight >= MAX_CALLS {
                    return Ok(refuse(
                        st,
                        Status::InternalFailure,
                        "proxy_http_call: too many calls in flight",
                    ));
                }
                st.root.calls.push(call);
            } else {
                let Some(s) = st.streams.get_mut(&st.effective) else {
                    return Ok(refuse(
                        st,
                        Status::InternalFailure,
                        "proxy_http_call: no such context",
                    ));
                };
                if s.calls.len() + s.inflight >= MAX_CALLS {
                    return Ok(refuse(
                        st,
                        Status::InternalFailure,
                        "proxy_http_call: too many calls in flight",
                    ));
                }
                s.calls.push(call);
            }
            tri!(
                st,
                memory::write_u32(mem, ret_token, token),
                "proxy_http_call: bad token pointer"
            );
            Ok(Status::Ok.raw())
        },
    )?;
    grpc(l)
}

/// The arguments `proxy_grpc_call` and `proxy_grpc_stream` share, read and checked.
struct GrpcArgs {
    upstream: Option<std::sync::Arc<crate::wasm::cluster::Cluster>>,
    authority: String,
    path: String,
    metadata: Vec<(HeaderName, HeaderValue)>,
}

/// Headers the transport sets itself, or HTTP/2 forbids: dropped from initial metadata.
fn reserved_metadata(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-type"
            | "te"
            | "grpc-timeout"
            | "host"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Reads a gRPC call's service, names and initial metadata (Envoy's
/// checks: bad memory is `INVALID_MEMORY_ACCESS`, a cluster that is neither
/// a `GrpcService` nor a known backend `PARSE_FAILURE`).
#[allow(clippy::too_many_arguments)] // the ABI call's pointers, as pairs
fn grpc_args(
    mem: &[u8],
    st: &HostState,
    service: (u32, u32),
    service_name: (u32, u32),
    method: (u32, u32),
    metadata: (u32, u32),
) -> Result<GrpcArgs, (Status, &'static str)> {
    let bad = |w| (Status::InvalidMemoryAccess, w);
    let svc = memory::read(mem, service.0, service.1).map_err(|_| bad("service out of bounds"))?;
    let name = memory::read(mem, service_name.0, service_name.1)
        .map_err(|_| bad("service name out of bounds"))?;
    let meth =
        memory::read(mem, method.0, method.1).map_err(|_| bad("method name out of bounds"))?;
    let md = memory::read(mem, metadata.0, metadata.1)
        .map_err(|_| bad("initial metadata out of bounds"))?;
    let svc = crate::wasm::grpc::parse_service(svc).ok_or((
        Status::ParseFailure,
        "the service is neither a cluster (backend) name nor a GrpcService",
    ))?;
    let upstream = st.root.plugin.spec.clusters.get(&svc.cluster).cloned();
    // A bare name must be a known cluster (Envoy: PARSE_FAILURE); a
    // GrpcService naming an unknown one fails later, through on_grpc_close.
    if upstream.is_none() && !svc.from_proto {
        return Err((
            Status::ParseFailure,
            "unknown cluster: no backend of that name (with a server)",
        ));
    }
    let (Ok(name), Ok(meth)) = (std::str::from_utf8(name), std::str::from_utf8(meth)) else {
        return Err((
            Status::BadArgument,
            "service and method names must be UTF-8",
        ));
    };
    if name.is_empty() || meth.is_empty() || name.contains('/') || meth.contains('/') {
        return Err((
            Status::BadArgument,
            "service and method names must be non-empty and without '/'",
        ));
    }
    let path = format!("/{name}/{meth}");
    if http::uri::PathAndQuery::try_from(path.as_str()).is_err() {
        return Err((
            Status::BadArgument,
            "service or method name not valid in a path",
        ));
    }
    let list =
        pairs::decode(md).map_err(|_| (Status::BadArgument, "invalid initial metadata pairs"))?;
    let mut out = Vec::with_capacity(list.len() + svc.metadata.len());
    let given = svc
        .metadata
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .chain(list.iter().map(|(k, v)| (*k, *v)));
    for (k, v) in given {
        if k.first() == Some(&b':') {
            continue;
        }
        let (Ok(n), Ok(v)) = (HeaderName::from_bytes(k), HeaderValue::from_bytes(v)) else {
            return Err((
                Status::BadArgument,
                "invalid initial metadata name or value",
            ));
        };
        if !reserved_metadata(&n) {
            out.push((n, v));
        }
    }
    let authority = svc.authority.unwrap_or_else(|| svc.cluster.clone());
    if http::uri::Authority::try_from(authority.as_str()).is_err() {
        return Err((
            Status::BadArgument,
            "the cluster name is not usable as :authority",
        ));
    }
    Ok(GrpcArgs {
        upstream,
        authority,
        path,
        metadata: out,
    })
}

/// Registers a new call or stream made by the effective context, queued to
/// start after the callback; returns its token.
fn grpc_start(
    st: &mut HostState,
    args: GrpcArgs,
    message: Option<bytes::Bytes>,
    timeout: Option<Duration>,
) -> u32 {
    use crate::wasm::grpc::{Backlog, GrpcHandle, GrpcStart, MAX_QUEUED_SENDS};
    let stream = message.is_none();
    // Streams the server closed stay known until the guest closes them too
    // (Envoy's: a later proxy_grpc_close is OK); a guest that never does
    // leaves them behind: past 1024 entries they are forgotten.
    if st.grpc.calls.len() >= 1024 {
        st.grpc.calls.retain(|_, h| !h.remote_closed);
    }
    let token = st.grpc.next_token(stream);
    let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel();
    let (tx, rx) = if stream {
        let (tx, rx) = tokio::sync::mpsc::channel(MAX_QUEUED_SENDS);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let backlog = std::rc::Rc::new(Backlog::default());
    st.grpc.calls.insert(
        token,
        GrpcHandle {
            owner: st.effective,
            root: st.root.id,
            stream,
            tx,
            cancel: Some(cancel_tx),
            local_closed: false,
            remote_closed: false,
            backlog: std::rc::Rc::clone(&backlog),
        },
    );
    let inbox = std::rc::Rc::clone(&st.grpc.inbox);
    st.grpc.starting.push(GrpcStart {
        token,
        upstream: args.upstream,
        authority: args.authority,
        path: args.path,
        metadata: args.metadata,
        timeout,
        message,
        rx,
        cancel: cancel_rx,
        backlog,
        inbox,
    });
    token
}

fn grpc(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    use crate::wasm::grpc::{MAX_GRPC_CALLS, MAX_MESSAGE, is_call_token, is_stream_token};
    l.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut c: C<'_>,
         sp: u32,
         sl: u32,
         np: u32,
         nl: u32,
         mp: u32,
         ml: u32,
         hp: u32,
         hl: u32,
         bp: u32,
         bl: u32,
         timeout_ms: u32,
         ret_token: u32|
         -> HostResult {
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            tri!(
                st,
                memory::check(mem, ret_token, 4),
                "proxy_grpc_call: bad token pointer"
            );
            let args = match grpc_args(mem, st, (sp, sl), (np, nl), (mp, ml), (hp, hl)) {
                Ok(a) => a,
                Err((s, why)) => {
                    st.note_bad_call(&format!("proxy_grpc_call: {why}"));
                    return Ok(s.raw());
                }
            };
            let body = tri!(
                st,
                memory::read(mem, bp, bl),
                "proxy_grpc_call: message out of bounds"
            );
            if body.len() > MAX_MESSAGE {
                return Ok(refuse(
                    st,
                    Status::BadArgument,
                    "proxy_grpc_call: message larger than 4 MiB",
                ));
            }
            let body = bytes::Bytes::copy_from_slice(body);
            if st.grpc.live() >= MAX_GRPC_CALLS {
                return Ok(refuse(
                    st,
                    Status::InternalFailure,
                    "proxy_grpc_call: too many gRPC calls in flight",
                ));
            }
            // 0: no deadline of the plugin's (Envoy's), bounded by ours.
            let timeout = (timeout_ms > 0)
                .then(|| Duration::from_millis(u64::from(timeout_ms)).min(MAX_CALL_TIMEOUT));
            let token = grpc_start(st, args, Some(body), timeout);
            tri!(
                st,
                memory::write_u32(mem, ret_token, token),
                "proxy_grpc_call: bad token pointer"
            );
            Ok(Status::Ok.raw())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut c: C<'_>,
         sp: u32,
         sl: u32,
         np: u32,
         nl: u32,
         mp: u32,
         ml: u32,
         hp: u32,
         hl: u32,
         ret_token: u32|
         -> HostResult {
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            tri!(
                st,
                memory::check(mem, ret_token, 4),
                "proxy_grpc_stream: bad token pointer"
            );
            let args = match grpc_args(mem, st, (sp, sl), (np, nl), (mp, ml), (hp, hl)) {
                Ok(a) => a,
                Err((s, why)) => {
                    st.note_bad_call(&format!("proxy_grpc_stream: {why}"));
                    return Ok(s.raw());
                }
            };
            if st.grpc.live() >= MAX_GRPC_CALLS {
                return Ok(refuse(
                    st,
                    Status::InternalFailure,
                    "proxy_grpc_stream: too many gRPC calls in flight",
                ));
            }
            let token = grpc_start(st, args, None, None);
            tri!(
                st,
                memory::write_u32(mem, ret_token, token),
                "proxy_grpc_stream: bad token pointer"
            );
            Ok(Status::Ok.raw())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_send",
        |mut c: C<'_>, token: u32, ptr: u32, len: u32, end: u32| -> HostResult {
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            if !is_stream_token(token) {
                return Ok(refuse(
                    st,
                    Status::BadArgument,
                    "proxy_grpc_send: not a gRPC stream token",
                ));
            }
            let msg = tri!(
                st,
                memory::read(mem, ptr, len),
                "proxy_grpc_send: message out of bounds"
            );
            if msg.len() > MAX_MESSAGE {
                return Ok(refuse(
                    st,
                    Status::BadArgument,
                    "proxy_grpc_send: message larger than 4 MiB",
                ));
            }
            let msg = bytes::Bytes::copy_from_slice(msg);
            let Some(h) = st.grpc.calls.get_mut(&token) else {
                return Ok(Status::NotFound.raw());
            };
            let mut full = false;
            if let Some(tx) = &h.tx {
                full = matches!(
                    tx.try_send(msg),
                    Err(tokio::sync::mpsc::error::TrySendError::Full(_))
                );
            }
            if end != 0 {
                // Half-close: the request body ends once what was queued is sent.
                h.tx = None;
            }
            if full {
                return Ok(refuse(
                    st,
                    Status::BadArgument,
                    "proxy_grpc_send: 64 messages already queued on this stream",
                ));
            }
            Ok(Status::Ok.raw())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_cancel",
        |mut c: C<'_>, token: u32| -> HostResult {
            let st = c.data_mut();
            if !is_call_token(token) && !is_stream_token(token) {
                return Ok(refuse(
                    st,
                    Status::BadArgument,
                    "proxy_grpc_cancel: not a gRPC token",
                ));
            }
            // Dropping the handle cancels the task (a stream is reset): no more callbacks.
            Ok(if st.grpc.forget(token) {
                Status::Ok.raw()
            } else {
                Status::NotFound.raw()
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_close",
        |mut c: C<'_>, token: u32| -> HostResult {
            let st = c.data_mut();
            if is_call_token(token) {
                // Closing a unary call cancels it, as in Envoy.
                return Ok(if st.grpc.forget(token) {
                    Status::Ok.raw()
                } else {
                    Status::NotFound.raw()
                });
            }
            if !is_stream_token(token) {
                return Ok(refuse(
                    st,
                    Status::BadArgument,
                    "proxy_grpc_close: not a gRPC token",
                ));
            }
            let Some(h) = st.grpc.calls.get_mut(&token) else {
                return Ok(Status::NotFound.raw());
            };
            // Half-close: the server sees the end of the request stream and
            // may still answer (its messages and close are delivered).
            h.tx = None;
            if h.remote_closed {
                st.grpc.calls.remove(&token);
            } else {
                h.local_closed = true;
            }
            Ok(Status::Ok.raw())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: C<'_>, code_ptr: u32, msg_ptr: u32, msg_size: u32| -> HostResult {
            // Envoy's: always OK, the last close's code (its message only during on_grpc_close).
            let message = {
                let Some((mem, st)) = mem_state(&mut c) else {
                    return Ok(Status::InternalFailure.raw());
                };
                let (code, message) = st.grpc.status.clone();
                tri!(
                    st,
                    memory::write_u32(mem, code_ptr, code),
                    "proxy_get_status: bad status pointer"
                );
                message
            };
            copy_out(&mut c, message.as_bytes(), msg_ptr, msg_size)
        },
    )?;
    Ok(())
}

fn shared_state(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C<'_>,
         kptr: u32,
         klen: u32,
         ret_ptr: u32,
         ret_size: u32,
         ret_cas: u32|
         -> HostResult {
            let (value, cas) = {
                let Some((mem, st)) = mem_state(&mut c) else {
                    return Ok(Status::InternalFailure.raw());
                };
                tri!(
                    st,
                    memory::check(mem, ret_cas, 4),
                    "proxy_get_shared_data: bad cas pointer"
                );
                let key = tri!(
                    st,
                    memory::read(mem, kptr, klen),
                    "proxy_get_shared_data: key out of bounds"
                );
                match st.root.plugin.shared_data.get(key) {
                    Some(v) => v,
                    None => return Ok(Status::NotFound.raw()),
                }
            };
            let s = copy_out(&mut c, &value, ret_ptr, ret_size)?;
            if s != Status::Ok.raw() {
                return Ok(s);
            }
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            tri!(
                st,
                memory::write_u32(mem, ret_cas, cas),
                "proxy_get_shared_data: bad cas pointer"
            );
            Ok(Status::Ok.raw())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: C<'_>, kptr: u32, klen: u32, vptr: u32, vlen: u32, cas: u32| -> HostResult {
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            let key = tri!(
                st,
                memory::read(mem, kptr, klen),
                "proxy_set_shared_data: key out of bounds"
            );
            let value = tri!(
                st,
                memory::read(mem, vptr, vlen),
                "proxy_set_shared_data: value out of bounds"
            );
            let s = st.root.plugin.shared_data.set(key, value, cas);
            if s == Status::BadArgument {
                return Ok(refuse(
                    st,
                    s,
                    "proxy_set_shared_data: value too large or store full",
                ));
            }
            Ok(s.raw())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C<'_>, nptr: u32, nlen: u32, ret_id: u32| -> HostResult {
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            let name = tri!(
                st,
                memory::read_str(mem, nptr, nlen),
                "proxy_register_shared_queue: bad name"
            );
            tri!(
                st,
                memory::check(mem, ret_id, 4),
                "proxy_register_shared_queue: bad id pointer"
            );
            // Queues are named per VM id (Envoy's `vm_id`); the registering
            // root context gets `proxy_on_queue_ready`.
            let id = shared::register_queue(&st.root.plugin.spec.vm_id, name);
            if !st.root.queues.contains(&id) {
                st.root.queues.push(id);
            }
            tri!(
                st,
                memory::write_u32(mem, ret_id, id),
                "proxy_register_shared_queue: bad id pointer"
            );
            Ok(Status::Ok.raw())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vptr: u32, vlen: u32, nptr: u32, nlen: u32, ret_id: u32| -> HostResult {
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            let vm = tri!(
                st,
                memory::read_str(mem, vptr, vlen),
                "proxy_resolve_shared_queue: bad vm id"
            );
            let name = tri!(
                st,
                memory::read_str(mem, nptr, nlen),
                "proxy_resolve_shared_queue: bad name"
            );
            let vm = if vm.is_empty() {
                st.root.plugin.spec.vm_id.as_str()
            } else {
                vm
            };
            let Some(id) = shared::resolve_queue(vm, name) else {
                return Ok(Status::NotFound.raw());
            };
            tri!(
                st,
                memory::write_u32(mem, ret_id, id),
                "proxy_resolve_shared_queue: bad id pointer"
            );
            Ok(Status::Ok.raw())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, id: u32, ptr: u32, len: u32| -> HostResult {
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            let data = tri!(
                st,
                memory::read(mem, ptr, len),
                "proxy_enqueue_shared_queue: data out of bounds"
            );
            Ok(shared::enqueue(id, data).raw())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, id: u32, ret_ptr: u32, ret_size: u32| -> HostResult {
            let data = match shared::dequeue(id) {
                Ok(d) => d,
                Err(s) => return Ok(s.raw()),
            };
            copy_out(&mut c, &data, ret_ptr, ret_size)
        },
    )?;
    Ok(())
}

fn metric(st: &mut HostState, id: u32) -> Option<std::sync::Arc<shared::Metric>> {
    if let Some(m) = st.metrics.get(&id) {
        return Some(std::sync::Arc::clone(m));
    }
    let m = shared::metric(&st.root.plugin.spec.name, id)?;
    st.metrics.insert(id, std::sync::Arc::clone(&m));
    Some(m)
}

fn metrics(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C<'_>, t: u32, nptr: u32, nlen: u32, ret_id: u32| -> HostResult {
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            let kind = tri!(
                st,
                MetricKind::from_raw(t).ok_or(Status::BadArgument),
                "proxy_define_metric: bad type"
            );
            let name = tri!(
                st,
                memory::read_str(mem, nptr, nlen),
                "proxy_define_metric: bad name"
            );
            tri!(
                st,
                memory::check(mem, ret_id, 4),
                "proxy_define_metric: bad id pointer"
            );
            let Some((id, m)) = shared::define_metric(&st.root.plugin.spec.name, name, kind) else {
                return Ok(refuse(
                    st,
                    Status::BadArgument,
                    "proxy_define_metric: too many metrics",
                ));
            };
            st.metrics.insert(id, m);
            tri!(
                st,
                memory::write_u32(mem, ret_id, id),
                "proxy_define_metric: bad id pointer"
            );
            Ok(Status::Ok.raw())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut c: C<'_>, id: u32, delta: i64| -> HostResult {
            let st = c.data_mut();
            match metric(st, id) {
                Some(m) => Ok(m.increment(delta).raw()),
                None => Ok(Status::NotFound.raw()),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_record_metric",
        |mut c: C<'_>, id: u32, v: u64| -> HostResult {
            let st = c.data_mut();
            match metric(st, id) {
                Some(m) => Ok(m.record(v).raw()),
                None => Ok(Status::NotFound.raw()),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: C<'_>, id: u32, ret: u32| -> HostResult {
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            let Some(m) = metric(st, id) else {
                return Ok(Status::NotFound.raw());
            };
            tri!(
                st,
                memory::write_u64(mem, ret, m.get()),
                "proxy_get_metric: bad pointer"
            );
            Ok(Status::Ok.raw())
        },
    )?;
    Ok(())
}
