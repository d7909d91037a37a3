//! Kubernetes integration: the init container's iptables rules.

pub mod iptables;
