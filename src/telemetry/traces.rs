//! The gateway's own spans, exported as OTLP/HTTP protobuf.
//!
//! Decisions:
//! - **Hand-built spans, not the SDK's global tracer.** A request's span is built once, at the
//!   end of the request, from facts the gateway already holds (route, decision, status,
//!   bytes, timings), so there is no span object to carry through every stage and no global
//!   state to install or swap on reload. The exporter reuses the gateway's own TLS client
//!   setup and CA handling (`proxy::client::root_store`) instead of a second HTTP stack.
//! - **Recording never waits.** [`Tracer::record`] pushes into a queue whose memory is
//!   reserved at start, so it costs a lock held for one push and never allocates; a full
//!   queue drops the span and counts it. Losing spans under pressure is better than slowing
//!   requests down.
//! - **Parent-based sampling.** A caller that sent a `traceparent` has decided: the gateway
//!   follows it. Only new traces are sampled by ratio, on the trace id, exactly like the
//!   OpenTelemetry SDK's `TraceIdRatioBased` (the low 8 bytes, big-endian, shifted right
//!   once, compared with `ratio * 2^63`), so any SDK-based service with the same ratio makes
//!   the same decision for the same trace.
//! - **One background task** batches by size or delay, groups spans by resource (the
//!   gateway's own, or one given by the caller, e.g. a deployment marker on behalf of the
//!   deployed service), and posts each batch. Retries are few and short: 429, 502, 503, 504
//!   and broken connections, at most three attempts, waiting what `Retry-After` asks (at
//!   most a few seconds). A timed-out attempt is not retried, since it may have been received
//!   and retrying would hold the queue for several timeouts. Anything else drops the batch
//!   and counts its spans as failed.
//! - **The exporter is not traced.** Its requests carry no `traceparent` and make no spans,
//!   so exporting can never feed itself.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prost::Message;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::metrics::TraceMetrics;
use super::trace_context::TraceContext;
use crate::config::{SecretError, SecretRef, TracesConfig};
use crate::proxy::client::{ClientBuildError, root_store};

/// The instrumentation scope of every span the gateway emits.
pub const SCOPE_NAME: &str = "gatehouse";

const ACCESS_TOKEN_HEADER: HeaderName = HeaderName::from_static("lightstep-access-token");
const PROTOBUF: HeaderValue = HeaderValue::from_static("application/x-protobuf");
const MAX_ATTEMPTS: u32 = 3;
/// `Retry-After` is honoured up to this; a longer wait would stall every later batch.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);
const RETRY_BASE: Duration = Duration::from_millis(250);
/// An OTLP answer is a small message; anything bigger is not read.
const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// Sampled: every span the gateway records is one it decided to keep.
const SPAN_FLAGS_SAMPLED: u32 = 0x01;

/// What a span did, from the point of view of its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Internal,
    Client,
    Producer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpanStatus {
    Unset,
    Ok,
    Error(String),
}

/// The attribute values the gateway has a use for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
    StrArray(Vec<String>),
}

impl From<&str> for AttrValue {
    fn from(v: &str) -> AttrValue {
        AttrValue::Str(v.to_string())
    }
}

impl From<String> for AttrValue {
    fn from(v: String) -> AttrValue {
        AttrValue::Str(v)
    }
}

impl From<i64> for AttrValue {
    fn from(v: i64) -> AttrValue {
        AttrValue::Int(v)
    }
}

impl From<bool> for AttrValue {
    fn from(v: bool) -> AttrValue {
        AttrValue::Bool(v)
    }
}

impl From<Vec<String>> for AttrValue {
    fn from(v: Vec<String>) -> AttrValue {
        AttrValue::StrArray(v)
    }
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub status: SpanStatus,
    pub attributes: Vec<(String, AttrValue)>,
    /// `None`: the gateway's own resource. `Some`: the span is emitted on behalf of another
    /// service (a deployment marker names the deployed service and its new version); share
    /// one `Arc` between spans of the same service so batches group them cheaply.
    pub resource: Option<Arc<Vec<(String, AttrValue)>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    #[error("telemetry.traces.access_token: {0}")]
    Token(#[from] SecretError),
    #[error("telemetry.traces.access_token: {0} holds characters an HTTP header cannot carry")]
    TokenNotHeader(SecretRef),
    #[error("telemetry.traces: {0}")]
    Client(#[from] ClientBuildError),
    #[error("telemetry.traces: TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// The decision `TraceIdRatioBased` makes, precomputed.
#[derive(Debug, Clone, Copy)]
struct Sampler {
    always: bool,
    bound: u64,
}

impl Sampler {
    fn new(ratio: f64) -> Sampler {
        // As the SDK computes it; NaN and negative ratios sample nothing.
        Sampler {
            always: ratio >= 1.0,
            bound: (ratio.max(0.0) * (1u64 << 63) as f64) as u64,
        }
    }

    fn sample(self, trace_id: &[u8; 16]) -> bool {
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        self.always || (u64::from_be_bytes(low) >> 1) < self.bound
    }
}

type ExportClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The queue between requests and the export task.
struct Shared {
    state: Mutex<State>,
    wake: Notify,
    max_queue: usize,
    batch_size: usize,
    /// Spans the task has taken from the queue and not yet counted, so a shutdown that has
    /// to stop the task can still count them.
    held: AtomicU64,
}

struct State {
    spans: VecDeque<SpanRecord>,
    /// Set once shutting down: the time by which the last batch must be out.
    closing: Option<Instant>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn deadline(&self) -> Option<Instant> {
        self.state().closing
    }

    fn close(&self, deadline: Instant) {
        let mut s = self.state();
        s.closing = Some(s.closing.map_or(deadline, |d| d.min(deadline)));
        drop(s);
        self.wake.notify_one();
    }
}

/// Records the gateway's spans and exports them in the background. Cheap to clone.
#[derive(Clone)]
pub struct Tracer {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    sampler: Sampler,
    metrics: Arc<TraceMetrics>,
    worker: Mutex<Option<JoinHandle<()>>>,
    endpoint: Uri,
    export_timeout: Duration,
}

impl Drop for Inner {
    /// The last handle is gone without a shutdown: flush what is queued, bounded as one
    /// export would be.
    fn drop(&mut self) {
        self.shared.close(Instant::now() + self.export_timeout);
    }
}

impl fmt::Debug for Tracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracer")
            .field("endpoint", &self.inner.endpoint)
            .finish_non_exhaustive()
    }
}

impl Tracer {
    /// Reads the access token, builds the client and starts the export task on `handle`.
    pub fn start(
        cfg: &TracesConfig,
        handle: tokio::runtime::Handle,
        metrics: Arc<TraceMetrics>,
    ) -> Result<Tracer, TracesError> {
        let token = match &cfg.access_token {
            None => None,
            Some(r) => {
                let secret = r.load()?;
                let mut value = HeaderValue::from_str(secret.expose())
                    .map_err(|_| TracesError::TokenNotHeader(r.clone()))?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let client = client(cfg)?;
        let max_queue = cfg.max_queue.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                spans: VecDeque::with_capacity(max_queue),
                closing: None,
            }),
            wake: Notify::new(),
            max_queue,
            batch_size: cfg.batch_size.clamp(1, max_queue),
            held: AtomicU64::new(0),
        });
        let exporter = Exporter {
            client,
            endpoint: cfg.endpoint.clone(),
            token,
            timeout: cfg.export_timeout,
            batch_delay: cfg.batch_delay,
            resource: gateway_resource(cfg),
            scope: InstrumentationScope {
                name: SCOPE_NAME.to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                ..Default::default()
            },
            metrics: metrics.clone(),
            failing: false,
        };
        let worker = handle.spawn(run(shared.clone(), exporter));
        Ok(Tracer {
            inner: Arc::new(Inner {
                shared,
                sampler: Sampler::new(cfg.sample_ratio),
                metrics,
                worker: Mutex::new(Some(worker)),
                endpoint: cfg.endpoint.clone(),
                export_timeout: cfg.export_timeout,
            }),
        })
    }

    /// Whether to record the trace `trace_id`: the caller's decision when it sent one, else
    /// the ratio, decided on `trace_id` (the parent's, or the new one the gateway will use).
    pub fn sample(&self, parent: Option<&TraceContext>, trace_id: &[u8; 16]) -> bool {
        match parent {
            Some(p) => p.sampled,
            None => self.inner.sampler.sample(trace_id),
        }
    }

    /// Queues a finished span. Never waits for the export (the lock is only ever held for
    /// one push or one swap of queues) and never allocates: a full queue drops the span.
    pub fn record(&self, span: SpanRecord) {
        let shared = &self.inner.shared;
        let mut state = shared.state();
        if state.closing.is_some() || state.spans.len() >= shared.max_queue {
            drop(state);
            self.inner.metrics.spans_dropped.inc();
            return;
        }
        state.spans.push_back(span);
        let full = state.spans.len() == shared.batch_size;
        drop(state);
        if full {
            shared.wake.notify_one();
        }
    }

    /// Stops taking spans and sends what is queued, giving up at `deadline`; what could not
    /// be sent by then is counted as failed.
    pub async fn shutdown(&self, deadline: Duration) {
        let until = Instant::now() + deadline;
        let shared = &self.inner.shared;
        shared.close(until);
        let worker = self
            .inner
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut worker) = worker else { return };
        // The task bounds itself by the deadline; the margin lets it count what it gave up.
        let margin = Duration::from_millis(100);
        if tokio::time::timeout_at(until + margin, &mut worker)
            .await
            .is_err()
        {
            worker.abort();
            let _ = worker.await;
            let left = shared.state().spans.len() as u64;
            let held = shared.held.swap(0, Ordering::Relaxed);
            self.inner.metrics.spans_failed.inc_by(left + held);
            tracing::warn!(
                spans = left + held,
                "trace export did not finish before the shutdown deadline"
            );
        }
    }
}

/// A client like the upstream ones: the endpoint's CA bundle or the system roots, and
/// plain HTTP only when the URL says so.
fn client(cfg: &TracesConfig) -> Result<ExportClient, TracesError> {
    let roots = root_store(cfg.ca_file.as_deref(), "telemetry.traces")?;
    let tls = rustls::ClientConfig::builder_with_provider(crate::server::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.export_timeout));
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
    let builder = if cfg.endpoint.scheme() == Some(&http::uri::Scheme::HTTPS) {
        builder.https_only()
    } else {
        builder.https_or_http()
    };
    let connector = builder.enable_http1().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(2)
        .build(connector))
}

fn gateway_resource(cfg: &TracesConfig) -> Resource {
    Resource {
        attributes: vec![
            key_value("service.name", AttrValue::Str(cfg.service_name.clone())),
            key_value(
                "service.version",
                AttrValue::Str(env!("CARGO_PKG_VERSION").to_string()),
            ),
            key_value(
                "service.instance.id",
                AttrValue::Str(cfg.instance_id.clone()),
            ),
        ],
        ..Default::default()
    }
}

/// The export task: wakes when a batch is full or `batch_delay` has passed, and once more
/// to flush at shutdown.
async fn run(shared: Arc<Shared>, mut exporter: Exporter) {
    let mut taken = VecDeque::with_capacity(shared.max_queue);
    loop {
        if shared.deadline().is_none() {
            tokio::select! {
                () = shared.wake.notified() => {}
                () = tokio::time::sleep(exporter.batch_delay) => {}
            }
        }
        let closing = {
            let mut state = shared.state();
            // Both queues were reserved with `max_queue` slots: swapping keeps it that way.
            std::mem::swap(&mut state.spans, &mut taken);
            state.closing.is_some()
        };
        shared.held.store(taken.len() as u64, Ordering::Relaxed);
        while !taken.is_empty() {
            let n = taken.len().min(shared.batch_size);
            let batch: Vec<SpanRecord> = taken.drain(..n).collect();
            exporter.export(batch, &shared).await;
            shared.held.fetch_sub(n as u64, Ordering::Relaxed);
        }
        if closing {
            return;
        }
    }
}

struct Exporter {
    client: ExportClient,
    endpoint: Uri,
    token: Option<HeaderValue>,
    timeout: Duration,
    batch_delay: Duration,
    resource: Resource,
    scope: InstrumentationScope,
    metrics: Arc<TraceMetrics>,
    /// Failures are logged when they start and when they end, not once a second.
    failing: bool,
}

#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("the endpoint answered {0}")]
    Status(StatusCode),
    #[error("{0}")]
    Transport(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the shutdown deadline passed")]
    Deadline,
}

/// What the endpoint said to one attempt.
enum Answer {
    /// 2xx, with the spans it said it rejected (OTLP partial success).
    Accepted {
        rejected: u64,
        message: String,
    },
    Refused(StatusCode, Option<Duration>),
}

impl Exporter {
    async fn export(&mut self, batch: Vec<SpanRecord>, shared: &Shared) {
        let n = batch.len() as u64;
        let body = Bytes::from(self.encode(batch).encode_to_vec());
        match self.send(body, shared).await {
            Ok((rejected, message)) => {
                let rejected = rejected.min(n);
                self.metrics.exports_ok.inc();
                self.metrics.spans_exported.inc_by(n - rejected);
                self.metrics.spans_failed.inc_by(rejected);
                if rejected > 0 {
                    tracing::warn!(rejected, %message, "trace endpoint rejected some spans");
                }
                if self.failing {
                    self.failing = false;
                    tracing::info!(endpoint = %self.endpoint, "trace export works again");
                }
            }
            Err(e) => {
                self.metrics.exports_error.inc();
                self.metrics.spans_failed.inc_by(n);
                if self.failing {
                    tracing::debug!(endpoint = %self.endpoint, error = %e, spans = n, "trace export failed");
                } else {
                    self.failing = true;
                    tracing::warn!(endpoint = %self.endpoint, error = %e, spans = n, "trace export failed; spans are dropped until it works again");
                }
            }
        }
    }

    /// Up to [`MAX_ATTEMPTS`], each bounded by the export timeout and the shutdown deadline.
    async fn send(&self, body: Bytes, shared: &Shared) -> Result<(u64, String), ExportError> {
        let mut attempt = 1;
        loop {
            let now = Instant::now();
            let mut limit = now + self.timeout;
            if let Some(deadline) = shared.deadline() {
                if now >= deadline {
                    return Err(ExportError::Deadline);
                }
                limit = limit.min(deadline);
            }
            let (error, wait) =
                match tokio::time::timeout_at(limit, self.attempt(body.clone())).await {
                    Err(_) if shared.deadline().is_some_and(|d| limit >= d) => {
                        return Err(ExportError::Deadline);
                    }
                    Err(_) => return Err(ExportError::Timeout(self.timeout)),
                    Ok(Ok(Answer::Accepted { rejected, message })) => {
                        return Ok((rejected, message));
                    }
                    Ok(Ok(Answer::Refused(status, after))) if retryable(status) => {
                        (ExportError::Status(status), after)
                    }
                    Ok(Ok(Answer::Refused(status, _))) => {
                        return Err(ExportError::Status(status));
                    }
                    Ok(Err(e)) => (ExportError::Transport(e), None),
                };
            if attempt >= MAX_ATTEMPTS {
                return Err(error);
            }
            let wait = wait
                .unwrap_or(RETRY_BASE * (1 << (attempt - 1)))
                .min(MAX_RETRY_WAIT);
            if shared
                .deadline()
                .is_some_and(|d| Instant::now() + wait >= d)
            {
                return Err(error);
            }
            tracing::debug!(attempt, error = %error, ?wait, "trace export will be retried");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn attempt(&self, body: Bytes) -> Result<Answer, String> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.endpoint.clone();
        let headers = req.headers_mut();
        headers.insert(header::CONTENT_TYPE, PROTOBUF);
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("gatehouse/", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(token) = &self.token {
            headers.insert(ACCESS_TOKEN_HEADER, token.clone());
        }
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| error_chain(&e))?;
        let status = resp.status();
        let after = retry_after(resp.headers().get(header::RETRY_AFTER));
        // Read (bounded) either way, so the connection can be reused.
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if !status.is_success() {
            return Ok(Answer::Refused(status, after));
        }
        let (rejected, message) = ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map_or((0, String::new()), |p| {
                (
                    u64::try_from(p.rejected_spans).unwrap_or(0),
                    p.error_message,
                )
            });
        Ok(Answer::Accepted { rejected, message })
    }

    fn encode(&self, batch: Vec<SpanRecord>) -> ExportTraceServiceRequest {
        type Group = (Option<Arc<Vec<(String, AttrValue)>>>, Vec<Span>);
        let mut groups: Vec<Group> = Vec::new();
        for mut record in batch {
            let resource = record.resource.take();
            let span = span_proto(record);
            match groups
                .iter_mut()
                .find(|(r, _)| same_resource(r.as_ref(), resource.as_ref()))
            {
                Some((_, spans)) => spans.push(span),
                None => groups.push((resource, vec![span])),
            }
        }
        let resource_spans = groups
            .into_iter()
            .map(|(resource, spans)| ResourceSpans {
                resource: Some(match resource {
                    None => self.resource.clone(),
                    Some(attrs) => Resource {
                        attributes: attrs.iter().map(|(k, v)| key_value(k, v.clone())).collect(),
                        ..Default::default()
                    },
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(self.scope.clone()),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest { resource_spans }
    }
}

fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(v: Option<&HeaderValue>) -> Option<Duration> {
    let text = v?.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// The error and its causes on one line: hyper's own message alone rarely says why.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn same_resource(
    a: Option<&Arc<Vec<(String, AttrValue)>>>,
    b: Option<&Arc<Vec<(String, AttrValue)>>>,
) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
        _ => false,
    }
}

fn span_proto(r: SpanRecord) -> Span {
    let kind = match r.kind {
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Internal => span::SpanKind::Internal,
        SpanKind::Client => span::SpanKind::Client,
        SpanKind::Producer => span::SpanKind::Producer,
    };
    let status = match r.status {
        SpanStatus::Unset => None,
        SpanStatus::Ok => Some(Status {
            code: status::StatusCode::Ok as i32,
            message: String::new(),
        }),
        SpanStatus::Error(message) => Some(Status {
            code: status::StatusCode::Error as i32,
            message,
        }),
    };
    Span {
        trace_id: r.trace_id.to_vec(),
        span_id: r.span_id.to_vec(),
        parent_span_id: r.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        flags: SPAN_FLAGS_SAMPLED,
        name: r.name,
        kind: kind as i32,
        start_time_unix_nano: unix_nanos(r.start),
        end_time_unix_nano: unix_nanos(r.end),
        attributes: r
            .attributes
            .into_iter()
            .map(|(k, v)| KeyValue {
                key: k,
                value: Some(any_value(v)),
                ..Default::default()
            })
            .collect(),
        status,
        ..Default::default()
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn key_value(key: &str, value: AttrValue) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(any_value(value)),
        ..Default::default()
    }
}

fn any_value(v: AttrValue) -> AnyValue {
    let value = match v {
        AttrValue::Str(s) => Value::StringValue(s),
        AttrValue::Int(i) => Value::IntValue(i),
        AttrValue::Bool(b) => Value::BoolValue(b),
        AttrValue::StrArray(items) => Value::ArrayValue(ArrayValue {
            values: items
                .into_iter()
                .map(|s| AnyValue {
                    value: Some(Value::StringValue(s)),
                })
                .collect(),
        }),
    };
    AnyValue { value: Some(value) }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;

    use http::{HeaderMap, Response};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
    use tokio::net::TcpListener;
    use tokio::runtime::Handle;

    use super::*;
    use crate::telemetry::trace_context::{new_span_id, new_trace_id};

    /// How the test endpoint answers, one entry per request; 200 once the script is done.
    #[derive(Clone)]
    struct Reply {
        status: u16,
        retry_after: Option<&'static str>,
        body: Bytes,
    }

    fn reply(status: u16) -> Reply {
        Reply {
            status,
            retry_after: None,
            body: Bytes::new(),
        }
    }

    type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

    /// An OTLP endpoint on 127.0.0.1 that records every request.
    async fn endpoint(script: Vec<Reply>) -> (SocketAddr, Received, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Received = Arc::default();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let log = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (log, script) = (log.clone(), script.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (log, script) = (log.clone(), script.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            log.lock().unwrap().push((parts.headers, body));
                            let r = script.lock().unwrap().pop_front().unwrap_or(reply(200));
                            let mut resp = Response::new(Full::new(r.body));
                            *resp.status_mut() = StatusCode::from_u16(r.status).unwrap();
                            if let Some(after) = r.retry_after {
                                resp.headers_mut()
                                    .insert(header::RETRY_AFTER, HeaderValue::from_static(after));
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, received, task)
    }

    /// An endpoint that accepts connections and never answers.
    async fn silent_endpoint() -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        (addr, accepted, task)
    }

    fn config(endpoint: &str) -> TracesConfig {
        TracesConfig {
            endpoint: endpoint.parse().unwrap(),
            ca_file: None,
            access_token: None,
            sample_ratio: 1.0,
            service_name: "gatehouse-test".to_string(),
            instance_id: "replica-1".to_string(),
            max_queue: 2048,
            batch_size: 512,
            // Long: in these tests batches leave when full or at shutdown.
            batch_delay: Duration::from_secs(3600),
            export_timeout: Duration::from_secs(5),
        }
    }

    fn start(cfg: &TracesConfig) -> (Tracer, Arc<TraceMetrics>) {
        let metrics = Arc::new(TraceMetrics::unregistered().unwrap());
        let tracer = Tracer::start(cfg, Handle::current(), metrics.clone()).unwrap();
        (tracer, metrics)
    }

    fn span(name: &str) -> SpanRecord {
        let start = SystemTime::now();
        SpanRecord {
            trace_id: new_trace_id(),
            span_id: new_span_id(),
            parent_span_id: None,
            name: name.to_string(),
            kind: SpanKind::Internal,
            start,
            end: start + Duration::from_millis(3),
            status: SpanStatus::Unset,
            attributes: Vec::new(),
            resource: None,
        }
    }

    fn counts(m: &TraceMetrics) -> [u64; 5] {
        [
            m.spans_exported.get(),
            m.spans_dropped.get(),
            m.spans_failed.get(),
            m.exports_ok.get(),
            m.exports_error.get(),
        ]
    }

    fn attrs(kvs: &[KeyValue]) -> HashMap<String, Value> {
        kvs.iter()
            .map(|kv| {
                let v = kv.value.clone().and_then(|v| v.value).unwrap();
                (kv.key.clone(), v)
            })
            .collect()
    }

    fn string(v: &str) -> Value {
        Value::StringValue(v.to_string())
    }

    #[test]
    fn ratio_sampling_matches_the_sdk_on_the_low_trace_id_bytes() {
        let s = Sampler::new(0.1);
        let bound = (0.1 * (1u64 << 63) as f64) as u64;
        let id = |low: u64| {
            let mut t = [0xab; 16];
            t[8..].copy_from_slice(&low.to_be_bytes());
            t
        };
        assert!(s.sample(&id((bound - 1) << 1)));
        // The lowest bit is shifted out, as in the SDK.
        assert!(s.sample(&id(((bound - 1) << 1) | 1)));
        assert!(!s.sample(&id(bound << 1)));
        assert!(!s.sample(&id(u64::MAX)));
        // The high eight bytes play no part.
        let mut t = id((bound - 1) << 1);
        t[..8].copy_from_slice(&[0xff; 8]);
        assert!(s.sample(&t));
        assert!(Sampler::new(1.0).sample(&id(u64::MAX)));
        assert!(!Sampler::new(0.0).sample(&id(0)));
        assert!(!Sampler::new(f64::NAN).sample(&id(0)));

        let s = Sampler::new(0.25);
        let mut sampled = 0;
        for _ in 0..20_000 {
            let t = new_trace_id();
            let decision = s.sample(&t);
            assert_eq!(
                decision,
                s.sample(&t),
                "the decision depends on the id only"
            );
            sampled += usize::from(decision);
        }
        // 5,000 expected; the standard deviation is about 61.
        assert!((4_500..5_500).contains(&sampled), "{sampled}");
    }

    #[tokio::test]
    async fn a_callers_decision_wins_over_the_ratio() {
        let parent = |sampled| TraceContext {
            trace_id: [0x11; 16],
            parent_span_id: [0x22; 8],
            sampled,
            tracestate: None,
        };
        let mut cfg = config("http://127.0.0.1:9/v1/traces");
        cfg.sample_ratio = 0.0;
        let (never, _) = start(&cfg);
        assert!(never.sample(Some(&parent(true)), &[0x11; 16]));
        assert!(!never.sample(None, &[0x11; 16]));
        cfg.sample_ratio = 1.0;
        let (always, _) = start(&cfg);
        assert!(!always.sample(Some(&parent(false)), &[0x11; 16]));
        assert!(always.sample(None, &[0x11; 16]));
        never.shutdown(Duration::from_millis(100)).await;
        always.shutdown(Duration::from_millis(100)).await;
    }

    #[tokio::test]
    async fn spans_reach_the_endpoint_as_otlp_protobuf_grouped_by_resource() {
        let (addr, received, server) = endpoint(Vec::new()).await;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let mut cfg = config(&format!("http://{addr}/v1/traces"));
        cfg.access_token = Some(SecretRef::File(token));
        let (tracer, metrics) = start(&cfg);

        let trace_id = new_trace_id();
        let caller = new_span_id();
        let mut server_span = span("GET gogs");
        server_span.trace_id = trace_id;
        server_span.parent_span_id = Some(caller);
        server_span.kind = SpanKind::Server;
        server_span.status = SpanStatus::Error("upstream timeout".to_string());
        server_span.attributes = vec![
            ("http.request.method".to_string(), "GET".into()),
            ("http.response.status_code".to_string(), 504i64.into()),
            ("gatehouse.public".to_string(), false.into()),
            (
                "gatehouse.groups".to_string(),
                vec!["dev".to_string(), "ops".to_string()].into(),
            ),
        ];
        let mut child = span("policy");
        child.trace_id = trace_id;
        child.parent_span_id = Some(server_span.span_id);

        let shop = |sha: &str| {
            Arc::new(vec![
                ("service.name".to_string(), AttrValue::from("shop")),
                ("service.version".to_string(), AttrValue::from(sha)),
                (
                    "deployment.environment.name".to_string(),
                    AttrValue::from("production"),
                ),
            ])
        };
        let mut marker = span("deploy shop");
        marker.kind = SpanKind::Producer;
        marker.status = SpanStatus::Ok;
        marker.resource = Some(shop("a1b2c3d"));
        // Equal contents in another Arc: still the same resource.
        let mut marker2 = span("deploy shop again");
        marker2.kind = SpanKind::Client;
        marker2.resource = Some(shop("a1b2c3d"));

        let server_id = server_span.span_id;
        let times = (server_span.start, server_span.end);
        tracer.record(server_span);
        tracer.record(marker);
        tracer.record(child);
        tracer.record(marker2);
        tracer.shutdown(Duration::from_secs(5)).await;
        server.abort();

        let received = received.lock().unwrap();
        assert_eq!(received.len(), 1, "one batch");
        let (headers, body) = &received[0];
        assert_eq!(headers[header::CONTENT_TYPE], "application/x-protobuf");
        assert_eq!(headers["lightstep-access-token"], "s3cret");
        assert!(
            headers.get("traceparent").is_none(),
            "exports are not traced"
        );
        let req = ExportTraceServiceRequest::decode(body.clone()).unwrap();
        assert_eq!(req.resource_spans.len(), 2);

        let ours = &req.resource_spans[0];
        let resource = attrs(&ours.resource.as_ref().unwrap().attributes);
        assert_eq!(resource["service.name"], string("gatehouse-test"));
        assert_eq!(
            resource["service.version"],
            string(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(resource["service.instance.id"], string("replica-1"));
        assert_eq!(ours.scope_spans.len(), 1);
        assert_eq!(
            ours.scope_spans[0].scope.as_ref().unwrap().name,
            "gatehouse"
        );
        let spans = &ours.scope_spans[0].spans;
        assert_eq!(
            spans.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["GET gogs", "policy"]
        );
        let s = &spans[0];
        assert_eq!(s.trace_id, trace_id);
        assert_eq!(s.span_id, server_id);
        assert_eq!(s.parent_span_id, caller);
        assert_eq!(s.kind, span::SpanKind::Server as i32);
        assert_eq!(s.flags, 1);
        assert_eq!(s.start_time_unix_nano, unix_nanos(times.0));
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 3_000_000);
        let st = s.status.as_ref().unwrap();
        assert_eq!(st.code, status::StatusCode::Error as i32);
        assert_eq!(st.message, "upstream timeout");
        let a = attrs(&s.attributes);
        assert_eq!(a["http.request.method"], string("GET"));
        assert_eq!(a["http.response.status_code"], Value::IntValue(504));
        assert_eq!(a["gatehouse.public"], Value::BoolValue(false));
        let Value::ArrayValue(groups) = &a["gatehouse.groups"] else {
            panic!("{:?}", a["gatehouse.groups"]);
        };
        assert_eq!(
            groups.values,
            [
                AnyValue {
                    value: Some(string("dev"))
                },
                AnyValue {
                    value: Some(string("ops"))
                }
            ]
        );
        let c = &spans[1];
        assert_eq!(c.trace_id, trace_id);
        assert_eq!(c.parent_span_id, server_id);
        assert_eq!(c.kind, span::SpanKind::Internal as i32);
        assert_eq!(c.status, None, "unset");

        let theirs = &req.resource_spans[1];
        let resource = attrs(&theirs.resource.as_ref().unwrap().attributes);
        assert_eq!(resource["service.name"], string("shop"));
        assert_eq!(resource["service.version"], string("a1b2c3d"));
        assert_eq!(
            resource["deployment.environment.name"],
            string("production")
        );
        assert!(!resource.contains_key("service.instance.id"));
        let spans = &theirs.scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].name, "deploy shop");
        assert_eq!(spans[0].kind, span::SpanKind::Producer as i32);
        assert!(spans[0].parent_span_id.is_empty());
        assert_eq!(
            spans[0].status.as_ref().unwrap().code,
            status::StatusCode::Ok as i32
        );
        assert_eq!(spans[1].kind, span::SpanKind::Client as i32);

        // exported, dropped, failed, exports ok, exports error
        assert_eq!(counts(&metrics), [4, 0, 0, 1, 0]);
    }

    #[tokio::test]
    async fn a_full_batch_leaves_at_once_and_a_partial_one_waits() {
        let (addr, received, server) = endpoint(Vec::new()).await;
        let mut cfg = config(&format!("http://{addr}/v1/traces"));
        cfg.batch_size = 3;
        let (tracer, metrics) = start(&cfg);
        for i in 0..3 {
            tracer.record(span(&format!("s{i}")));
        }
        // A full batch leaves without waiting for the (hour-long) delay.
        for _ in 0..500 {
            if metrics.exports_ok.get() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(metrics.exports_ok.get(), 1);
        tracer.record(span("s3"));
        tracer.record(span("s4"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(metrics.exports_ok.get(), 1, "two spans wait for the delay");
        tracer.shutdown(Duration::from_secs(5)).await;
        server.abort();
        let sizes: Vec<usize> = received
            .lock()
            .unwrap()
            .iter()
            .map(|(_, body)| {
                ExportTraceServiceRequest::decode(body.clone())
                    .unwrap()
                    .resource_spans[0]
                    .scope_spans[0]
                    .spans
                    .len()
            })
            .collect();
        assert_eq!(sizes, [3, 2]);
        assert_eq!(counts(&metrics), [5, 0, 0, 2, 0]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_drops_spans_without_blocking() {
        let (addr, accepted, server) = silent_endpoint().await;
        let mut cfg = config(&format!("http://{addr}/v1/traces"));
        cfg.max_queue = 4;
        cfg.batch_size = 1;
        cfg.export_timeout = Duration::from_secs(30);
        let (tracer, metrics) = start(&cfg);

        // The first span leaves at once and its export hangs on the silent endpoint.
        tracer.record(span("first"));
        for _ in 0..500 {
            if accepted.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        let began = std::time::Instant::now();
        for i in 0..20 {
            tracer.record(span(&format!("s{i}")));
        }
        let took = began.elapsed();
        assert!(took < Duration::from_millis(100), "recording took {took:?}");
        assert_eq!(metrics.spans_dropped.get(), 16, "four fit in the queue");

        // The export in flight ignores the deadline: shutdown stops it and counts its span
        // and the queued ones as failed.
        let began = std::time::Instant::now();
        tracer.shutdown(Duration::from_millis(300)).await;
        let took = began.elapsed();
        assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
        assert_eq!(counts(&metrics), [0, 16, 5, 0, 0]);

        // After shutdown nothing is taken.
        tracer.record(span("late"));
        assert_eq!(metrics.spans_dropped.get(), 17);
        server.abort();
    }

    #[tokio::test]
    async fn shutdown_gives_up_queued_batches_at_the_deadline() {
        let (addr, _accepted, server) = silent_endpoint().await;
        let mut cfg = config(&format!("http://{addr}/v1/traces"));
        cfg.max_queue = 2;
        cfg.batch_size = 1;
        let (tracer, metrics) = start(&cfg);
        // The export task cannot run between these (one thread, no await): two are queued.
        for i in 0..10 {
            tracer.record(span(&format!("s{i}")));
        }
        assert_eq!(metrics.spans_dropped.get(), 8);
        let began = std::time::Instant::now();
        tracer.shutdown(Duration::from_millis(200)).await;
        assert!(began.elapsed() < Duration::from_secs(2));
        // Both batches are given up by the task itself at the deadline.
        assert_eq!(counts(&metrics), [0, 8, 2, 0, 2]);
        server.abort();
    }

    #[tokio::test]
    async fn a_503_with_retry_after_is_retried_and_delivered_once() {
        let first = Reply {
            status: 503,
            retry_after: Some("0"),
            body: Bytes::new(),
        };
        let (addr, received, server) = endpoint(vec![first]).await;
        let (tracer, metrics) = start(&config(&format!("http://{addr}/v1/traces")));
        tracer.record(span("once"));
        tracer.shutdown(Duration::from_secs(5)).await;
        server.abort();
        let received = received.lock().unwrap();
        assert_eq!(received.len(), 2);
        assert_eq!(received[0].1, received[1].1, "the same batch again");
        assert_eq!(counts(&metrics), [1, 0, 0, 1, 0]);
    }

    #[tokio::test]
    async fn retry_after_is_waited_for() {
        let first = Reply {
            status: 429,
            retry_after: Some("1"),
            body: Bytes::new(),
        };
        let (addr, received, server) = endpoint(vec![first]).await;
        let (tracer, metrics) = start(&config(&format!("http://{addr}/v1/traces")));
        tracer.record(span("later"));
        let began = std::time::Instant::now();
        tracer.shutdown(Duration::from_secs(5)).await;
        let took = began.elapsed();
        server.abort();
        assert!(took >= Duration::from_secs(1), "{took:?}");
        assert_eq!(received.lock().unwrap().len(), 2);
        assert_eq!(counts(&metrics), [1, 0, 0, 1, 0]);
    }

    #[tokio::test]
    async fn retries_stop_after_three_attempts_and_other_statuses_are_not_retried() {
        let busy = Reply {
            status: 429,
            retry_after: Some("0"),
            body: Bytes::new(),
        };
        let (addr, received, server) =
            endpoint(vec![busy.clone(), busy.clone(), busy, reply(400)]).await;
        let (tracer, metrics) = start(&config(&format!("http://{addr}/v1/traces")));
        tracer.record(span("given up"));
        tracer.shutdown(Duration::from_secs(5)).await;
        assert_eq!(received.lock().unwrap().len(), 3);
        assert_eq!(counts(&metrics), [0, 0, 1, 0, 1]);

        // The next answer in the script is 400: one attempt, the batch is dropped.
        let (tracer, metrics) = start(&config(&format!("http://{addr}/v1/traces")));
        tracer.record(span("refused"));
        tracer.shutdown(Duration::from_secs(5)).await;
        assert_eq!(received.lock().unwrap().len(), 4);
        assert_eq!(counts(&metrics), [0, 0, 1, 0, 1]);
        server.abort();
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_fails_the_batch() {
        // Bound and closed again: nothing listens there now.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let (tracer, metrics) = start(&config(&format!("http://{addr}/v1/traces")));
        tracer.record(span("nowhere"));
        tracer.shutdown(Duration::from_secs(5)).await;
        assert_eq!(counts(&metrics), [0, 0, 1, 0, 1]);
    }

    #[tokio::test]
    async fn partial_success_counts_rejected_spans_as_failed() {
        let answer = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 1,
                error_message: "span too old".to_string(),
            }),
        };
        let ok = Reply {
            status: 200,
            retry_after: None,
            body: Bytes::from(answer.encode_to_vec()),
        };
        let (addr, _received, server) = endpoint(vec![ok]).await;
        let (tracer, metrics) = start(&config(&format!("http://{addr}/v1/traces")));
        tracer.record(span("a"));
        tracer.record(span("b"));
        tracer.shutdown(Duration::from_secs(5)).await;
        server.abort();
        assert_eq!(counts(&metrics), [1, 0, 1, 1, 0]);
    }

    #[tokio::test]
    async fn a_missing_token_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config("http://127.0.0.1:9/v1/traces");
        cfg.access_token = Some(SecretRef::File(dir.path().join("absent")));
        let metrics = Arc::new(TraceMetrics::unregistered().unwrap());
        let err = Tracer::start(&cfg, Handle::current(), metrics).unwrap_err();
        assert!(matches!(err, TracesError::Token(_)), "{err}");
        let token = dir.path().join("token");
        std::fs::write(&token, "bad\ntoken").unwrap();
        cfg.access_token = Some(SecretRef::File(token));
        let metrics = Arc::new(TraceMetrics::unregistered().unwrap());
        let err = Tracer::start(&cfg, Handle::current(), metrics).unwrap_err();
        assert!(!err.to_string().contains("bad"), "{err}");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(retry_after(Some(&v("2"))), Some(Duration::from_secs(2)));
        assert_eq!(
            retry_after(Some(&v("Wed, 21 Oct 2015 07:28:00 GMT"))),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(Some(&v("soon"))), None);
        assert_eq!(retry_after(None), None);
    }
}
