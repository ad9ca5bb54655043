//! Drives the whole mem0 decision (route, permission, body, owner, response
//! filtering) with arbitrary bytes. `fuzz_entry` panics only when a forwarded
//! request would name a user other than the caller's scope.
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

libfuzzer_sys::fuzz_target!(|data: &[u8]| policy::mem0::fuzz_entry(data));
