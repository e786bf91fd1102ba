//! The request path through the gateway, stage by stage.
//!
//! [`Gateway::handle`] is the one place the stages are put in order; each stage lives in its
//! own module and knows nothing of sockets. See ARCHITECTURE.md for the whole picture.

pub mod audit;
pub mod audit_export;
pub mod authorize;
pub mod body;
pub mod client;
pub mod downstream;
pub mod endpoints;
pub mod error;
pub mod exchange;
pub mod headers;
pub mod host;
pub mod ingest;
pub mod inspect;
pub mod path;
pub mod pool;
pub mod request_id;
pub mod response;
pub mod route;
pub mod trace;
pub mod unparsed;
pub mod upgrade;
pub mod webhook;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use http::{Extensions, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;

use crate::attribution::headers::RequestCommit;
use crate::audit::AuditLog;
use crate::broker::{Broker, gogs, otlp};
use crate::config::{AuditRequirement, Config, SecretError, UpstreamProtocol};
use crate::identity::challenge::{self, Challenge, ChallengeKind};
use crate::identity::{Authenticator, Caller, IdentityBuildError, Outcome, assertion, cookies};
use crate::telemetry::metrics::{Metrics, RouteMetrics, UpstreamErrorKind, method_index};
use body::Guarded;
use client::ClientBuildError;
use downstream::{Downstream, InFlight};
use error::ProxyError;
use headers::{ForwardingFacts, X_REQUEST_ID};
use host::HostRef;
use response::{ResponseBody, error_response};
use route::{Route, RouteTable};

/// Why a configuration could not be made into a runtime (the running one then stays).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Client(#[from] ClientBuildError),
    #[error(transparent)]
    Identity(#[from] IdentityBuildError),
    #[error("route {route}: {error}")]
    Secret { route: String, error: SecretError },
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Hooks(#[from] crate::webhook::HooksBuildError),
}

/// Everything derived from one configuration, swapped as a whole on reload.
pub struct Runtime {
    pub config: Arc<Config>,
    pub routes: RouteTable,
    pub identity: Arc<Authenticator>,
    pub policy: Arc<crate::policy::PolicyStore>,
    /// Webhook sources and receivers, secrets loaded.
    pub hooks: Option<Arc<crate::webhook::Hooks>>,
    /// Metrics for requests refused before a route was chosen.
    pub unrouted: RouteMetrics,
}

impl Runtime {
    /// Builds routes, clients, brokers and the authenticator; reads secrets and keys. Makes no
    /// network calls (see [`Runtime::start`]).
    pub fn build(
        config: Config,
        metrics: &Metrics,
        revocations: &Arc<crate::identity::revocation::Revocations>,
    ) -> Result<Runtime, RuntimeError> {
        Ok(Runtime {
            routes: RouteTable::build(&config, metrics)?,
            identity: Arc::new(Authenticator::build(
                &config.identity,
                metrics.identity.clone(),
                revocations.clone(),
            )?),
            policy: {
                let store = crate::policy::PolicyStore::load(
                    config.policy.as_ref().map(|p| p.dir.as_path()),
                    crate::policy::compile::known_routes(&config),
                )?;
                metrics.policy_rules.set(store.current().rule_count as i64);
                Arc::new(store)
            },
            unrouted: metrics.for_route("-"),
            hooks: match &config.webhooks {
                Some(w) => Some(Arc::new(crate::webhook::Hooks::build(w)?)),
                None => None,
            },
            config: Arc::new(config),
        })
    }

    /// Starts background work: provider discovery and key refresh.
    pub fn start(&self) {
        self.identity.start();
    }
}

/// The gateway: shared by every connection.
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    pub metrics: Arc<Metrics>,
    pub audit: AuditLog,
    pub webhooks: Option<webhook::WebhookService>,
    /// The commits OTLP exports are attributed to (empty without `[webhooks]`).
    commits: Arc<crate::attribution::CommitCache>,
    /// Exports the gateway's own spans (`[telemetry.traces]`).
    tracer: Option<crate::telemetry::traces::Tracer>,
    exports: audit_export::Exports,
    draining: AtomicBool,
}

/// A refusal or failure, with the route when one had been chosen (for metrics).
struct Failure {
    error: ProxyError,
    route: Option<Arc<Route>>,
}

impl From<ProxyError> for Failure {
    fn from(error: ProxyError) -> Self {
        Failure { error, route: None }
    }
}

/// What one request is about, once its host is known.
pub struct RequestContext<'a> {
    pub down: &'a Downstream,
    pub rt: &'a Runtime,
    pub trusted: bool,
    pub request_id: &'a HeaderValue,
    /// Canonical `host[:port]`, as the client addressed the gateway.
    pub host: HeaderValue,
    pub trace: &'a trace::RequestTrace,
}

impl RequestContext<'_> {
    pub fn host_str(&self) -> &str {
        self.host.to_str().unwrap_or("")
    }
}

impl Gateway {
    pub fn new(
        runtime: Runtime,
        metrics: Arc<Metrics>,
        audit: AuditLog,
        webhooks: Option<webhook::WebhookService>,
        tracer: Option<crate::telemetry::traces::Tracer>,
    ) -> Arc<Gateway> {
        if let Some(w) = &webhooks {
            w.hooks.store(runtime.hooks.clone());
        }
        let commits = match &webhooks {
            Some(w) => w.commits.clone(),
            None => Arc::new(crate::attribution::CommitCache::new(None)),
        };
        Arc::new(Gateway {
            tracer,
            commits,
            webhooks,
            runtime: ArcSwap::from_pointee(runtime),
            metrics,
            audit,
            exports: audit_export::Exports::default(),
            draining: AtomicBool::new(false),
        })
    }

    /// Installs a new configuration; requests already running finish with the old one.
    pub fn install(&self, runtime: Runtime) {
        runtime.start();
        match &self.webhooks {
            Some(w) => {
                let before = self.runtime.load();
                let old = before.config.webhooks.as_ref().map(|c| &c.store);
                let new = runtime.config.webhooks.as_ref().map(|c| &c.store);
                if old != new {
                    tracing::warn!(
                        "webhooks.store changed (or [webhooks] was removed): the store in use stays until the next restart"
                    );
                }
                w.hooks.store(runtime.hooks.clone());
            }
            None if runtime.hooks.is_some() => {
                tracing::warn!(
                    "[webhooks] was added by a reload: it takes effect at the next restart"
                );
            }
            None => {}
        }
        self.runtime.store(Arc::new(runtime));
    }

    pub fn tracer(&self) -> Option<&crate::telemetry::traces::Tracer> {
        self.tracer.as_ref()
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Readiness turns 503 so load balancers stop sending new work.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Answers one request. Never fails: every problem becomes a response.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        down: &Downstream,
    ) -> Response<ResponseBody> {
        let start = Instant::now();
        let time = std::time::SystemTime::now();
        let mut in_flight = Some(down.activity.begin());
        let rt = self.runtime.load_full();
        let method = req.method().clone();
        let uri = req.uri().clone();
        let trusted = down.is_trusted(&rt.config.server.trusted_proxies);
        let request_id = match req.headers().get(&X_REQUEST_ID) {
            Some(v) if trusted && headers::usable_request_id(v) => v.clone(),
            _ => request_id::generate(),
        };
        // Errors on OTLP routes are answered in the client's encoding; gRPC is left alone.
        let content_type = req.headers().get(header::CONTENT_TYPE);
        let otlp_json = ingest::wants_json(content_type);
        let grpc = content_type.is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let trace = trace::RequestTrace::begin(req.headers(), self.tracer.as_ref());
        // An HTTP/1 request asking to switch protocols (`Upgrade`, `CONNECT`) turns the framing
        // guard off for the rest of the connection; whoever answers it, the connection closes
        // after the answer unless it really switched, so nothing unchecked can follow.
        let guard_off = req.version() <= Version::HTTP_11
            && (method == Method::CONNECT || req.headers().contains_key(header::UPGRADE));
        let arrival = audit::Arrival::new(
            time,
            start,
            &request_id,
            down.peer,
            &down.peer_text,
            trusted,
            &method,
            uri.path(),
            req.headers(),
            &trace,
        );
        let mut draft = audit::Draft {
            span: trace.span(
                self.tracer.as_ref(),
                method.as_str(),
                down.peer_ip.to_str().unwrap_or("unknown"),
            ),
            ..audit::Draft::default()
        };

        let outcome = self
            .proxy(req, down, &rt, &mut in_flight, &arrival, &mut draft)
            .await;
        let (mut resp, route, failure) = match outcome {
            Ok((resp, route)) => (resp, route, None),
            Err(Failure { error, route }) => {
                (error_response(&error, &request_id), route, Some(error))
            }
        };
        if let Some(marker) = in_flight.take() {
            let body = std::mem::replace(resp.body_mut(), ResponseBody::empty());
            *resp.body_mut() = body.with_in_flight(marker);
        }
        if route
            .as_ref()
            .is_some_and(|r| r.config.kind == crate::config::RouteKind::Otlp)
            && !grpc
            && resp.status().as_u16() >= 400
            && !resp.body().is_upstream()
        {
            resp = ingest::as_rpc_status(resp, otlp_json);
        }

        if guard_off && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let status = resp.status();
        self.record(&mut resp, &mut draft, &arrival, failure.as_ref());
        let metrics = route.as_ref().map_or(&rt.unrouted, |r| &r.metrics);
        metrics.observe(
            method_index(&method),
            status.as_u16(),
            start.elapsed().as_secs_f64(),
        );
        match &failure {
            Some(ProxyError::Upstream(kind)) => metrics.upstream_error(*kind),
            Some(e) => self.metrics.rejected(e.reason()),
            None => {}
        }
        if rt.config.server.access_log || failure.is_some() {
            let route_name = route.as_ref().map_or("-", |r| r.config.name.as_str());
            let id = request_id.to_str().unwrap_or("-");
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            match &failure {
                None => {
                    tracing::info!(target: "gatehouse::access", request_id = id, peer = %down.peer, %method, path = uri.path(), route = route_name, status = status.as_u16(), ms)
                }
                Some(e) => {
                    tracing::warn!(target: "gatehouse::access", request_id = id, peer = %down.peer, %method, path = uri.path(), route = route_name, status = status.as_u16(), ms, reason = %e)
                }
            }
        }
        resp
    }

    /// The audit side of a finished exchange: the outcome of a forwarded request (when its
    /// body is done), or the one record of a request the gateway answered itself.
    fn record(
        &self,
        resp: &mut Response<ResponseBody>,
        draft: &mut audit::Draft,
        arrival: &audit::Arrival<'_>,
        failure: Option<&ProxyError>,
    ) {
        if draft.skip {
            return;
        }
        let status = resp.status().as_u16();
        if let Some(written) = draft.written.take() {
            let mut outcome = audit::OutcomeRecorder::new(
                self.audit.clone(),
                written,
                arrival.request_id,
                draft.route.as_deref().unwrap_or("-"),
                arrival.start,
                status,
                draft.progress.take(),
            )
            .note(draft.outcome_detail.take())
            .with_span(draft.span.take());
            match failure {
                Some(e) => outcome.finish(Some(&e.to_string())),
                None => {
                    let body = std::mem::replace(resp.body_mut(), ResponseBody::empty());
                    *resp.body_mut() = body.with_outcome(outcome);
                }
            }
            return;
        }
        match (failure, draft.decision.is_some()) {
            // Nothing was forwarded, whatever the policy said.
            (Some(e), true) => draft.refuse_after_policy(&e.to_string()),
            (Some(e), false) => draft.deny(&e.to_string()),
            (None, true) => {}
            (None, false) if status < 400 => draft.allow("answered by the gateway"),
            (None, false) => draft.deny("answered by the gateway"),
        }
        if let Some(e) = failure {
            // The failure is the detail; after what the stages noted, if anything.
            draft.detail = Some(match draft.detail.take() {
                Some(d) => format!("{d}: {e}"),
                None => e.to_string(),
            });
        }
        let record = audit::record(draft, arrival, Some(status));
        if let Some(span) = draft.span.take() {
            // Server spans: only 5xx answers are errors.
            let error = failure.filter(|_| status >= 500).map(|e| e.to_string());
            span.finish(status, 0, 0, error.as_deref());
        }
        self.audit.submit(record);
    }

    async fn proxy(
        &self,
        req: Request<Incoming>,
        down: &Downstream,
        rt: &Runtime,
        in_flight: &mut Option<InFlight>,
        arrival: &audit::Arrival<'_>,
        draft: &mut audit::Draft,
    ) -> Result<(Response<ResponseBody>, Option<Arc<Route>>), Failure> {
        let (trusted, request_id) = (arrival.trusted, arrival.request_id);
        // Stage 1: framing. Violations seen below hyper close the connection.
        if let Some(why) = down.framing.violation() {
            return Err(ProxyError::Framing(why).into());
        }
        match *req.method() {
            Method::CONNECT => return Err(ProxyError::MethodNotAllowed("CONNECT").into()),
            Method::TRACE => return Err(ProxyError::MethodNotAllowed("TRACE").into()),
            _ => {}
        }

        // Stage 2: one canonical host, agreeing with the target and the TLS server name.
        let host = request_host(&req, down)?;
        // Stage 3: the path is checked, never rewritten: what is routed is what is forwarded.
        let path = req.uri().path();
        path::check_path(path).map_err(ProxyError::from)?;
        let canonical_host = if host.canonical {
            match req.uri().authority() {
                Some(a) => HeaderValue::from_str(a.as_str()).ok(),
                None => req.headers().get(header::HOST).cloned(),
            }
        } else {
            None
        }
        .unwrap_or_else(|| {
            HeaderValue::from_str(&host.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
        });
        let ctx = RequestContext {
            down,
            rt,
            trusted,
            request_id,
            host: canonical_host,
            trace: arrival.trace,
        };

        // Stage 4: the gateway's own endpoints, then the route.
        if let Some(svc) = &self.webhooks
            && rt.config.webhooks.as_ref().is_some_and(|w| w.path == path)
        {
            draft.route = Some(crate::policy::GATEWAY_ROUTE.to_string());
            // The rare, large futures are boxed, so every request's future stays small
            // (it is moved, and so copied, a few times per request).
            let resp =
                Box::pin(webhook::serve(req, &ctx, arrival, draft, &self.audit, svc)).await?;
            return Ok((resp, None));
        }
        if path == audit_export::PATH {
            draft.route = Some(crate::policy::GATEWAY_ROUTE.to_string());
            let resp = Box::pin(audit_export::serve(
                req,
                &ctx,
                arrival,
                draft,
                &self.audit,
                &self.exports,
            ))
            .await?;
            return Ok((resp, None));
        }
        if endpoints::is_gateway_path(path) {
            draft.route = Some(crate::policy::GATEWAY_ROUTE.to_string());
            return Ok((
                Box::pin(endpoints::serve(req, &ctx, self.draining(), draft)).await?,
                None,
            ));
        }
        let route = rt.routes.lookup(&host, path)?.clone();
        draft.route = Some(route.config.name.clone());
        let (mut parts, body) = req.into_parts();
        if let Some(len) = headers::content_length(&parts.headers)? {
            let limit = route.config.max_body_bytes;
            if len > limit {
                return Err(Failure {
                    error: ProxyError::BodyTooLarge(limit),
                    route: Some(route),
                });
            }
        }

        // Stage 5: who is calling. Consumes `Authorization` and the gateway's own cookies.
        let caller = if route.config.auth.public {
            None
        } else {
            match rt
                .identity
                .authenticate(&mut parts, route.config.auth, ctx.host_str())
                .await
            {
                Outcome::Caller(c) => {
                    draft.caller(&c.identity, c.method);
                    Some(c)
                }
                Outcome::Challenge(c) => {
                    if c.refused {
                        draft.kind = crate::audit::Kind::TokenRejected;
                    }
                    draft.deny(&c.reason);
                    return Ok((
                        Box::pin(challenge_response(c, &parts, &ctx)).await,
                        Some(route),
                    ));
                }
            }
        };

        // Stage 6: what the request is, and whether the policy lets this caller do it.
        let pushed;
        let inbound = match authorize::authorize(&parts, body, &ctx, &route, caller.as_ref()).await
        {
            Ok(authorize::Verdict::Forward {
                inbound,
                request,
                decision,
                policy,
            }) => {
                draft.request(&request);
                pushed = pushed_refs(&request);
                match &decision {
                    Some(d) => draft.decided(d, &policy),
                    None => draft.allow("public route"),
                }
                inbound
            }
            Ok(authorize::Verdict::Refused {
                response,
                request,
                decision,
                policy,
            }) => {
                draft.request(&request);
                draft.decided(&decision, &policy);
                return Ok((*response, Some(route)));
            }
            Err(error) => {
                return Err(Failure {
                    error,
                    route: Some(route),
                });
            }
        };

        // A Gogs page for a caller Gogs cannot be told about (a username it would not
        // accept) is refused now, before the decision goes on record as allowed.
        if let (Broker::Gogs(_), Some(c)) = (&route.broker, &caller)
            && let Err(why) = gogs::admissible(&parts, &c.identity)
        {
            return Err(Failure {
                error: ProxyError::Forbidden(why),
                route: Some(route),
            });
        }

        // The commit this request is about: the one a push sends, the one an OTLP export
        // names (below), or the one a client names in X-Commit-Sha if the store knows it.
        let mut commit = RequestCommit {
            known: None,
            pushed: pushed
                .as_ref()
                .and_then(|(repo, refs)| refs.first().map(|(_, sha)| (sha.clone(), repo.clone()))),
        };
        if let Some(sha) = parts
            .headers
            .get(&crate::attribution::headers::CLIENT_COMMIT)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|s| crate::attribution::looks_like_sha(s))
        {
            let want = crate::attribution::Want::Sha(sha.to_ascii_lowercase());
            commit.known = self.commits.resolve(&[want]).await.pop().flatten();
        }
        // OTLP exports gain their commit attributes (malformed ones are refused here).
        let inbound = if route.config.kind == crate::config::RouteKind::Otlp {
            let enduser = caller.as_ref().map(|c| c.identity.subject.as_str());
            match ingest::enrich(
                &mut parts,
                inbound,
                &rt.config.attribution,
                &self.commits,
                route.config.max_body_bytes,
                enduser,
            )
            .await
            {
                Ok((inbound, attributed)) => {
                    if let Some(a) = &attributed {
                        let m = &self.metrics.attribution;
                        if a.resources > 0 {
                            m.attributed.inc();
                            m.resources.inc_by(a.resources as u64);
                            draft.detail = Some(attributed_note(a));
                        } else {
                            m.unattributed.inc();
                        }
                    }
                    if let Some(c) = attributed.and_then(|a| a.commits.first().cloned()) {
                        commit.known = Some(c);
                    }
                    inbound
                }
                Err(error) => {
                    if let ProxyError::Unreadable(_) = error {
                        self.metrics.attribution.refused.inc();
                    }
                    return Err(Failure {
                        error,
                        route: Some(route),
                    });
                }
            }
        } else {
            inbound
        };

        // Stage 7: the decision is on record before anything is forwarded.
        match route.config.audit {
            AuditRequirement::Required => {
                let what = audit::RouteRequest(&route.config.name);
                if let Err(error) = audit::write_first(&self.audit, draft, arrival, what).await {
                    return Err(Failure {
                        error,
                        route: Some(route),
                    });
                }
            }
            AuditRequirement::BestEffort => {
                let record = audit::record(draft, arrival, None);
                draft.written = Some(record.id.clone());
                self.audit.submit(record);
            }
        }
        draft.progress = inbound.progress.clone();
        if let (Some(svc), Some((repo, refs)), Some(c)) = (&self.webhooks, pushed, &caller) {
            svc.note_push(
                repo,
                refs,
                crate::webhook::store::Pusher {
                    subject: c.identity.subject.clone(),
                    username: c.identity.username.clone(),
                    email: c.identity.email.clone(),
                },
            );
        }

        if let (Some(span), Some((sha, repo))) = (draft.span.as_mut(), commit_facts(&commit)) {
            span.set("vcs.ref.head.revision", sha);
            span.set("gatehouse.commit.repository", repo);
        }
        match forward(parts, inbound, &ctx, &route, caller, in_flight, &commit).await {
            Ok(resp) => Ok((resp, Some(route))),
            Err(error) => Err(Failure {
                error,
                route: Some(route),
            }),
        }
    }
}

/// What the request record says about an attributed export.
fn attributed_note(a: &crate::attribution::Enriched) -> String {
    let commits: Vec<String> = a
        .commits
        .iter()
        .map(|c| format!("{} ({})", c.sha, c.repo))
        .collect();
    format!(
        "{} resource(s) attributed to {}",
        a.resources,
        commits.join(", ")
    )
}

fn commit_facts(c: &RequestCommit) -> Option<(String, String)> {
    match (&c.known, &c.pushed) {
        (Some(k), _) => Some((k.sha.clone(), k.repo.clone())),
        (None, Some((sha, repo))) => Some((sha.clone(), repo.clone())),
        (None, None) => None,
    }
}

/// The repository and `(ref, new SHA)` of an authorised push, for webhook attribution.
fn pushed_refs(request: &crate::policy::PolicyRequest) -> Option<(String, Vec<(String, String)>)> {
    let crate::policy::Resource::Gogs {
        action: crate::policy::GogsAction::GitPush,
        repo: Some(repo),
        refs,
    } = &request.resource
    else {
        return None;
    };
    let refs: Vec<(String, String)> = refs
        .iter()
        .filter(|r| r.kind != crate::policy::UpdateKind::Delete && !r.new.is_empty())
        .map(|r| (r.name.clone(), r.new.clone()))
        .collect();
    (!refs.is_empty()).then(|| (repo.clone(), refs))
}

/// The gateway's answer to an unauthenticated request: sign-in redirect, 401 or 503.
pub(crate) async fn challenge_response(
    c: Challenge,
    parts: &Parts,
    ctx: &RequestContext<'_>,
) -> Response<ResponseBody> {
    tracing::debug!(reason = %c.reason, path = parts.uri.path(), "authentication required");
    if let ChallengeKind::Login { return_to } = &c.kind
        && let Some(oidc) = &ctx.rt.identity.oidc
    {
        match oidc.begin(ctx.host_str(), return_to).await {
            Ok((location, cookie)) => {
                let mut r = Response::new(ResponseBody::empty());
                *r.status_mut() = StatusCode::FOUND;
                let h = r.headers_mut();
                if let Ok(loc) = HeaderValue::from_str(&location) {
                    h.insert(header::LOCATION, loc);
                }
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                h.insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
                h.append(header::SET_COOKIE, cookie);
                for clear in &c.clear {
                    h.append(header::SET_COOKIE, clear.clone());
                }
                return r;
            }
            Err(e) => {
                ctx.rt.identity.metrics.login("unavailable");
                let unavailable = challenge::provider_unavailable(parts, &e.to_string());
                return challenge::respond(&unavailable, false, ctx.request_id);
            }
        }
    }
    challenge::respond(&c, challenge::is_git(parts), ctx.request_id)
}

/// The request's host: exactly one `Host` (HTTP/1) or `:authority` (HTTP/2), agreeing with an
/// absolute-form target, the listener's scheme and the TLS server name.
fn request_host<'r>(
    req: &'r Request<Incoming>,
    down: &Downstream,
) -> Result<HostRef<'r>, ProxyError> {
    let default_port = down.default_port();
    let mut values = req.headers().get_all(header::HOST).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ProxyError::DuplicateHost);
    }
    let from_header = match first {
        None => None,
        Some(v) => Some(HostRef::parse(
            v.to_str().map_err(|_| host::HostError::BadChar)?,
            default_port,
        )?),
    };
    if req
        .uri()
        .scheme_str()
        .is_some_and(|scheme| scheme != down.proto())
    {
        return Err(ProxyError::AuthorityMismatch);
    }
    let from_target = match req.uri().authority() {
        None => None,
        Some(a) => Some(HostRef::parse(a.as_str(), default_port)?),
    };
    let host = match (from_target, from_header) {
        (Some(t), Some(h)) if t.same_as(&h) => h,
        (Some(_), Some(_)) => return Err(ProxyError::AuthorityMismatch),
        (Some(t), None) if req.version() == Version::HTTP_2 => t,
        (Some(_), None) | (None, None) => return Err(ProxyError::MissingHost),
        (None, Some(h)) => h,
    };
    if down.sni.as_deref().is_some_and(|sni| !host.name_eq(sni)) {
        return Err(ProxyError::SniMismatch);
    }
    Ok(host)
}

/// Stages 8 to 11: header hygiene, brokering, the upstream exchange, and the response.
async fn forward(
    mut parts: Parts,
    inbound: authorize::Inbound,
    ctx: &RequestContext<'_>,
    route: &Arc<Route>,
    caller: Option<Caller>,
    in_flight: &mut Option<InFlight>,
    commit: &RequestCommit,
) -> Result<Response<ResponseBody>, ProxyError> {
    let rc = &route.config;

    // Stage 8: header hygiene. Any Upgrade header stops the HTTP/1 framing check; such a
    // connection is closed after the response unless it really switched protocols.
    let asked_upgrade = parts.headers.contains_key(header::UPGRADE);
    let intent = headers::strip_hop_by_hop(&mut parts.headers)?;
    headers::strip_spoofable(&mut parts.headers, ctx.trusted);
    headers::set_forwarding(
        &mut parts.headers,
        ForwardingFacts {
            peer_ip: &ctx.down.peer_ip,
            proto: ctx.down.proto(),
            host: ctx.host.clone(),
            trusted_peer: ctx.trusted,
        },
    );
    parts
        .headers
        .insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
    // The gateway's span is the upstream's parent; who and which commit travel along.
    ctx.trace.propagate(&mut parts.headers);
    let user = caller.as_ref().map(|c| {
        c.identity
            .username
            .as_deref()
            .unwrap_or(&c.identity.subject)
    });
    crate::attribution::headers::apply(&mut parts.headers, user, commit);

    // Stage 9: brokering: what this upstream is told about the caller, and with what credential.
    let sessions = ctx.rt.identity.sessions.as_deref();
    let mut gogs_surface = None;
    match (&route.broker, &caller) {
        (Broker::Gogs(g), Some(c)) => {
            if let Some(answer) = gogs::takeover(&parts) {
                return Ok(answer);
            }
            gogs_surface = Some(
                gogs::request(&mut parts, g, c, ctx.host_str(), sessions)
                    .map_err(ProxyError::Forbidden)?,
            );
        }
        (Broker::Gogs(g), None) => {
            parts.headers.remove(g.user_header());
            strip_own_cookies(&mut parts);
        }
        (Broker::Otlp(o), _) => {
            otlp::request(&mut parts, o);
            strip_own_cookies(&mut parts);
        }
        (Broker::None, _) => strip_own_cookies(&mut parts),
    }
    if let (true, Some(c), Some(a)) = (rc.identity_assertion, &caller, &ctx.rt.identity.assertion)
        && let Some(v) = a.sign(
            &c.identity,
            c.method,
            &rc.name,
            ctx.request_id.to_str().unwrap_or(""),
        )
    {
        parts.headers.insert(assertion::HEADER, v);
    }

    let host_value = if rc.preserve_host {
        ctx.host.clone()
    } else {
        route.upstream_host.clone()
    };
    parts.headers.insert(header::HOST, host_value);

    // Upgrades: only WebSocket, only where the route allows it, only from HTTP/1.1.
    let client_upgrade = parts.extensions.remove::<OnUpgrade>();
    let upgrade = match (intent.upgrade, client_upgrade) {
        (Some(value), Some(on))
            if rc.websocket
                && upgrade::is_websocket(&value)
                && parts.version == Version::HTTP_11 =>
        {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, value);
            Some(on)
        }
        _ => None,
    };
    if rc.upstream.protocol == UpstreamProtocol::Http2 && intent.te_trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }

    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    // Plain HTTP/1 exchanges run on connections this request's task drives; HTTP/2 upstreams
    // and upgrades go through the pooled client, which needs the absolute target.
    let inline = rc.upstream.protocol == UpstreamProtocol::Http1 && upgrade.is_none();
    parts.uri = if inline {
        Uri::from(path_and_query)
    } else {
        Uri::builder()
            .scheme(rc.upstream.scheme.clone())
            .authority(rc.upstream.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| ProxyError::Framing("request target cannot be forwarded"))?
    };
    parts.version = Version::HTTP_11;
    parts.extensions = Extensions::new();

    // Stage 10: the upstream exchange, streamed, with the response timed from the end of the
    // upload.
    let authorize::Inbound {
        body: forward_body,
        progress,
    } = inbound;
    let started = Instant::now();
    let request = Request::from_parts(parts, forward_body);
    let mut pending = std::pin::pin!(async {
        if inline {
            exchange::send(&route.upstream, &ctx.down.upstream_slot, request)
                .await
                .map_err(|e| {
                    tracing::debug!(route = %rc.name, error = ?e, "upstream exchange failed");
                    let connecting = matches!(e, exchange::ExchangeError::Connect(_));
                    client::classify_error(&e, connecting)
                })
        } else {
            route
                .client
                .request(request)
                .await
                .map(|resp| resp.map(exchange::UpstreamBody::pooled))
                .map_err(|e| {
                    tracing::debug!(route = %rc.name, error = ?e, "upstream exchange failed");
                    client::classify(&e)
                })
        }
    });
    let mut deadline = started + rc.timeouts.response;
    let mut resp = loop {
        tokio::select! {
            result = &mut pending => break result?,
            () = tokio::time::sleep_until(deadline) => {
                let due = progress.as_ref().map_or(started, |p| p.last().max(started)) + rc.timeouts.response;
                if Instant::now() >= due {
                    return Err(ProxyError::Upstream(UpstreamErrorKind::Timeout));
                }
                deadline = due;
            }
        }
    };

    // Stage 11: the response on its way back.
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let upstream_upgrade = if switching {
        resp.extensions_mut().remove::<OnUpgrade>()
    } else {
        None
    };
    let (mut parts, body) = resp.into_parts();
    headers::strip_response(&mut parts.headers, switching);
    parts
        .headers
        .insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
    parts.extensions = Extensions::new();
    if let Some(c) = &caller {
        if let Some(surface) = gogs_surface {
            gogs::response(
                &mut parts.headers,
                surface,
                &c.identity,
                ctx.host_str(),
                sessions,
            );
        }
        for cookie in &c.set_cookies {
            parts.headers.append(header::SET_COOKIE, cookie.clone());
        }
    }
    match (switching, upgrade, upstream_upgrade) {
        (true, Some(client_side), Some(upstream_side)) => {
            upgrade::spawn_tunnel(
                client_side,
                upstream_side,
                rc.name.clone(),
                ctx.down.conn_guard.clone(),
            );
            return Ok(Response::from_parts(parts, ResponseBody::empty()));
        }
        // 101 to a request the gateway did not upgrade: the upstream is confused.
        (true, _, _) => return Err(ProxyError::Upstream(UpstreamErrorKind::Reset)),
        (false, _, _) => {
            if asked_upgrade {
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
        }
    }
    let body = Guarded::new(body, u64::MAX, rc.timeouts.body_read, true);
    Ok(Response::from_parts(
        parts,
        ResponseBody::upstream(body, route.clone(), in_flight.take()),
    ))
}

/// Removes the gateway's own cookies from what goes upstream.
fn strip_own_cookies(parts: &mut Parts) {
    if !parts.headers.contains_key(header::COOKIE) {
        return;
    }
    let kept = cookies::filtered(&parts.headers, |name, value| {
        (!name.starts_with(cookies::OWN_PREFIX)).then(|| format!("{name}={value}"))
    });
    parts.headers.remove(header::COOKIE);
    if let Some(v) = kept {
        parts.headers.insert(header::COOKIE, v);
    }
}
