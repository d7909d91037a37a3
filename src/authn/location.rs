//! Where a token is found in a request (a header with an optional prefix, a query
//! parameter, a cookie), and how it is removed before the request goes on.

use http::header::{HeaderName, HeaderValue, COOKIE};
use http::HeaderMap;
use percent_encoding::percent_decode_str;

/// A token location, with header names parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Location {
    Header { name: HeaderName, prefix: String },
    Query(String),
    Cookie(String),
}

pub(super) fn token_at(loc: &Location, headers: &HeaderMap, pq: &str) -> Option<String> {
    match loc {
        Location::Header { name, prefix } => headers.get_all(name).iter().find_map(|v| {
            let v = v.to_str().ok()?;
            let rest = if prefix.is_empty() {
                v
            } else {
                let head = v.get(..prefix.len())?;
                if !head.eq_ignore_ascii_case(prefix) {
                    return None;
                }
                v.get(prefix.len()..)?
            };
            let t = rest.trim();
            (!t.is_empty()).then(|| t.to_owned())
        }),
        Location::Query(name) => {
            let (_, query) = pq.split_once('?')?;
            query.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                if percent_decode_str(k).decode_utf8().ok()? != name.as_str() {
                    return None;
                }
                let v = percent_decode_str(v).decode_utf8().ok()?;
                (!v.is_empty()).then(|| v.into_owned())
            })
        }
        Location::Cookie(name) => headers.get_all(COOKIE).iter().find_map(|v| {
            v.to_str().ok()?.split(';').find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                if k.trim() != name {
                    return None;
                }
                let v = v.trim().trim_matches('"');
                (!v.is_empty()).then(|| v.to_owned())
            })
        }),
    }
}

/// The path-and-query without every `name=` parameter; `None` if there was none.
pub(super) fn remove_query_param(pq: &str, name: &str) -> Option<String> {
    let (path, query) = pq.split_once('?')?;
    let mut removed = false;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map(|(k, _)| k).unwrap_or(pair);
            let hit = percent_decode_str(k).decode_utf8().is_ok_and(|k| k == name);
            removed |= hit;
            !hit
        })
        .collect();
    if !removed {
        return None;
    }
    Some(if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    })
}

pub(super) fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    let mut kept = Vec::new();
    for v in headers.get_all(COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for c in v.split(';') {
            let c = c.trim();
            let k = c.split_once('=').map(|(k, _)| k.trim()).unwrap_or(c);
            if !c.is_empty() && k != name {
                kept.push(c.to_owned());
            }
        }
    }
    headers.remove(COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(COOKIE, v);
        }
    }
}
