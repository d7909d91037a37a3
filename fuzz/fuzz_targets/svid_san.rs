//! Fuzz target: SVID certificate handling: arbitrary DER, and leaves issued with arbitrary SANs and flags.
//! The checks live in `portcullis_testkit::fuzzing::svid_san`, shared with tests/fuzz_regressions.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis_testkit::fuzzing::svid_san(data));
