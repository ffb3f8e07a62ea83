#![no_main]
//! The logic lives in `protocol::fuzzing::fuzz_manifest`, shared with `tests/fuzz_corpus.rs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| protocol::fuzzing::fuzz_manifest(data));
