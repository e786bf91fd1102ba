//! Recording decisions: what the request path tells the audit log.
//!
//! Each stage notes what it learned in the request's [`Draft`] (route, caller, classified
//! action, decision). A request that is forwarded gets its `request` record written *before*
//! it is forwarded (on `audit = "required"` routes the gateway waits for the write and answers
//! 503 if it fails), and an `outcome` record naming it once the response is done. A request
//! the gateway answers itself (refused, challenged, malformed, a sign-in) gets one record with
//! the status it got. Health and metadata endpoints are not decisions and are not recorded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderMap;
use http::header::HeaderValue;
use tokio::time::Instant;

use super::body::Progress;
use crate::audit::record::{cap, cap_list, timestamp};
use crate::audit::{
    Action, AuditDecision, AuditIdentity, AuditLog, AuditRef, Kind, Record, Source,
};
use crate::identity::{AuthMethod, Identity};
use crate::policy::{self, Decision, GogsAction, PolicyRequest, Resource, Signal};

/// What the stages learned about a request, for its audit record.
pub struct Draft {
    pub kind: Kind,
    /// Health and metadata endpoints are not recorded.
    pub skip: bool,
    pub route: Option<String>,
    pub identity: Option<AuditIdentity>,
    pub action: Option<Action>,
    pub decision: Option<AuditDecision>,
    pub detail: Option<String>,
    /// Id of the `request` record written before forwarding.
    pub written: Option<String>,
    /// The request body's progress (bytes received), for the outcome.
    pub progress: Option<Arc<Progress>>,
    /// What the outcome record should say (an export's summary, a webhook's result).
    pub outcome_detail: Option<String>,
    pub truncated: Vec<String>,
    /// The gateway's own span, when this request is traced.
    pub span: Option<super::trace::RequestSpan>,
}

impl Default for Draft {
    fn default() -> Self {
        Draft {
            kind: Kind::Request,
            skip: false,
            route: None,
            identity: None,
            action: None,
            decision: None,
            detail: None,
            written: None,
            progress: None,
            outcome_detail: None,
            truncated: Vec::new(),
            span: None,
        }
    }
}

impl Draft {
    /// Takes back what a record that could not be written knew, to record the refusal.
    pub fn restore(&mut self, record: Option<Box<Record>>, why: &str) {
        if let Some(r) = record {
            self.identity = r.identity;
            self.action = r.action;
            self.truncated = r.truncated;
        }
        self.deny(&format!("audit log unavailable: {why}"));
    }

    pub fn caller(&mut self, identity: &Identity, method: AuthMethod) {
        let t = &mut self.truncated;
        self.identity = Some(AuditIdentity {
            subject: cap(&identity.subject, "identity.subject", t),
            username: identity
                .username
                .as_deref()
                .map(|u| cap(u, "identity.username", t)),
            email: identity
                .email
                .as_deref()
                .map(|e| cap(e, "identity.email", t)),
            email_verified: identity.email_verified,
            groups: cap_list(&identity.groups, "identity.groups", t),
            method: method.as_str().to_string(),
            client_id: identity
                .client_id
                .as_deref()
                .map(|c| cap(c, "identity.client_id", t)),
            issuer: Some(cap(&identity.issuer, "identity.issuer", t)),
        });
    }

    pub fn request(&mut self, request: &PolicyRequest) {
        self.action = action(request, &mut self.truncated);
    }

    /// A decision of the policy (`policy` is its version).
    pub fn decided(&mut self, decision: &Decision, policy: &str) {
        let t = &mut self.truncated;
        self.decision = Some(AuditDecision {
            effect: decision.effect().to_string(),
            rule: decision.rule.as_deref().map(str::to_string),
            reasons: cap_list(&decision.reasons, "decision.reasons", t),
            policy: Some(if policy.is_empty() { "none" } else { policy }.to_string()),
        });
    }

    /// The gateway let the request through without consulting the policy.
    pub fn allow(&mut self, reason: &str) {
        self.decision = Some(AuditDecision {
            effect: "allow".into(),
            rule: None,
            reasons: vec![reason.to_string()],
            policy: None,
        });
    }

    /// The gateway refused a request the policy had allowed, before anything was forwarded
    /// (a malformed OTLP export): the record says deny, keeping the rule that allowed it.
    pub fn refuse_after_policy(&mut self, reason: &str) {
        let reason = cap(reason, "decision.reasons", &mut self.truncated);
        match &mut self.decision {
            Some(d) if d.effect == "deny" => {}
            Some(d) => {
                d.effect = "deny".into();
                d.reasons.insert(0, reason);
            }
            None => self.deny(&reason),
        }
    }

    /// The gateway refused the request before (or instead of) consulting the policy.
    pub fn deny(&mut self, reason: &str) {
        let reason = cap(reason, "decision.reasons", &mut self.truncated);
        self.decision = Some(AuditDecision {
            effect: "deny".into(),
            rule: None,
            reasons: vec![reason],
            policy: None,
        });
    }
}

/// Writes the request's record and waits until it is written: nothing is done for the request
/// before it is on record. On failure the draft takes back what the record knew, so the
/// refusal (503) is recorded instead, and `what` says in the log what was refused.
pub async fn write_first(
    log: &AuditLog,
    draft: &mut Draft,
    arrival: &Arrival<'_>,
    what: impl std::fmt::Display + Send,
) -> Result<(), super::error::ProxyError> {
    let record = Box::new(record(draft, arrival, None));
    let id = record.id.clone();
    if let Err(refused) = log.write(record).await {
        draft.restore(refused.record, &refused.why.0);
        tracing::error!(error = %refused.why, "{what} refused: its audit record cannot be written");
        return Err(super::error::ProxyError::AuditUnavailable);
    }
    draft.written = Some(id);
    Ok(())
}

fn action(request: &PolicyRequest, t: &mut Vec<String>) -> Option<Action> {
    let (kind, repository, refs, services) = match &request.resource {
        Resource::None => return None,
        Resource::Gogs { action, repo, refs } => (
            match action {
                GogsAction::Web => "web",
                GogsAction::Api => "api",
                GogsAction::GitFetch => "git_fetch",
                GogsAction::GitPush => "git_push",
            },
            repo.as_deref(),
            refs.as_slice(),
            &[][..],
        ),
        Resource::Otlp { signal, services } => (
            match signal {
                Signal::Traces => "otlp_traces",
                Signal::Metrics => "otlp_metrics",
                Signal::Logs => "otlp_logs",
            },
            None,
            &[][..],
            services.as_slice(),
        ),
    };
    if refs.len() > crate::audit::record::MAX_ITEMS {
        t.push("action.refs".into());
    }
    let refs = refs
        .iter()
        .take(crate::audit::record::MAX_ITEMS)
        .map(|r| AuditRef {
            name: cap(&r.name, "action.refs", t),
            kind: match r.kind {
                policy::UpdateKind::Create => "create",
                policy::UpdateKind::Update => "update",
                policy::UpdateKind::Delete => "delete",
            }
            .to_string(),
            old: r.old.clone(),
            new: r.new.clone(),
        })
        .collect();
    Some(Action {
        kind: Some(kind.to_string()),
        repository: repository.map(|r| cap(r, "action.repository", t)),
        refs,
        services: cap_list(services, "action.services", t),
    })
}

/// Facts about the request itself, fixed when it arrives.
pub struct Arrival<'a> {
    pub time: SystemTime,
    pub start: Instant,
    pub request_id: &'a HeaderValue,
    pub peer: SocketAddr,
    /// `peer` as text, formatted once per connection.
    pub peer_text: &'a str,
    pub trusted: bool,
    pub method: &'a http::Method,
    pub path: &'a str,
    trace_id: Option<String>,
    forwarded_for: Option<String>,
    /// The request's place in a trace (continued or started here).
    pub trace: &'a super::trace::RequestTrace,
}

impl<'a> Arrival<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        time: SystemTime,
        start: Instant,
        request_id: &'a HeaderValue,
        peer: SocketAddr,
        peer_text: &'a str,
        trusted: bool,
        method: &'a http::Method,
        path: &'a str,
        headers: &HeaderMap,
        trace: &'a super::trace::RequestTrace,
    ) -> Self {
        Arrival {
            time,
            start,
            request_id,
            peer,
            peer_text,
            trusted,
            method,
            path,
            trace_id: Some(trace.trace_id_hex()),
            trace,
            forwarded_for: if trusted {
                headers
                    .get("x-forwarded-for")
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            } else {
                None
            },
        }
    }
}

/// "a request to route NAME", formatted only if it is refused.
pub struct RouteRequest<'a>(pub &'a str);

impl std::fmt::Display for RouteRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a request to route {}", self.0)
    }
}

/// The `request` record (or the only record, for requests the gateway answers itself).
pub fn record(draft: &mut Draft, arrival: &Arrival<'_>, status: Option<u16>) -> Record {
    let mut span = draft.span.take();
    if let Some(s) = &mut span {
        s.facts(draft, arrival.path);
    }
    draft.span = span;
    let t = &mut draft.truncated;
    let forwarded_for = arrival
        .forwarded_for
        .as_deref()
        .map(|v| cap(v, "source.forwarded_for", t));
    let path = cap(arrival.path, "path", t);
    let request_id = cap(arrival.request_id.to_str().unwrap_or("-"), "request_id", t);
    Record {
        time: timestamp(arrival.time),
        id: new_id(),
        kind: draft.kind.as_str().to_string(),
        request_id: Some(request_id),
        trace_id: arrival.trace_id.clone(),
        identity: draft.identity.take(),
        source: Some(Source {
            addr: arrival.peer_text.to_string(),
            trusted_proxy: arrival.trusted,
            forwarded_for,
        }),
        route: draft.route.clone(),
        method: Some(arrival.method.as_str().to_string()),
        path: Some(path),
        action: draft.action.take(),
        decision: draft.decision.take(),
        status,
        duration_us: status.map(|_| arrival.start.elapsed().as_micros() as u64),
        detail: draft.detail.take(),
        truncated: std::mem::take(&mut draft.truncated),
        ..Default::default()
    }
}

fn new_id() -> String {
    super::request_id::generate_string()
}

/// Writes the `outcome` record of a forwarded request when its response is done (or
/// abandoned): exactly once, from the response body.
pub struct OutcomeRecorder {
    log: AuditLog,
    request_record: String,
    request_id: String,
    route: String,
    start: Instant,
    status: u16,
    bytes_in: Option<Arc<Progress>>,
    bytes_out: u64,
    note: Option<String>,
    done: bool,
    span: Option<super::trace::RequestSpan>,
}

impl OutcomeRecorder {
    pub fn new(
        log: AuditLog,
        request_record: String,
        request_id: &HeaderValue,
        route: &str,
        start: Instant,
        status: u16,
        bytes_in: Option<Arc<Progress>>,
    ) -> Self {
        OutcomeRecorder {
            log,
            request_record,
            request_id: request_id.to_str().unwrap_or("-").to_string(),
            route: route.to_string(),
            start,
            status,
            bytes_in,
            bytes_out: 0,
            note: None,
            done: false,
            span: None,
        }
    }

    /// What the outcome says when the response ends normally.
    pub fn note(mut self, note: Option<String>) -> Self {
        self.note = note;
        self
    }

    /// The request's span, ended with the outcome.
    pub fn with_span(mut self, span: Option<super::trace::RequestSpan>) -> Self {
        self.span = span;
        self
    }

    pub fn sent(&mut self, n: usize) {
        self.bytes_out += n as u64;
    }

    /// The response ended (`detail` says how, when not normally).
    pub fn finish(&mut self, detail: Option<&str>) {
        if self.done {
            return;
        }
        self.done = true;
        let bytes_in = self.bytes_in.as_ref().map_or(0, |p| p.bytes());
        if let Some(span) = self.span.take() {
            span.finish(self.status, bytes_in, self.bytes_out, detail);
        }
        self.log.submit(Record {
            time: timestamp(SystemTime::now()),
            id: new_id(),
            kind: Kind::Outcome.as_str().to_string(),
            request_id: Some(std::mem::take(&mut self.request_id)),
            ref_id: Some(std::mem::take(&mut self.request_record)),
            route: Some(std::mem::take(&mut self.route)),
            status: Some(self.status),
            bytes_in: Some(bytes_in),
            bytes_out: Some(self.bytes_out),
            duration_us: Some(self.start.elapsed().as_micros() as u64),
            detail: detail.map(str::to_string).or_else(|| self.note.take()),
            ..Default::default()
        });
    }
}

impl Drop for OutcomeRecorder {
    fn drop(&mut self) {
        self.finish(Some(
            "the client went away before the response was complete",
        ));
    }
}
