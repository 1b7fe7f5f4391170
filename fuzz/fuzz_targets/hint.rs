#![no_main]
//! See `gridvfs::fuzzing::hint`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gridvfs::fuzzing::hint(data));
