//! `portcullis iptables`: the nat rules the init container installs in the pod's
//! network namespace, modelled on istio-init and linkerd-init.
//!
//! Inbound TCP is redirected to the inbound port except excluded ports (the admin
//! port always); outbound TCP is redirected to the outbound port except traffic of
//! the proxy's own UID (so the sidecar's connections leave untouched), loopback
//! traffic, excluded ports and CIDRs. The rules are applied in one
//! `iptables-restore --noflush` transaction, so a half-installed rule set never exists.
//!
//! IPv6 is not intercepted, so it is refused instead (fail closed): in the filter
//! table, new inbound TCP connections (except excluded ports and loopback) and new
//! outbound ones not made by the proxy (except loopback and exclusions) are reset.
//! Without these rules, a dual-stack pod would take IPv6 traffic past the sidecar.
//!
//! Applying twice (an init container restarted) leaves one copy of every rule.

use crate::config::defaults;
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

/// The IPv6 filter-table chains.
const CHAINS_V6: &[&str] = &["PORTCULLIS_INBOUND6", "PORTCULLIS_OUTPUT6"];

/// The jumps from built-in chains, per family: (table, rule). Added only when absent.
const JUMPS_V4: &[(&str, &str)] = &[
    ("nat", "PREROUTING -p tcp -j PORTCULLIS_INBOUND"),
    ("nat", "OUTPUT -p tcp -j PORTCULLIS_OUTPUT"),
];
const JUMPS_V6: &[(&str, &str)] = &[
    ("filter", "INPUT -p tcp -j PORTCULLIS_INBOUND6"),
    ("filter", "OUTPUT -p tcp -j PORTCULLIS_OUTPUT6"),
];

/// One address family's tools, chains and jumps.
struct Family {
    restore: &'static str,
    tool: &'static str,
    table: &'static str,
    chains: &'static [&'static str],
    jumps: &'static [(&'static str, &'static str)],
}

const V4: Family = Family {
    restore: "iptables-restore",
    tool: "iptables",
    table: "nat",
    chains: CHAINS,
    jumps: JUMPS_V4,
};
const V6: Family = Family {
    restore: "ip6tables-restore",
    tool: "ip6tables",
    table: "filter",
    chains: CHAINS_V6,
    jumps: JUMPS_V6,
};

/// What to intercept.
#[derive(Debug, Clone, clap::Args)]
pub struct Rules {
    /// UID the sidecar runs as; its own traffic is never redirected.
    #[arg(long, default_value_t = defaults::PROXY_UID)]
    pub proxy_uid: u32,
    /// Port of the inbound listener.
    #[arg(long, default_value_t = defaults::INBOUND_PORT)]
    pub inbound_port: u16,
    /// Port of the outbound listener.
    #[arg(long, default_value_t = defaults::OUTBOUND_PORT)]
    pub outbound_port: u16,
    /// Port of the admin listener (never redirected inbound).
    #[arg(long, default_value_t = defaults::ADMIN_PORT)]
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
            proxy_uid: defaults::PROXY_UID,
            inbound_port: defaults::INBOUND_PORT,
            outbound_port: defaults::OUTBOUND_PORT,
            admin_port: defaults::ADMIN_PORT,
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
        self.script_v4(true)
    }

    /// The IPv6 filter table in `ip6tables-restore` format.
    pub fn restore_script_v6(&self) -> String {
        self.script_v6(true)
    }

    fn script_v4(&self, with_jumps: bool) -> String {
        let mut s = String::from("*nat\n");
        for c in CHAINS {
            s.push_str(&format!(":{c} - [0:0]\n"));
        }
        if with_jumps {
            for (_, rule) in JUMPS_V4 {
                s.push_str(&format!("-A {rule}\n"));
            }
        }
        // Inbound.
        s.push_str(&format!(
            "-A PORTCULLIS_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}\n",
            self.inbound_port
        ));
        for p in self.excluded_inbound() {
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
        self.outbound_exemptions(&mut s, "PORTCULLIS_OUTPUT", true);
        self.outbound_targets(&mut s, "PORTCULLIS_OUTPUT", true, "PORTCULLIS_REDIRECT");
        s.push_str("COMMIT\n");
        s
    }

    fn script_v6(&self, with_jumps: bool) -> String {
        const RESET: &str = "REJECT --reject-with tcp-reset";
        let mut s = String::from("*filter\n");
        for c in CHAINS_V6 {
            s.push_str(&format!(":{c} - [0:0]\n"));
        }
        if with_jumps {
            for (_, rule) in JUMPS_V6 {
                s.push_str(&format!("-A {rule}\n"));
            }
        }
        // Inbound: only new connections (SYN) are refused; replies to the proxy's
        // own connections pass.
        s.push_str("-A PORTCULLIS_INBOUND6 -i lo -j RETURN\n");
        for p in self.excluded_inbound() {
            s.push_str(&format!(
                "-A PORTCULLIS_INBOUND6 -p tcp --dport {p} -j RETURN\n"
            ));
        }
        s.push_str(&format!("-A PORTCULLIS_INBOUND6 -p tcp --syn -j {RESET}\n"));
        // Outbound.
        self.outbound_exemptions(&mut s, "PORTCULLIS_OUTPUT6", false);
        self.outbound_targets(
            &mut s,
            "PORTCULLIS_OUTPUT6",
            false,
            &format!("-p tcp --syn -j {RESET}"),
        );
        s.push_str("COMMIT\n");
        s
    }

    /// The admin port and the configured inbound exclusions, sorted, once each.
    fn excluded_inbound(&self) -> Vec<u16> {
        let mut ports = vec![self.admin_port];
        ports.extend(&self.exclude_inbound_ports);
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Outbound traffic left alone: the proxy's own, loopback, excluded ports and
    /// excluded CIDRs of the family.
    fn outbound_exemptions(&self, s: &mut String, chain: &str, v4: bool) {
        s.push_str(&format!(
            "-A {chain} -m owner --uid-owner {} -j RETURN\n",
            self.proxy_uid
        ));
        s.push_str(&format!("-A {chain} -o lo -j RETURN\n"));
        for p in &self.exclude_outbound_ports {
            s.push_str(&format!("-A {chain} -p tcp --dport {p} -j RETURN\n"));
        }
        for c in self
            .exclude_outbound_cidrs
            .iter()
            .filter(|c| c.addr().is_ipv4() == v4)
        {
            s.push_str(&format!("-A {chain} -d {c} -j RETURN\n"));
        }
    }

    /// What happens to the rest: every destination, or only the included CIDRs of
    /// the family (when `--include-outbound-cidrs` names any at all).
    fn outbound_targets(&self, s: &mut String, chain: &str, v4: bool, action: &str) {
        let action = if action.starts_with('-') {
            action.to_owned()
        } else {
            format!("-j {action}")
        };
        if self.include_outbound_cidrs.is_empty() {
            s.push_str(&format!("-A {chain} {action}\n"));
            return;
        }
        for c in self
            .include_outbound_cidrs
            .iter()
            .filter(|c| c.addr().is_ipv4() == v4)
        {
            s.push_str(&format!("-A {chain} -d {c} {action}\n"));
        }
    }

    /// Commands that remove every rule and chain `restore_script` installs.
    pub fn cleanup_commands() -> Vec<Vec<String>> {
        cleanup_commands_for(&V4)
    }
}

fn cleanup_commands_for(f: &Family) -> Vec<Vec<String>> {
    let mut cmds: Vec<Vec<String>> = f
        .jumps
        .iter()
        .map(|(table, rule)| args(&format!("-t {table} -D {rule}")))
        .collect();
    for c in f.chains {
        cmds.push(args(&format!("-t {} -F {c}", f.table)));
    }
    for c in f.chains {
        cmds.push(args(&format!("-t {} -X {c}", f.table)));
    }
    cmds
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

/// Installs the rules atomically with `iptables-restore --noflush`, then the IPv6
/// refusals with `ip6tables-restore` when the kernel has IPv6. Jumps that are already
/// there are not added twice.
pub fn apply(rules: &Rules) -> Result<(), IptablesError> {
    let v4 = rules.script_v4(false) + &missing_jumps(&V4)?;
    restore(&V4, &v4)?;
    if !ipv6_enabled() {
        tracing::info!("IPv6 is disabled in this network namespace: no ip6tables rules");
        return Ok(());
    }
    let v6 = rules.script_v6(false) + &missing_jumps(&V6)?;
    restore(&V6, &v6)
}

/// Whether the kernel has IPv6 in this namespace (else there is nothing to refuse).
fn ipv6_enabled() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
}

/// A second transaction adding the jumps not installed yet (`-C` says which).
fn missing_jumps(f: &Family) -> Result<String, IptablesError> {
    let mut by_table: Vec<(&str, Vec<&str>)> = Vec::new();
    for (table, rule) in f.jumps {
        let present = Command::new(f.tool)
            .args(args(&format!("-t {table} -C {rule}")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|source| IptablesError::Spawn {
                tool: f.tool,
                source,
            })?
            .success();
        if !present {
            match by_table.iter_mut().find(|(t, _)| t == table) {
                Some((_, rules)) => rules.push(rule),
                None => by_table.push((table, vec![rule])),
            }
        }
    }
    let mut s = String::new();
    for (table, rules) in by_table {
        s.push_str(&format!("*{table}\n"));
        for r in rules {
            s.push_str(&format!("-A {r}\n"));
        }
        s.push_str("COMMIT\n");
    }
    Ok(s)
}

fn restore(f: &Family, script: &str) -> Result<(), IptablesError> {
    let tool = f.restore;
    let mut child = Command::new(tool)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| IptablesError::Spawn { tool, source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
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

/// Removes the rules of both families; missing rules or chains are not an error
/// (idempotent), nor is a missing `ip6tables` on a host without IPv6.
pub fn cleanup() -> Result<(), IptablesError> {
    for f in [&V4, &V6] {
        for a in cleanup_commands_for(f) {
            let out = match Command::new(f.tool).args(&a).output() {
                Ok(out) => out,
                Err(_) if f.tool == V6.tool && !ipv6_enabled() => break,
                Err(source) => {
                    return Err(IptablesError::Spawn {
                        tool: f.tool,
                        source,
                    })
                }
            };
            if !out.status.success() {
                tracing::debug!(tool = f.tool, args = ?a, stderr = %String::from_utf8_lossy(&out.stderr), "cleanup step skipped");
            }
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
    fn ipv6_is_refused_not_bypassed() {
        let rules = Rules {
            exclude_inbound_ports: vec![22],
            exclude_outbound_cidrs: vec![
                "fd00::/8".parse().unwrap(),
                "169.254.169.254/32".parse().unwrap(),
            ],
            ..Rules::default()
        };
        let s = rules.restore_script_v6();
        assert!(s.starts_with("*filter\n") && s.ends_with("COMMIT\n"), "{s}");
        assert!(s.contains("-A INPUT -p tcp -j PORTCULLIS_INBOUND6\n"));
        assert!(s.contains("-A OUTPUT -p tcp -j PORTCULLIS_OUTPUT6\n"));
        assert!(s.contains("-A PORTCULLIS_INBOUND6 -p tcp --dport 22 -j RETURN\n"));
        assert!(
            s.contains("-A PORTCULLIS_INBOUND6 -p tcp --syn -j REJECT --reject-with tcp-reset\n")
        );
        assert!(s.contains("-A PORTCULLIS_OUTPUT6 -m owner --uid-owner 1337 -j RETURN\n"));
        assert!(s.contains("-A PORTCULLIS_OUTPUT6 -d fd00::/8 -j RETURN\n"));
        assert!(!s.contains("169.254"), "{s}");
        assert!(
            s.contains("-A PORTCULLIS_OUTPUT6 -p tcp --syn -j REJECT --reject-with tcp-reset\n")
        );
        // Exemptions come before the refusal.
        assert!(
            s.find("--uid-owner").unwrap() < s.find("PORTCULLIS_OUTPUT6 -p tcp --syn").unwrap()
        );
        // The IPv4 script names no IPv6 CIDR.
        assert!(!rules.restore_script().contains("fd00"));
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
