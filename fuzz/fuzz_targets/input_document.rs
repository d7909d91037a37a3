//! Fuzz target: The request path up to the decision: header hygiene, path normalisation, the policy input document.
//! The checks live in `portcullis_testkit::fuzzing::input_document`, shared with tests/fuzz_regressions.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis_testkit::fuzzing::input_document(data));
