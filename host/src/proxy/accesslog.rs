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

/// What one access-log line says.
#[derive(Debug, serde::Serialize)]
pub struct LogRecord<'a> {
    pub time: &'a str,
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
    pub total_ms: f64,
    /// Time from sending the request upstream to its response headers.
    pub upstream_ms: Option<f64>,
    /// `complete`, `aborted` (client left) or `upstream_error`, or an error message.
    pub termination: &'a str,
}

/// A worker's access-log buffer.
pub struct AccessLog {
    format: AccessLogFormat,
    buf: RefCell<String>,
}

impl AccessLog {
    /// A logger writing `format` lines.
    pub fn new(format: AccessLogFormat) -> AccessLog {
        AccessLog {
            format,
            buf: RefCell::new(String::with_capacity(FLUSH_AT + 1024)),
        }
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
                    let _ = write!(
                        buf,
                        "{} {} {} {}/{} \"{} {} {}\" {} {} {:.3}ms ",
                        rec.time,
                        rec.client,
                        rec.frontend,
                        rec.backend.unwrap_or("-"),
                        rec.server.unwrap_or("-"),
                        rec.method,
                        rec.path,
                        rec.version,
                        rec.status,
                        rec.bytes,
                        rec.total_ms,
                    );
                    match rec.upstream_ms {
                        Some(u) => {
                            let _ = write!(buf, "{u:.3}ms");
                        }
                        None => buf.push('-'),
                    }
                    let _ = writeln!(buf, " {}", rec.termination);
                }
                AccessLogFormat::Json => {
                    if let Ok(line) = serde_json::to_string(rec) {
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

/// The current UTC time as `2026-11-23T11:19:37.123Z`.
pub fn now_rfc3339() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        now.subsec_millis()
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
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
