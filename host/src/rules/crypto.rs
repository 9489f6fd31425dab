//! Hashing and encoding converters: `sha2([bits])`, `hmac(alg,key)`,
//! `b64dec`, `crc32([avalanche])`. Arguments are checked when the expression
//! is compiled (config load, or a script's first `txn.c:hmac(...)`), so a bad
//! algorithm or key is an error there, never at request time.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

use super::fetch::{Arg, Call, Converter, Value};
use super::{Env, ParseError, parse_var_name};
use crate::txn::{Txn, VarScope};

/// Standard base64, padding optional (HAProxy accepts both).
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The SHA-2 variants of `sha2` and `hmac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sha {
    S224,
    S256,
    S384,
    S512,
}

impl Sha {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Sha::S224 => Sha224::digest(data).to_vec(),
            Sha::S256 => Sha256::digest(data).to_vec(),
            Sha::S384 => Sha384::digest(data).to_vec(),
            Sha::S512 => Sha512::digest(data).to_vec(),
        }
    }

    /// HMAC of `data` under `key`; `None` only if the MAC rejects the key (it takes any length).
    fn hmac(self, key: &[u8], data: &[u8]) -> Option<Vec<u8>> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Option<Vec<u8>> {
            let mut m = <M as Mac>::new_from_slice(key).ok()?;
            m.update(data);
            Some(m.finalize().into_bytes().to_vec())
        }
        match self {
            Sha::S224 => run::<Hmac<Sha224>>(key, data),
            Sha::S256 => run::<Hmac<Sha256>>(key, data),
            Sha::S384 => run::<Hmac<Sha384>>(key, data),
            Sha::S512 => run::<Hmac<Sha512>>(key, data),
        }
    }
}

#[derive(Debug)]
struct Sha2 {
    sha: Sha,
}

impl Converter for Sha2 {
    fn convert<'t>(&'t self, v: Value<'t>, _: &'t Txn) -> Option<Value<'t>> {
        Some(Value::Bin(Cow::Owned(v.with_bytes(|b| self.sha.digest(b)))))
    }
}

/// Builds `sha2([bits])`.
pub(crate) fn sha2_conv(c: &Call<'_>, _: &Env<'_>) -> Result<Box<dyn Converter>, ParseError> {
    let sha = match c.args.first() {
        None => Sha::S256,
        Some(a) => match a.text.trim() {
            "224" => Sha::S224,
            "256" => Sha::S256,
            "384" => Sha::S384,
            "512" => Sha::S512,
            other => {
                return Err(ParseError::new(
                    a.offset,
                    format!("sha2 takes 224, 256, 384 or 512 bits, got \"{other}\""),
                ));
            }
        },
    };
    Ok(Box::new(Sha2 { sha }))
}

/// The key of `hmac`: decoded once, or read from a variable per request.
#[derive(Debug)]
enum Key {
    Fixed(Vec<u8>),
    Var(VarScope, Box<str>),
}

#[derive(Debug)]
struct HmacConv {
    sha: Sha,
    key: Key,
}

impl Converter for HmacConv {
    fn convert<'t>(&'t self, v: Value<'t>, txn: &'t Txn) -> Option<Value<'t>> {
        let owned;
        let key: &[u8] = match &self.key {
            Key::Fixed(k) => k,
            Key::Var(scope, name) => {
                let text = txn.get_var(*scope, name)?.to_text();
                owned = B64.decode(text.trim()).ok()?;
                &owned
            }
        };
        let mac = v.with_bytes(|b| self.sha.hmac(key, b))?;
        Some(Value::Bin(Cow::Owned(mac)))
    }
}

fn algorithm(a: &Arg) -> Result<Sha, ParseError> {
    match a.text.trim().to_ascii_lowercase().as_str() {
        "sha224" => Ok(Sha::S224),
        "sha256" => Ok(Sha::S256),
        "sha384" => Ok(Sha::S384),
        "sha512" => Ok(Sha::S512),
        other => Err(ParseError::new(
            a.offset,
            format!("unknown hmac algorithm \"{other}\"; use sha224, sha256, sha384 or sha512"),
        )),
    }
}

/// Builds `hmac(<algorithm>,<key>)`: the key is base64, or a variable holding base64.
pub(crate) fn hmac_conv(c: &Call<'_>, env: &Env<'_>) -> Result<Box<dyn Converter>, ParseError> {
    let (Some(alg), Some(key)) = (c.args.first(), c.args.get(1)) else {
        return Err(ParseError::new(
            c.offset,
            "hmac needs an algorithm and a base64 key, e.g. hmac(sha256,c2VjcmV0)",
        ));
    };
    let sha = algorithm(alg)?;
    let text = key.text.trim();
    if text.is_empty() {
        return Err(ParseError::new(key.offset, "the hmac key is empty"));
    }
    let is_var = ["proc.", "sess.", "txn.", "req.", "res."]
        .iter()
        .any(|p| text.starts_with(p));
    let key = if is_var {
        let (scope, name) =
            parse_var_name(text, env).map_err(|m| ParseError::new(key.offset, m))?;
        Key::Var(scope, name.into())
    } else {
        Key::Fixed(B64.decode(text).map_err(|e| {
            ParseError::new(
                key.offset,
                format!("the hmac key must be base64 (or a variable name): {e}"),
            )
        })?)
    };
    Ok(Box::new(HmacConv { sha, key }))
}

#[derive(Debug)]
struct B64Dec;

impl Converter for B64Dec {
    fn convert<'t>(&'t self, v: Value<'t>, _: &'t Txn) -> Option<Value<'t>> {
        let out = v.with_bytes(|b| B64.decode(b.trim_ascii()).ok())?;
        Some(Value::Bin(Cow::Owned(out)))
    }
}

/// Builds `b64dec`.
pub(crate) fn b64dec_conv(_: &Call<'_>, _: &Env<'_>) -> Result<Box<dyn Converter>, ParseError> {
    Ok(Box::new(B64Dec))
}

/// Base64 text of `b` (standard alphabet, padded).
pub fn base64_encode(b: &[u8]) -> String {
    B64.encode(b)
}

#[derive(Debug)]
struct Crc32 {
    avalanche: bool,
}

impl Converter for Crc32 {
    fn convert<'t>(&'t self, v: Value<'t>, _: &'t Txn) -> Option<Value<'t>> {
        // CRC-32 (IEEE 802.3), as zlib and HAProxy's `hash_crc32`.
        let mut h = v.with_bytes(crc32fast::hash);
        if self.avalanche {
            h = full_avalanche(h);
        }
        Some(Value::Int(i64::from(h)))
    }
}

/// Builds `crc32([avalanche])`.
pub(crate) fn crc32_conv(c: &Call<'_>, _: &Env<'_>) -> Result<Box<dyn Converter>, ParseError> {
    let avalanche = match c.args.first() {
        None => false,
        Some(a) => match a.text.trim() {
            "0" => false,
            "1" => true,
            other => {
                return Err(ParseError::new(
                    a.offset,
                    format!("crc32 takes 0 or 1 (avalanche), got \"{other}\""),
                ));
            }
        },
    };
    Ok(Box::new(Crc32 { avalanche }))
}

/// HAProxy's `full_hash` (Bob Jenkins' 32-bit integer avalanche).
fn full_avalanche(mut a: u32) -> u32 {
    a = a.wrapping_add(0x7ed5_5d16).wrapping_add(a << 12);
    a = (a ^ 0xc761_c23c) ^ (a >> 19);
    a = a.wrapping_add(0x1656_67b1).wrapping_add(a << 5);
    a = a.wrapping_add(0xd3a2_646c) ^ (a << 9);
    a = a.wrapping_add(0xfd70_46c5).wrapping_add(a << 3);
    (a ^ 0xb55a_4f09) ^ (a >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(
            Sha::S256.digest(b"abc")[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "sha256(abc)"
        );
        // RFC 4231 test case 2.
        let mac = Sha::S256
            .hmac(b"Jefe", b"what do ya want for nothing?")
            .expect("hmac");
        assert_eq!(mac[..4], [0x5b, 0xdc, 0xc1, 0x46]);
        assert_eq!(B64.decode("aGk").expect("unpadded"), b"hi");
        assert_eq!(base64_encode(b"hi"), "aGk=");
    }
}
