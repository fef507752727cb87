//! Certificate authorities made in the test (rcgen): a root, and an intermediate that signs
//! leaves for 127.0.0.1 and localhost, so certificate files hold a chain. The client listener's,
//! the inner links' and Redis's TLS tests share them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use wspair::tls::TlsFiles;

/// A certificate authority of the test: a root, and an intermediate that signs leaves.
pub struct TestCa {
    root: CertificateDer<'static>,
    root_pem: String,
    intermediate: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        // Distinct names: OpenSSL (redis-server, redis-cli) finds issuers by name.
        let params = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name = DistinguishedName::new();
            params.distinguished_name.push(DnType::CommonName, name);
            params
        };
        let root =
            CertifiedIssuer::self_signed(params("wspair test root"), KeyPair::generate().unwrap())
                .unwrap();
        let intermediate = CertifiedIssuer::signed_by(
            params("wspair test intermediate"),
            KeyPair::generate().unwrap(),
            &root,
        )
        .unwrap();
        TestCa {
            root: root.der().clone(),
            root_pem: root.pem(),
            intermediate,
        }
    }

    /// Writes a leaf for 127.0.0.1 and localhost into `dir`: `cert.pem` (leaf, then the
    /// intermediate) and `key.pem`.
    pub fn issue(&self, dir: &Path) -> TlsFiles {
        self.issue_as(dir, "")
    }

    /// As [`TestCa::issue`], into `{prefix}cert.pem` and `{prefix}key.pem`.
    pub fn issue_as(&self, dir: &Path, prefix: &str) -> TlsFiles {
        self.issue_for(dir, prefix, &["127.0.0.1", "localhost"])
    }

    /// As [`TestCa::issue_as`], for `names` (DNS names or IP addresses).
    pub fn issue_for(&self, dir: &Path, prefix: &str, names: &[&str]) -> TlsFiles {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let params = CertificateParams::new(names).unwrap();
        let leaf = params.signed_by(&key, &self.intermediate).unwrap();
        let files = TlsFiles {
            cert: dir.join(format!("{prefix}cert.pem")),
            key: dir.join(format!("{prefix}key.pem")),
        };
        std::fs::write(
            &files.cert,
            format!("{}{}", leaf.pem(), self.intermediate.pem()),
        )
        .unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    /// Writes the root certificate into `dir` as `{prefix}ca.pem`, and returns its path.
    pub fn write_root(&self, dir: &Path, prefix: &str) -> PathBuf {
        let path = dir.join(format!("{prefix}ca.pem"));
        std::fs::write(&path, &self.root_pem).unwrap();
        path
    }

    /// A client configuration that trusts this CA's root only.
    pub fn client(&self) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.root.clone()).unwrap();
        let config = ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

/// A fresh directory for one test's files.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wspair-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
