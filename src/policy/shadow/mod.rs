//! The shadow policy (`policy.shadow`): a candidate evaluated beside the enforced
//! policy and never enforced, to learn what it would change before it does.
//!
//! The request path only builds the shadow's input document and offers it to a
//! bounded queue (`try_send`: a full queue drops the comparison and counts it);
//! a worker thread evaluates the shadow revision and compares with the decision
//! that was enforced. Disagreements are counted in
//! `portcullis_policy_shadow_total{direction,agreement}` and logged with the
//! decision id and both results. The shadow store has its own revision, reloads
//! and errors (`portcullis_policy_shadow_reloads_total`,
//! `portcullis_policy_shadow_revision_info`); it never touches the enforced one.

use std::sync::{Arc, LazyLock};

pub mod metrics;

use regorus::Value;
use tokio::sync::mpsc;

use self::metrics::METRICS;
use crate::direction::Direction;
use crate::policy::decision::{Decision, DecisionError};
use crate::policy::store::PolicyStore;

/// How a shadow decision compares with the enforced one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agreement {
    Agree,
    AllowToDeny,
    DenyToAllow,
    /// Same verdict, other result fields (status, headers, body, reason) differ.
    Changed,
}

impl Agreement {
    /// Compares an enforced and a shadow result; an error or undefined denies.
    pub fn of(
        enforced: &Result<Decision, DecisionError>,
        shadow: &Result<Decision, DecisionError>,
    ) -> Agreement {
        let allowed = |r: &Result<Decision, DecisionError>| r.as_ref().is_ok_and(|d| d.allowed);
        match (allowed(enforced), allowed(shadow)) {
            (true, false) => Agreement::AllowToDeny,
            (false, true) => Agreement::DenyToAllow,
            _ => match (enforced, shadow) {
                (Ok(a), Ok(b)) if a == b => Agreement::Agree,
                (Err(a), Err(b)) if a.reason() == b.reason() => Agreement::Agree,
                _ => Agreement::Changed,
            },
        }
    }

    /// The `agreement` label.
    pub fn label(self) -> &'static str {
        match self {
            Agreement::Agree => "agree",
            Agreement::AllowToDeny => "allow_to_deny",
            Agreement::DenyToAllow => "deny_to_allow",
            Agreement::Changed => "changed",
        }
    }
}

/// One decision to compare.
pub struct Comparison {
    pub direction: Direction,
    pub query: usize,
    pub decision_id: String,
    /// The shadow revision's input document (only the fields it reads).
    pub input: Value,
    pub enforced: Result<Decision, DecisionError>,
}

/// The shadow policy and the queue to its worker.
pub struct Shadow {
    store: Arc<PolicyStore>,
    tx: mpsc::Sender<Comparison>,
    fraction: f64,
}

impl Shadow {
    /// Starts the worker thread comparing decisions from a queue of `capacity`,
    /// for `fraction` (0..=1) of the requests.
    pub fn start(
        store: Arc<PolicyStore>,
        fraction: f64,
        capacity: usize,
    ) -> std::io::Result<Arc<Shadow>> {
        LazyLock::force(&METRICS);
        let (tx, mut rx) = mpsc::channel::<Comparison>(capacity.max(1));
        let worker_store = store.clone();
        std::thread::Builder::new()
            .name("policy-shadow".into())
            .spawn(move || {
                while let Some(c) = rx.blocking_recv() {
                    compare(&worker_store, c);
                }
            })?;
        Ok(Arc::new(Shadow {
            store,
            tx,
            fraction,
        }))
    }

    /// The shadow store (for reloads and its revision).
    pub fn store(&self) -> &Arc<PolicyStore> {
        &self.store
    }

    /// Whether this request is compared (the configured fraction).
    pub fn sampled(&self) -> bool {
        if self.fraction >= 1.0 {
            return true;
        }
        if self.fraction <= 0.0 {
            return false;
        }
        let mut b = [0u8; 4];
        if aws_lc_rs::rand::fill(&mut b).is_err() {
            return false;
        }
        (u32::from_le_bytes(b) as f64 / u32::MAX as f64) < self.fraction
    }

    /// Offers a comparison to the worker; never waits. A full queue drops it.
    pub fn submit(&self, c: Comparison) {
        let direction = c.direction.as_str();
        if self.tx.try_send(c).is_err() {
            METRICS.dropped.with_label_values(&[direction]).inc();
        }
    }
}

fn compare(store: &PolicyStore, c: Comparison) {
    let Some(set) = store.current() else {
        return;
    };
    let shadow = set.evaluate(c.query, c.input);
    let agreement = Agreement::of(&c.enforced, &shadow);
    METRICS
        .compared
        .with_label_values(&[c.direction.as_str(), agreement.label()])
        .inc();
    if agreement != Agreement::Agree {
        tracing::info!(
            decision_id = %c.decision_id,
            direction = c.direction.as_str(),
            agreement = agreement.label(),
            enforced = %summary(&c.enforced),
            shadow = %summary(&shadow),
            shadow_revision = set.short_revision(),
            "shadow policy disagrees"
        );
    }
}

/// A decision as one JSON object, for the disagreement log line.
pub fn summary(r: &Result<Decision, DecisionError>) -> serde_json::Value {
    match r {
        Ok(d) => serde_json::json!({
            "allowed": d.allowed,
            "http_status": d.http_status,
            "reason": d.reason,
            "headers": d.headers,
        }),
        Err(e) => serde_json::json!({"allowed": false, "error": e.reason()}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_of_each_pair() {
        let allow = Ok(Decision::allow());
        let deny = Ok(Decision::default());
        let deny_500 = Ok(Decision {
            http_status: Some(500),
            ..Decision::default()
        });
        let undefined: Result<Decision, DecisionError> = Err(DecisionError::Undefined);
        assert_eq!(Agreement::of(&allow, &allow), Agreement::Agree);
        assert_eq!(Agreement::of(&allow, &deny), Agreement::AllowToDeny);
        assert_eq!(Agreement::of(&allow, &undefined), Agreement::AllowToDeny);
        assert_eq!(Agreement::of(&undefined, &allow), Agreement::DenyToAllow);
        assert_eq!(Agreement::of(&deny, &deny_500), Agreement::Changed);
        assert_eq!(Agreement::of(&deny, &undefined), Agreement::Changed);
        assert_eq!(Agreement::of(&undefined, &undefined), Agreement::Agree);
    }
}
