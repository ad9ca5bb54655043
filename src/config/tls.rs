//! `[tls]`: the certificate the mcp and mem0 listeners serve.

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
                crate::listener::tls::load(&self.cert, &self.key).map_err(|e| {
                    let crate::listener::tls::TlsError::Load(e) = e;
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
