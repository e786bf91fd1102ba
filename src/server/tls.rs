//! TLS for client connections: rustls with a certificate that can be swapped while serving.
//!
//! The resolver hands every new handshake the current [`CertifiedKey`] from an [`ArcSwap`];
//! established connections keep the key they negotiated with, so a reload never drops a
//! live connection. A new certificate is only installed after it parsed and its key matched.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no PEM certificate found", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: malformed PEM: {message}", path.display())]
    Pem { path: PathBuf, message: String },
    #[error("{}: no PEM private key found (expected PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: key cannot be used with {}: {source}", key.display(), cert.display())]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS setup failed: {0}")]
    Setup(#[from] rustls::Error),
}

/// The crypto provider used everywhere in the gateway.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads certificates from a PEM file.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Loads a certificate chain and its key, checking they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates(cert)?;
    let key_bytes = std::fs::read(key).map_err(|source| TlsError::Read {
        path: key.to_path_buf(),
        source,
    })?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: key.to_path_buf(),
        },
        other => TlsError::Pem {
            path: key.to_path_buf(),
            message: other.to_string(),
        },
    })?;
    CertifiedKey::from_der(chain, key_der, &provider()).map_err(|source| TlsError::Unusable {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    })
}

/// Serves whichever certificate was loaded last.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(CertResolver {
            current: ArcSwap::from_pointee(key),
        })
    }

    /// Loads the files and installs them for new handshakes; on error the old key stays.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let loaded = load_certified_key(cert, key)?;
        self.current.store(Arc::new(loaded));
        Ok(())
    }

    /// The certificate new handshakes get (for tests and `check`).
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// rustls server settings: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
