//! WASI preview1 (`wasi_snapshot_preview1`, and the same calls under the
//! older `wasi_unstable` name), as proxy-wasm-cpp-host gives it to Envoy's
//! plugins: stdout/stderr to the log (one log line per text line), clocks,
//! random bytes, an empty environment and argument list, no files,
//! `sched_yield` and `poll_oneoff` that return at once (the Go runtime
//! sleeps through `poll_oneoff`, e.g. while it prints a panic), and
//! `proc_exit` (which ends the instance like a trap).
//!
//! Every other preview1 function is linked too, so whatever a Go, TinyGo,
//! C++ (Emscripten, wasi-sdk) or AssemblyScript module imports resolves:
//! there are no files, directories or sockets, so those calls fail with the
//! errno a POSIX program expects (`EBADF` for a descriptor that is not
//! stdio, `ENOSYS` for what stdio cannot do, e.g. `fd_fdstat_set_flags`).

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
const NOTSOCK: u32 = 57;
const SPIPE: u32 = 70;

/// The two names WASI preview1 is imported under (older toolchains use `wasi_unstable`).
const MODULES: [&str; 2] = [M, "wasi_unstable"];

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

fn flush_lines(st: &mut HostState, stderr: bool, force: bool) {
    let level = if stderr { 3 } else { 2 };
    let mut buf = std::mem::take(if stderr {
        &mut st.stderr
    } else {
        &mut st.stdout
    });
    while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = buf.drain(..=nl).collect();
        let text = String::from_utf8_lossy(&line[..line.len() - 1]);
        st.guest_log(level, &text, "");
    }
    if force || buf.len() > MAX_LINE {
        let text = String::from_utf8_lossy(&buf).into_owned();
        buf.clear();
        if !text.is_empty() {
            st.guest_log(level, &text, "");
        }
    }
    *(if stderr {
        &mut st.stderr
    } else {
        &mut st.stdout
    }) = buf;
}

/// Flushes what the guest wrote to stdout/stderr without a final newline
/// (before the instance ends, so a Go panic's last line is not lost).
pub(crate) fn flush_all(st: &mut HostState) {
    flush_lines(st, false, true);
    flush_lines(st, true, true);
}

/// Links `f` under both WASI module names.
fn both<Params, Args>(
    l: &mut Linker<HostState>,
    name: &str,
    f: impl wasmtime::IntoFunc<HostState, Params, Args> + Clone,
) -> wasmtime::Result<()> {
    for m in MODULES {
        l.func_wrap(m, name, f.clone())?;
    }
    Ok(())
}

/// The errno of a call on descriptor `fd` that no descriptor here supports:
/// stdio exists but cannot do it, any other descriptor does not exist.
fn fd_errno(fd: u32) -> u32 {
    if fd <= 2 { NOSYS } else { BADF }
}

/// Registers the WASI functions under both module names.
pub fn add(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    stdio(l)?;
    process(l)?;
    unsupported(l)?;
    Ok(())
}

/// stdout/stderr writes, stdin reads (empty) and descriptor queries.
fn stdio(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    both(
        l,
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
            let stderr = fd == 2;
            (if stderr {
                &mut st.stderr
            } else {
                &mut st.stdout
            })
            .extend_from_slice(&out);
            flush_lines(st, stderr, false);
            errno(memory::write_u32(mem, ret, total))
        },
    )?;
    both(
        l,
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
    both(l, "fd_close", |_c: C<'_>, _fd: u32| -> u32 { BADF })?;
    both(
        l,
        "fd_seek",
        |_c: C<'_>, fd: u32, _off: i64, _whence: u32, _ret: u32| -> u32 {
            if fd <= 2 { SPIPE } else { BADF }
        },
    )?;
    both(l, "fd_tell", |_c: C<'_>, fd: u32, _ret: u32| -> u32 {
        if fd <= 2 { SPIPE } else { BADF }
    })?;
    both(
        l,
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
    // Envoy answers ENOSYS: the Go runtime asks for O_NONBLOCK on stdio and copes.
    both(
        l,
        "fd_fdstat_set_flags",
        |_c: C<'_>, fd: u32, _flags: u32| -> u32 { fd_errno(fd) },
    )?;
    both(
        l,
        "fd_prestat_get",
        |_c: C<'_>, _fd: u32, _ret: u32| -> u32 { BADF },
    )?;
    both(
        l,
        "fd_prestat_dir_name",
        |_c: C<'_>, _fd: u32, _p: u32, _l: u32| -> u32 { BADF },
    )?;
    Ok(())
}

/// Environment, arguments, clocks, randomness, scheduling and exit.
fn process(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    for name in ["environ_sizes_get", "args_sizes_get"] {
        both(l, name, |mut c: C<'_>, count: u32, size: u32| -> u32 {
            let Some((mem, _)) = mem_state(&mut c) else {
                return FAULT;
            };
            errno(memory::write_u32(mem, count, 0).and_then(|()| memory::write_u32(mem, size, 0)))
        })?;
    }
    for name in ["environ_get", "args_get"] {
        both(l, name, |_c: C<'_>, _a: u32, _b: u32| -> u32 { SUCCESS })?;
    }
    both(
        l,
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
    both(
        l,
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
    both(l, "random_get", |mut c: C<'_>, ptr: u32, len: u32| -> u32 {
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
    both(l, "sched_yield", |_c: C<'_>| -> u32 { SUCCESS })?;
    // As in Envoy: success with no event. A guest cannot block a worker, so
    // a sleep (the Go runtime's usleep, e.g. while it prints a panic)
    // returns at once; the result pointer is checked like every other.
    both(
        l,
        "poll_oneoff",
        |mut c: C<'_>, _in: u32, _out: u32, _n: u32, ret: u32| -> u32 {
            let Some((mem, _)) = mem_state(&mut c) else {
                return FAULT;
            };
            errno(memory::write_u32(mem, ret, 0))
        },
    )?;
    both(
        l,
        "proc_exit",
        |mut c: C<'_>, code: u32| -> wasmtime::Result<()> {
            flush_all(c.data_mut());
            Err(wasmtime::Error::new(GuestExit(code)))
        },
    )?;
    both(l, "proc_raise", |_c: C<'_>, _sig: u32| -> u32 { NOSYS })?;
    Ok(())
}

/// Files, directories and sockets: none exist, so these fail like a POSIX
/// call on a descriptor that does not exist (or on stdio, which cannot do it).
fn unsupported(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    for name in ["fd_datasync", "fd_sync"] {
        both(l, name, |_c: C<'_>, fd: u32| -> u32 { fd_errno(fd) })?;
    }
    both(
        l,
        "fd_advise",
        |_c: C<'_>, fd: u32, _o: u64, _l: u64, _a: u32| -> u32 { fd_errno(fd) },
    )?;
    both(
        l,
        "fd_allocate",
        |_c: C<'_>, fd: u32, _o: u64, _l: u64| -> u32 { fd_errno(fd) },
    )?;
    both(
        l,
        "fd_fdstat_set_rights",
        |_c: C<'_>, fd: u32, _b: u64, _i: u64| -> u32 { fd_errno(fd) },
    )?;
    both(l, "fd_filestat_get", |_c: C<'_>, fd: u32, _r: u32| -> u32 {
        fd_errno(fd)
    })?;
    both(
        l,
        "fd_filestat_set_size",
        |_c: C<'_>, fd: u32, _s: u64| -> u32 { fd_errno(fd) },
    )?;
    both(
        l,
        "fd_filestat_set_times",
        |_c: C<'_>, fd: u32, _a: u64, _m: u64, _f: u32| -> u32 { fd_errno(fd) },
    )?;
    for name in ["fd_pread", "fd_pwrite"] {
        both(
            l,
            name,
            |_c: C<'_>, fd: u32, _i: u32, _n: u32, _o: u64, _r: u32| -> u32 { fd_errno(fd) },
        )?;
    }
    both(
        l,
        "fd_readdir",
        |_c: C<'_>, fd: u32, _b: u32, _l: u32, _k: u64, _r: u32| -> u32 { fd_errno(fd) },
    )?;
    both(l, "fd_renumber", |_c: C<'_>, fd: u32, _to: u32| -> u32 {
        fd_errno(fd)
    })?;
    // No directory is preopened: every path call names a descriptor that does not exist.
    for name in [
        "path_create_directory",
        "path_remove_directory",
        "path_unlink_file",
    ] {
        both(l, name, |_c: C<'_>, _fd: u32, _p: u32, _l: u32| -> u32 {
            BADF
        })?;
    }
    both(
        l,
        "path_filestat_get",
        |_c: C<'_>, _fd: u32, _f: u32, _p: u32, _l: u32, _r: u32| -> u32 { BADF },
    )?;
    both(
        l,
        "path_filestat_set_times",
        |_c: C<'_>, _fd: u32, _f: u32, _p: u32, _l: u32, _a: u64, _m: u64, _g: u32| -> u32 { BADF },
    )?;
    both(
        l,
        "path_link",
        |_c: C<'_>, _fd: u32, _f: u32, _p: u32, _l: u32, _d: u32, _q: u32, _m: u32| -> u32 { BADF },
    )?;
    both(
        l,
        "path_open",
        |_c: C<'_>,
         _fd: u32,
         _df: u32,
         _p: u32,
         _l: u32,
         _o: u32,
         _rb: u64,
         _ri: u64,
         _ff: u32,
         _r: u32|
         -> u32 { BADF },
    )?;
    both(
        l,
        "path_readlink",
        |_c: C<'_>, _fd: u32, _p: u32, _l: u32, _b: u32, _n: u32, _r: u32| -> u32 { BADF },
    )?;
    both(
        l,
        "path_rename",
        |_c: C<'_>, _fd: u32, _p: u32, _l: u32, _d: u32, _q: u32, _m: u32| -> u32 { BADF },
    )?;
    both(
        l,
        "path_symlink",
        |_c: C<'_>, _p: u32, _l: u32, _fd: u32, _q: u32, _m: u32| -> u32 { BADF },
    )?;
    let sock = |fd: u32| if fd <= 2 { NOTSOCK } else { BADF };
    both(
        l,
        "sock_accept",
        move |_c: C<'_>, fd: u32, _f: u32, _r: u32| -> u32 { sock(fd) },
    )?;
    both(
        l,
        "sock_recv",
        move |_c: C<'_>, fd: u32, _i: u32, _n: u32, _f: u32, _r: u32, _o: u32| -> u32 { sock(fd) },
    )?;
    both(
        l,
        "sock_send",
        move |_c: C<'_>, fd: u32, _i: u32, _n: u32, _f: u32, _r: u32| -> u32 { sock(fd) },
    )?;
    both(
        l,
        "sock_shutdown",
        move |_c: C<'_>, fd: u32, _h: u32| -> u32 { sock(fd) },
    )?;
    Ok(())
}

/// Every function WASI preview1 defines (all linked under both module names).
pub const FUNCTIONS: [&str; 46] = [
    "args_get",
    "args_sizes_get",
    "environ_get",
    "environ_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "fd_advise",
    "fd_allocate",
    "fd_close",
    "fd_datasync",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_fdstat_set_rights",
    "fd_filestat_get",
    "fd_filestat_set_size",
    "fd_filestat_set_times",
    "fd_pread",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_pwrite",
    "fd_read",
    "fd_readdir",
    "fd_renumber",
    "fd_seek",
    "fd_sync",
    "fd_tell",
    "fd_write",
    "path_create_directory",
    "path_filestat_get",
    "path_filestat_set_times",
    "path_link",
    "path_open",
    "path_readlink",
    "path_remove_directory",
    "path_rename",
    "path_symlink",
    "path_unlink_file",
    "poll_oneoff",
    "proc_exit",
    "proc_raise",
    "sched_yield",
    "random_get",
    "sock_accept",
    "sock_recv",
    "sock_send",
    "sock_shutdown",
];
