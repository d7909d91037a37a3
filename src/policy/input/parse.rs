//! Parsing the request's path, query string and body for `parsed_path`,
//! `parsed_query` and `parsed_body`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use regorus::Value;

use super::interned::s;

/// `b` as text, invalid UTF-8 replaced. `from_utf8` checks ASCII a word at a
/// time; `from_utf8_lossy` walks byte by byte even when all is valid (a JWT in
/// `authorization` is hundreds of bytes).
pub(super) fn lossy(b: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(b),
    }
}

/// Percent-decodes `raw` (lossy UTF-8), borrowing when there is nothing to decode.
pub(super) fn percent_decode(raw: &str, plus_as_space: bool) -> Cow<'_, str> {
    if plus_as_space && raw.contains('+') {
        let replaced = raw.replace('+', " ");
        return Cow::Owned(
            percent_encoding::percent_decode_str(&replaced)
                .decode_utf8_lossy()
                .into_owned(),
        );
    }
    percent_encoding::percent_decode_str(raw).decode_utf8_lossy()
}

/// `parsed_path`: leading slashes trimmed, split on `/`, then each segment
/// percent-decoded (so an encoded `%2F` stays inside its segment). `/` gives `[""]`.
pub(super) fn parsed_path(path: &str) -> Value {
    let trimmed = path.trim_start_matches('/');
    let segments: Vec<Value> = trimmed
        .split('/')
        .map(|seg| s(&percent_decode(seg, false)))
        .collect();
    Value::from(segments)
}

/// Go `url.ParseQuery` semantics: `&`-separated, `+` is a space, a key
/// without `=` has the value `""`, repeated keys collect their values in order.
pub(super) fn parse_query(query: &str) -> Value {
    let mut m: BTreeMap<Value, Vec<Value>> = BTreeMap::new();
    for pair in query.split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        m.entry(s(&percent_decode(k, true)))
            .or_default()
            .push(s(&percent_decode(v, true)));
    }
    Value::from(
        m.into_iter()
            .map(|(k, v)| (k, Value::from(v)))
            .collect::<BTreeMap<_, _>>(),
    )
}

pub(super) fn parsed_body(body: &[u8], content_type: Option<&str>) -> Option<Value> {
    let ct = content_type?;
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        Some(crate::policy::exact_json::to_value(body, &v))
    } else if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        let text = std::str::from_utf8(body).ok()?;
        Some(parse_query(text))
    } else {
        None
    }
}
