//! `tls` of a frontend: the TOML as written and its validation into a
//! [`crate::tls::server::BindSpec`], whose files are then read and checked
//! (a bad certificate is a config error naming the file, never a handshake
//! failure later).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::diag::{ConfigError, SourceMap};
use super::resolve_path;
use super::schema::OneOrMany;
use crate::tls::server::{Acceptor, BindSpec, CertSpec, Verify};

/// `tls = { ... }` of a frontend (HAProxy's `bind ... ssl crt ... ca-file ... verify ...`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsBind {
    /// The default certificate chain (PEM), with `key`.
    pub cert: Option<Spanned<String>>,
    /// The private key of `cert` (PEM).
    pub key: Option<Spanned<String>>,
    /// OCSP response (DER) stapled with `cert`; absent: `<cert>.ocsp` if it exists.
    pub ocsp: Option<Spanned<String>>,
    /// More certificates, chosen by the client's SNI.
    #[serde(default)]
    pub certs: Vec<Spanned<RawCert>>,
    /// Which of the frontend's `bind` addresses take TLS; absent: all of them.
    pub binds: Option<Spanned<OneOrMany>>,
    /// ALPN protocols offered (default `["h2", "http/1.1"]`).
    pub alpn: Option<Spanned<Vec<String>>>,
    /// Lowest protocol version accepted: `"1.2"` (default) or `"1.3"`.
    pub min_version: Option<Spanned<String>>,
    /// Highest protocol version accepted: `"1.2"` or `"1.3"` (default).
    pub max_version: Option<Spanned<String>>,
    /// Client certificates: `"none"` (default), `"optional"` or `"required"`.
    pub verify: Option<Spanned<String>>,
    /// CA file (PEM) client certificates are verified against.
    pub ca: Option<Spanned<String>>,
}

/// One entry of `certs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCert {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    /// OCSP response (DER) stapled with this certificate; absent: `<cert>.ocsp` if it exists.
    pub ocsp: Option<Spanned<String>>,
    /// SNI names served (`"*.example.com"` wildcards allowed); absent: the
    /// certificate's own DNS names.
    pub names: Option<Vec<String>>,
}

fn version(src: &SourceMap, v: &Spanned<String>, what: &str) -> Result<u8, ConfigError> {
    match v.get_ref().trim_start_matches("TLSv").trim_start_matches("tlsv") {
        "1.2" => Ok(2),
        "1.3" => Ok(3),
        "1.0" | "1.1" => Err(src.error(
            v.span(),
            format!(
                "{what} {:?} is not supported: TLS 1.0 and 1.1 are insecure and rustls implements TLS 1.2 and 1.3 only; use \"1.2\" or \"1.3\"",
                v.get_ref()
            ),
        )),
        other => Err(src.error(
            v.span(),
            format!("invalid {what} {other:?}; expected \"1.2\" or \"1.3\""),
        )),
    }
}

fn path_of(
    src: &SourceMap,
    p: &Spanned<String>,
    what: &str,
) -> Result<std::path::PathBuf, ConfigError> {
    if p.get_ref().is_empty() {
        return Err(src.error(p.span(), format!("{what} must name a PEM file")));
    }
    Ok(resolve_path(src.file(), p.get_ref()))
}

fn ocsp_path(
    src: &SourceMap,
    p: &Spanned<String>,
    what: &str,
) -> Result<std::path::PathBuf, ConfigError> {
    if p.get_ref().is_empty() {
        return Err(src.error(
            p.span(),
            format!("{what} must name a DER OCSP response file"),
        ));
    }
    Ok(resolve_path(src.file(), p.get_ref()))
}

/// Validates a frontend's `tls` and loads its files. Returns the acceptor
/// and the bind addresses that take TLS (`None`: all of them).
pub fn bind(
    src: &SourceMap,
    raw: &Spanned<RawTlsBind>,
    parse_addr: &dyn Fn(&Spanned<String>) -> Result<SocketAddr, ConfigError>,
) -> Result<(Arc<Acceptor>, Option<HashSet<SocketAddr>>), ConfigError> {
    let t = raw.get_ref();
    let location = src.location(raw.span().start);
    let mut certs = Vec::new();
    match (&t.cert, &t.key) {
        (Some(c), Some(k)) => certs.push(CertSpec {
            cert: path_of(src, c, "tls.cert")?,
            key: path_of(src, k, "tls.key")?,
            names: None,
            ocsp: t
                .ocsp
                .as_ref()
                .map(|o| ocsp_path(src, o, "tls.ocsp"))
                .transpose()?,
            location: src.location(c.span().start),
        }),
        (Some(c), None) => {
            return Err(src.error(
                c.span(),
                "tls.cert needs tls.key, the file holding its private key",
            ));
        }
        (None, Some(k)) => {
            return Err(src.error(
                k.span(),
                "tls.key needs tls.cert, the file holding its certificate chain",
            ));
        }
        (None, None) => {}
    }
    if let (Some(o), None) = (&t.ocsp, &t.cert) {
        return Err(src.error(
            o.span(),
            "tls.ocsp is the OCSP response of tls.cert, which is not set; put ocsp inside the certs entry it belongs to",
        ));
    }
    for c in &t.certs {
        let r = c.get_ref();
        for n in r.names.iter().flatten() {
            let bare = n.strip_prefix("*.").unwrap_or(n);
            if bare.is_empty() || bare.contains('*') || bare.contains(char::is_whitespace) {
                return Err(src.error(
                    c.span(),
                    format!("invalid SNI name {n:?}; expected a host name such as \"www.example.com\" or a wildcard such as \"*.example.com\""),
                ));
            }
        }
        certs.push(CertSpec {
            cert: path_of(src, &r.cert, "certs.cert")?,
            key: path_of(src, &r.key, "certs.key")?,
            names: r.names.clone(),
            ocsp: r
                .ocsp
                .as_ref()
                .map(|o| ocsp_path(src, o, "certs.ocsp"))
                .transpose()?,
            location: src.location(r.cert.span().start),
        });
    }
    if certs.is_empty() {
        return Err(src.error(
            raw.span(),
            "tls needs a certificate: cert = \"site.pem\" and key = \"site.key\", or certs = [{ cert = ..., key = ... }]",
        ));
    }
    let alpn = match &t.alpn {
        None => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Some(list) => {
            for p in list.get_ref() {
                if !matches!(p.as_str(), "h2" | "http/1.1") {
                    return Err(src.error(
                        list.span(),
                        format!("unknown ALPN protocol {p:?}; expected \"h2\" and/or \"http/1.1\""),
                    ));
                }
            }
            list.get_ref()
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect()
        }
    };
    let min = t
        .min_version
        .as_ref()
        .map(|v| version(src, v, "min_version"))
        .transpose()?
        .unwrap_or(2);
    let max = t
        .max_version
        .as_ref()
        .map(|v| version(src, v, "max_version"))
        .transpose()?
        .unwrap_or(3);
    if min > max
        && let Some(v) = &t.min_version
    {
        return Err(src.error(v.span(), "min_version is above max_version"));
    }
    let verify = match &t.verify {
        None => Verify::None,
        Some(v) => {
            match v.get_ref().as_str() {
                "none" => Verify::None,
                "optional" => Verify::Optional,
                "required" => Verify::Required,
                other => {
                    return Err(src.error(
                    v.span(),
                    format!("invalid verify {other:?}; expected \"none\", \"optional\" or \"required\""),
                ));
                }
            }
        }
    };
    let ca = match &t.ca {
        Some(p) => Some((path_of(src, p, "tls.ca")?, src.location(p.span().start))),
        None => None,
    };
    if verify != Verify::None && ca.is_none() {
        let span = t.verify.as_ref().map_or(raw.span(), Spanned::span);
        return Err(src.error(
            span,
            "verifying client certificates needs tls.ca, the CA file (PEM) they are checked against",
        ));
    }
    let binds = match &t.binds {
        None => None,
        Some(b) => {
            let mut set = HashSet::new();
            for a in b.get_ref().to_vec() {
                set.insert(parse_addr(&Spanned::new(b.span(), a))?);
            }
            Some(set)
        }
    };
    let spec = BindSpec {
        certs,
        alpn,
        tls12: min <= 2,
        tls13: max >= 3,
        verify,
        ca,
        location,
    };
    let acceptor = Acceptor::load(spec)
        .map_err(|e| ConfigError::at(&e.location, format!("tls: {}", e.error)))?;
    Ok((Arc::new(acceptor), binds))
}

/// `tls = { ... }` of a backend or one of its servers (HAProxy's `server ...
/// ssl verify required ca-file ... sni ... alpn ... crt ...`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsUpstream {
    /// Verify the server's certificate (default true).
    pub verify: Option<bool>,
    /// CA file (PEM) the server's certificate is verified against; absent:
    /// the bundled web PKI roots.
    pub ca: Option<Spanned<String>>,
    /// Name sent as SNI and verified: a host name, or `"%[req.hdr(host)]"`
    /// for the request's Host; absent: the server address's host.
    pub sni: Option<Spanned<String>>,
    /// ALPN protocols offered: `"h2"` and `"http/1.1"` (see `proto`).
    pub alpn: Option<Spanned<Vec<String>>>,
    /// Client certificate chain (PEM) presented to the server, with `key`.
    pub cert: Option<Spanned<String>>,
    /// The private key of `cert`.
    pub key: Option<Spanned<String>>,
}

/// Validates a backend's or server's `tls` and reads its files.
///
/// `h2`: the server is spoken to in HTTP/2 (`proto = "h2"`), so an absent
/// `alpn` offers `h2`.
pub fn upstream(
    src: &SourceMap,
    raw: &Spanned<RawTlsUpstream>,
    h2: bool,
) -> Result<Arc<crate::tls::client::Upstream>, ConfigError> {
    use crate::tls::client::{Sni, Upstream, UpstreamSpec, server_name};
    let t = raw.get_ref();
    let sni = match &t.sni {
        None => Sni::Address,
        Some(s) => {
            let text = s.get_ref().trim();
            if matches!(
                text,
                "%[req.hdr(host)]" | "%[hdr(host)]" | "%[req.fhdr(host)]"
            ) {
                Sni::RequestHost
            } else if text.contains("%[") {
                return Err(src.error(
                    s.span(),
                    format!(
                        "unsupported sni {text:?}; expected a host name or \"%[req.hdr(host)]\""
                    ),
                ));
            } else {
                Sni::Fixed(server_name(text).ok_or_else(|| {
                    src.error(
                        s.span(),
                        format!(
                            "invalid sni {text:?}; expected a host name such as \"api.example.com\""
                        ),
                    )
                })?)
            }
        }
    };
    let alpn = match &t.alpn {
        None if h2 => vec![b"h2".to_vec()],
        None => Vec::new(),
        Some(list) => {
            for p in list.get_ref() {
                if p != "http/1.1" && p != "h2" {
                    return Err(src.error(
                        list.span(),
                        format!("ALPN {p:?} is not supported towards servers; expected \"h2\" and/or \"http/1.1\" (e.g. [\"h2\", \"http/1.1\"])"),
                    ));
                }
            }
            list.get_ref()
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect()
        }
    };
    let identity = match (&t.cert, &t.key) {
        (Some(c), Some(k)) => Some((path_of(src, c, "tls.cert")?, path_of(src, k, "tls.key")?)),
        (Some(c), None) => {
            return Err(src.error(
                c.span(),
                "tls.cert needs tls.key, the file holding its private key",
            ));
        }
        (None, Some(k)) => {
            return Err(src.error(
                k.span(),
                "tls.key needs tls.cert, the file holding its certificate chain",
            ));
        }
        (None, None) => None,
    };
    let ca =
        t.ca.as_ref()
            .map(|p| path_of(src, p, "tls.ca"))
            .transpose()?;
    let spec = UpstreamSpec {
        verify: t.verify.unwrap_or(true),
        ca,
        sni,
        alpn,
        identity,
        location: src.location(raw.span().start),
    };
    let up = Upstream::load(&spec)
        .map_err(|e| ConfigError::at(&e.location, format!("tls: {}", e.error)))?;
    Ok(Arc::new(up))
}
