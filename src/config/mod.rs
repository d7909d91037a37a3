//! The sidecar's configuration: one YAML file, every key optional with a safe
//! default, unknown keys rejected.
//!
//! [`Config::load`] and [`Config::from_yaml_str`] parse the file into the public
//! types below and then validate what the types alone cannot express (routes
//! required in `routes` mode, unique listen addresses, unique JWT provider names,
//! bounded sizes, ...). Every failure is a [`ConfigError::Invalid`] that names the
//! file, the line and column where they can be found, and the field path, e.g.
//! `conf.yaml:3:9: inbound.mtls: unknown variant "strickt", expected one of
//! "strict", "permissive"`.
//!
//! Durations are humantime strings (`10s`, `5m`, `250ms`). A section written with
//! no value (`inbound:` followed only by comments) means "all defaults".
//!
//! Layout: `model` (the top-level file and the listener, identity, admin, limits,
//! log and shutdown sections), `policy` and `jwt` (those sections' types), `de`
//! (deserialization helpers), `validate` (the checks per section) and `locate`
//! (the error type, and resolving an error to `file:line:column: field.path`).

mod de;
mod jwt;
mod locate;
mod model;
mod policy;
mod validate;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use self::jwt::*;
pub use self::locate::ConfigError;
use self::locate::{locate, parse_error};
pub use self::model::*;
pub use self::policy::*;
pub use self::validate::{MAX_BODY_BYTES, MIN_HEADER_BYTES};
use crate::identity::spiffe_id::SpiffeId;

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: file.clone(),
            source,
        })?;
        Self::from_yaml_str(&text, &file)
    }

    /// Parses and validates a configuration; `file_name` is used in error messages.
    /// An empty document (or only comments) gives all defaults.
    pub fn from_yaml_str(text: &str, file_name: &str) -> Result<Config, ConfigError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let config: Option<Config> =
            serde_path_to_error::deserialize(de).map_err(|e| parse_error(e, text, file_name))?;
        let config = config.unwrap_or_default();
        validate::validate(&config).map_err(|(path, message)| {
            let (line, column) = match locate(text, &path) {
                Some((l, c)) => (Some(l), Some(c)),
                None => (None, None),
            };
            ConfigError::Invalid {
                file: file_name.to_owned(),
                line,
                column,
                path,
                message,
            }
        })?;
        Ok(config)
    }

    /// The dev CA's SPIFFE ID when identity is `dev_ca`: the configured one, or
    /// `spiffe://<trust_domain>/ns/default/sa/default`. `None` for other sources.
    pub fn dev_ca_spiffe_id(&self) -> Option<SpiffeId> {
        match &self.identity {
            IdentityConfig::DevCa(ca) => match &ca.spiffe_id {
                Some(id) => Some(id.clone()),
                None => SpiffeId::kubernetes(&self.trust_domain, "default", "default").ok(),
            },
            _ => None,
        }
    }
}
