//! The client side of a listener: accepting connections (connection limits,
//! the request-head deadline, TLS, one runtime per thread), reading HTTP/1
//! requests with memgate's own codec and HTTP/2 through pingora, and writing
//! answers. What a request means is the [`Handler`]'s business (the gate in
//! `crate::proxy`); pingora is named only here and in `crate::server`.

pub mod connections;
pub mod h1;
pub mod per_thread;
pub mod relayed;
pub mod serving;
pub mod session;
pub mod tls;

pub use relayed::{Relayed, SetHeaders};
pub use serving::{Handler, Listening};
pub use session::Session;

/// Which listener a request arrived on; decides the error format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Mcp,
    Mem0,
    Admin,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Mcp => "mcp",
            Listener::Mem0 => "mem0",
            Listener::Admin => "admin",
        }
    }
}
