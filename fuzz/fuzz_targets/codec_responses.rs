//! memgate's HTTP/1 response reader against hyper's client on the same
//! bytes, an upstream's answer up to its close, to a GET, or to a HEAD when
//! the first byte is odd (tests/support/differential.rs says what must
//! agree). Panics on any disagreement.
#![no_main]

// The writing half (chunk encoding, request heads) is not driven here.
#[allow(dead_code)]
#[path = "../../src/http1/mod.rs"]
mod http1;

#[allow(dead_code)]
#[path = "../../tests/support/differential.rs"]
mod differential;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&pick, input)) = data.split_first() else {
        return;
    };
    if let Err(why) = differential::compare_response(input, pick % 2 == 1) {
        panic!("{why}\ninput: {:?}", String::from_utf8_lossy(input));
    }
});
