//! Reading the PEM files of every TLS setting (the client listener's, the inner links', the
//! registry's): a certificate chain, a private key, trusted roots. Every failure names the
//! configuration key the file came from, so a bad file is an error an operator can act on.

use std::path::Path;

use tokio_rustls::rustls::RootCertStore;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{TlsError, error};

/// The certificates in `path`, in order (a leaf first, then its intermediates); at least one.
pub fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            error(
                key,
                format!("{}: not PEM certificates: {e}", path.display()),
            )
        })?;
    if chain.is_empty() {
        return Err(error(
            key,
            format!("{}: no certificate in it", path.display()),
        ));
    }
    Ok(chain)
}

/// The private key in `path` (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| error(key, format!("{}: no PEM private key: {e}", path.display())))
}

/// Every certificate in `path` as a trust anchor.
pub fn roots(key: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for certificate in certificates(key, path)? {
        store.add(certificate).map_err(|e| {
            error(
                key,
                format!("{}: not a usable CA certificate: {e}", path.display()),
            )
        })?;
    }
    Ok(store)
}

/// The bytes of `path`.
pub fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| error(key, format!("{}: {e}", path.display())))
}
