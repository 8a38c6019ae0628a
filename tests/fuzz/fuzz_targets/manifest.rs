//! `cargo fuzz run --fuzz-dir tests/fuzz manifest`; the body is in ../targets.rs.
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::manifest(data));
