//! The one Prometheus text (format 0.0.4) writer every `/metrics` family
//! goes through: the admin API's counters and what plugin hosts report.
//! Below `admin` and the plugin hosts, so both reach it without importing each other.

use std::borrow::Cow;
use std::fmt::Write as _;

/// A metric family: name, type, help and labelled samples.
pub type Family = (&'static str, &'static str, &'static str, Vec<(String, u64)>);

/// Escapes a label value as the exposition format requires (`\`, `"`, newline).
pub fn escape_label(v: &str) -> Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// One label pair, `name="value"`, the value escaped.
pub fn label(name: &str, value: &str) -> String {
    format!("{name}=\"{}\"", escape_label(value))
}

/// The one Prometheus text (format 0.0.4) writer: each family once, its
/// HELP and TYPE lines before its samples.
pub struct Writer {
    out: String,
}

impl Writer {
    /// An empty exposition.
    pub fn new() -> Writer {
        Writer {
            out: String::with_capacity(4096),
        }
    }

    /// Starts family `name`: `# HELP` (if any, `\` and newline escaped) and `# TYPE`.
    pub fn header(&mut self, name: &str, kind: &str, help: Option<&str>) {
        if let Some(help) = help {
            let help = if help.contains(['\\', '\n']) {
                Cow::Owned(help.replace('\\', "\\\\").replace('\n', "\\n"))
            } else {
                Cow::Borrowed(help)
            };
            let _ = writeln!(self.out, "# HELP {name} {help}");
        }
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample; `labels` are pairs made with [`label`] joined by commas, or empty.
    pub fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }

    /// A whole family: header, then its samples in order.
    pub fn family(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: impl IntoIterator<Item = (String, u64)>,
    ) {
        self.header(name, kind, Some(help));
        for (labels, value) in samples {
            self.sample(name, &labels, value);
        }
    }

    /// The text written so far.
    pub fn finish(self) -> String {
        self.out
    }
}

impl Default for Writer {
    fn default() -> Writer {
        Writer::new()
    }
}
