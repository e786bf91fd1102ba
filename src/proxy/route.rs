//! Routing: by canonical host, then by the longest path prefix on a segment boundary.
//!
//! Built once per configuration; a lookup lower-cases the host into a stack buffer and does
//! one hash probe and a short scan, with no allocation.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderValue;

use super::RuntimeError;
use super::client::{self, UpstreamClient};
use super::error::ProxyError;
use super::host::{HostRef, MAX_HOST_LEN};
use super::path::has_prefix;
use super::pool::Upstream;
use crate::broker::Broker;
use crate::config::{Config, RouteConfig};
use crate::telemetry::metrics::{Metrics, RouteMetrics};

/// A route ready to serve: its settings, upstream connections and pre-resolved metrics.
pub struct Route {
    pub config: RouteConfig,
    /// HTTP/1 connections driven by the requests that use them.
    pub upstream: Arc<Upstream>,
    /// hyper-util's pooled client, for HTTP/2 upstreams and WebSocket upgrades.
    pub client: UpstreamClient,
    pub metrics: RouteMetrics,
    /// `Host` sent upstream unless the route preserves the client's.
    pub upstream_host: HeaderValue,
    /// What the gateway presents upstream on behalf of callers.
    pub broker: Broker,
}

/// Every route, indexed by host.
pub struct RouteTable {
    by_host: HashMap<Box<str>, Vec<Arc<Route>>>,
    any_host: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn build(config: &Config, metrics: &Metrics) -> Result<RouteTable, RuntimeError> {
        let mut by_host: HashMap<Box<str>, Vec<Arc<Route>>> = HashMap::new();
        let mut any_host = Vec::new();
        for rc in &config.routes {
            let upstream_host = HeaderValue::from_str(rc.upstream.authority.as_str())
                .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
            let connector = client::connector(rc)?;
            let target = http::Uri::builder()
                .scheme(rc.upstream.scheme.clone())
                .authority(rc.upstream.authority.clone())
                .path_and_query("/")
                .build()
                .map_err(|e| client::ClientBuildError::Target {
                    route: rc.name.clone(),
                    message: e.to_string(),
                })?;
            let route = Arc::new(Route {
                upstream: Upstream::new(
                    connector.clone(),
                    target,
                    metrics.upstream_connections(&rc.name),
                ),
                client: client::build(rc, connector),
                metrics: metrics.for_route(&rc.name),
                upstream_host,
                broker: Broker::load(rc).map_err(|e| RuntimeError::Secret {
                    route: rc.name.clone(),
                    error: e,
                })?,
                config: rc.clone(),
            });
            for host in &rc.hosts {
                if host == "*" {
                    any_host.push(route.clone());
                } else {
                    by_host
                        .entry(host.as_str().into())
                        .or_default()
                        .push(route.clone());
                }
            }
        }
        let longest_first = |routes: &mut Vec<Arc<Route>>| {
            routes.sort_by_key(|r| std::cmp::Reverse(r.config.path_prefix.len()));
        };
        by_host.values_mut().for_each(longest_first);
        longest_first(&mut any_host);
        Ok(RouteTable { by_host, any_host })
    }

    /// The route for a host and path: 421 when no route serves the host, 404 when the host is
    /// served but no prefix matches.
    pub fn lookup(&self, host: &HostRef<'_>, path: &str) -> Result<&Arc<Route>, ProxyError> {
        let mut buf = [0u8; MAX_HOST_LEN + 2];
        let name = host.lowercase_into(&mut buf);
        let candidates = match self.by_host.get(name) {
            Some(routes) => routes,
            None if !self.any_host.is_empty() => &self.any_host,
            None => return Err(ProxyError::UnknownHost),
        };
        candidates
            .iter()
            .find(|r| has_prefix(path, &r.config.path_prefix))
            .ok_or(ProxyError::NoRoute)
    }
}
