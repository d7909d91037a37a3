//! Fuzz target: SVID certificate handling: arbitrary DER, and leaves issued with arbitrary SANs and flags.
//! The checks live in `portcullis::fuzzing::svid_san`, shared with tests/fuzz_regressions.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis::fuzzing::svid_san(data));
