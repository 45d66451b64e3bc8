#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tokentrace_fuzz::otlp_protobuf(data));
