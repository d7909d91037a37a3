//! rustls configurations built from an SVID, once per certificate rotation.
//!
//! The server side always requires a client SVID when TLS is used (plaintext is a
//! separate, permissive-only path); the client side verifies the server as an SVID
//! and never looks at DNS names. Both advertise `h2` and `http/1.1`.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ServerConfig};

use super::source::{IdentityError, Svid};
use super::verifier::{PeerAuthorization, SvidClientVerifier, SvidServerVerifier};

/// ALPN protocols offered and accepted, in preference order.
pub const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// ALPN a sidecar offers for opaque TCP over mTLS: the inbound side relays bytes.
pub const ALPN_TCP: &[u8] = b"portcullis-tcp";

/// ALPN a sidecar offers for HTTP/2 to a peer sidecar: only on a connection that
/// negotiated it are peer markers (`x-portcullis-orig-proto`) honoured. Other clients
/// (Envoy, curl, gRPC) negotiate `h2` and have every `x-portcullis-*` header stripped.
pub const ALPN_PEER_H2: &[u8] = b"portcullis-h2";

/// TLS configurations for the current identity. Client configurations depend on the
/// peer pinned and the ALPN offered; the peer pool builds those once per rotation.
pub struct TlsConfigs {
    /// Inbound: terminates mTLS, accepting any valid SVID of a trusted domain.
    pub server: Arc<ServerConfig>,
}

impl TlsConfigs {
    pub fn build(svid: &Svid, provider: &Arc<CryptoProvider>) -> Result<TlsConfigs, IdentityError> {
        Ok(TlsConfigs {
            server: Arc::new(server_config(
                svid,
                provider,
                PeerAuthorization::AnyTrusted,
                "inbound",
            )?),
        })
    }
}

/// A server config presenting `svid` and requiring client SVIDs allowed by `authz`.
pub fn server_config(
    svid: &Svid,
    provider: &Arc<CryptoProvider>,
    authz: PeerAuthorization,
    direction: &'static str,
) -> Result<ServerConfig, IdentityError> {
    let verifier = SvidClientVerifier::new(
        svid.bundles.clone(),
        authz,
        true,
        provider.clone(),
        direction,
    );
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| IdentityError::Tls(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(SingleCert(svid.certified_key.clone())));
    // The server's order decides: a peer sidecar offering `portcullis-h2` gets it.
    config.alpn_protocols = vec![ALPN_PEER_H2.to_vec()];
    config
        .alpn_protocols
        .extend(ALPN.iter().map(|p| p.to_vec()));
    config.alpn_protocols.push(ALPN_TCP.to_vec());
    Ok(config)
}

/// A client config presenting `svid` and accepting servers allowed by `authz`.
pub fn client_config(
    svid: &Svid,
    provider: &Arc<CryptoProvider>,
    authz: PeerAuthorization,
    alpn: &[&[u8]],
) -> Result<ClientConfig, IdentityError> {
    let verifier =
        SvidServerVerifier::new(svid.bundles.clone(), authz, provider.clone(), "outbound");
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| IdentityError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(SingleCert(svid.certified_key.clone())));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Presents one certified key, on either side of the handshake.
#[derive(Debug)]
struct SingleCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for SingleCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for SingleCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
