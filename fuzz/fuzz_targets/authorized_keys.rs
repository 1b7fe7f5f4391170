#![no_main]
//! See `gridvfs::fuzzing::authorized_keys`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gridvfs::fuzzing::authorized_keys(data));
