//! Mutual TLS on the inner links (`inner.tls-cert`, `inner.tls-key`, `inner.tls-ca`), under the
//! HMAC handshake, which still runs inside it.
//!
//! Both ends show the node's certificate and require the other's, chained to `inner.tls-ca`
//! (and to nothing else: the system's roots are never trusted here). Names are not checked:
//! the listener learns who dialled only from the HMAC handshake inside TLS, so it has no name
//! to check a client certificate against, and the dialer checks the same thing the listener
//! does, that the certificate comes from the cluster's CA. A node's identity is its node id,
//! proved with `inner.secret` and compared with the one the registry names; the certificate
//! proves membership of the cluster, and the CA must therefore sign nothing but its nodes. One
//! certificate may serve every node (and need not name their addresses, which often are IPs
//! given out at start).
//!
//! SIGHUP reloads the three files, as for the client listener: links dialled or accepted from
//! then on use them, links up keep their connection, and a reload that fails keeps the old ones.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, ServerConfig, SignatureScheme,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{TlsError, error, pem, provider};

/// The three files of inner TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InnerTlsFiles {
    /// `inner.tls-cert`: this node's certificate first, then any intermediates.
    pub cert: PathBuf,
    /// `inner.tls-key`: its private key.
    pub key: PathBuf,
    /// `inner.tls-ca`: the cluster's CA certificates, the only ones trusted.
    pub ca: PathBuf,
}

/// Both ends' configurations, built from one load of the files.
#[derive(Debug, Clone)]
struct Configs {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl InnerTlsFiles {
    /// Reads and checks the files: the listener's and the dialer's configurations, or what is
    /// wrong, naming its key.
    fn load(&self) -> Result<Configs, TlsError> {
        let chain = pem::certificates("inner.tls-cert", &self.cert)?;
        let key = pem::private_key("inner.tls-key", &self.key)?;
        let roots = Arc::new(pem::roots("inner.tls-ca", &self.ca)?);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
                .build()
                .map_err(|e| error("inner.tls-ca", e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| error("inner.tls-cert", e.to_string()))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                error(
                    "inner.tls-key",
                    format!("does not fit the certificate: {e}"),
                )
            })?;
        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| error("inner.tls-ca", e.to_string()))?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| error("inner.tls-cert", e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ClusterCa(server_verifier)))
            .with_client_auth_cert(chain, key)
            .map_err(|e| {
                error(
                    "inner.tls-key",
                    format!("does not fit the certificate: {e}"),
                )
            })?;
        Ok(Configs {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// Reads and checks the files, as the configuration does at start.
    pub fn check(&self) -> Result<(), TlsError> {
        self.load().map(drop)
    }
}

/// The inner links' TLS: the configurations handshakes use now, and where they came from.
#[derive(Debug)]
pub struct InnerTls {
    files: InnerTlsFiles,
    current: RwLock<Configs>,
}

impl InnerTls {
    /// Loads `files`; fails naming the key at fault.
    pub fn new(files: InnerTlsFiles) -> Result<InnerTls, TlsError> {
        let configs = files.load()?;
        Ok(InnerTls {
            files,
            current: RwLock::new(configs),
        })
    }

    fn current(&self) -> Configs {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// An acceptor for the next inner connection accepted.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current().server)
    }

    /// A connector for the next dial.
    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.current().client)
    }

    /// Reads the files again; on success later handshakes use them, on failure nothing
    /// changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let configs = self.files.load()?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = configs;
        Ok(())
    }
}

/// The name a dialer gives for `advertise` (`host:port`): sent as SNI when it is a DNS name,
/// never checked against the certificate.
pub fn server_name(advertise: &str) -> ServerName<'static> {
    let host = advertise
        .rsplit_once(':')
        .map_or(advertise, |(host, _)| host)
        .trim_matches(['[', ']']);
    ServerName::try_from(host.to_owned())
        .unwrap_or_else(|_| ServerName::try_from("wspair-node").expect("a valid DNS name"))
}

/// Verifies the listener's certificate chain against the cluster's CA, as the web PKI verifier
/// does, and accepts it whatever names it carries (see the module docs). The chain is verified
/// before the name, so only a certificate that chains to the CA gets as far as a name error.
#[derive(Debug)]
struct ClusterCa(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ClusterCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
