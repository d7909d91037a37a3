//! What the authenticator remembers between requests: tokens that validated,
//! decoded ([`ParsedTokens`]), and signatures that verified with the current key
//! set ([`SignatureCache`]). Both are bounded by bytes and hold successes only.

use std::sync::Arc;

use serde_json::Value;

use super::jwks::KeySet;
use super::token::JoseHeader;

/// A token's decoded header and payload.
pub(super) struct ParsedToken {
    pub(super) header: JoseHeader,
    pub(super) payload: Arc<Value>,
}

/// Tokens that validated, decoded: the same token arrives on every request of a
/// client. Only tokens that passed every check are added, so a flood of forged
/// tokens cannot fill it; bounded by the bytes of the tokens held.
#[derive(Default)]
pub(super) struct ParsedTokens {
    entries: std::collections::HashMap<Box<str>, Arc<ParsedToken>>,
    bytes: usize,
}

impl ParsedTokens {
    /// At most this many bytes of tokens are held; when full it starts over.
    const MAX_BYTES: usize = 256 * 1024;

    pub(super) fn get(&self, token: &str) -> Option<Arc<ParsedToken>> {
        self.entries.get(token).cloned()
    }

    pub(super) fn insert(&mut self, token: &str, parsed: Arc<ParsedToken>) {
        if self.bytes + token.len() > Self::MAX_BYTES {
            self.entries.clear();
            self.bytes = 0;
        }
        if self.entries.insert(token.into(), parsed).is_none() {
            self.bytes += token.len();
        }
    }
}

/// (signing input, signature) pairs whose signature verified with one key set,
/// matched byte for byte. Verification is deterministic in those bytes and the
/// keys, so a hit is exactly as good as verifying again; the cache is emptied
/// whenever the key set changes (rotation, refetch), and only successes are
/// recorded. Everything else about a token (header checks, claim types,
/// `exp`/`nbf`/`iat` against the current time, issuer, audience) is still
/// checked on every request.
#[derive(Default)]
pub(super) struct SignatureCache {
    /// The key set the entries were verified with (held, so its address is not reused).
    set: Option<Arc<KeySet>>,
    /// Signature → signing input.
    entries: std::collections::HashMap<Box<[u8]>, Box<[u8]>>,
    /// Bytes held by `entries`.
    bytes: usize,
}

impl SignatureCache {
    /// At most this many bytes of tokens are held; when full it starts over.
    const MAX_BYTES: usize = 256 * 1024;

    pub(super) fn contains(&self, set: &Arc<KeySet>, message: &[u8], signature: &[u8]) -> bool {
        self.set.as_ref().is_some_and(|s| Arc::ptr_eq(s, set))
            && self
                .entries
                .get(signature)
                .is_some_and(|m| m.as_ref() == message)
    }

    pub(super) fn insert(&mut self, set: &Arc<KeySet>, message: &[u8], signature: &[u8]) {
        let size = message.len() + signature.len();
        if size > Self::MAX_BYTES {
            return;
        }
        let same_set = self.set.as_ref().is_some_and(|s| Arc::ptr_eq(s, set));
        if !same_set || self.bytes + size > Self::MAX_BYTES {
            self.set = Some(set.clone());
            self.entries.clear();
            self.bytes = 0;
        }
        let old = self.entries.insert(signature.into(), message.into());
        self.bytes += size;
        if let Some(m) = old {
            self.bytes -= m.len() + signature.len();
        }
    }
}

pub(super) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while the lock is held; recover the data if it ever did.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_cache_is_per_key_set_and_exact() {
        let set = || {
            Arc::new(KeySet {
                keys: Vec::new(),
                loaded: true,
            })
        };
        let (a, b) = (set(), set());
        let mut c = SignatureCache::default();
        assert!(!c.contains(&a, b"h.p", b"sig"));
        c.insert(&a, b"h.p", b"sig");
        assert!(c.contains(&a, b"h.p", b"sig"));
        // Byte for byte: another message or signature is not a hit.
        assert!(!c.contains(&a, b"h.q", b"sig"));
        assert!(!c.contains(&a, b"h.p", b"sih"));
        // Another key set (a rotation or refetch) knows nothing.
        assert!(!c.contains(&b, b"h.p", b"sig"));
        c.insert(&b, b"x", b"y");
        assert!(!c.contains(&b, b"h.p", b"sig"));
        assert!(!c.contains(&a, b"h.p", b"sig"));
        // Bounded: filling past the limit starts over.
        let big = vec![7u8; SignatureCache::MAX_BYTES / 2];
        c.insert(&b, &big, b"1");
        c.insert(&b, &big, b"2");
        assert!(c.bytes <= SignatureCache::MAX_BYTES);
        assert!(c.contains(&b, &big, b"2"));
        assert!(!c.contains(&b, b"x", b"y"));
    }
}
