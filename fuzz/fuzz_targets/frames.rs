#![no_main]
//! See `weir::fuzzing::frames` for the input layout and the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir::fuzzing::frames(data));
