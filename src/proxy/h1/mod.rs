//! memgate's HTTP/1 connections: to its clients (`server`) and to the
//! upstreams (`client`), over the pure wire code in `crate::http1`.

pub mod client;
pub mod server;
