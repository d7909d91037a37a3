//! Request path normalisation: normalise once, then decide on and forward the same bytes.
//!
//! Rules: the path must be origin-form (`/...`); percent-escapes of unreserved
//! characters are decoded and the rest upper-cased; bytes RFC 3986 never allows raw in
//! a path (non-ASCII, `"<>^`{|}` and the like) are percent-encoded, so every path has
//! one spelling; dot segments are removed; runs of `/` are merged. Ambiguous input is refused rather than guessed at: an encoded
//! `/` or `\`, a backslash, a NUL or control byte, a fragment, or invalid escapes.

/// Why a request target was refused (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with '/'")]
    NotOriginForm,
    #[error("encoded '/' or '\\' in path is ambiguous")]
    EncodedSeparator,
    #[error("backslash in path")]
    Backslash,
    #[error("control character in path")]
    Control,
    #[error("fragment in request target")]
    Fragment,
    #[error("invalid percent-encoding")]
    BadEscape,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Bytes that may stand for themselves in a normalised path: RFC 3986 `pchar`
/// (unreserved, sub-delims, `:` and `@`), `/`, and `%` (only ever as an escape).
fn is_path_char(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
        || matches!(b, b'/' | b'%')
}

/// Appends `%XX` (upper-case hex) for `v`.
fn push_escape(out: &mut String, v: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(v >> 4)]));
    out.push(char::from(HEX[usize::from(v & 0x0f)]));
}

/// Normalises `path` (without the query). Returns the path to decide on and forward.
/// The result is ASCII and normalises to itself.
pub fn normalize_path(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    // Pass 1: escapes and forbidden bytes. Every byte is pushed as ASCII: a raw
    // byte as itself or as an escape, never as a `char` of its own (a UTF-8 byte
    // pushed as a char would be re-encoded as two bytes: mojibake).
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (h, l) = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(h), Some(l)) => (*h, *l),
                    _ => return Err(PathError::BadEscape),
                };
                let v = match (hex_val(h), hex_val(l)) {
                    (Some(h), Some(l)) => h * 16 + l,
                    _ => return Err(PathError::BadEscape),
                };
                match v {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0..=0x1f | 0x7f => return Err(PathError::Control),
                    v if is_unreserved(v) => decoded.push(char::from(v)),
                    v => push_escape(&mut decoded, v),
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            b'#' => return Err(PathError::Fragment),
            0..=0x20 | 0x7f => return Err(PathError::Control),
            b if is_path_char(b) => {
                decoded.push(char::from(b));
                i += 1;
            }
            _ => {
                push_escape(&mut decoded, b);
                i += 1;
            }
        }
    }
    // Pass 2: merge slashes and remove dot segments.
    let mut out: Vec<&str> = Vec::new();
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if result.is_empty() || (trailing && !out.is_empty()) {
        result.push('/');
    }
    Ok(result)
}

/// Normalises a path-and-query: the path part as above, the query checked for
/// fragments and control bytes and otherwise kept as sent.
pub fn normalize_path_and_query(pq: &str) -> Result<String, PathError> {
    let (path, query) = match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    };
    let mut out = normalize_path(path)?;
    if let Some(q) = query {
        if q.contains('#') {
            return Err(PathError::Fragment);
        }
        if q.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(PathError::Control);
        }
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize_path_and_query(p)
    }

    #[test]
    fn normal_paths_unchanged() {
        for p in ["/", "/a", "/a/b/", "/api/v1/items?x=1&y=2", "/a;b=c/d"] {
            assert_eq!(n(p).unwrap(), p);
        }
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(n("/admin/../public").unwrap(), "/public");
        assert_eq!(n("/a/./b").unwrap(), "/a/b");
        assert_eq!(n("/../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(n("//admin").unwrap(), "/admin");
        assert_eq!(n("/a//b///c").unwrap(), "/a/b/c");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/a/%2E/b").unwrap(), "/a/b");
        assert_eq!(n("/%61dmin").unwrap(), "/admin");
    }

    #[test]
    fn escapes_canonicalised() {
        assert_eq!(n("/a%20b").unwrap(), "/a%20b");
        assert_eq!(n("/a%c3%a9").unwrap(), "/a%C3%A9");
    }

    #[test]
    fn raw_bytes_outside_rfc3986_escaped_once() {
        // Found by the input_document fuzz target: UTF-8 was re-encoded byte by
        // byte ("/café" became "/cafÃ©"), so the policy and the app saw another path.
        assert_eq!(n("/café").unwrap(), "/caf%C3%A9");
        assert_eq!(n("/café").unwrap(), n("/caf%c3%a9").unwrap());
        assert_eq!(
            n("/a{b}|c^d`e\"f<g>").unwrap(),
            "/a%7Bb%7D%7Cc%5Ed%60e%22f%3Cg%3E"
        );
        assert_eq!(n("/a{b}").unwrap(), n("/a%7bb%7d").unwrap());
        assert_eq!(n("/;a=b,c:d@e!$&'()*+").unwrap(), "/;a=b,c:d@e!$&'()*+");
        for p in ["/café/ü?q=1", "/%E2%82%AC", "/x[1]"] {
            let once = n(p).unwrap();
            assert!(once.is_ascii(), "{once}");
            assert_eq!(n(&once).unwrap(), once);
        }
    }

    #[test]
    fn ambiguous_refused() {
        assert_eq!(n("/a%2Fb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%5Cb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a\\b"), Err(PathError::Backslash));
        assert_eq!(n("/a%00b"), Err(PathError::Control));
        assert_eq!(n("/a#frag"), Err(PathError::Fragment));
        assert_eq!(n("/a?x#f"), Err(PathError::Fragment));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%2"), Err(PathError::BadEscape));
        assert_eq!(n("a/b"), Err(PathError::NotOriginForm));
        assert_eq!(n("*"), Err(PathError::NotOriginForm));
    }
}
