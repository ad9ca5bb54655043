//! `[isolation]`: which mem0 user_id a request may touch.

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IsolationModeName {
    Manual,
    Auto,
    Global,
}

/// `[isolation]`: which mem0 user_id a request may touch (docs/design.md §3).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolationConfig {
    pub mode: IsolationModeName,
    pub shared_user_id: String,
}

impl Default for IsolationConfig {
    fn default() -> Self {
        IsolationConfig {
            mode: IsolationModeName::Manual,
            shared_user_id: "shared_knowledge_base".into(),
        }
    }
}

impl IsolationConfig {
    pub fn mode(&self) -> crate::policy::scope::IsolationMode {
        use crate::policy::scope::IsolationMode;
        match self.mode {
            IsolationModeName::Manual => IsolationMode::Manual,
            IsolationModeName::Auto => IsolationMode::Auto,
            IsolationModeName::Global => IsolationMode::Global {
                shared_user_id: self.shared_user_id.clone(),
            },
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.mode == IsolationModeName::Global
            && (self.shared_user_id.trim().is_empty()
                || self.shared_user_id.trim() != self.shared_user_id)
        {
            return Err(invalid(
                "isolation.shared_user_id",
                "must be a non-empty user id without surrounding spaces in global mode",
            ));
        }
        Ok(())
    }
}
