//! HTTP calls the gateway makes to identity providers (discovery, JWKS, token, userinfo).
//!
//! Bounded in time and size, HTTPS only, never following redirects (a redirect from a token
//! endpoint is an error, not a hint), with the provider's own CA when one is configured.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::proxy::client::{ClientBuildError, root_store};

/// Largest response accepted from a provider (discovery documents and JWKS are small).
const MAX_RESPONSE: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("request to {url} failed: {message}")]
    Transport { url: String, message: String },
    #[error("request to {url} timed out")]
    Timeout { url: String },
    #[error("{url} answered more than {MAX_RESPONSE} bytes")]
    TooLarge { url: String },
}

/// A pooled HTTPS client for one provider.
#[derive(Clone)]
pub struct Outbound {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Outbound {
    pub fn new(ca_file: Option<&Path>, what: &str) -> Result<Outbound, ClientBuildError> {
        let roots = root_store(ca_file, what)?;
        let tls = rustls::ClientConfig::builder_with_provider(crate::server::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| ClientBuildError::Tls {
                route: what.to_string(),
                source,
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Outbound { client })
    }

    /// Sends a request and collects the (bounded) response.
    pub async fn send(&self, req: Request<Vec<u8>>) -> Result<Response<Vec<u8>>, OutboundError> {
        let url = req.uri().to_string();
        let (parts, body) = req.into_parts();
        let req = Request::from_parts(parts, Full::new(Bytes::from(body)));
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| OutboundError::Transport {
                    url: url.clone(),
                    message: error_chain(&e),
                })?;
            let (parts, body) = resp.into_parts();
            let bytes = Limited::new(body, MAX_RESPONSE)
                .collect()
                .await
                .map_err(|_| OutboundError::TooLarge { url: url.clone() })?
                .to_bytes();
            Ok(Response::from_parts(parts, bytes.to_vec()))
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| OutboundError::Timeout { url: url.clone() })?
    }

    /// GET a JSON document.
    pub async fn get_json(&self, url: &str) -> Result<serde_json::Value, OutboundError> {
        let req = Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|e| OutboundError::Transport {
                url: url.to_string(),
                message: e.to_string(),
            })?;
        let resp = self.send(req).await?;
        if !resp.status().is_success() {
            return Err(OutboundError::Transport {
                url: url.to_string(),
                message: format!("status {}", resp.status()),
            });
        }
        serde_json::from_slice(resp.body()).map_err(|e| OutboundError::Transport {
            url: url.to_string(),
            message: format!("not JSON: {e}"),
        })
    }
}

/// The whole cause chain on one line (hyper's top-level messages are terse).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
