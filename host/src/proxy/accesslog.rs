//! The access log: one line per request, text or JSON, buffered per worker.
//!
//! Lines are appended to a worker-local buffer and written to stderr in
//! batches (when the buffer fills, every 100 ms, and at shutdown), so the
//! request path never makes a syscall or takes a lock for logging.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::AccessLogFormat;

/// Flush when this much is buffered.
const FLUSH_AT: usize = 32 << 10;

/// What one access-log line says (the time is added when it is written).
#[derive(Debug, serde::Serialize)]
pub struct LogRecord<'a> {
    pub client: SocketAddr,
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

/// A worker's access-log buffer.
pub struct AccessLog {
    format: AccessLogFormat,
    buf: RefCell<String>,
    clock: RefCell<ClockCache>,
}

/// Writes `d` as milliseconds with three decimals, using integer arithmetic.
fn write_ms(buf: &mut String, d: Duration) {
    let us = d.as_micros();
    let _ = write!(buf, "{}.{:03}ms", us / 1000, us % 1000);
}

impl AccessLog {
    /// A logger writing `format` lines.
    pub fn new(format: AccessLogFormat) -> AccessLog {
        AccessLog {
            format,
            buf: RefCell::new(String::with_capacity(FLUSH_AT + 1024)),
            clock: RefCell::new(ClockCache {
                secs: u64::MAX,
                prefix: String::new(),
            }),
        }
    }

    /// Appends the current UTC time as `2026-11-23T11:19:37.123Z`.
    fn write_time(&self, buf: &mut String) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut clock = self.clock.borrow_mut();
        if clock.secs != now.as_secs() {
            clock.secs = now.as_secs();
            clock.prefix = date_time_prefix(clock.secs);
        }
        buf.push_str(&clock.prefix);
        let _ = write!(buf, ".{:03}Z", now.subsec_millis());
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.format != AccessLogFormat::Off
    }

    /// Appends one line (and flushes if the buffer is full).
    pub fn write(&self, rec: &LogRecord<'_>) {
        let full = {
            let mut buf = self.buf.borrow_mut();
            match self.format {
                AccessLogFormat::Off => return,
                AccessLogFormat::Text => {
                    self.write_time(&mut buf);
                    let _ = write!(
                        buf,
                        " {} {} {}/{} \"{} {} {}\" {} {} ",
                        rec.client,
                        rec.frontend,
                        rec.backend.unwrap_or("-"),
                        rec.server.unwrap_or("-"),
                        rec.method,
                        rec.path,
                        rec.version,
                        rec.status,
                        rec.bytes,
                    );
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

    /// Writes out whatever is buffered.
    pub fn flush(&self) {
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(buf.as_bytes());
        let _ = err.flush();
        buf.clear();
    }
}

/// Milliseconds as a float with microsecond precision.
pub fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// `2026-11-23T11:19:37` for Unix time `secs`.
fn date_time_prefix(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_durations() {
        assert_eq!(date_time_prefix(1_763_897_977), "2025-11-23T11:39:37");
        let mut b = String::new();
        write_ms(&mut b, Duration::from_micros(3_201));
        assert_eq!(b, "3.201ms");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
