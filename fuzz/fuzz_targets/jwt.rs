//! Fuzz target: JWT authentication against a fixed key set: never a panic, never an accepted token.
//! The checks live in `portcullis_testkit::fuzzing::jwt`, shared with tests/fuzz_regressions.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis_testkit::fuzzing::jwt(data));
