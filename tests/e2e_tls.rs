//! TLS through the real binary (issue #20), with certificates made at test
//! time (rcgen) and a rustls client that sets SNI, ALPN, protocol versions
//! and client certificates exactly: SNI selection (exact, wildcard,
//! default), ALPN h2 and http/1.1, TLS 1.2 and 1.3, the `ssl_fc*` and
//! `ssl_c_*` fetches, mTLS accept/reject, handshake timeouts and failure
//! counters, `redirect_scheme` on a mixed frontend, certificates refused at
//! `check` with the file named, and `POST /certificates/reload` without
//! dropping an open connection.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A certificate and its key, as PEM and DER.
struct Made {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    key_der: PrivateKeyDer<'static>,
}

fn params(names: &[&str], cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(names.iter().map(|n| (*n).to_string()).collect::<Vec<_>>())
        .expect("certificate params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p
}

fn finish(cert: &rcgen::Certificate, key: &KeyPair) -> Made {
    Made {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
        key_der: PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
    }
}

fn self_signed(names: &[&str], cn: &str) -> Made {
    let key = KeyPair::generate().expect("key");
    let cert = params(names, cn).self_signed(&key).expect("self-signed");
    finish(&cert, &key)
}

/// A CA that signs leaf certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(cn: &str) -> Ca {
        let mut p = params(&[], cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("ca key");
        Ca {
            issuer: CertifiedIssuer::self_signed(p, key).expect("ca"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn sign(&self, p: CertificateParams) -> Made {
        let key = KeyPair::generate().expect("leaf key");
        let cert = p.signed_by(&key, &self.issuer).expect("signed");
        finish(&cert, &key)
    }
}

/// Writes `name.pem` and `name.key` into `dir`.
fn write_pair(dir: &TempDir, name: &str, m: &Made) -> (PathBuf, PathBuf) {
    (
        dir.write(&format!("{name}.pem"), &m.cert_pem),
        dir.write(&format!("{name}.key"), &m.key_pem),
    )
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// Accepts any server certificate: the tests look at which one was served.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
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
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// How the test client connects.
#[derive(Default)]
struct Client {
    alpn: Vec<&'static str>,
    /// Only this version (`None`: 1.2 and 1.3).
    version: Option<&'static rustls::SupportedProtocolVersion>,
    /// A client certificate to present.
    identity: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
}

impl Client {
    #[allow(deprecated)] // ring's provider, as the daemon's
    fn config(&self) -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = match self.version {
            Some(v) => vec![v],
            None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let b = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&versions)
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)));
        let mut cfg = match &self.identity {
            Some((c, k)) => b
                .with_client_auth_cert(vec![c.clone()], k.clone_key())
                .expect("client cert"),
            None => b.with_no_client_auth(),
        };
        cfg.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(cfg)
    }

    /// A TLS connection to `addr` asking for `sni` (an IP address: no SNI).
    async fn connect(&self, addr: SocketAddr, sni: &str) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(sni.to_string()).expect("server name");
        within(
            "TLS handshake",
            LIMIT,
            TlsConnector::from(self.config()).connect(name, tcp),
        )
        .await
    }
}

/// The leaf certificate the server presented.
fn served(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref()
        .1
        .peer_certificates()
        .expect("server certificate")[0]
        .clone()
}

/// One HTTP/1.1 or HTTP/2 exchange channel over a TLS stream.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    async fn over(s: TlsStream<TcpStream>) -> Sender {
        let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                TokioIo::new(s),
            )
            .await
            .expect("h2 handshake");
            tokio::spawn(conn);
            Sender::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                .await
                .expect("h1 handshake");
            tokio::spawn(conn);
            Sender::H1(send)
        }
    }

    async fn get(&mut self, host: &str, path: &str) -> (http::response::Parts, Bytes) {
        let h2 = matches!(self, Sender::H2(_));
        let uri = if h2 {
            format!("https://{host}{path}")
        } else {
            path.to_string()
        };
        let mut req = Request::get(uri);
        if !h2 {
            req = req.header("host", host);
        }
        let req = req.body(Empty::new()).expect("request");
        let resp = within("TLS request", LIMIT, async {
            match self {
                Sender::H1(s) => s.send_request(req).await,
                Sender::H2(s) => s.send_request(req).await,
            }
        })
        .await
        .expect("response");
        let (parts, body) = resp.into_parts();
        let body = within("TLS response body", LIMIT, body.collect())
            .await
            .expect("body")
            .to_bytes();
        (parts, body)
    }
}

/// An echo of the request (backend's JSON), from a TLS response body.
fn echo(body: &Bytes) -> Echo {
    Echo(
        serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("not an echo ({e}): {}", String::from_utf8_lossy(body))),
    )
}

/// Headers the TLS frontends set from the TLS fetches.
const FACT_HEADERS: &str = r#"http_request = [
  { set_header = "X-SNI", value = "%[ssl_fc_sni]" },
  { set_header = "X-Proto", value = "%[ssl_fc_protocol]" },
  { set_header = "X-Cipher", value = "%[ssl_fc_cipher]" },
  { set_header = "X-ALPN", value = "%[ssl_fc_alpn]" },
  { set_header = "X-SSL", value = "%[ssl_fc]" },
  { set_header = "X-Client-Used", value = "%[ssl_c_used]" },
  { set_header = "X-Client-Verify", value = "%[ssl_c_verify]" },
  { set_header = "X-Client-DN", value = "%[ssl_c_s_dn]" },
  { set_header = "X-Client-CN", value = "%[ssl_c_s_dn(CN)]" },
]
"#;

/// A daemon with one TLS frontend (`tls` is the table's body) in front of `backend`.
async fn tls_daemon(tls: &str, backend: &Backend, extra: &str) -> (Daemon, Ports) {
    let ports = Ports::new();
    let config = format!(
        "{}{}tls = {{ {tls} }}\n{}",
        global_section(ports.admin, &[("admin_token", ADMIN_TOKEN_TOML)]),
        frontend_section("web", ports.web, "app", &format!("{FACT_HEADERS}{extra}")),
        backend_section("app", "roundrobin", &[("s1", backend.addr, 1)], "")
    );
    // The `tls` line comes right after the frontend's keys, before [[backend]].
    let daemon = Daemon::start(&config, &[ports.web]).await;
    (daemon, ports)
}

fn toml_path(p: &std::path::Path) -> String {
    p.to_str().expect("utf-8 path").replace('\\', "\\\\")
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sni_picks_exact_then_wildcard_then_default() {
    let dir = TempDir::new("tls-sni");
    let default = self_signed(&["default.test"], "default.test");
    let exact = self_signed(&["api.example.com"], "api.example.com");
    let wild = self_signed(&["*.example.com"], "wildcard");
    let named = self_signed(&["ignored.test"], "named");
    let (dc, dk) = write_pair(&dir, "default", &default);
    let (ec, ek) = write_pair(&dir, "exact", &exact);
    let (wc, wk) = write_pair(&dir, "wild", &wild);
    let (nc, nk) = write_pair(&dir, "named", &named);
    let backend = Backend::start("s1").await;
    let tls = format!(
        r#"cert = "{}", key = "{}", certs = [ {{ cert = "{}", key = "{}" }}, {{ cert = "{}", key = "{}" }}, {{ cert = "{}", key = "{}", names = ["by-config.test"] }} ]"#,
        toml_path(&dc),
        toml_path(&dk),
        toml_path(&wc),
        toml_path(&wk),
        toml_path(&ec),
        toml_path(&ek),
        toml_path(&nc),
        toml_path(&nk),
    );
    let (_d, ports) = tls_daemon(&tls, &backend, "").await;
    let client = Client {
        alpn: vec!["http/1.1"],
        ..Client::default()
    };
    for (sni, want, what) in [
        ("api.example.com", &exact, "exact name beats the wildcard"),
        ("API.Example.com", &exact, "names match without case"),
        ("www.example.com", &wild, "wildcard"),
        (
            "a.b.example.com",
            &default,
            "a wildcard covers one label only",
        ),
        (
            "example.com",
            &default,
            "a wildcard does not cover its parent",
        ),
        ("other.test", &default, "unknown name: default"),
        ("127.0.0.1", &default, "no SNI: default"),
        ("by-config.test", &named, "names from the config"),
        (
            "ignored.test",
            &default,
            "configured names replace the certificate's",
        ),
    ] {
        let s = client.connect(ports.web, sni).await.expect("handshake");
        assert_eq!(served(&s), want.der, "{what} ({sni})");
        let mut send = Sender::over(s).await;
        let (parts, body) = send.get("site.test", "/sni").await;
        assert_eq!(parts.status, 200, "{what}");
        let e = echo(&body);
        let expected_sni = if sni == "127.0.0.1" {
            String::new()
        } else {
            sni.to_ascii_lowercase()
        };
        assert_eq!(
            e.header("x-sni").unwrap_or_default(),
            expected_sni,
            "ssl_fc_sni ({what})"
        );
        assert_eq!(e.header("x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(e.header("x-ssl").as_deref(), Some("1"));
    }
}

#[tokio::test]
async fn alpn_and_protocol_versions() {
    let dir = TempDir::new("tls-alpn");
    let site = self_signed(&["site.test"], "site.test");
    let (c, k) = write_pair(&dir, "site", &site);
    let backend = Backend::start("s1").await;
    let tls = format!(r#"cert = "{}", key = "{}""#, toml_path(&c), toml_path(&k));
    let (_d, ports) = tls_daemon(&tls, &backend, "").await;

    // ALPN h2: HTTP/2 over TLS, served by the same connection code as h2c.
    let h2 = Client {
        alpn: vec!["h2", "http/1.1"],
        ..Client::default()
    };
    let s = h2.connect(ports.web, "site.test").await.expect("handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut send = Sender::over(s).await;
    for _ in 0..2 {
        let (parts, body) = send.get("site.test", "/h2").await;
        assert_eq!(parts.version, Version::HTTP_2);
        let e = echo(&body);
        assert_eq!(e.header("x-alpn").as_deref(), Some("h2"));
        assert_eq!(e.header("x-proto").as_deref(), Some("TLSv1.3"));
        assert_eq!(e.path(), "/h2");
    }

    // ALPN http/1.1.
    let h1 = Client {
        alpn: vec!["http/1.1"],
        ..Client::default()
    };
    let s = h1.connect(ports.web, "site.test").await.expect("handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut send = Sender::over(s).await;
    let (parts, body) = send.get("site.test", "/h1").await;
    assert_eq!(parts.version, Version::HTTP_11);
    assert_eq!(echo(&body).header("x-alpn").as_deref(), Some("http/1.1"));

    // No ALPN: HTTP/1.1 found from the bytes; ssl_fc_alpn has no value.
    let none = Client::default();
    let mut send = Sender::over(
        none.connect(ports.web, "site.test")
            .await
            .expect("handshake"),
    )
    .await;
    let (_, body) = send.get("site.test", "/none").await;
    assert_eq!(echo(&body).header("x-alpn").unwrap_or_default(), "");

    // TLS 1.2 and 1.3, with OpenSSL's names as HAProxy prints them.
    for (version, proto, cipher_prefix) in [
        (&rustls::version::TLS12, "TLSv1.2", "ECDHE-ECDSA-"),
        (&rustls::version::TLS13, "TLSv1.3", "TLS_"),
    ] {
        let c = Client {
            alpn: vec!["http/1.1"],
            version: Some(version),
            ..Client::default()
        };
        let mut send =
            Sender::over(c.connect(ports.web, "site.test").await.expect("handshake")).await;
        let (_, body) = send.get("site.test", "/v").await;
        let e = echo(&body);
        assert_eq!(e.header("x-proto").as_deref(), Some(proto));
        let cipher = e.header("x-cipher").unwrap_or_default();
        assert!(
            cipher.starts_with(cipher_prefix),
            "{proto}: cipher {cipher}"
        );
        assert_eq!(e.header("x-client-used").as_deref(), Some("0"));
    }

    // A real client: curl's HTTP/2 over TLS (OpenSSL), when curl is there.
    if let Ok(out) = std::process::Command::new("curl")
        .args(["-sk", "--http2", "-o", "/dev/null", "-w", "%{http_version}"])
        .arg("--resolve")
        .arg(format!("site.test:{}:127.0.0.1", ports.web.port()))
        .arg(format!("https://site.test:{}/curl", ports.web.port()))
        .output()
    {
        assert_eq!(String::from_utf8_lossy(&out.stdout), "2", "curl --http2");
    }
}

#[tokio::test]
async fn tls13_session_tickets_resume() {
    let dir = TempDir::new("tls-resume");
    let site = self_signed(&["site.test"], "site.test");
    let (c, k) = write_pair(&dir, "site", &site);
    let backend = Backend::start("s1").await;
    let tls = format!(r#"cert = "{}", key = "{}""#, toml_path(&c), toml_path(&k));
    let (_d, ports) = tls_daemon(&tls, &backend, "").await;
    // One client config (its session store) for both connections.
    let client = Client {
        alpn: vec!["http/1.1"],
        ..Client::default()
    };
    let cfg = client.config();
    let mut kinds = Vec::new();
    for i in 0..3 {
        if i == 2 {
            // A config reload keeps the frontend's ticket keys: the ticket
            // the client holds still resumes.
            let resp = admin_send(ports.admin, Method::POST, "/reload", "").await;
            assert_eq!(resp.status, 200, "reload: {}", resp.text());
        }
        let tcp = TcpStream::connect(ports.web).await.expect("connect");
        let name = ServerName::try_from("site.test").expect("name");
        let s = TlsConnector::from(Arc::clone(&cfg))
            .connect(name, tcp)
            .await
            .expect("handshake");
        kinds.push(s.get_ref().1.handshake_kind());
        let mut send = Sender::over(s).await;
        // TLS 1.3 tickets come after the handshake: an exchange reads them.
        let (parts, _) = send.get("site.test", "/").await;
        assert_eq!(parts.status, 200);
    }
    assert_eq!(
        kinds,
        [
            Some(rustls::HandshakeKind::Full),
            Some(rustls::HandshakeKind::Resumed),
            Some(rustls::HandshakeKind::Resumed)
        ],
        "the second connection resumes with the first one's ticket, the third one across a config reload"
    );
}

#[tokio::test]
async fn mtls_required_optional_and_ssl_c_fetches() {
    let dir = TempDir::new("tls-mtls");
    let site = self_signed(&["site.test"], "site.test");
    let (c, k) = write_pair(&dir, "site", &site);
    let ca = Ca::new("Test Client CA");
    let ca_file = dir.write("ca.pem", &ca.pem());
    let mut p = params(&[], "client-one");
    p.distinguished_name.push(DnType::CountryName, "FR");
    p.distinguished_name
        .push(DnType::OrganizationName, "Example");
    let good = ca.sign(p);
    let stranger = Ca::new("Other CA").sign(params(&[], "intruder"));
    let backend = Backend::start("s1").await;

    let tls = format!(
        r#"cert = "{}", key = "{}", verify = "required", ca = "{}""#,
        toml_path(&c),
        toml_path(&k),
        toml_path(&ca_file)
    );
    let (_d, ports) = tls_daemon(&tls, &backend, "").await;
    let with_cert = Client {
        alpn: vec!["http/1.1"],
        identity: Some((good.der.clone(), good.key_der.clone_key())),
        ..Client::default()
    };
    let mut send = Sender::over(
        with_cert
            .connect(ports.web, "site.test")
            .await
            .expect("handshake"),
    )
    .await;
    let (parts, body) = send.get("site.test", "/mtls").await;
    assert_eq!(parts.status, 200);
    let e = echo(&body);
    assert_eq!(e.header("x-client-used").as_deref(), Some("1"));
    assert_eq!(e.header("x-client-verify").as_deref(), Some("0"));
    assert_eq!(e.header("x-client-cn").as_deref(), Some("client-one"));
    let dn = e.header("x-client-dn").unwrap_or_default();
    for part in ["/CN=client-one", "/C=FR", "/O=Example"] {
        assert!(dn.contains(part), "ssl_c_s_dn {dn:?} lacks {part}");
    }
    assert!(dn.starts_with('/'), "OpenSSL one-line form: {dn}");

    // Without a certificate, or with one from another CA: no request gets through.
    for (what, client) in [
        (
            "no client certificate",
            Client {
                alpn: vec!["http/1.1"],
                ..Client::default()
            },
        ),
        (
            "certificate of another CA",
            Client {
                alpn: vec!["http/1.1"],
                identity: Some((stranger.der.clone(), stranger.key_der.clone_key())),
                ..Client::default()
            },
        ),
    ] {
        let refused = match client.connect(ports.web, "site.test").await {
            Err(_) => true,
            // TLS 1.3: the client's handshake may finish before the server's
            // verdict arrives; the first read then fails.
            Ok(mut s) => {
                let _ = s
                    .write_all(b"GET / HTTP/1.1\r\nhost: site.test\r\n\r\n")
                    .await;
                let mut buf = Vec::new();
                let read = within(
                    "refused read",
                    LIMIT,
                    tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf),
                )
                .await;
                read.is_err() || buf.is_empty()
            }
        };
        assert!(refused, "{what}: the connection must be refused");
    }
    assert_eq!(
        backend.requests(),
        1,
        "only the verified client reached the server"
    );
    let stats = stats(ports.admin).await;
    let fe = named(&stats["frontends"], "web").expect("frontend");
    assert!(
        fe["tls_handshake_failures"].as_u64().unwrap_or(0) >= 1,
        "{fe}"
    );

    // verify = "optional": a client without a certificate is let in.
    let backend2 = Backend::start("s2").await;
    let tls = format!(
        r#"cert = "{}", key = "{}", verify = "optional", ca = "{}""#,
        toml_path(&c),
        toml_path(&k),
        toml_path(&ca_file)
    );
    let (_d2, ports2) = tls_daemon(&tls, &backend2, "").await;
    let plain = Client {
        alpn: vec!["http/1.1"],
        ..Client::default()
    };
    let mut send = Sender::over(
        plain
            .connect(ports2.web, "site.test")
            .await
            .expect("handshake"),
    )
    .await;
    let (_, body) = send.get("site.test", "/opt").await;
    let e = echo(&body);
    assert_eq!(e.header("x-client-used").as_deref(), Some("0"));
    assert_eq!(e.header("x-client-dn").unwrap_or_default(), "");
    let mut send = Sender::over(
        with_cert
            .connect(ports2.web, "site.test")
            .await
            .expect("handshake"),
    )
    .await;
    let (_, body) = send.get("site.test", "/opt").await;
    assert_eq!(
        echo(&body).header("x-client-cn").as_deref(),
        Some("client-one")
    );
}

#[tokio::test]
async fn handshake_timeout_and_failures_are_counted() {
    let dir = TempDir::new("tls-timeout");
    let site = self_signed(&["site.test"], "site.test");
    let (c, k) = write_pair(&dir, "site", &site);
    let backend = Backend::start("s1").await;
    let tls = format!(r#"cert = "{}", key = "{}""#, toml_path(&c), toml_path(&k));
    let (d, ports) = tls_daemon(&tls, &backend, "").await;

    // Half a ClientHello: a handshake record header announcing more bytes than sent.
    let mut half = TcpStream::connect(ports.web).await.expect("connect");
    half.write_all(&[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ])
    .await
    .expect("write");
    let start = std::time::Instant::now();
    assert!(
        wait_closed(&mut half, Duration::from_secs(5)).await,
        "a half ClientHello is cut at timeout.http_request"
    );
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(4),
        "cut after {waited:?}, timeout.http_request is 1s"
    );

    // Plain HTTP on the TLS port: a failed handshake, counted, not logged above debug.
    let mut plain = TcpStream::connect(ports.web).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    assert!(wait_closed(&mut plain, Duration::from_secs(5)).await);

    // A silent connection is closed at the same timeout and is no handshake.
    let mut silent = TcpStream::connect(ports.web).await.expect("connect");
    assert!(wait_closed(&mut silent, Duration::from_secs(5)).await);

    eventually("handshake failures counted", LIMIT, || async {
        let s = stats(ports.admin).await;
        let fe = named(&s["frontends"], "web").expect("frontend").clone();
        fe["tls_handshake_failures"].as_u64() == Some(2)
    })
    .await;
    let s = stats(ports.admin).await;
    let fe = named(&s["frontends"], "web").expect("frontend");
    assert_eq!(fe["tls_handshakes"].as_u64(), Some(0), "{fe}");
    let metrics = get(ports.admin, "/metrics").await.text();
    assert!(
        metrics.contains("portcullis_frontend_tls_handshake_failures_total{frontend=\"web\"} 2"),
        "{metrics}"
    );
    assert!(
        !d.stderr().contains("TLS handshake"),
        "handshake failures are logged at debug only:\n{}",
        d.stderr()
    );
}

/// Handshakes are counted per TLS bind address too (`/stats` `tls_binds`,
/// `portcullis_bind_tls_handshake*_total`): a failure storm on one
/// listener shows which one; plain binds have no entry.
#[tokio::test]
async fn handshakes_are_counted_per_bind() {
    let dir = TempDir::new("tls-binds");
    let site = self_signed(&["site.test"], "site.test");
    let (c, k) = write_pair(&dir, "site", &site);
    let backend = Backend::start("s1").await;
    let [plain, one, two, admin] = free_addrs::<4>();
    let config = format!(
        r#"{}[[frontend]]
name = "web"
bind = ["{plain}", "{one}", "{two}"]
default_backend = "app"
tls = {{ cert = "{}", key = "{}", binds = ["{one}", "{two}"] }}

{}"#,
        global_section(admin, &[]),
        toml_path(&c),
        toml_path(&k),
        backend_section("app", "roundrobin", &[("s1", backend.addr, 1)], "")
    );
    let _d = Daemon::start(&config, &[plain, one, two]).await;
    let client = Client::default();
    for _ in 0..2 {
        client.connect(one, "site.test").await.expect("handshake");
    }
    let mut bad = TcpStream::connect(two).await.expect("connect");
    bad.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    assert!(wait_closed(&mut bad, Duration::from_secs(5)).await);
    eventually("per-bind counters", LIMIT, || async {
        let s = stats(admin).await;
        let fe = named(&s["frontends"], "web").expect("frontend").clone();
        fe["tls_handshake_failures"].as_u64() == Some(1) && fe["tls_handshakes"].as_u64() == Some(2)
    })
    .await;
    let s = stats(admin).await;
    let fe = named(&s["frontends"], "web").expect("frontend");
    let binds = fe["tls_binds"].as_array().expect("tls_binds");
    assert_eq!(binds.len(), 2, "{fe}");
    let by = |a: SocketAddr| {
        binds
            .iter()
            .find(|b| b["addr"] == a.to_string())
            .unwrap_or_else(|| panic!("{a} in {fe}"))
    };
    assert_eq!(by(one)["tls_handshakes"], 2, "{fe}");
    assert_eq!(by(one)["tls_handshake_failures"], 0, "{fe}");
    assert_eq!(by(two)["tls_handshakes"], 0, "{fe}");
    assert_eq!(by(two)["tls_handshake_failures"], 1, "{fe}");
    let metrics = get(admin, "/metrics").await.text();
    for line in [
        format!("portcullis_bind_tls_handshakes_total{{frontend=\"web\",bind=\"{one}\"}} 2"),
        format!(
            "portcullis_bind_tls_handshake_failures_total{{frontend=\"web\",bind=\"{two}\"}} 1"
        ),
    ] {
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
}

#[tokio::test]
async fn plain_and_tls_binds_redirect_scheme_and_hsts() {
    let dir = TempDir::new("tls-mixed");
    let site = self_signed(&["site.test"], "site.test");
    let (c, k) = write_pair(&dir, "site", &site);
    let backend = Backend::start("s1").await;
    let [plain, secure, admin] = free_addrs::<3>();
    let config = format!(
        r#"{}[[frontend]]
name = "web"
bind = ["{plain}", "{secure}"]
default_backend = "app"
tls = {{ cert = "{}", key = "{}", binds = ["{secure}"] }}
http_request = [
  {{ redirect_scheme = "https", code = 301, unless = "ssl_fc" }},
]
http_response = [
  {{ set_header = "Strict-Transport-Security", value = "max-age=31536000", if = "ssl_fc" }},
]

{}"#,
        global_section(admin, &[]),
        toml_path(&c),
        toml_path(&k),
        backend_section("app", "roundrobin", &[("s1", backend.addr, 1)], "")
    );
    let _d = Daemon::start(&config, &[plain, secure]).await;
    let mut h1 = H1::connect(plain).await;
    let resp = h1
        .send(
            Request::builder()
                .uri("/login?next=1")
                .header("host", "shop.test")
                .body(empty())
                .expect("request"),
        )
        .await;
    assert_eq!(resp.status, 301);
    assert_eq!(
        resp.header("location").as_deref(),
        Some("https://shop.test/login?next=1")
    );
    assert_eq!(backend.requests(), 0);

    let client = Client {
        alpn: vec!["h2"],
        ..Client::default()
    };
    let mut send = Sender::over(
        client
            .connect(secure, "shop.test")
            .await
            .expect("handshake"),
    )
    .await;
    let (parts, body) = send.get("shop.test", "/login").await;
    assert_eq!(parts.status, 200);
    assert_eq!(
        parts
            .headers
            .get("strict-transport-security")
            .map(|v| v.as_bytes()),
        Some(&b"max-age=31536000"[..])
    );
    assert_eq!(
        echo(&body).header("x-forwarded-proto").as_deref(),
        Some("https")
    );
}

/// `portcullis check` on a config whose `tls` is `tls`; its stderr.
fn check_tls(dir: &TempDir, tls: &str) -> Finished {
    let [web, backend] = free_addrs::<2>();
    let config = format!(
        "[[frontend]]\nname = \"web\"\nbind = \"{web}\"\ndefault_backend = \"app\"\ntls = {{ {tls} }}\n\n[[backend]]\nname = \"app\"\nserver = [{{ name = \"s1\", addr = \"{backend}\" }}]\n"
    );
    let path = dir.write("check.toml", &config);
    run_bin(&["check", "-c", path.to_str().expect("utf-8 path")], LIMIT)
}

#[test]
fn check_refuses_bad_certificates_naming_the_file() {
    let dir = TempDir::new("tls-check");
    let good = self_signed(&["site.test"], "site.test");
    let (gc, gk) = write_pair(&dir, "good", &good);
    let other = self_signed(&["other.test"], "other.test");
    let (_, ok) = write_pair(&dir, "other", &other);

    let key = KeyPair::generate().expect("key");
    let mut p = params(&["old.test"], "old.test");
    p.not_before = rcgen::date_time_ymd(2001, 1, 1);
    p.not_after = rcgen::date_time_ymd(2002, 1, 1);
    let expired = finish(&p.self_signed(&key).expect("cert"), &key);
    let (ec, ek) = write_pair(&dir, "expired", &expired);

    let key = KeyPair::generate().expect("key");
    let mut p = params(&["future.test"], "future.test");
    p.not_before = rcgen::date_time_ymd(2999, 1, 1);
    p.not_after = rcgen::date_time_ymd(3000, 1, 1);
    let future = finish(&p.self_signed(&key).expect("cert"), &key);
    let (fc, fk) = write_pair(&dir, "future", &future);

    let garbage = dir.write(
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
    );
    let missing = dir.path().join("missing.pem");

    let ok_out = check_tls(
        &dir,
        &format!(r#"cert = "{}", key = "{}""#, toml_path(&gc), toml_path(&gk)),
    );
    assert_eq!(
        ok_out.status.and_then(|s| s.code()),
        Some(0),
        "{}",
        ok_out.stderr
    );

    for (tls, file, words) in [
        (
            format!(r#"cert = "{}", key = "{}""#, toml_path(&ec), toml_path(&ek)),
            ec.clone(),
            "has expired",
        ),
        (
            format!(r#"cert = "{}", key = "{}""#, toml_path(&fc), toml_path(&fk)),
            fc.clone(),
            "not yet valid",
        ),
        (
            format!(r#"cert = "{}", key = "{}""#, toml_path(&gc), toml_path(&ok)),
            ok.clone(),
            "does not match the certificate",
        ),
        (
            format!(
                r#"cert = "{}", key = "{}""#,
                toml_path(&garbage),
                toml_path(&gk)
            ),
            garbage.clone(),
            "unparsable PEM",
        ),
        (
            format!(
                r#"cert = "{}", key = "{}""#,
                toml_path(&missing),
                toml_path(&gk)
            ),
            missing.clone(),
            "cannot read",
        ),
        (
            format!(
                r#"cert = "{}", key = "{}", verify = "required", ca = "{}""#,
                toml_path(&gc),
                toml_path(&gk),
                toml_path(&ec)
            ),
            ec.clone(),
            "has expired",
        ),
    ] {
        let out = check_tls(&dir, &tls);
        assert_eq!(
            out.status.and_then(|s| s.code()),
            Some(1),
            "{tls}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(&file.display().to_string()) && out.stderr.contains(words),
            "{tls}: the error names {} and says {words:?}:\n{}",
            file.display(),
            out.stderr
        );
        assert!(
            out.stderr.contains("check.toml:5:"),
            "located at the tls line:\n{}",
            out.stderr
        );
    }

    // Settings errors point at their value.
    for (tls, words) in [
        (format!(r#"cert = "{}""#, toml_path(&gc)), "needs tls.key"),
        (
            format!(
                r#"cert = "{}", key = "{}", min_version = "1.1""#,
                toml_path(&gc),
                toml_path(&gk)
            ),
            "TLS 1.2 and 1.3 only",
        ),
        (
            format!(
                r#"cert = "{}", key = "{}", verify = "required""#,
                toml_path(&gc),
                toml_path(&gk)
            ),
            "needs tls.ca",
        ),
        (
            format!(
                r#"cert = "{}", key = "{}", alpn = ["spdy/3"]"#,
                toml_path(&gc),
                toml_path(&gk)
            ),
            "unknown ALPN protocol",
        ),
        (
            format!(
                r#"cert = "{}", key = "{}", binds = ["127.0.0.1:1"]"#,
                toml_path(&gc),
                toml_path(&gk)
            ),
            "not one of this frontend's bind addresses",
        ),
        (String::new(), "tls needs a certificate"),
    ] {
        let out = check_tls(&dir, &tls);
        assert_eq!(
            out.status.and_then(|s| s.code()),
            Some(1),
            "{tls}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(words),
            "{tls}: says {words:?}:\n{}",
            out.stderr
        );
    }
}

#[tokio::test]
async fn certificate_reload_keeps_open_connections() {
    let dir = TempDir::new("tls-reload");
    let first = self_signed(&["site.test"], "first");
    let second = self_signed(&["site.test"], "second");
    let (c, k) = write_pair(&dir, "site", &first);
    let backend = Backend::start("s1").await;
    let tls = format!(r#"cert = "{}", key = "{}""#, toml_path(&c), toml_path(&k));
    let (_d, ports) = tls_daemon(&tls, &backend, "").await;
    let client = Client {
        alpn: vec!["http/1.1"],
        ..Client::default()
    };
    let s = client
        .connect(ports.web, "site.test")
        .await
        .expect("handshake");
    assert_eq!(served(&s), first.der);
    let mut open = Sender::over(s).await;
    assert_eq!(open.get("site.test", "/before").await.0.status, 200);

    // Without the token: refused.
    let resp = H1::connect(ports.admin)
        .await
        .send(
            request(Method::POST, ports.admin, "/certificates/reload")
                .body(empty())
                .expect("req"),
        )
        .await;
    assert_eq!(resp.status, 401, "{}", resp.text());

    // A broken file: refused, the certificate in force stays.
    std::fs::write(&k, "not a key").expect("write key");
    let resp = admin_send(ports.admin, Method::POST, "/certificates/reload", "").await;
    assert_eq!(resp.status, 422, "{}", resp.text());
    assert!(
        resp.text().contains(&k.display().to_string()),
        "{}",
        resp.text()
    );
    let s = client
        .connect(ports.web, "site.test")
        .await
        .expect("handshake");
    assert_eq!(served(&s), first.der, "a failed reload changes nothing");

    // The new pair: new handshakes get it; the open connection goes on.
    write_pair(&dir, "site", &second);
    let resp = admin_send(ports.admin, Method::POST, "/certificates/reload", "").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["reloaded"][0], "web");
    let s = client
        .connect(ports.web, "site.test")
        .await
        .expect("handshake");
    assert_eq!(served(&s), second.der, "reloaded certificate served");
    let (parts, body) = open.get("site.test", "/after").await;
    assert_eq!(
        parts.status, 200,
        "the connection opened before the reload still serves"
    );
    assert_eq!(echo(&body).path(), "/after");
}

/// `configs/https.toml` as shipped, with a certificate made by the openssl
/// command its header (and the README) shows: HTTP/2 over TLS, the
/// redirect on the plain bind, HSTS.
#[tokio::test]
async fn https_example_config_works_with_an_openssl_certificate() {
    let dir = TempDir::new("tls-example");
    std::fs::create_dir_all(dir.path().join("certs")).expect("mkdir");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", "365", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args([
            "-keyout",
            "certs/localhost.key",
            "-out",
            "certs/localhost.pem",
        ])
        .current_dir(dir.path())
        .output()
        .expect("openssl (scripts/setup.sh installs it)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../configs/https.toml"
    ))
    .expect("configs/https.toml");
    let [plain, secure, admin] = free_addrs::<3>();
    let config = shipped
        .replace("127.0.0.1:8080", &plain.to_string())
        .replace("127.0.0.1:8443", &secure.to_string())
        .replace("127.0.0.1:9901", &admin.to_string())
        .replace("workers = 0", "workers = 1");
    // The config's relative paths resolve against its own directory.
    let path = dir.write("https.toml", &config);
    let out = run_bin(&["check", "-c", path.to_str().expect("utf-8 path")], LIMIT);
    assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{}", out.stderr);
    // The daemon runs from a config written elsewhere: absolute certificate paths.
    let config = config.replace(
        "\"certs/localhost.",
        &format!("\"{}/certs/localhost.", toml_path(dir.path())),
    );
    let _daemon = Daemon::start(&config, &[plain, secure]).await;
    let client = Client {
        alpn: vec!["h2", "http/1.1"],
        ..Client::default()
    };
    let mut send = Sender::over(
        client
            .connect(secure, "localhost")
            .await
            .expect("handshake"),
    )
    .await;
    let (parts, body) = send.get("localhost", "/hello").await;
    assert_eq!(parts.version, Version::HTTP_2);
    assert_eq!(parts.status, 200);
    let text = String::from_utf8_lossy(&body).into_owned();
    assert!(text.starts_with("hello over TLSv1.3 (TLS_"), "{text}");
    assert!(text.contains("ALPN h2, SNI localhost"), "{text}");
    assert_eq!(
        parts
            .headers
            .get("strict-transport-security")
            .map(|v| v.as_bytes()),
        Some(&b"max-age=31536000"[..])
    );
    let resp = H1::connect(plain)
        .await
        .send(
            Request::builder()
                .uri("/hello")
                .header("host", "localhost:8080")
                .body(empty())
                .expect("request"),
        )
        .await;
    assert_eq!(resp.status, 301);
    assert_eq!(
        resp.header("location").as_deref(),
        Some("https://localhost:8080/hello")
    );
    assert!(
        resp.header("strict-transport-security").is_none(),
        "no HSTS in clear"
    );
}

/// Upstream TLS through two real daemons: the back one terminates TLS with
/// its own certificate; the front one verifies it against the `ca` file
/// (pass), against the bundled web PKI roots (fail: 502), or not at all
/// (`verify = false`), and reuses one pooled TLS connection.
#[tokio::test]
async fn upstream_tls_verifies_and_reuses_connections() {
    let dir = TempDir::new("tls-upstream");
    let ca = Ca::new("Internal CA");
    let ca_file = dir.write("ca.pem", &ca.pem());
    let server_cert = ca.sign(params(&["backend.test"], "backend.test"));
    let (c, k) = write_pair(&dir, "backend", &server_cert);
    let [back, back_admin, front, front_admin] = free_addrs::<4>();
    let back_config = format!(
        r#"{}[[frontend]]
name = "back"
bind = "{back}"
tls = {{ cert = "{}", key = "{}" }}
http_request = [
  {{ return = 200, body = "upstream %[ssl_fc_sni] %[hdr(x-forwarded-proto)]" }},
]
"#,
        global_section(back_admin, &[]),
        toml_path(&c),
        toml_path(&k),
    );
    let _back = Daemon::start(&back_config, &[back]).await;
    let front_config = format!(
        r#"{}[[frontend]]
name = "web"
bind = "{front}"
default_backend = "verified"
http_request = [
  {{ use_backend = "roots", if = "path_beg /roots" }},
  {{ use_backend = "unverified", if = "path_beg /unverified" }},
  {{ use_backend = "by_host", if = "path_beg /host" }},
]

[[backend]]
name = "verified"
tls = {{ ca = "{ca}", sni = "backend.test" }}
server = [{{ name = "s1", addr = "{back}" }}]

[[backend]]
name = "roots"
tls = {{ sni = "backend.test" }}
server = [{{ name = "s1", addr = "{back}" }}]

[[backend]]
name = "unverified"
server = [{{ name = "s1", addr = "{back}", tls = {{ verify = false, sni = "other.test" }} }}]

[[backend]]
name = "by_host"
tls = {{ ca = "{ca}", sni = "%[req.hdr(host)]" }}
server = [{{ name = "s1", addr = "{back}" }}]
"#,
        global_section(front_admin, &[]),
        ca = toml_path(&ca_file),
    );
    let _front = Daemon::start(&front_config, &[front]).await;
    let mut h1 = H1::connect(front).await;
    for _ in 0..3 {
        let resp = h1.get("/verified").await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.text(), "upstream backend.test http");
    }
    let back_stats = stats(back_admin).await;
    let fe = named(&back_stats["frontends"], "back").expect("frontend");
    assert_eq!(
        fe["tls_handshakes"].as_u64(),
        Some(1),
        "three requests over one pooled TLS connection: {fe}"
    );

    let resp = h1.get("/roots").await;
    assert_eq!(
        resp.status,
        502,
        "a certificate the web PKI roots do not know: {}",
        resp.text()
    );

    let resp = h1.get("/unverified").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "upstream other.test http");

    // SNI from the request's Host: a name the certificate has verifies, another does not.
    let resp = H1::connect(front)
        .await
        .send(
            Request::builder()
                .uri("/host")
                .header("host", "backend.test:8443")
                .body(empty())
                .expect("request"),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "upstream backend.test http");
    let resp = H1::connect(front)
        .await
        .send(
            Request::builder()
                .uri("/host")
                .header("host", "elsewhere.test")
                .body(empty())
                .expect("request"),
        )
        .await;
    assert_eq!(resp.status, 502, "{}", resp.text());
}

// ---------------------------------------------------------------------------
// OCSP stapling
// ---------------------------------------------------------------------------

/// Records the OCSP response the server stapled (empty: none).
#[derive(Debug)]
struct Stapled {
    any: AnyCert,
    seen: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl ServerCertVerifier for Stapled {
    fn verify_server_cert(
        &self,
        end: &CertificateDer<'_>,
        chain: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().expect("lock") = ocsp.to_vec();
        self.any.verify_server_cert(end, chain, name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.any.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.any.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.any.supported_verify_schemes()
    }
}

/// The OCSP response `addr` staples for `sni` over TLS `version` (empty: none).
#[allow(deprecated)] // ring's provider, as the daemon's
async fn stapled(
    addr: SocketAddr,
    sni: &str,
    version: &'static rustls::SupportedProtocolVersion,
) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let cfg = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[version])
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Stapled {
            any: AnyCert(provider),
            seen: Arc::clone(&seen),
        }))
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    within(
        "TLS handshake",
        LIMIT,
        TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
    )
    .await
    .expect("handshake");
    seen.lock().expect("lock").clone()
}

/// Runs openssl in `dir`, failing the test with its stderr.
fn openssl(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CA, a server certificate for `ocsp.test` it signed (`srv.pem`, key
/// `srv.key`, chain with the CA `chain.pem`), and OCSP responses made by
/// `openssl ocsp` as a responder: `good.der`, `revoked.der`,
/// `unknown.der`, and `other.der` (good, about another certificate).
fn ocsp_pki(dir: &TempDir) {
    let d = dir.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        d,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "30",
                "-subj",
                "/CN=Test OCSP CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    for name in ["srv", "other"] {
        openssl(
            d,
            &[
                &["req"][..],
                &ec,
                &[
                    "-subj",
                    &format!("/CN={name}.ocsp.test"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            ]
            .concat(),
        );
        dir.write(
            &format!("{name}.ext"),
            &format!("subjectAltName=DNS:{name}.ocsp.test\n"),
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "7",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
    let chain = std::fs::read_to_string(d.join("srv.pem")).expect("srv.pem")
        + &std::fs::read_to_string(d.join("ca.pem")).expect("ca.pem");
    dir.write("chain.pem", &chain);
    let serial = |name: &str| {
        openssl(
            d,
            &["x509", "-in", &format!("{name}.pem"), "-noout", "-serial"],
        )
        .trim()
        .trim_start_matches("serial=")
        .to_string()
    };
    let (srv, other) = (serial("srv"), serial("other"));
    // openssl's index.txt: status, expiry, revocation time, serial, file, subject.
    dir.write("good.idx", &format!("V\t351231235959Z\t\t{srv}\tunknown\t/CN=srv.ocsp.test\nV\t351231235959Z\t\t{other}\tunknown\t/CN=other.ocsp.test\n"));
    dir.write(
        "revoked.idx",
        &format!("R\t351231235959Z\t240101000000Z\t{srv}\tunknown\t/CN=srv.ocsp.test\n"),
    );
    dir.write("unknown.idx", "");
    for name in ["srv", "other"] {
        openssl(
            d,
            &[
                "ocsp",
                "-issuer",
                "ca.pem",
                "-cert",
                &format!("{name}.pem"),
                "-no_nonce",
                "-reqout",
                &format!("{name}.req"),
            ],
        );
    }
    for (out, idx, req) in [
        ("good", "good", "srv"),
        ("revoked", "revoked", "srv"),
        ("unknown", "unknown", "srv"),
        ("other", "good", "other"),
    ] {
        openssl(
            d,
            &[
                "ocsp",
                "-index",
                &format!("{idx}.idx"),
                "-rsigner",
                "ca.pem",
                "-rkey",
                "ca.key",
                "-CA",
                "ca.pem",
                "-reqin",
                &format!("{req}.req"),
                "-respout",
                &format!("{out}.der"),
                "-ndays",
                "1",
            ],
        );
    }
}

/// A stapled response is served as HAProxy serves it: `<cert>.ocsp` beside
/// the certificate is picked up, over TLS 1.2 and 1.3, byte for byte what
/// HAProxy 2.6 staples from the same files; `POST /certificates/reload`
/// staples a new one; a response that is not about the certificate, or
/// whose status is unknown, or that is not OCSP at all, is a config error
/// naming the file.
#[tokio::test]
async fn ocsp_responses_are_stapled_checked_and_reloaded() {
    haproxy_26();
    let dir = TempDir::new("tls-ocsp");
    ocsp_pki(&dir);
    let d = dir.path();
    std::fs::copy(d.join("good.der"), d.join("chain.pem.ocsp")).expect("copy");
    let good = std::fs::read(d.join("good.der")).expect("good.der");
    let backend = Backend::start("s1").await;
    let chain = d.join("chain.pem");
    let tls = format!(
        r#"cert = "{}", key = "{}""#,
        toml_path(&chain),
        toml_path(&d.join("srv.key"))
    );
    let (_daemon, ports) = tls_daemon(&tls, &backend, "").await;
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        assert_eq!(
            stapled(ports.web, "srv.ocsp.test", v).await,
            good,
            "stapled over {v:?}"
        );
    }

    // HAProxy 2.6 on the same files (its crt holds the key too).
    let pem = std::fs::read_to_string(&chain).expect("chain")
        + &std::fs::read_to_string(d.join("srv.key")).expect("key");
    dir.write("ha.pem", &pem);
    std::fs::copy(d.join("good.der"), d.join("ha.pem.ocsp")).expect("copy");
    let ha_addr = free_addr();
    let cfg = format!(
        "global\n  log stderr local0\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\nfrontend web\n  bind {ha_addr} ssl crt {}/ha.pem\n  http-request return status 200\n",
        d.display()
    );
    let ha = HaProxy::start(&cfg, d, ha_addr).await;
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        assert_eq!(
            stapled(ha_addr, "srv.ocsp.test", v).await,
            good,
            "HAProxy staples the same response over {v:?}: {}",
            ha.log()
        );
    }

    // A new response (revoked: HAProxy staples it too, for the client to
    // see) is picked up by the certificate reload.
    std::fs::copy(d.join("revoked.der"), d.join("chain.pem.ocsp")).expect("copy");
    let resp = admin_send(ports.admin, Method::POST, "/certificates/reload", "").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let revoked = std::fs::read(d.join("revoked.der")).expect("revoked.der");
    assert_eq!(
        stapled(ports.web, "srv.ocsp.test", &rustls::version::TLS13).await,
        revoked
    );

    // Wrong responses are refused at `check`, naming the file and the reason.
    for (file, reason) in [
        ("unknown.der", "certificate status is unknown"),
        ("other.der", "Certificate ID does not match"),
        ("srv.pem", "not a DER OCSP response"),
    ] {
        let tls = format!(
            r#"cert = "{}", key = "{}", ocsp = "{}""#,
            toml_path(&chain),
            toml_path(&d.join("srv.key")),
            toml_path(&d.join(file))
        );
        let out = check_tls(&dir, &tls);
        assert_eq!(
            out.status.and_then(|s| s.code()),
            Some(1),
            "{file}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(file) && out.stderr.contains(reason),
            "{file}: expected {reason:?} in: {}",
            out.stderr
        );
    }
    // Without the issuer in the chain (nor a `.issuer` file) the response
    // cannot be matched: a config error saying so.
    let tls = format!(
        r#"cert = "{}", key = "{}", ocsp = "{}""#,
        toml_path(&d.join("srv.pem")),
        toml_path(&d.join("srv.key")),
        toml_path(&d.join("good.der"))
    );
    let out = check_tls(&dir, &tls);
    assert!(out.stderr.contains("issuer"), "{}", out.stderr);
    // The issuer beside the certificate, as HAProxy's `<crt>.issuer`, is enough.
    std::fs::copy(d.join("ca.pem"), d.join("srv.pem.issuer")).expect("copy");
    let out = check_tls(&dir, &tls);
    assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{}", out.stderr);
}
