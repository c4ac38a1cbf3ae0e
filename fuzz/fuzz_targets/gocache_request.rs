//! Fuzzes cairn::fuzzing::gocache_request (see that function for the input layout).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn::fuzzing::gocache_request(data));
