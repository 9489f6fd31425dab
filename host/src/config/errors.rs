//! `errorfiles` and `error_replies` of a frontend or backend, validated into
//! [`ErrorPages`] at load: every file read, parsed and checked here, so a
//! request only clones prepared bytes.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use toml::Spanned;

use super::diag::{ConfigError, SourceMap};
use super::schema::{ErrorMap, RawErrorReply};
use crate::error::{ErrorPages, MAX_ERRORFILE, Override};

/// Builds the replacement pages of one frontend or backend; `error_replies`
/// win over `errorfiles` for the same status.
pub(crate) fn error_pages(
    src: &SourceMap,
    files: Option<&Spanned<ErrorMap<String>>>,
    replies: Option<&Spanned<ErrorMap<RawErrorReply>>>,
) -> Result<ErrorPages, ConfigError> {
    let mut pages = ErrorPages::default();
    for (key, path) in files.map(|f| f.get_ref().iter()).into_iter().flatten() {
        let status = status_key(src, key, path.span(), "errorfiles")?;
        let file = super::resolve_path(src.file(), path.get_ref());
        let text = read_limited(&file).map_err(|e| {
            src.error(
                path.span(),
                format!("errorfiles.{key}: cannot read {}: {e}", file.display()),
            )
        })?;
        let page = Override::parse_errorfile(status, &text).map_err(|e| {
            src.error(
                path.span(),
                format!("errorfiles.{key}: {}: {e}", file.display()),
            )
        })?;
        pages.insert(page);
    }
    for (key, r) in replies.map(|f| f.get_ref().iter()).into_iter().flatten() {
        let status = status_key(src, key, r.span(), "error_replies")?;
        let raw = r.get_ref();
        let mut headers = HeaderMap::new();
        for (name, value) in &raw.headers {
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                src.error(
                    value.span(),
                    format!("error_replies.{key}: invalid header name {name:?}"),
                )
            })?;
            let v = HeaderValue::from_str(value.get_ref()).map_err(|_| {
                src.error(
                    value.span(),
                    format!("error_replies.{key}: invalid value for header {name}"),
                )
            })?;
            headers.append(n, v);
        }
        if let Some(ct) = &raw.content_type {
            let v = HeaderValue::from_str(ct.get_ref()).map_err(|_| {
                src.error(
                    ct.span(),
                    format!("error_replies.{key}: invalid content_type"),
                )
            })?;
            headers.insert(http::header::CONTENT_TYPE, v);
        } else if !raw.body.is_empty() && !headers.contains_key(http::header::CONTENT_TYPE) {
            // As a `return` rule: a body without a declared type is plain text.
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
        }
        if raw.body.len() > MAX_ERRORFILE {
            return Err(src.error(
                r.span(),
                format!("error_replies.{key}: the body is larger than {MAX_ERRORFILE} bytes"),
            ));
        }
        pages.insert(Override::reply(
            status,
            headers,
            Bytes::from(raw.body.clone()),
        ));
    }
    Ok(pages)
}

/// A table key that must be an error status (HAProxy accepts 200 too: its
/// `errorfile 200` answers monitor requests, which we have none of).
fn status_key(
    src: &SourceMap,
    key: &str,
    span: std::ops::Range<usize>,
    table: &str,
) -> Result<StatusCode, ConfigError> {
    key.parse::<u16>()
        .ok()
        .filter(|c| (400..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| {
            src.error(
                span,
                format!("{table}: key {key:?} is not an error status (400-599), e.g. {table} = {{ 503 = ... }}"),
            )
        })
}

/// Reads at most one byte over the limit, so a huge file is refused without being read whole.
fn read_limited(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_ERRORFILE as u64 + 1)
        .read_to_end(&mut out)?;
    Ok(out)
}
