#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cowork_vmm::fuzz::block(data));
