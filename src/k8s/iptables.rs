//! `portcullis iptables`: the nat rules the init container installs in the pod's
//! network namespace, modelled on istio-init and linkerd-init.
//!
//! Inbound TCP is redirected to the inbound port except excluded ports (the admin
//! port always); outbound TCP is redirected to the outbound port except traffic of
//! the proxy's own UID (so the sidecar's connections leave untouched), loopback
//! traffic, excluded ports and CIDRs. The rules are applied in one
//! `iptables-restore --noflush` transaction, so a half-installed rule set never exists.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::IpNet;

/// Names of the chains the rules live in; removed again by `--cleanup`.
const CHAINS: &[&str] = &[
    "PORTCULLIS_INBOUND",
    "PORTCULLIS_IN_REDIRECT",
    "PORTCULLIS_OUTPUT",
    "PORTCULLIS_REDIRECT",
];

/// What to intercept.
#[derive(Debug, Clone, clap::Args)]
pub struct Rules {
    /// UID the sidecar runs as; its own traffic is never redirected.
    #[arg(long, default_value_t = 1337)]
    pub proxy_uid: u32,
    /// Port of the inbound listener.
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// Port of the outbound listener.
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// Port of the admin listener (never redirected inbound).
    #[arg(long, default_value_t = 15000)]
    pub admin_port: u16,
    /// Inbound ports left alone (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destination CIDRs left alone (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_cidrs: Vec<IpNet>,
    /// Only these outbound CIDRs are redirected (default: all).
    #[arg(long, value_delimiter = ',')]
    pub include_outbound_cidrs: Vec<IpNet>,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            proxy_uid: 1337,
            inbound_port: 15006,
            outbound_port: 15001,
            admin_port: 15000,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            include_outbound_cidrs: Vec::new(),
        }
    }
}

impl Rules {
    /// The IPv4 nat table in `iptables-restore` format.
    pub fn restore_script(&self) -> String {
        let mut s = String::from("*nat\n");
        for c in CHAINS {
            s.push_str(&format!(":{c} - [0:0]\n"));
        }
        // Inbound.
        s.push_str(&format!(
            "-A PORTCULLIS_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}\n",
            self.inbound_port
        ));
        s.push_str("-A PREROUTING -p tcp -j PORTCULLIS_INBOUND\n");
        let mut excluded_in = vec![self.admin_port];
        excluded_in.extend(&self.exclude_inbound_ports);
        excluded_in.sort_unstable();
        excluded_in.dedup();
        for p in excluded_in {
            s.push_str(&format!(
                "-A PORTCULLIS_INBOUND -p tcp --dport {p} -j RETURN\n"
            ));
        }
        s.push_str("-A PORTCULLIS_INBOUND -p tcp -j PORTCULLIS_IN_REDIRECT\n");
        // Outbound.
        s.push_str(&format!(
            "-A PORTCULLIS_REDIRECT -p tcp -j REDIRECT --to-ports {}\n",
            self.outbound_port
        ));
        s.push_str("-A OUTPUT -p tcp -j PORTCULLIS_OUTPUT\n");
        s.push_str(&format!(
            "-A PORTCULLIS_OUTPUT -m owner --uid-owner {} -j RETURN\n",
            self.proxy_uid
        ));
        s.push_str("-A PORTCULLIS_OUTPUT -o lo -j RETURN\n");
        for p in &self.exclude_outbound_ports {
            s.push_str(&format!(
                "-A PORTCULLIS_OUTPUT -p tcp --dport {p} -j RETURN\n"
            ));
        }
        for c in self
            .exclude_outbound_cidrs
            .iter()
            .filter(|c| c.addr().is_ipv4())
        {
            s.push_str(&format!("-A PORTCULLIS_OUTPUT -d {c} -j RETURN\n"));
        }
        let include: Vec<&IpNet> = self
            .include_outbound_cidrs
            .iter()
            .filter(|c| c.addr().is_ipv4())
            .collect();
        if include.is_empty() {
            s.push_str("-A PORTCULLIS_OUTPUT -j PORTCULLIS_REDIRECT\n");
        } else {
            for c in include {
                s.push_str(&format!(
                    "-A PORTCULLIS_OUTPUT -d {c} -j PORTCULLIS_REDIRECT\n"
                ));
            }
        }
        s.push_str("COMMIT\n");
        s
    }

    /// Commands that remove every rule and chain `restore_script` installs.
    pub fn cleanup_commands() -> Vec<Vec<String>> {
        let mut cmds: Vec<Vec<String>> = vec![
            args("-t nat -D PREROUTING -p tcp -j PORTCULLIS_INBOUND"),
            args("-t nat -D OUTPUT -p tcp -j PORTCULLIS_OUTPUT"),
        ];
        for c in CHAINS {
            cmds.push(args(&format!("-t nat -F {c}")));
        }
        for c in CHAINS {
            cmds.push(args(&format!("-t nat -X {c}")));
        }
        cmds
    }
}

fn args(s: &str) -> Vec<String> {
    s.split(' ').map(str::to_owned).collect()
}

/// Why applying or removing the rules failed.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("cannot run {tool}: {source} (is the iptables package installed, and are we root with NET_ADMIN?)")]
    Spawn {
        tool: &'static str,
        source: std::io::Error,
    },
    #[error("{tool} failed: {stderr}")]
    Failed { tool: &'static str, stderr: String },
}

/// Installs the rules atomically with `iptables-restore --noflush`.
pub fn apply(rules: &Rules) -> Result<(), IptablesError> {
    let tool = "iptables-restore";
    let mut child = Command::new(tool)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| IptablesError::Spawn { tool, source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.restore_script().as_bytes())
            .map_err(|source| IptablesError::Spawn { tool, source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| IptablesError::Spawn { tool, source })?;
    if !out.status.success() {
        return Err(IptablesError::Failed {
            tool,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Removes the rules; missing rules or chains are not an error (idempotent).
pub fn cleanup() -> Result<(), IptablesError> {
    let tool = "iptables";
    for a in Rules::cleanup_commands() {
        let out = Command::new(tool)
            .args(&a)
            .output()
            .map_err(|source| IptablesError::Spawn { tool, source })?;
        if !out.status.success() {
            tracing::debug!(args = ?a, stderr = %String::from_utf8_lossy(&out.stderr), "cleanup step skipped");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_redirect_both_ways_and_exempt_the_proxy() {
        let s = Rules::default().restore_script();
        assert!(s.starts_with("*nat\n") && s.ends_with("COMMIT\n"));
        assert!(s.contains("-A PORTCULLIS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n"));
        assert!(s.contains("-A PORTCULLIS_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n"));
        assert!(s.contains("-A PORTCULLIS_INBOUND -p tcp --dport 15000 -j RETURN\n"));
        assert!(s.contains("-A PORTCULLIS_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"));
        assert!(s.contains("-A PORTCULLIS_OUTPUT -o lo -j RETURN\n"));
        assert!(s.contains("-A PORTCULLIS_OUTPUT -j PORTCULLIS_REDIRECT\n"));
        // The owner exemption comes before the catch-all redirect.
        let owner = s.find("--uid-owner").unwrap();
        let redirect = s
            .find("-A PORTCULLIS_OUTPUT -j PORTCULLIS_REDIRECT")
            .unwrap();
        assert!(owner < redirect);
    }

    #[test]
    fn exclusions_and_inclusions() {
        let rules = Rules {
            exclude_inbound_ports: vec![22, 15000],
            exclude_outbound_ports: vec![5432],
            exclude_outbound_cidrs: vec!["169.254.169.254/32".parse().unwrap()],
            include_outbound_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            ..Rules::default()
        };
        let s = rules.restore_script();
        assert!(s.contains("-A PORTCULLIS_INBOUND -p tcp --dport 22 -j RETURN\n"));
        assert_eq!(s.matches("--dport 15000").count(), 1);
        assert!(s.contains("-A PORTCULLIS_OUTPUT -p tcp --dport 5432 -j RETURN\n"));
        assert!(s.contains("-A PORTCULLIS_OUTPUT -d 169.254.169.254/32 -j RETURN\n"));
        assert!(s.contains("-A PORTCULLIS_OUTPUT -d 10.0.0.0/8 -j PORTCULLIS_REDIRECT\n"));
        assert!(!s.contains("-A PORTCULLIS_OUTPUT -j PORTCULLIS_REDIRECT\n"));
    }

    #[test]
    fn cleanup_removes_jumps_before_chains() {
        let cmds = Rules::cleanup_commands();
        assert_eq!(
            cmds[0].join(" "),
            "-t nat -D PREROUTING -p tcp -j PORTCULLIS_INBOUND"
        );
        assert_eq!(
            cmds.last().unwrap().join(" "),
            "-t nat -X PORTCULLIS_REDIRECT"
        );
    }
}
