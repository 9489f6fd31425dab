//! The one checked guest-memory helper.
//!
//! Every host function reaches guest memory only through these functions.
//! Guest pointers and lengths are unsigned 32-bit values (an SDK passes
//! `0xFFFF_FFFF` for "the whole buffer"); `ptr + len` is computed in `usize`
//! with an overflow check and compared with the memory's current size, so a
//! bad pointer yields [`Status::InvalidMemoryAccess`] and never a host-side
//! out-of-bounds access. Copies *into* the guest go through the guest's own
//! allocator (`proxy_on_memory_allocate` or `malloc`), and the pointer it
//! returns is checked the same way before anything is written.

use std::ops::Range;

use wasmtime::Caller;

use super::Status;
use super::instance::HostState;

/// The byte range `ptr .. ptr + len` if it lies inside a memory of `mem_len` bytes.
#[inline]
pub fn range(mem_len: usize, ptr: u32, len: u32) -> Option<Range<usize>> {
    let start = usize::try_from(ptr).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (end <= mem_len).then_some(start..end)
}

/// `len` bytes of guest memory at `ptr`.
#[inline]
pub fn read(mem: &[u8], ptr: u32, len: u32) -> Result<&[u8], Status> {
    range(mem.len(), ptr, len)
        .and_then(|r| mem.get(r))
        .ok_or(Status::InvalidMemoryAccess)
}

/// `len` bytes of guest memory at `ptr` as UTF-8 text.
pub fn read_str(mem: &[u8], ptr: u32, len: u32) -> Result<&str, Status> {
    std::str::from_utf8(read(mem, ptr, len)?).map_err(|_| Status::BadArgument)
}

/// Writes `data` at `ptr`.
#[inline]
pub fn write(mem: &mut [u8], ptr: u32, data: &[u8]) -> Result<(), Status> {
    let len = u32::try_from(data.len()).map_err(|_| Status::InvalidMemoryAccess)?;
    let dst = range(mem.len(), ptr, len)
        .and_then(|r| mem.get_mut(r))
        .ok_or(Status::InvalidMemoryAccess)?;
    dst.copy_from_slice(data);
    Ok(())
}

/// Writes a little-endian u32 at `ptr`.
#[inline]
pub fn write_u32(mem: &mut [u8], ptr: u32, v: u32) -> Result<(), Status> {
    write(mem, ptr, &v.to_le_bytes())
}

/// Writes a little-endian u64 at `ptr`.
#[inline]
pub fn write_u64(mem: &mut [u8], ptr: u32, v: u64) -> Result<(), Status> {
    write(mem, ptr, &v.to_le_bytes())
}

/// Reads a little-endian u32 at `ptr`.
#[inline]
pub fn read_u32(mem: &[u8], ptr: u32) -> Result<u32, Status> {
    let b = read(mem, ptr, 4)?;
    let mut w = [0u8; 4];
    w.copy_from_slice(b);
    Ok(u32::from_le_bytes(w))
}

/// Whether `ptr .. ptr + len` is writable now (checked before calling the guest allocator).
#[inline]
pub fn check(mem: &[u8], ptr: u32, len: u32) -> Result<(), Status> {
    range(mem.len(), ptr, len)
        .map(|_| ())
        .ok_or(Status::InvalidMemoryAccess)
}

/// The outcome of a host call that may have run guest code (the allocator):
/// `Err` is a trap inside the guest, which kills the instance.
pub type HostResult = Result<u32, wasmtime::Error>;

/// Copies `data` into a buffer allocated by the guest and stores its pointer
/// at `ret_ptr` and its size at `ret_size` (the Proxy-Wasm "return buffer"
/// convention). Empty data stores a null pointer and size 0 without
/// allocating, as proxy-wasm-cpp-host does.
pub fn copy_out(
    caller: &mut Caller<'_, HostState>,
    data: &[u8],
    ret_ptr: u32,
    ret_size: u32,
) -> HostResult {
    let Some(memory) = caller.data().memory else {
        return Ok(Status::InternalFailure.raw());
    };
    {
        let mem = memory.data(&*caller);
        if check(mem, ret_ptr, 4).is_err() || check(mem, ret_size, 4).is_err() {
            return Ok(Status::InvalidMemoryAccess.raw());
        }
    }
    let Ok(len) = u32::try_from(data.len()) else {
        return Ok(Status::BadArgument.raw());
    };
    let mut ptr = 0u32;
    if len > 0 {
        let Some(malloc) = caller.data().malloc.clone() else {
            caller.data_mut().note_bad_call(
                "the module exports no allocator (proxy_on_memory_allocate or malloc)",
            );
            return Ok(Status::InternalFailure.raw());
        };
        ptr = malloc.call(&mut *caller, len)?;
        let mem = memory.data_mut(&mut *caller);
        if ptr == 0 || write(mem, ptr, data).is_err() {
            caller
                .data_mut()
                .note_bad_call("the guest allocator returned an invalid pointer");
            return Ok(Status::InvalidMemoryAccess.raw());
        }
    }
    let mem = memory.data_mut(&mut *caller);
    match write_u32(mem, ret_ptr, ptr).and_then(|()| write_u32(mem, ret_size, len)) {
        Ok(()) => Ok(Status::Ok.raw()),
        Err(s) => Ok(s.raw()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_for_overflow_and_bounds() {
        assert_eq!(range(100, 0, 100), Some(0..100));
        assert_eq!(range(100, 100, 0), Some(100..100));
        assert_eq!(range(100, 101, 0), None);
        assert_eq!(range(100, 1, 100), None);
        assert_eq!(range(100, u32::MAX, 1), None);
        assert_eq!(range(100, 1, u32::MAX), None);
        assert_eq!(
            range(usize::MAX, u32::MAX, u32::MAX).map(|r| r.len()),
            Some(u32::MAX as usize)
        );
        let mut mem = vec![0u8; 16];
        assert_eq!(write_u32(&mut mem, 12, 7), Ok(()));
        assert_eq!(read_u32(&mem, 12), Ok(7));
        assert_eq!(write_u32(&mut mem, 13, 7), Err(Status::InvalidMemoryAccess));
        assert_eq!(
            read(&mem, 0xFFFF_FFFF, 0xFFFF_FFFF),
            Err(Status::InvalidMemoryAccess)
        );
        assert_eq!(read_str(&[0xff], 0, 1), Err(Status::BadArgument));
    }

    #[test]
    fn every_edge_of_guest_memory_is_checked() {
        let mut mem = vec![7u8; 64];
        // The last byte is readable, one past it is not; empty reads at the end are fine.
        assert_eq!(read(&mem, 63, 1), Ok(&[7u8][..]));
        assert_eq!(read(&mem, 64, 1), Err(Status::InvalidMemoryAccess));
        assert_eq!(read(&mem, 64, 0), Ok(&[][..]));
        assert_eq!(read(&mem, 65, 0), Err(Status::InvalidMemoryAccess));
        // "Negative" pointers and lengths (the guest's -1) never wrap around.
        for (ptr, len) in [
            (u32::MAX, 0),
            (0, u32::MAX),
            (u32::MAX - 3, 8),
            (32, u32::MAX - 16),
        ] {
            assert_eq!(
                read(&mem, ptr, len),
                Err(Status::InvalidMemoryAccess),
                "{ptr} {len}"
            );
            assert_eq!(
                check(&mem, ptr, len),
                Err(Status::InvalidMemoryAccess),
                "{ptr} {len}"
            );
        }
        // A write that does not fit changes nothing.
        assert_eq!(
            write(&mut mem, 60, &[1, 2, 3, 4, 5]),
            Err(Status::InvalidMemoryAccess)
        );
        assert!(mem.iter().all(|b| *b == 7));
        assert_eq!(write(&mut mem, 59, &[1, 2, 3, 4, 5]), Ok(()));
        assert_eq!(&mem[59..], &[1, 2, 3, 4, 5]);
        assert_eq!(write_u64(&mut mem, 57, 1), Err(Status::InvalidMemoryAccess));
        assert_eq!(write_u64(&mut mem, 56, u64::MAX), Ok(()));
        assert_eq!(read_u32(&mem, 60), Ok(u32::MAX));
        assert_eq!(read_u32(&mem, 61), Err(Status::InvalidMemoryAccess));
        // Empty memory (a module that exported none is refused, but be safe).
        assert_eq!(read(&[], 0, 1), Err(Status::InvalidMemoryAccess));
        assert_eq!(read_str(&mem[..4], 0, 4), Ok("\u{7}\u{7}\u{7}\u{7}"));
    }
}
