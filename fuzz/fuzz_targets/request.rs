#![no_main]
//! See `weir::fuzzing::request` for the input layout and the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir::fuzzing::request(data));
