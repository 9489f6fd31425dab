//! The Proxy-Wasm header-map serialization: a u32 count, then a u32 key
//! length and a u32 value length per pair, then each key and value followed
//! by a NUL byte (all integers little-endian).
//!
//! Decoding is defensive: every length is checked against the buffer, the
//! NUL terminators must be present, and the caps below hold (1 MiB, 1024
//! pairs, as proxy-wasm-cpp-host), so a hostile buffer yields an error and
//! never a panic.

use crate::wasm::Status;

/// Most bytes a serialized map may take.
pub const MAX_PAIRS_BYTES: usize = 1 << 20;
/// Most pairs a serialized map may hold.
pub const MAX_PAIRS: usize = 1024;

/// Serializes `pairs`.
pub fn encode<'a, K, V>(pairs: impl IntoIterator<Item = (K, V)> + Clone) -> Vec<u8>
where
    K: AsRef<[u8]> + 'a,
    V: AsRef<[u8]> + 'a,
{
    let mut n = 0usize;
    let mut size = 4usize;
    for (k, v) in pairs.clone() {
        n += 1;
        size += 8 + k.as_ref().len() + v.as_ref().len() + 2;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&len32(k.as_ref().len()).to_le_bytes());
        out.extend_from_slice(&len32(v.as_ref().len()).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn word(buf: &[u8], at: usize) -> Option<usize> {
    let b = buf.get(at..at.checked_add(4)?)?;
    let mut w = [0u8; 4];
    w.copy_from_slice(b);
    usize::try_from(u32::from_le_bytes(w)).ok()
}

/// Decoded pairs, borrowing from the serialized buffer.
pub type Pairs<'a> = Vec<(&'a [u8], &'a [u8])>;

/// Decodes a serialized map; an empty buffer is an empty map.
pub fn decode(buf: &[u8]) -> Result<Pairs<'_>, Status> {
    if buf.is_empty() {
        return Ok(Vec::new());
    }
    if buf.len() > MAX_PAIRS_BYTES {
        return Err(Status::BadArgument);
    }
    let n = word(buf, 0).ok_or(Status::BadArgument)?;
    if n > MAX_PAIRS {
        return Err(Status::BadArgument);
    }
    let mut p = n
        .checked_mul(8)
        .and_then(|x| x.checked_add(4))
        .ok_or(Status::BadArgument)?;
    if p > buf.len() {
        return Err(Status::BadArgument);
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let klen = word(buf, 4 + i * 8).ok_or(Status::BadArgument)?;
        let vlen = word(buf, 8 + i * 8).ok_or(Status::BadArgument)?;
        let (key, next) = field(buf, p, klen)?;
        let (value, next) = field(buf, next, vlen)?;
        p = next;
        out.push((key, value));
    }
    Ok(out)
}

/// `len` bytes at `at` followed by a NUL; the slice and the offset after the NUL.
fn field(buf: &[u8], at: usize, len: usize) -> Result<(&[u8], usize), Status> {
    let end = at.checked_add(len).ok_or(Status::BadArgument)?;
    let s = buf.get(at..end).ok_or(Status::BadArgument)?;
    if buf.get(end) != Some(&0) {
        return Err(Status::BadArgument);
    }
    Ok((s, end + 1))
}

/// Splits a NUL-separated property path (`request\0headers\0x-id`).
pub fn split_path(path: &[u8]) -> Vec<&[u8]> {
    path.split(|b| *b == 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_matches_the_sdk_layout() {
        let pairs = [(":method", "GET"), ("x", "")];
        let buf = encode(pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
        assert_eq!(
            buf,
            [
                2, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, b':', b'm', b'e', b't',
                b'h', b'o', b'd', 0, b'G', b'E', b'T', 0, b'x', 0, 0
            ]
        );
        let back = decode(&buf).expect("valid");
        assert_eq!(
            back,
            vec![(&b":method"[..], &b"GET"[..]), (&b"x"[..], &b""[..])]
        );
    }

    #[test]
    fn hostile_buffers_are_errors() {
        assert_eq!(decode(&[]), Ok(vec![]));
        assert_eq!(decode(&[0, 0, 0, 0]), Ok(vec![]));
        assert!(decode(&[1, 0]).is_err());
        assert!(decode(&[1, 0, 0, 0]).is_err());
        assert!(decode(&[0xff, 0xff, 0xff, 0xff]).is_err());
        // Lengths pointing past the end.
        assert!(decode(&[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0]).is_err());
        // Missing NUL terminator.
        assert!(decode(&[1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, b'a', b'b', b'c', 0]).is_err());
        // Too many pairs.
        let mut big = (2000u32).to_le_bytes().to_vec();
        big.resize(4 + 2000 * 8 + 4000, 0);
        assert!(decode(&big).is_err());
        // A pseudo-random fuzz: never panics.
        let mut x = 0x1234_5678u32;
        for len in 0..300 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x % 7) as u8
                })
                .collect();
            let _ = decode(&buf);
        }
    }
}
