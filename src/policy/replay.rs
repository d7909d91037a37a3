//! `portcullis policy replay`: re-decide logged requests with a candidate policy
//! and report what would change.
//!
//! Reads a decision log (one JSON entry per line, as the sidecar writes it with
//! `log.input` on), evaluates each entry's input document with the candidate's
//! query for the entry's direction, and compares the verdict with the one logged
//! (`dry_run_deny` counts as a deny: the policy denied). Entries without an input
//! are counted as skipped, never guessed; lines that are not decision entries are
//! counted as unreadable.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::BufRead;

use super::engine::PolicySet;
use super::exact_json::json_to_value;
use super::store::{INBOUND, OUTBOUND};

/// The longest decision-log line read (longer lines count as unreadable).
const MAX_LINE: usize = 4 << 20;

/// What changed for one group of requests.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupKey {
    pub direction: String,
    /// `allow_to_deny` or `deny_to_allow`.
    pub change: &'static str,
    pub source_principal: String,
    pub method: String,
    /// The path without its query.
    pub path: String,
}

/// Requests in one group: how many, and one decision id to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub count: u64,
    pub example_decision_id: String,
    /// The candidate's reason for the new verdict, from the example.
    pub new_reason: Option<String>,
}

/// The outcome of a replay.
#[derive(Debug, Default)]
pub struct Report {
    pub entries: u64,
    pub replayed: u64,
    pub unchanged: u64,
    pub allow_to_deny: u64,
    pub deny_to_allow: u64,
    /// Entries without an input document.
    pub skipped: u64,
    /// Lines that are not decision entries (or too long).
    pub unreadable: u64,
    pub groups: BTreeMap<GroupKey, Group>,
}

impl Report {
    /// Decisions that would change.
    pub fn changed(&self) -> u64 {
        self.allow_to_deny + self.deny_to_allow
    }

    /// Totals, then one line per group, most frequent first.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} entries: {} replayed, {} unchanged, {} changed ({} allow→deny, {} deny→allow), {} skipped (no input), {} unreadable",
            self.entries,
            self.replayed,
            self.unchanged,
            self.changed(),
            self.allow_to_deny,
            self.deny_to_allow,
            self.skipped,
            self.unreadable
        );
        for (k, g) in self.sorted_groups() {
            let arrow = if k.change == "allow_to_deny" {
                "allow → deny"
            } else {
                "deny → allow"
            };
            let _ = write!(
                out,
                "  {arrow}  {:>5}×  {} {} {} {}  e.g. {}",
                g.count, k.direction, k.source_principal, k.method, k.path, g.example_decision_id
            );
            if let Some(r) = &g.new_reason {
                let _ = write!(out, "  ({r})");
            }
            out.push('\n');
        }
        out
    }

    /// The same as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let groups: Vec<serde_json::Value> = self
            .sorted_groups()
            .into_iter()
            .map(|(k, g)| {
                serde_json::json!({
                    "direction": k.direction,
                    "change": k.change,
                    "source_principal": k.source_principal,
                    "method": k.method,
                    "path": k.path,
                    "count": g.count,
                    "example_decision_id": g.example_decision_id,
                    "new_reason": g.new_reason,
                })
            })
            .collect();
        serde_json::json!({
            "entries": self.entries,
            "replayed": self.replayed,
            "unchanged": self.unchanged,
            "changed": self.changed(),
            "allow_to_deny": self.allow_to_deny,
            "deny_to_allow": self.deny_to_allow,
            "skipped": self.skipped,
            "unreadable": self.unreadable,
            "groups": groups,
        })
    }

    fn sorted_groups(&self) -> Vec<(&GroupKey, &Group)> {
        let mut v: Vec<_> = self.groups.iter().collect();
        v.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        v
    }
}

/// Replays every entry read from `log` with `candidate` (compiled for the inbound
/// and outbound queries, in that order).
pub fn replay(log: impl BufRead, candidate: &PolicySet) -> std::io::Result<Report> {
    let mut report = Report::default();
    let mut lines = log.split(b'\n');
    while let Some(line) = lines.next().transpose()? {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        report.entries += 1;
        if line.len() > MAX_LINE {
            report.unreadable += 1;
            continue;
        }
        let Ok(entry) = serde_json::from_slice::<serde_json::Value>(&line) else {
            report.unreadable += 1;
            continue;
        };
        let query = match entry["direction"].as_str() {
            Some("inbound") => INBOUND,
            Some("outbound") => OUTBOUND,
            _ => {
                report.unreadable += 1;
                continue;
            }
        };
        let Some(was_allowed) = entry["decision"].as_str().map(|d| d == "allow") else {
            report.unreadable += 1;
            continue;
        };
        let Some(input) = entry.get("input").filter(|i| i.is_object()) else {
            report.skipped += 1;
            continue;
        };
        report.replayed += 1;
        let now = candidate.evaluate(query, json_to_value(input));
        let now_allowed = now.as_ref().is_ok_and(|d| d.allowed);
        if now_allowed == was_allowed {
            report.unchanged += 1;
            continue;
        }
        let change = if was_allowed {
            report.allow_to_deny += 1;
            "allow_to_deny"
        } else {
            report.deny_to_allow += 1;
            "deny_to_allow"
        };
        let text = |k: &str| entry[k].as_str().unwrap_or("-").to_owned();
        let path = text("path");
        let key = GroupKey {
            direction: text("direction"),
            change,
            source_principal: text("source_principal"),
            method: text("method"),
            path: path.split('?').next().unwrap_or("").to_owned(),
        };
        let new_reason = match &now {
            Ok(d) => d.reason.clone(),
            Err(e) => Some(e.reason().to_owned()),
        };
        report
            .groups
            .entry(key)
            .or_insert_with(|| Group {
                count: 0,
                example_decision_id: text("decision_id"),
                new_reason,
            })
            .count += 1;
    }
    Ok(report)
}
