//! The request's place in a distributed trace, and the gateway's own span for it.
//!
//! Every request gets a trace context when it arrives: the caller's `traceparent` continued,
//! or a new trace started. The gateway's span is the parent of whatever the upstream does,
//! so the forwarded `traceparent` names it; the audit record carries the same trace id, so
//! an auditor can go from a record to the trace and back. When `[telemetry.traces]` is set
//! and the trace is sampled, the span is exported when the request is done: its facts (route,
//! identity, classified action, decision) are copied from the audit draft at the moment the
//! record is made, and the outcome (status, bytes) is added when the response ends, from the
//! same place the audit outcome is written.

use std::time::SystemTime;

use http::HeaderMap;
use http::header::HeaderValue;

use super::audit::Draft;
use crate::telemetry::trace_context::{
    self, TraceContext, new_span_id, new_trace_id, to_hex, traceparent_value,
};
use crate::telemetry::traces::{AttrValue, SpanKind, SpanRecord, SpanStatus, Tracer};

/// The request's trace context, decided on arrival.
pub struct RequestTrace {
    pub trace_id: [u8; 16],
    /// The gateway's span (the upstream's parent).
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
    pub tracestate: Option<HeaderValue>,
}

impl RequestTrace {
    pub fn begin(headers: &HeaderMap, tracer: Option<&Tracer>) -> RequestTrace {
        let parent = TraceContext::from_headers(headers);
        let trace_id = parent.as_ref().map_or_else(new_trace_id, |p| p.trace_id);
        let sampled = match tracer {
            Some(t) => t.sample(parent.as_ref(), &trace_id),
            None => parent.as_ref().is_some_and(|p| p.sampled),
        };
        RequestTrace {
            trace_id,
            span_id: new_span_id(),
            parent: parent.as_ref().map(|p| p.parent_span_id),
            sampled,
            tracestate: parent.and_then(|p| p.tracestate),
        }
    }

    pub fn trace_id_hex(&self) -> String {
        to_hex(&self.trace_id)
    }

    /// Sets `traceparent` (and the caller's `tracestate`) on a request going upstream.
    pub fn propagate(&self, headers: &mut HeaderMap) {
        headers.insert(
            trace_context::TRACEPARENT,
            traceparent_value(&self.trace_id, &self.span_id, self.sampled),
        );
        headers.remove(trace_context::TRACESTATE);
        if let Some(ts) = &self.tracestate {
            headers.insert(trace_context::TRACESTATE, ts.clone());
        }
    }

    /// The span to export for this request, when it is sampled and a tracer is configured.
    pub fn span(&self, tracer: Option<&Tracer>, method: &str, peer: &str) -> Option<RequestSpan> {
        let tracer = tracer.filter(|_| self.sampled)?.clone();
        Some(RequestSpan {
            tracer,
            record: SpanRecord {
                trace_id: self.trace_id,
                span_id: self.span_id,
                parent_span_id: self.parent,
                name: method.to_string(),
                kind: SpanKind::Server,
                start: SystemTime::now(),
                end: SystemTime::now(),
                status: SpanStatus::Unset,
                attributes: vec![
                    ("http.request.method".into(), method.into()),
                    ("client.address".into(), peer.into()),
                ],
                resource: None,
            },
        })
    }
}

/// The gateway's span for one request, exported when the request is done.
pub struct RequestSpan {
    tracer: Tracer,
    record: SpanRecord,
}

impl RequestSpan {
    pub fn set(&mut self, key: &str, value: impl Into<AttrValue>) {
        self.record.attributes.push((key.to_string(), value.into()));
    }

    /// Copies what the audit draft knows (called just before the record takes it).
    pub fn facts(&mut self, draft: &Draft, path: &str) {
        self.set("url.path", path);
        if let Some(route) = &draft.route {
            self.record.name = format!("{} {route}", self.record.name);
            self.set("gatehouse.route", route.as_str());
        }
        if let Some(id) = &draft.identity {
            self.set("enduser.id", id.username.as_deref().unwrap_or(&id.subject));
            self.set("gatehouse.auth.method", id.method.as_str());
            if let Some(c) = &id.client_id {
                self.set("gatehouse.client_id", c.as_str());
            }
        }
        if let Some(a) = &draft.action {
            if let Some(k) = &a.kind {
                self.set("gatehouse.action", k.as_str());
            }
            if let Some(r) = &a.repository {
                self.set("vcs.repository.name", r.as_str());
            }
            if !a.refs.is_empty() {
                let updates: Vec<String> = a
                    .refs
                    .iter()
                    .map(|r| {
                        format!(
                            "{} {} {}..{}",
                            r.kind,
                            r.name,
                            or_zeros(&r.old),
                            or_zeros(&r.new)
                        )
                    })
                    .collect();
                self.set("gatehouse.git.ref_updates", updates);
                let shas: Vec<String> = a.refs.iter().map(|r| r.new.clone()).collect();
                self.set("gatehouse.git.new_revisions", shas);
                if a.kind.as_deref() == Some("git_push")
                    && let Some(id) = &draft.identity
                {
                    self.set(
                        "gatehouse.push.verified_pusher",
                        id.username.as_deref().unwrap_or(&id.subject),
                    );
                }
            }
            if !a.services.is_empty() {
                self.set("gatehouse.otlp.services", a.services.clone());
            }
        }
        if let Some(d) = &draft.decision {
            self.set("gatehouse.decision", d.effect.as_str());
            if let Some(rule) = &d.rule {
                self.set("gatehouse.rule", rule.as_str());
            }
        }
    }

    /// Ends the span with the response's status and sizes and hands it to the exporter.
    pub fn finish(mut self, status: u16, bytes_in: u64, bytes_out: u64, error: Option<&str>) {
        self.record.end = SystemTime::now();
        self.set("http.response.status_code", i64::from(status));
        self.set("http.request.body.size", bytes_in as i64);
        self.set("http.response.body.size", bytes_out as i64);
        // Server spans: 5xx and broken responses are errors, 4xx are the client's.
        self.record.status = match error {
            Some(e) => SpanStatus::Error(e.to_string()),
            None if status >= 500 => SpanStatus::Error(format!("status {status}")),
            None => SpanStatus::Unset,
        };
        self.tracer.record(self.record);
    }
}

/// Git's all-zero id for the missing side of a created or deleted ref.
fn or_zeros(sha: &str) -> &str {
    if sha.is_empty() {
        "0000000000000000000000000000000000000000"
    } else {
        sha
    }
}
