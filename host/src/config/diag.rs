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

    /// The file this map describes.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The location of byte `offset` (clamped to the text).
    pub fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
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

    /// An error inside a quoted string value whose TOML span is `span`:
    /// `offset` counts bytes from the first character inside the quotes.
    pub fn error_in_string(
        &self,
        span: Range<usize>,
        offset: usize,
        message: impl Into<String>,
    ) -> ConfigError {
        let quote = usize::from(matches!(
            self.text.as_bytes().get(span.start),
            Some(b'"' | b'\'')
        ));
        self.error(span.start + quote + offset..span.end, message)
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
}
