//! Where access-log lines go: stderr, a file, or syslog (UDP or a Unix
//! datagram socket, RFC 3164 or RFC 5424 headers, as HAProxy's `log`).
//!
//! Workers buffer their lines ([`super::accesslog`]) and hand a batch to the
//! sink every 100 ms or when the buffer fills. Nothing here blocks a worker
//! on a slow destination:
//! - a file is written by one writer thread per file; a worker's batch goes
//!   through a bounded queue, and a batch that does not fit is dropped and
//!   counted; the file is reopened (for logrotate) on SIGUSR1 and
//!   `POST /logs/reopen`;
//! - syslog lines are sent one datagram each on a non-blocking socket; a
//!   full socket buffer or an absent receiver drops the line and counts it.
//!
//! Sinks are shared by target: every worker (and a reloaded configuration
//! naming the same target) writes through one [`Sink`].

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::config::logs::{LogSettings, LogTarget, Syslog, SyslogFormat};

/// Access-log lines dropped because their destination could not take them
/// (full queue, full socket buffer, no receiver, write error).
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Bumped by [`reopen`]; file writers reopen when it changes.
static REOPEN: AtomicU64 = AtomicU64::new(0);
/// Batches a file writer may have queued; beyond that, batches are dropped.
const FILE_QUEUE: usize = 64;
/// Longest syslog message (HAProxy's default `len`); longer lines are cut.
pub const SYSLOG_MAX: usize = 1024;

/// Access-log lines dropped so far (`portcullis_access_log_dropped_total`).
pub fn dropped_total() -> u64 {
    DROPPED.load(Relaxed)
}

/// Asks every file sink to reopen its file (after logrotate moved it).
pub fn reopen() {
    REOPEN.fetch_add(1, Relaxed);
}

/// Reopens log files on every SIGUSR1 (runs on the control runtime).
pub async fn reopen_on_sigusr1() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
        tracing::warn!("cannot install the SIGUSR1 handler; log files are not reopened on signal");
        return;
    };
    while usr1.recv().await.is_some() {
        tracing::info!("SIGUSR1: reopening log files");
        reopen();
    }
}

/// One destination of access-log lines.
#[derive(Debug)]
pub struct Sink {
    target: LogTarget,
    kind: Kind,
    /// The syslog header's fixed parts (`None`: not syslog).
    syslog: Option<SyslogHeader>,
}

#[derive(Debug)]
enum Kind {
    Stderr,
    File(SyncSender<Vec<u8>>),
    Udp(UdpSocket, SocketAddr),
    Unix(UnixDatagram, PathBuf),
    /// The socket could not be made: every line is dropped (and counted).
    Broken,
}

/// What every syslog header of this sink repeats.
#[derive(Debug)]
struct SyslogHeader {
    format: SyslogFormat,
    /// `<PRI>`.
    pri: String,
    /// RFC 3164: `TAG[PID]: `; RFC 5424: ` HOST TAG PID - - `.
    rest: String,
}

/// Sinks in use, by target, so workers and reloads share them.
static SINKS: Mutex<Vec<Weak<Sink>>> = Mutex::new(Vec::new());

/// The sink for `settings` (made on first use; only at worker start).
pub fn open(settings: &LogSettings) -> Arc<Sink> {
    // A poisoned registry only means another start-up panicked: go on with it.
    let mut sinks = SINKS.lock().unwrap_or_else(|e| e.into_inner());
    sinks.retain(|w| w.strong_count() > 0);
    if let Some(s) = sinks
        .iter()
        .filter_map(Weak::upgrade)
        .find(|s| s.target == settings.target && s.same_syslog(&settings.syslog))
    {
        return s;
    }
    let sink = Arc::new(Sink::new(settings));
    sinks.push(Arc::downgrade(&sink));
    sink
}

impl Sink {
    fn new(settings: &LogSettings) -> Sink {
        let kind = match &settings.target {
            LogTarget::Stderr => Kind::Stderr,
            LogTarget::File(path) => {
                let (tx, rx) = std::sync::mpsc::sync_channel(FILE_QUEUE);
                let path = path.clone();
                let spawned = std::thread::Builder::new()
                    .name("access-log".into())
                    .spawn(move || file_writer(&path, &rx));
                match spawned {
                    Ok(_) => Kind::File(tx),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the access-log file writer; lines are dropped");
                        Kind::Broken
                    }
                }
            }
            LogTarget::Udp(addr) => {
                let bind: SocketAddr = if addr.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                match UdpSocket::bind(bind).and_then(|s| s.set_nonblocking(true).map(|()| s)) {
                    Ok(s) => Kind::Udp(s, *addr),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot open the syslog UDP socket; access-log lines are dropped");
                        Kind::Broken
                    }
                }
            }
            LogTarget::Unix(path) => {
                match UnixDatagram::unbound().and_then(|s| s.set_nonblocking(true).map(|()| s)) {
                    Ok(s) => Kind::Unix(s, path.clone()),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot open a syslog Unix socket; access-log lines are dropped");
                        Kind::Broken
                    }
                }
            }
        };
        let syslog = settings
            .target
            .is_syslog()
            .then(|| SyslogHeader::new(&settings.syslog));
        Sink {
            target: settings.target.clone(),
            kind,
            syslog,
        }
    }

    fn same_syslog(&self, s: &Syslog) -> bool {
        match &self.syslog {
            None => true,
            Some(h) => h.format == s.format && h.pri == pri(s) && h.rest == header_rest(s),
        }
    }

    /// Whether each line is a syslog message (the buffer holds headers too).
    pub fn is_syslog(&self) -> bool {
        self.syslog.is_some()
    }

    /// Appends the syslog header of a line written at Unix time `now`
    /// (`date` is its RFC 3339 form to the second, without the `Z`).
    pub fn write_header(&self, buf: &mut String, date: &str, millis: u32) {
        let Some(h) = &self.syslog else {
            return;
        };
        buf.push_str(&h.pri);
        match h.format {
            SyslogFormat::Rfc3164 => {
                // `Mmm dd hh:mm:ss` (day space-padded), from `YYYY-MM-DDThh:mm:ss`.
                let month = date
                    .get(5..7)
                    .and_then(|m| m.parse::<usize>().ok())
                    .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
                    .copied()
                    .unwrap_or("Jan");
                let day = date.get(8..10).unwrap_or("01");
                buf.push_str(month);
                buf.push(' ');
                buf.push_str(&day.replacen('0', " ", usize::from(day.starts_with('0'))));
                buf.push(' ');
                buf.push_str(date.get(11..19).unwrap_or("00:00:00"));
                buf.push(' ');
            }
            SyslogFormat::Rfc5424 => {
                buf.push_str("1 ");
                buf.push_str(date);
                buf.push('.');
                for d in [millis / 100 % 10, millis / 10 % 10, millis % 10] {
                    buf.push(char::from(b'0' + d as u8));
                }
                buf.push('Z');
            }
        }
        buf.push_str(&h.rest);
    }

    /// Sends a batch of whole lines (each ending in `\n`); never blocks on
    /// the destination (stderr excepted, as before: it is the terminal or a
    /// pipe the supervisor drains).
    pub fn send(&self, batch: &str) {
        match &self.kind {
            Kind::Stderr => {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(batch.as_bytes());
                let _ = err.flush();
            }
            Kind::File(tx) => match tx.try_send(batch.as_bytes().to_vec()) {
                Ok(()) => {}
                Err(TrySendError::Full(b) | TrySendError::Disconnected(b)) => {
                    DROPPED.fetch_add(lines_in(&b), Relaxed);
                }
            },
            Kind::Udp(sock, addr) => {
                for line in batch.lines() {
                    if sock.send_to(cut(line), addr).is_err() {
                        DROPPED.fetch_add(1, Relaxed);
                    }
                }
            }
            Kind::Unix(sock, path) => {
                for line in batch.lines() {
                    if sock.send_to(cut(line), path).is_err() {
                        DROPPED.fetch_add(1, Relaxed);
                    }
                }
            }
            Kind::Broken => {
                DROPPED.fetch_add(lines_in(batch.as_bytes()), Relaxed);
            }
        }
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn pri(s: &Syslog) -> String {
    format!("<{}>", u16::from(s.facility) * 8 + u16::from(s.level))
}

fn header_rest(s: &Syslog) -> String {
    let pid = std::process::id();
    match s.format {
        SyslogFormat::Rfc3164 => format!("{}[{pid}]: ", s.tag),
        SyslogFormat::Rfc5424 => format!(" {} {} {pid} - - ", hostname(), s.tag),
    }
}

impl SyslogHeader {
    fn new(s: &Syslog) -> SyslogHeader {
        SyslogHeader {
            format: s.format,
            pri: pri(s),
            rest: header_rest(s),
        }
    }
}

/// The host name for RFC 5424's HOSTNAME (`-` when unknown).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for `buf.len()` bytes; gethostname writes at most that many.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "-".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(buf.get(..end).unwrap_or_default()).into_owned();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        "-".into()
    } else {
        name
    }
}

/// A line cut to [`SYSLOG_MAX`] bytes (on a character boundary).
fn cut(line: &str) -> &[u8] {
    if line.len() <= SYSLOG_MAX {
        return line.as_bytes();
    }
    let mut end = SYSLOG_MAX;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line.get(..end).unwrap_or_default().as_bytes()
}

fn lines_in(b: &[u8]) -> u64 {
    b.iter().filter(|&&c| c == b'\n').count() as u64
}

fn open_append(path: &Path) -> Option<File> {
    match OpenOptions::new().create(true).append(true).open(path) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot open the access-log file; lines are dropped until it can be");
            None
        }
    }
}

/// The writer thread of one file: appends batches, reopens the file when
/// [`reopen`] was called (checked at least every 200 ms), ends when every
/// sender is gone.
fn file_writer(path: &Path, rx: &Receiver<Vec<u8>>) {
    let mut seen = REOPEN.load(Relaxed);
    let mut file = open_append(path);
    loop {
        let batch = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(b) => Some(b),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let now = REOPEN.load(Relaxed);
        if now != seen || (file.is_none() && batch.is_some()) {
            seen = now;
            file = open_append(path);
        }
        if let Some(b) = batch {
            let ok = file.as_mut().is_some_and(|f| f.write_all(&b).is_ok());
            if !ok {
                DROPPED.fetch_add(lines_in(&b), Relaxed);
            }
        }
    }
}
