//! Typed access to the host's stick tables (`portcullis_v1.stick_*`).

use crate::Status;

/// A named stick table declared in the portcullis config (`[[stick_table]]`).
///
/// `data` names are HAProxy's: `gpc0`, `gpc0_rate`, `http_req_cnt`,
/// `http_req_rate`, `conn_cur`, ...; the table must store them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickTable {
    name: String,
}

impl StickTable {
    /// A handle on the table `name` (checked by the host on each call).
    pub fn new(name: impl Into<String>) -> StickTable {
        StickTable { name: name.into() }
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value of `data` for `key`; `Ok(None)` if the key has no entry.
    pub fn get(&self, key: &str, data: &str) -> Result<Option<u64>, Status> {
        let t = self.name.as_bytes();
        let mut v = 0u64;
        // SAFETY: the strings are readable and `v` writable during the call.
        let st = unsafe {
            crate::host::stick_get(
                t.as_ptr(),
                t.len(),
                key.as_ptr(),
                key.len(),
                data.as_ptr(),
                data.len(),
                &mut v,
            )
        };
        match crate::host::check(st) {
            Ok(()) => Ok(Some(v)),
            Err(Status::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Adds `delta` to `data` of `key` (creating the entry); the new value.
    /// Adding to `gpcN` also counts in `gpcN_rate`.
    pub fn add(&self, key: &str, data: &str, delta: i64) -> Result<u64, Status> {
        let t = self.name.as_bytes();
        let mut v = 0u64;
        // SAFETY: the strings are readable and `v` writable during the call.
        let st = unsafe {
            crate::host::stick_add(
                t.as_ptr(),
                t.len(),
                key.as_ptr(),
                key.len(),
                data.as_ptr(),
                data.len(),
                delta,
                &mut v,
            )
        };
        crate::host::check(st).map(|()| v)
    }

    /// Adds one to `data` of `key`; the new value.
    pub fn inc(&self, key: &str, data: &str) -> Result<u64, Status> {
        self.add(key, data, 1)
    }

    /// Sets `data` of `key` to `value` (creating the entry).
    pub fn set(&self, key: &str, data: &str, value: i64) -> Result<(), Status> {
        let t = self.name.as_bytes();
        // SAFETY: the strings are readable during the call.
        let st = unsafe {
            crate::host::stick_set(
                t.as_ptr(),
                t.len(),
                key.as_ptr(),
                key.len(),
                data.as_ptr(),
                data.len(),
                value,
            )
        };
        crate::host::check(st)
    }

    /// Removes the entry of `key`; `Err(NotFound)` if there is none.
    pub fn clear(&self, key: &str) -> Result<(), Status> {
        let t = self.name.as_bytes();
        // SAFETY: the strings are readable during the call.
        let st = unsafe { crate::host::stick_clear(t.as_ptr(), t.len(), key.as_ptr(), key.len()) };
        crate::host::check(st)
    }
}
