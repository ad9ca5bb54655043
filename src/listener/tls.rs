//! TLS termination for the proxied listeners (rustls through pingora: TLS 1.2
//! and 1.3 only, HTTP/2 by ALPN). The certificate is served from memory and
//! replaced when its files change or on SIGHUP, without dropping connections:
//! each handshake picks up whatever certificate is current.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use pingora::listeners::tls::TlsSettings;
use pingora_rustls::sign::CertifiedKey;
use pingora_rustls::{ClientHello, ResolvesServerCert};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.cert / tls.key: {0}")]
    Load(String),
}

/// Serves the current certificate and reloads it from disk when asked.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// Modification times of (cert, key) when last loaded.
    loaded: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads and checks a PEM certificate chain and private key.
pub fn load(cert_path: &str, key_path: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    crate::config::certified_key(cert_path, key_path).map_err(TlsError::Load)
}

impl ReloadingCert {
    pub fn new(cert_path: &str, key_path: &str) -> Result<Arc<Self>, TlsError> {
        let current = load(cert_path, key_path)?;
        let (cert_path, key_path) = (PathBuf::from(cert_path), PathBuf::from(key_path));
        let loaded = (modified(&cert_path), modified(&key_path));
        Ok(Arc::new(ReloadingCert {
            cert_path,
            key_path,
            current: RwLock::new(current),
            loaded: RwLock::new(loaded),
        }))
    }

    /// Loads the files again if they changed (or `force`). A broken new pair
    /// is reported and the old certificate kept.
    pub fn reload(&self, force: bool) {
        let now = (modified(&self.cert_path), modified(&self.key_path));
        let unchanged = self.loaded.read().map(|l| *l == now).unwrap_or(false);
        if unchanged && !force {
            return;
        }
        let (cert, key) = (
            self.cert_path.display().to_string(),
            self.key_path.display().to_string(),
        );
        match load(&cert, &key) {
            Ok(new) => {
                if let Ok(mut current) = self.current.write() {
                    *current = new;
                }
                if let Ok(mut loaded) = self.loaded.write() {
                    *loaded = now;
                }
                tracing::info!(cert = %cert, "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; keeping the current one")
            }
        }
    }

    /// Checks the files every `every` and reloads on SIGHUP; runs forever.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(every);
        loop {
            let forced = match hangup.as_mut() {
                Some(signal) => tokio::select! {
                    _ = tick.tick() => false,
                    _ = signal.recv() => true,
                },
                None => {
                    tick.tick().await;
                    false
                }
            };
            self.reload(forced);
        }
    }

    /// Listener settings that use this certificate, with HTTP/2 offered by ALPN.
    pub fn settings(self: &Arc<Self>) -> Result<TlsSettings, TlsError> {
        let mut settings = TlsSettings::with_callbacks(Box::new(NoCallbacks))
            .map_err(|e| TlsError::Load(e.to_string()))?;
        settings.set_cert_resolver(self.clone());
        settings.enable_h2();
        Ok(settings)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

/// `TlsSettings::with_callbacks` is the constructor that takes no file paths.
struct NoCallbacks;

#[async_trait::async_trait]
impl pingora::listeners::TlsAccept for NoCallbacks {}
