#![no_main]
//! See `gridvfs::fuzzing::rpc`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gridvfs::fuzzing::rpc(data));
