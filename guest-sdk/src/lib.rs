//! `portcullis-guest`: the guest SDK for portcullis WebAssembly filter plugins.
//!
//! Plugins are compiled for `wasm32-unknown-unknown` or `wasm32-wasip1` and
//! talk to the host through the Proxy-Wasm ABI v0.2.1 plus portcullis's own
//! versioned `portcullis_v1` import module. This crate holds the shared
//! vocabulary of both (status codes, log levels, ABI names); the typed
//! stick-table, crypto and logging wrappers build on it.

#![no_std]

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
    }
}
