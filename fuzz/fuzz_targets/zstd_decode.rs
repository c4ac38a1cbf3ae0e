//! Fuzzes cairn::fuzzing::zstd_decode (see that function for the input layout).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn::fuzzing::zstd_decode(data));
