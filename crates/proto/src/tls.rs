//! Mutual TLS between members: a member's identity (its certificate and key plus the
//! cluster CA) and the rustls client/server configurations built from it. Only TLS 1.3,
//! only the ring provider, only certificates issued by the cluster CA; the member name is
//! the certificate's single SAN DNS name.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};
use uphold_core::NodeName;

use crate::error::ProtoError;
use crate::pki;

/// This member's TLS identity, loaded once and shared by every connection.
#[derive(Clone)]
pub struct TlsIdentity {
    me: NodeName,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").field("me", &self.me).finish()
    }
}

impl TlsIdentity {
    /// Loads `ca.pem`, `<me>.pem` and `<me>-key.pem` from `dir`. Errors name the file that is
    /// missing or unusable; a certificate that does not name `me` is refused here rather
    /// than at the first connection.
    pub fn load(dir: &Path, me: &NodeName) -> Result<Self, ProtoError> {
        let ca_path = pki::ca_cert_path(dir);
        let cert_path = pki::member_cert_path(dir, me);
        let key_path = pki::member_key_path(dir, me);

        let ca_certs = pki::read_certs(&ca_path)?;
        if ca_certs.is_empty() {
            return Err(ProtoError::bad_file(&ca_path, "contains no certificate"));
        }
        let mut roots = RootCertStore::empty();
        for cert in ca_certs {
            roots.add(cert).map_err(|e| {
                ProtoError::bad_file(&ca_path, format!("not a usable CA certificate: {e}"))
            })?;
        }
        let roots = Arc::new(roots);

        let chain = pki::read_certs(&cert_path)?;
        let Some(leaf) = chain.first() else {
            return Err(ProtoError::bad_file(&cert_path, "contains no certificate"));
        };
        let named = member_name_from_cert(leaf)
            .map_err(|reason| ProtoError::bad_file(&cert_path, reason))?;
        if &named != me {
            return Err(ProtoError::bad_file(
                &cert_path,
                format!("certificate names member {named}, expected {me}"),
            ));
        }

        let key_pem = pki::read_to_string(&key_path)?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .map_err(|e| ProtoError::bad_file(&key_path, format!("not valid PEM: {e}")))?
            .ok_or_else(|| ProtoError::bad_file(&key_path, "contains no private key"))?;

        let config_err = |reason: String| ProtoError::TlsConfig {
            dir: dir.to_path_buf(),
            reason,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| config_err(format!("client verifier: {e}")))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| config_err(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                config_err(format!(
                    "{} and {}: {e}",
                    cert_path.display(),
                    key_path.display()
                ))
            })?;
        let client = client_config(provider, roots, chain, key).map_err(|e| {
            config_err(format!(
                "{} and {}: {e}",
                cert_path.display(),
                key_path.display()
            ))
        })?;

        Ok(TlsIdentity {
            me: me.clone(),
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    pub fn me(&self) -> &NodeName {
        &self.me
    }

    /// Server configuration: requires a client certificate chained to the cluster CA.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// Client configuration: trusts only the cluster CA and presents our certificate.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// Runs the server side of the TLS handshake and returns the stream together with the
    /// member named by the peer's verified certificate.
    pub async fn accept<S>(
        &self,
        io: S,
        peer_addr: SocketAddr,
    ) -> Result<(server::TlsStream<S>, NodeName), ProtoError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = TlsAcceptor::from(self.server.clone())
            .accept(io)
            .await
            .map_err(|e| tls_error(peer_addr, e))?;
        let name = peer_name(stream.get_ref().1.peer_certificates(), peer_addr)?;
        Ok((stream, name))
    }

    /// Runs the client side of the TLS handshake, requiring the server certificate to name
    /// `expected`: a member presenting another member's certificate is refused here.
    pub async fn connect<S>(
        &self,
        io: S,
        expected: &NodeName,
        peer_addr: SocketAddr,
    ) -> Result<(client::TlsStream<S>, NodeName), ProtoError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let server_name =
            ServerName::try_from(expected.to_string()).map_err(|_| ProtoError::Tls {
                peer: peer_addr,
                reason: format!("member name {expected} is not a valid TLS server name"),
            })?;
        let stream = TlsConnector::from(self.client.clone())
            .connect(server_name, io)
            .await
            .map_err(|e| tls_error(peer_addr, e))?;
        let name = peer_name(stream.get_ref().1.peer_certificates(), peer_addr)?;
        Ok((stream, name))
    }
}

fn client_config(
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<ClientConfig, rustls::Error> {
    ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
}

fn peer_name(
    certs: Option<&[CertificateDer<'static>]>,
    peer: SocketAddr,
) -> Result<NodeName, ProtoError> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or_else(|| ProtoError::PeerCertificate {
            peer,
            reason: "no certificate presented".to_string(),
        })?;
    member_name_from_cert(leaf).map_err(|reason| ProtoError::PeerCertificate { peer, reason })
}

/// The member a certificate names: its SAN DNS names must contain exactly one valid
/// member name. Only meaningful on a certificate that TLS has already verified.
pub fn member_name_from_cert(cert: &CertificateDer<'_>) -> Result<NodeName, String> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let mut names = parsed
        .valid_dns_names()
        .filter_map(|n| NodeName::new(n).ok());
    match (names.next(), names.next()) {
        (Some(name), None) => Ok(name),
        (None, _) => Err("the certificate names no member (no valid SAN DNS name)".to_string()),
        (Some(a), Some(b)) => Err(format!(
            "the certificate names several members ({a}, {b}, ...); member certificates must name exactly one"
        )),
    }
}

/// tokio-rustls reports TLS failures as `io::Error` wrapping a `rustls::Error`; keep those
/// apart from plain I/O so callers can tell "wrong certificate" from "network down".
pub(crate) fn tls_error(peer: SocketAddr, e: std::io::Error) -> ProtoError {
    ProtoError::Tls {
        peer,
        reason: match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => tls.to_string(),
            None => e.to_string(),
        },
    }
}

/// True when an I/O error on an established TLS stream is really a TLS failure (for
/// instance the server rejecting our certificate after the TLS 1.3 handshake completed
/// on our side).
pub(crate) fn is_tls_failure(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}
