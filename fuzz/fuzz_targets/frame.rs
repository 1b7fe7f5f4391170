#![no_main]
//! See `gridvfs::fuzzing::frame`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gridvfs::fuzzing::frame(data));
