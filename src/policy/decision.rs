//! The decision result: turning the value a Rego query produced into an
//! allow/deny [`Decision`], with OPA-Envoy semantics.
//!
//! The configured query yields either a boolean or an object shaped like the
//! OPA-Envoy plugin's result: `allowed` (required boolean), `headers`,
//! `response_headers_to_add`, `request_headers_to_remove`, `http_status` and
//! `body`. portcullis also reads an optional `reason` string for its decision
//! log. Anything else is a [`DecisionError::WrongShape`], which callers treat as
//! a deny (fail closed).

use regorus::Value;

/// An evaluated, well-formed policy decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request (or connection) may proceed.
    pub allowed: bool,
    /// Headers added to (or replacing those in) the upstream request when allowed;
    /// on a denied request OPA-Envoy adds them to the local reply.
    pub headers: Vec<(String, String)>,
    /// Headers added to the response sent back to the client.
    pub response_headers_to_add: Vec<(String, String)>,
    /// Header names removed from the upstream request.
    pub request_headers_to_remove: Vec<String>,
    /// Status for a denied response (100..=599); callers default to 403.
    pub http_status: Option<u16>,
    /// Body for a denied response.
    pub body: Option<String>,
    /// gRPC status (1..=16) for a denied gRPC request; by default it is mapped from
    /// the HTTP status.
    pub grpc_status: Option<u8>,
    /// Human-readable reason for the decision log: the result's `reason` field
    /// if present, else `body` when the request is denied.
    pub reason: Option<String>,
}

impl Decision {
    /// A plain allow without extra headers.
    pub fn allow() -> Self {
        Decision {
            allowed: true,
            ..Decision::default()
        }
    }

    /// A plain deny without extra headers.
    pub fn deny() -> Self {
        Decision::default()
    }
}

/// Why no well-formed decision was produced. Every variant means deny.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    /// The query evaluated to undefined (no rule matched and no default).
    #[error("policy decision is undefined")]
    Undefined,
    /// Evaluation failed (conflicting rule values, builtin errors, …).
    #[error("policy evaluation failed: {0}")]
    Eval(String),
    /// The result is not a boolean or a well-formed OPA-Envoy result object.
    #[error("policy result has the wrong shape: {0}")]
    WrongShape(String),
    /// Evaluation exceeded its time or instruction budget.
    #[error("policy evaluation exceeded its time or instruction limit")]
    Timeout,
    /// No policy is loaded for this query.
    #[error("no policy loaded")]
    NoPolicy,
}

impl DecisionError {
    /// Stable, low-cardinality label for metrics and decision logs.
    pub fn reason(&self) -> &'static str {
        match self {
            DecisionError::Undefined => "undefined",
            DecisionError::Eval(_) => "error",
            DecisionError::WrongShape(_) => "wrong_shape",
            DecisionError::Timeout => "timeout",
            DecisionError::NoPolicy => "no_policy",
        }
    }
}

/// Rego's name for the type of `v`, as OPA's messages print it.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Set(_) => "set",
        Value::Object(_) => "object",
        Value::Undefined => "undefined",
    }
}

fn wrong(msg: String) -> DecisionError {
    DecisionError::WrongShape(msg)
}

/// Converts a query result into a [`Decision`], OPA-Envoy style.
///
/// `true`/`false` → allow/deny; an object needs a boolean `allowed`. Unknown
/// object keys are ignored (OPA-Envoy ignores them too); known keys of the
/// wrong type, invalid header names or values (CR/LF, non-token names), an
/// `http_status` outside 100..=599, or any other result type are
/// [`DecisionError::WrongShape`]. `Value::Undefined` is [`DecisionError::Undefined`].
pub fn decision_from_value(v: &Value) -> Result<Decision, DecisionError> {
    let obj = match v {
        Value::Undefined => return Err(DecisionError::Undefined),
        Value::Bool(b) => {
            return Ok(Decision {
                allowed: *b,
                ..Decision::default()
            })
        }
        Value::Object(o) => o,
        other => {
            return Err(wrong(format!(
                "expected a boolean or an object with `allowed`, got a {}",
                type_name(other)
            )))
        }
    };

    let mut d = Decision::default();
    match obj.get(&Value::from("allowed")) {
        Some(Value::Bool(b)) => d.allowed = *b,
        Some(other) => {
            return Err(wrong(format!(
                "`allowed` must be a boolean, got a {}",
                type_name(other)
            )))
        }
        None => return Err(wrong("result object has no `allowed` field".to_string())),
    }
    if let Some(h) = obj.get(&Value::from("headers")) {
        d.headers = header_map(h, "headers")?;
    }
    if let Some(h) = obj.get(&Value::from("response_headers_to_add")) {
        d.response_headers_to_add = header_map(h, "response_headers_to_add")?;
    }
    if let Some(h) = obj.get(&Value::from("request_headers_to_remove")) {
        d.request_headers_to_remove = header_names(h, "request_headers_to_remove")?;
    }
    if let Some(s) = obj.get(&Value::from("http_status")) {
        d.http_status = Some(status(s)?);
    }
    if let Some(g) = obj.get(&Value::from("grpc_status")) {
        d.grpc_status = Some(match g {
            Value::Number(n)
                if n.is_integer() && n.as_u64().is_some_and(|c| (1..=16).contains(&c)) =>
            {
                n.as_u64().and_then(|c| u8::try_from(c).ok()).unwrap_or(2)
            }
            other => {
                return Err(wrong(format!(
                "`grpc_status` must be an integer in 1..=16 (a refusal is never OK), got {other}"
            )))
            }
        });
    }
    if let Some(b) = obj.get(&Value::from("body")) {
        match b {
            Value::String(s) => d.body = Some(s.to_string()),
            other => {
                return Err(wrong(format!(
                    "`body` must be a string, got a {}",
                    type_name(other)
                )))
            }
        }
    }
    match obj.get(&Value::from("reason")) {
        Some(Value::String(s)) => d.reason = Some(s.to_string()),
        Some(other) => {
            return Err(wrong(format!(
                "`reason` must be a string, got a {}",
                type_name(other)
            )))
        }
        None if !d.allowed => d.reason = d.body.clone(),
        None => {}
    }
    Ok(d)
}

fn status(v: &Value) -> Result<u16, DecisionError> {
    let Value::Number(n) = v else {
        return Err(wrong(format!(
            "`http_status` must be an integer, got a {}",
            type_name(v)
        )));
    };
    match n.as_u64() {
        Some(code @ 100..=599) if n.is_integer() => {
            u16::try_from(code).map_err(|_| wrong("`http_status` out of range".to_string()))
        }
        _ => Err(wrong(format!(
            "`http_status` must be an integer in 100..=599, got {v}"
        ))),
    }
}

fn header_map(v: &Value, field: &str) -> Result<Vec<(String, String)>, DecisionError> {
    let Value::Object(o) = v else {
        return Err(wrong(format!(
            "`{field}` must be an object, got a {}",
            type_name(v)
        )));
    };
    let mut out = Vec::with_capacity(o.len());
    for (k, val) in o.iter() {
        let Value::String(name) = k else {
            return Err(wrong(format!("`{field}` keys must be strings")));
        };
        check_name(name, field)?;
        match val {
            Value::String(s) => {
                check_value(s, field, name)?;
                out.push((name.to_string(), s.to_string()));
            }
            Value::Array(items) => {
                for item in items.iter() {
                    let Value::String(s) = item else {
                        return Err(wrong(format!(
                            "`{field}.{name}` must be a string or an array of strings"
                        )));
                    };
                    check_value(s, field, name)?;
                    out.push((name.to_string(), s.to_string()));
                }
            }
            other => {
                return Err(wrong(format!(
                    "`{field}.{name}` must be a string or an array of strings, got a {}",
                    type_name(other)
                )))
            }
        }
    }
    Ok(out)
}

fn header_names(v: &Value, field: &str) -> Result<Vec<String>, DecisionError> {
    let items: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        Value::Set(s) => s.iter().collect(),
        other => {
            return Err(wrong(format!(
                "`{field}` must be an array of strings, got a {}",
                type_name(other)
            )))
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(name) = item else {
            return Err(wrong(format!("`{field}` must be an array of strings")));
        };
        check_name(name, field)?;
        out.push(name.to_string());
    }
    Ok(out)
}

fn check_name(name: &str, field: &str) -> Result<(), DecisionError> {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(wrong(format!(
            "`{field}` has an invalid header name {name:?}"
        )));
    }
    Ok(())
}

fn check_value(value: &str, field: &str, name: &str) -> Result<(), DecisionError> {
    // `from_bytes` accepts obs-text (non-ASCII) but rejects CR, LF, NUL and
    // other control characters, which could otherwise split headers.
    if http::HeaderValue::from_bytes(value.as_bytes()).is_err() {
        return Err(wrong(format!(
            "`{field}.{name}` has an invalid header value"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(json: &str) -> Value {
        match Value::from_json_str(json) {
            Ok(v) => v,
            Err(e) => panic!("bad test json {json}: {e}"),
        }
    }

    #[test]
    fn booleans() {
        assert_eq!(
            decision_from_value(&Value::Bool(true)),
            Ok(Decision::allow())
        );
        assert_eq!(
            decision_from_value(&Value::Bool(false)),
            Ok(Decision::deny())
        );
        assert_eq!(
            decision_from_value(&Value::Undefined),
            Err(DecisionError::Undefined)
        );
    }

    #[test]
    fn full_object() {
        let d = decision_from_value(&v(
            r#"{"allowed": false, "headers": {"x-a": "1", "x-b": ["2", "3"]},
            "response_headers_to_add": {"x-r": "r"}, "request_headers_to_remove": ["cookie"],
            "http_status": 401, "body": "go away", "extra": 1}"#,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!d.allowed);
        assert_eq!(
            d.headers,
            vec![
                ("x-a".to_string(), "1".to_string()),
                ("x-b".to_string(), "2".to_string()),
                ("x-b".to_string(), "3".to_string())
            ]
        );
        assert_eq!(d.response_headers_to_add, vec![("x-r".into(), "r".into())]);
        assert_eq!(d.request_headers_to_remove, vec!["cookie".to_string()]);
        assert_eq!(d.http_status, Some(401));
        assert_eq!(d.body.as_deref(), Some("go away"));
        assert_eq!(d.reason.as_deref(), Some("go away"));

        let d = decision_from_value(&v(r#"{"allowed": false, "body": "b", "reason": "r"}"#))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.reason.as_deref(), Some("r"));
        let d = decision_from_value(&v(r#"{"allowed": true, "body": "b"}"#))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.reason, None);
    }

    #[test]
    fn wrong_shapes() {
        for bad in [
            r#""yes""#,
            "1",
            "null",
            "[true]",
            r#"{}"#,
            r#"{"allowed": "true"}"#,
            r#"{"allowed": true, "headers": ["a"]}"#,
            r#"{"allowed": true, "headers": {"a": 1}}"#,
            r#"{"allowed": true, "headers": {"a b": "1"}}"#,
            r#"{"allowed": true, "headers": {"x": "a\r\nSet-Cookie: evil"}}"#,
            r#"{"allowed": true, "headers": {"x": ["ok", "a\nb"]}}"#,
            r#"{"allowed": true, "response_headers_to_add": {"x": "\n"}}"#,
            r#"{"allowed": true, "request_headers_to_remove": "cookie"}"#,
            r#"{"allowed": true, "request_headers_to_remove": ["bad\nname"]}"#,
            r#"{"allowed": false, "http_status": 99}"#,
            r#"{"allowed": false, "http_status": 600}"#,
            r#"{"allowed": false, "http_status": 403.5}"#,
            r#"{"allowed": false, "http_status": "403"}"#,
            r#"{"allowed": false, "body": 1}"#,
            r#"{"allowed": false, "reason": 1}"#,
        ] {
            match decision_from_value(&v(bad)) {
                Err(e @ DecisionError::WrongShape(_)) => assert_eq!(e.reason(), "wrong_shape"),
                other => panic!("{bad}: expected WrongShape, got {other:?}"),
            }
        }
        let set = Value::from(std::collections::BTreeSet::from([Value::Bool(true)]));
        assert!(matches!(
            decision_from_value(&set),
            Err(DecisionError::WrongShape(_))
        ));
    }

    #[test]
    fn reason_labels() {
        assert_eq!(DecisionError::Undefined.reason(), "undefined");
        assert_eq!(DecisionError::Eval(String::new()).reason(), "error");
        assert_eq!(DecisionError::Timeout.reason(), "timeout");
        assert_eq!(DecisionError::NoPolicy.reason(), "no_policy");
    }
}
