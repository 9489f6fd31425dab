//! HAProxy's TLS fetches: `ssl_fc*` (the client connection) and `ssl_c_*`
//! (the client certificate), read from the connection's [`crate::tls::TlsFacts`].
//! On a plain-TCP connection `ssl_fc` is false and the others have no value.

use std::borrow::Cow;

use super::expr::arg_err;
use super::registry::{Call, Fetch};
use super::value::Value;
use crate::rules::{Env, ParseError};
use crate::txn::Txn;

pub(super) fn f_ssl_fc(t: &Txn) -> Option<Value<'_>> {
    Some(Value::Bool(t.tls.is_some()))
}

pub(super) fn f_ssl_fc_sni(t: &Txn) -> Option<Value<'_>> {
    Some(Value::Str(Cow::Borrowed(t.tls.as_ref()?.sni.as_deref()?)))
}

pub(super) fn f_ssl_fc_protocol(t: &Txn) -> Option<Value<'_>> {
    Some(Value::Str(Cow::Borrowed(t.tls.as_ref()?.protocol)))
}

pub(super) fn f_ssl_fc_cipher(t: &Txn) -> Option<Value<'_>> {
    Some(Value::Str(Cow::Borrowed(t.tls.as_ref()?.cipher)))
}

pub(super) fn f_ssl_fc_alpn(t: &Txn) -> Option<Value<'_>> {
    Some(Value::Str(Cow::Borrowed(t.tls.as_ref()?.alpn.as_deref()?)))
}

pub(super) fn f_ssl_c_used(t: &Txn) -> Option<Value<'_>> {
    Some(Value::Bool(t.tls.as_ref()?.client_subject.is_some()))
}

/// 0 (OpenSSL's `X509_V_OK`) on every TLS connection: a client certificate
/// that fails verification ends the handshake, so none is ever in use.
pub(super) fn f_ssl_c_verify(t: &Txn) -> Option<Value<'_>> {
    t.tls.as_ref()?;
    Some(Value::Int(0))
}

/// `ssl_c_s_dn([<entry>[,<occ>[,<format>]]])`; the format applies to the
/// whole DN only (with an entry it is ignored, as in HAProxy).
#[derive(Debug)]
struct SubjectDn {
    entry: Option<String>,
    occ: i64,
    rfc2253: bool,
}

impl Fetch for SubjectDn {
    fn fetch<'t>(&'t self, txn: &'t Txn) -> Option<Value<'t>> {
        let tls = txn.tls.as_ref()?;
        match &self.entry {
            Some(e) => Some(Value::Str(Cow::Owned(
                tls.client_dn_entry(e, self.occ)?.to_string(),
            ))),
            None if self.rfc2253 => Some(Value::Str(Cow::Owned(tls.client_dn_rfc2253()?))),
            None => Some(Value::Str(Cow::Owned(tls.client_dn()?))),
        }
    }
}

pub(super) fn b_ssl_c_s_dn(c: &Call<'_>, _: &Env<'_>) -> Result<Box<dyn Fetch>, ParseError> {
    let entry = c
        .args
        .first()
        .map(|a| a.text.trim().to_string())
        .filter(|e| !e.is_empty());
    let occ = match c.args.get(1) {
        Some(a) if !a.text.trim().is_empty() => a.text.trim().parse::<i64>().map_err(|_| {
            arg_err(
                a,
                format!(
                    "invalid occurrence {:?}; expected an integer (1 = first, -1 = last)",
                    a.text
                ),
            )
        })?,
        _ => 1,
    };
    let rfc2253 = match c.args.get(2) {
        None => false,
        Some(a) => match a.text.trim() {
            "rfc2253" => true,
            "" => false,
            other => {
                return Err(arg_err(
                    a,
                    format!("unknown DN format {other:?}; expected \"rfc2253\""),
                ));
            }
        },
    };
    Ok(Box::new(SubjectDn {
        entry,
        occ,
        rfc2253,
    }))
}
