//! The access log: one line per request, text or JSON, buffered per worker.
//!
//! Lines are appended to a worker-local buffer and handed to the sink
//! ([`super::logsink`]: stderr, a file, syslog) in batches (when the buffer
//! fills, every 100 ms, and at shutdown), so the request path never makes a
//! syscall or takes a lock for logging.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::logsink::Sink;

use crate::config::AccessLogFormat;

/// Flush when this much is buffered.
const FLUSH_AT: usize = 32 << 10;

/// What one access-log line says (the time is added when it is written).
#[derive(Debug, serde::Serialize)]
pub struct LogRecord<'a> {
    /// The client's `ip:port` (formatted once per connection).
    pub client: &'a str,
    pub frontend: &'a str,
    pub backend: Option<&'a str>,
    pub server: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub version: &'a str,
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    /// Request body bytes received from the client.
    pub bytes_in: u64,
    #[serde(rename = "total_ms", serialize_with = "ser_ms")]
    pub total: Duration,
    /// Time from sending the request upstream to its response headers.
    #[serde(rename = "upstream_ms", serialize_with = "ser_opt_ms")]
    pub upstream: Option<Duration>,
    /// `complete`, `aborted` (client left) or `upstream_error`, or an error message.
    pub termination: &'a str,
    /// A gRPC response's `grpc-status` (JSON lines only, when there is one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(millis(*d))
}

fn ser_opt_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(millis(*d)),
        None => s.serialize_none(),
    }
}

/// A JSON line: the time, then the record's fields.
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    time: &'a str,
    #[serde(flatten)]
    rec: &'a LogRecord<'a>,
}

/// The date-and-seconds part of the timestamp, recomputed once per second.
struct ClockCache {
    secs: u64,
    prefix: String,
}

/// A worker's access-log buffer. Its format and sink are those of the
/// generation in force: a reload replaces them ([`AccessLog::reconfigure`]).
pub struct AccessLog {
    format: Cell<AccessLogFormat>,
    buf: RefCell<String>,
    clock: RefCell<ClockCache>,
    sink: RefCell<Arc<Sink>>,
}

/// Appends `n` in decimal (the formatting machinery costs more than the line's text).
fn push_u64(buf: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        buf.push(char::from(d));
    }
}

/// Appends `n` (below 1000) as exactly three digits.
fn push_3digits(buf: &mut String, n: u64) {
    for d in [n / 100 % 10, n / 10 % 10, n % 10] {
        buf.push(char::from(b'0' + d as u8));
    }
}

/// Writes `d` as milliseconds with three decimals, using integer arithmetic.
fn write_ms(buf: &mut String, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    push_u64(buf, us / 1000);
    buf.push('.');
    push_3digits(buf, us % 1000);
    buf.push_str("ms");
}

impl AccessLog {
    /// A logger writing `format` lines to `sink`.
    pub fn new(format: AccessLogFormat, sink: Arc<Sink>) -> AccessLog {
        AccessLog {
            format: Cell::new(format),
            buf: RefCell::new(String::with_capacity(FLUSH_AT + 1024)),
            clock: RefCell::new(ClockCache {
                secs: u64::MAX,
                prefix: String::new(),
            }),
            sink: RefCell::new(sink),
        }
    }

    /// A reload: lines buffered so far go to the old sink in the old
    /// format; later lines (of requests that started before the reload
    /// too) are written in `format` to `sink`.
    pub fn reconfigure(&self, format: AccessLogFormat, sink: Arc<Sink>) {
        self.flush();
        self.format.set(format);
        *self.sink.borrow_mut() = sink;
    }

    /// Starts a line: the syslog header when the sink is syslog.
    fn begin_line(&self, buf: &mut String) {
        let sink = self.sink.borrow();
        if !sink.is_syslog() {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.update_clock(now);
        let clock = self.clock.borrow();
        sink.write_header(buf, &clock.prefix, now.subsec_millis());
    }

    /// Recomputes the cached date-and-seconds if `now` is in another second.
    fn update_clock(&self, now: Duration) {
        let mut clock = self.clock.borrow_mut();
        if clock.secs != now.as_secs() {
            clock.secs = now.as_secs();
            clock.prefix.clear();
            // RFC 3339 to the second, its `Z` dropped for the milliseconds to
            // follow. humantime refuses years past 9999 (an error, no text).
            if let Some(at) = UNIX_EPOCH.checked_add(Duration::from_secs(clock.secs)) {
                let _ = write!(clock.prefix, "{}", humantime::format_rfc3339_seconds(at));
            }
            if clock.prefix.ends_with('Z') {
                clock.prefix.pop();
            }
        }
    }

    /// Appends the current UTC time as `2026-11-23T11:19:37.123Z`.
    fn write_time(&self, buf: &mut String) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.write_time_at(buf, now);
    }

    /// Appends Unix time `now` as `2026-11-23T11:19:37.123Z` (milliseconds truncated).
    fn write_time_at(&self, buf: &mut String, now: Duration) {
        self.update_clock(now);
        let clock = self.clock.borrow();
        buf.push_str(&clock.prefix);
        buf.push('.');
        push_3digits(buf, u64::from(now.subsec_millis()));
        buf.push('Z');
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.format.get() != AccessLogFormat::Off
    }

    /// Appends one line (and flushes if the buffer is full).
    pub fn write(&self, rec: &LogRecord<'_>) {
        let full = {
            let mut buf = self.buf.borrow_mut();
            let format = self.format.get();
            if format == AccessLogFormat::Off {
                return;
            }
            self.begin_line(&mut buf);
            match format {
                AccessLogFormat::Off => {}
                AccessLogFormat::Text => {
                    // ` client frontend backend/server "METHOD path VERSION" status bytes `
                    self.write_time(&mut buf);
                    for part in [
                        " ",
                        rec.client,
                        " ",
                        rec.frontend,
                        " ",
                        rec.backend.unwrap_or("-"),
                        "/",
                        rec.server.unwrap_or("-"),
                        " \"",
                        rec.method,
                        " ",
                        rec.path,
                        " ",
                        rec.version,
                        "\" ",
                    ] {
                        buf.push_str(part);
                    }
                    push_u64(&mut buf, u64::from(rec.status));
                    buf.push(' ');
                    push_u64(&mut buf, rec.bytes);
                    buf.push(' ');
                    write_ms(&mut buf, rec.total);
                    buf.push(' ');
                    match rec.upstream {
                        Some(u) => write_ms(&mut buf, u),
                        None => buf.push('-'),
                    }
                    buf.push(' ');
                    buf.push_str(rec.termination);
                    buf.push('\n');
                }
                AccessLogFormat::Json => {
                    let mut time = String::with_capacity(24);
                    self.write_time(&mut time);
                    if let Ok(line) = serde_json::to_string(&JsonLine { time: &time, rec }) {
                        buf.push_str(&line);
                        buf.push('\n');
                    }
                }
            }
            buf.len() >= FLUSH_AT
        };
        if full {
            self.flush();
        }
    }

    /// Appends one custom line (a frontend's `log_format`), written by `line`.
    pub fn write_with(&self, line: impl FnOnce(&mut String)) {
        let full = {
            let mut buf = self.buf.borrow_mut();
            if self.format.get() == AccessLogFormat::Off {
                return;
            }
            self.begin_line(&mut buf);
            let mut line_text = String::with_capacity(256);
            line(&mut line_text);
            // One line per exchange, whatever a header value held.
            if line_text.contains(['\n', '\r']) {
                buf.extend(
                    line_text
                        .chars()
                        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c }),
                );
            } else {
                buf.push_str(&line_text);
            }
            buf.push('\n');
            buf.len() >= FLUSH_AT
        };
        if full {
            self.flush();
        }
    }

    /// Writes out whatever is buffered.
    pub fn flush(&self) {
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return;
        }
        self.sink.borrow().send(&buf);
        buf.clear();
    }
}

/// Milliseconds as a float with microsecond precision.
pub fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_sink() -> Arc<Sink> {
        super::super::logsink::open(&crate::config::logs::LogSettings::default())
    }

    #[test]
    fn timestamps_and_durations() {
        for (us, text) in [
            (3_201, "3.201ms"),
            (0, "0.000ms"),
            (7, "0.007ms"),
            (1_000_000, "1000.000ms"),
            (12_345_678_901, "12345678.901ms"),
        ] {
            let mut b = String::new();
            write_ms(&mut b, Duration::from_micros(us));
            assert_eq!(b, text);
        }
        for n in [0, 9, 10, 404, 18_446_744_073_709_551_615] {
            let mut b = String::new();
            push_u64(&mut b, n);
            assert_eq!(b, n.to_string());
        }
    }

    #[test]
    fn a_text_line_has_every_field_in_order() {
        let log = AccessLog::new(AccessLogFormat::Text, test_sink());
        log.write(&LogRecord {
            client: "10.0.0.1:5555",
            frontend: "web",
            backend: Some("app"),
            server: None,
            method: "GET",
            path: "/a?b=1",
            version: "HTTP/1.1",
            status: 200,
            bytes: 1234,
            bytes_in: 0,
            total: Duration::from_micros(1_500),
            upstream: Some(Duration::from_micros(999)),
            termination: "complete",
            grpc_status: None,
        });
        let line = log.buf.borrow().clone();
        let (time, rest) = line.split_once(' ').expect("a space after the time");
        assert_eq!(time.len(), "2026-11-23T11:19:37.123Z".len(), "{line}");
        assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{line}");
        assert_eq!(
            rest,
            "10.0.0.1:5555 web app/- \"GET /a?b=1 HTTP/1.1\" 200 1234 1.500ms 0.999ms complete\n"
        );
    }

    #[test]
    fn rfc3339_times() {
        let log = AccessLog::new(AccessLogFormat::Text, test_sink());
        for (secs, nanos, text) in [
            (0, 0, "1970-01-01T00:00:00.000Z"),
            (1_763_897_977, 123_999_999, "2025-11-23T11:39:37.123Z"),
            (951_782_400, 1_000_000, "2000-02-29T00:00:00.001Z"),
            (951_868_799, 999_999_999, "2000-02-29T23:59:59.999Z"),
            (4_107_542_400, 0, "2100-03-01T00:00:00.000Z"),
            (253_402_300_799, 0, "9999-12-31T23:59:59.000Z"),
        ] {
            let mut b = String::new();
            log.write_time_at(&mut b, Duration::new(secs, nanos));
            // Twice: the second comes from the per-second cache.
            log.write_time_at(&mut b, Duration::new(secs, nanos));
            assert_eq!(b, format!("{text}{text}"), "{secs}.{nanos}");
        }
    }
}
