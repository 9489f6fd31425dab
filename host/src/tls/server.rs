//! The client side of TLS (binds): certificates chosen by SNI, the
//! `rustls::ServerConfig` of a frontend, and [`Acceptor`], the swappable
//! handle the accept path reads (replaced by `POST /certificates/reload`
//! and by a config reload).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use super::certs::{self, FileError};
use crate::config::Location;

/// Client-certificate verification (HAProxy's `verify none|optional|required`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// No client certificate is asked for.
    None,
    /// Asked for; a client without one is let in, one with an invalid one is not.
    Optional,
    /// A valid client certificate is required.
    Required,
}

/// One certificate of a bind as configured.
#[derive(Debug, Clone)]
pub struct CertSpec {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SNI names it serves; `None`: the certificate's own DNS names.
    pub names: Option<Vec<String>>,
    /// The OCSP response file (DER) to staple, as configured; `None`: the
    /// file `<cert>.ocsp` if it exists (HAProxy's convention).
    pub ocsp: Option<PathBuf>,
    /// Where it was declared (for errors).
    pub location: Location,
}

/// A frontend's TLS settings as configured (validated; files not yet read).
#[derive(Debug, Clone)]
pub struct BindSpec {
    /// The first is the default certificate (no SNI, or no name matches).
    pub certs: Vec<CertSpec>,
    /// ALPN protocols offered, in order of preference.
    pub alpn: Vec<Vec<u8>>,
    /// Accepted protocol versions.
    pub tls12: bool,
    pub tls13: bool,
    pub verify: Verify,
    /// CA file for client certificates, with where it was declared.
    pub ca: Option<(PathBuf, Location)>,
    /// Where the `tls` table was declared.
    pub location: Location,
}

/// A TLS failure at load: what is wrong and where it was configured.
#[derive(Debug)]
pub struct LoadError {
    pub location: Location,
    pub error: FileError,
}

/// Certificates by SNI name: exact names, `*.domain` wildcards (one label,
/// as HAProxy and browsers match them), and the default.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.` (e.g. `example.com`).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// The certificate for `sni` (already lower-case in rustls).
    pub fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = sni else {
            return &self.default;
        };
        let name = name.trim_end_matches('.');
        if let Some(c) = self.exact.get(name) {
            return c;
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(c) = self.wildcard.get(parent)
        {
            return c;
        }
        &self.default
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.pick(hello.server_name())))
    }
}

/// The crypto provider every TLS object of the process uses (ring: it
/// builds without cmake; rustls deprecates it for lacking post-quantum key
/// exchange, which aws-lc-rs has).
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every file of `spec` and builds the server config; `tickets`
/// keeps session-ticket keys across certificate reloads.
pub fn build(
    spec: &BindSpec,
    tickets: &Arc<dyn rustls::server::ProducesTickets>,
) -> Result<Arc<rustls::ServerConfig>, LoadError> {
    let provider = provider();
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut default = None;
    for c in &spec.certs {
        let at = |error| LoadError {
            location: c.location.clone(),
            error,
        };
        let (ck, own_names) = certs::load_certified_key(&c.cert, &c.key, &provider).map_err(at)?;
        let ck = staple(c, ck).map_err(at)?;
        default.get_or_insert_with(|| Arc::clone(&ck));
        let names = c.names.clone().unwrap_or(own_names);
        for n in names {
            let n = n.to_ascii_lowercase();
            // The first certificate declared for a name wins (HAProxy's order).
            match n.strip_prefix("*.") {
                Some(parent) => wildcard
                    .entry(parent.to_string())
                    .or_insert_with(|| Arc::clone(&ck)),
                None => exact.entry(n).or_insert_with(|| Arc::clone(&ck)),
            };
        }
    }
    let Some(default) = default else {
        // The config layer requires a certificate; nothing to serve without one.
        return Err(LoadError {
            location: spec.location.clone(),
            error: FileError {
                path: PathBuf::new(),
                message: "no certificate configured".into(),
            },
        });
    };
    let resolver = SniResolver {
        exact,
        wildcard,
        default,
    };
    let verifier = match (&spec.ca, spec.verify) {
        (Some((path, location)), v) if v != Verify::None => {
            let roots = certs::load_roots(path).map_err(|error| LoadError {
                location: location.clone(),
                error,
            })?;
            let b =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let b = if v == Verify::Optional {
                b.allow_unauthenticated()
            } else {
                b
            };
            b.build().map_err(|e| LoadError {
                location: location.clone(),
                error: FileError {
                    path: path.clone(),
                    message: format!("cannot verify clients with these CA certificates: {e}"),
                },
            })?
        }
        _ => WebPkiClientVerifier::no_client_auth(),
    };
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::with_capacity(2);
    if spec.tls13 {
        versions.push(&rustls::version::TLS13);
    }
    if spec.tls12 {
        versions.push(&rustls::version::TLS12);
    }
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| LoadError {
            location: spec.location.clone(),
            error: FileError {
                path: PathBuf::new(),
                message: format!("unusable protocol versions: {e}"),
            },
        })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols.clone_from(&spec.alpn);
    // Stateless resumption only: tickets sealed with keys every worker shares
    // (and that rotate); no server-side session cache behind a lock.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.ticketer = Arc::clone(tickets);
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

/// `ck` with the OCSP response of `c` stapled, when there is one: the
/// configured file, else `<cert>.ocsp` beside the certificate.
fn staple(c: &CertSpec, ck: Arc<CertifiedKey>) -> Result<Arc<CertifiedKey>, FileError> {
    let path = match &c.ocsp {
        Some(p) => p.clone(),
        None => {
            let p = super::ocsp::beside(&c.cert);
            if !p.exists() {
                return Ok(ck);
            }
            p
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let response = super::ocsp::load(&path, &c.cert, &ck.cert, now)?;
    let mut stapled = CertifiedKey::clone(&ck);
    stapled.ocsp = Some(response);
    Ok(Arc::new(stapled))
}

/// A frontend's TLS: its settings and the server config in force, swapped
/// whole when certificates are reloaded (connections in flight keep theirs).
#[derive(Debug)]
pub struct Acceptor {
    pub spec: BindSpec,
    config: ArcSwap<rustls::ServerConfig>,
    tickets: Arc<dyn rustls::server::ProducesTickets>,
}

impl Acceptor {
    /// Loads every file of `spec`.
    pub fn load(spec: BindSpec) -> Result<Acceptor, LoadError> {
        let tickets = rustls::crypto::ring::Ticketer::new().map_err(|e| LoadError {
            location: spec.location.clone(),
            error: FileError {
                path: PathBuf::new(),
                message: format!("cannot make session-ticket keys: {e}"),
            },
        })?;
        let config = build(&spec, &tickets)?;
        Ok(Acceptor {
            spec,
            config: ArcSwap::new(config),
            tickets,
        })
    }

    /// The server config for a new connection.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.config.load_full()
    }

    /// Re-reads the certificate, key and CA files into a new server config
    /// (not yet in force: see [`install`](Self::install)).
    pub fn prepare(&self) -> Result<Arc<rustls::ServerConfig>, LoadError> {
        build(&self.spec, &self.tickets)
    }

    /// The same acceptor sealing session tickets with `prev`'s keys: a
    /// config reload keeps the tickets clients hold valid (resumption goes
    /// on across it), as the certificate reload does.
    pub fn with_tickets_of(&self, prev: &Acceptor) -> Acceptor {
        let mut config = (*self.current()).clone();
        config.ticketer = Arc::clone(&prev.tickets);
        Acceptor {
            spec: self.spec.clone(),
            config: ArcSwap::new(Arc::new(config)),
            tickets: Arc::clone(&prev.tickets),
        }
    }

    /// Puts a config from [`prepare`](Self::prepare) in force for new handshakes.
    pub fn install(&self, config: Arc<rustls::ServerConfig>) {
        self.config.store(config);
    }
}
