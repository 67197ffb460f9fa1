#![no_main]
// What this target asserts: herd_fuzz::ipc_lines (fuzz/src/lib.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| herd_fuzz::ipc_lines(data));
