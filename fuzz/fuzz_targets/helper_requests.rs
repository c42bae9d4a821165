#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cowork_microvm::fuzz::helper_requests(data));
