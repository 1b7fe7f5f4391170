#![no_main]
//! See `gridvfs::fuzzing::unpack`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gridvfs::fuzzing::unpack(data));
