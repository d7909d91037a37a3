//! Decision logs: one JSON line per decision, written off the request path.
//!
//! Entries go through an unbounded channel to a writer task (stdout or a file), so
//! a slow disk never stalls a request. Secrets are masked before an entry is queued:
//! `authorization`, `cookie`, `proxy-authorization` and configured header names.
//! Allowed decisions can be sampled; denies are always logged.

use std::io::Write;
use std::path::PathBuf;

use http::HeaderMap;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::direction::Direction;

const MASK: &str = "***";
const ALWAYS_MASKED: &[&str] = &[
    "authorization",
    "cookie",
    "proxy-authorization",
    "set-cookie",
];

/// One decision, as logged.
#[derive(Debug, Serialize)]
pub struct DecisionEntry {
    pub decision_id: String,
    pub time: String,
    pub direction: Direction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_principal: Option<String>,
    pub source_address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_principal: Option<String>,
    pub destination_address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `allow`, `deny` or `dry_run_deny`.
    pub decision: &'static str,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub policy_revision: String,
    pub eval_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<serde_json::Map<String, serde_json::Value>>,
    /// The policy input document, masked (`log.input`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// The policy explanation (`log.explain`), filled in off the request path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<serde_json::Value>,
}

/// Query parameters whose values are always masked in the logged path: the
/// conventional token parameters (RFC 6750 §2.3 and common API-key names).
const ALWAYS_MASKED_QUERY: &[&str] = &["access_token", "id_token", "api_key", "apikey"];

/// Explanations computed at once by one sidecar, at most (each holds a
/// blocking thread).
pub const MAX_EXPLAINING: usize = 2;

/// Where decision logs go and what they hide.
#[derive(Clone)]
pub struct DecisionLog {
    tx: Option<mpsc::UnboundedSender<String>>,
    /// Lower-case names masked as headers and as query parameters.
    masked: std::sync::Arc<Vec<String>>,
    sample_allows: f64,
    explain: crate::config::ExplainLogging,
    input: crate::config::InputLogging,
    /// Explanations in progress, shared by every clone of this log.
    explaining: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl DecisionLog {
    /// A log that drops everything.
    pub fn disabled() -> Self {
        // Still masks what is always masked: the tap shows paths without a log.
        let masked = ALWAYS_MASKED
            .iter()
            .chain(ALWAYS_MASKED_QUERY)
            .map(|s| s.to_string())
            .collect();
        DecisionLog {
            tx: None,
            masked: std::sync::Arc::new(masked),
            sample_allows: 0.0,
            explain: crate::config::ExplainLogging::Off,
            input: crate::config::InputLogging::Off,
            explaining: Default::default(),
        }
    }

    /// Starts the writer task. `file: None` writes to stdout.
    pub fn start(
        file: Option<PathBuf>,
        mask: &[String],
        sample_allows: f64,
    ) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = match &file {
            Some(p) => Box::new(std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            )),
            None => Box::new(std::io::BufWriter::new(std::io::stdout())),
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || {
                while let Some(line) = rx.blocking_recv() {
                    let _ = out.write_all(line.as_bytes());
                    let _ = out.write_all(b"\n");
                    // Flush when the queue is drained: batches under load, prompt when idle.
                    if rx.is_empty() {
                        let _ = out.flush();
                    }
                }
                let _ = out.flush();
            })?;
        let mut masked: Vec<String> = mask.iter().map(|m| m.to_ascii_lowercase()).collect();
        masked.extend(ALWAYS_MASKED.iter().map(|s| s.to_string()));
        masked.extend(ALWAYS_MASKED_QUERY.iter().map(|s| s.to_string()));
        Ok(DecisionLog {
            tx: Some(tx),
            masked: std::sync::Arc::new(masked),
            sample_allows,
            explain: crate::config::ExplainLogging::Off,
            input: crate::config::InputLogging::Off,
            explaining: Default::default(),
        })
    }

    /// Sets which entries carry a policy explanation (`log.explain`).
    pub fn with_explain(mut self, explain: crate::config::ExplainLogging) -> Self {
        self.explain = explain;
        self
    }

    /// Sets which entries carry the input document (`log.input`).
    pub fn with_input(mut self, input: crate::config::InputLogging) -> Self {
        self.input = input;
        self
    }

    /// Whether an entry with this decision label carries the input document.
    pub fn logs_input(&self, label: &str) -> bool {
        use crate::config::InputLogging;
        match self.input {
            InputLogging::Off => false,
            InputLogging::Denies => label != "allow",
            InputLogging::All => true,
        }
    }

    /// The input document with what `log.mask` names hidden: request header
    /// values, query parameter values in `path` and `parsed_query`.
    pub fn masked_input(&self, mut input: serde_json::Value) -> serde_json::Value {
        let http = input
            .pointer_mut("/attributes/request/http")
            .and_then(|h| h.as_object_mut());
        if let Some(http) = http {
            if let Some(headers) = http.get_mut("headers").and_then(|h| h.as_object_mut()) {
                for (name, value) in headers.iter_mut() {
                    if self.masked.iter().any(|m| m.eq_ignore_ascii_case(name)) {
                        *value = serde_json::Value::String(MASK.to_owned());
                    } else if let (":path", serde_json::Value::String(path)) =
                        (name.as_str(), &mut *value)
                    {
                        // The pseudo-header carries the query too.
                        *path = self.masked_path(path);
                    }
                }
            }
            if let Some(serde_json::Value::String(path)) = http.get_mut("path") {
                *path = self.masked_path(path);
            }
        }
        if let Some(query) = input
            .get_mut("parsed_query")
            .and_then(|q| q.as_object_mut())
        {
            for (name, values) in query.iter_mut() {
                if self.masked.iter().any(|m| m.eq_ignore_ascii_case(name)) {
                    *values = serde_json::json!([MASK]);
                }
            }
        }
        input
    }

    /// The values `log.mask` hides in this request (masked header values and
    /// query parameter values), to scrub from text derived from the input, such as
    /// an explanation's compared values.
    pub fn secret_values(&self, headers: &HeaderMap, path: &str) -> Vec<String> {
        let mut out = Vec::new();
        for name in headers.keys() {
            if self.masked.iter().any(|m| m == name.as_str()) {
                for v in headers.get_all(name) {
                    out.push(String::from_utf8_lossy(v.as_bytes()).into_owned());
                }
            }
        }
        if let Some((_, q)) = path.split_once('?') {
            for pair in q.split('&') {
                if let Some((k, v)) = pair.split_once('=') {
                    if self.masked.iter().any(|m| m.eq_ignore_ascii_case(k)) {
                        out.push(v.to_owned());
                    }
                }
            }
        }
        // Also what follows an authorization scheme ("Bearer <token>"): the token
        // may be compared alone.
        let parts: Vec<String> = out
            .iter()
            .flat_map(|v| v.split_whitespace().skip(1).map(str::to_owned))
            .collect();
        out.extend(parts);
        out.retain(|v| v.len() >= 4);
        out.sort_by_key(|v| std::cmp::Reverse(v.len()));
        out.dedup();
        out
    }

    /// Replaces every occurrence of `secrets` in the strings of `value`.
    pub fn scrub(value: &mut serde_json::Value, secrets: &[String]) {
        match value {
            serde_json::Value::String(s) => {
                for secret in secrets {
                    if s.contains(secret.as_str()) {
                        *s = s.replace(secret.as_str(), MASK);
                    }
                }
            }
            serde_json::Value::Array(items) => {
                items.iter_mut().for_each(|v| Self::scrub(v, secrets))
            }
            serde_json::Value::Object(map) => {
                map.values_mut().for_each(|v| Self::scrub(v, secrets))
            }
            _ => {}
        }
    }

    /// Whether an entry with this decision label gets an explanation.
    pub fn explains(&self, label: &str) -> bool {
        use crate::config::ExplainLogging;
        match self.explain {
            ExplainLogging::Off => false,
            ExplainLogging::Denies => label != "allow",
            ExplainLogging::All => true,
        }
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Whether an allowed decision should be logged (sampling); denies always are.
    pub fn wants(&self, allowed: bool) -> bool {
        if self.tx.is_none() {
            return false;
        }
        if !allowed || self.sample_allows >= 1.0 {
            return true;
        }
        let mut b = [0u8; 4];
        if aws_lc_rs::rand::fill(&mut b).is_err() {
            return true;
        }
        (u32::from_le_bytes(b) as f64 / u32::MAX as f64) < self.sample_allows
    }

    /// Headers as a JSON object with secrets masked.
    pub fn masked_headers(
        &self,
        headers: &HeaderMap,
    ) -> serde_json::Map<String, serde_json::Value> {
        let mut map = serde_json::Map::new();
        for name in headers.keys() {
            let key = name.as_str();
            let value = if self.masked.iter().any(|m| m == key) {
                MASK.to_owned()
            } else {
                headers
                    .get_all(name)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            map.insert(key.to_owned(), serde_json::Value::String(value));
        }
        map
    }

    /// The path-and-query with the values of masked query parameters replaced
    /// (names compared case-insensitively, as written on the wire).
    pub fn masked_path(&self, path: &str) -> String {
        let Some((p, q)) = path.split_once('?') else {
            return path.to_owned();
        };
        let mut out = String::with_capacity(path.len());
        out.push_str(p);
        out.push('?');
        for (i, pair) in q.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((k, _)) if self.masked.iter().any(|m| m.eq_ignore_ascii_case(k)) => {
                    out.push_str(k);
                    out.push('=');
                    out.push_str(MASK);
                }
                _ => out.push_str(pair),
            }
        }
        out
    }

    /// Fills in `entry`'s explanation with `explain` on a blocking thread, so the
    /// request never waits, then hands it to `done`. At most [`MAX_EXPLAINING`]
    /// explanations run at once; past that the entry says it was skipped.
    pub fn explain_then(
        &self,
        mut entry: DecisionEntry,
        explain: impl FnOnce() -> serde_json::Value + Send + 'static,
        done: impl FnOnce(DecisionEntry) + Send + 'static,
    ) {
        use std::sync::atomic::Ordering;
        /// Gives the slot back however the explanation ends (a panic included).
        struct Slot(std::sync::Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Slot {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let slot = Slot(self.explaining.clone());
        let busy = slot.0.fetch_add(1, Ordering::AcqRel) >= MAX_EXPLAINING;
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if !busy => {
                handle.spawn_blocking(move || {
                    let explanation = {
                        let _slot = slot;
                        explain()
                    };
                    entry.explanation = Some(explanation);
                    done(entry);
                });
            }
            _ => {
                drop(slot);
                entry.explanation =
                    Some(serde_json::json!({"skipped": "too many explanations in progress"}));
                done(entry);
            }
        }
    }

    /// Queues an entry; never blocks.
    pub fn log(&self, entry: &DecisionEntry) {
        if let Some(tx) = &self.tx {
            match serde_json::to_string(entry) {
                Ok(line) => {
                    let _ = tx.send(line);
                }
                Err(e) => tracing::error!(error = %e, "decision log entry not serialisable"),
            }
        }
    }
}

/// RFC 3339 time with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&fmt)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_masked() {
        let log = DecisionLog {
            tx: None,
            masked: std::sync::Arc::new(vec!["authorization".into(), "x-api-key".into()]),
            sample_allows: 1.0,
            explain: crate::config::ExplainLogging::Off,
            input: crate::config::InputLogging::Off,
            explaining: Default::default(),
        };
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer secret".parse().unwrap());
        h.insert("x-api-key", "k".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        let m = log.masked_headers(&h);
        assert_eq!(m["authorization"], "***");
        assert_eq!(m["x-api-key"], "***");
        assert_eq!(m["accept"], "*/*");
    }

    #[test]
    fn query_secrets_masked_in_the_path() {
        let log = DecisionLog {
            tx: None,
            masked: std::sync::Arc::new(vec!["access_token".into(), "sig".into()]),
            sample_allows: 1.0,
            explain: crate::config::ExplainLogging::Off,
            input: crate::config::InputLogging::Off,
            explaining: Default::default(),
        };
        assert_eq!(log.masked_path("/a/b"), "/a/b");
        assert_eq!(
            log.masked_path("/a?x=1&Access_Token=eyJ.x.y&sig=abc&flag&sig"),
            "/a?x=1&Access_Token=***&sig=***&flag&sig"
        );
        assert_eq!(log.masked_path("/a?"), "/a?");
    }

    #[test]
    fn jwt_token_locations_are_masked_too() {
        let cfg = crate::config::Config::from_yaml_str(
            "log: {mask: [x-secret]}\njwt:\n  providers:\n    - {name: a, issuer: x, jwks: {file: /j}, from: [{header: x-token}, {query: tok}, {cookie: s}]}\n",
            "t.yaml",
        )
        .unwrap();
        let names = cfg.log.masked_names(&cfg.jwt);
        assert_eq!(names, ["x-secret", "x-token", "tok"]);
    }

    #[test]
    fn time_format() {
        let t = now_rfc3339();
        assert!(t.ends_with('Z') && t.len() == 24, "{t}");
    }
}
