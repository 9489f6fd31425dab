//! In front of hostile clients and servers (issue #14): one table of raw
//! inputs, each with what the client must get and what the server must
//! receive, run through the real binary with a raw backend that records the
//! bytes it reads. Each row is its own test (see `rows!` at the end).
//!
//! The proxy for every row has these rules: requests for `admin.example`,
//! an `X-Role` naming `admin`, an `X-Agent` line `evil-bot` or a first
//! `X-Pos` value `first` are denied (403); every request gets `X-Rule`, every
//! response `X-Resp-Rule`.

mod common;

use std::time::Duration;

use common::*;
use http::{Request, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const RULES: &str = r#"http_request = [
  { deny = 403, if = "hdr(host) -i admin.example" },
  { deny = 403, if = "hdr(x-role) -m str admin" },
  { deny = 403, if = "fhdr(x-agent) -m str evil-bot" },
  { deny = 403, if = "hdr(x-pos,1) -m str first" },
  { set_header = "X-Rule", value = "from-rule" },
]
http_response = [
  { set_header = "X-Resp-Rule", value = "from-rule" },
]"#;

/// What the client sends.
enum Send {
    /// These bytes on a fresh HTTP/1.1 connection.
    Raw(&'static str),
    /// One h2c request to `uri` (its authority is `:authority`) with extra headers.
    H2 {
        uri: &'static str,
        headers: &'static [(&'static str, &'static str)],
    },
}

/// What the server writes back to each complete request it reads.
enum Reply {
    Raw(&'static str),
    /// A 200 whose head carries one `X-Big` header of this many bytes.
    BigHead(usize),
    /// A 200 with this many `X-H<n>` headers.
    ManyHeaders(usize),
}

const OK: Reply = Reply::Raw("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");

/// What the server must have received.
enum Upstream {
    /// Not one byte: the proxy answered by itself.
    Nothing,
    /// No complete request (the proxy may have started one and aborted it).
    NoCompleteRequest,
    /// Exactly one request, for `target`, with these header values (each
    /// list complete, in order; `&[]`: absent) and this body.
    One {
        target: &'static str,
        headers: &'static [(&'static str, &'static [&'static str])],
        body: &'static str,
    },
}

/// One row: input, and the outcome on both sides.
struct Case {
    name: &'static str,
    send: Send,
    reply: Reply,
    /// The status the client gets.
    status: u16,
    /// The client's response body, when it matters (framing).
    body: Option<&'static str>,
    /// Response headers the client must get (`Some`) or must not get (`None`).
    resp_headers: &'static [(&'static str, Option<&'static str>)],
    /// The proxy closes the client connection after its response.
    closes: bool,
    upstream: Upstream,
}

/// A row where the client's raw request is refused with `status` and the
/// server gets nothing.
const fn refused(name: &'static str, raw: &'static str, status: u16) -> Case {
    Case {
        name,
        send: Send::Raw(raw),
        reply: OK,
        status,
        body: None,
        resp_headers: &[],
        closes: true,
        upstream: Upstream::Nothing,
    }
}

/// A row where `send` is forwarded as one request for `target` with `headers`.
const fn forwarded(
    name: &'static str,
    send: Send,
    target: &'static str,
    headers: &'static [(&'static str, &'static [&'static str])],
) -> Case {
    Case {
        name,
        send,
        reply: OK,
        status: 200,
        body: None,
        resp_headers: &[],
        closes: false,
        upstream: Upstream::One {
            target,
            headers,
            body: "",
        },
    }
}

/// A row where `send` is denied by a rule (403) and the server gets nothing.
const fn denied(name: &'static str, send: Send) -> Case {
    Case {
        name,
        send,
        reply: OK,
        status: 403,
        body: None,
        resp_headers: &[],
        closes: false,
        upstream: Upstream::Nothing,
    }
}

/// A row where the server's `reply` to `GET /a` gives the client `status`.
const fn server_reply(name: &'static str, reply: Reply, status: u16) -> Case {
    Case {
        name,
        send: Send::Raw("GET /a HTTP/1.1\r\nHost: public.example\r\n\r\n"),
        reply,
        status,
        body: None,
        resp_headers: &[],
        closes: false,
        upstream: Upstream::One {
            target: "/a",
            headers: &[],
            body: "",
        },
    }
}

const fn raw(r: &'static str) -> Send {
    Send::Raw(r)
}

static CASES: &[Case] = &[
    // --- 1. Rules see the host the server will see -------------------------
    denied(
        "h2_authority_is_the_host_rules_see",
        Send::H2 {
            uri: "http://admin.example/a",
            headers: &[],
        },
    ),
    denied(
        "h2_host_header_cannot_hide_the_authority",
        Send::H2 {
            uri: "http://admin.example/a",
            headers: &[("host", "public.example")],
        },
    ),
    forwarded(
        "h2_authority_replaces_the_host_header",
        Send::H2 {
            uri: "http://public.example/a",
            headers: &[("host", "admin.example")],
        },
        "/a",
        &[("host", &["public.example"])],
    ),
    refused(
        "differing_host_lines_are_400",
        "GET /a HTTP/1.1\r\nHost: admin.example\r\nHost: public.example\r\n\r\n",
        400,
    ),
    forwarded(
        "identical_host_lines_are_merged",
        raw("GET /a HTTP/1.1\r\nHost: public.example\r\nHost: Public.Example\r\n\r\n"),
        "/a",
        &[("host", &["public.example"])],
    ),
    refused(
        "host_list_is_400",
        "GET /a HTTP/1.1\r\nHost: admin.example, public.example\r\n\r\n",
        400,
    ),
    refused(
        "host_with_user_info_is_400",
        "GET /a HTTP/1.1\r\nHost: public.example@admin.example\r\n\r\n",
        400,
    ),
    denied(
        "absolute_uri_authority_is_the_host_rules_see",
        raw("GET http://admin.example/a HTTP/1.1\r\n\r\n"),
    ),
    denied(
        "absolute_uri_default_port_is_dropped",
        raw("GET http://Admin.Example:80/a HTTP/1.1\r\n\r\n"),
    ),
    refused(
        "absolute_uri_and_other_host_is_400",
        "GET http://admin.example/a HTTP/1.1\r\nHost: public.example\r\n\r\n",
        400,
    ),
    refused(
        "absolute_uri_with_user_info_is_400",
        "GET http://public.example@admin.example/a HTTP/1.1\r\n\r\n",
        400,
    ),
    forwarded(
        "absolute_uri_goes_upstream_in_origin_form",
        raw("GET http://public.example:8080/a?q=1 HTTP/1.1\r\nHost: public.example:8080\r\n\r\n"),
        "/a?q=1",
        &[("host", &["public.example:8080"])],
    ),
    forwarded(
        "absolute_uri_normalizes_a_default_port_host",
        raw("GET http://public.example/a HTTP/1.1\r\nHost: public.example:80\r\n\r\n"),
        "/a",
        &[("host", &["public.example"])],
    ),
    // --- 1. ACL terms test every value of a header --------------------------
    denied(
        "header_condition_tests_every_value",
        raw("GET /a HTTP/1.1\r\nHost: public.example\r\nX-Role: admin, user\r\n\r\n"),
    ),
    denied(
        "header_condition_tests_every_line",
        raw("GET /a HTTP/1.1\r\nHost: public.example\r\nX-Role: admin\r\nX-Role: user\r\n\r\n"),
    ),
    denied(
        "full_header_condition_tests_every_line",
        raw(
            "GET /a HTTP/1.1\r\nHost: public.example\r\nX-Agent: evil-bot\r\nX-Agent: curl\r\n\r\n",
        ),
    ),
    forwarded(
        "full_header_condition_does_not_split_values",
        raw("GET /a HTTP/1.1\r\nHost: public.example\r\nX-Agent: curl, evil-bot\r\n\r\n"),
        "/a",
        &[("x-agent", &["curl, evil-bot"])],
    ),
    forwarded(
        "header_occurrence_tests_that_value_only",
        raw("GET /a HTTP/1.1\r\nHost: public.example\r\nX-Pos: other, first\r\n\r\n"),
        "/a",
        &[("x-pos", &["other, first"])],
    ),
    // --- 2. Connection options cannot remove what rules or the proxy add ----
    forwarded(
        "connection_cannot_remove_host",
        raw("GET /a HTTP/1.1\r\nHost: public.example\r\nConnection: Host\r\n\r\n"),
        "/a",
        &[("host", &["public.example"])],
    ),
    forwarded(
        "connection_cannot_remove_forwarding_headers",
        raw(
            "GET /a HTTP/1.1\r\nHost: public.example\r\nConnection: X-Forwarded-For, X-Forwarded-Proto\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n",
        ),
        "/a",
        &[
            ("x-forwarded-for", &["127.0.0.1"]),
            ("x-forwarded-proto", &["http"]),
        ],
    ),
    forwarded(
        "connection_cannot_remove_rule_headers",
        raw("GET /a HTTP/1.1\r\nHost: public.example\r\nConnection: X-Rule\r\n\r\n"),
        "/a",
        &[("x-rule", &["from-rule"])],
    ),
    forwarded(
        "connection_options_of_the_client_are_removed",
        raw(
            "GET /a HTTP/1.1\r\nHost: public.example\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\n\r\n",
        ),
        "/a",
        &[("x-private", &[]), ("connection", &[]), ("keep-alive", &[])],
    ),
    Case {
        resp_headers: &[("x-resp-rule", Some("from-rule")), ("x-srv-private", None)],
        ..server_reply(
            "server_connection_cannot_remove_response_rule_headers",
            Reply::Raw(
                "HTTP/1.1 200 OK\r\nConnection: X-Resp-Rule, X-Srv-Private\r\nX-Resp-Rule: server\r\nX-Srv-Private: 1\r\ncontent-length: 2\r\n\r\nok",
            ),
            200,
        )
    },
    // --- 3. CONNECT and unrequested upgrades --------------------------------
    refused(
        "connect_is_405",
        "CONNECT public.example:443 HTTP/1.1\r\nHost: public.example:443\r\n\r\n",
        405,
    ),
    server_reply(
        "switching_protocols_without_upgrade_is_502",
        Reply::Raw(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        ),
        502,
    ),
    // --- 4. Server framing: chunked wins over Content-Length ----------------
    Case {
        body: Some("hello world!"),
        resp_headers: &[("content-length", None)],
        ..server_reply(
            "server_length_and_chunked_is_reframed",
            Reply::Raw(
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nc\r\nhello world!\r\n0\r\n\r\n",
            ),
            200,
        )
    },
    // --- 5. Server heads are bounded like request heads (16KiB, 50 fields) --
    server_reply(
        "server_head_over_max_header_size_is_502",
        Reply::BigHead(20 * 1024),
        502,
    ),
    server_reply(
        "server_head_within_max_header_size_passes",
        Reply::BigHead(10 * 1024),
        200,
    ),
    server_reply(
        "server_head_over_max_headers_is_502",
        Reply::ManyHeaders(60),
        502,
    ),
    // --- Request smuggling: refused today, must stay refused ---------------
    Case {
        closes: true,
        upstream: Upstream::One {
            target: "/a",
            headers: &[("content-length", &[])],
            body: "hello",
        },
        ..forwarded(
            "request_length_and_chunked_chunked_wins_and_closes",
            raw(
                "POST /a HTTP/1.1\r\nHost: public.example\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            ),
            "/a",
            &[],
        )
    },
    Case {
        closes: true,
        upstream: Upstream::One {
            target: "/a",
            headers: &[],
            body: "",
        },
        ..forwarded(
            "request_length_and_chunked_cannot_smuggle",
            raw(
                "POST /a HTTP/1.1\r\nHost: public.example\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
            "/a",
            &[],
        )
    },
    refused(
        "differing_content_lengths_are_400",
        "POST /a HTTP/1.1\r\nHost: public.example\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    refused(
        "content_length_list_is_400",
        "POST /a HTTP/1.1\r\nHost: public.example\r\nContent-Length: 5, 6\r\n\r\nhello!",
        400,
    ),
    refused(
        "signed_content_length_is_400",
        "POST /a HTTP/1.1\r\nHost: public.example\r\nContent-Length: +5\r\n\r\nhello",
        400,
    ),
    refused(
        "obs_fold_is_400",
        "GET /a HTTP/1.1\r\nHost: public.example\r\nX-Folded: a\r\n b\r\n\r\n",
        400,
    ),
    refused(
        "obs_fold_transfer_encoding_is_400",
        "POST /a HTTP/1.1\r\nHost: public.example\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    refused(
        "chunked_then_identity_is_400",
        "POST /a HTTP/1.1\r\nHost: public.example\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        400,
    ),
    refused(
        "chunked_line_then_identity_line_is_400",
        "POST /a HTTP/1.1\r\nHost: public.example\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
        400,
    ),
    refused(
        "unknown_transfer_coding_is_400",
        "POST /a HTTP/1.1\r\nHost: public.example\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    refused(
        "transfer_encoding_in_http10_is_400",
        "POST /a HTTP/1.0\r\nHost: public.example\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    refused(
        "space_before_colon_is_400",
        "GET /a HTTP/1.1\r\nHost : admin.example\r\n\r\n",
        400,
    ),
    refused(
        "space_before_colon_in_transfer_encoding_is_400",
        "POST /a HTTP/1.1\r\nHost: public.example\r\nContent-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    refused(
        "nul_in_header_value_is_400",
        "GET /a HTTP/1.1\r\nHost: public.example\r\nX-A: a\0b\r\n\r\n",
        400,
    ),
    Case {
        upstream: Upstream::NoCompleteRequest,
        ..refused(
            "bad_chunk_size_is_400",
            "POST /a HTTP/1.1\r\nHost: public.example\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            400,
        )
    },
    Case {
        upstream: Upstream::NoCompleteRequest,
        ..refused(
            "overflowing_chunk_size_is_400",
            "POST /a HTTP/1.1\r\nHost: public.example\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF5\r\nhello\r\n0\r\n\r\n",
            400,
        )
    },
];

/// The server's reply bytes.
fn reply_bytes(r: &Reply) -> Vec<u8> {
    match r {
        Reply::Raw(s) => s.as_bytes().to_vec(),
        Reply::BigHead(n) => format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\ncontent-length: 2\r\n\r\nok",
            "b".repeat(*n)
        )
        .into_bytes(),
        Reply::ManyHeaders(n) => {
            let mut s = String::from("HTTP/1.1 200 OK\r\n");
            for i in 0..*n {
                s.push_str(&format!("X-H{i}: {i}\r\n"));
            }
            s.push_str("content-length: 2\r\n\r\nok");
            s.into_bytes()
        }
    }
}

/// What the client got.
struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Whether the proxy closed the connection after the response (HTTP/1.1 only).
    closed: Option<bool>,
}

async fn send(case: &Case, web: std::net::SocketAddr) -> Got {
    match &case.send {
        Send::Raw(bytes) => {
            let mut s = within("connect", IO_TIMEOUT, TcpStream::connect(web))
                .await
                .expect("connect to the proxy");
            within("write", IO_TIMEOUT, s.write_all(bytes.as_bytes()))
                .await
                .expect("write the request");
            let r = read_response(&mut s, IO_TIMEOUT)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            // Only waited for where it matters: a kept connection waits it out.
            let closed = if case.closes {
                Some(wait_closed(&mut s, Duration::from_secs(2)).await)
            } else {
                None
            };
            Got {
                status: r.status,
                headers: r.headers,
                body: r.body,
                closed,
            }
        }
        Send::H2 { uri, headers } => {
            let mut c = H2::connect(web).await;
            let mut b = Request::builder().version(Version::HTTP_2).uri(*uri);
            for (n, v) in *headers {
                b = b.header(*n, *v);
            }
            let r = c.send(b.body(empty()).expect("request")).await;
            Got {
                status: r.status.as_u16(),
                headers: r
                    .headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                    .collect(),
                body: r.body.to_vec(),
                closed: None,
            }
        }
    }
}

/// Runs one row and returns what went wrong, if anything.
async fn run(case: &Case) -> Vec<String> {
    let server = RawBackend::start(reply_bytes(&case.reply)).await;
    let ports = Ports::new();
    let cfg = format!(
        "{}{}{}",
        global_section(ports.admin, &[]),
        frontend_section("web", ports.web, "app", RULES),
        backend_section("app", "roundrobin", &[("s1", server.addr, 1)], "")
    );
    let _daemon = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let got = send(case, ports.web).await;

    let mut errors = Vec::new();
    if got.status != case.status {
        errors.push(format!(
            "client got status {}, expected {} (body {:?})",
            got.status,
            case.status,
            String::from_utf8_lossy(&got.body)
        ));
    }
    if let Some(body) = case.body
        && got.body != body.as_bytes()
    {
        errors.push(format!(
            "client got body {:?}, expected {body:?}",
            String::from_utf8_lossy(&got.body)
        ));
    }
    for (name, want) in case.resp_headers {
        let have = got
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        if have != *want {
            errors.push(format!(
                "client got header {name}: {have:?}, expected {want:?}"
            ));
        }
    }
    if case.closes && got.closed == Some(false) {
        errors.push("the client connection stayed open".into());
    }

    let requests = server.requests();
    match &case.upstream {
        Upstream::Nothing => {
            let bytes = server.received();
            if !bytes.is_empty() {
                errors.push(format!(
                    "server received {:?}, expected nothing",
                    String::from_utf8_lossy(&bytes)
                ));
            }
        }
        Upstream::NoCompleteRequest => {
            if !requests.is_empty() {
                errors.push(format!(
                    "server received requests {requests:?}, expected none"
                ));
            }
        }
        Upstream::One {
            target,
            headers,
            body,
        } => match requests.as_slice() {
            [r] => {
                if r.target() != *target {
                    errors.push(format!(
                        "server got target {:?}, expected {target:?}",
                        r.target()
                    ));
                }
                for (name, want) in *headers {
                    let have = r.header_all(name);
                    if have != *want {
                        errors.push(format!("server got {name}: {have:?}, expected {want:?}"));
                    }
                }
                if r.body != body.as_bytes() {
                    errors.push(format!(
                        "server got body {:?}, expected {body:?}",
                        String::from_utf8_lossy(&r.body)
                    ));
                }
            }
            other => errors.push(format!(
                "server got {} requests, expected one: {other:?}",
                other.len()
            )),
        },
    }
    errors
}

async fn run_named(name: &str) {
    let case = CASES
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no row named {name}"));
    let errors = within("row", Duration::from_secs(30), run(case)).await;
    assert!(errors.is_empty(), "{name}:\n  {}", errors.join("\n  "));
}

/// One test per row, so each shows up (and fails) on its own.
macro_rules! rows {
    ($($name:ident)*) => {
        const ROW_TESTS: &[&str] = &[$(stringify!($name)),*];
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                run_named(stringify!($name)).await;
            }
        )*
    };
}

rows! {
    h2_authority_is_the_host_rules_see
    h2_host_header_cannot_hide_the_authority
    h2_authority_replaces_the_host_header
    differing_host_lines_are_400
    identical_host_lines_are_merged
    host_list_is_400
    host_with_user_info_is_400
    absolute_uri_authority_is_the_host_rules_see
    absolute_uri_default_port_is_dropped
    absolute_uri_and_other_host_is_400
    absolute_uri_with_user_info_is_400
    absolute_uri_goes_upstream_in_origin_form
    absolute_uri_normalizes_a_default_port_host
    header_condition_tests_every_value
    header_condition_tests_every_line
    full_header_condition_tests_every_line
    full_header_condition_does_not_split_values
    header_occurrence_tests_that_value_only
    connection_cannot_remove_host
    connection_cannot_remove_forwarding_headers
    connection_cannot_remove_rule_headers
    connection_options_of_the_client_are_removed
    server_connection_cannot_remove_response_rule_headers
    connect_is_405
    switching_protocols_without_upgrade_is_502
    server_length_and_chunked_is_reframed
    server_head_over_max_header_size_is_502
    server_head_within_max_header_size_passes
    server_head_over_max_headers_is_502
    request_length_and_chunked_chunked_wins_and_closes
    request_length_and_chunked_cannot_smuggle
    differing_content_lengths_are_400
    content_length_list_is_400
    signed_content_length_is_400
    obs_fold_is_400
    obs_fold_transfer_encoding_is_400
    chunked_then_identity_is_400
    chunked_line_then_identity_line_is_400
    unknown_transfer_coding_is_400
    transfer_encoding_in_http10_is_400
    space_before_colon_is_400
    space_before_colon_in_transfer_encoding_is_400
    nul_in_header_value_is_400
    bad_chunk_size_is_400
    overflowing_chunk_size_is_400
}

#[test]
fn every_row_has_exactly_one_test() {
    let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    names.sort_unstable();
    let mut tests = ROW_TESTS.to_vec();
    tests.sort_unstable();
    assert_eq!(names, tests, "CASES and rows! must list the same names");
}
