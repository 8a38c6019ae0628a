//! `cargo fuzz run --fuzz-dir tests/fuzz execute`; the body is in ../execute.rs.
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::execute(data));
