//! Log-format strings: literal text with `%[fetch,conv...]` interpolated.
//!
//! `%%` is a literal `%`; any other text (including a `%` not followed by
//! `[` or `%`) is copied as is. Strings are parsed once at load time into
//! segments, so rendering is a walk over literals and compiled expressions.
//!
//! Access-log formats ([`LogFormat::parse_log`]) also take HAProxy 2.6's
//! log-format variables (`%ci`, `%Tt`, `%{+Q}r`, ...; [`LogVar`]), rendered
//! from the exchange's [`LogFacts`]; there a fetch with no value is `-`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::fetch::{Expr, parse_expr, read_quoted};
use super::{Env, ParseError};
use crate::txn::Txn;

/// HAProxy's `option httplog` line (2.6), what `log_format = "httplog"` means.
pub const HTTPLOG: &str = "%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc %ac/%fc/%bc/%sc/%rc %sq/%bq %hr %hs %{+Q}r";

/// HAProxy's `option tcplog` line (2.6), what `log_format = "tcplog"` means.
pub const TCPLOG: &str = "%ci:%cp [%t] %ft %b/%s %Tw/%Tc/%Tt %B %ts %ac/%fc/%bc/%sc/%rc %sq/%bq";

/// HAProxy's log-format variables that [`LogFormat::parse_log`] knows, by
/// name; what portcullis cannot provide renders `-` (see docs/CONFIG.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogVar {
    ClientIp,
    ClientPort,
    FrontendIp,
    FrontendPort,
    Frontend,
    FrontendTransport,
    Backend,
    Server,
    ServerIp,
    ServerPort,
    Status,
    BytesRead,
    BytesUploaded,
    /// `%Tt`: total time, accept to end (ms).
    TotalTime,
    /// `%Ta`: active time of the request (ms).
    ActiveTime,
    /// `%Tr`: server response time (ms, -1 without a server response).
    ResponseTime,
    /// `%Tw`: time in the backend queue (ms, -1 if the request never reached it).
    WaitTime,
    /// `%Tc`: time to connect to the server (ms, -1 without a connection).
    ConnectTime,
    /// `%Th`: handshake time (ms; 0: no TLS nor PROXY protocol).
    HandshakeTime,
    /// Times portcullis does not measure (`%TR`, `%Tq`, `%Ti`, `%Td`, `%Tu`).
    Unmeasured,
    Method,
    Uri,
    UriPath,
    UriPathOnly,
    UriQuery,
    Version,
    /// `%r`: `METHOD URI VERSION`.
    Request,
    TermState,
    TermStateCookie,
    /// `%t` / `%tr` / `%trg` / `%trl` / `%Tl`: `06/Dec/2026:04:20:01.123` (UTC).
    Date,
    /// `%T`: `06/Dec/2026:04:20:01 +0000`.
    GmtDate,
    /// `%Ts`: Unix seconds.
    Timestamp,
    /// `%ms`: the accept date's milliseconds, 3 digits.
    Millis,
    Pid,
    Hostname,
    /// Values that do not exist here (captures, unique id, queues, retries,
    /// connection counts, TLS): `-`, or nothing for `%hr`/`%hs` (no captures).
    Dash,
    Empty,
    /// `%ac`/`%fc`/`%bc`/`%sc`/`%rc`/`%sq`/`%bq`/`%lc`/`%rt`: counters we do not keep per line: 0.
    Zero,
}

/// HAProxy 2.6's variable names (longest first where one is a prefix of another).
const VARS: &[(&str, LogVar)] = &[
    ("sslc", LogVar::Dash),
    ("sslv", LogVar::Dash),
    ("HPO", LogVar::UriPathOnly),
    ("hrl", LogVar::Empty),
    ("hsl", LogVar::Empty),
    ("pid", LogVar::Pid),
    ("tsc", LogVar::TermStateCookie),
    ("trg", LogVar::Date),
    ("trl", LogVar::Date),
    ("CC", LogVar::Dash),
    ("CS", LogVar::Dash),
    ("HM", LogVar::Method),
    ("HP", LogVar::UriPath),
    ("HQ", LogVar::UriQuery),
    ("HU", LogVar::Uri),
    ("HV", LogVar::Version),
    ("ID", LogVar::Dash),
    ("ST", LogVar::Status),
    ("Ta", LogVar::ActiveTime),
    ("Tc", LogVar::ConnectTime),
    ("Td", LogVar::Unmeasured),
    ("Th", LogVar::HandshakeTime),
    ("Ti", LogVar::Unmeasured),
    ("Tl", LogVar::Date),
    ("Tq", LogVar::Unmeasured),
    ("TR", LogVar::Unmeasured),
    ("Tr", LogVar::ResponseTime),
    ("Ts", LogVar::Timestamp),
    ("Tt", LogVar::TotalTime),
    ("Tu", LogVar::Unmeasured),
    ("Tw", LogVar::WaitTime),
    ("ac", LogVar::Zero),
    ("bc", LogVar::Zero),
    ("bi", LogVar::Dash),
    ("bp", LogVar::Dash),
    ("bq", LogVar::Zero),
    ("ci", LogVar::ClientIp),
    ("cp", LogVar::ClientPort),
    ("fc", LogVar::Zero),
    ("fi", LogVar::FrontendIp),
    ("fp", LogVar::FrontendPort),
    ("ft", LogVar::FrontendTransport),
    ("hr", LogVar::Empty),
    ("hs", LogVar::Empty),
    ("lc", LogVar::Zero),
    ("ms", LogVar::Millis),
    ("rc", LogVar::Zero),
    ("rt", LogVar::Zero),
    ("sc", LogVar::Zero),
    ("si", LogVar::ServerIp),
    ("sp", LogVar::ServerPort),
    ("sq", LogVar::Zero),
    ("tr", LogVar::Date),
    ("ts", LogVar::TermState),
    ("B", LogVar::BytesRead),
    ("H", LogVar::Hostname),
    ("T", LogVar::GmtDate),
    ("U", LogVar::BytesUploaded),
    ("b", LogVar::Backend),
    ("f", LogVar::Frontend),
    ("r", LogVar::Request),
    ("s", LogVar::Server),
    ("t", LogVar::Date),
];

/// What an access-log line may say about one exchange (filled by the proxy).
#[derive(Debug, Clone, Copy)]
pub struct LogFacts<'a> {
    pub client: SocketAddr,
    pub local: SocketAddr,
    pub frontend: &'a str,
    pub backend: Option<&'a str>,
    pub server: Option<&'a str>,
    pub server_addr: Option<SocketAddr>,
    pub method: &'a str,
    /// The request URI as received (path and query).
    pub uri: &'a str,
    pub version: &'a str,
    pub status: u16,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// When the request started (wall clock).
    pub start: SystemTime,
    pub total: Duration,
    pub upstream: Option<Duration>,
    /// Time in the backend queue (`%Tw`); `None`: never reached it.
    pub queue: Option<Duration>,
    /// Time to connect to the server, 0 on a reused connection (`%Tc`);
    /// `None`: no connection was attempted or it failed.
    pub connect: Option<Duration>,
    /// HAProxy's two termination-state characters (`--`, `CD`, `SC`, `PR`, ...).
    pub term: [u8; 2],
}

/// A pre-compiled log-format string.
#[derive(Debug)]
pub struct LogFormat {
    segs: Box<[Seg]>,
}

#[derive(Debug)]
enum Seg {
    Lit(Box<str>),
    Expr(Expr),
    /// A log-format variable, quoted (`%{+Q}`) or not.
    Var(LogVar, bool),
}

impl LogFormat {
    /// Parses an access-log format: `%[...]` as in [`LogFormat::parse`],
    /// plus HAProxy's `%<var>` and `%{flags}<var>` ([`LogVar`]; the flag
    /// `+Q` quotes the value, other flags are accepted and ignored); the
    /// name `httplog` stands for HAProxy's `option httplog` line, `tcplog`
    /// for its `option tcplog` line.
    pub fn parse_log(text: &str, env: &Env<'_>) -> Result<LogFormat, ParseError> {
        let text = match text {
            "httplog" => HTTPLOG,
            "tcplog" => TCPLOG,
            _ => text,
        };
        let mut segs = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        let mut base = 0;
        loop {
            let Some(pos) = rest.find('%') else {
                lit.push_str(rest);
                break;
            };
            lit.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if after.starts_with('[') || after.starts_with('%') {
                // One parser for `%[...]` and `%%`: the rule-string one, on this piece.
                let close = if after.starts_with('%') {
                    pos + 2
                } else {
                    find_close(rest, pos + 2)?.map(|c| c + 1).ok_or_else(|| {
                        ParseError::new(base + pos, "unclosed %[ ... ]; add the closing ']'")
                    })?
                };
                let piece = LogFormat::parse(&rest[pos..close], env).map_err(|mut e| {
                    e.offset += base + pos;
                    e
                })?;
                for seg in piece.segs {
                    match seg {
                        Seg::Lit(l) => lit.push_str(&l),
                        other => {
                            if !lit.is_empty() {
                                segs.push(Seg::Lit(std::mem::take(&mut lit).into()));
                            }
                            segs.push(other);
                        }
                    }
                }
                base += close;
                rest = &rest[close..];
                continue;
            }
            let (quoted, name_at) = match after.strip_prefix('{') {
                Some(f) => {
                    let end = f.find('}').ok_or_else(|| {
                        ParseError::new(base + pos, "unclosed %{ flags }; add the closing '}'")
                    })?;
                    (f[..end].split('+').any(|x| x == "Q"), pos + 1 + end + 2)
                }
                None => (false, pos + 1),
            };
            let tail = &rest[name_at..];
            let Some((name, var)) = VARS.iter().find(|(n, _)| tail.starts_with(n)) else {
                let word: String = tail
                    .chars()
                    .take_while(char::is_ascii_alphanumeric)
                    .collect();
                return Err(ParseError::new(
                    base + pos,
                    format!(
                        "unknown log-format variable %{word}; expected one of HAProxy's (%ci %cp %fi %fp %ft %b %s %Tr %Ta %Tt %ST %B %U %r %HM %HU %HV %ts %tsc %t %T ...), %[fetch] or %% for a literal %"
                    ),
                ));
            };
            if !lit.is_empty() {
                segs.push(Seg::Lit(std::mem::take(&mut lit).into()));
            }
            let mut next = name_at + name.len();
            if *var == LogVar::Empty {
                // HAProxy writes nothing for captures that are not there, not
                // even the separator after them (`%hr %hs %{+Q}r` with no
                // captures reads `"GET / HTTP/1.1"`).
                if rest.as_bytes().get(next) == Some(&b' ') {
                    next += 1;
                }
            } else {
                segs.push(Seg::Var(*var, quoted));
            }
            base += next;
            rest = &rest[next..];
        }
        if !lit.is_empty() {
            segs.push(Seg::Lit(lit.into()));
        }
        Ok(LogFormat {
            segs: segs.into_boxed_slice(),
        })
    }

    /// Appends an access-log line's text: variables from `facts`, fetches
    /// from `txn` (`-` when absent, as HAProxy logs an empty sample).
    pub fn render_log(&self, txn: Option<&Txn>, facts: &LogFacts<'_>, out: &mut String) {
        for s in &self.segs {
            match s {
                Seg::Lit(l) => out.push_str(l),
                Seg::Expr(e) => match txn.and_then(|t| e.eval(t)) {
                    Some(v) => {
                        let at = out.len();
                        v.write_to(out);
                        if out.len() == at {
                            out.push('-');
                        }
                    }
                    None => out.push('-'),
                },
                Seg::Var(v, quoted) => {
                    if *quoted {
                        out.push('"');
                    }
                    render_var(*v, facts, out);
                    if *quoted {
                        out.push('"');
                    }
                }
            }
        }
    }

    /// Parses `text`; error offsets are byte offsets into `text`.
    pub fn parse(text: &str, env: &Env<'_>) -> Result<LogFormat, ParseError> {
        let b = text.as_bytes();
        let mut segs = Vec::new();
        let mut lit = String::new();
        let mut i = 0;
        let mut lit_start = 0;
        while let Some(pos) = text.get(i..).and_then(|s| s.find('%')).map(|p| p + i) {
            match b.get(pos + 1) {
                Some(b'%') => {
                    lit.push_str(&text[lit_start..=pos]);
                    i = pos + 2;
                    lit_start = i;
                }
                Some(b'[') => {
                    lit.push_str(&text[lit_start..pos]);
                    let close = find_close(text, pos + 2)?.ok_or_else(|| {
                        ParseError::new(pos, "unclosed %[ ... ]; add the closing ']'")
                    })?;
                    let inner = &text[pos + 2..close];
                    if inner.trim().is_empty() {
                        return Err(ParseError::new(
                            pos,
                            "empty %[]; put a fetch inside, e.g. %[path]",
                        ));
                    }
                    if !lit.is_empty() {
                        segs.push(Seg::Lit(std::mem::take(&mut lit).into()));
                    }
                    segs.push(Seg::Expr(parse_expr(
                        inner,
                        pos + 2,
                        env,
                        "in log-format string",
                    )?));
                    i = close + 1;
                    lit_start = i;
                }
                _ => i = pos + 1,
            }
        }
        lit.push_str(&text[lit_start..]);
        if !lit.is_empty() {
            segs.push(Seg::Lit(lit.into()));
        }
        Ok(LogFormat {
            segs: segs.into_boxed_slice(),
        })
    }

    /// Appends the rendered string to `out`; a fetch with no value renders as nothing.
    pub fn render(&self, txn: &Txn, out: &mut String) {
        for s in &self.segs {
            match s {
                Seg::Lit(l) => out.push_str(l),
                Seg::Expr(e) => {
                    if let Some(v) = e.eval(txn) {
                        v.write_to(out);
                    }
                }
                // Only access-log formats have variables.
                Seg::Var(..) => {}
            }
        }
    }

    /// The rendered string, as a new `String`.
    pub fn render_string(&self, txn: &Txn) -> String {
        let mut out = String::new();
        self.render(txn, &mut out);
        out
    }

    /// The text when the string has no `%[...]` (so it can be precomputed).
    pub fn as_literal(&self) -> Option<&str> {
        match &*self.segs {
            [] => Some(""),
            [Seg::Lit(l)] => Some(l),
            _ => None,
        }
    }
}

/// Milliseconds, whole.
fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Appends one variable's value.
fn render_var(v: LogVar, f: &LogFacts<'_>, out: &mut String) {
    let (path, query) = f
        .uri
        .split_once('?')
        .map_or((f.uri, None), |(p, q)| (p, Some(q)));
    let _ = match v {
        LogVar::ClientIp => write!(out, "{}", f.client.ip().to_canonical()),
        LogVar::ClientPort => write!(out, "{}", f.client.port()),
        LogVar::FrontendIp => write!(out, "{}", f.local.ip().to_canonical()),
        LogVar::FrontendPort => write!(out, "{}", f.local.port()),
        LogVar::Frontend | LogVar::FrontendTransport => write!(out, "{}", f.frontend),
        LogVar::Backend => write!(out, "{}", f.backend.unwrap_or(f.frontend)),
        LogVar::Server => write!(out, "{}", f.server.unwrap_or("<NOSRV>")),
        LogVar::ServerIp => match f.server_addr {
            Some(a) => write!(out, "{}", a.ip()),
            None => write!(out, "-"),
        },
        LogVar::ServerPort => match f.server_addr {
            Some(a) => write!(out, "{}", a.port()),
            None => write!(out, "-"),
        },
        LogVar::Status => write!(out, "{}", f.status),
        LogVar::BytesRead => write!(out, "{}", f.bytes_out),
        LogVar::BytesUploaded => write!(out, "{}", f.bytes_in),
        LogVar::TotalTime | LogVar::ActiveTime => write!(out, "{}", ms(f.total)),
        LogVar::ResponseTime => match f.upstream {
            Some(d) => write!(out, "{}", ms(d)),
            None => write!(out, "-1"),
        },
        LogVar::WaitTime => match f.queue {
            Some(d) => write!(out, "{}", ms(d)),
            None => write!(out, "-1"),
        },
        LogVar::ConnectTime => match f.connect {
            Some(d) => write!(out, "{}", ms(d)),
            None => write!(out, "-1"),
        },
        LogVar::HandshakeTime | LogVar::Zero => write!(out, "0"),
        LogVar::Unmeasured | LogVar::Dash => write!(out, "-"),
        LogVar::Empty => Ok(()),
        LogVar::Method => write!(out, "{}", f.method),
        LogVar::Uri => write!(out, "{}", f.uri),
        LogVar::UriPath | LogVar::UriPathOnly => write!(out, "{path}"),
        LogVar::UriQuery => match query {
            Some(q) => write!(out, "?{q}"),
            None => Ok(()),
        },
        LogVar::Version => write!(out, "{}", f.version),
        LogVar::Request => write!(out, "{} {} {}", f.method, f.uri, f.version),
        LogVar::TermState => write!(out, "{}{}", char::from(f.term[0]), char::from(f.term[1])),
        LogVar::TermStateCookie => {
            write!(out, "{}{}--", char::from(f.term[0]), char::from(f.term[1]))
        }
        LogVar::Date => {
            write_date(out, f.start, true);
            Ok(())
        }
        LogVar::GmtDate => {
            write_date(out, f.start, false);
            out.push_str(" +0000");
            Ok(())
        }
        LogVar::Timestamp => write!(out, "{}", unix(f.start).as_secs()),
        LogVar::Millis => write!(out, "{:03}", unix(f.start).subsec_millis()),
        LogVar::Pid => write!(out, "{}", std::process::id()),
        LogVar::Hostname => write!(out, "{}", hostname()),
    };
}

fn unix(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// HAProxy's log date `06/Dec/2026:04:20:01` (UTC), with `.mmm` if `millis`.
fn write_date(out: &mut String, t: SystemTime, millis: bool) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let d = unix(t);
    // humantime: `2026-12-06T04:20:01Z`.
    let iso = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(d.as_secs()))
        .to_string();
    let month = iso
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .copied()
        .unwrap_or("Jan");
    let _ = write!(
        out,
        "{}/{month}/{}:{}",
        iso.get(8..10).unwrap_or("01"),
        iso.get(0..4).unwrap_or("1970"),
        iso.get(11..19).unwrap_or("00:00:00")
    );
    if millis {
        let _ = write!(out, ".{:03}", d.subsec_millis());
    }
}

/// The host name (`%H`), read once.
fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".to_string())
    })
}

/// Finds the `]` closing a `%[` whose content starts at `from`, skipping
/// quoted arguments and nested brackets (e.g. in a regex character class).
fn find_close(text: &str, from: usize) -> Result<Option<usize>, ParseError> {
    let b = text.as_bytes();
    let (mut i, mut depth) = (from, 0usize);
    while let Some(&c) = b.get(i) {
        match c {
            b'"' | b'\'' => {
                i = read_quoted(text, i, 0)?.1;
                continue;
            }
            b'[' => depth += 1,
            b']' if depth == 0 => return Ok(Some(i)),
            b']' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::tests::{ctx_parts, txn};
    use crate::txn::Phase;
    use std::time::{Duration, UNIX_EPOCH};

    fn parse(text: &str) -> Result<LogFormat, ParseError> {
        let (_, backends) = ctx_parts();
        let cx = crate::rules::CompileCtx {
            backends: &backends,
            plugins: crate::rules::ext::Extensions::empty(),
            tables: crate::stick::StickTables::none(),
            resolvers: crate::resolve::Resolvers::none(),
        };
        let env = Env {
            ctx: &cx,
            phase: Phase::Request,
        };
        LogFormat::parse(text, &env)
    }

    fn render(text: &str, t: &Txn) -> String {
        parse(text).expect("log-format parses").render_string(t)
    }

    #[test]
    fn renders_literals_fetches_and_percent() {
        let mut t = txn("/a/b?x=1");
        t.req_headers
            .insert("host", "example.com".parse().expect("hv"));
        assert_eq!(render("plain text", &t), "plain text");
        assert_eq!(render("", &t), "");
        assert_eq!(render("100%% sure, 5% off", &t), "100% sure, 5% off");
        assert_eq!(
            render("https://%[hdr(host)]%[path]", &t),
            "https://example.com/a/b"
        );
        assert_eq!(
            render("[%[method]] %[src]:%[src_port]", &t),
            "[GET] 10.1.2.3:5555"
        );
        assert_eq!(render("x=%[hdr(none)]!", &t), "x=!");
        assert_eq!(render("%[path,regsub([ab],_,g)]", &t), "/_/_");
        assert_eq!(render("%[str(']'),length]", &t), "1");
        assert_eq!(render("%[ path , upper ]", &t), "/A/B");
        assert_eq!(render("%%[path]", &t), "%[path]");
        assert_eq!(render("end%", &t), "end%");
        assert_eq!(render("é%[path]ü", &t), "é/a/bü");
    }

    fn facts() -> LogFacts<'static> {
        LogFacts {
            client: "10.0.0.1:5555".parse().expect("addr"),
            local: "127.0.0.1:8080".parse().expect("addr"),
            frontend: "web",
            backend: None,
            server: None,
            server_addr: None,
            method: "GET",
            uri: "/a?b=1",
            version: "HTTP/1.1",
            status: 403,
            bytes_out: 12,
            bytes_in: 0,
            start: UNIX_EPOCH + Duration::from_millis(1_765_000_000_123),
            total: Duration::from_micros(2_700),
            upstream: None,
            queue: None,
            connect: None,
            term: *b"PR",
        }
    }

    fn log_line(text: &str) -> String {
        let (_, backends) = ctx_parts();
        let cx = crate::rules::CompileCtx {
            backends: &backends,
            plugins: crate::rules::ext::Extensions::empty(),
            tables: crate::stick::StickTables::none(),
            resolvers: crate::resolve::Resolvers::none(),
        };
        let env = Env {
            ctx: &cx,
            phase: Phase::Response,
        };
        let f = LogFormat::parse_log(text, &env).expect("log format parses");
        let mut out = String::new();
        f.render_log(None, &facts(), &mut out);
        out
    }

    #[test]
    fn log_formats_render_haproxy_variables() {
        assert_eq!(
            log_line("httplog"),
            "10.0.0.1:5555 [06/Dec/2025:05:46:40.123] web web/<NOSRV> -/-1/-1/-1/2 403 12 - - PR-- 0/0/0/0/0 0/0 \"GET /a?b=1 HTTP/1.1\""
        );
        assert_eq!(
            log_line("%ci %{+Q}HU %HP|%HQ %T %Ts.%ms %tsc %% %[str(x)] %[var(txn.none)]"),
            "10.0.0.1 \"/a?b=1\" /a|?b=1 06/Dec/2025:05:46:40 +0000 1765000000.123 PR-- % - -"
        );
        let (_, backends) = ctx_parts();
        let cx = crate::rules::CompileCtx {
            backends: &backends,
            plugins: crate::rules::ext::Extensions::empty(),
            tables: crate::stick::StickTables::none(),
            resolvers: crate::resolve::Resolvers::none(),
        };
        let env = Env {
            ctx: &cx,
            phase: Phase::Response,
        };
        let e = LogFormat::parse_log("ab %zz", &env).expect_err("unknown");
        assert_eq!(e.offset, 3);
        assert!(
            e.message.contains("unknown log-format variable %zz"),
            "{}",
            e.message
        );
        let e = LogFormat::parse_log("%ci %[pth]", &env).expect_err("unknown fetch");
        assert_eq!(e.offset, 6);
        // Rule strings keep `%ci` literal.
        assert_eq!(parse("%ci").expect("ok").as_literal(), Some("%ci"));
    }

    #[test]
    fn literal_detection() {
        assert_eq!(parse("abc").expect("ok").as_literal(), Some("abc"));
        assert_eq!(parse("a%%b").expect("ok").as_literal(), Some("a%b"));
        assert_eq!(parse("").expect("ok").as_literal(), Some(""));
        assert_eq!(parse("%[path]").expect("ok").as_literal(), None);
    }

    #[test]
    fn errors_are_located() {
        let e = parse("x %[path").expect_err("unclosed");
        assert_eq!(e.offset, 2);
        let e = parse("ab%[]").expect_err("empty");
        assert_eq!(e.offset, 2);
        let e = parse("abc%[pth]").expect_err("unknown");
        assert_eq!(e.offset, 5);
        assert_eq!(
            e.message,
            "unknown fetch \"pth\" in log-format string; did you mean \"path\"?"
        );
        let e = parse("%[path,lower(1)]").expect_err("arity");
        assert_eq!(e.offset, 7);
        let e = parse("%[path,regsub('x,y)]").expect_err("quote");
        assert_eq!(e.offset, 14);
    }
}
