//! The current identity and the rustls configurations built from it, once per
//! certificate rotation. [`Identity`] holds the current [`Svid`] behind an `ArcSwap`
//! together with its TLS configurations, so the request path only loads a pointer;
//! the sources ([`super::source`]) install new SVIDs into it.
//!
//! The server side always requires a client SVID when TLS is used (plaintext is a
//! separate, permissive-only path); the client side verifies the server as an SVID
//! and never looks at DNS names. Both advertise `h2` and `http/1.1`.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ServerConfig};
use tokio::sync::watch;

use super::sessions::SessionStore;
use super::svid::{IdentityError, Svid};
use super::verifier::{PeerAuthorization, SvidClientVerifier, SvidServerVerifier};
use crate::metrics;

/// The process-wide crypto provider; passed explicitly everywhere (STACK.md).
///
/// aws-lc-rs' defaults (protocol versions, key exchange groups, suites), except that
/// `TLS_AES_128_GCM_SHA256` is preferred to `TLS_AES_256_GCM_SHA384`, as Go's and
/// BoringSSL's defaults do on machines with AES instructions: its key schedule runs
/// on SHA-256, which has CPU instructions of its own where SHA-384 has none, and the
/// SHA-384 schedule was a tenth of the CPU of a resumed handshake. The server side
/// applies its own order ([`server_config`]).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// The loaded identity plus the TLS configurations built from it.
pub struct Loaded {
    pub svid: Svid,
    pub tls: TlsConfigs,
}

/// The current identity, swapped atomically on rotation.
pub struct Identity {
    current: ArcSwapOption<Loaded>,
    provider: Arc<CryptoProvider>,
    /// Ticks on every successful install; the value is the number of installs.
    installs: watch::Sender<u64>,
}

impl Identity {
    pub fn new(provider: Arc<CryptoProvider>) -> Arc<Identity> {
        Arc::new(Identity {
            current: ArcSwapOption::empty(),
            provider,
            installs: watch::channel(0).0,
        })
    }

    /// The current identity, or `None` before the first successful load.
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.current.load_full()
    }

    /// Runs [`warm_up`] again with the current identity (start-up calls it once its
    /// code pages were released, so the handshake's code is mapped again).
    pub fn warm(&self) {
        if let Some(loaded) = self.current() {
            warm_up(&loaded.svid, &self.provider, &loaded.tls.server);
        }
    }

    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// Subscribes to installs (for readiness and tests).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.installs.subscribe()
    }

    /// Builds TLS configs for `svid` and makes it current. Connections already
    /// established keep the config they were accepted with.
    pub fn install(&self, svid: Svid) -> Result<(), IdentityError> {
        let tls = TlsConfigs::build(&svid, &self.provider)?;
        // Before readiness: the first handshake of a process otherwise pays for the
        // crypto library's lazy start-up (its random generator's seeding, ≈ 30 ms of
        // CPU) while a client waits.
        warm_up(&svid, &self.provider, &tls.server);
        let not_after = svid
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        tracing::info!(
            spiffe_id = %svid.id,
            serial = %hex::encode(&svid.serial),
            not_after,
            "identity installed"
        );
        metrics::global().identity_cert_expiry.set(not_after);
        self.current.store(Some(Arc::new(Loaded { svid, tls })));
        self.installs.send_modify(|n| *n += 1);
        Ok(())
    }
}

/// ALPN protocols offered and accepted, in preference order.
pub const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// ALPN a sidecar offers for opaque TCP over mTLS: the inbound side relays bytes.
pub const ALPN_TCP: &[u8] = b"portcullis-tcp";

/// ALPN a sidecar offers for HTTP/2 to a peer sidecar: only on a connection that
/// negotiated it are peer markers (`x-portcullis-orig-proto`) honoured. Other clients
/// (Envoy, curl, gRPC) negotiate `h2` and have every `x-portcullis-*` header stripped.
pub const ALPN_PEER_H2: &[u8] = b"portcullis-h2";

/// ALPN for [`ALPN_PEER_H2`] that also carries TCP tunnels (`CONNECT` streams, see
/// `proxy::tunnel`): offered before it, so two sidecars of this version agree on it
/// and an older peer answers `portcullis-h2`, and gets no tunnels.
pub const ALPN_PEER_TUNNEL: &[u8] = b"portcullis-h2t";

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
    // The server's cipher suite order decides (see `crypto_provider`).
    config.ignore_client_order = true;
    // The server's order decides: a peer sidecar offering `portcullis-h2t` or
    // `portcullis-h2` gets it.
    config.alpn_protocols = vec![ALPN_PEER_TUNNEL.to_vec(), ALPN_PEER_H2.to_vec()];
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
    config.resumption = rustls::client::Resumption::store(Arc::new(SessionStore::new()));
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

/// Runs one mTLS handshake in memory between `server` and a client presenting the same
/// SVID, so that what the crypto library and rustls set up lazily on first use is
/// done before the sidecar reports ready, not on a peer's first connection. A failure
/// only means nothing was warmed; it is logged at debug.
pub fn warm_up(svid: &Svid, provider: &Arc<CryptoProvider>, server: &Arc<ServerConfig>) {
    if let Err(e) = handshake_in_memory(svid, provider, server) {
        tracing::debug!(error = %e, "TLS warm-up handshake did not complete");
    }
}

fn handshake_in_memory(
    svid: &Svid,
    provider: &Arc<CryptoProvider>,
    server: &Arc<ServerConfig>,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = client_config(svid, provider, PeerAuthorization::AnyTrusted, &[b"h2"])?;
    let name = rustls_pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut c = rustls::ClientConnection::new(Arc::new(client), name)?;
    let mut s = rustls::ServerConnection::new(server.clone())?;
    drive(&mut c, &mut s)
}

/// Passes flights between `c` and `s` until both finished their handshakes.
fn drive(
    c: &mut rustls::ClientConnection,
    s: &mut rustls::ServerConnection,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut buf = Vec::new();
    // A TLS 1.3 handshake takes a few flights; the bound only guards against a loop.
    for _ in 0..16 {
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(());
        }
        buf.clear();
        c.write_tls(&mut buf)?;
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            s.read_tls(&mut rd)?;
        }
        s.process_new_packets()?;
        buf.clear();
        s.write_tls(&mut buf)?;
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            c.read_tls(&mut rd)?;
        }
        c.process_new_packets()?;
    }
    Err("handshake did not finish".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::dev_ca::DevCa;
    use crate::identity::svid::SvidPem;
    use crate::identity::{SpiffeId, TrustDomain};

    fn test_svid() -> (tempfile::TempDir, Svid, Arc<CryptoProvider>) {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::parse("cluster.local").unwrap();
        let ca = DevCa::init(&td, &dir.path().join("ca")).unwrap();
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/warm").unwrap();
        let out = dir.path().join("svid");
        ca.issue(&id, std::time::Duration::from_secs(3600))
            .unwrap()
            .write(&out)
            .unwrap();
        let read = |f: &str| std::fs::read(out.join(f)).unwrap();
        let provider = crypto_provider();
        let svid = Svid::from_pem(
            &SvidPem {
                cert: &read("tls.crt"),
                key: &read("tls.key"),
                bundle: &read("ca.crt"),
                federated: &[],
            },
            &td,
            &provider,
        )
        .unwrap();
        (dir, svid, provider)
    }

    fn localhost() -> rustls_pki_types::ServerName<'static> {
        rustls_pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
    }

    #[test]
    fn warm_up_handshake_completes() {
        let (_dir, svid, provider) = test_svid();
        let tls = TlsConfigs::build(&svid, &provider).unwrap();
        handshake_in_memory(&svid, &provider, &tls.server).unwrap();

        // A client that prefers AES-256 (rustls' own default order) gets AES-128
        // from the server.
        let stock = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        assert_eq!(
            stock.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
        );
        let client = client_config(&svid, &stock, PeerAuthorization::AnyTrusted, &[b"h2"]).unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), localhost()).unwrap();
        let mut s = rustls::ServerConnection::new(tls.server.clone()).unwrap();
        drive(&mut c, &mut s).unwrap();
        let suite = s.negotiated_cipher_suite().map(|s| s.suite());
        assert_eq!(suite, Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
    }

    #[test]
    fn sixteen_connects_at_once_all_resume() {
        let (_dir, svid, provider) = test_svid();
        let tls = TlsConfigs::build(&svid, &provider).unwrap();
        let client = Arc::new(
            client_config(&svid, &provider, PeerAuthorization::AnyTrusted, &[b"h2"]).unwrap(),
        );
        let connect = |expect: rustls::HandshakeKind| {
            let mut c = rustls::ClientConnection::new(client.clone(), localhost()).unwrap();
            let mut s = rustls::ServerConnection::new(tls.server.clone()).unwrap();
            drive(&mut c, &mut s).unwrap();
            assert_eq!(s.handshake_kind(), Some(expect));
        };
        // One full handshake, then one at a time: each takes a ticket and brings two.
        connect(rustls::HandshakeKind::Full);
        for _ in 0..15 {
            connect(rustls::HandshakeKind::Resumed);
        }
        // Sixteen hellos written before any handshake completes each take a ticket
        // (rustls' own store keeps eight per server).
        let mut pending: Vec<_> = (0..16)
            .map(|_| rustls::ClientConnection::new(client.clone(), localhost()).unwrap())
            .collect();
        for c in &mut pending {
            let mut s = rustls::ServerConnection::new(tls.server.clone()).unwrap();
            drive(c, &mut s).unwrap();
            assert_eq!(s.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        }
    }
}
