//! Process logging: the global tracing subscriber (JSON or text on stderr; stdout
//! carries decision logs) and the handle that changes its level at run time, which
//! the admin endpoint `/logging` calls.

use crate::config::LogFormat;

/// Changes the log filter at run time; errors say why the level is invalid.
pub type LevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Installs the global tracing subscriber; returns a function that changes the level.
pub fn init_logging(format: LogFormat, level: &str) -> LevelSetter {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{reload, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // Logs go to stderr; stdout carries decision logs.
    let result = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
    if result.is_err() {
        // Already installed (tests, demo): keep the existing subscriber.
    }
    Box::new(move |l: &str| {
        let f = EnvFilter::try_new(l).map_err(|e| format!("bad level {l:?}: {e}"))?;
        handle.reload(f).map_err(|e| e.to_string())
    })
}
