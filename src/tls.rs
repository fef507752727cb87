//! TLS for the client listener (`outer.tls-cert`, `outer.tls-key`): loading a certificate chain
//! and its key from PEM files, and reloading them (SIGHUP) without touching open sessions.
//! Beside it, `pem` reads the files of every TLS setting, `inner` builds the inner links' mutual
//! TLS (`inner.tls-*`), and `registry` reads the files of TLS to Redis (`registry.tls-*`).
//!
//! rustls with the `ring` provider: no OpenSSL, and nothing to build but Rust and a little C.
//! A reload swaps the configuration that later handshakes use; connections already up keep the
//! one they started with. A reload that fails keeps the old configuration and says why.

pub mod inner;
pub mod pem;
pub mod registry;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::CryptoProvider;

/// Why a certificate or key could not be used, naming the setting it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct TlsError {
    /// The key the file came from: `outer.tls-cert`, `registry.tls-ca`, ...
    pub key: &'static str,
    pub problem: String,
}

pub(crate) fn error(key: &'static str, problem: impl Into<String>) -> TlsError {
    TlsError {
        key,
        problem: problem.into(),
    }
}

/// The one crypto provider of every TLS configuration wspair builds: `ring`.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

/// Makes `ring` the process's default provider, for configurations wspair does not build itself
/// (the Redis client's): without it rustls would pick the provider from its crate features, and
/// refuse to choose if a dependency ever enabled a second one. Idempotent.
pub fn install_default_provider() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
}

/// Where the certificate chain and its key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the server's certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Reads and checks both files: a server configuration for them, or what is wrong.
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let chain = pem::certificates("outer.tls-cert", &self.cert)?;
        let key = pem::private_key("outer.tls-key", &self.key)?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| error("outer.tls-cert", e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                error(
                    "outer.tls-key",
                    format!("does not fit the certificate: {e}"),
                )
            })?;
        // WebSocket upgrades are HTTP/1.1.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The client listener's TLS: the configuration handshakes use now, and where it came from.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Loads `files`; fails as [`TlsFiles::load`] does.
    pub fn new(files: TlsFiles) -> Result<Tls, TlsError> {
        let config = files.load()?;
        Ok(Tls {
            files,
            current: RwLock::new(config),
        })
    }

    /// An acceptor for the next handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self.current.read().unwrap_or_else(|p| p.into_inner());
        TlsAcceptor::from(Arc::clone(&config))
    }

    /// Reads the files again; on success later handshakes use them, on failure nothing
    /// changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = self.files.load()?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }
}
