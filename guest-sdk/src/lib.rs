//! `portcullis-guest`: the guest SDK for portcullis WebAssembly filter plugins.
//!
//! Plugins are compiled for `wasm32-unknown-unknown` (or `wasm32-wasip1`) as
//! a `cdylib` and talk to the host through two import modules:
//!
//! - the Proxy-Wasm ABI v0.2.1 (`env`): this crate re-exports the
//!   [`proxy_wasm`] crate, so the context model (`RootContext`,
//!   `HttpContext`, `proxy_wasm::main!`) is the one Envoy filters use;
//! - portcullis's own `portcullis_v1`: typed [`StickTable`]s, [`sha2`] and
//!   [`hmac`] (SHA-2 family), structured [`log`] lines, [`last_error`].
//!
//! On a non-wasm target the `portcullis_v1` calls return
//! [`Status::Unimplemented`], so plugin logic can be unit-tested natively.
//! See `docs/PLUGINS.md` for a first plugin and `docs/ABI.md` for the ABI.

pub use proxy_wasm;
pub use proxy_wasm::traits::{Context, HttpContext, RootContext};
pub use proxy_wasm::types::{Action, ContextType, LogLevel as ProxyLogLevel};

mod host;
mod stick;

pub use host::{Sha2, abi_version, hmac, hmac_verify, last_error, log, sha2};
pub use stick::StickTable;

/// Name of the portcullis host import module this SDK speaks.
pub const HOST_MODULE: &str = "portcullis_v1";

/// Proxy-Wasm ABI version implemented by the host.
pub const PROXY_WASM_ABI: &str = "0.2.1";

/// Status codes returned by host calls (Proxy-Wasm v0.2.1 numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

impl Status {
    /// Decodes a raw status; `None` for a value the ABI does not define.
    pub fn from_raw(raw: u32) -> Option<Status> {
        Some(match raw {
            0 => Status::Ok,
            1 => Status::NotFound,
            2 => Status::BadArgument,
            3 => Status::SerializationFailure,
            4 => Status::ParseFailure,
            6 => Status::InvalidMemoryAccess,
            7 => Status::Empty,
            8 => Status::CasMismatch,
            10 => Status::InternalFailure,
            12 => Status::Unimplemented,
            _ => return None,
        })
    }

    /// `Ok(())` for [`Status::Ok`], the status as an error otherwise.
    pub fn into_result(self) -> Result<(), Status> {
        match self {
            Status::Ok => Ok(()),
            other => Err(other),
        }
    }
}

/// Log levels (Proxy-Wasm numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trip() {
        for raw in 0..16u32 {
            if let Some(s) = Status::from_raw(raw) {
                assert_eq!(s as u32, raw);
            }
        }
        assert_eq!(Status::from_raw(5), None);
        assert_eq!(Status::Ok.into_result(), Ok(()));
        assert_eq!(Status::NotFound.into_result(), Err(Status::NotFound));
        assert_eq!(
            Status::from_raw(Status::CasMismatch as u32),
            Some(Status::CasMismatch)
        );
    }
}
