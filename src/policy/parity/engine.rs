//! The regorus engine user policies are loaded into (parity checks, compilation,
//! tests and the CLI all start from it).

use std::num::NonZeroU32;

use regorus::{Engine, PolicyLengthConfig};

/// A regorus engine for user policies: lines of any length load (a PEM or a JWKS
/// written on one line is common; OPA has no column limit), within the file size
/// and line count limits regorus keeps.
pub fn new_engine() -> Engine {
    let mut engine = Engine::new();
    engine.set_policy_length_config(PolicyLengthConfig {
        max_col: MAX_COLUMNS,
        ..PolicyLengthConfig::default()
    });
    engine
}

/// Columns per line accepted: the whole of a maximum-size file.
const MAX_COLUMNS: NonZeroU32 = match NonZeroU32::new(1 << 20) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};
