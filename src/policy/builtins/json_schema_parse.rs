//! Reading a JSON Schema as OPA's copy of gojsonschema does (drafts 6/7, and its
//! "hybrid" mode when `$schema` names no draft): the same checks in the same
//! order and the same messages, which `json.verify_schema` reports.

use std::collections::HashMap;

use regex::Regex;
use regorus::value::Object;
use regorus::Value;

use super::json_schema_values::{
    go_json, go_regex, invalid, invalid_type, unsupported, Dec, Parsed, SchemaError,
};

/// A parsed schema: `true`/`false`, or a node of keywords.
pub(super) enum Schema {
    Bool(bool),
    Node(Box<Node>),
}

/// `additionalProperties` / `additionalItems`: `false` (its own error) or a schema.
pub(super) enum Additional {
    Deny,
    Schema(Schema),
}

pub(super) enum Items {
    None,
    Single(Schema),
    Tuple(Vec<Schema>),
}

pub(super) enum Dependency {
    Names(Vec<String>),
    Schema(Schema),
}

/// The keywords of one schema object that gojsonschema validates with.
pub(super) struct Node {
    /// `$ref`: an index into [`Compiled::refs`]; the other keywords are then ignored.
    pub reference: Option<usize>,
    pub types: Vec<&'static str>,
    pub properties: Vec<(String, Schema)>,
    pub additional_properties: Option<Additional>,
    pub pattern_properties: Vec<(Regex, Schema)>,
    pub property_names: Option<Schema>,
    pub dependencies: Vec<(String, Dependency)>,
    pub items: Items,
    pub additional_items: Option<Additional>,
    pub multiple_of: Option<Dec>,
    pub minimum: Option<Dec>,
    pub exclusive_minimum: Option<Dec>,
    pub maximum: Option<Dec>,
    pub exclusive_maximum: Option<Dec>,
    pub min_length: Option<i64>,
    pub max_length: Option<i64>,
    pub pattern: Option<(String, Regex)>,
    pub format: Option<String>,
    pub min_properties: Option<i64>,
    pub max_properties: Option<i64>,
    pub required: Vec<String>,
    pub min_items: Option<i64>,
    pub max_items: Option<i64>,
    pub unique_items: bool,
    pub contains: Option<Schema>,
    /// `const` and `enum` values as Go's JSON encoder writes them.
    pub constant: Option<String>,
    pub enumeration: Option<Vec<String>>,
    pub one_of: Vec<Schema>,
    pub any_of: Vec<Schema>,
    pub all_of: Vec<Schema>,
    pub not: Option<Schema>,
    pub if_: Option<Schema>,
    pub then: Option<Schema>,
    pub else_: Option<Schema>,
}

impl Node {
    fn new() -> Self {
        Node {
            reference: None,
            types: Vec::new(),
            properties: Vec::new(),
            additional_properties: None,
            pattern_properties: Vec::new(),
            property_names: None,
            dependencies: Vec::new(),
            items: Items::None,
            additional_items: None,
            multiple_of: None,
            minimum: None,
            exclusive_minimum: None,
            maximum: None,
            exclusive_maximum: None,
            min_length: None,
            max_length: None,
            pattern: None,
            format: None,
            min_properties: None,
            max_properties: None,
            required: Vec::new(),
            min_items: None,
            max_items: None,
            unique_items: false,
            contains: None,
            constant: None,
            enumeration: None,
            one_of: Vec::new(),
            any_of: Vec::new(),
            all_of: Vec::new(),
            not: None,
            if_: None,
            then: None,
            else_: None,
        }
    }
}

/// A schema with the targets of its `$ref`s.
pub(super) struct Compiled {
    pub root: Schema,
    pub refs: Vec<Schema>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Draft {
    Draft6,
    Draft7,
    /// No (or an unknown) `$schema`: every draft's keywords, either form.
    Hybrid,
}

struct Parser<'a> {
    root: &'a Value,
    draft: Draft,
    pool: HashMap<String, usize>,
    refs: Vec<Schema>,
    /// The root's `$id`/`id` without its fragment: `$ref`s may name the root by it.
    root_id: Option<String>,
    /// An `$id`/`id` below the root that changes the base of `$ref`s.
    saw_id: bool,
    saw_ref: bool,
}

/// The `$id` (or, without `$schema`, `id`) of a schema object.
fn schema_id(m: &Object, draft: Draft) -> Parsed<Option<&str>> {
    let key = if draft == Draft::Hybrid && get(m, "id").is_some() {
        "id"
    } else {
        "$id"
    };
    get_string(m, key)
}

fn get<'v>(m: &'v Object, key: &str) -> Option<&'v Value> {
    m.get(&Value::from(key))
}

fn get_string<'v>(m: &'v Object, key: &str) -> Parsed<Option<&'v str>> {
    match get(m, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => invalid_type("string", key),
    }
}

fn get_slice<'v>(m: &'v Object, key: &str) -> Parsed<Vec<&'v Value>> {
    match get(m, key) {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => Ok(a.iter().collect()),
        Some(_) => invalid(format!("{key} must be of an array")),
    }
}

/// A non-negative integer keyword (`minLength`, `maxItems`, ...).
fn get_count(m: &Object, key: &str) -> Parsed<Option<i64>> {
    let Some(v) = get(m, key) else {
        return Ok(None);
    };
    let n = match v {
        Value::Number(n) if n.is_integer() => n.as_i64(),
        _ => None,
    };
    match n {
        None => invalid(format!("{key} must be of an integer")),
        Some(n) if n < 0 => invalid(format!("{key} must be greater than or equal to 0")),
        Some(n) => Ok(Some(n)),
    }
}

fn is_schema(v: &Value) -> bool {
    matches!(v, Value::Bool(_) | Value::Object(_))
}

/// Reads `schema` as gojsonschema does.
pub(super) fn compile(schema: &Value) -> Parsed<Compiled> {
    if !is_schema(schema) {
        // OPA checks the root itself before gojsonschema reads it.
        return invalid("schema is invalid");
    }
    let mut draft = Draft::Hybrid;
    if let Value::Object(m) = schema {
        match get_string(m, "$schema") {
            Err(_) => return invalid("$schema must be of type string"),
            Ok(Some(url)) => {
                let url = url.trim_end_matches('#');
                let url = url
                    .strip_prefix("https://")
                    .or_else(|| url.strip_prefix("http://"));
                match url {
                    Some("json-schema.org/draft-04/schema") => {
                        return unsupported("$schema draft-04 is not supported by portcullis")
                    }
                    Some("json-schema.org/draft-06/schema") => draft = Draft::Draft6,
                    Some("json-schema.org/draft-07/schema") => draft = Draft::Draft7,
                    _ => {}
                }
            }
            Ok(None) => {}
        }
    }
    let mut p = Parser {
        root: schema,
        draft,
        pool: HashMap::new(),
        refs: Vec::new(),
        root_id: None,
        saw_id: false,
        saw_ref: false,
    };
    if let Value::Object(m) = schema {
        p.root_id = schema_id(m, draft)?.map(|id| id.split('#').next().unwrap_or("").to_string());
    }
    let root = p.parse(schema)?;
    if p.saw_id && p.saw_ref {
        return unsupported(
            "$ref in a schema with $id/id below its root is not supported by portcullis",
        );
    }
    Ok(Compiled { root, refs: p.refs })
}

impl<'a> Parser<'a> {
    fn parse(&mut self, doc: &Value) -> Parsed<Schema> {
        if let Value::Bool(b) = doc {
            return Ok(Schema::Bool(*b));
        }
        let Value::Object(m) = doc else {
            return invalid("Expected: Valid Schema, given: Invalid JSON");
        };
        let mut n = Node::new();
        if let Some(id) = schema_id(m, self.draft)? {
            if !std::ptr::eq(doc, self.root) && !id.starts_with('#') {
                self.saw_id = true;
            }
        }
        if let Some(defs) = get(m, "definitions") {
            let Value::Object(defs) = defs else {
                return invalid_type("Array Of Schemas", "definitions");
            };
            for d in defs.values() {
                if !is_schema(d) {
                    return invalid_type("Array Of Schemas", "definitions");
                }
                self.parse(d)?;
            }
        }
        get_string(m, "title")?;
        get_string(m, "description")?;
        if let Some(r) = get_string(m, "$ref")? {
            self.saw_ref = true;
            if let Some(&i) = self.pool.get(r) {
                n.reference = Some(i);
            } else {
                n.reference = Some(self.resolve(r)?);
                return Ok(Schema::Node(Box::new(n)));
            }
        }
        self.parse_structure(m, &mut n)?;
        self.parse_numbers(m, &mut n)?;
        Self::parse_strings_and_counts(m, &mut n)?;
        self.parse_combinators(m, &mut n)?;
        Ok(Schema::Node(Box::new(n)))
    }

    /// The target of a local `$ref` (`#`, `#/definitions/x`, any JSON pointer).
    fn resolve(&mut self, r: &str) -> Parsed<usize> {
        let in_root = match &self.root_id {
            Some(id) if !id.is_empty() => r.strip_prefix(id.as_str()),
            _ => None,
        };
        let Some(pointer) = in_root.unwrap_or(r).strip_prefix('#') else {
            return unsupported(format!(
                "$ref {r:?} to another document is not supported by portcullis"
            ));
        };
        let index = self.refs.len();
        self.refs.push(Schema::Bool(true));
        self.pool.insert(r.to_string(), index);
        let mut target: &'a Value = self.root;
        if !pointer.is_empty() {
            let Some(tokens) = pointer.strip_prefix('/') else {
                return unsupported(format!("$ref {r:?} is not supported by portcullis"));
            };
            for token in tokens.split('/') {
                let token = percent_encoding::percent_decode_str(token).decode_utf8_lossy();
                let token = token.replace("~1", "/").replace("~0", "~");
                target = match target {
                    Value::Object(o) => match get(o, &token) {
                        Some(v) => v,
                        None => return invalid(format!("Object has no key '{token}'")),
                    },
                    Value::Array(a) => match token.parse::<usize>() {
                        Ok(i) if i < a.len() => &a[i],
                        Ok(_) => {
                            return invalid(format!(
                                "Out of bound array[0,{}] index '{token}'",
                                a.len()
                            ))
                        }
                        Err(_) => {
                            return unsupported(format!(
                                "$ref {r:?} is not supported by portcullis"
                            ))
                        }
                    },
                    _ => return unsupported(format!("$ref {r:?} is not supported by portcullis")),
                };
            }
        }
        if !is_schema(target) {
            return invalid("Valid Schema must be of type object");
        }
        let schema = self.parse(target)?;
        self.refs[index] = schema;
        Ok(index)
    }

    /// `type`, `properties`, `additionalProperties`, `patternProperties`,
    /// `propertyNames`, `dependencies`, `items`, `additionalItems`.
    fn parse_structure(&mut self, m: &Object, n: &mut Node) -> Parsed<()> {
        if let Some(t) = get(m, "type") {
            match t {
                Value::String(s) => add_type(&mut n.types, s)?,
                Value::Array(a) => {
                    for x in a.iter() {
                        let Value::String(s) = x else {
                            return invalid_type("type", "string/Array Of Strings");
                        };
                        add_type(&mut n.types, s)?;
                    }
                }
                _ => return invalid_type("type", "string/Array Of Strings"),
            }
        }
        if let Some(props) = get(m, "properties") {
            let Value::Object(props) = props else {
                return invalid("Properties must be of type object");
            };
            for (k, v) in props.iter() {
                let Value::String(k) = k else {
                    return unsupported("a property name that is not a string");
                };
                let child = self.parse(v)?;
                n.properties.push((k.to_string(), child));
            }
        }
        n.additional_properties =
            self.additional(get(m, "additionalProperties"), "additionalProperties")?;
        if let Some(pp) = get(m, "patternProperties") {
            let Value::Object(pp) = pp else {
                return invalid_type("Valid Schema", "patternProperties");
            };
            for (k, v) in pp.iter() {
                let Value::String(k) = k else {
                    return unsupported("a pattern that is not a string");
                };
                let re = go_regex(k).or_else(|e| match e {
                    SchemaError::Invalid(_) => invalid(format!("Invalid regex pattern '{k}'")),
                    other => Err(other),
                })?;
                let child = self.parse(v)?;
                n.pattern_properties.push((re, child));
            }
        }
        if let Some(pn) = get(m, "propertyNames") {
            if !is_schema(pn) {
                return invalid_type("Valid Schema", "patternProperties");
            }
            n.property_names = Some(self.parse(pn)?);
        }
        if let Some(deps) = get(m, "dependencies") {
            let Value::Object(deps) = deps else {
                return invalid("dependencies must be of type object");
            };
            for (k, v) in deps.iter() {
                let Value::String(k) = k else {
                    return unsupported("a dependency name that is not a string");
                };
                let dependency = match v {
                    Value::Array(names) => {
                        let mut out = Vec::new();
                        for x in names.iter() {
                            let Value::String(s) = x else {
                                return invalid(
                                    "Dependency must be of type Schema Or Array Of Strings",
                                );
                            };
                            out.push(s.to_string());
                        }
                        if out.is_empty() {
                            continue;
                        }
                        Dependency::Names(out)
                    }
                    v if is_schema(v) => Dependency::Schema(self.parse(v)?),
                    _ => return invalid("Dependency must be of type Schema Or Array Of Strings"),
                };
                n.dependencies.push((k.to_string(), dependency));
            }
        }
        if let Some(items) = get(m, "items") {
            n.items = match items {
                Value::Array(a) => {
                    let mut out = Vec::new();
                    for x in a.iter() {
                        if !is_schema(x) {
                            return invalid_type("Valid Schema/Array Of Schemas", "items");
                        }
                        out.push(self.parse(x)?);
                    }
                    Items::Tuple(out)
                }
                x if is_schema(x) => Items::Single(self.parse(x)?),
                _ => return invalid_type("Valid Schema/Array Of Schemas", "items"),
            };
        }
        n.additional_items = self.additional(get(m, "additionalItems"), "additionalItems")?;
        Ok(())
    }

    fn additional(&mut self, v: Option<&Value>, key: &str) -> Parsed<Option<Additional>> {
        match v {
            None | Some(Value::Bool(true)) => Ok(None),
            Some(Value::Bool(false)) => Ok(Some(Additional::Deny)),
            Some(v @ Value::Object(_)) => Ok(Some(Additional::Schema(self.parse(v)?))),
            Some(_) => invalid_type("boolean/Valid Schema", key),
        }
    }

    /// `multipleOf`, `minimum`, `exclusiveMinimum`, `maximum`, `exclusiveMaximum`.
    fn parse_numbers(&self, m: &Object, n: &mut Node) -> Parsed<()> {
        if let Some(v) = get(m, "multipleOf") {
            let Value::Number(_) = v else {
                return invalid_type("Number", "multipleOf");
            };
            let d = Dec::from_number(v)?;
            if d.neg || d.is_zero() {
                return invalid("multipleOf must be strictly greater than 0");
            }
            n.multiple_of = Some(d);
        }
        for (key, exclusive_key, bound_is_min) in [
            ("minimum", "exclusiveMinimum", true),
            ("maximum", "exclusiveMaximum", false),
        ] {
            let mut bound = None;
            let mut exclusive = None;
            if let Some(v) = get(m, key) {
                let Value::Number(_) = v else {
                    return invalid(format!("{key} must be of a Number"));
                };
                bound = Some(Dec::from_number(v)?);
            }
            match (get(m, exclusive_key), self.draft) {
                (None, _) => {}
                (Some(x @ Value::Number(_)), _) => exclusive = Some(Dec::from_number(x)?),
                (Some(Value::Bool(b)), Draft::Hybrid) => {
                    if bound.is_none() {
                        return invalid(format!("{exclusive_key} cannot be used without {key}"));
                    }
                    if *b {
                        exclusive = bound.take();
                    }
                }
                (Some(_), Draft::Hybrid) => return invalid_type("boolean/number", exclusive_key),
                (Some(_), _) => return invalid_type("number", exclusive_key),
            }
            if bound_is_min {
                (n.minimum, n.exclusive_minimum) = (bound, exclusive);
            } else {
                (n.maximum, n.exclusive_maximum) = (bound, exclusive);
            }
        }
        Ok(())
    }

    /// The string, object and array keywords in gojsonschema's order.
    fn parse_strings_and_counts(m: &Object, n: &mut Node) -> Parsed<()> {
        n.min_length = get_count(m, "minLength")?;
        n.max_length = get_count(m, "maxLength")?;
        if let (Some(a), Some(b)) = (n.min_length, n.max_length) {
            if a > b {
                return invalid("minLength cannot be greater than maxLength");
            }
        }
        if let Some(p) = get_string(m, "pattern")? {
            let re = go_regex(p).or_else(|e| match e {
                SchemaError::Invalid(_) => invalid("pattern must be a valid regex"),
                other => Err(other),
            })?;
            n.pattern = Some((p.to_string(), re));
        }
        n.format = get_string(m, "format")?.map(str::to_owned);
        n.min_properties = get_count(m, "minProperties")?;
        n.max_properties = get_count(m, "maxProperties")?;
        if let (Some(a), Some(b)) = (n.min_properties, n.max_properties) {
            if a > b {
                return invalid("minProperties cannot be greater than maxProperties");
            }
        }
        for r in get_slice(m, "required")? {
            let Value::String(s) = r else {
                return invalid_type("string", "required");
            };
            if n.required.iter().any(|x| **x == **s) {
                return invalid("required items must be unique");
            }
            n.required.push(s.to_string());
        }
        n.min_items = get_count(m, "minItems")?;
        n.max_items = get_count(m, "maxItems")?;
        if let Some(u) = get(m, "uniqueItems") {
            let Value::Bool(u) = u else {
                return invalid("uniqueItems must be of a boolean");
            };
            n.unique_items = *u;
        }
        Ok(())
    }

    /// `contains`, `const`, `enum`, `oneOf`, `anyOf`, `allOf`, `not`, `if`/`then`/`else`.
    fn parse_combinators(&mut self, m: &Object, n: &mut Node) -> Parsed<()> {
        if let Some(c) = get(m, "contains") {
            n.contains = Some(self.parse(c)?);
        }
        if let Some(c) = get(m, "const") {
            n.constant = Some(go_json(c)?);
        }
        if get(m, "enum").is_some() {
            let mut values: Vec<String> = Vec::new();
            for v in get_slice(m, "enum")? {
                let text = go_json(v)?;
                if values.contains(&text) {
                    return invalid("enum items must be unique");
                }
                values.push(text);
            }
            n.enumeration = Some(values);
        }
        for (key, list) in [("oneOf", 0), ("anyOf", 1), ("allOf", 2)] {
            let mut out = Vec::new();
            for v in get_slice(m, key)? {
                out.push(self.parse(v)?);
            }
            match list {
                0 => n.one_of = out,
                1 => n.any_of = out,
                _ => n.all_of = out,
            }
        }
        n.not = self.optional_schema(m, "not")?;
        if self.draft >= Draft::Draft7 {
            n.if_ = self.optional_schema(m, "if")?;
            n.then = self.optional_schema(m, "then")?;
            n.else_ = self.optional_schema(m, "else")?;
        }
        Ok(())
    }

    fn optional_schema(&mut self, m: &Object, key: &str) -> Parsed<Option<Schema>> {
        match get(m, key) {
            None => Ok(None),
            Some(v) if is_schema(v) => Ok(Some(self.parse(v)?)),
            Some(_) => invalid(format!("{key} must be of an object")),
        }
    }
}

fn add_type(types: &mut Vec<&'static str>, t: &str) -> Parsed<()> {
    const NAMES: [&str; 7] = [
        "array", "boolean", "integer", "number", "null", "object", "string",
    ];
    let Some(name) = NAMES.iter().find(|n| **n == t) else {
        return invalid(format!("has a primitive type that is NOT VALID -- given: /{t}/ Expected valid values are:[array boolean integer number null object string]"));
    };
    if types.contains(name) {
        return invalid(format!("{t} type is duplicated"));
    }
    types.push(name);
    Ok(())
}
