//! `[secret_guard]`: secrets in writes bound for mem0. The
//! section's types belong to the pure core (`crate::policy::secrets`), which
//! builds the guard from them; here they are checked when the config loads,
//! so a bad pattern stops memgate before it binds, naming its key.

use super::{ConfigError, invalid};

use crate::policy::secrets::SecretGuard;
pub use crate::policy::secrets::{GuardMode, RuleConfig, SecretGuardConfig};

/// Compiles every rule as `serve` will; the first error, under its key.
pub(super) fn validate(config: &SecretGuardConfig) -> Result<(), ConfigError> {
    SecretGuard::from_config(config)
        .map(drop)
        .map_err(|e| invalid(e.key, e.message))
}
