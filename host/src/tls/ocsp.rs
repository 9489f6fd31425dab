//! OCSP stapling: reading and checking a DER OCSP response for a bind's
//! certificate, as HAProxy 2.6 does when it loads `<crt>.ocsp` (or the
//! `ocsp` file named in the config).
//!
//! The response is checked at load so that a wrong file is a config error,
//! never a handshake sending a stale or foreign response: it must be a
//! successful basic response with exactly one single response, about this
//! certificate (the certificate ID computed from the certificate and its
//! issuer with the response's hash algorithm), whose status is good or
//! revoked (HAProxy staples a revocation too: the client must learn it),
//! with a `nextUpdate`, and valid now within HAProxy's 5-minute skew. The
//! responder's signature is the client's to verify, as in HAProxy.

use std::path::{Path, PathBuf};

use der::Decode;
use rustls_pki_types::CertificateDer;
use x509_ocsp::{BasicOcspResponse, CertStatus, OcspResponse, OcspResponseStatus};

use super::certs::FileError;

/// The largest OCSP response file read (real ones are 1–4 KiB).
const MAX_OCSP: u64 = 64 << 10;

/// HAProxy's `OCSP_MAX_RESPONSE_TIME_SKEW`: 300 s either way.
const SKEW_SECS: u64 = 300;

/// `id-pkix-ocsp-basic` (RFC 6960 §4.2.1).
const OCSP_BASIC: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");

fn fail(path: &Path, message: impl Into<String>) -> FileError {
    FileError {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The file HAProxy looks at beside a certificate: `<cert>.ocsp`.
pub fn beside(cert: &Path) -> PathBuf {
    let mut s = cert.as_os_str().to_os_string();
    s.push(".ocsp");
    PathBuf::from(s)
}

/// The issuer file HAProxy reads when the chain lacks the issuer: `<cert>.issuer`.
fn issuer_beside(cert: &Path) -> PathBuf {
    let mut s = cert.as_os_str().to_os_string();
    s.push(".issuer");
    PathBuf::from(s)
}

/// Reads the OCSP response at `path` for the certificate whose chain
/// (leaf first) was read from `cert_path`, checks it against the leaf and
/// its issuer at `now` (Unix seconds) and returns the DER bytes to staple.
pub fn load(
    path: &Path,
    cert_path: &Path,
    chain: &[CertificateDer<'_>],
    now: u64,
) -> Result<Vec<u8>, FileError> {
    let der = super::certs::read_capped(path, MAX_OCSP)?;
    check(path, cert_path, &der, chain, now)?;
    Ok(der)
}

/// The checks of [`load`] on bytes already read.
pub fn check(
    path: &Path,
    cert_path: &Path,
    der: &[u8],
    chain: &[CertificateDer<'_>],
    now: u64,
) -> Result<(), FileError> {
    let resp = OcspResponse::from_der(der).map_err(|e| {
        fail(
            path,
            format!("not a DER OCSP response ({e}); expected what `openssl ocsp -respout` writes"),
        )
    })?;
    if resp.response_status != OcspResponseStatus::Successful {
        return Err(fail(
            path,
            format!(
                "OCSP response status is not successful ({:?})",
                resp.response_status
            ),
        ));
    }
    let Some(bytes) = resp.response_bytes else {
        return Err(fail(path, "OCSP response has no response bytes"));
    };
    if bytes.response_type != OCSP_BASIC {
        return Err(fail(
            path,
            format!(
                "OCSP response type {} is not the basic type (1.3.6.1.5.5.7.48.1.1)",
                bytes.response_type
            ),
        ));
    }
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(|e| fail(path, format!("unparsable basic OCSP response: {e}")))?;
    let responses = &basic.tbs_response_data.responses;
    let single = match responses.as_slice() {
        [one] => one,
        [] => return Err(fail(path, "OCSP response contains no single response")),
        many => {
            return Err(fail(
                path,
                format!(
                    "OCSP response ignored because it contains multiple single responses ({})",
                    many.len()
                ),
            ));
        }
    };

    // The certificate ID of our certificate, with the response's algorithm.
    let Some(leaf) = chain.first() else {
        return Err(fail(path, "no certificate to staple this response for"));
    };
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf).map_err(|e| {
        fail(
            cert_path,
            format!("the certificate is not valid X.509: {e}"),
        )
    })?;
    let issuer_der = issuer_of(cert_path, &leaf, chain)?;
    let (_, issuer) = x509_parser::parse_x509_certificate(&issuer_der).map_err(|e| {
        fail(
            cert_path,
            format!("the issuer certificate is not valid X.509: {e}"),
        )
    })?;
    let id = &single.cert_id;
    let alg = id.hash_algorithm.oid.to_string();
    let digest: &'static ring::digest::Algorithm = match alg.as_str() {
        "1.3.14.3.2.26" => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        "2.16.840.1.101.3.4.2.1" => &ring::digest::SHA256,
        "2.16.840.1.101.3.4.2.2" => &ring::digest::SHA384,
        "2.16.840.1.101.3.4.2.3" => &ring::digest::SHA512,
        other => {
            return Err(fail(
                path,
                format!("OCSP certificate ID uses an unsupported hash algorithm {other}"),
            ));
        }
    };
    let name_hash = ring::digest::digest(digest, leaf.issuer().as_raw());
    let key_hash = ring::digest::digest(digest, &issuer.public_key().subject_public_key.data);
    if id.issuer_name_hash.as_bytes() != name_hash.as_ref()
        || id.issuer_key_hash.as_bytes() != key_hash.as_ref()
        || id.serial_number.as_bytes() != leaf.raw_serial()
    {
        return Err(fail(
            path,
            format!(
                "OCSP single response: Certificate ID does not match certificate and issuer (the response is not about {})",
                cert_path.display()
            ),
        ));
    }

    match single.cert_status {
        CertStatus::Good(_) | CertStatus::Revoked(_) => {}
        CertStatus::Unknown(_) => {
            return Err(fail(
                path,
                "OCSP single response: certificate status is unknown",
            ));
        }
    }
    let Some(next) = &single.next_update else {
        return Err(fail(path, "OCSP single response: missing nextUpdate"));
    };
    let this = single.this_update.0.to_unix_duration().as_secs();
    let next = next.0.to_unix_duration().as_secs();
    // OpenSSL's OCSP_check_validity(this, next, skew, -1).
    if this > now.saturating_add(SKEW_SECS) {
        return Err(fail(
            path,
            format!(
                "OCSP single response: no longer valid (thisUpdate {} is in the future)",
                super::certs::date(i64::try_from(this).unwrap_or(i64::MAX))
            ),
        ));
    }
    if next.saturating_add(SKEW_SECS) < now {
        return Err(fail(
            path,
            format!(
                "OCSP single response: no longer valid (nextUpdate {} has passed); fetch a fresh response",
                super::certs::date(i64::try_from(next).unwrap_or(i64::MAX))
            ),
        ));
    }
    if next < this {
        return Err(fail(
            path,
            "OCSP single response: no longer valid (nextUpdate is before thisUpdate)",
        ));
    }
    Ok(())
}

/// The issuer's certificate (DER): the chain's certificate that signed the
/// leaf (its subject is the leaf's issuer), else `<cert>.issuer` as HAProxy.
fn issuer_of(
    cert_path: &Path,
    leaf: &x509_parser::certificate::X509Certificate<'_>,
    chain: &[CertificateDer<'_>],
) -> Result<Vec<u8>, FileError> {
    let wanted = leaf.issuer().as_raw();
    for der in chain.iter().skip(1) {
        if let Ok((_, c)) = x509_parser::parse_x509_certificate(der)
            && c.subject().as_raw() == wanted
        {
            return Ok(der.to_vec());
        }
    }
    let side = issuer_beside(cert_path);
    if side.exists() {
        let pem = super::certs::read_chain(&side)?;
        if let Some(first) = pem.first() {
            return Ok(first.to_vec());
        }
    }
    Err(fail(
        cert_path,
        format!(
            "an OCSP response is configured but the certificate ID cannot be computed: the issuer of the certificate is neither in its chain nor in {}; append the issuer's certificate to the chain",
            side.display()
        ),
    ))
}
