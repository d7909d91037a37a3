//! Live decisions (`portcullis tap`): every decision the proxy makes is offered to
//! the tap subscribers connected to the admin endpoint `GET /tap`, one JSON line
//! each, filtered on the server.
//!
//! Publishing never waits: the hub is a broadcast ring of [`CAPACITY`] events and
//! a subscriber that reads too slowly loses the oldest ones, counted in
//! `portcullis_tap_dropped_total`. With no subscriber nothing is built at all.
//! The endpoint answers only on loopback: decisions name principals and paths.

use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use prometheus::IntCounter;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::direction::Direction;
use crate::metrics;
use crate::proxy::forward::{text_response, ProxyBody};

/// Events buffered per subscriber before the oldest are dropped.
pub const CAPACITY: usize = 1024;
/// Subscribers at most (each holds an admin connection open).
pub const MAX_SUBSCRIBERS: usize = 16;

/// One decision, as streamed.
#[derive(Debug, Clone, Serialize)]
pub struct TapEvent {
    pub time: String,
    pub decision_id: String,
    pub direction: Direction,
    /// The peer: the source for inbound, the destination for outbound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Masked as in decision logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub decision: &'static str,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The policy explanation, when `log.explain` computes one for this decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<serde_json::Value>,
}

struct Hub {
    tx: broadcast::Sender<Arc<TapEvent>>,
    dropped: IntCounter,
    published: IntCounter,
}

static HUB: LazyLock<Hub> = LazyLock::new(|| {
    let registry = &metrics::global().registry;
    let dropped = metrics::counter(
        registry,
        "portcullis_tap_dropped_total",
        "Decisions a tap subscriber missed because it read too slowly.",
        &[],
    )
    .with_label_values::<&str>(&[]);
    let published = metrics::counter(
        registry,
        "portcullis_tap_events_total",
        "Decisions offered to tap subscribers.",
        &[],
    )
    .with_label_values::<&str>(&[]);
    let (tx, _) = broadcast::channel(CAPACITY);
    Hub {
        tx,
        dropped,
        published,
    }
});

/// Whether anyone is tapping (callers skip building events otherwise).
pub fn active() -> bool {
    HUB.tx.receiver_count() > 0
}

/// Offers an event to the subscribers; never waits.
pub fn publish(event: TapEvent) {
    if HUB.tx.send(Arc::new(event)).is_ok() {
        HUB.published.inc();
    }
}

/// What a subscriber wants to see (`GET /tap?direction=&decision=&principal=&path_prefix=`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TapFilter {
    pub direction: Option<Direction>,
    /// `allow` or `deny` (a dry-run deny counts as a deny).
    pub allowed: Option<bool>,
    pub principal: Option<String>,
    pub path_prefix: Option<String>,
}

impl TapFilter {
    /// Parses the query string; unknown names or values are errors.
    pub fn parse(query: Option<&str>) -> Result<TapFilter, String> {
        let mut f = TapFilter::default();
        for (k, v) in form_pairs(query.unwrap_or("")) {
            match (k.as_str(), v.as_str()) {
                ("direction", "in" | "inbound") => f.direction = Some(Direction::Inbound),
                ("direction", "out" | "outbound") => f.direction = Some(Direction::Outbound),
                ("decision", "allow") => f.allowed = Some(true),
                ("decision", "deny") => f.allowed = Some(false),
                ("principal", p) => f.principal = Some(p.to_owned()),
                ("path_prefix", p) => f.path_prefix = Some(p.to_owned()),
                (k, v) => return Err(format!("bad tap filter {k}={v}")),
            }
        }
        Ok(f)
    }

    /// Whether `e` passes the filter.
    pub fn matches(&self, e: &TapEvent) -> bool {
        self.direction.is_none_or(|d| d == e.direction)
            && self.allowed.is_none_or(|a| a == (e.decision == "allow"))
            && self
                .principal
                .as_deref()
                .is_none_or(|p| e.principal.as_deref() == Some(p))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| e.path.as_deref().is_some_and(|path| path.starts_with(p)))
    }

    /// The query string for this filter (for the `tap` command).
    pub fn to_query(&self) -> String {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let mut parts = Vec::new();
        if let Some(d) = self.direction {
            parts.push(format!("direction={d}"));
        }
        if let Some(a) = self.allowed {
            parts.push(format!("decision={}", if a { "allow" } else { "deny" }));
        }
        if let Some(p) = &self.principal {
            parts.push(format!("principal={}", enc(p)));
        }
        if let Some(p) = &self.path_prefix {
            parts.push(format!("path_prefix={}", enc(p)));
        }
        parts.join("&")
    }
}

fn form_pairs(q: &str) -> Vec<(String, String)> {
    let dec = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (dec(k), dec(v))
        })
        .collect()
}

/// The `GET /tap` response: a stream of JSON lines for as long as the client reads.
pub fn response(query: Option<&str>) -> Response<ProxyBody> {
    let filter = match TapFilter::parse(query) {
        Ok(f) => f,
        Err(e) => return text_response(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    if HUB.tx.receiver_count() >= MAX_SUBSCRIBERS {
        return text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many tap subscribers\n",
        );
    }
    let rx = HUB.tx.subscribe();
    let events = futures_util::stream::unfold((rx, filter), |(mut rx, filter)| async move {
        loop {
            match rx.recv().await {
                Ok(e) if filter.matches(&e) => {
                    let mut line = serde_json::to_vec(&*e).unwrap_or_default();
                    line.push(b'\n');
                    let frame = http_body::Frame::data(Bytes::from(line));
                    return Some((
                        Ok::<_, crate::proxy::forward::BoxError>(frame),
                        (rx, filter),
                    ));
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => HUB.dropped.inc_by(n),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let body = http_body_util::StreamBody::new(events.boxed()).boxed_unsync();
    let mut r = Response::new(body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

/// Follows `GET /tap` on `admin` and prints each event (as received with `json`)
/// until the sidecar closes the stream.
pub async fn follow(
    admin: std::net::SocketAddr,
    filter: &TapFilter,
    json: bool,
    mtls: Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| format!("--admin {admin}"))?;
    match mtls {
        Some(config) => {
            // The server is verified as an SVID of a trusted domain, not by name.
            let name = rustls_pki_types::ServerName::try_from("portcullis-admin")
                .context("server name")?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .with_context(|| format!("--admin {admin}: mTLS handshake"))?;
            read_events(tls, admin, filter, json).await
        }
        None => read_events(stream, admin, filter, json).await,
    }
}

/// A client TLS config presenting the SVID in `cert`/`key`, trusting `bundle`.
pub fn client_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
    bundle: &std::path::Path,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use anyhow::Context as _;
    let read = |p: &std::path::Path| std::fs::read(p).with_context(|| p.display().to_string());
    let (cert, key, bundle) = (read(cert)?, read(key)?, read(bundle)?);
    let leaf = rustls_pemfile::certs(&mut &cert[..])
        .next()
        .context("no certificate in --cert")?
        .context("--cert")?;
    let td = crate::identity::x509::leaf_info(&leaf)
        .map_err(|e| anyhow::anyhow!("--cert: {e}"))?
        .id
        .trust_domain();
    let provider = crate::identity::tls::crypto_provider();
    let svid = crate::identity::svid::Svid::from_pem(
        &crate::identity::svid::SvidPem {
            cert: &cert,
            key: &key,
            bundle: &bundle,
            federated: &[],
        },
        &td,
        &provider,
    )?;
    let config = crate::identity::tls::client_config(
        &svid,
        &provider,
        crate::identity::verifier::PeerAuthorization::AnyTrusted,
        &[b"http/1.1"],
    )?;
    Ok(Arc::new(config))
}

async fn read_events<I>(
    io: I,
    admin: std::net::SocketAddr,
    filter: &TapFilter,
    json: bool,
) -> anyhow::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use anyhow::Context as _;
    use std::io::Write as _;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .context("admin handshake")?;
    tokio::spawn(conn);
    let req = http::Request::get(format!("/tap?{}", filter.to_query()))
        .header(http::header::HOST, admin.to_string())
        .body(http_body_util::Empty::<Bytes>::new())
        .context("tap request")?;
    let resp = sender.send_request(req).await.context("tap request")?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let text = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        anyhow::bail!(
            "{admin}: {status}: {}",
            String::from_utf8_lossy(&text).trim()
        );
    }
    let mut pending: Vec<u8> = Vec::new();
    let mut out = std::io::stdout().lock();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.context("tap stream")?.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(at) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=at).collect();
            let line = String::from_utf8_lossy(&line[..at]).into_owned();
            if json {
                writeln!(out, "{line}")?;
            } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                writeln!(out, "{}", render(&v))?;
            }
            out.flush()?;
        }
        // A line longer than this is not an event.
        if pending.len() > 1 << 20 {
            pending.clear();
        }
    }
    Ok(())
}

/// One event as the `tap` command prints it: time, direction, principal, method,
/// path, decision, status, reason (and the failed expressions of an explanation).
pub fn render(e: &serde_json::Value) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or("-").to_owned();
    let mut line = format!(
        "{} {:<8} {} {} {} {} {}",
        s("time"),
        s("direction"),
        s("principal"),
        s("method"),
        s("path"),
        s("decision"),
        e["status"].as_u64().unwrap_or(0)
    );
    if let Some(r) = e["reason"].as_str() {
        line.push_str(&format!(" {r:?}"));
    }
    for step in e["explanation"]["steps"].as_array().into_iter().flatten() {
        if let (Some(at), Some(values)) = (
            step["failed"]["location"].as_str(),
            step["failed"]["values"].as_str(),
        ) {
            line.push_str(&format!("\n    {at}: {values}"));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(direction: Direction, decision: &'static str, path: &str) -> TapEvent {
        TapEvent {
            time: String::new(),
            decision_id: String::new(),
            direction,
            principal: Some("spiffe://td/a".into()),
            method: Some("GET".into()),
            path: Some(path.into()),
            decision,
            status: 200,
            reason: None,
            explanation: None,
        }
    }

    #[test]
    fn filters_parse_and_match() {
        let f = TapFilter::parse(Some(
            "direction=in&decision=deny&principal=spiffe%3A%2F%2Ftd%2Fa&path_prefix=%2Fapi",
        ))
        .unwrap();
        assert!(f.matches(&event(Direction::Inbound, "deny", "/api/x")));
        assert!(f.matches(&event(Direction::Inbound, "dry_run_deny", "/api")));
        assert!(!f.matches(&event(Direction::Outbound, "deny", "/api/x")));
        assert!(!f.matches(&event(Direction::Inbound, "allow", "/api/x")));
        assert!(!f.matches(&event(Direction::Inbound, "deny", "/other")));
        assert_eq!(TapFilter::parse(Some(&f.to_query())).unwrap(), f);
        assert!(TapFilter::parse(Some("decision=maybe")).is_err());
        assert!(TapFilter::parse(Some("colour=red")).is_err());
    }
}
