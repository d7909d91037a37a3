//! What an explanation says ([`Explanation`], its steps and outcomes) and how it
//! reads, as text or JSON.

use std::fmt::Write as _;

use regorus::Value;

/// What happened to one tried definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every expression held.
    Held,
    /// This expression did not hold; `values` says what it compared.
    Failed {
        location: String,
        expression: String,
        values: String,
    },
    /// The default value applied (no definition held).
    Default { text: String },
    /// The probes for this body did not compile; nothing more is known.
    Unexplained,
}

/// One tried definition of a rule, with its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Full rule name, e.g. `data.envoy.authz.allow`.
    pub rule: String,
    /// `file:line` of the definition.
    pub location: String,
    /// An `else` branch.
    pub is_else: bool,
    /// Nesting level: 0 for the queried rule, 1 for rules its failed expressions read…
    pub depth: usize,
    pub outcome: Outcome,
}

/// The explanation of one decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub query: String,
    /// The result as JSON (`None` when undefined).
    pub result: Option<serde_json::Value>,
    /// The result denies: undefined, `false`, or an object with `allowed: false`.
    pub denied: bool,
    pub steps: Vec<Step>,
}

/// Errors building or running the explainer.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("query {0:?} does not look like data.<package>.<rule>")]
    Query(String),
    #[error("evaluating {query}: {message}")]
    Eval { query: String, message: String },
}

impl Explanation {
    /// The explanation for people: one line per tried definition, the failed
    /// expression under it.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let result = match &self.result {
            Some(v) => v.to_string(),
            None => "undefined".to_string(),
        };
        let verdict = if self.denied { "denied" } else { "allowed" };
        let _ = writeln!(out, "{} = {result} ({verdict})", self.query);
        for step in &self.steps {
            let indent = "  ".repeat(step.depth + 1);
            let name = step.rule.rsplit('.').next().unwrap_or(&step.rule);
            let branch = if step.is_else { " (else)" } else { "" };
            match &step.outcome {
                Outcome::Held => {
                    let _ = writeln!(out, "{indent}{}: {name}{branch}: held", step.location);
                }
                Outcome::Failed {
                    location,
                    expression,
                    values,
                } => {
                    let _ = writeln!(out, "{indent}{}: {name}{branch}: failed", step.location);
                    let _ = writeln!(
                        out,
                        "{indent}  {location}: {} → {values}",
                        one_line(expression)
                    );
                }
                Outcome::Default { text } => {
                    let _ = writeln!(
                        out,
                        "{indent}{}: {}: applied",
                        step.location,
                        one_line(text)
                    );
                }
                Outcome::Unexplained => {
                    let _ = writeln!(
                        out,
                        "{indent}{}: {name}{branch}: failed (not explainable)",
                        step.location
                    );
                }
            }
        }
        out
    }

    /// The explanation for tools (also what decision-log entries carry).
    pub fn to_json(&self) -> serde_json::Value {
        let steps: Vec<serde_json::Value> = self
            .steps
            .iter()
            .map(|s| {
                let mut o = serde_json::json!({
                    "rule": s.rule,
                    "location": s.location,
                    "depth": s.depth,
                });
                if s.is_else {
                    o["else"] = true.into();
                }
                match &s.outcome {
                    Outcome::Held => o["outcome"] = "held".into(),
                    Outcome::Failed {
                        location,
                        expression,
                        values,
                    } => {
                        o["outcome"] = "failed".into();
                        o["failed"] = serde_json::json!({
                            "location": location,
                            "expression": one_line(expression),
                            "values": values,
                        });
                    }
                    Outcome::Default { text } => {
                        o["outcome"] = "default".into();
                        o["default"] = one_line(text).into();
                    }
                    Outcome::Unexplained => o["outcome"] = "unexplained".into(),
                }
                o
            })
            .collect();
        serde_json::json!({
            "query": self.query,
            "result": self.result,
            "denied": self.denied,
            "steps": steps,
        })
    }
}

/// True when `result` denies as the proxy reads it: undefined, `false`, or an
/// object whose `allowed` is not `true`.
pub fn denies(result: &Option<serde_json::Value>) -> bool {
    match result {
        None => true,
        Some(serde_json::Value::Bool(b)) => !b,
        Some(serde_json::Value::Object(o)) => {
            o.get("allowed") != Some(&serde_json::Value::Bool(true))
        }
        Some(_) => true,
    }
}

pub(super) fn json_of(v: &Value) -> Option<serde_json::Value> {
    if *v == Value::Undefined {
        return None;
    }
    serde_json::to_value(v).ok()
}

/// A value as compact JSON (sets as arrays).
pub(super) fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| v.to_string())
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
