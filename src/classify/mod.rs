//! Classifying what a request carries, from its bytes, for the policy engine.

pub mod gogs;
pub mod otlp;
pub mod pktline;

use http::HeaderValue;

use crate::config::RouteKind;
use crate::policy::{GogsAction, PolicyRequest, RefChange, Resource, Signal, UpdateKind};

/// The policy's view of a request on a route of `kind`: the same classification for the
/// gateway and for `gatehouse policy test|explain`.
pub fn policy_request(
    kind: RouteKind,
    route: &str,
    method: &str,
    path: &str,
    query: Option<&str>,
    refs: Vec<RefChange>,
    services: Vec<String>,
) -> PolicyRequest {
    let resource = match kind {
        RouteKind::Gogs => {
            let m = http::Method::from_bytes(method.as_bytes()).unwrap_or(http::Method::GET);
            let g = gogs::classify(&m, path, query);
            let action = match g.kind {
                gogs::GogsKind::Web => GogsAction::Web,
                gogs::GogsKind::Api => GogsAction::Api,
                gogs::GogsKind::GitFetch => GogsAction::GitFetch,
                gogs::GogsKind::GitPush => GogsAction::GitPush,
            };
            Resource::Gogs {
                action,
                repo: g.repo.map(|r| r.full()),
                refs: if action == GogsAction::GitPush {
                    refs
                } else {
                    Vec::new()
                },
            }
        }
        RouteKind::Otlp => match otlp::signal_from_path(path) {
            Some(s) => Resource::Otlp {
                signal: match s {
                    otlp::Signal::Traces => Signal::Traces,
                    otlp::Signal::Metrics => Signal::Metrics,
                    otlp::Signal::Logs => Signal::Logs,
                },
                services,
            },
            None => Resource::None,
        },
        RouteKind::Plain => Resource::None,
    };
    PolicyRequest {
        route: route.to_string(),
        method: method.to_string(),
        path: path.to_string(),
        resource,
    }
}

pub fn update_kind(k: pktline::UpdateKind) -> UpdateKind {
    match k {
        pktline::UpdateKind::Create => UpdateKind::Create,
        pktline::UpdateKind::Delete => UpdateKind::Delete,
        pktline::UpdateKind::Update => UpdateKind::Update,
    }
}

pub fn ref_update(r: &RefChange) -> pktline::RefUpdate {
    pktline::RefUpdate {
        old: r.old.clone(),
        new: r.new.clone(),
        name: r.name.clone(),
        kind: match r.kind {
            UpdateKind::Create => pktline::UpdateKind::Create,
            UpdateKind::Delete => pktline::UpdateKind::Delete,
            UpdateKind::Update => pktline::UpdateKind::Update,
        },
    }
}

/// The `service.name`s of an OTLP/HTTP export body (decompressed first when gzip, refusing
/// output beyond `max`). The error text is safe to show the client.
pub fn otlp_services(
    path: &str,
    content_type: Option<&HeaderValue>,
    gzip: bool,
    body: &[u8],
    max: u64,
) -> Result<Vec<String>, String> {
    let signal =
        otlp::signal_from_path(path).ok_or_else(|| format!("{path} is not an OTLP export path"))?;
    let encoding = otlp::encoding_from_content_type(content_type.and_then(|v| v.to_str().ok()))
        .map_err(|e| e.to_string())?;
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    if gzip {
        let plain = otlp::gunzip_capped(body, limit).map_err(|e| e.to_string())?;
        otlp::services(signal, encoding, &plain).map_err(|e| e.to_string())
    } else {
        otlp::services(signal, encoding, body).map_err(|e| e.to_string())
    }
}
