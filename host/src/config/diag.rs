//! Config diagnostics: every error names the file, line and column.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A place in the config file, 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// A configuration error, printed as `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// `None` when the error concerns the file as a whole (e.g. it cannot be read).
    pub location: Option<(usize, usize)>,
    pub message: String,
}

impl ConfigError {
    /// An error about the whole file.
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            location: None,
            message: message.into(),
        }
    }

    /// An error at a known location.
    pub fn at(loc: &Location, message: impl Into<String>) -> Self {
        ConfigError {
            file: loc.file.clone(),
            location: Some((loc.line, loc.col)),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, col)) => write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                line,
                col,
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A valid setting that is probably a mistake, printed as `FILE:LINE:COL: warning: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning(pub ConfigError);

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.0;
        match e.location {
            Some((line, col)) => write!(
                f,
                "{}:{}:{}: warning: {}",
                e.file.display(),
                line,
                col,
                e.message
            ),
            None => write!(f, "{}: warning: {}", e.file.display(), e.message),
        }
    }
}

/// Maps byte offsets of the config text to line and column.
#[derive(Debug, Clone)]
pub struct SourceMap {
    file: PathBuf,
    text: String,
    line_starts: Vec<usize>,
}

impl SourceMap {
    /// Indexes `text`, read from `file`.
    pub fn new(file: &Path, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceMap {
            file: file.to_path_buf(),
            text: text.to_string(),
            line_starts,
        }
    }

    /// The text this map describes (a plugin reload assembles it again).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The file this map describes.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The location of byte `offset` (clamped to the text; inside a
    /// character, that character's start).
    pub fn location(&self, offset: usize) -> Location {
        let offset = self.text.floor_char_boundary(offset);
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        Location {
            file: self.file.clone(),
            line,
            col,
        }
    }

    /// An error at the start of `span`.
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::at(&self.location(span.start), message)
    }

    /// An error inside a string value whose TOML span is `span`: `offset`
    /// is a byte offset into the string's decoded value (what a rule parser
    /// saw), mapped back through quotes and escapes to the text.
    pub fn error_in_string(
        &self,
        span: Range<usize>,
        offset: usize,
        message: impl Into<String>,
    ) -> ConfigError {
        self.error(self.string_offset(span.clone(), offset)..span.end, message)
    }

    /// The text offset of byte `offset` of the value of the TOML string
    /// token at `span` (basic or literal, one- or multi-line); past the
    /// value, its end. An offset inside an escape maps to the escape.
    pub fn string_offset(&self, span: Range<usize>, offset: usize) -> usize {
        let Some(raw) = self.text.get(span.clone()) else {
            return span.start.min(self.text.len());
        };
        let (delim, basic) = if raw.starts_with(r#"""""#) {
            (3, true)
        } else if raw.starts_with("'''") {
            (3, false)
        } else if raw.starts_with('"') {
            (1, true)
        } else if raw.starts_with('\'') {
            (1, false)
        } else {
            // Not a string token: count from its start.
            return span.start + raw.floor_char_boundary(offset);
        };
        let mut i = delim;
        if delim == 3 {
            // A newline right after `"""` or `'''` is not part of the value.
            let rest = &raw[i..];
            i += if rest.starts_with("\r\n") {
                2
            } else {
                usize::from(rest.starts_with('\n'))
            };
        }
        let end = raw.len().saturating_sub(delim).max(i);
        let mut decoded = 0;
        while i < end {
            let (raw_len, value_len) = string_unit(&raw[i..end], basic);
            if raw_len == 0 || decoded + value_len > offset {
                break;
            }
            i += raw_len;
            decoded += value_len;
        }
        span.start + i
    }
}

/// The next unit of a TOML string body: its length in the text and in the
/// decoded value (an escape, a line-ending backslash, or one character).
fn string_unit(rest: &str, basic: bool) -> (usize, usize) {
    let b = rest.as_bytes();
    if !basic || b.first() != Some(&b'\\') {
        let n = rest.chars().next().map_or(0, char::len_utf8);
        return (n, n);
    }
    let hex = |digits: usize| {
        let value_len = rest
            .get(2..2 + digits)
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .and_then(char::from_u32)
            .map_or(1, char::len_utf8);
        ((2 + digits).min(rest.len()), value_len)
    };
    match b.get(1) {
        Some(b'u') => hex(4),
        Some(b'U') => hex(8),
        Some(b'x') => hex(2),
        // A line-ending backslash removes the newline and the blanks after it.
        Some(b' ' | b'\t' | b'\r' | b'\n') => {
            let blanks = b[1..]
                .iter()
                .take_while(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
                .count();
            (1 + blanks, 0)
        }
        Some(_) => (2, 1),
        None => (1, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let map = SourceMap::new(Path::new("x.toml"), "a = 1\nbb = \"q\"\n");
        assert_eq!(map.location(0).line, 1);
        assert_eq!(map.location(0).col, 1);
        let loc = map.location(6 + 5);
        assert_eq!((loc.line, loc.col), (2, 6));
        assert_eq!(map.error_in_string(11..14, 0, "m").location, Some((2, 7)));
        assert_eq!(map.error(11..12, "bad").to_string(), "x.toml:2:6: bad");
    }

    /// The rest of the string token `token` (its first occurrence in
    /// `text`) from where byte `offset` of its value maps to.
    fn landing<'a>(text: &'a str, token: &str, offset: usize) -> &'a str {
        let start = text.find(token).expect("token in text");
        let end = start + token.len();
        let map = SourceMap::new(Path::new("x.toml"), text);
        &text[map.string_offset(start..end, offset)..end]
    }

    #[test]
    fn string_offsets_skip_quotes_and_escapes() {
        // Basic string: `\"` and `\\` are two bytes in the text, one in the value.
        let t = r#"if = "hdr(x) \"a\\b\" zz""#;
        let tok = r#""hdr(x) \"a\\b\" zz""#;
        assert_eq!(landing(t, tok, 0), r#"hdr(x) \"a\\b\" zz""#);
        assert_eq!(landing(t, tok, 7), r#"\"a\\b\" zz""#);
        assert_eq!(landing(t, tok, 8), r#"a\\b\" zz""#);
        assert_eq!(landing(t, tok, 13), r#"zz""#);
        // Past the value: the closing quote.
        assert_eq!(landing(t, tok, 99), "\"");
        // \u and \U escapes decode to UTF-8 of their own length; inside one lands on it.
        let t = r#"v = "\u00e9x\U0001F600y""#;
        let tok = r#""\u00e9x\U0001F600y""#;
        assert_eq!(landing(t, tok, 1), r#"\u00e9x\U0001F600y""#);
        assert_eq!(landing(t, tok, 2), r#"x\U0001F600y""#);
        assert_eq!(landing(t, tok, 7), r#"y""#);
        // Literal strings have no escapes; multi-line ones drop the first newline.
        let t = r"v = 'a\b' w = '''
xy\'''";
        assert_eq!(landing(t, r"'a\b'", 2), r"b'");
        assert_eq!(landing(t, "'''\nxy\\'''", 1), r"y\'''");
        // A multi-line basic string with a line-ending backslash.
        let t = "v = \"\"\"\nab\\\n   cd\"\"\"";
        let tok = "\"\"\"\nab\\\n   cd\"\"\"";
        assert_eq!(landing(t, tok, 2), "cd\"\"\"");
        assert_eq!(landing(t, tok, 3), "d\"\"\"");
    }

    #[test]
    fn columns_count_characters_even_inside_one() {
        let map = SourceMap::new(Path::new("x.toml"), "é = 1");
        // Byte 1 is inside 'é': the column is the character's.
        assert_eq!(map.location(1).col, 1);
        assert_eq!(map.location(2).col, 2);
        assert_eq!(map.location(99).col, 6);
    }
}

/// Rewrites serde's messages about a config value in the user's words:
/// Rust type names become what to write (`expected i64` → `expected an
/// integer`), and an unknown key or value gets the closest known one
/// (HAProxy's "did you mean").
pub fn humanize(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        return unknown("key", rest);
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        return unknown("value", rest);
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        return format!("missing key `{name}`");
    }
    if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        && let Some((got, expected)) = rest.split_once(", expected ")
    {
        return format!(
            "expected {}, got {}",
            expected_words(expected),
            got_words(got)
        );
    }
    message.to_string()
}

/// `unknown field `x`, expected one of `a`, `b`` (or `expected `a``, or
/// `there are no fields`) as a located hint.
fn unknown(what: &str, rest: &str) -> String {
    let Some((name, tail)) = rest.split_once('`') else {
        return format!("unknown {what} `{rest}");
    };
    let known: Vec<&str> = tail
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect();
    if known.is_empty() {
        return format!("unknown {what} `{name}`; none is allowed here");
    }
    let best = known
        .iter()
        .map(|k| (strsim::jaro_winkler(name, k), *k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let list = known.join(", ");
    match best {
        Some((_, k)) => {
            format!("unknown {what} `{name}` (did you mean `{k}`?); expected one of: {list}")
        }
        None => format!("unknown {what} `{name}`; expected one of: {list}"),
    }
}

fn expected_words(expected: &str) -> String {
    match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" | "isize"
        | "an integer" => "an integer".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" | "bool" => "true or false".into(),
        "a sequence" => "a list".into(),
        "a map" => "a table".into(),
        e if e.starts_with("struct ") => "a table".into(),
        e => e.to_string(),
    }
}

fn got_words(got: &str) -> String {
    if let Some(s) = got.strip_prefix("string ") {
        return format!("the string {s}");
    }
    for (prefix, word) in [
        ("integer ", "the integer "),
        ("floating point ", "the number "),
        ("boolean ", ""),
    ] {
        if let Some(v) = got.strip_prefix(prefix) {
            return format!("{word}{}", v.trim_matches('`'));
        }
    }
    match got {
        "sequence" => "a list".into(),
        "map" => "a table".into(),
        g => g.to_string(),
    }
}

#[cfg(test)]
mod humanize_tests {
    use super::humanize;

    #[test]
    fn serde_messages_in_the_users_words() {
        let cases = [
            (
                "invalid type: string \"two\", expected i64",
                "expected an integer, got the string \"two\"",
            ),
            (
                "unknown field `bnid`, expected one of `name`, `bind`, `default_backend`",
                "unknown key `bnid` (did you mean `bind`?); expected one of: name, bind, default_backend",
            ),
            (
                "unknown field `zzz`, expected one of `name`, `bind`",
                "unknown key `zzz`; expected one of: name, bind",
            ),
            (
                "unknown variant `roundrobn`, expected one of `roundrobin`, `leastconn`, `source`",
                "unknown value `roundrobn` (did you mean `roundrobin`?); expected one of: roundrobin, leastconn, source",
            ),
            ("missing field `name`", "missing key `name`"),
            (
                "invalid type: integer `3`, expected a string",
                "expected a string, got the integer 3",
            ),
            (
                "invalid type: boolean `true`, expected u32",
                "expected an integer, got true",
            ),
            (
                "invalid type: sequence, expected struct RawFrontend",
                "expected a table, got a list",
            ),
            ("something else entirely", "something else entirely"),
        ];
        for (serde, want) in cases {
            assert_eq!(humanize(serde), want, "{serde}");
        }
    }
}
