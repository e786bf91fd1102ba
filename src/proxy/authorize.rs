//! Stage 6: what the request is, and whether the policy lets this caller do it.
//!
//! The request is classified (Gogs web, API, git fetch or push and the repository; OTLP signal
//! and services), reading from the body only what the decision needs. A refused push is
//! answered in git's own protocol so the person sees
//! `! [remote rejected] main -> main (denied by policy protect-main)`; a refused page gets a
//! readable 403 page; anything else a 403 naming the rule.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;

use super::RequestContext;
use super::body::{BodyError, Guarded, Progress};
use super::client::ForwardBody;
use super::error::ProxyError;
use super::inspect::{self, InspectError, Prefixed};
use super::response::ResponseBody;
use super::route::Route;
use crate::classify;
use crate::config::RouteKind;
use crate::identity::Caller;
use crate::identity::pages;
use crate::policy::{self, Decision, PolicyRequest, SubjectRef};

/// The request body on its way upstream, and when it last moved.
pub struct Inbound {
    pub body: ForwardBody,
    pub progress: Option<Arc<Progress>>,
}

/// What authorization concluded.
pub enum Verdict {
    /// Forward, with the body (possibly re-assembled after inspection).
    Forward {
        inbound: Inbound,
        request: PolicyRequest,
        decision: Option<Decision>,
        /// The version of the policy that decided.
        policy: Arc<str>,
    },
    /// The gateway answers (the request was refused).
    Refused {
        response: Box<Response<ResponseBody>>,
        request: PolicyRequest,
        decision: Decision,
        policy: Arc<str>,
    },
}

pub(super) fn body_error(e: BodyError) -> ProxyError {
    match e {
        BodyError::TooLarge(limit) => ProxyError::BodyTooLarge(limit),
        BodyError::Timeout(_) => ProxyError::BodyTimeout,
        BodyError::Stream(_) | BodyError::Aborted(_) => ProxyError::BodyMalformed,
    }
}

fn inspect_error(e: InspectError) -> ProxyError {
    match e {
        InspectError::Body(b) => body_error(b),
        InspectError::Commands(_) | InspectError::TooManyCommands | InspectError::Gzip => {
            ProxyError::Unreadable(e.to_string())
        }
    }
}

/// Classifies, reads what the policy needs, and decides.
pub async fn authorize(
    parts: &Parts,
    body: Incoming,
    ctx: &RequestContext<'_>,
    route: &Arc<Route>,
    caller: Option<&Caller>,
) -> Result<Verdict, ProxyError> {
    let rc = &route.config;
    let path = parts.uri.path();
    let query = parts.uri.query();
    let mut request = classify::policy_request(
        rc.kind,
        &rc.name,
        parts.method.as_str(),
        path,
        query,
        Vec::new(),
        Vec::new(),
    );

    let progress = if body.is_end_stream() {
        None
    } else {
        Some(Progress::new())
    };
    let mut guarded = progress.as_ref().map(|p| {
        Box::pin(
            Guarded::new(body, rc.max_body_bytes, rc.timeouts.body_read, false)
                .with_progress(p.clone()),
        )
    });
    let gzip = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));

    // Read what the decision needs from the body (public routes are not authorized, so
    // nothing needs reading there).
    let judged = !rc.auth.public;
    let mut body: Option<ForwardBody> = None;
    let mut sideband = false;
    let policy = ctx.rt.policy.current();
    if let policy::Resource::Gogs {
        action: policy::GogsAction::GitPush,
        refs,
        ..
    } = &mut request.resource
        && judged
        && parts.method == Method::POST
        && classify::gogs::is_receive_pack_rpc(path)
    {
        let g = guarded
            .as_mut()
            .ok_or(ProxyError::Unreadable("a push without a body".into()))?;
        let (commands, raw) = inspect::push_commands(g, gzip)
            .await
            .map_err(inspect_error)?;
        sideband = commands
            .capabilities
            .iter()
            .any(|c| c == "side-band-64k" || c == "side-band");
        *refs = commands
            .updates
            .iter()
            .map(|u| policy::RefChange {
                name: u.name.clone(),
                kind: classify::update_kind(u.kind),
                old: u.old.clone(),
                new: u.new.clone(),
            })
            .collect();
        if let Some(g) = guarded.take() {
            body = Some(Prefixed::new(raw, g).boxed_unsync());
        }
    }
    if judged
        && rc.kind == RouteKind::Otlp
        && caller.is_some()
        && policy
            .routes
            .get(&rc.name)
            .is_some_and(|r| r.needs_services)
    {
        let bytes = match guarded.take() {
            Some(g) => inspect::collect(g).await.map_err(body_error)?,
            None => Bytes::new(),
        };
        let services = classify::otlp_services(
            path,
            parts.headers.get(header::CONTENT_TYPE),
            gzip,
            &bytes,
            rc.max_body_bytes,
        )
        .map_err(ProxyError::Unreadable)?;
        if let policy::Resource::Otlp { services: s, .. } = &mut request.resource {
            *s = services;
        }
        body = Some(
            Full::new(bytes)
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
    }
    let body = match (body, guarded) {
        (Some(b), _) => b,
        (None, Some(g)) => g.boxed_unsync(),
        (None, None) => Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    };
    let inbound = Inbound { body, progress };

    // Public routes are served without authentication, and so without authorization.
    if rc.auth.public {
        return Ok(Verdict::Forward {
            inbound,
            request,
            decision: None,
            policy: policy.version.clone(),
        });
    }
    let decision = policy::evaluate(
        &policy,
        caller.map(|c| SubjectRef::from(&*c.identity)),
        &request,
    );
    route.metrics.decision(decision.allowed);
    if decision.allowed {
        return Ok(Verdict::Forward {
            inbound,
            request,
            decision: Some(decision),
            policy: policy.version.clone(),
        });
    }
    tracing::info!(route = %rc.name, rule = decision.rule.as_deref().unwrap_or("-"), reasons = ?decision.reasons, "denied by policy");
    let response = refusal(parts, &request, &decision, sideband, inbound, ctx).await;
    Ok(Verdict::Refused {
        response: Box::new(response),
        request,
        decision,
        policy: policy.version.clone(),
    })
}

/// The answer to a refused request, in the client's own terms.
async fn refusal(
    parts: &Parts,
    request: &PolicyRequest,
    decision: &Decision,
    sideband: bool,
    inbound: Inbound,
    ctx: &RequestContext<'_>,
) -> Response<ResponseBody> {
    if let policy::Resource::Gogs {
        action: policy::GogsAction::GitPush,
        refs,
        ..
    } = &request.resource
        && parts.method == Method::POST
        && !refs.is_empty()
    {
        // git reads the refusal only after sending its pack; take it (and throw it away).
        inspect::drain(inbound.body).await;
        let reasons: Vec<(String, String)> = decision
            .items
            .iter()
            .filter(|i| !i.allowed)
            .map(|i| (i.item.clone(), i.reason.clone()))
            .collect();
        let updates: Vec<classify::pktline::RefUpdate> =
            refs.iter().map(classify::ref_update).collect();
        let body = classify::pktline::report_refusal(&updates, &reasons, sideband);
        let mut r = Response::new(ResponseBody::bytes(body));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-git-receive-pack-result"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(super::headers::X_REQUEST_ID.clone(), ctx.request_id.clone());
        return r;
    }
    forbidden(parts, decision, ctx)
}

/// 403 naming the rule: a readable page for a browser, a line of text for anything else.
pub fn forbidden(
    parts: &Parts,
    decision: &Decision,
    ctx: &RequestContext<'_>,
) -> Response<ResponseBody> {
    let id = ctx.request_id.to_str().unwrap_or("-");
    let rule = decision.rule.as_deref().unwrap_or("default deny");
    let reason = decision
        .reasons
        .first()
        .cloned()
        .unwrap_or_else(|| "denied".into());
    let html = crate::identity::challenge::is_navigation(parts);
    let (body, content_type) = if html {
        (
            pages::forbidden(&reason, rule, id),
            "text/html; charset=utf-8",
        )
    } else {
        (
            format!("403 Forbidden: {reason}\nrule: {rule}\nrequest id: {id}\n"),
            "text/plain; charset=utf-8",
        )
    };
    let mut r = Response::new(ResponseBody::bytes(body));
    *r.status_mut() = StatusCode::FORBIDDEN;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(super::headers::X_REQUEST_ID.clone(), ctx.request_id.clone());
    r
}
