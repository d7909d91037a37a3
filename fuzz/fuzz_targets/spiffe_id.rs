//! Fuzz target: SPIFFE ID and trust domain parsing, with round-trip invariants.
//! The checks live in `portcullis_testkit::fuzzing::spiffe_id`, shared with tests/fuzz_regressions.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis_testkit::fuzzing::spiffe_id(data));
