//! Table keys: the five HAProxy key types and conversions into them.
//!
//! A table has one key type. [`Key`] is the owned form stored in the map;
//! [`KeyRef`] borrows and hashes identically, so a lookup of a string key
//! allocates nothing.

use std::fmt::{self, Write as _};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::rules::fetch::Value;

/// Default `len` of `string` and `binary` keys (HAProxy's 32).
pub const DEFAULT_KEY_LEN: usize = 32;
/// Largest `len` accepted for `string` / `binary` keys.
pub const MAX_KEY_LEN: usize = 4096;

/// A table's key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// IPv4 address (IPv4-mapped IPv6 addresses are converted; other IPv6 addresses are not tracked).
    Ip,
    /// IPv6 address (IPv4 addresses are stored IPv4-mapped).
    Ipv6,
    /// Signed 64-bit integer.
    Integer,
    /// Text, truncated to `len` bytes.
    String { len: usize },
    /// Bytes, truncated or zero-padded to exactly `len` bytes; shown in hex.
    Binary { len: usize },
}

impl KeyType {
    /// The type's config name (`ip`, `ipv6`, `integer`, `string`, `binary`).
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Ip => "ip",
            KeyType::Ipv6 => "ipv6",
            KeyType::Integer => "integer",
            KeyType::String { .. } => "string",
            KeyType::Binary { .. } => "binary",
        }
    }

    /// Builds a key from a sample, converting like HAProxy's sample casts;
    /// `None` when the value cannot be a key of this type.
    pub fn key_from_value<'v>(self, v: &'v Value<'_>) -> Option<KeyRef<'v>> {
        match self {
            KeyType::Ip => match v.to_ip()? {
                IpAddr::V4(a) => Some(KeyRef::V4(a.octets())),
                IpAddr::V6(a) => a.to_ipv4_mapped().map(|a| KeyRef::V4(a.octets())),
            }
            .or_else(|| match v {
                // HAProxy casts integers to IPv4 addresses.
                Value::Int(i) => u32::try_from(*i)
                    .ok()
                    .map(|n| KeyRef::V4(Ipv4Addr::from(n).octets())),
                _ => None,
            }),
            KeyType::Ipv6 => match v.to_ip()? {
                IpAddr::V4(a) => Some(KeyRef::V6(a.to_ipv6_mapped().octets())),
                IpAddr::V6(a) => Some(KeyRef::V6(a.octets())),
            },
            KeyType::Integer => v.to_int().map(KeyRef::Int),
            KeyType::String { len } => match v {
                Value::Str(s) => Some(KeyRef::Bytes(truncate(s.as_bytes(), len).into())),
                Value::Bin(b) => Some(KeyRef::Bytes(truncate(b, len).into())),
                other => {
                    let text = other.with_text(str::to_string);
                    let mut b = text.into_bytes();
                    b.truncate(len);
                    Some(KeyRef::Bytes(b.into()))
                }
            },
            KeyType::Binary { len } => {
                let bytes = v.with_bytes(<[u8]>::to_vec);
                Some(KeyRef::Bytes(pad(bytes, len).into()))
            }
        }
    }

    /// Parses a key written as text (admin API, Lua/Wasm): an address, a
    /// decimal integer, the string itself, or hex for binary keys.
    pub fn parse_key(self, text: &str) -> Result<Key, String> {
        match self {
            KeyType::Ip => match text.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) => Ok(Key::V4(a.octets())),
                Ok(IpAddr::V6(a)) => {
                    a.to_ipv4_mapped()
                        .map(|a| Key::V4(a.octets()))
                        .ok_or_else(|| {
                            format!("{text:?} is an IPv6 address; this table has ip (IPv4) keys")
                        })
                }
                Err(_) => Err(format!("{text:?} is not an IPv4 address")),
            },
            KeyType::Ipv6 => match text.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) => Ok(Key::V6(a.to_ipv6_mapped().octets())),
                Ok(IpAddr::V6(a)) => Ok(Key::V6(a.octets())),
                Err(_) => Err(format!("{text:?} is not an IP address")),
            },
            KeyType::Integer => text
                .trim()
                .parse::<i64>()
                .map(Key::Int)
                .map_err(|_| format!("{text:?} is not an integer")),
            KeyType::String { len } => {
                if text.is_empty() {
                    return Err("a string key cannot be empty".into());
                }
                Ok(Key::Bytes(truncate(text.as_bytes(), len).into()))
            }
            KeyType::Binary { len } => {
                let bytes = hex_decode(text).ok_or_else(|| {
                    format!("{text:?} is not hex; binary keys are written in hex")
                })?;
                if bytes.len() > len {
                    return Err(format!(
                        "binary key is {} bytes; this table's keys are {len} bytes",
                        bytes.len()
                    ));
                }
                Ok(Key::Bytes(pad(bytes, len).into()))
            }
        }
    }

    /// The key as text, as `show table` prints it.
    pub fn format(self, key: KeyRef<'_>) -> String {
        match (self, key) {
            (_, KeyRef::V4(o)) => Ipv4Addr::from(o).to_string(),
            (_, KeyRef::V6(o)) => Ipv6Addr::from(o).to_string(),
            (_, KeyRef::Int(i)) => i.to_string(),
            (KeyType::Binary { .. }, KeyRef::Bytes(b)) => {
                let mut s = String::with_capacity(b.len() * 2);
                for byte in b.iter() {
                    let _ = write!(s, "{byte:02x}");
                }
                s
            }
            (_, KeyRef::Bytes(b)) => String::from_utf8_lossy(&b).into_owned(),
        }
    }
}

fn truncate(b: &[u8], len: usize) -> &[u8] {
    b.get(..len).unwrap_or(b)
}

fn pad(mut b: Vec<u8>, len: usize) -> Vec<u8> {
    b.resize(len, 0);
    b
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks(2)
        .map(|p| {
            let d = |c: u8| (c as char).to_digit(16);
            Some(u8::try_from(d(p[0])? * 16 + d(p[1])?).unwrap_or(0))
        })
        .collect()
}

/// An owned key, as stored in a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    V4([u8; 4]),
    V6([u8; 16]),
    Int(i64),
    /// `string` and `binary` keys.
    Bytes(Box<[u8]>),
}

/// A borrowed key for lookups; hashes and compares like the [`Key`] it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef<'a> {
    V4([u8; 4]),
    V6([u8; 16]),
    Int(i64),
    Bytes(std::borrow::Cow<'a, [u8]>),
}

impl Key {
    /// The borrowed form.
    pub fn as_ref(&self) -> KeyRef<'_> {
        match self {
            Key::V4(o) => KeyRef::V4(*o),
            Key::V6(o) => KeyRef::V6(*o),
            Key::Int(i) => KeyRef::Int(*i),
            Key::Bytes(b) => KeyRef::Bytes(std::borrow::Cow::Borrowed(b)),
        }
    }
}

impl KeyRef<'_> {
    /// The owned form (allocates for string and binary keys).
    pub fn to_owned_key(&self) -> Key {
        match self {
            KeyRef::V4(o) => Key::V4(*o),
            KeyRef::V6(o) => Key::V6(*o),
            KeyRef::Int(i) => Key::Int(*i),
            KeyRef::Bytes(b) => Key::Bytes(b.as_ref().into()),
        }
    }
}

// One hash for both forms: a tag byte then the content.
fn hash_parts<H: Hasher>(k: &KeyRef<'_>, state: &mut H) {
    match k {
        KeyRef::V4(o) => {
            state.write_u8(4);
            state.write(o);
        }
        KeyRef::V6(o) => {
            state.write_u8(6);
            state.write(o);
        }
        KeyRef::Int(i) => {
            state.write_u8(1);
            state.write_i64(*i);
        }
        KeyRef::Bytes(b) => {
            state.write_u8(2);
            state.write(b);
        }
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_parts(&self.as_ref(), state);
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_parts(self, state);
    }
}

impl scc::Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        match (self, key) {
            (KeyRef::V4(a), Key::V4(b)) => a == b,
            (KeyRef::V6(a), Key::V6(b)) => a == b,
            (KeyRef::Int(a), Key::Int(b)) => a == b,
            (KeyRef::Bytes(a), Key::Bytes(b)) => a.as_ref() == b.as_ref(),
            _ => false,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::hash_map::DefaultHasher;

    use super::*;

    fn h<T: Hash>(t: &T) -> u64 {
        let mut s = DefaultHasher::new();
        t.hash(&mut s);
        s.finish()
    }

    #[test]
    fn owned_and_borrowed_keys_hash_alike() {
        for k in [
            Key::V4([1, 2, 3, 4]),
            Key::V6([7; 16]),
            Key::Int(-5),
            Key::Bytes(b"abc".as_slice().into()),
        ] {
            assert_eq!(h(&k), h(&k.as_ref()));
            assert!(scc::Equivalent::equivalent(&k.as_ref(), &k));
        }
    }

    #[test]
    fn conversions_from_samples() {
        let v4 = Value::Ip("10.0.0.1".parse().expect("ip"));
        let mapped = Value::Ip("::ffff:10.0.0.1".parse().expect("ip"));
        let v6 = Value::Ip("2001:db8::1".parse().expect("ip"));
        assert_eq!(
            KeyType::Ip.key_from_value(&v4),
            Some(KeyRef::V4([10, 0, 0, 1]))
        );
        assert_eq!(
            KeyType::Ip.key_from_value(&mapped),
            Some(KeyRef::V4([10, 0, 0, 1]))
        );
        assert_eq!(KeyType::Ip.key_from_value(&v6), None);
        assert_eq!(
            KeyType::Ip.key_from_value(&Value::Str(Cow::Borrowed("192.0.2.1"))),
            Some(KeyRef::V4([192, 0, 2, 1]))
        );
        assert!(matches!(
            KeyType::Ipv6.key_from_value(&v4),
            Some(KeyRef::V6(_))
        ));
        assert_eq!(
            KeyType::Integer.key_from_value(&Value::Str(Cow::Borrowed("42"))),
            Some(KeyRef::Int(42))
        );
        assert_eq!(KeyType::Integer.key_from_value(&v4), None);
        let s = KeyType::String { len: 4 };
        assert_eq!(
            s.key_from_value(&Value::Str(Cow::Borrowed("abcdef"))),
            Some(KeyRef::Bytes(Cow::Borrowed(b"abcd")))
        );
        assert_eq!(
            s.key_from_value(&v4).map(|k| s.format(k)),
            Some("10.0".to_string())
        );
        let b = KeyType::Binary { len: 4 };
        let k = b
            .key_from_value(&Value::Str(Cow::Borrowed("ab")))
            .expect("key");
        assert_eq!(b.format(k), "61620000");
    }

    #[test]
    fn parsing_text_keys() {
        assert_eq!(KeyType::Ip.parse_key("1.2.3.4"), Ok(Key::V4([1, 2, 3, 4])));
        assert!(
            KeyType::Ip
                .parse_key("::1")
                .expect_err("v6")
                .contains("IPv6")
        );
        assert!(KeyType::Ip.parse_key("nope").is_err());
        assert_eq!(
            KeyType::Ipv6
                .parse_key("::1")
                .map(|k| KeyType::Ipv6.format(k.as_ref())),
            Ok("::1".to_string())
        );
        assert_eq!(KeyType::Integer.parse_key("-3"), Ok(Key::Int(-3)));
        assert!(KeyType::Integer.parse_key("3x").is_err());
        assert_eq!(
            KeyType::String { len: 3 }.parse_key("hello"),
            Ok(Key::Bytes(b"hel".as_slice().into()))
        );
        assert!(KeyType::String { len: 3 }.parse_key("").is_err());
        let b = KeyType::Binary { len: 3 };
        assert_eq!(b.parse_key("0a0B"), Ok(Key::Bytes(vec![10, 11, 0].into())));
        assert!(b.parse_key("0a0").is_err());
        assert!(b.parse_key("zz").is_err());
        assert!(
            b.parse_key("0102030405")
                .expect_err("long")
                .contains("3 bytes")
        );
    }
}
