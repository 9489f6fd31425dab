//! Helpers every plugin ends up writing: hex, a constant-time comparison,
//! and reading the plugin configuration.

use std::fmt;

/// Lower-case hex of `bytes` (`"0a1b"`).
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Why [`hex_decode`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HexError {
    /// An odd number of digits.
    OddLength(usize),
    /// A character that is not a hex digit, and where.
    InvalidDigit {
        /// Byte offset of the digit.
        at: usize,
        /// The character found there.
        found: char,
    },
}

impl fmt::Display for HexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HexError::OddLength(n) => write!(f, "hex needs an even number of digits, got {n}"),
            HexError::InvalidDigit { at, found } => {
                write!(f, "not a hex digit at position {at}: {found:?}")
            }
        }
    }
}

impl std::error::Error for HexError {}

/// Decodes hex (upper or lower case).
pub fn hex_decode(text: &str) -> Result<Vec<u8>, HexError> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return Err(HexError::OddLength(bytes.len()));
    }
    let digit = |at: usize| -> Result<u8, HexError> {
        let c = bytes[at];
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(HexError::InvalidDigit {
                at,
                found: text.get(at..).and_then(|t| t.chars().next()).unwrap_or('?'),
            }),
        }
    };
    (0..bytes.len() / 2)
        .map(|i| Ok(digit(2 * i)? << 4 | digit(2 * i + 1)?))
        .collect()
}

/// Whether `a` and `b` are equal, in time that depends only on their
/// lengths: compare secrets (signatures, tokens) with this, never `==`.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // `black_box` keeps the optimizer from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// Why a plugin configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Parses the plugin configuration (`config = ...` of the `[[plugin]]`,
/// what `get_plugin_configuration()` returns in `on_configure`) as JSON
/// into `T`. A missing configuration is read as `{}`, so a `T` whose
/// fields all have defaults needs none. The error says what was wrong and
/// where (`line 1, column 9: missing field `header``), ready to log before
/// returning `false` from `on_configure` (which fails the config load).
#[cfg(feature = "json")]
pub fn json_config<T: serde::de::DeserializeOwned>(raw: Option<&[u8]>) -> Result<T, ConfigError> {
    let raw = match raw {
        Some(r) if !r.iter().all(u8::is_ascii_whitespace) => r,
        _ => b"{}",
    };
    serde_json::from_slice(raw).map_err(|e| {
        ConfigError(format!(
            "plugin configuration is not the JSON this plugin expects: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        assert_eq!(hex_encode(&[0, 0x1f, 0xab, 0xff]), "001fabff");
        assert_eq!(hex_decode("001FabfF"), Ok(vec![0, 0x1f, 0xab, 0xff]));
        assert_eq!(hex_decode(""), Ok(vec![]));
        assert_eq!(hex_decode("abc"), Err(HexError::OddLength(3)));
        assert_eq!(
            hex_decode("0g"),
            Err(HexError::InvalidDigit { at: 1, found: 'g' })
        );
        assert_eq!(
            hex_decode("éa0").map_err(|e| e.to_string()),
            Err("not a hex digit at position 0: 'é'".to_string())
        );
    }

    #[test]
    fn constant_time_eq_compares_whole_inputs() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secre"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn json_config_reports_what_is_wrong() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct C {
            header: String,
            #[serde(default)]
            value: Option<String>,
        }
        let c: C = json_config(Some(br#"{"header": "x-a"}"#)).expect("valid");
        assert_eq!(c.header, "x-a");
        let e = json_config::<C>(Some(b"{}")).expect_err("missing field");
        assert!(e.0.contains("missing field `header`"), "{e}");
        let e = json_config::<C>(Some(b"not json")).expect_err("not json");
        assert!(e.0.contains("line 1 column 2"), "{e}");
        #[derive(serde::Deserialize, Debug, PartialEq, Default)]
        struct D {
            #[serde(default)]
            n: u32,
        }
        assert_eq!(json_config::<D>(None), Ok(D::default()));
        assert_eq!(json_config::<D>(Some(b"  ")), Ok(D::default()));
    }
}
