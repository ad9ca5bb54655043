//! `[tls]`: the certificate the mcp and mem0 listeners serve.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid, io_reason};

/// `[tls]`: PEM certificate chain and key for the mcp and mem0 listeners.
/// Both empty: plain HTTP (terminate TLS in front of memgate instead).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: String,
    pub key: String,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        !self.cert.is_empty()
    }
}

impl TlsConfig {
    /// Both files are read now, so a wrong path stops memgate before it binds.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        match (self.cert.is_empty(), self.key.is_empty()) {
            (true, true) => {}
            (false, false) => {
                for (key, path) in [("tls.cert", &self.cert), ("tls.key", &self.key)] {
                    std::fs::File::open(path).map_err(|e| {
                        invalid(
                            key,
                            format!(
                                "cannot read {path}: {}; give the path of a PEM file \
                                 readable by the user memgate runs as",
                                io_reason(&e)
                            ),
                        )
                    })?;
                }
                certified_key(&self.cert, &self.key).map_err(|e| {
                    invalid(
                        "tls.cert",
                        format!(
                            "{e}; give a PEM certificate chain in tls.cert ({}) and its \
                             private key in tls.key ({})",
                            self.cert, self.key
                        ),
                    )
                })?;
            }
            _ => {
                return Err(invalid(
                    "tls.cert",
                    "tls.cert and tls.key must be set together",
                ));
            }
        }
        Ok(())
    }
}

/// Reads and checks a PEM certificate chain and its private key: what the
/// TLS listeners serve (and reload), and what loading the configuration
/// proves usable before memgate binds.
pub fn certified_key(cert_path: &str, key_path: &str) -> Result<Arc<CertifiedKey>, String> {
    // The provider pingora's listeners use; installing it again is a no-op.
    let _ = CryptoProvider::install_default(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{cert_path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {cert_path}"));
    }
    let key =
        PrivateKeyDer::from_pem_file(key_path).map_err(|e| format!("no key in {key_path}: {e}"))?;
    let provider =
        CryptoProvider::get_default().ok_or_else(|| "no TLS crypto provider".to_string())?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{key_path}: {e}"))?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified
        .keys_match()
        .map_err(|e| format!("{cert_path} and {key_path} do not match: {e}"))?;
    Ok(Arc::new(certified))
}
