//! Drives the MCP JSON-RPC policy (decide, owner checks, tools/list filtering,
//! SSE parsing) with arbitrary bytes. `fuzz_entry` panics only when a forwarded
//! tools/call would name a user other than the caller's scope.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/identity.rs"]
mod identity;

#[allow(dead_code)]
#[path = "../../src/http1/mod.rs"]
mod http1;

// Only part of the policy is reachable from this target.
#[allow(dead_code, unused_imports)]
#[path = "../../src/policy/mod.rs"]
mod policy;

libfuzzer_sys::fuzz_target!(|data: &[u8]| policy::mcp::fuzz_entry(data));
