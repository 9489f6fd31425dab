//! Reading and checking PEM certificate chains, private keys and CA files.
//!
//! Everything a handshake could trip over is found here, at `check` and at
//! load time: a missing or unreadable file, PEM that does not parse, a
//! certificate outside its validity period, a key that does not match.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The largest PEM file read (a chain of a few certificates is a few KiB).
const MAX_PEM: u64 = 1 << 20;

/// What is wrong with a TLS file: the file and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    pub message: String,
}

fn fail(path: &Path, message: impl Into<String>) -> FileError {
    FileError {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads a whole (small) file.
fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    read_capped(path, MAX_PEM)
}

/// Reads a whole file of at most `max` bytes; a larger one is an error.
pub(crate) fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| fail(path, format!("cannot read: {e}")))?;
    let mut out = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| fail(path, format!("cannot read: {e}")))?;
    if out.len() as u64 > max {
        return Err(fail(path, format!("larger than {max} bytes")));
    }
    Ok(out)
}

/// A certificate chain from a PEM file: at least one `CERTIFICATE` block.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let pem = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(path, format!("unparsable PEM: {e}")))?;
    if chain.is_empty() {
        return Err(fail(
            path,
            "no certificate found; expected PEM \"-----BEGIN CERTIFICATE-----\" blocks",
        ));
    }
    Ok(chain)
}

/// A private key from a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, FileError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => fail(
            path,
            "no private key found; expected a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block",
        ),
        e => fail(path, format!("unparsable PEM: {e}")),
    })
}

/// Seconds since the Unix epoch, now.
fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `t` (Unix seconds) as X.509 tools print dates.
pub(crate) fn date(t: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(t).map_or_else(|_| t.to_string(), |a| a.to_string())
}

/// Checks that every certificate of `chain` parses and is valid now.
pub fn check_validity(path: &Path, chain: &[CertificateDer<'_>]) -> Result<(), FileError> {
    let now = now_unix();
    for (i, der) in chain.iter().enumerate() {
        let which = if i == 0 {
            "the certificate".to_string()
        } else {
            format!("certificate {} of the chain", i + 1)
        };
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| {
            fail(
                path,
                format!("{which} is not a valid X.509 certificate: {e}"),
            )
        })?;
        let v = cert.validity();
        let (from, until) = (v.not_before.timestamp(), v.not_after.timestamp());
        if now < from {
            return Err(fail(
                path,
                format!("{which} is not yet valid: valid from {}", date(from)),
            ));
        }
        if now > until {
            return Err(fail(
                path,
                format!("{which} has expired: valid until {}", date(until)),
            ));
        }
    }
    Ok(())
}

/// The DNS names a certificate serves (HAProxy's rule: its DNS
/// subjectAltNames, else its subject's common name), lower-cased.
pub fn dns_names(chain: &[CertificateDer<'_>]) -> Vec<String> {
    let Some(leaf) = chain.first() else {
        return Vec::new();
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    names
}

/// A certificate chain and its key, checked: both parse, the chain is
/// valid now, and the key is the certificate's.
pub fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, Vec<String>), FileError> {
    let chain = read_chain(cert)?;
    check_validity(cert, &chain)?;
    let names = dns_names(&chain);
    let key_der = read_key(key)?;
    let signer = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| fail(key, format!("unusable private key: {e}")))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(|_| {
        fail(
            key,
            format!(
                "this private key does not match the certificate in {}",
                cert.display()
            ),
        )
    })?;
    Ok((Arc::new(ck), names))
}

/// A root store from a PEM CA file (`ca`), every certificate checked.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, FileError> {
    let chain = read_chain(path)?;
    check_validity(path, &chain)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in chain {
        roots
            .add(c)
            .map_err(|e| fail(path, format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}
