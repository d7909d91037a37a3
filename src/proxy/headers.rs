//! Header hygiene: spoofable identity headers, hop-by-hop headers, request IDs, XFCC.
//!
//! Everything a client could use to impersonate an identity the sidecar vouches
//! for is removed before the policy sees the request and before the app gets it.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The header carrying the verified peer identity to the app (Envoy's format).
pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// The request ID header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Prefix of every header the sidecar itself sets; never accepted from clients.
pub const OWN_PREFIX: &str = "x-portcullis-";

/// Removes client-supplied identity headers: XFCC, every `x-portcullis-*` header, and
/// the `extra` names (e.g. headers JWT claims are copied into).
pub fn strip_spoofable(headers: &mut HeaderMap, extra: &[HeaderName]) {
    headers.remove(&XFCC);
    let own: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(OWN_PREFIX))
        .cloned()
        .collect();
    for name in own {
        headers.remove(&name);
    }
    for name in extra {
        headers.remove(name);
    }
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1). Names, not
/// strings: removing by `&str` parses and validates the name on every call.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers and any header listed in `Connection`.
/// `upgrade` keeps `Connection: upgrade` + `Upgrade` for protocol upgrades;
/// `TE: trailers` survives because gRPC over HTTP/2 needs it end to end.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && n == header::UPGRADE))
        .collect();
    for name in listed {
        headers.remove(&name);
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let upgrade_value = headers.get(header::UPGRADE).cloned();
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        if let Some(v) = upgrade_value {
            headers.insert(header::UPGRADE, v);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
}

/// True for an HTTP/1.1 upgrade request (WebSocket and others).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Refuses request framing that two parsers could read differently (request
/// smuggling): Content-Length together with Transfer-Encoding, several or malformed
/// Content-Length values, and any Transfer-Encoding other than a single `chunked`.
pub fn check_framing(headers: &HeaderMap) -> Result<(), &'static str> {
    let te: Vec<&HeaderValue> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    let cl: Vec<&HeaderValue> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    if !te.is_empty() && !cl.is_empty() {
        return Err("both Content-Length and Transfer-Encoding");
    }
    if cl.len() > 1 {
        return Err("several Content-Length headers");
    }
    if let Some(v) = cl.first() {
        let b = v.as_bytes();
        if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
            return Err("malformed Content-Length");
        }
    }
    match te.as_slice() {
        [] => Ok(()),
        [v] if v.as_bytes().eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err("unsupported Transfer-Encoding"),
    }
}

/// Keeps a well-formed client `x-request-id` (≤128 visible ASCII characters) or sets
/// a fresh random one; returns the ID.
pub fn ensure_request_id(headers: &mut HeaderMap) -> String {
    if let Some(v) = headers.get(&REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return String::from_utf8_lossy(b).into_owned();
        }
    }
    let id = random_id();
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert(REQUEST_ID, v);
    }
    id
}

/// Adds headers a policy returned: a name replaces the header already there, and a
/// name given several values (an array in the result) carries all of them. Invalid
/// names or values were rejected when the decision was parsed, so failures here are
/// skipped.
pub fn add_headers(map: &mut http::HeaderMap, add: &[(String, String)]) {
    for (i, (k, v)) in add.iter().enumerate() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            if add[..i]
                .iter()
                .any(|(earlier, _)| earlier.eq_ignore_ascii_case(k))
            {
                map.append(name, value);
            } else {
                map.insert(name, value);
            }
        }
    }
}

/// A random UUID (version 4) string.
pub fn random_id() -> String {
    let mut b = random_16();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// Bytes of system-CSPRNG output drawn at once per thread: one `RAND_bytes` call
/// (whose fixed cost is far above that of 16 bytes) per 64 request IDs.
const RANDOM_POOL: usize = 1024;

/// 16 bytes from the system CSPRNG (aws-lc), from a per-thread pool. Bytes are
/// handed out once and wiped from the pool as they are.
fn random_16() -> [u8; 16] {
    use std::cell::RefCell;
    thread_local! {
        static POOL: RefCell<(usize, [u8; RANDOM_POOL])> =
            const { RefCell::new((RANDOM_POOL, [0; RANDOM_POOL])) };
    }
    let pooled = POOL.with(|p| {
        let mut p = p.borrow_mut();
        let (pos, buf) = &mut *p;
        if *pos + 16 > RANDOM_POOL {
            aws_lc_rs::rand::fill(buf).ok()?;
            *pos = 0;
        }
        let chunk = buf.get_mut(*pos..*pos + 16)?;
        let mut out = [0u8; 16];
        out.copy_from_slice(chunk);
        chunk.fill(0);
        *pos += 16;
        Some(out)
    });
    pooled.unwrap_or_else(|| {
        // The system RNG failing is not recoverable in any useful way; fall back to time.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            .to_le_bytes()
    })
}

/// `x-forwarded-client-cert` for the app: `By=<own ID>;Hash=<sha256 of peer cert>;URI=<peer ID>`.
pub fn xfcc_value(by: &str, hash_hex: &str, uri: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("By={by};Hash={hash_hex};URI={uri}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_identity_headers() {
        let mut h = HeaderMap::new();
        h.insert(XFCC, HeaderValue::from_static("URI=spiffe://evil/x"));
        h.insert("x-portcullis-role", HeaderValue::from_static("admin"));
        h.insert("x-user", HeaderValue::from_static("alice"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_spoofable(&mut h, &[HeaderName::from_static("x-user")]);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn hop_by_hop_removed_listed_too() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h, false);
        assert!(!h.contains_key("x-secret"));
        assert!(!h.contains_key("keep-alive"));
        assert!(!h.contains_key("connection"));
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn upgrade_kept_when_asked() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
    }

    #[test]
    fn ambiguous_framing_refused() {
        let mut h = HeaderMap::new();
        assert!(check_framing(&h).is_ok());
        h.insert("content-length", HeaderValue::from_static("10"));
        assert!(check_framing(&h).is_ok());
        h.append("content-length", HeaderValue::from_static("10"));
        assert!(check_framing(&h).is_err());
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("+10"));
        assert!(check_framing(&h).is_err());
        let mut h = HeaderMap::new();
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        assert!(check_framing(&h).is_ok());
        h.insert("content-length", HeaderValue::from_static("3"));
        assert!(check_framing(&h).is_err());
        let mut h = HeaderMap::new();
        h.insert(
            "transfer-encoding",
            HeaderValue::from_static("gzip, chunked"),
        );
        assert!(check_framing(&h).is_err());
    }

    #[test]
    fn request_id_kept_or_generated() {
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 36);
        assert_eq!(h.get(&REQUEST_ID).unwrap(), id.as_str());
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(ensure_request_id(&mut h), "abc-123");
    }

    #[test]
    fn request_ids_are_uuid_v4_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        // More than one pool's worth.
        for _ in 0..3 * RANDOM_POOL / 16 {
            let id = random_id();
            let b = id.as_bytes();
            assert_eq!(b.len(), 36, "{id}");
            for (i, c) in b.iter().enumerate() {
                if matches!(i, 8 | 13 | 18 | 23) {
                    assert_eq!(*c, b'-', "{id}");
                } else {
                    assert!(c.is_ascii_digit() || (b'a'..=b'f').contains(c), "{id}");
                }
            }
            assert_eq!(b[14], b'4', "{id}");
            assert!(matches!(b[19], b'8' | b'9' | b'a' | b'b'), "{id}");
            assert!(seen.insert(id));
        }
    }
}
