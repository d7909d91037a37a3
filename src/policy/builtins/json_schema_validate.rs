//! Checking a document against a schema read by [`super::json_schema_parse`], walking
//! it in gojsonschema's order and keeping its score, which decides whose errors
//! `anyOf`, `oneOf` and `contains` report (the closest branch's).

use regex::Regex;
use regorus::Value;

use super::json_schema_parse::{Additional, Compiled, Dependency, Items, Node, Schema};
use super::json_schema_values::{go_json, Dec, SchemaError, UNSUPPORTED_FORMATS};

/// One error of `json.match_schema`'s list.
pub(super) struct Issue {
    pub kind: &'static str,
    pub field: String,
    pub desc: String,
}

/// Errors and gojsonschema's score (higher: closer to valid).
#[derive(Default)]
struct Outcome {
    issues: Vec<Issue>,
    score: i64,
}

impl Outcome {
    fn valid(&self) -> bool {
        self.issues.is_empty()
    }

    fn merge(&mut self, other: Outcome) {
        self.issues.extend(other.issues);
        self.score += other.score;
    }
}

type Checked = Result<(), SchemaError>;

/// Nesting beyond this (a `$ref` cycle that consumes nothing) is an error rather
/// than a stack overflow.
const MAX_DEPTH: usize = 512;

struct Walker<'a> {
    compiled: &'a Compiled,
    path: Vec<String>,
    depth: usize,
}

/// The errors of `document` against `schema`, in gojsonschema's order.
pub(super) fn validate(schema: &Compiled, document: &Value) -> Result<Vec<Issue>, SchemaError> {
    let mut w = Walker {
        compiled: schema,
        path: Vec::new(),
        depth: 0,
    };
    let mut out = Outcome::default();
    w.recursive(&schema.root, document, &mut out)?;
    Ok(out.issues)
}

fn number_of(v: &Value) -> Result<Option<Dec>, SchemaError> {
    match v {
        Value::Number(_) => Dec::from_number(v).map(Some),
        _ => Ok(None),
    }
}

impl<'a> Walker<'a> {
    fn field(&self) -> String {
        if self.path.is_empty() {
            "(Root)".to_string()
        } else {
            self.path.join(".")
        }
    }

    fn add(&self, out: &mut Outcome, kind: &'static str, desc: String) {
        out.issues.push(Issue {
            kind,
            field: self.field(),
            desc,
        });
        out.score -= 2;
    }

    /// Validates in a fresh outcome, at `step` below the current path if given.
    fn sub(
        &mut self,
        s: &'a Schema,
        v: &Value,
        step: Option<String>,
    ) -> Result<Outcome, SchemaError> {
        let mut out = Outcome::default();
        let pushed = step.is_some();
        if let Some(step) = step {
            self.path.push(step);
        }
        let r = self.recursive(s, v, &mut out);
        if pushed {
            self.path.pop();
        }
        r.map(|()| out)
    }

    fn recursive(&mut self, s: &'a Schema, v: &Value, out: &mut Outcome) -> Checked {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(SchemaError::Unsupported(
                "schema or document nested too deeply".into(),
            ));
        }
        let r = self.node(s, v, out);
        self.depth -= 1;
        r
    }

    fn node(&mut self, s: &'a Schema, v: &Value, out: &mut Outcome) -> Checked {
        let n: &'a Node = match s {
            Schema::Bool(true) => return Ok(()),
            Schema::Bool(false) => {
                self.add(out, "false", "False always fails validation".into());
                return Ok(());
            }
            Schema::Node(n) => n,
        };
        if let Some(i) = n.reference {
            let compiled: &'a Compiled = self.compiled;
            return self.recursive(&compiled.refs[i], v, out);
        }
        let number = number_of(v)?;
        let given = match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) if number.as_ref().is_some_and(Dec::is_integer) => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) | Value::Set(_) => "array",
            Value::Object(_) => "object",
            Value::Undefined => return Err(SchemaError::Unsupported("undefined value".into())),
        };
        let accepted = n.types.is_empty()
            || n.types.contains(&given)
            || (given == "integer" && n.types.contains(&"number"));
        if !accepted {
            let expected = if n.types.len() == 1 {
                n.types[0].to_string()
            } else {
                format!("[{}]", n.types.join(","))
            };
            self.add(
                out,
                "invalid_type",
                format!("Invalid type. Expected: {expected}, given: {given}"),
            );
            return Ok(());
        }
        self.schema_keywords(n, v, out)?;
        match v {
            Value::Number(_) => {
                if let Some(d) = &number {
                    self.number(n, d, out)?;
                }
                self.common(n, v, out)?;
            }
            Value::Array(_) | Value::Set(_) => {
                let items: Vec<Value> = match v {
                    Value::Array(a) => a.to_vec(),
                    Value::Set(s) => s.iter().cloned().collect(),
                    _ => Vec::new(),
                };
                self.array(n, &items, out)?;
                self.common(n, v, out)?;
            }
            Value::Object(o) => {
                self.object(n, o, out)?;
                self.common(n, v, out)?;
                for (name, child) in &n.properties {
                    if let Some(x) = o.get(&Value::from(name.as_str())) {
                        self.path.push(name.clone());
                        let r = self.recursive(child, x, out);
                        self.path.pop();
                        r?;
                    }
                }
            }
            Value::String(s) => {
                self.common(n, v, out)?;
                self.string(n, s, out);
            }
            _ => self.common(n, v, out)?,
        }
        out.score += 1;
        Ok(())
    }

    /// `anyOf`, `oneOf`, `allOf`, `not`, `dependencies`, `if`/`then`/`else`.
    fn schema_keywords(&mut self, n: &'a Node, v: &Value, out: &mut Outcome) -> Checked {
        self.combinators(n, v, out)?;
        self.conditions(n, v, out)?;
        out.score += 1;
        Ok(())
    }

    /// `anyOf`, `oneOf` (each reporting its closest branch), `allOf`, `not`.
    fn combinators(&mut self, n: &'a Node, v: &Value, out: &mut Outcome) -> Checked {
        if !n.any_of.is_empty() {
            let mut best: Option<Outcome> = None;
            let mut valid = false;
            for s in &n.any_of {
                let r = self.sub(s, v, None)?;
                if r.valid() {
                    valid = true;
                    break;
                }
                if best.as_ref().is_none_or(|b| r.score > b.score) {
                    best = Some(r);
                }
            }
            if !valid {
                self.add(
                    out,
                    "number_any_of",
                    "Must validate at least one schema (anyOf)".into(),
                );
                if let Some(b) = best {
                    out.merge(b);
                }
            }
        }
        if !n.one_of.is_empty() {
            let mut valid = 0;
            let mut best: Option<Outcome> = None;
            for s in &n.one_of {
                let r = self.sub(s, v, None)?;
                if r.valid() {
                    valid += 1;
                } else if valid == 0 && best.as_ref().is_none_or(|b| r.score > b.score) {
                    best = Some(r);
                }
            }
            if valid != 1 {
                self.add(
                    out,
                    "number_one_of",
                    "Must validate one and only one schema (oneOf)".into(),
                );
                if valid == 0 {
                    if let Some(b) = best {
                        out.merge(b);
                    }
                }
            }
        }
        if !n.all_of.is_empty() {
            let mut valid = 0;
            for s in &n.all_of {
                let r = self.sub(s, v, None)?;
                if r.valid() {
                    valid += 1;
                }
                out.merge(r);
            }
            if valid != n.all_of.len() {
                self.add(
                    out,
                    "number_all_of",
                    "Must validate all the schemas (allOf)".into(),
                );
            }
        }
        if let Some(s) = &n.not {
            if self.sub(s, v, None)?.valid() {
                self.add(
                    out,
                    "number_not",
                    "Must not validate the schema (not)".into(),
                );
            }
        }
        Ok(())
    }

    /// `dependencies` and `if`/`then`/`else`.
    fn conditions(&mut self, n: &'a Node, v: &Value, out: &mut Outcome) -> Checked {
        if let Value::Object(o) = v {
            for (key, dependency) in &n.dependencies {
                if o.get(&Value::from(key.as_str())).is_none() {
                    continue;
                }
                match dependency {
                    Dependency::Names(names) => {
                        for d in names {
                            if o.get(&Value::from(d.as_str())).is_none() {
                                self.add(
                                    out,
                                    "missing_dependency",
                                    format!("Has a dependency on {d}"),
                                );
                            }
                        }
                    }
                    Dependency::Schema(s) => self.recursive(s, v, out)?,
                }
            }
        }
        if let Some(cond) = &n.if_ {
            let matched = self.sub(cond, v, None)?.valid();
            let (branch, kind, desc) = if matched {
                (
                    &n.then,
                    "condition_then",
                    "Must validate \"then\" as \"if\" was valid",
                )
            } else {
                (
                    &n.else_,
                    "condition_else",
                    "Must validate \"else\" as \"if\" was not valid",
                )
            };
            if let Some(s) = branch {
                let r = self.sub(s, v, None)?;
                if !r.valid() {
                    self.add(out, kind, desc.into());
                    out.merge(r);
                }
            }
        }
        Ok(())
    }

    /// `const`, `enum`, `format`.
    fn common(&mut self, n: &Node, v: &Value, out: &mut Outcome) -> Checked {
        if let Some(c) = &n.constant {
            if go_json(v)? != *c {
                let field = self.field();
                self.add(out, "const", format!("{field} does not match: {c}"));
            }
        }
        if let Some(values) = &n.enumeration {
            if !values.contains(&go_json(v)?) {
                let field = self.field();
                self.add(
                    out,
                    "enum",
                    format!(
                        "{field} must be one of the following: {}",
                        values.join(", ")
                    ),
                );
            }
        }
        if let Some(f) = &n.format {
            if !is_format(f, v)? {
                self.add(out, "format", format!("Does not match format '{f}'"));
            }
        }
        out.score += 1;
        Ok(())
    }

    fn array(&mut self, n: &'a Node, items: &[Value], out: &mut Outcome) -> Checked {
        match &n.items {
            Items::None => {}
            Items::Single(s) => {
                for (i, x) in items.iter().enumerate() {
                    let r = self.sub(s, x, Some(i.to_string()))?;
                    out.merge(r);
                }
            }
            Items::Tuple(schemas) if !schemas.is_empty() => {
                for (i, (s, x)) in schemas.iter().zip(items).enumerate() {
                    let r = self.sub(s, x, Some(i.to_string()))?;
                    out.merge(r);
                }
                if schemas.len() < items.len() {
                    match &n.additional_items {
                        None => {}
                        Some(Additional::Deny) => self.add(
                            out,
                            "array_no_additional_items",
                            "No additional items allowed on array".into(),
                        ),
                        Some(Additional::Schema(s)) => {
                            for (i, x) in items.iter().enumerate().skip(schemas.len()) {
                                let r = self.sub(s, x, Some(i.to_string()))?;
                                out.merge(r);
                            }
                        }
                    }
                }
            }
            Items::Tuple(_) => {}
        }
        let len = items.len() as i64;
        if let Some(min) = n.min_items.filter(|m| len < *m) {
            self.add(
                out,
                "array_min_items",
                format!("Array must have at least {min} items"),
            );
        }
        if let Some(max) = n.max_items.filter(|m| len > *m) {
            self.add(
                out,
                "array_max_items",
                format!("Array must have at most {max} items"),
            );
        }
        if n.unique_items {
            let mut seen: std::collections::HashMap<String, usize> = Default::default();
            for (j, x) in items.iter().enumerate() {
                let text = go_json(x)?;
                if let Some(i) = seen.get(&text) {
                    self.add(
                        out,
                        "unique",
                        format!("array items[{i},{j}] must be unique"),
                    );
                }
                seen.insert(text, j);
            }
        }
        if let Some(s) = &n.contains {
            let mut best: Option<Outcome> = None;
            let mut found = false;
            for (i, x) in items.iter().enumerate() {
                let r = self.sub(s, x, Some(i.to_string()))?;
                if r.valid() {
                    found = true;
                    break;
                }
                if best.as_ref().is_none_or(|b| r.score > b.score) {
                    best = Some(r);
                }
            }
            if !found {
                self.add(
                    out,
                    "contains",
                    "At least one of the items must match".into(),
                );
                if let Some(b) = best {
                    out.merge(b);
                }
            }
        }
        out.score += 1;
        Ok(())
    }

    fn object(&mut self, n: &'a Node, o: &regorus::value::Object, out: &mut Outcome) -> Checked {
        let len = o.len() as i64;
        if let Some(min) = n.min_properties.filter(|m| len < *m) {
            self.add(
                out,
                "array_min_properties",
                format!("Must have at least {min} properties"),
            );
        }
        if let Some(max) = n.max_properties.filter(|m| len > *m) {
            self.add(
                out,
                "array_max_properties",
                format!("Must have at most {max} properties"),
            );
        }
        for r in &n.required {
            if o.contains_key(&Value::from(r.as_str())) {
                out.score += 1;
            } else {
                self.add(out, "required", format!("{r} is required"));
            }
        }
        for (k, x) in o.iter() {
            let Value::String(key) = k else {
                return Err(SchemaError::Unsupported(
                    "an object key that is not a string".into(),
                ));
            };
            let described = n.properties.iter().any(|(p, _)| **p == **key);
            let mut matched = false;
            for (re, s) in &n.pattern_properties {
                if re.is_match(key) {
                    matched = true;
                    let r = self.sub(s, x, Some(key.to_string()))?;
                    out.merge(r);
                }
            }
            if matched {
                out.score += 1;
            }
            if described || matched {
                continue;
            }
            match &n.additional_properties {
                None => {}
                Some(Additional::Deny) => self.add(
                    out,
                    "additional_property_not_allowed",
                    format!("Additional property {key} is not allowed"),
                ),
                Some(Additional::Schema(s)) => {
                    let r = self.sub(s, x, Some(key.to_string()))?;
                    out.merge(r);
                }
            }
        }
        if let Some(s) = &n.property_names {
            for k in o.keys() {
                let r = self.sub(s, k, None)?;
                if !r.valid() {
                    let Value::String(key) = k else { continue };
                    self.add(
                        out,
                        "invalid_property_name",
                        format!("Property name of \"{key}\" does not match"),
                    );
                    out.merge(r);
                }
            }
        }
        out.score += 1;
        Ok(())
    }

    fn string(&mut self, n: &Node, s: &str, out: &mut Outcome) {
        let len = s.chars().count() as i64;
        if let Some(min) = n.min_length.filter(|m| len < *m) {
            self.add(
                out,
                "string_gte",
                format!("String length must be greater than or equal to {min}"),
            );
        }
        if let Some(max) = n.max_length.filter(|m| len > *m) {
            self.add(
                out,
                "string_lte",
                format!("String length must be less than or equal to {max}"),
            );
        }
        if let Some((text, re)) = &n.pattern {
            if !re.is_match(s) {
                self.add(out, "pattern", format!("Does not match pattern '{text}'"));
            }
        }
        out.score += 1;
    }

    fn number(&mut self, n: &Node, d: &Dec, out: &mut Outcome) -> Checked {
        use std::cmp::Ordering::{Equal, Greater, Less};
        if let Some(m) = &n.multiple_of {
            if !d.is_multiple_of(m)? {
                self.add(
                    out,
                    "multiple_of",
                    format!("Must be a multiple of {}", m.go_big_float()),
                );
            }
        }
        if let Some(max) = n.maximum.as_ref().filter(|m| d.cmp(m) == Greater) {
            let text = format!("Must be less than or equal to {}", max.go_big_float());
            self.add(out, "number_lte", text);
        }
        if let Some(max) = n.exclusive_maximum.as_ref().filter(|m| d.cmp(m) != Less) {
            self.add(
                out,
                "number_lt",
                format!("Must be less than {}", max.go_big_float()),
            );
        }
        if let Some(min) = n.minimum.as_ref().filter(|m| d.cmp(m) == Less) {
            let text = format!("Must be greater than or equal to {}", min.go_big_float());
            self.add(out, "number_gte", text);
        }
        if let Some(min) = n
            .exclusive_minimum
            .as_ref()
            .filter(|m| matches!(d.cmp(m), Less | Equal))
        {
            self.add(
                out,
                "number_gt",
                format!("Must be greater than {}", min.go_big_float()),
            );
        }
        out.score += 1;
        Ok(())
    }
}

/// gojsonschema's format checkers: values other than strings and formats it does
/// not know pass; [`UNSUPPORTED_FORMATS`] are an error.
fn is_format(format: &str, v: &Value) -> Result<bool, SchemaError> {
    static CHECKS: std::sync::OnceLock<Option<[Regex; 4]>> = std::sync::OnceLock::new();
    let Value::String(s) = v else {
        return Ok(true);
    };
    let checks = CHECKS.get_or_init(|| {
        let label = "[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]{0,61}[a-zA-Z0-9]";
        Some([
            Regex::new("^[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}$").ok()?,
            Regex::new(&format!("^({label})(\\.({label}))*$")).ok()?,
            Regex::new("^(?:/(?:[^~/]|~0|~1)*)*$").ok()?,
            Regex::new("^(?:0|[1-9][0-9]*)(?:#|(?:/(?:[^~/]|~0|~1)*)*)$").ok()?,
        ])
    });
    let Some([uuid, hostname, pointer, relative]) = checks else {
        return Err(SchemaError::Unsupported("format checkers".into()));
    };
    // Go's `net.ParseIP`: dotted quads without leading zeros, IPv6 without a zone.
    let ip = || s.parse::<std::net::IpAddr>().is_ok();
    Ok(match format {
        "uuid" => uuid.is_match(&s.to_lowercase()),
        "ipv4" => ip() && s.contains('.'),
        "ipv6" => ip() && s.contains(':'),
        "hostname" => hostname.is_match(s) && s.len() < 256,
        "json-pointer" => pointer.is_match(s),
        "relative-json-pointer" => relative.is_match(s),
        "date" => is_go_date(s),
        f if UNSUPPORTED_FORMATS.contains(&f) => {
            return Err(SchemaError::Unsupported(format!(
                "the format {f:?} is not supported by portcullis"
            )))
        }
        _ => true,
    })
}

/// Whether Go's `time.Parse("2006-01-02", s)` accepts `s`: four-digit year,
/// two-digit month and day, a day that exists in that month.
fn is_go_date(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 10
        || b[4] != b'-'
        || b[7] != b'-'
        || !digits(0..4)
        || !digits(5..7)
        || !digits(8..10)
    {
        return false;
    }
    let num = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(0);
    let (year, month, day) = (num(0..4), num(5..7), num(8..10));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}
