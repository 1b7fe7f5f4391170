#![no_main]
//! See `gridvfs::fuzzing::exec_command`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gridvfs::fuzzing::exec_command(data));
