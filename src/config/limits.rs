//! `[limits]`: sizes memgate buffers and parses.

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// `[limits]`: what memgate buffers and parses.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest request target (path and query); 414 above.
    pub max_uri_bytes: usize,
    /// All request header names and values together; 431 above.
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub max_response_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 64 * 1024,
            max_body_bytes: 1024 * 1024,
            max_json_depth: 32,
            max_response_bytes: 16 * 1024 * 1024,
        }
    }
}

impl LimitsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_uri_bytes < 256 || self.max_header_bytes < 1024 {
            return Err(invalid(
                "limits.max_uri_bytes",
                "limits.max_uri_bytes must be at least 256 and limits.max_header_bytes at least 1024",
            ));
        }
        if self.max_body_bytes == 0 {
            return Err(invalid("limits.max_body_bytes", "must be at least 1"));
        }
        if !(1..=100).contains(&self.max_json_depth) {
            return Err(invalid(
                "limits.max_json_depth",
                "must be between 1 and 100",
            ));
        }
        if self.max_response_bytes < 1024 {
            return Err(invalid(
                "limits.max_response_bytes",
                "must be at least 1024",
            ));
        }
        Ok(())
    }
}
