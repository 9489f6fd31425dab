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
//! Start a plugin with [`main!`] (it installs the panic hook, so a panic's
//! message reaches the host's log), read its configuration with
//! [`json_config`], compare secrets with [`constant_time_eq`], and use
//! [`hex_encode`]/[`hex_decode`] for digests.
//!
//! On a non-wasm target the `portcullis_v1` calls return
//! [`Status::Unimplemented`], so plugin logic can be unit-tested natively.
//! See `docs/PLUGINS.md` for a first plugin and `docs/ABI.md` for the ABI.

pub use proxy_wasm;
pub use proxy_wasm::traits::{Context, HttpContext, RootContext};
pub use proxy_wasm::types::{Action, ContextType, LogLevel as ProxyLogLevel};

mod host;
mod stick;
mod util;

pub use host::{Sha2, abi_version, hmac, hmac_verify, last_error, log, sha2};
pub use stick::StickTable;
#[cfg(feature = "json")]
pub use util::json_config;
pub use util::{ConfigError, HexError, constant_time_eq, hex_decode, hex_encode};

/// Declares the plugin's entry point, like `proxy_wasm::main!`, and first
/// installs the panic hook: a panic's message reaches the host's log as a
/// critical line instead of a bare trap. The body sets the root context:
///
/// ```ignore
/// portcullis_guest::main! {
///     portcullis_guest::proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
/// }
/// ```
#[macro_export]
macro_rules! main {
    ($($body:tt)*) => {
        // In a block: the exported entry point needs no doc of its own.
        #[allow(missing_docs)]
        const _: () = {
            $crate::proxy_wasm::main! {{
                // `set_log_level` installs proxy-wasm's panic hook (once).
                $crate::proxy_wasm::set_log_level($crate::proxy_wasm::types::LogLevel::Info);
                $($body)*
            }}
        };
    };
}

/// Name of the portcullis host import module this SDK speaks.
pub const HOST_MODULE: &str = "portcullis_v1";

/// Proxy-Wasm ABI version implemented by the host.
pub const PROXY_WASM_ABI: &str = "0.2.1";

/// Status codes returned by host calls (Proxy-Wasm v0.2.1 numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// No such key, table, entry or value.
    NotFound = 1,
    /// An argument the host refused (wrong type, name or range).
    BadArgument = 2,
    /// A value could not be encoded.
    SerializationFailure = 3,
    /// A value could not be decoded.
    ParseFailure = 4,
    /// A pointer or length outside the guest's memory.
    InvalidMemoryAccess = 6,
    /// Nothing to return (an empty queue or buffer).
    Empty = 7,
    /// A compare-and-swap lost to another writer.
    CasMismatch = 8,
    /// The host failed; see [`last_error`].
    InternalFailure = 10,
    /// Not provided by this host (or not on this target).
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
    /// Finest detail.
    Trace = 0,
    /// Debugging detail.
    Debug = 1,
    /// Normal events.
    Info = 2,
    /// Something unusual.
    Warn = 3,
    /// A failure.
    Error = 4,
    /// A failure that stops the plugin.
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
