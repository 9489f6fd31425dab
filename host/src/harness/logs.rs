//! Log capture: a `tracing` layer, installed as the harness thread's
//! default subscriber, that keeps what plugins (and the host about them) log.

use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Most lines kept; older ones are dropped first.
const MAX_LINES: usize = 10_000;

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: Level,
    /// The plugin that logged it, when a plugin did.
    pub plugin: Option<String>,
    /// The message.
    pub message: String,
}

impl std::fmt::Display for LogLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.plugin {
            Some(p) => write!(f, "{} [{p}] {}", self.level, self.message),
            None => write!(f, "{} {}", self.level, self.message),
        }
    }
}

/// The lines captured so far, shared with the layer.
pub(super) type Lines = Arc<Mutex<Vec<LogLine>>>;

/// The capturing layer.
pub(super) struct Capture(pub(super) Lines);

#[derive(Default)]
struct Fields {
    message: String,
    plugin: Option<String>,
    extra: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "plugin" => self.plugin = Some(value.to_string()),
            name => self.extra.push_str(&format!(" {name}={value}")),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "plugin" => self.plugin = Some(format!("{value:?}").trim_matches('"').to_string()),
            name => self.extra.push_str(&format!(" {name}={value:?}")),
        }
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _cx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut message = fields.message;
        message.push_str(&fields.extra);
        if let Ok(mut lines) = self.0.lock() {
            if lines.len() >= MAX_LINES {
                lines.remove(0);
            }
            lines.push(LogLine {
                level: *event.metadata().level(),
                plugin: fields.plugin,
                message,
            });
        }
    }
}
