//! The decision step shared by inbound and outbound: build the input, evaluate,
//! fail closed, apply dry-run, count and log.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, Response, StatusCode};

use super::headers::add_headers;
use super::reply::{text_response, Early, LocalReply, ProxyBody, Refusal};
use crate::decision_log::{now_rfc3339, DecisionEntry, DecisionLog};
use crate::direction::Direction;
use crate::metrics;
use crate::policy::shadow::{Comparison, Shadow};
use crate::policy::store::PolicyStore;
use crate::policy::{Decision, DecisionError, InputFacts, PolicySet};

/// What the data path does with a request.
#[derive(Debug)]
pub enum Verdict {
    /// Forward, applying the decision's header changes (if the result was an object).
    Allow(Decision),
    /// Answer locally.
    Deny(Denial),
}

/// A local answer for a denied request.
#[derive(Debug)]
pub struct Denial {
    pub status: StatusCode,
    /// The gRPC status a gRPC caller gets (the policy's `grpc_status`), when set.
    pub grpc_status: Option<u8>,
    /// What a gRPC caller is told (`grpc-message`): the policy's reason, never
    /// policy internals.
    pub grpc_message: String,
    pub body: String,
    pub headers: Vec<(String, String)>,
    pub reason: String,
}

/// Everything the decision step needs for one direction.
#[derive(Clone)]
pub struct Decider {
    pub direction: Direction,
    pub query: usize,
    pub policy: Arc<PolicyStore>,
    pub dry_run: bool,
    pub log: DecisionLog,
    /// The shadow policy compared with every (sampled) decision, if configured.
    pub shadow: Option<Arc<Shadow>>,
}

/// What is left to record once the response status is known.
pub struct Ticket {
    /// `allow`, `deny` or `dry_run_deny`.
    pub label: &'static str,
    entry: Option<DecisionEntry>,
    /// The entry goes to the decision log (it may exist only for the tap).
    logged: bool,
    /// The revision and input to explain the decision with (`log.explain`).
    explain: Option<(Arc<PolicySet>, regorus::Value, Vec<String>)>,
}

impl Ticket {
    /// A request refused before any decision (bad path, bad token, limits).
    pub fn refused() -> Ticket {
        Ticket {
            label: "deny",
            entry: None,
            logged: false,
            explain: None,
        }
    }
}

impl Decider {
    /// Evaluates the policy for `facts`. Never allows by accident: no policy,
    /// undefined, an error, a timeout or a wrongly shaped result is a deny.
    pub fn decide(&self, facts: &InputFacts<'_>) -> (Verdict, Ticket) {
        crate::footprint::traffic_decided();
        let m = metrics::global();
        let start = Instant::now();
        // The revision is copied into a decision log entry only when one is written.
        let revision = self.policy.current();
        let result = match &revision {
            Some(set) => {
                // Only the fields this revision's rules can read go into the input.
                let (result, memo) = set.decide(self.query, facts);
                if let Some(label) = memo.label() {
                    m.policy_decision_cache
                        .with_label_values(&[self.direction.as_str(), label])
                        .inc();
                }
                result
            }
            None => Err(DecisionError::NoPolicy),
        };
        let elapsed = start.elapsed();
        if let Some(shadow) = &self.shadow {
            self.offer_shadow(shadow, facts, &result);
        }
        m.policy_eval_duration
            .with_label_values(&[self.direction.as_str()])
            .observe(elapsed.as_secs_f64());
        let eval_ns = elapsed.as_nanos() as u64;

        let denial = match result {
            Ok(d) if d.allowed => {
                let reason = d.reason.clone();
                let ticket = self.ticket("allow", reason, revision, eval_ns, facts);
                return (Verdict::Allow(d), ticket);
            }
            Ok(d) => {
                let reason = d
                    .reason
                    .clone()
                    .or_else(|| d.body.clone())
                    .unwrap_or_else(|| "denied by policy".to_owned());
                let status = d
                    .http_status
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .unwrap_or(StatusCode::FORBIDDEN);
                Denial {
                    status,
                    grpc_status: d.grpc_status,
                    grpc_message: reason.clone(),
                    body: d
                        .body
                        .clone()
                        .unwrap_or_else(|| format!("access denied: {reason}\n")),
                    // OPA-Envoy puts `headers` on a denied response; a policy that
                    // sets `response_headers_to_add` on a deny gets those as well.
                    headers: d
                        .headers
                        .iter()
                        .chain(&d.response_headers_to_add)
                        .cloned()
                        .collect(),
                    reason,
                }
            }
            Err(e) => {
                m.policy_errors
                    .with_label_values(&[self.direction.as_str(), e.reason()])
                    .inc();
                tracing::warn!(direction = self.direction.as_str(), reason = e.reason(), error = %e, "policy failed closed");
                let status = match e {
                    DecisionError::NoPolicy => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::FORBIDDEN,
                };
                Denial {
                    status,
                    grpc_status: None,
                    grpc_message: format!("access denied: policy {}", e.reason()),
                    // Details stay in the log: policy internals are not for clients.
                    body: format!("access denied: policy {}\n", e.reason()),
                    headers: Vec::new(),
                    reason: format!("{}: {e}", e.reason()),
                }
            }
        };
        if self.dry_run {
            tracing::info!(direction = self.direction.as_str(), reason = %denial.reason, "dry-run: deny let through");
            let ticket = self.ticket(
                "dry_run_deny",
                Some(denial.reason),
                revision,
                eval_ns,
                facts,
            );
            return (Verdict::Allow(Decision::allow()), ticket);
        }
        let ticket = self.ticket(
            "deny",
            Some(denial.reason.clone()),
            revision,
            eval_ns,
            facts,
        );
        (Verdict::Deny(denial), ticket)
    }

    /// Hands the decision to the shadow worker: only its input is built here.
    fn offer_shadow(
        &self,
        shadow: &Shadow,
        facts: &InputFacts<'_>,
        enforced: &Result<Decision, DecisionError>,
    ) {
        let Some(set) = shadow.store().current() else {
            return;
        };
        if !shadow.sampled() {
            return;
        }
        let input = match set.input_needs(self.query) {
            Some(needs) => crate::policy::build_input_with(facts, needs),
            None => crate::policy::build_input(facts),
        };
        shadow.submit(Comparison {
            direction: self.direction,
            query: self.query,
            decision_id: facts
                .http
                .as_ref()
                .map(|h| h.id.to_owned())
                .unwrap_or_default(),
            input,
            enforced: enforced.clone(),
        });
    }

    fn ticket(
        &self,
        label: &'static str,
        reason: Option<String>,
        revision: Option<Arc<PolicySet>>,
        eval_ns: u64,
        facts: &InputFacts<'_>,
    ) -> Ticket {
        let logged = self.log.wants(label == "allow");
        if !logged && !crate::proxy::tap::active() {
            return Ticket {
                label,
                entry: None,
                logged,
                explain: None,
            };
        }
        let http = facts.http.as_ref();
        // The input as the policy saw it; explained once the response is on its way.
        let explain = revision
            .as_ref()
            .filter(|_| self.log.explains(label))
            .map(|set| {
                let needs = set.input_needs(self.query);
                let input = needs.map_or_else(
                    || crate::policy::build_input(facts),
                    |n| crate::policy::build_input_with(facts, n),
                );
                let secrets = http
                    .map(|h| self.log.secret_values(h.headers, h.path))
                    .unwrap_or_default();
                (set.clone(), input, secrets)
            });
        let entry = DecisionEntry {
            decision_id: http
                .map(|h| h.id.to_owned())
                .unwrap_or_else(crate::proxy::headers::random_id),
            time: now_rfc3339(),
            direction: self.direction,
            source_principal: facts.source_principal.map(str::to_owned),
            source_address: facts.source_address.to_string(),
            destination_principal: facts.destination_principal.map(str::to_owned),
            destination_address: facts.destination_address.to_string(),
            method: http.map(|h| h.method.to_owned()),
            path: http.map(|h| self.log.masked_path(h.path)),
            decision: label,
            status: 0,
            reason,
            policy_revision: revision
                .as_deref()
                .map_or("none", PolicySet::revision)
                .to_owned(),
            eval_ns,
            // The tap shows no headers: masked only for the log.
            headers: http
                .filter(|_| logged)
                .map(|h| self.log.masked_headers(h.headers)),
            input: (logged && self.log.logs_input(label)).then(|| {
                let input = crate::policy::build_input(facts);
                self.log
                    .masked_input(serde_json::to_value(&input).unwrap_or_default())
            }),
            explanation: None,
        };
        Ticket {
            label,
            entry: Some(entry),
            logged,
            explain,
        }
    }

    /// Turns a verdict into what the data path does next: a local answer for a deny
    /// (counted and logged here), or the allowed decision with its request-header
    /// changes already applied to `headers`.
    pub fn enforce(
        &self,
        verdict: Verdict,
        ticket: Ticket,
        headers: &mut HeaderMap,
        started: Instant,
    ) -> Result<(Decision, Ticket), Box<Response<ProxyBody>>> {
        match verdict {
            Verdict::Deny(denial) => {
                let mut resp = text_response(denial.status, denial.body);
                // A gRPC caller is told the policy's reason, not the body's wording.
                resp.extensions_mut().insert(LocalReply {
                    message: denial.grpc_message,
                    grpc_status: denial.grpc_status,
                });
                add_headers(resp.headers_mut(), &denial.headers);
                self.finish(ticket, resp.status().as_u16(), started);
                Err(Box::new(resp))
            }
            Verdict::Allow(decision) => {
                for name in &decision.request_headers_to_remove {
                    headers.remove(name.as_str());
                }
                add_headers(headers, &decision.headers);
                Ok((decision, ticket))
            }
        }
    }

    /// The response for a request handler's outcome: a refusal is counted and
    /// answered here, anything else was answered and recorded already.
    pub fn answer(
        &self,
        outcome: Result<Response<ProxyBody>, Early>,
        started: Instant,
    ) -> Response<ProxyBody> {
        match outcome {
            Ok(resp) => resp,
            Err(Early::Refused(r)) => self.refuse(r, started),
            Err(Early::Answered(resp)) => *resp,
        }
    }

    /// Answers a request refused before the policy: counted as refused (by reason)
    /// and as a denied request.
    pub fn refuse(&self, refusal: Refusal, started: Instant) -> Response<ProxyBody> {
        let status = refusal.status.as_u16();
        let resp = refusal.answer(self.direction);
        self.finish(Ticket::refused(), status, started);
        resp
    }

    /// Counts the request and writes the decision log entry once the status is known.
    pub fn finish(&self, ticket: Ticket, status: u16, started: Instant) {
        let m = metrics::global();
        m.requests
            .with_label_values(&[
                self.direction.as_str(),
                ticket.label,
                metrics::status_class(status),
            ])
            .inc();
        m.request_duration
            .with_label_values(&[self.direction.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let Some(mut entry) = ticket.entry else {
            return;
        };
        entry.status = status;
        let log = self.log.clone();
        let logged = ticket.logged;
        let done = move |entry: DecisionEntry| {
            if crate::proxy::tap::active() {
                crate::proxy::tap::publish(tap_event(&entry));
            }
            if logged {
                log.log(&entry);
            }
        };
        match ticket.explain {
            Some((set, input, secrets)) => {
                let query = self.query;
                let explain = move || {
                    let mut explanation = match set.explain(query, input) {
                        Ok(e) => e.to_json(),
                        Err(e) => serde_json::json!({ "error": e.to_string() }),
                    };
                    // Compared values can quote what log.mask hides.
                    DecisionLog::scrub(&mut explanation, &secrets);
                    explanation
                };
                self.log.explain_then(entry, explain, done);
            }
            None => done(entry),
        }
    }
}

/// A decision as the tap streams it.
fn tap_event(e: &DecisionEntry) -> crate::proxy::tap::TapEvent {
    crate::proxy::tap::TapEvent {
        time: e.time.clone(),
        decision_id: e.decision_id.clone(),
        direction: e.direction,
        principal: if e.direction == Direction::Outbound {
            e.destination_principal.clone()
        } else {
            e.source_principal.clone()
        },
        method: e.method.clone(),
        path: e.path.clone(),
        decision: e.decision,
        status: e.status,
        reason: e.reason.clone(),
        explanation: e.explanation.clone(),
    }
}
