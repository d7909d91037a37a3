//! Importers that turn another system's access rules into a portcullis policy
//! directory. Today: Istio's security resources ([`istio`]).

pub mod istio;
