//! The policy input document: the OPA-Envoy (ext_authz v3, protojson) shape,
//! built directly as a [`regorus::Value`] so the hot path never goes through
//! JSON text.
//!
//! Fields that do not apply are absent, not empty: no `principal` without a
//! verified peer identity, no `attributes.request` for opaque TCP connections,
//! no `body`/`parsed_body`/`truncated_body` unless the body was buffered, no
//! `metadataContext` without verified JWT claims.
//!
//! [`InputFacts`] is what the proxy knows; [`build_input`] builds the document (all of
//! it, or only the fields a policy can read: [`build_input_with`]); [`value_at`]
//! answers one path of it without building it (decision memo keys).

mod document;
mod facts;
mod interned;
mod lookup;
mod parse;

pub use self::document::{build_input, build_input_with};
pub use self::facts::{HttpFacts, InputFacts};
pub use self::lookup::value_at;

#[cfg(test)]
mod pruning_tests;
#[cfg(test)]
mod tests;
