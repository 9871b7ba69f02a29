#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| uphold_fuzz_targets::handshake(data));
