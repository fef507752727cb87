//! TLS to Redis (`rediss://` in `registry.redis`): which CA to trust (`registry.tls-ca`) and
//! the client certificate to show a Redis that asks for one (`registry.tls-cert`,
//! `registry.tls-key`).
//!
//! The Redis client does the TLS itself (rustls, `ring` as the process's default provider), from
//! the PEM bytes read here. They are checked when the configuration loads, so a bad file is a
//! configuration error naming its key rather than a connection that fails later; they are read
//! again when the node connects, and only then.

use std::path::PathBuf;

use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use super::{TlsError, TlsFiles, error, pem};

/// The TLS files of the registry connection; all empty means the system's roots and no client
/// certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryTls {
    /// `registry.tls-ca`: PEM certificates to trust instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// `registry.tls-cert` and `registry.tls-key`: a client certificate chain and its key.
    pub client: Option<TlsFiles>,
}

impl RegistryTls {
    /// True when any of the three keys is set.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }

    /// Reads and checks every file: the CA holds usable certificates, the key fits the
    /// client certificate.
    pub fn check(&self) -> Result<(), TlsError> {
        let roots = match &self.ca {
            Some(ca) => pem::roots("registry.tls-ca", ca)?,
            None => RootCertStore::empty(),
        };
        if let Some(client) = &self.client {
            let chain = pem::certificates("registry.tls-cert", &client.cert)?;
            let key = pem::private_key("registry.tls-key", &client.key)?;
            ClientConfig::builder_with_provider(super::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| error("registry.tls-cert", e.to_string()))?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .map_err(|e| {
                    error(
                        "registry.tls-key",
                        format!("does not fit the certificate: {e}"),
                    )
                })?;
        }
        Ok(())
    }

    /// The files, checked, in the form the Redis client takes them.
    pub fn certificates(&self) -> Result<redis::TlsCertificates, TlsError> {
        self.check()?;
        let root_cert = match &self.ca {
            Some(ca) => Some(pem::read("registry.tls-ca", ca)?),
            None => None,
        };
        let client_tls = match &self.client {
            Some(client) => Some(redis::ClientTlsConfig {
                client_cert: pem::read("registry.tls-cert", &client.cert)?,
                client_key: pem::read("registry.tls-key", &client.key)?,
            }),
            None => None,
        };
        Ok(redis::TlsCertificates {
            client_tls,
            root_cert,
        })
    }
}
