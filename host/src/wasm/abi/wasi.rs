//! The WASI preview1 calls Proxy-Wasm SDKs link (`wasi_snapshot_preview1`):
//! stdout/stderr to the log (one log line per text line), clocks, random
//! bytes, an empty environment and argument list, no files, and
//! `proc_exit` (which ends the instance like a trap).

use std::io::Read;
use std::sync::LazyLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker};

use super::mem_state;
use crate::wasm::instance::{GuestExit, HostState};
use crate::wasm::memory;

type C<'a> = Caller<'a, HostState>;

const M: &str = "wasi_snapshot_preview1";

// WASI errno values.
const SUCCESS: u32 = 0;
const BADF: u32 = 8;
const FAULT: u32 = 21;
const INVAL: u32 = 28;
const NOSYS: u32 = 52;
const SPIPE: u32 = 70;

/// Longest line kept in the stdout/stderr buffers before it is flushed anyway.
const MAX_LINE: usize = 16 << 10;
/// Most iovecs one fd_write / fd_read may pass.
const MAX_IOVS: u32 = 1024;

fn errno(r: Result<(), crate::wasm::Status>) -> u32 {
    match r {
        Ok(()) => SUCCESS,
        Err(_) => FAULT,
    }
}

static MONO: LazyLock<Instant> = LazyLock::new(Instant::now);

fn clock_ns(id: u32) -> Option<u64> {
    match id {
        0 => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        1..=3 => Some(u64::try_from(MONO.elapsed().as_nanos()).unwrap_or(u64::MAX)),
        _ => None,
    }
}

static URANDOM: LazyLock<Option<std::fs::File>> =
    LazyLock::new(|| std::fs::File::open("/dev/urandom").ok());

/// Fills `buf` with random bytes (the OS source; a time-seeded generator if it is missing).
fn fill_random(buf: &mut [u8]) {
    if let Some(mut f) = URANDOM.as_ref()
        && f.read_exact(buf).is_ok()
    {
        return;
    }
    let mut x = clock_ns(1).unwrap_or(1) ^ 0x9E37_79B9_7F4A_7C15;
    for b in buf {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        *b = (z ^ (z >> 31)) as u8;
    }
}

fn flush_lines(plugin: &str, buf: &mut Vec<u8>, level: u32, force: bool) {
    while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = buf.drain(..=nl).collect();
        let text = String::from_utf8_lossy(&line[..line.len() - 1]);
        super::proxy_wasm::emit(plugin, level, &text, "");
    }
    if force || buf.len() > MAX_LINE {
        let text = String::from_utf8_lossy(buf).into_owned();
        buf.clear();
        if !text.is_empty() {
            super::proxy_wasm::emit(plugin, level, &text, "");
        }
    }
}

/// Registers the WASI functions.
pub fn add(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap(
        M,
        "fd_write",
        |mut c: C<'_>, fd: u32, iovs: u32, n: u32, ret: u32| -> u32 {
            let Some((mem, st)) = mem_state(&mut c) else {
                return FAULT;
            };
            if fd != 1 && fd != 2 {
                return BADF;
            }
            if n > MAX_IOVS {
                return INVAL;
            }
            let mut total = 0u32;
            let mut out = Vec::new();
            for i in 0..n {
                let Some(at) = i.checked_mul(8).and_then(|o| iovs.checked_add(o)) else {
                    return FAULT;
                };
                let (Ok(ptr), Ok(len)) = (
                    memory::read_u32(mem, at),
                    memory::read_u32(mem, at.wrapping_add(4)),
                ) else {
                    return FAULT;
                };
                let Ok(data) = memory::read(mem, ptr, len) else {
                    return FAULT;
                };
                out.extend_from_slice(data);
                total = total.saturating_add(len);
            }
            let plugin = st.plugin.spec.name.clone();
            let (buf, level) = if fd == 1 {
                (&mut st.stdout, 2)
            } else {
                (&mut st.stderr, 3)
            };
            buf.extend_from_slice(&out);
            flush_lines(&plugin, buf, level, false);
            errno(memory::write_u32(mem, ret, total))
        },
    )?;
    l.func_wrap(
        M,
        "fd_read",
        |mut c: C<'_>, fd: u32, _iovs: u32, _n: u32, ret: u32| -> u32 {
            let Some((mem, _)) = mem_state(&mut c) else {
                return FAULT;
            };
            if fd != 0 {
                return BADF;
            }
            // stdin is empty.
            errno(memory::write_u32(mem, ret, 0))
        },
    )?;
    l.func_wrap(M, "fd_close", |_c: C<'_>, _fd: u32| -> u32 { BADF })?;
    l.func_wrap(
        M,
        "fd_seek",
        |_c: C<'_>, fd: u32, _off: i64, _whence: u32, _ret: u32| -> u32 {
            if fd <= 2 { SPIPE } else { BADF }
        },
    )?;
    l.func_wrap(
        M,
        "fd_fdstat_get",
        |mut c: C<'_>, fd: u32, ret: u32| -> u32 {
            let Some((mem, _)) = mem_state(&mut c) else {
                return FAULT;
            };
            if fd > 2 {
                return BADF;
            }
            // fdstat: filetype u8 (2 = character device), flags u16, rights base u64, inheriting u64.
            let mut stat = [0u8; 24];
            stat[0] = 2;
            stat[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
            errno(memory::write(mem, ret, &stat))
        },
    )?;
    l.func_wrap(
        M,
        "fd_prestat_get",
        |_c: C<'_>, _fd: u32, _ret: u32| -> u32 { BADF },
    )?;
    l.func_wrap(
        M,
        "fd_prestat_dir_name",
        |_c: C<'_>, _fd: u32, _p: u32, _l: u32| -> u32 { BADF },
    )?;
    for name in ["environ_sizes_get", "args_sizes_get"] {
        l.func_wrap(M, name, |mut c: C<'_>, count: u32, size: u32| -> u32 {
            let Some((mem, _)) = mem_state(&mut c) else {
                return FAULT;
            };
            errno(memory::write_u32(mem, count, 0).and_then(|()| memory::write_u32(mem, size, 0)))
        })?;
    }
    for name in ["environ_get", "args_get"] {
        l.func_wrap(M, name, |_c: C<'_>, _a: u32, _b: u32| -> u32 { SUCCESS })?;
    }
    l.func_wrap(
        M,
        "clock_time_get",
        |mut c: C<'_>, id: u32, _precision: u64, ret: u32| -> u32 {
            let Some((mem, _)) = mem_state(&mut c) else {
                return FAULT;
            };
            match clock_ns(id) {
                Some(ns) => errno(memory::write_u64(mem, ret, ns)),
                None => INVAL,
            }
        },
    )?;
    l.func_wrap(
        M,
        "clock_res_get",
        |mut c: C<'_>, id: u32, ret: u32| -> u32 {
            let Some((mem, _)) = mem_state(&mut c) else {
                return FAULT;
            };
            if clock_ns(id).is_none() {
                return INVAL;
            }
            errno(memory::write_u64(mem, ret, 1_000))
        },
    )?;
    l.func_wrap(M, "random_get", |mut c: C<'_>, ptr: u32, len: u32| -> u32 {
        let Some((mem, _)) = mem_state(&mut c) else {
            return FAULT;
        };
        let Some(r) = memory::range(mem.len(), ptr, len) else {
            return FAULT;
        };
        match mem.get_mut(r) {
            Some(buf) => {
                fill_random(buf);
                SUCCESS
            }
            None => FAULT,
        }
    })?;
    l.func_wrap(M, "sched_yield", |_c: C<'_>| -> u32 { SUCCESS })?;
    l.func_wrap(
        M,
        "poll_oneoff",
        |_c: C<'_>, _in: u32, _out: u32, _n: u32, _ret: u32| -> u32 { NOSYS },
    )?;
    l.func_wrap(
        M,
        "proc_exit",
        |mut c: C<'_>, code: u32| -> wasmtime::Result<()> {
            let st = c.data_mut();
            let plugin = st.plugin.spec.name.clone();
            flush_lines(&plugin, &mut st.stdout, 2, true);
            flush_lines(&plugin, &mut st.stderr, 3, true);
            Err(wasmtime::Error::new(GuestExit(code)))
        },
    )?;
    Ok(())
}
