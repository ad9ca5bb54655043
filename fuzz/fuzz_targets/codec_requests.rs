//! memgate's HTTP/1 request reader against hyper's server on the same bytes,
//! a client's pipelined requests (tests/support/differential.rs says what
//! must agree). Panics on any disagreement.
#![no_main]

// The writing half (chunk encoding, request heads) is not driven here.
#[allow(dead_code)]
#[path = "../../src/http1/mod.rs"]
mod http1;

#[allow(dead_code)]
#[path = "../../tests/support/differential.rs"]
mod differential;

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    if let Err(why) = differential::compare_requests(input) {
        panic!("{why}\ninput: {:?}", String::from_utf8_lossy(input));
    }
});
