//! Fuzz target: Configuration YAML parsing and validation: errors, never panics.
//! The checks live in `portcullis_testkit::fuzzing::config`, shared with tests/fuzz_regressions.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis_testkit::fuzzing::config(data));
