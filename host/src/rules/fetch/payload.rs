//! Layer-4 content fetches (`req.len`, `req.payload`, `req.payload_lv` and
//! their `res.*` twins): the request (response) channel of a TCP-mode
//! stream ([`crate::channel`]; the response one while `tcp_response` rules
//! run), or in an HTTP transaction the request (response) body part read so far. As in HAProxy, a
//! value more data may change is flagged ([`watch_may_change`]): a
//! `tcp_request` condition that fails on one waits for more data
//! (`rules/tcp.rs`).

use std::borrow::Cow;

use super::expr::arg_int;
use super::{Call, Fetch, Value};
use crate::rules::{Env, ParseError};
use crate::txn::Txn;

thread_local! {
    /// Set when a fetch here gave a value that more data may change
    /// (HAProxy's `SMP_F_MAY_CHANGE`): `req.len` always, the payload
    /// fetches when the data they need is not all there yet.
    static MAY_CHANGE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` and tells whether a fetch it ran gave a value more data may change.
pub fn watch_may_change<R>(f: impl FnOnce() -> R) -> (R, bool) {
    MAY_CHANGE.with(|m| m.set(false));
    let r = f();
    (r, MAY_CHANGE.with(std::cell::Cell::get))
}

fn may_change() {
    MAY_CHANGE.with(|m| m.set(true));
}

/// Runs `f` on the request (`resp`: response) data of `txn`.
fn with_data<R>(txn: &Txn, resp: bool, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    let ch = if resp {
        crate::channel::of_res(txn)
    } else {
        crate::channel::of(txn)
    };
    if let Some(ch) = ch {
        let b = ch.req.try_borrow().ok()?;
        return Some(f(b.get(ch.fwd.get()..).unwrap_or(&[])));
    }
    let body = if resp {
        &txn.resp_buffered
    } else {
        &txn.req_buffered
    };
    body.as_ref().map(|b| f(&b.data))
}

/// `req.len` / `res.len`: bytes in the channel's buffer.
#[derive(Debug)]
struct Len {
    resp: bool,
}

impl Fetch for Len {
    fn fetch<'t>(&'t self, txn: &'t Txn) -> Option<Value<'t>> {
        may_change();
        let n = with_data(txn, self.resp, <[u8]>::len).unwrap_or(0);
        Some(Value::Int(i64::try_from(n).unwrap_or(i64::MAX)))
    }
}

/// `req.payload(offset,length)`: `length` bytes from `offset` (0: all the
/// rest); no value until that many bytes are there.
#[derive(Debug)]
struct Payload {
    off: usize,
    len: usize,
    resp: bool,
}

impl Fetch for Payload {
    fn fetch<'t>(&'t self, txn: &'t Txn) -> Option<Value<'t>> {
        let v = with_data(txn, self.resp, |d| {
            let end = if self.len == 0 {
                d.len()
            } else {
                self.off.checked_add(self.len)?
            };
            d.get(self.off..end).map(<[u8]>::to_vec)
        })
        .flatten();
        if v.is_none() || self.len == 0 {
            may_change();
        }
        v.map(|v| Value::Bin(Cow::Owned(v)))
    }
}

/// `req.payload_lv(off1,length[,off2])`: a block whose length is the
/// big-endian integer of `length` bytes at `off1`; the block starts at
/// `off2` (absent: right after the length), relative to the buffer start.
#[derive(Debug)]
struct PayloadLv {
    off1: usize,
    len: usize,
    off2: Option<usize>,
    resp: bool,
}

impl Fetch for PayloadLv {
    fn fetch<'t>(&'t self, txn: &'t Txn) -> Option<Value<'t>> {
        let v = with_data(txn, self.resp, |d| {
            let len_bytes = d.get(self.off1..self.off1.checked_add(self.len)?)?;
            let n = len_bytes.iter().try_fold(0usize, |acc, b| {
                acc.checked_mul(256)?.checked_add(usize::from(*b))
            })?;
            let start = self.off2.unwrap_or(self.off1 + self.len);
            d.get(start..start.checked_add(n)?).map(<[u8]>::to_vec)
        })
        .flatten();
        if v.is_none() {
            may_change();
        }
        v.map(|v| Value::Bin(Cow::Owned(v)))
    }
}

fn offset(c: &Call<'_>, i: usize, what: &str) -> Result<usize, ParseError> {
    let Some(a) = c.args.get(i) else {
        return Ok(0);
    };
    let n = arg_int(a, what)?;
    usize::try_from(n)
        .ok()
        .filter(|n| *n <= crate::channel::BUFSIZE)
        .ok_or_else(|| {
            ParseError::new(
                c.offset,
                format!(
                    "{what} must be between 0 and {}, got {n}",
                    crate::channel::BUFSIZE
                ),
            )
        })
}

pub(super) fn b_len(_: &Call<'_>, _: &Env<'_>) -> Result<Box<dyn Fetch>, ParseError> {
    Ok(Box::new(Len { resp: false }))
}

pub(super) fn b_res_len(_: &Call<'_>, _: &Env<'_>) -> Result<Box<dyn Fetch>, ParseError> {
    Ok(Box::new(Len { resp: true }))
}

pub(super) fn b_payload(c: &Call<'_>, _: &Env<'_>) -> Result<Box<dyn Fetch>, ParseError> {
    payload(c, false)
}

pub(super) fn b_res_payload(c: &Call<'_>, _: &Env<'_>) -> Result<Box<dyn Fetch>, ParseError> {
    payload(c, true)
}

fn payload(c: &Call<'_>, resp: bool) -> Result<Box<dyn Fetch>, ParseError> {
    Ok(Box::new(Payload {
        off: offset(c, 0, "the payload offset")?,
        len: offset(c, 1, "the payload length")?,
        resp,
    }))
}

pub(super) fn b_payload_lv(c: &Call<'_>, _: &Env<'_>) -> Result<Box<dyn Fetch>, ParseError> {
    payload_lv(c, false)
}

pub(super) fn b_res_payload_lv(c: &Call<'_>, _: &Env<'_>) -> Result<Box<dyn Fetch>, ParseError> {
    payload_lv(c, true)
}

fn payload_lv(c: &Call<'_>, resp: bool) -> Result<Box<dyn Fetch>, ParseError> {
    let len = offset(c, 1, "the length field's size")?;
    if !(1..=8).contains(&len) {
        return Err(ParseError::new(
            c.offset,
            format!(
                "{}.payload_lv: the length field's size must be between 1 and 8 bytes, got {len}",
                if resp { "res" } else { "req" }
            ),
        ));
    }
    Ok(Box::new(PayloadLv {
        off1: offset(c, 0, "the length field's offset")?,
        len,
        off2: if c.args.len() > 2 {
            Some(offset(c, 2, "the block's offset")?)
        } else {
            None
        },
        resp,
    }))
}

/// In a TCP-mode stream, the method of the HTTP/1 request the client's data
/// starts with (HAProxy parses the buffer as HTTP for `method` there):
/// `Some(None)` while the head is incomplete (more data may change that)
/// or when it is not an HTTP/1 request; `None` outside TCP mode.
pub fn tcp_method(txn: &Txn) -> Option<Option<Value<'static>>> {
    let ch = crate::channel::of(txn)?;
    let Ok(b) = ch.req.try_borrow() else {
        return Some(None);
    };
    let data = b.get(ch.fwd.get()..).unwrap_or(&[]);
    if !data.windows(4).any(|w| w == b"\r\n\r\n") {
        may_change();
        return Some(None);
    }
    let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap_or(0);
    let line = data.get(..line_end).unwrap_or(&[]);
    let mut parts = line.split(|c| *c == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(None);
    };
    let token = |s: &[u8]| {
        !s.is_empty()
            && s.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(c))
    };
    if !token(method) || target.is_empty() || !version.starts_with(b"HTTP/1.") {
        return Some(None);
    }
    Some(
        std::str::from_utf8(method)
            .ok()
            .map(|m| Value::Str(Cow::Owned(m.to_string()))),
    )
}
