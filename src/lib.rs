//! memgate: authentication and per-user ownership in front of unmodified mem0
//! and MCP servers. docs/design.md describes how it works; §10 maps it onto these modules.

pub mod access_log;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod deadline;
pub mod flights;
pub mod http1;
pub mod identity;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod ownership;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod scopes;
pub mod server;
pub mod sessions;
pub mod store;
pub mod token;
pub mod upstream;
pub mod window;
