//! SPIFFE IDs and trust domains, validated per the SPIFFE-ID specification.
//!
//! `spiffe://<trust-domain>/<path>`: the scheme is lowercase `spiffe`; the trust
//! domain is 1..=255 characters of `[a-z0-9.-_]`; the path is a sequence of
//! `/segment`s of `[a-zA-Z0-9.-_]`, none empty, `.` or `..`; no port, userinfo,
//! percent-encoding, query or fragment; the whole ID is at most 2048 bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const SCHEME: &str = "spiffe://";
/// The SPIFFE-ID specification's maximum length of a whole ID, in bytes.
pub const MAX_ID_LEN: usize = 2048;
/// Maximum length of a trust domain name.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a valid SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("empty SPIFFE ID")]
    Empty,
    #[error("SPIFFE ID longer than {MAX_ID_LEN} bytes")]
    TooLong,
    #[error("scheme must be \"spiffe://\" (lowercase)")]
    WrongScheme,
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error("trust domain longer than {MAX_TRUST_DOMAIN_LEN} characters")]
    TrustDomainTooLong,
    #[error("trust domain characters must be lowercase letters, digits, '.', '-' or '_'")]
    BadTrustDomainChar,
    #[error("a port is not allowed in the trust domain")]
    Port,
    #[error("userinfo is not allowed in the trust domain")]
    UserInfo,
    #[error("percent-encoding is not allowed")]
    PercentEncoded,
    #[error("a query is not allowed")]
    Query,
    #[error("a fragment is not allowed")]
    Fragment,
    #[error("path segments must not be empty (no '//' and no trailing '/')")]
    EmptySegment,
    #[error("path segments must not be '.' or '..'")]
    DotSegment,
    #[error("path characters must be letters, digits, '.', '-' or '_'")]
    BadPathChar,
}

/// A validated trust domain name, such as `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`) or its ID form
    /// (`spiffe://example.org`).
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        let name = s.strip_prefix(SCHEME).unwrap_or(s);
        validate_trust_domain(name)?;
        Ok(TrustDomain(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID form, `spiffe://<name>`.
    pub fn id_string(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }
}

fn validate_trust_domain(name: &str) -> Result<(), SpiffeIdError> {
    if name.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if name.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    for c in name.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            ':' => return Err(SpiffeIdError::Port),
            '@' => return Err(SpiffeIdError::UserInfo),
            '%' => return Err(SpiffeIdError::PercentEncoded),
            '?' => return Err(SpiffeIdError::Query),
            '#' => return Err(SpiffeIdError::Fragment),
            _ => return Err(SpiffeIdError::BadTrustDomainChar),
        }
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    // `path` starts with '/' (the caller split on it); every segment follows one.
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err(SpiffeIdError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        for c in segment.chars() {
            match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => {}
                '%' => return Err(SpiffeIdError::PercentEncoded),
                '?' => return Err(SpiffeIdError::Query),
                '#' => return Err(SpiffeIdError::Fragment),
                _ => return Err(SpiffeIdError::BadPathChar),
            }
        }
    }
    Ok(())
}

/// A validated SPIFFE ID. Equality is byte equality of the canonical form.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: String,
    /// Byte length of `spiffe://<trust-domain>`; the path starts here.
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        let (td, path) = match rest.find(['/', '?', '#']) {
            Some(i) if rest.as_bytes()[i] == b'/' => rest.split_at(i),
            Some(i) if rest.as_bytes()[i] == b'?' => {
                validate_trust_domain(&rest[..i])?;
                return Err(SpiffeIdError::Query);
            }
            Some(i) => {
                validate_trust_domain(&rest[..i])?;
                return Err(SpiffeIdError::Fragment);
            }
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        validate_path(path)?;
        Ok(SpiffeId {
            id: s.to_owned(),
            path_start: SCHEME.len() + td.len(),
        })
    }

    /// Builds `spiffe://<td><path>` from parts; `path` must start with `/` or be empty.
    pub fn from_parts(td: &TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!("{SCHEME}{}{path}", td.as_str()))
    }

    /// The trust domain name (without scheme).
    pub fn trust_domain_name(&self) -> &str {
        &self.id[SCHEME.len()..self.path_start]
    }

    /// The trust domain as its own type.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().to_owned())
    }

    /// The path, starting with `/`, or empty for a trust domain's own ID.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    /// True when the ID has no path (`spiffe://td`): it names a trust domain,
    /// not a workload, and is never a valid SVID identity.
    pub fn is_root(&self) -> bool {
        self.path().is_empty()
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The Kubernetes form `spiffe://<td>/ns/<namespace>/sa/<service-account>`.
    pub fn kubernetes(
        td: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        Self::from_parts(td, &format!("/ns/{namespace}/sa/{service_account}"))
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.id)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SpiffeId::parse(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TrustDomain::parse(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> SpiffeIdError {
        match SpiffeId::parse(s) {
            Ok(id) => panic!("{s:?} parsed as {id}"),
            Err(e) => e,
        }
    }

    #[test]
    fn valid_ids() {
        for s in [
            "spiffe://cluster.local/ns/default/sa/frontend",
            "spiffe://example.org",
            "spiffe://a/b",
            "spiffe://trust_domain-1.example/Path/With.Dots/and-dash_under",
            "spiffe://td/...",
            "spiffe://td/.hidden",
        ] {
            let id = SpiffeId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(id.as_str(), s);
        }
        let id = SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").unwrap();
        assert_eq!(id.trust_domain_name(), "cluster.local");
        assert_eq!(id.path(), "/ns/a/sa/b");
        assert!(!id.is_root());
        assert!(SpiffeId::parse("spiffe://cluster.local").unwrap().is_root());
    }

    #[test]
    fn scheme_rules() {
        assert_eq!(err(""), SpiffeIdError::Empty);
        assert_eq!(err("https://td/x"), SpiffeIdError::WrongScheme);
        assert_eq!(err("SPIFFE://td/x"), SpiffeIdError::WrongScheme);
        assert_eq!(err("spiffe:/td/x"), SpiffeIdError::WrongScheme);
        assert_eq!(err("td/x"), SpiffeIdError::WrongScheme);
    }

    #[test]
    fn trust_domain_rules() {
        assert_eq!(err("spiffe://"), SpiffeIdError::MissingTrustDomain);
        assert_eq!(err("spiffe:///path"), SpiffeIdError::MissingTrustDomain);
        assert_eq!(
            err("spiffe://Example.org/x"),
            SpiffeIdError::BadTrustDomainChar
        );
        assert_eq!(
            err("spiffe://exa mple/x"),
            SpiffeIdError::BadTrustDomainChar
        );
        assert_eq!(err("spiffe://td:8080/x"), SpiffeIdError::Port);
        assert_eq!(err("spiffe://user@td/x"), SpiffeIdError::UserInfo);
        assert_eq!(err("spiffe://t%41d/x"), SpiffeIdError::PercentEncoded);
        let long_td = "a".repeat(MAX_TRUST_DOMAIN_LEN + 1);
        assert_eq!(
            err(&format!("spiffe://{long_td}/x")),
            SpiffeIdError::TrustDomainTooLong
        );
        let max_td = "a".repeat(MAX_TRUST_DOMAIN_LEN);
        assert!(SpiffeId::parse(&format!("spiffe://{max_td}/x")).is_ok());
        assert_eq!(err("spiffe://tdé/x"), SpiffeIdError::BadTrustDomainChar);
    }

    #[test]
    fn path_rules() {
        assert_eq!(err("spiffe://td/"), SpiffeIdError::EmptySegment);
        assert_eq!(err("spiffe://td//x"), SpiffeIdError::EmptySegment);
        assert_eq!(err("spiffe://td/x/"), SpiffeIdError::EmptySegment);
        assert_eq!(err("spiffe://td/./x"), SpiffeIdError::DotSegment);
        assert_eq!(err("spiffe://td/x/.."), SpiffeIdError::DotSegment);
        assert_eq!(err("spiffe://td/a%2Fb"), SpiffeIdError::PercentEncoded);
        assert_eq!(err("spiffe://td/a b"), SpiffeIdError::BadPathChar);
        assert_eq!(err("spiffe://td/a*b"), SpiffeIdError::BadPathChar);
        assert_eq!(err("spiffe://td/ü"), SpiffeIdError::BadPathChar);
        assert_eq!(err("spiffe://td/x?y=1"), SpiffeIdError::Query);
        assert_eq!(err("spiffe://td?y=1"), SpiffeIdError::Query);
        assert_eq!(err("spiffe://td/x#frag"), SpiffeIdError::Fragment);
        assert_eq!(err("spiffe://td#frag"), SpiffeIdError::Fragment);
    }

    #[test]
    fn length_limit() {
        let path = "/a".repeat((MAX_ID_LEN - "spiffe://td".len()) / 2);
        let ok = format!("spiffe://td{path}");
        assert!(ok.len() <= MAX_ID_LEN);
        assert!(SpiffeId::parse(&ok).is_ok());
        let too_long = format!("spiffe://td{path}/bb");
        assert!(too_long.len() > MAX_ID_LEN);
        assert_eq!(err(&too_long), SpiffeIdError::TooLong);
    }

    #[test]
    fn trust_domain_parse_forms() {
        assert_eq!(
            TrustDomain::parse("example.org").unwrap().as_str(),
            "example.org"
        );
        assert_eq!(
            TrustDomain::parse("spiffe://example.org").unwrap().as_str(),
            "example.org"
        );
        assert!(TrustDomain::parse("Example.org").is_err());
        assert!(TrustDomain::parse("").is_err());
        let k = SpiffeId::kubernetes(&TrustDomain::parse("cluster.local").unwrap(), "ns1", "sa1")
            .unwrap();
        assert_eq!(k.as_str(), "spiffe://cluster.local/ns/ns1/sa/sa1");
    }

    #[test]
    fn serde_round_trip_and_errors() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://td/x\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"spiffe://td/x\"");
        let bad: Result<SpiffeId, _> = serde_json::from_str("\"spiffe://TD/x\"");
        assert!(bad.is_err());
    }
}
