#![no_main]
// What this target asserts: herd_fuzz::config_values (fuzz/src/lib.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| herd_fuzz::config_values(data));
