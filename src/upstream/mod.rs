//! The upstream side: where each listener forwards to (resolved, per scope,
//! or a spawned server per scope), memgate's own HTTP/1 client and its idle
//! connections, the exchanges the gate streams or buffers, and the mem0
//! client that owner lookups and the CLI share.

pub mod client;
pub mod exchange;
pub mod mem0;
pub mod pool;
pub mod spawn;
pub mod target;
pub mod targets;

use pingora::prelude::*;

use crate::listener::Listener;

/// The status and message for an exchange with the upstream that failed:
/// 504 when it went quiet, 502 when it could not be reached or misbehaved.
pub fn upstream_failure(listener: Listener, e: &Error) -> (u16, String) {
    let name = listener.as_str();
    match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            (504, format!("The {name} upstream did not answer in time"))
        }
        _ => (502, format!("The {name} upstream is unreachable or failed")),
    }
}
