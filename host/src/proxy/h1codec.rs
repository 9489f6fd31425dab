//! HTTP/1 message framing shared by the worker's own client
//! (`upstream_h1.rs`) and server (`server_h1.rs`): Content-Length values,
//! Transfer-Encoding tokens, and the chunked decoder (chunk sizes with
//! extensions, trailers) with its caps.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Longest chunk-size line (with its extensions) accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;

/// What a message head (and a chunked body's trailers) may hold (`[global] max_header_size`,
/// `max_headers`), as HAProxy's `tune.bufsize` and `tune.http.maxhdr`
/// bound both directions.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Bytes of the head, status line and final blank line included.
    pub max_size: usize,
    /// Header fields.
    pub max_headers: usize,
}

/// A Content-Length value: digits, or a list of equal ones (RFC 9110 §8.6).
pub fn parse_content_length(value: &[u8]) -> Result<u64, String> {
    let mut found: Option<u64> = None;
    for part in value.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(format!(
                "invalid Content-Length {:?} (expected digits)",
                String::from_utf8_lossy(value)
            ));
        }
        let n = part
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        match found {
            Some(m) if m != n => {
                return Err(format!("different Content-Length values ({m} and {n})"));
            }
            _ => found = Some(n),
        }
    }
    found.ok_or_else(|| "empty Content-Length".to_string())
}

/// Whether the last comma-separated token of `value` is `token` (any case).
pub fn last_token_is(value: &[u8], token: &[u8]) -> bool {
    value
        .rsplit(|b| *b == b',')
        .next()
        .map(|t| t.trim_ascii())
        .is_some_and(|t| t.eq_ignore_ascii_case(token))
}

/// Appends `n` in hexadecimal (a chunk size), without allocating.
pub fn push_hex(buf: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = ((64 - n.leading_zeros()).div_ceil(4)).max(1);
    for i in (0..digits).rev() {
        buf.push(HEX[((n >> (i * 4)) & 0xf) as usize]);
    }
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
    /// The body is over.
    End,
}

/// What [`decode_chunked`] got from the buffered bytes.
pub enum Out {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// More bytes are needed.
    More,
}

/// Decodes chunked framing from `buf` as far as it goes without reading.
pub fn decode_chunked(
    buf: &mut BytesMut,
    state: &mut Chunked,
    limits: HeadLimits,
) -> Result<Out, String> {
    loop {
        match *state {
            Chunked::End => return Ok(Out::End),
            Chunked::Data(left) => {
                if buf.is_empty() {
                    return Ok(Out::More);
                }
                let n = (buf.len() as u64).min(left);
                let data = buf.split_to(n as usize).freeze();
                *state = if n == left {
                    // The end is often in the same read: said with this last frame.
                    if buf.starts_with(b"\r\n0\r\n\r\n") {
                        let _ = buf.split_to(7);
                        Chunked::End
                    } else {
                        Chunked::DataEnd
                    }
                } else {
                    Chunked::Data(left - n)
                };
                return Ok(Out::Data(data));
            }
            Chunked::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Out::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err("chunk data not followed by CRLF".into());
                }
                let _ = buf.split_to(2);
                *state = Chunked::Size;
            }
            Chunked::Size => {
                let Some(lf) = buf.iter().take(MAX_CHUNK_LINE).position(|b| *b == b'\n') else {
                    if buf.len() >= MAX_CHUNK_LINE {
                        return Err(format!(
                            "chunk-size line longer than {MAX_CHUNK_LINE} bytes"
                        ));
                    }
                    return Ok(Out::More);
                };
                let size = parse_chunk_size(&buf[..=lf])?;
                let _ = buf.split_to(lf + 1);
                *state = if size == 0 {
                    Chunked::Trailers
                } else {
                    Chunked::Data(size)
                };
            }
            Chunked::Trailers => {
                if buf.starts_with(b"\r\n") {
                    let _ = buf.split_to(2);
                    *state = Chunked::End;
                    return Ok(Out::End);
                }
                if buf.len() < 2 {
                    return Ok(Out::More);
                }
                return match parse_trailers(buf, limits)? {
                    Some(map) => {
                        *state = Chunked::End;
                        Ok(Out::Trailers(map))
                    }
                    None => Ok(Out::More),
                };
            }
        }
    }
}

/// A complete trailer section at the start of `buf` (consumed), within `limits`.
pub fn parse_trailers(buf: &mut BytesMut, limits: HeadLimits) -> Result<Option<HeaderMap>, String> {
    let too_large = || {
        format!(
            "trailers larger than max_header_size ({} bytes)",
            limits.max_size
        )
    };
    let too_many = || {
        format!(
            "more than max_headers ({}) trailer fields",
            limits.max_headers
        )
    };
    let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers.saturating_add(1)];
    let (len, map) = match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete((len, fields))) => {
            if len > limits.max_size {
                return Err(too_large());
            }
            if fields.len() > limits.max_headers {
                return Err(too_many());
            }
            let mut map = HeaderMap::with_capacity(fields.len());
            for f in fields.iter() {
                let name = HeaderName::from_bytes(f.name.as_bytes())
                    .map_err(|_| format!("invalid trailer name {:?}", f.name))?;
                let value = HeaderValue::from_bytes(f.value)
                    .map_err(|_| format!("invalid value of trailer {name}"))?;
                map.append(name, value);
            }
            (len, map)
        }
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_size => return Err(too_large()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(too_many()),
        Err(e) => return Err(format!("malformed trailers ({e})")),
    };
    let _ = buf.split_to(len);
    Ok(Some(map))
}

/// A chunk-size line (`HEX [; extensions] CRLF`): its size; extensions are
/// ignored, as HAProxy and hyper do.
pub fn parse_chunk_size(line: &[u8]) -> Result<u64, String> {
    let Some(line) = line.strip_suffix(b"\r\n") else {
        return Err("chunk-size line not ended by CRLF".into());
    };
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!(
            "invalid chunk size {:?} (expected hex digits)",
            String::from_utf8_lossy(line)
        ));
    }
    if digits.len() > 15 {
        return Err("chunk size too large (more than 15 hex digits)".into());
    }
    let rest = rest.trim_ascii_start();
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return Err(format!(
            "invalid chunk size {:?} (expected hex digits, then `;` extensions)",
            String::from_utf8_lossy(line)
        ));
    }
    if rest.iter().any(|b| *b == b'\r' || *b == b'\n' || *b == 0) {
        return Err("control character in a chunk extension".into());
    }
    Ok(digits.iter().fold(0u64, |acc, d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        (acc << 4) | u64::from(v)
    }))
}
