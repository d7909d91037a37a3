//! Test-only helpers for portcullis, in their own workspace crate so that none of
//! this ships in the release library: the portcullis package lists it under
//! `[dev-dependencies]` (its integration tests use it), and the fuzz targets in
//! `fuzz/` call its entry points.
//!
//! - [`leaf`]: certificates that break the X.509-SVID rules on purpose.
//! - [`fuzzing`]: the entry points of the fuzz targets, shared with
//!   `tests/fuzz_regressions.rs`.
//! - [`ports`]: loopback ports that do not race with the kernel's ephemeral ones.

pub mod fuzzing;
pub mod leaf;
pub mod ports;

pub use leaf::{IssueCustom, LeafOptions, TestLeaf};
