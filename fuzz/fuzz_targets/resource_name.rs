//! Fuzzes cairn::fuzzing::resource_name (see that function for the input layout).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn::fuzzing::resource_name(data));
