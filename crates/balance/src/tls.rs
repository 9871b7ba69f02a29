//! TLS termination for the balancer's front side: loads the configured certificate chains and
//! keys into one `TlsAcceptor` and picks the certificate per connection from the client's SNI.
//!
//! Name matching is rustls's own (webpki's subjectAltName check, the same code a client uses to
//! verify us), so what we select is exactly what a verifying client will accept, wildcards
//! included. The subject CN is not consulted, just as modern clients ignore it.

use std::path::Path;
use std::sync::Arc;

use rustls::client::verify_server_name;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use uphold_config::balance::TlsCert;

/// The only application protocol the front side speaks; clients offering only h2 are refused
/// by rustls with a `no_application_protocol` alert rather than silently talking past each other.
const ALPN_HTTP11: &[u8] = b"http/1.1";
const ALPN_H2: &[u8] = b"h2";

/// Loads every certificate chain and key; SNI picks the certificate whose names
/// (subjectAltName DNS entries, including wildcards like `*.example.com` matching one label)
/// match the client's server name; no SNI or no match: the first certificate, so the first entry
/// of the configuration is the default. When several certificates match, the earlier one wins.
/// ALPN offered: h2 (HTTP/2 to clients), then http/1.1. TLS 1.2 and 1.3.
///
/// Errors name the file and what is wrong ("no certificate in /x.pem", "no private key in ...",
/// "key does not match the certificate in ..."), never panic.
pub fn acceptor(certs: &[TlsCert]) -> Result<tokio_rustls::TlsAcceptor, String> {
    if certs.is_empty() {
        return Err("TLS termination needs at least one certificate".to_string());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let keys = certs
        .iter()
        .map(|c| load_certified_key(c, &provider).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { keys }));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Picks a certificate by SNI; see [`acceptor`] for the rules.
#[derive(Debug)]
struct SniResolver {
    /// In configuration order; never empty (checked in [`acceptor`]).
    keys: Vec<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let by_name = server_name
            .and_then(|name| ServerName::try_from(name).ok())
            .and_then(|name| self.keys.iter().find(|k| serves(k, &name)));
        by_name.or_else(|| self.keys.first()).cloned()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(client_hello.server_name())
    }
}

/// Whether the end-entity certificate of `key` is valid for `name`. The certificate is parsed
/// again on every call because the parsed form borrows the DER; parsing is a walk over a few
/// hundred bytes, small next to the handshake's signature.
fn serves(key: &CertifiedKey, name: &ServerName<'_>) -> bool {
    let Some(der) = key.cert.first() else {
        return false;
    };
    ParsedCertificate::try_from(der).is_ok_and(|cert| verify_server_name(&cert, name).is_ok())
}

fn load_certified_key(files: &TlsCert, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = read_chain(&files.cert)?;
    // Parsing once here turns a corrupt certificate into a load error instead of a certificate
    // that silently never matches any name.
    ParsedCertificate::try_from(&chain[0]).map_err(|e| {
        format!(
            "the certificate in {} cannot be parsed: {e}",
            files.cert.display()
        )
    })?;
    let key_der = read_key(&files.key)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("unusable private key in {}: {e}", files.key.display()))?;
    let key = CertifiedKey::new(chain, signing_key);
    match key.keys_match() {
        Ok(()) => Ok(key),
        // rustls cannot derive a public key for every key type; such a pair is served as
        // given, and a mismatch then shows up as failed handshakes rather than here.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(key),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(format!(
                "key does not match the certificate in {} (key from {})",
                files.cert.display(),
                files.key.display()
            ))
        }
        Err(e) => Err(format!(
            "cannot check the key {} against the certificate in {}: {e}",
            files.key.display(),
            files.cert.display()
        )),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The chain as the file lists it: end-entity certificate first, then intermediates.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(path)?;
    let chain = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM in {}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_file(path)?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => {
            // rustls-pemfile skips encrypted keys without a word; say why the file looks empty.
            let hint = if contains(&pem, b"ENCRYPTED PRIVATE KEY") {
                " (it holds an encrypted key; store the key unencrypted)"
            } else {
                ""
            };
            Err(format!("no private key in {}{hint}", path.display()))
        }
        Err(e) => Err(format!("bad PEM in {}: {e}", path.display())),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::UnixTime;
    use rustls::{DigitallySignedStruct, ProtocolVersion, RootCertStore, SignatureScheme};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const DEADLINE: Duration = Duration::from_secs(10);

    /// A test CA and leaf certificates it signs, written as PEM files into a temp dir.
    struct Pki {
        dir: tempfile::TempDir,
        ca: rcgen::Certificate,
        ca_key: KeyPair,
    }

    /// One leaf's files and DER, to compare with what the client was served.
    struct Leaf {
        files: TlsCert,
        der: CertificateDer<'static>,
    }

    impl Pki {
        fn new() -> Pki {
            let ca_key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca = params.self_signed(&ca_key).unwrap();
            Pki {
                dir: tempfile::tempdir().unwrap(),
                ca,
                ca_key,
            }
        }

        fn path(&self, file: &str) -> PathBuf {
            self.dir.path().join(file)
        }

        fn write(&self, file: &str, text: &str) -> PathBuf {
            let path = self.path(file);
            std::fs::write(&path, text).unwrap();
            path
        }

        /// A leaf for `names`, written as `<stem>.crt` (leaf then CA, as a real chain file)
        /// and `<stem>.key`.
        fn leaf(&self, stem: &str, names: &[&str]) -> Leaf {
            let key = KeyPair::generate().unwrap();
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &self.ca, &self.ca_key)
                .unwrap();
            let chain = format!("{}{}", cert.pem(), self.ca.pem());
            Leaf {
                files: TlsCert {
                    cert: self.write(&format!("{stem}.crt"), &chain),
                    key: self.write(&format!("{stem}.key"), &key.serialize_pem()),
                },
                der: cert.der().clone(),
            }
        }

        fn roots(&self) -> RootCertStore {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca.der().clone()).unwrap();
            roots
        }
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A client that verifies the chain and the name, like a browser would.
    fn verifying_client(pki: &Pki) -> rustls::ClientConfig {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(pki.roots())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }

    /// Accepts any certificate (but still checks the handshake signatures), so the fallback
    /// certificate, which does not match the name asked for, can be looked at.
    #[derive(Debug)]
    struct AnyCert(Arc<CryptoProvider>);

    impl ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
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

    fn trusting_client() -> rustls::ClientConfig {
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider())))
            .with_no_client_auth()
    }

    /// What the client saw of one real handshake over loopback.
    #[derive(Debug)]
    struct Seen {
        cert: CertificateDer<'static>,
        version: ProtocolVersion,
        alpn: Option<Vec<u8>>,
    }

    /// Runs one handshake and a few bytes of application data; fails the test on a handshake
    /// error or after the deadline.
    async fn handshake(
        acceptor: tokio_rustls::TlsAcceptor,
        client: rustls::ClientConfig,
        name: &str,
    ) -> Result<Seen, String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
            tls.shutdown().await.map_err(|e| e.to_string())
        });
        let name = ServerName::try_from(name.to_string()).unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let client = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let mut tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            assert_eq!(&buf, b"ok");
            let conn = tls.get_ref().1;
            Ok::<_, String>(Seen {
                cert: conn.peer_certificates().unwrap()[0].clone(),
                version: conn.protocol_version().unwrap(),
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            })
        };
        let seen = tokio::time::timeout(DEADLINE, client)
            .await
            .map_err(|_| "client handshake timed out".to_string())?;
        if seen.is_ok() {
            tokio::time::timeout(DEADLINE, server)
                .await
                .expect("server side timed out")
                .unwrap()?;
        } else {
            server.abort();
        }
        seen
    }

    fn load_err(certs: &[TlsCert]) -> String {
        match acceptor(certs) {
            Ok(_) => panic!("loading {certs:?} should fail"),
            Err(e) => e,
        }
    }

    fn two_certs(pki: &Pki) -> (Leaf, Leaf) {
        (
            pki.leaf("a", &["a.example.com"]),
            pki.leaf("b", &["*.b.example.com"]),
        )
    }

    #[tokio::test]
    async fn sni_picks_the_exact_name() {
        let pki = Pki::new();
        let (a, b) = two_certs(&pki);
        // A listed second, so being served A cannot be the default at work.
        let acceptor = acceptor(&[b.files.clone(), a.files.clone()]).unwrap();
        let seen = handshake(acceptor, verifying_client(&pki), "a.example.com")
            .await
            .unwrap();
        assert_eq!(seen.cert, a.der);
        assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));
    }

    #[tokio::test]
    async fn sni_matches_a_wildcard_for_one_label() {
        let pki = Pki::new();
        let (a, b) = two_certs(&pki);
        let acceptor = acceptor(&[a.files.clone(), b.files.clone()]).unwrap();
        let seen = handshake(acceptor.clone(), verifying_client(&pki), "x.b.example.com")
            .await
            .unwrap();
        assert_eq!(seen.cert, b.der);
        // Matching is case-insensitive, as DNS names are.
        let seen = handshake(acceptor, verifying_client(&pki), "X.B.Example.COM")
            .await
            .unwrap();
        assert_eq!(seen.cert, b.der);
    }

    #[tokio::test]
    async fn wildcard_does_not_cover_two_labels_or_the_bare_domain() {
        let pki = Pki::new();
        let (a, b) = two_certs(&pki);
        let acceptor = acceptor(&[a.files.clone(), b.files.clone()]).unwrap();
        for name in ["y.x.b.example.com", "b.example.com"] {
            let seen = handshake(acceptor.clone(), trusting_client(), name)
                .await
                .unwrap();
            assert_eq!(seen.cert, a.der, "{name} must fall back to the first");
        }
    }

    #[tokio::test]
    async fn unknown_name_gets_the_first_certificate() {
        let pki = Pki::new();
        let (a, b) = two_certs(&pki);
        let acceptor = acceptor(&[a.files.clone(), b.files.clone()]).unwrap();
        let seen = handshake(acceptor.clone(), trusting_client(), "unknown.test")
            .await
            .unwrap();
        assert_eq!(seen.cert, a.der);
        // Order decides the default: listed second-first, B is what unknown names get.
        let acceptor = super::acceptor(&[b.files.clone(), a.files.clone()]).unwrap();
        let seen = handshake(acceptor, trusting_client(), "unknown.test")
            .await
            .unwrap();
        assert_eq!(seen.cert, b.der);
    }

    #[tokio::test]
    async fn no_sni_gets_the_first_certificate() {
        let pki = Pki::new();
        let (a, b) = two_certs(&pki);
        let acceptor = acceptor(&[b.files.clone(), a.files.clone()]).unwrap();
        let mut client = trusting_client();
        client.enable_sni = false;
        let seen = handshake(acceptor.clone(), client, "a.example.com")
            .await
            .unwrap();
        assert_eq!(seen.cert, b.der);
        // An IP address is never sent as SNI either.
        let seen = handshake(acceptor, trusting_client(), "127.0.0.1")
            .await
            .unwrap();
        assert_eq!(seen.cert, b.der);
    }

    #[tokio::test]
    async fn speaks_tls12_and_tls13() {
        let pki = Pki::new();
        let a = pki.leaf("a", &["a.example.com"]);
        let acceptor = acceptor(std::slice::from_ref(&a.files)).unwrap();
        let seen = handshake(acceptor.clone(), verifying_client(&pki), "a.example.com")
            .await
            .unwrap();
        assert_eq!(seen.version, ProtocolVersion::TLSv1_3);
        let mut tls12 = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(pki.roots())
            .with_no_client_auth();
        tls12.alpn_protocols = vec![b"http/1.1".to_vec()];
        let seen = handshake(acceptor, tls12, "a.example.com").await.unwrap();
        assert_eq!(seen.version, ProtocolVersion::TLSv1_2);
        assert_eq!(seen.alpn.as_deref(), Some(&b"http/1.1"[..]));
    }

    #[tokio::test]
    async fn alpn_prefers_h2_and_serves_http11_and_plain_clients() {
        let pki = Pki::new();
        let a = pki.leaf("a", &["a.example.com"]);
        let acceptor = acceptor(std::slice::from_ref(&a.files)).unwrap();
        // A client without ALPN is served (plain HTTP/1.1 is implied).
        let mut plain = verifying_client(&pki);
        plain.alpn_protocols.clear();
        let seen = handshake(acceptor.clone(), plain, "a.example.com")
            .await
            .unwrap();
        assert_eq!(seen.alpn, None);
        let mut h11 = verifying_client(&pki);
        h11.alpn_protocols = vec![b"http/1.1".to_vec()];
        let seen = handshake(acceptor.clone(), h11, "a.example.com")
            .await
            .unwrap();
        assert_eq!(seen.alpn.as_deref(), Some(&b"http/1.1"[..]));
        // A client that speaks neither is refused rather than answered wrongly.
        let mut other = verifying_client(&pki);
        other.alpn_protocols = vec![b"spdy/3".to_vec()];
        let err = handshake(acceptor, other, "a.example.com")
            .await
            .unwrap_err();
        assert!(err.contains("NoApplicationProtocol"), "{err}");
    }

    #[test]
    fn missing_files_are_named() {
        let pki = Pki::new();
        let a = pki.leaf("a", &["a.example.com"]);
        let missing = pki.path("missing.crt");
        let err = load_err(&[TlsCert {
            cert: missing.clone(),
            key: a.files.key.clone(),
        }]);
        assert!(err.starts_with("cannot read "), "{err}");
        assert!(err.contains(&missing.display().to_string()), "{err}");

        let missing = pki.path("missing.key");
        let err = load_err(&[TlsCert {
            cert: a.files.cert.clone(),
            key: missing.clone(),
        }]);
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }

    #[test]
    fn a_file_without_a_certificate() {
        let pki = Pki::new();
        let a = pki.leaf("a", &["a.example.com"]);
        // Certificate and key swapped: the "certificate" file holds only a key.
        let err = load_err(&[TlsCert {
            cert: a.files.key.clone(),
            key: a.files.cert.clone(),
        }]);
        assert_eq!(err, format!("no certificate in {}", a.files.key.display()));

        let empty = pki.write("empty.crt", "");
        let err = load_err(&[TlsCert {
            cert: empty.clone(),
            key: a.files.key.clone(),
        }]);
        assert_eq!(err, format!("no certificate in {}", empty.display()));
    }

    #[test]
    fn a_file_without_a_key() {
        let pki = Pki::new();
        let a = pki.leaf("a", &["a.example.com"]);
        let err = load_err(&[TlsCert {
            cert: a.files.cert.clone(),
            key: a.files.cert.clone(),
        }]);
        assert_eq!(err, format!("no private key in {}", a.files.cert.display()));

        let encrypted = pki.write(
            "enc.key",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        let err = load_err(&[TlsCert {
            cert: a.files.cert.clone(),
            key: encrypted.clone(),
        }]);
        assert!(
            err.starts_with(&format!("no private key in {}", encrypted.display())),
            "{err}"
        );
        assert!(err.contains("encrypted"), "{err}");
    }

    #[test]
    fn a_key_that_does_not_match() {
        let pki = Pki::new();
        let (a, b) = two_certs(&pki);
        let err = load_err(&[
            b.files.clone(),
            TlsCert {
                cert: a.files.cert.clone(),
                key: b.files.key.clone(),
            },
        ]);
        assert_eq!(
            err,
            format!(
                "key does not match the certificate in {} (key from {})",
                a.files.cert.display(),
                b.files.key.display()
            )
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let pki = Pki::new();
        let a = pki.leaf("a", &["a.example.com"]);
        let bad_cert = pki.write(
            "bad.crt",
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        );
        let err = load_err(&[TlsCert {
            cert: bad_cert.clone(),
            key: a.files.key.clone(),
        }]);
        assert!(
            err.starts_with(&format!(
                "the certificate in {} cannot be parsed",
                bad_cert.display()
            )),
            "{err}"
        );

        let bad_key = pki.write(
            "bad.key",
            "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
        );
        let err = load_err(&[TlsCert {
            cert: a.files.cert.clone(),
            key: bad_key.clone(),
        }]);
        assert!(
            err.starts_with(&format!("unusable private key in {}", bad_key.display())),
            "{err}"
        );

        let bad_pem = pki.write(
            "badpem.crt",
            "-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n",
        );
        let err = load_err(&[TlsCert {
            cert: bad_pem.clone(),
            key: a.files.key.clone(),
        }]);
        assert!(
            err.starts_with(&format!("bad PEM in {}", bad_pem.display())),
            "{err}"
        );

        assert_eq!(
            load_err(&[]),
            "TLS termination needs at least one certificate"
        );
    }
}
