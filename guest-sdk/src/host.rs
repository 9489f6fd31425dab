//! The `portcullis_v1` import module: raw imports on wasm32, safe wrappers.

use crate::{LogLevel, Status};

#[cfg(target_arch = "wasm32")]
mod raw {
    #[link(wasm_import_module = "portcullis_v1")]
    unsafe extern "C" {
        pub fn abi_version() -> u32;
        pub fn log(level: u32, m: *const u8, ml: usize, f: *const u8, fl: usize) -> u32;
        pub fn sha2(alg: u32, d: *const u8, dl: usize, out: *mut u8, ol: usize) -> u32;
        pub fn hmac_sha2(
            alg: u32,
            k: *const u8,
            kl: usize,
            d: *const u8,
            dl: usize,
            out: *mut u8,
            ol: usize,
        ) -> u32;
        pub fn stick_get(
            t: *const u8,
            tl: usize,
            k: *const u8,
            kl: usize,
            d: *const u8,
            dl: usize,
            ret: *mut u64,
        ) -> u32;
        pub fn stick_add(
            t: *const u8,
            tl: usize,
            k: *const u8,
            kl: usize,
            d: *const u8,
            dl: usize,
            delta: i64,
            ret: *mut u64,
        ) -> u32;
        pub fn stick_set(
            t: *const u8,
            tl: usize,
            k: *const u8,
            kl: usize,
            d: *const u8,
            dl: usize,
            value: i64,
        ) -> u32;
        pub fn stick_clear(t: *const u8, tl: usize, k: *const u8, kl: usize) -> u32;
        pub fn last_error(ret: *mut *mut u8, size: *mut usize) -> u32;
    }
}

/// Off wasm32 (native unit tests of plugin logic) every call is `Unimplemented`.
#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::missing_safety_doc, clippy::too_many_arguments)]
mod raw {
    const UNIMPLEMENTED: u32 = 12;
    pub unsafe fn abi_version() -> u32 {
        0
    }
    pub unsafe fn log(_: u32, _: *const u8, _: usize, _: *const u8, _: usize) -> u32 {
        UNIMPLEMENTED
    }
    pub unsafe fn sha2(_: u32, _: *const u8, _: usize, _: *mut u8, _: usize) -> u32 {
        UNIMPLEMENTED
    }
    pub unsafe fn hmac_sha2(
        _: u32,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *mut u8,
        _: usize,
    ) -> u32 {
        UNIMPLEMENTED
    }
    pub unsafe fn stick_get(
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *mut u64,
    ) -> u32 {
        UNIMPLEMENTED
    }
    pub unsafe fn stick_add(
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: i64,
        _: *mut u64,
    ) -> u32 {
        UNIMPLEMENTED
    }
    pub unsafe fn stick_set(
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: i64,
    ) -> u32 {
        UNIMPLEMENTED
    }
    pub unsafe fn stick_clear(_: *const u8, _: usize, _: *const u8, _: usize) -> u32 {
        UNIMPLEMENTED
    }
    pub unsafe fn last_error(_: *mut *mut u8, _: *mut usize) -> u32 {
        UNIMPLEMENTED
    }
}

/// A raw status as a result; an undefined value is reported as `InternalFailure`.
pub(crate) fn check(raw: u32) -> Result<(), Status> {
    Status::from_raw(raw)
        .unwrap_or(Status::InternalFailure)
        .into_result()
}

/// SHA-2 variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sha2 {
    /// SHA-224.
    Sha224 = 224,
    /// SHA-256.
    Sha256 = 256,
    /// SHA-384.
    Sha384 = 384,
    /// SHA-512.
    Sha512 = 512,
}

impl Sha2 {
    /// Digest length in bytes.
    pub fn len(self) -> usize {
        self as usize / 8
    }

    /// Never true (a digest is never empty); for clippy's `len_without_is_empty`.
    pub fn is_empty(self) -> bool {
        false
    }
}

/// The `portcullis_v1` version the host implements (0 off wasm32).
pub fn abi_version() -> u32 {
    // SAFETY: a host import without arguments.
    unsafe { raw::abi_version() }
}

/// Serializes `fields` in the Proxy-Wasm pairs layout the host decodes.
pub(crate) fn encode_pairs(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(fields.len() as u32).to_le_bytes());
    for (k, v) in fields {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in fields {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// A structured log line: `msg` plus `key=value` fields, at `level`.
pub fn log(level: LogLevel, msg: &str, fields: &[(&str, &str)]) -> Result<(), Status> {
    let f = encode_pairs(fields);
    // SAFETY: both buffers are valid for their lengths during the call.
    check(unsafe { raw::log(level as u32, msg.as_ptr(), msg.len(), f.as_ptr(), f.len()) })
}

/// The SHA-2 digest of `data`, computed by the host.
pub fn sha2(alg: Sha2, data: &[u8]) -> Result<Vec<u8>, Status> {
    let mut out = vec![0u8; alg.len()];
    // SAFETY: `data` is readable and `out` writable for their lengths.
    check(unsafe {
        raw::sha2(
            alg as u32,
            data.as_ptr(),
            data.len(),
            out.as_mut_ptr(),
            out.len(),
        )
    })?;
    Ok(out)
}

/// HMAC of `data` under `key` with SHA-2 `alg`, computed by the host.
pub fn hmac(alg: Sha2, key: &[u8], data: &[u8]) -> Result<Vec<u8>, Status> {
    let mut out = vec![0u8; alg.len()];
    // SAFETY: every buffer is valid for its length during the call.
    check(unsafe {
        raw::hmac_sha2(
            alg as u32,
            key.as_ptr(),
            key.len(),
            data.as_ptr(),
            data.len(),
            out.as_mut_ptr(),
            out.len(),
        )
    })?;
    Ok(out)
}

/// Whether `mac` is the HMAC of `data` under `key`, compared in constant time.
pub fn hmac_verify(alg: Sha2, key: &[u8], data: &[u8], mac: &[u8]) -> Result<bool, Status> {
    let want = hmac(alg, key, data)?;
    if want.len() != mac.len() {
        return Ok(false);
    }
    let diff = want.iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    Ok(diff == 0)
}

/// Why the last `portcullis_v1` call of this instance failed, if the host said.
pub fn last_error() -> Option<String> {
    let mut ptr: *mut u8 = core::ptr::null_mut();
    let mut len: usize = 0;
    // SAFETY: the host writes a pointer and a size into the two out-params.
    let st = unsafe { raw::last_error(&mut ptr, &mut len) };
    if st != 0 || ptr.is_null() {
        return None;
    }
    // SAFETY: the host allocated `len` bytes with this module's allocator
    // (proxy_on_memory_allocate, a Vec<u8>) and handed ownership to us.
    let bytes = unsafe { Vec::from_raw_parts(ptr, len, len) };
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

pub(crate) use raw::{stick_add, stick_clear, stick_get, stick_set};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_layout_matches_proxy_wasm() {
        let b = encode_pairs(&[("a", "xy")]);
        assert_eq!(
            b,
            [1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'a', 0, b'x', b'y', 0]
        );
        assert_eq!(sha2(Sha2::Sha256, b"x"), Err(Status::Unimplemented));
        assert_eq!(Sha2::Sha384.len(), 48);
    }
}
