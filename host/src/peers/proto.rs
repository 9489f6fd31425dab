//! The peers protocol's wire format as HAProxy 2.6 speaks it (protocol
//! version 2.1; `doc/peers-v2.0.txt` and `src/peers.c` in HAProxy's source).
//!
//! Pure functions over byte slices, no I/O: the session code and the fuzz
//! test drive them. Every decoder returns an error value for bad input and
//! never panics or reads past the slice.
//!
//! - Integers use HAProxy's own variable-length encoding (not LEB128): a
//!   value below 240 is one byte; otherwise the first byte is `v | 0xf0`,
//!   and the rest `(v - 240) >> 4` follows in 7-bit groups, each group byte
//!   but the last with bit 7 set, every group offset by 128.
//! - A message is two bytes (class, type); stick-table messages (type with
//!   bit 7 set) add an encoded length and that many bytes of data.

use std::fmt;

/// First word of the hello line.
pub const PROTO_NAME: &str = "HAProxyS";
/// The protocol version spoken: 2.1 (timed updates; 2.0 peers are accepted).
pub const MAJOR: u32 = 2;
/// See [`MAJOR`].
pub const MINOR: u32 = 1;
/// The version announced to a peer whose own hello said 2.0 (HAProxy's
/// `PEER_DWNGRD_MINOR_VER`): it has no timed updates.
pub const DOWNGRADED_MINOR: u32 = 0;
/// Largest message body accepted: HAProxy's default buffer size (`tune.bufsize`),
/// so what we send a default HAProxy also accepts.
pub const MAX_MESSAGE: usize = 16_384;
/// Longest handshake line accepted.
pub const MAX_LINE: usize = 512;

/// Message classes.
pub mod class {
    pub const CONTROL: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const STICK_TABLE: u8 = 10;
    pub const RESERVED: u8 = 255;
}

/// Control message types.
pub mod control {
    pub const RESYNC_REQUEST: u8 = 0;
    pub const RESYNC_FINISHED: u8 = 1;
    pub const RESYNC_PARTIAL: u8 = 2;
    pub const RESYNC_CONFIRM: u8 = 3;
    pub const HEARTBEAT: u8 = 4;
}

/// Error message types.
pub mod error {
    pub const PROTOCOL: u8 = 0;
    pub const SIZE_LIMIT: u8 = 1;
}

/// Stick-table message types (bit 7 set: a length and data follow).
pub mod stkt {
    pub const UPDATE: u8 = 0x80;
    pub const INC_UPDATE: u8 = 0x81;
    pub const DEFINE: u8 = 0x82;
    pub const SWITCH: u8 = 0x83;
    pub const ACK: u8 = 0x84;
    pub const UPDATE_TIMED: u8 = 0x85;
    pub const INC_UPDATE_TIMED: u8 = 0x86;
}

/// Handshake status codes (the server's answer to a hello).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200: handshake succeeded.
    Success,
    /// 300: try again later (a local peer already connected).
    TryAgain,
    /// 501: protocol error (not a hello).
    ErrProto,
    /// 502: unsupported version.
    ErrVersion,
    /// 503: the remote peer name given is not ours.
    ErrHost,
    /// 504: the sender is not a peer we know.
    ErrPeer,
}

impl Status {
    /// The code on the wire.
    pub fn code(self) -> u16 {
        match self {
            Status::Success => 200,
            Status::TryAgain => 300,
            Status::ErrProto => 501,
            Status::ErrVersion => 502,
            Status::ErrHost => 503,
            Status::ErrPeer => 504,
        }
    }

    /// HAProxy's short name in `show peers` (`ESTA`, `RETR`, `PROT`, ...).
    pub fn short(code: u16) -> &'static str {
        match code {
            100 => "CONN",
            110 => "HSHK",
            200 => "ESTA",
            300 => "RETR",
            501 => "PROT",
            502 => "VERS",
            503 => "NAME",
            504 => "UNKN",
            _ => "NONE",
        }
    }
}

/// Why a message could not be decoded: a protocol error for the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// The message is malformed (what was wrong).
    Malformed(&'static str),
    /// The message announces more than [`MAX_MESSAGE`] bytes.
    TooBig(u64),
    /// The reserved class 255 was used.
    Reserved,
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::Malformed(what) => write!(f, "malformed message: {what}"),
            ProtoError::TooBig(n) => {
                write!(
                    f,
                    "message of {n} bytes is over the {MAX_MESSAGE}-byte limit"
                )
            }
            ProtoError::Reserved => f.write_str("message of the reserved class 255"),
        }
    }
}

impl std::error::Error for ProtoError {}

// ---------------------------------------------------------------------------
// Integers
// ---------------------------------------------------------------------------

/// Appends `v` in HAProxy's variable-length encoding (1 to 10 bytes).
pub fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v < 240 {
        out.push(v as u8);
        return;
    }
    // Truncation intended: the low bits, or-ed with the 0xf0 marker.
    out.push((v as u8) | 0xf0);
    let mut v = (v - 240) >> 4;
    while v >= 128 {
        out.push((v as u8) | 0x80);
        v = (v - 128) >> 7;
    }
    out.push(v as u8);
}

/// Reads one encoded integer at `*pos`, moving `*pos` past it; `None` if the
/// slice ends first or the encoding is longer than any `u64` needs.
pub fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut p = *pos;
    let mut v = u64::from(*buf.get(p)?);
    p += 1;
    if v >= 240 {
        let mut shift = 4u32;
        loop {
            let b = *buf.get(p)?;
            p += 1;
            if shift >= 64 {
                return None;
            }
            v = v.wrapping_add(u64::from(b).wrapping_shl(shift));
            shift += 7;
            if b < 128 {
                break;
            }
        }
    }
    *pos = p;
    Some(v)
}

fn get_u32(buf: &[u8], pos: &mut usize) -> Option<u32> {
    let b = buf.get(*pos..pos.checked_add(4)?)?;
    *pos += 4;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn get_bytes<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> Option<&'a [u8]> {
    let b = buf.get(*pos..pos.checked_add(n)?)?;
    *pos += n;
    Some(b)
}

// ---------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------

/// One message as framed on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub class: u8,
    pub kind: u8,
    /// The data of a stick-table message (empty for the others).
    pub body: &'a [u8],
}

/// Splits the first message off `buf`: `Ok(None)` if more bytes are needed,
/// `Ok(Some((frame, bytes used)))`, or a protocol error.
pub fn frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, ProtoError> {
    let (Some(&class), Some(&kind)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if class == class::RESERVED {
        return Err(ProtoError::Reserved);
    }
    if kind & 0x80 == 0 {
        return Ok(Some((
            Frame {
                class,
                kind,
                body: &[],
            },
            2,
        )));
    }
    let mut pos = 2;
    let Some(len) = get_varint(buf, &mut pos) else {
        // HAProxy reads at most 5 length bytes: a longer encoding is an error.
        if buf.len() >= 2 + 5 {
            return Err(ProtoError::Malformed(
                "message length encoded on more than 5 bytes",
            ));
        }
        return Ok(None);
    };
    if pos > 2 + 5 {
        return Err(ProtoError::Malformed(
            "message length encoded on more than 5 bytes",
        ));
    }
    if len > MAX_MESSAGE as u64 {
        return Err(ProtoError::TooBig(len));
    }
    let end = pos + len as usize;
    match buf.get(pos..end) {
        Some(body) => Ok(Some((Frame { class, kind, body }, end))),
        None => Ok(None),
    }
}

/// Appends a bodiless message (control, error).
pub fn put_short(out: &mut Vec<u8>, class: u8, kind: u8) {
    out.extend_from_slice(&[class, kind]);
}

/// Appends a stick-table message of type `kind` whose data is `body`.
pub fn put_message(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    out.push(class::STICK_TABLE);
    out.push(kind);
    put_varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

// ---------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------

/// The hello a connecting peer sends: protocol and version (2.`minor`:
/// [`MINOR`], or [`DOWNGRADED_MINOR`] to a peer that said 2.0 itself), the
/// name of the peer it wants, its own name, its pid and relative pid
/// (always 1, as HAProxy since nbproc went away).
pub fn hello(remote: &str, local: &str, pid: u32, minor: u32) -> String {
    format!("{PROTO_NAME} {MAJOR}.{minor}\n{remote}\n{local} {pid} 1\n")
}

/// Checks a hello's first line; the version on success, the status to answer otherwise.
pub fn check_version(line: &str) -> Result<(u32, u32), Status> {
    let rest = line
        .strip_prefix(PROTO_NAME)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or(Status::ErrProto)?;
    let (maj, min) = rest.split_once('.').ok_or(Status::ErrVersion)?;
    let num = |s: &str| -> Option<u32> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (num(maj), num(min)) {
        (Some(MAJOR), Some(min)) if min <= MINOR => Ok((MAJOR, min)),
        _ => Err(Status::ErrVersion),
    }
}

/// Splits a hello's third line (`<peer name> <pid> <relative pid>`) into the name.
pub fn sender_name(line: &str) -> Result<&str, Status> {
    line.split_once(' ')
        .map(|(name, _)| name)
        .filter(|n| !n.is_empty())
        .ok_or(Status::ErrProto)
}

/// Reads a status line (`200`, `502`, ...); `None` if it is not a number.
pub fn parse_status(line: &str) -> Option<u16> {
    line.trim().parse().ok()
}

/// Takes one `\n`-terminated line (an optional `\r` before it is dropped)
/// off the front of `buf`: `Ok(None)` if no full line yet, `Err` if the line
/// is longer than [`MAX_LINE`] or not UTF-8.
pub fn take_line(buf: &mut Vec<u8>) -> Result<Option<String>, ProtoError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_LINE {
            return Err(ProtoError::Malformed("handshake line too long"));
        }
        return Ok(None);
    };
    if nl > MAX_LINE {
        return Err(ProtoError::Malformed("handshake line too long"));
    }
    let mut line: Vec<u8> = buf.drain(..=nl).collect();
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| ProtoError::Malformed("handshake line is not UTF-8"))
}

// ---------------------------------------------------------------------------
// Data types
// ---------------------------------------------------------------------------

/// How a data type's values are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Std {
    /// Signed integer (sent as its two's complement, encoded).
    Sint,
    /// Unsigned 32-bit integer.
    Uint,
    /// Unsigned 64-bit integer.
    Ull,
    /// Frequency counter: ms since its period started, current and previous counts.
    Frqp,
    /// Dictionary entry (`server_key`): a length, then that many bytes.
    Dict,
}

/// HAProxy 2.6's data types by wire id: (name, encoding, is an array).
pub const DATA_TYPES: [(&str, Std, bool); 25] = [
    ("server_id", Std::Sint, false),
    ("gpt0", Std::Uint, false),
    ("gpc0", Std::Uint, false),
    ("gpc0_rate", Std::Frqp, false),
    ("conn_cnt", Std::Uint, false),
    ("conn_rate", Std::Frqp, false),
    ("conn_cur", Std::Uint, false),
    ("sess_cnt", Std::Uint, false),
    ("sess_rate", Std::Frqp, false),
    ("http_req_cnt", Std::Uint, false),
    ("http_req_rate", Std::Frqp, false),
    ("http_err_cnt", Std::Uint, false),
    ("http_err_rate", Std::Frqp, false),
    ("bytes_in_cnt", Std::Ull, false),
    ("bytes_in_rate", Std::Frqp, false),
    ("bytes_out_cnt", Std::Ull, false),
    ("bytes_out_rate", Std::Frqp, false),
    ("gpc1", Std::Uint, false),
    ("gpc1_rate", Std::Frqp, false),
    ("server_key", Std::Dict, false),
    ("http_fail_cnt", Std::Uint, false),
    ("http_fail_rate", Std::Frqp, false),
    ("gpt", Std::Uint, true),
    ("gpc", Std::Uint, true),
    ("gpc_rate", Std::Frqp, true),
];

/// Number of data types known (wire ids `0..DATA_TYPE_COUNT`).
pub const DATA_TYPE_COUNT: usize = DATA_TYPES.len();

/// The encoding and array-ness of wire data type `id`.
pub fn data_type(id: usize) -> Option<(Std, bool)> {
    DATA_TYPES.get(id).map(|&(_, s, a)| (s, a))
}

/// Key types on the wire (HAProxy's `PEER_KT_*`).
pub mod key_type {
    pub const SINT: u64 = 2;
    pub const IPV4: u64 = 4;
    pub const IPV6: u64 = 5;
    pub const STR: u64 = 6;
    pub const BIN: u64 = 7;
}

// ---------------------------------------------------------------------------
// Table definition
// ---------------------------------------------------------------------------

/// A table as a peer describes it (the `DEFINE` message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition<'a> {
    /// The sender's id for the table (used by switch, ack and later defines).
    pub id: u64,
    /// The table's name as the sender shares it.
    pub name: &'a [u8],
    pub key_type: u64,
    pub key_len: u64,
    /// Bit `i` set: data type `i` is in every update, in id order.
    pub data: u64,
    /// The table's `expire` in ms (absent from peers older than 2.4).
    pub expire: Option<u64>,
    /// Per stored type: the array size (1 for scalars) and the period of frequency counters.
    pub params: [(u64, u64); DATA_TYPE_COUNT],
    /// Whether the sender stores a type this decoder does not know (its updates are then ignored).
    pub unknown_types: bool,
}

impl Definition<'_> {
    /// The same definition without its name (kept by a session to decode the table's updates).
    pub fn detached(&self) -> Definition<'static> {
        Definition {
            id: self.id,
            name: &[],
            key_type: self.key_type,
            key_len: self.key_len,
            data: self.data,
            expire: self.expire,
            params: self.params,
            unknown_types: self.unknown_types,
        }
    }
}

/// Decodes a `DEFINE` body.
pub fn parse_definition(body: &[u8]) -> Result<Definition<'_>, ProtoError> {
    let mut pos = 0;
    let m = ProtoError::Malformed;
    let id = get_varint(body, &mut pos).ok_or(m("table definition: table id"))?;
    let name_len = get_varint(body, &mut pos).ok_or(m("table definition: name length"))?;
    let name_len = usize::try_from(name_len).map_err(|_| m("table definition: name length"))?;
    // HAProxy: an empty name, or one that ends the message, is malformed.
    if name_len == 0 || pos.saturating_add(name_len) >= body.len() {
        return Err(m("table definition: name missing or truncated"));
    }
    let name = get_bytes(body, &mut pos, name_len).ok_or(m("table definition: name"))?;
    let key_type = get_varint(body, &mut pos).ok_or(m("table definition: key type"))?;
    let key_len = get_varint(body, &mut pos).ok_or(m("table definition: key length"))?;
    let data = get_varint(body, &mut pos).ok_or(m("table definition: data types"))?;
    let mut def = Definition {
        id,
        name,
        key_type,
        key_len,
        data,
        expire: None,
        params: [(1, 0); DATA_TYPE_COUNT],
        unknown_types: data >> DATA_TYPE_COUNT != 0,
    };
    if def.unknown_types {
        // The parameters of an unknown type cannot be skipped: ignore the table.
        return Ok(def);
    }
    def.expire = get_varint(body, &mut pos);
    if def.expire.is_none() {
        // A 2.0-2.3 peer: no parameters; arrays cannot be parsed without them.
        if (0..DATA_TYPE_COUNT).any(|t| data & (1 << t) != 0 && DATA_TYPES[t].2) {
            def.unknown_types = true;
        }
        return Ok(def);
    }
    for (t, &(_, std, array)) in DATA_TYPES.iter().enumerate() {
        if data & (1 << t) == 0 || !(array || std == Std::Frqp) {
            continue;
        }
        let ty = get_varint(body, &mut pos);
        if ty != Some(t as u64) {
            // HAProxy ignores such a table rather than failing the connection.
            def.unknown_types = true;
            return Ok(def);
        }
        let mut p = (1, 0);
        if array {
            p.0 = get_varint(body, &mut pos).ok_or(m("table definition: array size"))?;
            if p.0 == 0 || p.0 > 100 {
                return Err(m("table definition: array size out of 1..100"));
            }
        }
        if std == Std::Frqp {
            p.1 = get_varint(body, &mut pos).ok_or(m("table definition: period"))?;
        }
        def.params[t] = p;
    }
    Ok(def)
}

/// Encodes a `DEFINE` message for table `id` called `name`.
pub fn put_definition(out: &mut Vec<u8>, def: &Definition<'_>) {
    let mut b = Vec::with_capacity(32 + def.name.len());
    put_varint(&mut b, def.id);
    put_varint(&mut b, def.name.len() as u64);
    b.extend_from_slice(def.name);
    put_varint(&mut b, def.key_type);
    put_varint(&mut b, def.key_len);
    put_varint(&mut b, def.data);
    put_varint(&mut b, def.expire.unwrap_or(0));
    for (t, &(_, std, array)) in DATA_TYPES.iter().enumerate() {
        if def.data & (1 << t) == 0 || !(array || std == Std::Frqp) {
            continue;
        }
        put_varint(&mut b, t as u64);
        if array {
            put_varint(&mut b, def.params[t].0);
        }
        if std == Std::Frqp {
            put_varint(&mut b, def.params[t].1);
        }
    }
    put_message(out, stkt::DEFINE, &b);
}

// ---------------------------------------------------------------------------
// Updates
// ---------------------------------------------------------------------------

/// How a table's keys are laid out on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireKey {
    /// 32-bit integer, big-endian.
    Sint,
    /// Exactly `n` bytes (IPv4: 4, IPv6: 16, binary: its length).
    Fixed(usize),
    /// An encoded length then the bytes; `size` counts HAProxy's NUL byte.
    Str { size: usize },
}

impl WireKey {
    /// The layout for a wire key type and length; `None` if they make no sense.
    pub fn from_wire(key_type: u64, key_len: u64) -> Option<WireKey> {
        let len = usize::try_from(key_len).ok()?;
        match (key_type, len) {
            (key_type::SINT, 4) => Some(WireKey::Sint),
            (key_type::IPV4, 4) => Some(WireKey::Fixed(4)),
            (key_type::IPV6, 16) => Some(WireKey::Fixed(16)),
            (key_type::STR, 2..=65_536) => Some(WireKey::Str { size: len }),
            (key_type::BIN, 1..=65_536) => Some(WireKey::Fixed(len)),
            _ => None,
        }
    }
}

/// One decoded value of an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// A counter, tag or id.
    Int(u64),
    /// A frequency counter: ms since its current period began, current and previous counts.
    Freq { elapsed: u32, curr: u32, prev: u32 },
    /// A value this side has no use for (`server_key`).
    Skipped,
}

/// A decoded update message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update<'a> {
    /// The sender's update id (absent in incremental updates: previous + 1).
    pub id: Option<u32>,
    /// Remaining lifetime in ms (timed updates).
    pub expire: Option<u32>,
    /// The key: 4 big-endian bytes for integers, the bytes for the others
    /// (strings cut at the table's length, as HAProxy does).
    pub key: &'a [u8],
    /// (wire data type, array index, value), in wire order.
    pub values: Vec<(u8, u8, Value)>,
}

/// Decodes an update body for a table laid out as `key` storing `def`'s data.
pub fn parse_update<'a>(
    body: &'a [u8],
    with_id: bool,
    timed: bool,
    key: WireKey,
    def: &Definition<'_>,
) -> Result<Update<'a>, ProtoError> {
    let m = ProtoError::Malformed;
    let mut pos = 0;
    let id = if with_id {
        Some(get_u32(body, &mut pos).ok_or(m("update: id"))?)
    } else {
        None
    };
    let expire = if timed {
        Some(get_u32(body, &mut pos).ok_or(m("update: expire"))?)
    } else {
        None
    };
    let key = match key {
        WireKey::Sint => get_bytes(body, &mut pos, 4).ok_or(m("update: integer key"))?,
        WireKey::Fixed(n) => get_bytes(body, &mut pos, n).ok_or(m("update: key"))?,
        WireKey::Str { size } => {
            let n = get_varint(body, &mut pos).ok_or(m("update: string key length"))?;
            let n = usize::try_from(n).map_err(|_| m("update: string key length"))?;
            let all = get_bytes(body, &mut pos, n).ok_or(m("update: string key"))?;
            all.get(..n.min(size.saturating_sub(1))).unwrap_or(all)
        }
    };
    let mut values = Vec::new();
    for (t, &(_, std, array)) in DATA_TYPES.iter().enumerate() {
        if def.data & (1 << t) == 0 {
            continue;
        }
        let count = if array { def.params[t].0.min(100) } else { 1 };
        for idx in 0..count {
            let v = match std {
                Std::Frqp => {
                    let e = get_varint(body, &mut pos).ok_or(m("update: frequency counter"))?;
                    let c = get_varint(body, &mut pos).ok_or(m("update: frequency counter"))?;
                    let p = get_varint(body, &mut pos).ok_or(m("update: frequency counter"))?;
                    // 32-bit fields on HAProxy's side: truncation is what it does too.
                    Value::Freq {
                        elapsed: e as u32,
                        curr: c as u32,
                        prev: p as u32,
                    }
                }
                Std::Dict => {
                    let n = get_varint(body, &mut pos).ok_or(m("update: dictionary entry"))?;
                    let n = usize::try_from(n).map_err(|_| m("update: dictionary entry"))?;
                    get_bytes(body, &mut pos, n).ok_or(m("update: dictionary entry"))?;
                    Value::Skipped
                }
                Std::Sint | Std::Uint | Std::Ull => {
                    Value::Int(get_varint(body, &mut pos).ok_or(m("update: value"))?)
                }
            };
            values.push((t as u8, idx as u8, v));
        }
    }
    Ok(Update {
        id,
        expire,
        key,
        values,
    })
}

/// Encodes an update message: with its id unless `id` is `None` (incremental),
/// timed if `expire` is given; `values` must follow the table definition's order.
pub fn put_update(
    out: &mut Vec<u8>,
    id: Option<u32>,
    expire: Option<u32>,
    key: WireKey,
    key_bytes: &[u8],
    values: &[Value],
) {
    let mut b = Vec::with_capacity(16 + key_bytes.len() + values.len() * 4);
    if let Some(id) = id {
        b.extend_from_slice(&id.to_be_bytes());
    }
    if let Some(e) = expire {
        b.extend_from_slice(&e.to_be_bytes());
    }
    match key {
        WireKey::Str { .. } => {
            put_varint(&mut b, key_bytes.len() as u64);
            b.extend_from_slice(key_bytes);
        }
        WireKey::Sint | WireKey::Fixed(_) => b.extend_from_slice(key_bytes),
    }
    for v in values {
        match *v {
            Value::Int(i) => put_varint(&mut b, i),
            Value::Freq {
                elapsed,
                curr,
                prev,
            } => {
                put_varint(&mut b, u64::from(elapsed));
                put_varint(&mut b, u64::from(curr));
                put_varint(&mut b, u64::from(prev));
            }
            Value::Skipped => put_varint(&mut b, 0),
        }
    }
    let kind = match (id.is_some(), expire.is_some()) {
        (true, false) => stkt::UPDATE,
        (false, false) => stkt::INC_UPDATE,
        (true, true) => stkt::UPDATE_TIMED,
        (false, true) => stkt::INC_UPDATE_TIMED,
    };
    put_message(out, kind, &b);
}

/// Decodes a `SWITCH` body: the sender's table id.
pub fn parse_switch(body: &[u8]) -> Result<u64, ProtoError> {
    get_varint(body, &mut 0).ok_or(ProtoError::Malformed("table switch: table id"))
}

/// Encodes a `SWITCH` to the sender's table `id`.
pub fn put_switch(out: &mut Vec<u8>, id: u64) {
    let mut b = Vec::with_capacity(5);
    put_varint(&mut b, id);
    put_message(out, stkt::SWITCH, &b);
}

/// Decodes an `ACK` body: (the acknowledging side's id of our table... i.e. our table id, last update id received).
pub fn parse_ack(body: &[u8]) -> Result<(u64, u32), ProtoError> {
    let mut pos = 0;
    let m = ProtoError::Malformed("update acknowledgement");
    let table = get_varint(body, &mut pos).ok_or(m.clone())?;
    let update = get_u32(body, &mut pos).ok_or(m)?;
    Ok((table, update))
}

/// Encodes an `ACK` of updates up to `update` for the sender's table `table`.
pub fn put_ack(out: &mut Vec<u8>, table: u64, update: u32) {
    let mut b = Vec::with_capacity(9);
    put_varint(&mut b, table);
    b.extend_from_slice(&update.to_be_bytes());
    put_message(out, stkt::ACK, &b);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        out
    }

    #[test]
    fn varints_match_haproxy() {
        // Bytes captured from HAProxy 2.6 (an expire of 30000 ms, a 10 s period, 7 s).
        assert_eq!(enc(30_000), [0xf0, 0xc4, 0x0d]);
        assert_eq!(enc(10_000), [0xf0, 0xe2, 0x03]);
        assert_eq!(enc(7_000), [0xf8, 0xa6, 0x02]);
        assert_eq!(enc(239), [239]);
        assert_eq!(enc(240), [0xf0, 0x00]);
        // The documented boundaries of each length.
        for (v, len) in [
            (2287u64, 2),
            (2288, 3),
            (264_431, 3),
            (264_432, 4),
            (33_818_863, 4),
            (33_818_864, 5),
            (4_328_786_159, 5),
            (4_328_786_160, 6),
        ] {
            assert_eq!(enc(v).len(), len, "{v}");
        }
        for v in [
            0,
            1,
            239,
            240,
            241,
            2287,
            2288,
            1 << 20,
            u32::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let b = enc(v);
            let mut pos = 0;
            assert_eq!(get_varint(&b, &mut pos), Some(v), "{v}");
            assert_eq!(pos, b.len());
            // Every strict prefix is incomplete.
            for cut in 0..b.len() {
                assert_eq!(get_varint(&b[..cut], &mut 0), None, "{v} cut at {cut}");
            }
        }
        // An endless continuation is refused, not looped over.
        let long = [0xffu8; 40];
        assert_eq!(get_varint(&long, &mut 0), None);
    }

    #[test]
    fn frames_split_and_limit() {
        let mut out = Vec::new();
        put_short(&mut out, class::CONTROL, control::HEARTBEAT);
        put_ack(&mut out, 3, 77);
        let (f, n) = frame(&out).expect("ok").expect("frame");
        assert_eq!((f.class, f.kind, n), (0, 4, 2));
        let (f, n2) = frame(&out[n..]).expect("ok").expect("frame");
        assert_eq!(f.kind, stkt::ACK);
        assert_eq!(parse_ack(f.body), Ok((3, 77)));
        assert_eq!(n + n2, out.len());
        assert_eq!(frame(&out[n..out.len() - 1]), Ok(None));
        let mut big = vec![class::STICK_TABLE, stkt::UPDATE];
        put_varint(&mut big, (MAX_MESSAGE + 1) as u64);
        assert_eq!(
            frame(&big),
            Err(ProtoError::TooBig((MAX_MESSAGE + 1) as u64))
        );
        assert_eq!(frame(&[255, 0]), Err(ProtoError::Reserved));
        assert!(frame(&[10, 0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn definition_captured_from_haproxy() {
        // `table t_ip type ip size 1k expire 30s store http_req_rate(10s),gpc0,
        // conn_cnt,gpt0,conn_cur,http_err_rate(10s),bytes_in_cnt,bytes_out_rate(1s),
        // server_id,gpc1,http_req_cnt` in a `peers mesh` section of HAProxy 2.6.
        let body = [
            0x04, 0x05, b'/', b't', b'_', b'i', b'p', 0x04, 0x04, 0xf7, 0xd6, 0x65, 0xf0, 0xc4,
            0x0d, 0x0a, 0xf0, 0xe2, 0x03, 0x0c, 0xf0, 0xe2, 0x03, 0x10, 0xf8, 0x2f,
        ];
        let d = parse_definition(&body).expect("definition");
        assert_eq!(
            (d.id, d.name, d.key_type, d.key_len),
            (4, &b"/t_ip"[..], 4, 4)
        );
        assert_eq!(d.expire, Some(30_000));
        assert!(!d.unknown_types);
        assert_eq!(d.params[10], (1, 10_000));
        assert_eq!(d.params[12], (1, 10_000));
        assert_eq!(d.params[16], (1, 1_000));
        let mut out = Vec::new();
        put_definition(&mut out, &d);
        let (f, _) = frame(&out).expect("ok").expect("frame");
        assert_eq!(f.body, &body[..], "re-encoded byte for byte");
        // Its update message: id 10, key 127.0.0.1, then the values in id order.
        let upd = [
            0x00, 0x00, 0x00, 0x0a, 0x7f, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x02,
            0xa6, 0x02, 0x00, 0xfc, 0x90, 0x96, 0xb4, 0x24, 0x00, 0x00, 0xaa, 0xa6, 0x62, 0x00,
            0x00,
        ];
        let key = WireKey::from_wire(d.key_type, d.key_len).expect("key");
        let u = parse_update(&upd, true, false, key, &d).expect("update");
        assert_eq!(u.id, Some(10));
        assert_eq!(u.key, &[127, 0, 0, 1]);
        assert_eq!(u.values.len(), 11);
        assert_eq!(u.values[3], (4, 0, Value::Int(2)), "conn_cnt");
        assert_eq!(
            u.values[6],
            (
                10,
                0,
                Value::Freq {
                    elapsed: 166,
                    curr: 2,
                    prev: 0
                }
            ),
            "http_req_rate"
        );
        let vals: Vec<Value> = u.values.iter().map(|v| v.2).collect();
        let mut out = Vec::new();
        put_update(&mut out, Some(10), None, key, u.key, &vals);
        let (f, _) = frame(&out).expect("ok").expect("frame");
        assert_eq!(f.body, &upd[..]);
        // Every truncation of the update is an error, never a panic.
        for cut in 0..upd.len() {
            assert!(
                parse_update(&upd[..cut], true, false, key, &d).is_err(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn definition_with_arrays_captured_from_haproxy() {
        // `type integer ... store http_fail_cnt,http_fail_rate(5s),gpt(2),gpc(2),
        // gpc_rate(2,3s),sess_cnt,conn_rate(7s)`.
        let body = [
            0x02, 0x06, b'/', b't', b'_', b'i', b'n', b't', 0x02, 0x04, 0xf0, 0xfb, 0xfe, 0x7a,
            0x00, 0x05, 0xf8, 0xa6, 0x02, 0x15, 0xf8, 0xa9, 0x01, 0x16, 0x02, 0x17, 0x02, 0x18,
            0x02, 0xf8, 0xac, 0x00,
        ];
        let d = parse_definition(&body).expect("definition");
        assert_eq!(d.data, (1 << 5) | (1 << 7) | (0x1f << 20));
        assert_eq!(d.params[5], (1, 7_000));
        assert_eq!(d.params[21], (1, 5_000));
        assert_eq!(d.params[22], (2, 0));
        assert_eq!(d.params[24], (2, 3_000));
        let key = WireKey::from_wire(d.key_type, d.key_len).expect("key");
        assert_eq!(key, WireKey::Sint);
        let upd = [
            0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x07, 0xf7, 0x0c, 0x01, 0x00, 0x00, 0x00,
            0xf3, 0xbf, 0xa5, 0xb4, 0x24, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf3, 0xbf, 0xa5,
            0xb4, 0x24, 0x00, 0x00, 0xf3, 0xbf, 0xa5, 0xb4, 0x24, 0x00, 0x00,
        ];
        let u = parse_update(&upd, true, false, key, &d).expect("update");
        assert_eq!(u.key, &[0, 0, 0, 7]);
        assert_eq!(u.values.len(), 1 + 1 + 1 + 1 + 2 + 2 + 2);
        assert_eq!(
            u.values[0],
            (
                5,
                0,
                Value::Freq {
                    elapsed: 439,
                    curr: 1,
                    prev: 0
                }
            )
        );
        assert_eq!(u.values[9].0, 24);
        assert_eq!(u.values[9].1, 1);
    }

    #[test]
    fn string_definition_and_timed_update() {
        let body = [
            0x03, 0x06, b'/', b't', b'_', b's', b't', b'r', 0x06, 0x21, 0x04, 0xf0, 0xc4, 0x0d,
        ];
        let d = parse_definition(&body).expect("definition");
        let key = WireKey::from_wire(d.key_type, d.key_len).expect("key");
        assert_eq!(key, WireKey::Str { size: 33 });
        let mut out = Vec::new();
        put_update(&mut out, None, Some(1234), key, b"abc", &[Value::Int(2)]);
        let (f, _) = frame(&out).expect("ok").expect("frame");
        assert_eq!(f.kind, stkt::INC_UPDATE_TIMED);
        let u = parse_update(f.body, false, true, key, &d).expect("update");
        assert_eq!((u.id, u.expire, u.key), (None, Some(1234), &b"abc"[..]));
        assert_eq!(u.values, vec![(2, 0, Value::Int(2))]);
        // A key longer than the table's is cut at its length, the rest skipped.
        let long = [b'x'; 40];
        let mut out = Vec::new();
        put_update(&mut out, Some(1), None, key, &long, &[Value::Int(1)]);
        let (f, _) = frame(&out).expect("ok").expect("frame");
        let u = parse_update(f.body, true, false, key, &d).expect("update");
        assert_eq!(u.key.len(), 32);
        assert_eq!(u.values, vec![(2, 0, Value::Int(1))]);
    }

    #[test]
    fn handshake_lines() {
        assert_eq!(hello("b", "a", 42, MINOR), "HAProxyS 2.1\nb\na 42 1\n");
        assert_eq!(
            hello("b", "a", 42, DOWNGRADED_MINOR),
            "HAProxyS 2.0\nb\na 42 1\n"
        );
        assert_eq!(check_version("HAProxyS 2.1"), Ok((2, 1)));
        assert_eq!(check_version("HAProxyS 2.0"), Ok((2, 0)));
        assert_eq!(check_version("HAProxyS 2.2"), Err(Status::ErrVersion));
        assert_eq!(check_version("HAProxyS 3.0"), Err(Status::ErrVersion));
        assert_eq!(check_version("HAProxyS x"), Err(Status::ErrVersion));
        assert_eq!(check_version("GET / HTTP/1.1"), Err(Status::ErrProto));
        assert_eq!(sender_name("hap 123 1"), Ok("hap"));
        assert_eq!(sender_name("hap"), Err(Status::ErrProto));
        let mut buf = b"HAProxyS 2.1\r\nrest".to_vec();
        assert_eq!(take_line(&mut buf), Ok(Some("HAProxyS 2.1".into())));
        assert_eq!(take_line(&mut buf), Ok(None));
        assert_eq!(buf, b"rest");
        let mut long = vec![b'a'; MAX_LINE + 1];
        assert!(take_line(&mut long).is_err());
    }
}
