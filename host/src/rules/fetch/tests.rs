//! Unit tests of fetch expressions: call splitting, the fetches, the converters (with the
//! encoders' edge cases) and the error messages.

use std::borrow::Cow;

use super::converters::haproxy_subst;
use super::*;
use crate::rules::tests::{ctx_parts, txn};
use crate::rules::{Env, ParseError};
use crate::txn::{BackendChoice, Phase, Sample, Txn, VarScope};

fn eval_in(text: &str, t: &Txn, phase: Phase) -> Option<Sample> {
    let (_, backends) = ctx_parts();
    let cx = crate::rules::CompileCtx {
        backends: &backends,
        plugins: crate::rules::ext::Extensions::empty(),
        tables: crate::stick::StickTables::none(),
        resolvers: crate::resolve::Resolvers::none(),
    };
    let env = Env { ctx: &cx, phase };
    let e = parse_expr(text, 0, &env, "in expression").expect("expression parses");
    e.eval(t).map(Value::into_sample)
}

fn eval(text: &str, t: &Txn) -> Option<Sample> {
    eval_in(text, t, Phase::Request)
}

fn s(x: &str) -> Option<Sample> {
    Some(Sample::Str(x.to_string()))
}

fn err(text: &str, phase: Phase) -> ParseError {
    let (_, backends) = ctx_parts();
    let cx = crate::rules::CompileCtx {
        backends: &backends,
        plugins: crate::rules::ext::Extensions::empty(),
        tables: crate::stick::StickTables::none(),
        resolvers: crate::resolve::Resolvers::none(),
    };
    let env = Env { ctx: &cx, phase };
    parse_expr(text, 0, &env, "in expression").expect_err("expression is rejected")
}

#[test]
fn split_calls_handles_args_quotes_and_nesting() {
    let c = split_calls("regsub(\"a,b\",'x)'),field(1, :), lower", 0).expect("ok");
    assert_eq!(c.len(), 3);
    assert_eq!(c[0].args[0].text, "a,b");
    assert_eq!(c[0].args[1].text, "x)");
    assert_eq!(c[1].args[1].text, ":");
    assert_eq!(c[2].name, "lower");
    assert_eq!(c[2].offset, 32);
    let c = split_calls("regsub(^/(a|b)/,/)", 0).expect("ok");
    assert_eq!(c[0].args[0].text, "^/(a|b)/");
    let e = split_calls("hdr(host", 10).expect_err("unclosed");
    assert_eq!(e.offset, 13);
    let e = split_calls("path lower", 0).expect_err("space");
    assert!(e.message.contains("chained with ','"), "{}", e.message);
    let e = split_calls("path,", 0).expect_err("trailing comma");
    assert!(e.message.contains("converter name"));
    let e = split_calls("hdr(\"x)", 0).expect_err("unterminated");
    assert_eq!(e.offset, 4);
}

#[test]
fn basic_fetches() {
    let mut t = txn("/a/b?x=1&y=two");
    t.req_headers
        .insert("host", "Example.com".parse().expect("hv"));
    assert_eq!(eval("path", &t), s("/a/b"));
    assert_eq!(eval("pathq", &t), s("/a/b?x=1&y=two"));
    assert_eq!(eval("url", &t), s("/a/b?x=1&y=two"));
    assert_eq!(eval("query", &t), s("x=1&y=two"));
    assert_eq!(eval("url_param(y)", &t), s("two"));
    assert_eq!(eval("urlp(z)", &t), None);
    assert_eq!(eval("base", &t), s("Example.com/a/b"));
    assert_eq!(eval("method", &t), s("GET"));
    assert_eq!(
        eval("src", &t),
        Some(Sample::Ip("10.1.2.3".parse().expect("ip")))
    );
    assert_eq!(eval("src_port", &t), Some(Sample::Int(5555)));
    assert_eq!(eval("dst_port", &t), Some(Sample::Int(8080)));
    assert_eq!(
        eval("dst", &t),
        Some(Sample::Ip("127.0.0.1".parse().expect("ip")))
    );
    assert_eq!(eval("fe_name", &t), s("test"));
    assert_eq!(eval("req.ver", &t), s("1.1"));
    assert_eq!(eval("http_version", &t), s("1.1"));
    assert_eq!(eval("int(-7)", &t), Some(Sample::Int(-7)));
    assert_eq!(eval("str('a b')", &t), s("a b"));
    assert_eq!(eval("always_true", &t), Some(Sample::Bool(true)));
    assert_eq!(eval("always_false", &t), Some(Sample::Bool(false)));
    assert!(matches!(eval("date", &t), Some(Sample::Int(n)) if n > 1_600_000_000));
    assert_eq!(eval("query", &txn("/")), None);
}

#[test]
fn header_fetches() {
    let mut t = txn("/");
    t.req_headers.append("x-list", "a, b".parse().expect("hv"));
    t.req_headers
        .append("x-list", "\"c,d\", e".parse().expect("hv"));
    t.req_headers.append("x-empty", "".parse().expect("hv"));
    t.req_headers
        .append("x-ip", "192.0.2.7:443".parse().expect("hv"));
    t.req_headers
        .append("cookie", "a=1; sid=abc".parse().expect("hv"));
    t.req_headers
        .append("cookie", "sid=last".parse().expect("hv"));
    assert_eq!(eval("hdr(x-list)", &t), s("e"));
    assert_eq!(eval("hdr(X-List,1)", &t), s("a"));
    assert_eq!(eval("hdr(x-list,3)", &t), s("\"c,d\""));
    assert_eq!(eval("hdr(x-list,-2)", &t), s("\"c,d\""));
    assert_eq!(eval("hdr(x-list,5)", &t), None);
    assert_eq!(eval("req.hdr(x-list,2)", &t), s("b"));
    assert_eq!(eval("req.fhdr(x-list)", &t), s("\"c,d\", e"));
    assert_eq!(eval("req.fhdr(x-list,1)", &t), s("a, b"));
    assert_eq!(eval("hdr(x-empty)", &t), s(""));
    assert_eq!(eval("hdr(x-missing)", &t), None);
    assert_eq!(eval("hdr_cnt(x-list)", &t), Some(Sample::Int(4)));
    assert_eq!(eval("hdr_cnt(x-missing)", &t), Some(Sample::Int(0)));
    // No name: every comma-separated value of every header, as HAProxy counts.
    assert_eq!(eval("hdr_cnt", &t), Some(Sample::Int(8)));
    assert_eq!(eval("req.fhdr_cnt(x-list)", &t), Some(Sample::Int(2)));
    assert_eq!(eval("req.fhdr_cnt", &t), Some(Sample::Int(6)));
    // As a sample (not an ACL), no occurrence or 0 is the last value.
    assert_eq!(eval("hdr(x-list,0)", &t), s("e"));
    assert_eq!(eval("fhdr(x-list,0)", &t), s("\"c,d\", e"));
    assert_eq!(
        eval("hdr_ip(x-ip)", &t),
        Some(Sample::Ip("192.0.2.7".parse().expect("ip")))
    );
    assert_eq!(eval("cook(sid)", &t), s("last"));
    assert_eq!(eval("req.cook(a)", &t), s("1"));
    assert_eq!(eval("cook(none)", &t), None);

    t.phase = Phase::Response;
    t.resp_headers
        .append("set-cookie", "sid=new; Path=/".parse().expect("hv"));
    t.resp_headers.append("server", "x".parse().expect("hv"));
    t.status = http::StatusCode::NOT_FOUND;
    assert_eq!(eval_in("res.cook(sid)", &t, Phase::Response), s("new"));
    assert_eq!(eval_in("res.hdr(server)", &t, Phase::Response), s("x"));
    assert_eq!(eval_in("shdr(server)", &t, Phase::Response), s("x"));
    // `hdr` follows the phase: now the response headers.
    assert_eq!(eval_in("hdr(server)", &t, Phase::Response), s("x"));
    assert_eq!(eval_in("hdr(x-list)", &t, Phase::Response), None);
    assert_eq!(
        eval_in("status", &t, Phase::Response),
        Some(Sample::Int(404))
    );
}

#[test]
fn var_and_backend_fetches() {
    let mut t = txn("/");
    t.set_var(VarScope::Txn, "n", Sample::Int(3));
    t.set_var(VarScope::Sess, "s", Sample::Str("sv".into()));
    // proc.* is process-wide: use a name no other test touches.
    t.set_var(VarScope::Proc, "fetch_test_p", Sample::Bool(true));
    assert_eq!(eval("var(txn.n)", &t), Some(Sample::Int(3)));
    assert_eq!(eval("var(sess.s)", &t), s("sv"));
    assert_eq!(eval("var(proc.fetch_test_p)", &t), Some(Sample::Bool(true)));
    assert_eq!(eval("var(txn.missing)", &t), None);
    assert_eq!(eval("var(txn.missing,dflt)", &t), s("dflt"));
    assert_eq!(eval("be_name", &t), None);
    t.backend = Some(BackendChoice::Index(0));
    assert_eq!(eval("be_name", &t), s("api"));
    t.backend = Some(BackendChoice::Name("dyn".into()));
    assert_eq!(eval("be_name", &t), s("dyn"));
}

#[test]
fn converters() {
    let mut t = txn("/Some/Path.PNG?q=a%20b+c");
    t.set_var(VarScope::Txn, "three", Sample::Int(3));
    assert_eq!(eval("path,lower", &t), s("/some/path.png"));
    assert_eq!(eval("path,upper", &t), s("/SOME/PATH.PNG"));
    assert_eq!(eval("path,length", &t), Some(Sample::Int(14)));
    assert_eq!(eval("path,len", &t), Some(Sample::Int(14)));
    assert_eq!(eval("str(hello),base64", &t), s("aGVsbG8="));
    assert_eq!(eval("str(hi),base64", &t), s("aGk="));
    assert_eq!(eval("str(abc),base64", &t), s("YWJj"));
    assert_eq!(eval("str(''),base64", &t), s(""));
    assert_eq!(eval("str(\"\n\"),hex", &t), s("0A"));
    assert_eq!(eval("str(Az),hex", &t), s("417A"));
    assert_eq!(eval("path,field(2,/)", &t), s("Some"));
    assert_eq!(eval("path,field(-1,/.)", &t), s("PNG"));
    assert_eq!(eval("path,field(9,/)", &t), None);
    assert_eq!(eval("str(f1_f2_f3__f5),field(2,_,2)", &t), s("f2_f3"));
    assert_eq!(eval("str(f1_f2_f3__f5),field(2,_,0)", &t), s("f2_f3__f5"));
    assert_eq!(eval("str(f1_f2_f3__f5),field(-2,_,3)", &t), s("f2_f3_"));
    assert_eq!(eval("str(f1_f2_f3__f5),word(-2,_,3)", &t), s("f1_f2_f3"));
    assert_eq!(eval("str(f1_f2_f3__f5),word(4,_)", &t), s("f5"));
    assert_eq!(eval("str(//a//b),word(1,/)", &t), s("a"));
    // Found by tests/fuzz_parsers.rs (HAProxy's sample.c as the model): a
    // count beyond the last word takes the rest of the string, as HAProxy does.
    assert_eq!(eval("str(_é),word(-1,_,2)", &t), s("_é"));
    assert_eq!(eval("str(a_b__),word(1,_,3)", &t), s("a_b__"));
    assert_eq!(eval("str(a_b__),word(1,_,2)", &t), s("a_b"));
    assert_eq!(eval("str(__a_b),word(-1,_,9)", &t), s("__a_b"));
    assert_eq!(eval("str(a_b),field(1,_,3)", &t), s("a_b"));
    assert_eq!(eval("path,regsub(/,_)", &t), s("_Some/Path.PNG"));
    assert_eq!(eval("path,regsub(/,_,g)", &t), s("_Some_Path.PNG"));
    assert_eq!(
        eval("path,regsub(\"^/(\\w+)/(.*)$\",\"\\2-\\1$\")", &t),
        s("Path.PNG-Some$")
    );
    assert_eq!(eval("path,regsub(png,jpg,i)", &t), s("/Some/Path.jpg"));
    assert_eq!(eval("path,regsub(zzz,y)", &t), s("/Some/Path.PNG"));
    assert_eq!(eval("int(0),bool", &t), Some(Sample::Bool(false)));
    assert_eq!(eval("int(5),bool", &t), Some(Sample::Bool(true)));
    assert_eq!(eval("str(x),bool", &t), None);
    assert_eq!(eval("int(5),add(2)", &t), Some(Sample::Int(7)));
    assert_eq!(eval("int(5),sub(7)", &t), Some(Sample::Int(-2)));
    assert_eq!(eval("int(5),mul(txn.three)", &t), Some(Sample::Int(15)));
    assert_eq!(eval("int(7),div(2)", &t), Some(Sample::Int(3)));
    assert_eq!(eval("int(7),mod(4)", &t), Some(Sample::Int(3)));
    assert_eq!(eval("int(7),div(txn.missing)", &t), None);
    assert_eq!(eval("str(12),add(1)", &t), Some(Sample::Int(13)));
    assert_eq!(
        eval("int(9223372036854775807),add(1)", &t),
        Some(Sample::Int(i64::MAX))
    );
    assert_eq!(
        eval("int(-9223372036854775808),div(-1)", &t),
        Some(Sample::Int(i64::MAX))
    );
    t.set_var(VarScope::Txn, "zero", Sample::Int(0));
    assert_eq!(eval("int(7),div(txn.zero)", &t), None);
    assert_eq!(eval("int(7),mod(txn.zero)", &t), None);
    assert_eq!(eval(r#"str('a"b\c'),json"#, &t), s(r#"a\"b\\c"#));
    assert_eq!(eval("str(\"é\t\"),json(ascii)", &t), s("\\u00e9\\t"));
    assert_eq!(eval("str(é),json", &t), s("é"));
    assert_eq!(eval("query,url_dec", &t), s("q=a b+c"));
    assert_eq!(eval("query,url_dec(1)", &t), s("q=a b c"));
    assert_eq!(eval("str(/a?b+c),url_dec", &t), s("/a?b c"));
    assert_eq!(eval("str(%zz),url_dec", &t), None);
    assert_eq!(
        eval("src,ipmask(24)", &t),
        Some(Sample::Ip("10.1.2.0".parse().expect("ip")))
    );
    assert_eq!(
        eval("src,ipmask(255.0.0.0)", &t),
        Some(Sample::Ip("10.0.0.0".parse().expect("ip")))
    );
    assert_eq!(eval("src_port,lower", &t), s("5555"));
    assert_eq!(eval("src,length", &t), Some(Sample::Int(8)));
}

/// Pins the encoders' and decoders' edge cases (HAProxy semantics) so a
/// swap of their implementation cannot change what rules see.
#[test]
fn encoding_edge_cases() {
    let t = txn("/");
    // base64: standard alphabet (`+`, `/`), always padded; binary input round-trips.
    for (expr, want) in [
        ("str(a),base64", "YQ=="),
        ("str(ab),base64", "YWI="),
        ("str(+/8=),b64dec,base64", "+/8="),
        ("str(//79),b64dec,base64", "//79"),
        ("str(YQ),b64dec,base64", "YQ=="),
    ] {
        assert_eq!(eval(expr, &t), s(want), "{expr}");
    }
    // url_dec: `+` is a space only in forms or after a literal `?` (an
    // encoded `%3F` does not start the query); `%2B` stays `+`; any bad or
    // truncated escape fails the converter; invalid UTF-8 is replaced.
    for (expr, want) in [
        ("str(%41%2f%2F),url_dec", Some("A//")),
        ("str(a+b),url_dec", Some("a+b")),
        ("str(a+b),url_dec(1)", Some("a b")),
        ("str(a+b),url_dec(0)", Some("a+b")),
        ("str(%3F+x),url_dec", Some("?+x")),
        ("str(a?b?c+d),url_dec", Some("a?b?c d")),
        ("str(%2B+),url_dec(1)", Some("+ ")),
        ("str(%C3%A9),url_dec", Some("é")),
        ("str(%FFa),url_dec", Some("\u{FFFD}a")),
        ("str(a%00b),url_dec", Some("a\0b")),
        ("str(%),url_dec", None),
        ("str(a%4),url_dec", None),
        ("str(%g0),url_dec", None),
        ("str(%+1),url_dec", None),
        ("str(%-1),url_dec", None),
    ] {
        assert_eq!(eval(expr, &t), want.and_then(s), "{expr}");
    }
    // crc32: IEEE (zlib), optionally through HAProxy's full avalanche.
    for (expr, want) in [
        ("str(''),crc32", 0),
        ("str(a),crc32", 0xE8B7_BE43),
        ("str(123456789),crc32", 0xCBF4_3926),
        ("str(/wA=),b64dec,crc32", 0xD2FD_EF8D),
        ("str(''),crc32(1)", 1_800_329_511),
        ("str(123456789),crc32(1)", 3_277_901_182),
    ] {
        assert_eq!(eval(expr, &t), Some(Sample::Int(want)), "{expr}");
    }
}

#[test]
fn expression_errors() {
    let e = err("pth", Phase::Request);
    assert_eq!(
        e.message,
        "unknown fetch \"pth\" in expression; did you mean \"path\"?"
    );
    let e = err("path,lowr", Phase::Request);
    assert_eq!(e.offset, 5);
    assert!(
        e.message.contains("did you mean \"lower\""),
        "{}",
        e.message
    );
    let e = err("path,src", Phase::Request);
    assert!(e.message.contains("it is a fetch"), "{}", e.message);
    let e = err("hdr", Phase::Request);
    assert!(
        e.message
            .contains("takes 1 to 2 arguments, got 0; usage: hdr(<name>[,<occ>])"),
        "{}",
        e.message
    );
    let e = err("path(1)", Phase::Request);
    assert!(e.message.contains("takes no arguments"), "{}", e.message);
    let e = err("hdr(x,99999999999)", Phase::Request);
    assert_eq!(e.offset, 6);
    assert!(
        e.message.contains("occurrence out of range"),
        "{}",
        e.message
    );
    let e = err("hdr(bad name)", Phase::Request);
    assert!(e.message.contains("invalid header name"), "{}", e.message);
    let e = err("path,regsub([,x)", Phase::Request);
    assert_eq!(e.offset, 12);
    assert!(
        e.message.starts_with("invalid regex \"[\""),
        "{}",
        e.message
    );
    let e = err("path,field(0,/)", Phase::Request);
    assert!(e.message.contains("starts at 1"), "{}", e.message);
    let e = err("int(1),div(0)", Phase::Request);
    assert!(e.message.contains("division by zero"));
    let e = err("int(1),add(x)", Phase::Request);
    assert!(e.message.contains("integer or a variable"), "{}", e.message);
    let e = err("var(foo.x)", Phase::Request);
    assert!(
        e.message.contains("unknown variable scope"),
        "{}",
        e.message
    );
    let e = err("status", Phase::Request);
    assert!(e.message.contains("does not exist yet"), "{}", e.message);
    let e = err("req.hdr(host)", Phase::Response);
    assert!(
        e.message.contains("gone when http_response rules run"),
        "{}",
        e.message
    );
    let e = err("var(res.x)", Phase::Request);
    assert!(
        e.message.contains("only exists in http_response"),
        "{}",
        e.message
    );
    let e = err("int(x)", Phase::Request);
    assert!(e.message.contains("must be an integer"), "{}", e.message);
    let e = err("path,json(xx)", Phase::Request);
    assert!(e.message.contains("unknown json mode"), "{}", e.message);
}

#[test]
fn value_text_and_conversions() {
    let v = Value::Int(-42);
    assert_eq!(v.with_text(str::to_string), "-42");
    let v = Value::Ip("2001:db8::1".parse().expect("ip"));
    let mut out = String::new();
    v.write_to(&mut out);
    assert_eq!(out, "2001:db8::1");
    assert_eq!(Value::Str(" 12 ".into()).to_int(), Some(12));
    assert!(!Value::Str("".into()).to_bool());
    assert_eq!(
        Value::Str("[::1]:80".into()).to_ip(),
        Some("::1".parse().expect("ip"))
    );
    assert_eq!(
        Value::Bin(Cow::Borrowed(&[0xff, b'a'])).into_text(),
        "\u{fffd}a"
    );
    assert_eq!(haproxy_subst("\\1$x\\"), "${1}$$x\\");
}

#[test]
fn http_date_converter_formats_as_haproxy() {
    let t = txn("/");
    // 2026-12-06 00:59:33 UTC was a Sunday.
    assert_eq!(
        eval("int(1796518773),http_date", &t),
        s("Sun, 06 Dec 2026 00:59:33 GMT")
    );
    assert_eq!(
        eval("int(0),http_date", &t),
        s("Thu, 01 Jan 1970 00:00:00 GMT")
    );
    assert_eq!(
        eval("int(951782400),http_date", &t),
        s("Tue, 29 Feb 2000 00:00:00 GMT")
    );
    assert_eq!(
        eval("int(0),http_date(86400)", &t),
        s("Fri, 02 Jan 1970 00:00:00 GMT")
    );
    assert_eq!(
        eval("int(1500),http_date(0,ms)", &t),
        s("Thu, 01 Jan 1970 00:00:01.500 GMT")
    );
    assert_eq!(
        eval("int(2000001),http_date(,us)", &t),
        s("Thu, 01 Jan 1970 00:00:02.1 GMT")
    );
    assert_eq!(
        eval("str(60),http_date", &t),
        s("Thu, 01 Jan 1970 00:01:00 GMT")
    );
    assert_eq!(eval("str(x),http_date", &t), None);
    // Negative dates are masked to 55 bits, as HAProxy does: never a negative year.
    assert!(eval("int(-1),http_date", &t).is_some());
    let e = err("int(1),http_date(0,h)", Phase::Request);
    assert!(format!("{e:?}").contains("unit"), "{e:?}");
}

#[test]
fn uuid_and_req_body_fetches() {
    let mut t = txn("/");
    let Some(Sample::Str(a)) = eval("uuid(4)", &t) else {
        panic!("uuid gives a string");
    };
    let re =
        regex::Regex::new("^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
            .expect("regex");
    assert!(re.is_match(&a), "{a}");
    assert_ne!(eval("uuid", &t), Some(Sample::Str(a)));
    assert!(format!("{:?}", err("uuid(1)", Phase::Request)).contains("version 4"));
    // No body was read (no wait_for_body): no value, as HAProxy.
    assert_eq!(eval("req.body", &t), None);
    t.req_buffered = Some(crate::txn::BufferedBody {
        data: b"a=1".to_vec(),
        received: 3,
        trailers: http::HeaderMap::new(),
    });
    assert_eq!(eval("req.body", &t), Some(Sample::Bin(b"a=1".to_vec())));
}
