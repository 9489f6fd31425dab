//! TLS with rustls (ring provider): certificates and keys read and checked
//! at load (`certs`), the binds' server configs chosen by SNI (`server`),
//! upstream connections (`client`), stapled OCSP responses (`ocsp`), and [`TlsFacts`], what a handshake
//! settled, read by the `ssl_fc*` / `ssl_c_*` fetches.

pub mod certs;
pub mod client;
pub mod ocsp;
pub mod server;

use rustls::CipherSuite;

/// What the handshake of a client connection settled (HAProxy's `ssl_fc_*`
/// and `ssl_c_*` values), shared by the requests of the connection.
#[derive(Debug, Clone, Default)]
pub struct TlsFacts {
    /// The server name the client asked for (SNI), lower-case.
    pub sni: Option<Box<str>>,
    /// `TLSv1.2` or `TLSv1.3` (OpenSSL's names, as HAProxy prints them).
    pub protocol: &'static str,
    /// The cipher suite in OpenSSL's naming, as HAProxy prints it.
    pub cipher: &'static str,
    /// The protocol chosen by ALPN.
    pub alpn: Option<Box<str>>,
    /// The client certificate's subject, if one was presented (and verified).
    pub client_subject: Option<Vec<(String, String)>>,
}

impl TlsFacts {
    /// The facts of an established server-side connection.
    pub fn of(conn: &rustls::ServerConnection) -> TlsFacts {
        TlsFacts {
            sni: conn.server_name().map(Box::from),
            protocol: match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "",
            },
            cipher: conn
                .negotiated_cipher_suite()
                .map_or("", |s| openssl_cipher_name(s.suite())),
            alpn: conn
                .alpn_protocol()
                .map(|p| Box::from(String::from_utf8_lossy(p).as_ref())),
            client_subject: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|leaf| subject_entries(leaf)),
        }
    }

    /// HAProxy's `ssl_c_s_dn` without arguments: OpenSSL's one-line form,
    /// `/C=FR/O=Example/CN=client`.
    pub fn client_dn(&self) -> Option<String> {
        let entries = self.client_subject.as_ref()?;
        let mut out = String::new();
        for (k, v) in entries {
            out.push('/');
            out.push_str(k);
            out.push('=');
            out.push_str(v);
        }
        Some(out)
    }

    /// HAProxy's `ssl_c_s_dn(<entry>[,<occ>])`: the `occ`th value of `entry`
    /// counted from the first (1, HAProxy's default) or, negative, from the
    /// last (-1); 0 has none.
    pub fn client_dn_entry(&self, entry: &str, occ: i64) -> Option<&str> {
        let entries = self.client_subject.as_ref()?;
        let mut matching = entries
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(entry))
            .map(|(_, v)| v.as_str());
        if occ > 0 {
            matching.nth(usize::try_from(occ - 1).ok()?)
        } else {
            let back = usize::try_from(occ.checked_neg()?).ok()?.checked_sub(1)?;
            matching.rev().nth(back)
        }
    }

    /// HAProxy's `ssl_c_s_dn(,,rfc2253)`: `CN=client,O=Example,C=FR`.
    pub fn client_dn_rfc2253(&self) -> Option<String> {
        let entries = self.client_subject.as_ref()?;
        let parts: Vec<String> = entries
            .iter()
            .rev()
            .map(|(k, v)| {
                let mut escaped = String::with_capacity(v.len());
                for (i, ch) in v.chars().enumerate() {
                    if matches!(ch, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
                        || (i == 0 && matches!(ch, '#' | ' '))
                    {
                        escaped.push('\\');
                    }
                    escaped.push(ch);
                }
                format!("{k}={escaped}")
            })
            .collect();
        Some(parts.join(","))
    }
}

/// The subject's attributes in certificate order, with OpenSSL's short names.
fn subject_entries(der: &rustls_pki_types::CertificateDer<'_>) -> Vec<(String, String)> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let registry = x509_parser::objects::oid_registry();
    let mut out = Vec::new();
    for rdn in cert.subject().iter_rdn() {
        for attr in rdn.iter() {
            let oid = attr.attr_type();
            let name = match x509_parser::objects::oid2abbrev(oid, registry) {
                Ok(n) => n.to_string(),
                Err(_) => oid.to_id_string(),
            };
            let value = attr.as_str().map_or_else(
                |_| String::from_utf8_lossy(attr.attr_value().data).into_owned(),
                str::to_string,
            );
            out.push((name, value));
        }
    }
    out
}

/// OpenSSL's name of a cipher suite (what HAProxy's `ssl_fc_cipher` returns).
pub fn openssl_cipher_name(suite: CipherSuite) -> &'static str {
    match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => {
            "ECDHE-ECDSA-CHACHA20-POLY1305"
        }
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> TlsFacts {
        TlsFacts {
            client_subject: Some(vec![
                ("C".into(), "FR".into()),
                ("OU".into(), "a".into()),
                ("OU".into(), "b".into()),
                ("CN".into(), "client, one".into()),
            ]),
            ..TlsFacts::default()
        }
    }

    #[test]
    fn dn_forms() {
        let f = facts();
        assert_eq!(
            f.client_dn().as_deref(),
            Some("/C=FR/OU=a/OU=b/CN=client, one")
        );
        assert_eq!(
            f.client_dn_rfc2253().as_deref(),
            Some("CN=client\\, one,OU=b,OU=a,C=FR")
        );
        assert_eq!(f.client_dn_entry("OU", 0), None);
        assert_eq!(f.client_dn_entry("OU", -1), Some("b"));
        assert_eq!(f.client_dn_entry("OU", 1), Some("a"));
        assert_eq!(f.client_dn_entry("OU", -2), Some("a"));
        assert_eq!(f.client_dn_entry("OU", 3), None);
        assert_eq!(f.client_dn_entry("ou", -3), None);
        assert_eq!(TlsFacts::default().client_dn(), None);
    }
}
