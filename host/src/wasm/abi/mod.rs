//! Host functions, grouped by area, and the one [`linker`] that holds them all.
//!
//! - [`proxy_wasm`]: the Proxy-Wasm ABI v0.2.1 (`env`): logging, time, ticks,
//!   buffers, header maps, properties, stream control, local responses, http
//!   calls, shared data and queues, metrics, foreign functions.
//! - [`wasi`]: the WASI preview1 calls SDKs link (`wasi_snapshot_preview1`).
//! - [`portcullis`]: portcullis's own `portcullis_v1` module (stick tables,
//!   SHA-2 / HMAC, structured logging).
//!
//! Every host function validates every argument and reaches guest memory
//! only through [`crate::wasm::memory`]; a bad call returns an error status
//! (and is counted), it never traps the host or reads out of bounds.

pub mod maps;
pub mod pairs;
pub mod portcullis;
pub mod properties;
pub mod proxy_wasm;
pub mod wasi;

use wasmtime::{Caller, Engine, Linker};

use super::Status;
use super::instance::HostState;

/// The linker with every host function the plugins may import.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut l = Linker::new(engine);
    proxy_wasm::add(&mut l)?;
    wasi::add(&mut l)?;
    portcullis::add(&mut l)?;
    Ok(l)
}

/// Guest memory and the host state together, for one host call.
/// `None` if the module exports no memory (such a module is refused at load).
#[inline]
pub(crate) fn mem_state<'a>(
    caller: &'a mut Caller<'_, HostState>,
) -> Option<(&'a mut [u8], &'a mut HostState)> {
    let m = caller.data().memory?;
    Some(m.data_and_store_mut(caller))
}

/// Records a refused call and returns its status as the raw value for the guest.
#[inline]
pub(crate) fn refuse(st: &mut HostState, status: Status, what: &str) -> u32 {
    st.note_bad_call(what);
    status.raw()
}

/// `?` for host calls: an `Err(status)` returns that status to the guest
/// (counted as a refused call when it is a bad pointer or argument).
macro_rules! tri {
    ($st:expr, $e:expr, $what:expr) => {
        match $e {
            Ok(v) => v,
            Err(s) => {
                if matches!(
                    s,
                    $crate::wasm::Status::InvalidMemoryAccess | $crate::wasm::Status::BadArgument
                ) {
                    return Ok($crate::wasm::abi::refuse($st, s, $what));
                }
                return Ok(s.raw());
            }
        }
    };
}
pub(crate) use tri;
