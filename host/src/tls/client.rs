//! The server side of TLS (upstream connections): a backend's or server's
//! `tls` as a `rustls::ClientConfig` (verification on by default, against
//! the `ca` file or the bundled web PKI roots) and the server name to send.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::certs::{self, FileError};
use super::server::{LoadError, provider};
use crate::config::Location;

/// Which name is sent as SNI and verified.
#[derive(Debug, Clone)]
pub enum Sni {
    /// The server's address as written (a host name, or an IP address: no SNI).
    Address,
    /// A fixed name.
    Fixed(ServerName<'static>),
    /// The request's Host (port removed): `sni = "%[req.hdr(host)]"`.
    RequestHost,
}

/// A backend's (or server's) `tls` as configured, files not yet read.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    pub verify: bool,
    pub ca: Option<std::path::PathBuf>,
    pub sni: Sni,
    pub alpn: Vec<Vec<u8>>,
    /// Client certificate chain and key presented to the server.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    pub location: Location,
}

/// Upstream TLS, loaded: what every connection to the server uses.
#[derive(Debug)]
pub struct Upstream {
    pub config: Arc<rustls::ClientConfig>,
    pub sni: Sni,
}

/// What one connection attempt needs: the config and the name.
#[derive(Debug, Clone)]
pub struct Target {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
}

impl Upstream {
    /// Reads the CA and client-certificate files of `spec`.
    pub fn load(spec: &UpstreamSpec) -> Result<Upstream, LoadError> {
        let at = |error: FileError| LoadError {
            location: spec.location.clone(),
            error,
        };
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| {
                at(FileError {
                    path: std::path::PathBuf::new(),
                    message: format!("unusable protocol versions: {e}"),
                })
            })?;
        let builder = if spec.verify {
            let roots = match &spec.ca {
                Some(path) => certs::load_roots(path).map_err(at)?,
                None => rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                },
            };
            builder.with_root_certificates(roots)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(Arc::clone(&provider))))
        };
        let mut config = match &spec.identity {
            Some((cert, key)) => {
                let (ck, _) = certs::load_certified_key(cert, key, &provider).map_err(at)?;
                let key = certs::read_key(key).map_err(at)?;
                builder
                    .with_client_auth_cert(ck.cert.clone(), key)
                    .map_err(|e| {
                        at(FileError {
                            path: cert.clone(),
                            message: format!("unusable client certificate: {e}"),
                        })
                    })?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols.clone_from(&spec.alpn);
        Ok(Upstream {
            config: Arc::new(config),
            sni: spec.sni.clone(),
        })
    }

    /// The target for a request to a server written `addr_text` whose Host is `host`.
    pub fn target(&self, addr_text: &str, host: Option<&str>) -> Option<Target> {
        let name = match &self.sni {
            Sni::Fixed(n) => n.clone(),
            Sni::Address => server_name(host_part(addr_text))?,
            Sni::RequestHost => server_name(host_part(host?))?,
        };
        Some(Target {
            config: Arc::clone(&self.config),
            name,
        })
    }
}

/// The client config of Lua's `Socket:connect_ssl`, built once per process:
/// as HAProxy's Lua socket server (`ssl verify none`, no `sni`, no `alpn`),
/// any certificate is accepted (handshake signatures are still checked) and
/// no server name is sent.
pub fn lua_socket_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = provider();
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("unusable TLS protocol versions: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth();
            config.enable_sni = false;
            Ok(Arc::new(config))
        })
        .clone()
}

/// `host` of `host:port` or `[v6]:port` (or the whole text without a port).
fn host_part(text: &str) -> &str {
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match text.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => text,
    }
}

/// A name to send and verify: a DNS name, or an IP address (no SNI sent).
pub fn server_name(text: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(text.to_string()).ok()
}

/// `verify = false`: any certificate is accepted (signatures still checked).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_parts() {
        assert_eq!(host_part("example.com:443"), "example.com");
        assert_eq!(host_part("example.com"), "example.com");
        assert_eq!(host_part("[::1]:8443"), "::1");
        assert_eq!(host_part("10.0.0.1:80"), "10.0.0.1");
    }
}
