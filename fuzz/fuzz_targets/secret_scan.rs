//! Drives the secret guard (mem0 write bodies, tool arguments, responses,
//! plain text) with arbitrary bytes. `fuzz_entry` panics when a redacted body
//! is not JSON of the shape sent, or still holds something to find.
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

libfuzzer_sys::fuzz_target!(|data: &[u8]| policy::secrets::fuzz_entry(data));
