//! How upstreams are reached (connector, pooled client) and how their failures map to answers.
//!
//! One connector and one pooled client per route: each route may have its own CA bundle and
//! protocol. The pooled client carries HTTP/2 upstreams and WebSocket upgrades; plain HTTP/1
//! exchanges use the connector through [`super::pool`]. `https://` upstreams are reached over TLS only (no silent
//! downgrade); a route with `upstream_ca_file` trusts that bundle alone, others trust the
//! system roots (which honour `SSL_CERT_FILE`/`SSL_CERT_DIR`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;

use super::body::{BodyError, find_body_error};
use super::error::ProxyError;
use crate::config::{RouteConfig, UpstreamProtocol};
use crate::server::tls::{TlsError, provider, read_certificates};
use crate::telemetry::metrics::UpstreamErrorKind;

/// What the gateway sends upstream: any streaming body whose errors say why it stopped.
pub type ForwardBody = UnsyncBoxBody<Bytes, BodyError>;

/// TCP, then TLS for `https://` upstreams.
pub type Connector = HttpsConnector<HttpConnector>;

pub type UpstreamClient = Client<Connector, ForwardBody>;

/// Idle upstream connections are kept this long for reuse.
pub const POOL_IDLE: Duration = Duration::from_secs(90);
pub const POOL_MAX_IDLE_PER_HOST: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("{route}: CA: {source}")]
    Ca {
        route: String,
        #[source]
        source: Box<TlsError>,
    },
    #[error("{route}: CA {path}: {message}")]
    BadCa {
        route: String,
        path: String,
        message: String,
    },
    #[error("route {route}: upstream address: {message}")]
    Target { route: String, message: String },
    #[error("{route}: TLS setup: {source}")]
    Tls {
        route: String,
        #[source]
        source: rustls::Error,
    },
}

fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = RootCertStore::empty();
            let loaded = rustls_native_certs::load_native_certs();
            for e in &loaded.errors {
                tracing::warn!(error = %e, "some system CA certificates could not be loaded");
            }
            let (added, ignored) = store.add_parsable_certificates(loaded.certs);
            tracing::debug!(added, ignored, "system CA certificates loaded");
            Arc::new(store)
        })
        .clone()
}

/// The roots a client trusts: exactly the certificates in `ca_file`, or the system roots.
pub fn root_store(
    ca_file: Option<&std::path::Path>,
    what: &str,
) -> Result<Arc<RootCertStore>, ClientBuildError> {
    let Some(path) = ca_file else {
        return Ok(system_roots());
    };
    let certs = read_certificates(path).map_err(|source| ClientBuildError::Ca {
        route: what.to_string(),
        source: Box::new(source),
    })?;
    let mut store = RootCertStore::empty();
    for cert in certs {
        store.add(cert).map_err(|e| ClientBuildError::BadCa {
            route: what.to_string(),
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    }
    Ok(Arc::new(store))
}

/// The connector for one route: TCP with the route's connect timeout, then TLS for
/// `https://` upstreams. Shared by the pooled client and the inline connections.
pub fn connector(route: &RouteConfig) -> Result<Connector, ClientBuildError> {
    let roots = root_store(
        route.upstream.ca_file.as_deref(),
        &format!("route {}", route.name),
    )?;
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| ClientBuildError::Tls {
            route: format!("route {}", route.name),
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(route.timeouts.connect));
    http.set_keepalive(Some(Duration::from_secs(60)));

    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
    let builder = if route.upstream.scheme == http::uri::Scheme::HTTPS {
        builder.https_only()
    } else {
        builder.https_or_http()
    };
    Ok(match route.upstream.protocol {
        UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
        UpstreamProtocol::Http2 => builder.enable_http2().wrap_connector(http),
    })
}

/// Builds the pooled client for one route: HTTP/2 upstreams and WebSocket upgrades use it
/// (plain HTTP/1 exchanges go through [`super::pool`]).
pub fn build(route: &RouteConfig, connector: Connector) -> UpstreamClient {
    let mut client = Client::builder(TokioExecutor::new());
    client
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        // The gateway sets Host itself (upstream authority or the client's, per route).
        .set_host(false);
    if route.upstream.protocol == UpstreamProtocol::Http2 {
        client.http2_only(true);
    }
    client.build(connector)
}

/// Maps a failed exchange of the pooled client to the answer the client gets.
pub fn classify(err: &hyper_util::client::legacy::Error) -> ProxyError {
    classify_error(err, err.is_connect())
}

/// Maps a failed upstream exchange to the answer the client gets. `connecting` says whether
/// it failed before a connection to the upstream was made.
pub fn classify_error(err: &(dyn std::error::Error + 'static), connecting: bool) -> ProxyError {
    if let Some(body) = find_body_error(err) {
        return match body {
            BodyError::TooLarge(limit) => ProxyError::BodyTooLarge(*limit),
            BodyError::Timeout(_) => ProxyError::BodyTimeout,
            BodyError::Stream(_) | BodyError::Aborted(_) => ProxyError::BodyMalformed,
        };
    }
    let kind = if has_cause(err, &|e| e.is::<rustls::Error>()) {
        UpstreamErrorKind::Tls
    } else if !connecting {
        UpstreamErrorKind::Reset
    } else if has_cause(err, &|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    }) {
        UpstreamErrorKind::ConnectTimeout
    } else {
        UpstreamErrorKind::Connect
    };
    ProxyError::Upstream(kind)
}

/// Whether `err` or anything it wraps satisfies `test`. Follows `source()` and also looks
/// inside `io::Error`s, whose `source()` skips the error they carry.
fn has_cause(
    err: &(dyn std::error::Error + 'static),
    test: &dyn Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    if test(err) {
        return true;
    }
    if let Some(inner) = err
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        && has_cause(inner, test)
    {
        return true;
    }
    err.source().is_some_and(|s| has_cause(s, test))
}
