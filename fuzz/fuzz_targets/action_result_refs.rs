//! Fuzzes cairn::fuzzing::action_result_refs (see that function for the input layout).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn::fuzzing::action_result_refs(data));
