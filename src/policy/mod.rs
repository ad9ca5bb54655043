//! Pure decisions: who may do what. Nothing in here performs I/O, so every rule
//! is a function of (identity, request) that unit tests, property tests and the
//! fuzzer can drive directly (docs/design.md §1 step 3).

pub mod admission;
pub mod deny;
pub mod endpoint;
pub mod header_names;
pub mod json;
pub mod mcp;
pub mod mem0;
pub mod method_override;
pub mod path;
pub mod percent;
pub mod query;
pub mod scope;
pub mod secrets;
pub mod sse;
pub mod upstream_name;
