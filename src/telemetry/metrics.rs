//! Prometheus metrics.
//!
//! Label sets on the request path are resolved once per route when the configuration is
//! compiled ([`RouteMetrics`]), so recording a request is a few atomic adds: no hashing,
//! no lock. Methods outside the common set are folded into `OTHER` so a client cannot grow
//! the label space.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Why an upstream exchange failed, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    ConnectTimeout,
    Tls,
    Timeout,
    Reset,
    ResponseBody,
}

impl UpstreamErrorKind {
    const ALL: [UpstreamErrorKind; 6] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::ConnectTimeout,
        UpstreamErrorKind::Tls,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Reset,
        UpstreamErrorKind::ResponseBody,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::ConnectTimeout => "connect_timeout",
            UpstreamErrorKind::Tls => "tls",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::ResponseBody => "response_body",
        }
    }
}

/// Every metric the gateway exports, registered once per process.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    upstream_connections: IntCounterVec,
    rejected: IntCounterVec,
    pub active_connections: IntGauge,
    pub connections: IntCounter,
    tls_handshake_failures: IntCounterVec,
    config_reloads: IntCounterVec,
    certificate_reloads: IntCounterVec,
    pub connection_limit_reached: IntCounter,
    decisions: IntCounterVec,
    policy_reloads: IntCounterVec,
    pub policy_rules: IntGauge,
    pub identity: std::sync::Arc<crate::identity::IdentityMetrics>,
    pub audit: std::sync::Arc<crate::audit::AuditMetrics>,
    pub webhooks: std::sync::Arc<crate::webhook::WebhookMetrics>,
    pub traces: std::sync::Arc<TraceMetrics>,
    pub attribution: std::sync::Arc<crate::attribution::metrics::AttributionMetrics>,
}

/// Pre-resolved handles for one route (or for requests refused before routing).
pub struct RouteMetrics {
    requests: Vec<[IntCounter; 5]>,
    duration: Vec<Histogram>,
    upstream_errors: Vec<IntCounter>,
    /// Policy decisions: [allow, deny].
    decisions: [IntCounter; 2],
}

/// Index of a method in the label set.
pub fn method_index(method: &http::Method) -> usize {
    match *method {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        http::Method::PATCH => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    }
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "gatehouse_http_requests_total",
                "Requests answered, by route, method and status class.",
            ),
            &["route", "method", "status_class"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "gatehouse_http_request_duration_seconds",
                "Time from request head to response head, by route and method.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ]),
            &["route", "method"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "gatehouse_upstream_errors_total",
                "Failed upstream exchanges, by route and kind.",
            ),
            &["route", "kind"],
        )?;
        let upstream_connections = IntCounterVec::new(
            Opts::new(
                "gatehouse_upstream_connections_opened_total",
                "Connections opened to upstreams for HTTP/1 exchanges, by route (reused ones are not counted).",
            ),
            &["route"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "gatehouse_requests_rejected_total",
                "Requests refused by the gateway before forwarding, by reason.",
            ),
            &["reason"],
        )?;
        let active_connections = IntGauge::new(
            "gatehouse_active_connections",
            "Client connections currently open.",
        )?;
        let connections = IntCounter::new(
            "gatehouse_connections_total",
            "Client connections accepted.",
        )?;
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "gatehouse_tls_handshake_failures_total",
                "TLS handshakes with clients that failed, by reason.",
            ),
            &["reason"],
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "gatehouse_config_reloads_total",
                "Configuration reloads, by result.",
            ),
            &["result"],
        )?;
        let certificate_reloads = IntCounterVec::new(
            Opts::new(
                "gatehouse_tls_certificate_reloads_total",
                "Certificate reloads, by result.",
            ),
            &["result"],
        )?;
        let connection_limit_reached = IntCounter::new(
            "gatehouse_connection_limit_reached_total",
            "Times the accept loop waited because max_connections were open.",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(upstream_connections.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(active_connections.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(tls_handshake_failures.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(certificate_reloads.clone()))?;
        registry.register(Box::new(connection_limit_reached.clone()))?;
        let identity = std::sync::Arc::new(crate::identity::IdentityMetrics::new(&registry)?);
        let audit = std::sync::Arc::new(crate::audit::AuditMetrics::new(&registry)?);
        let webhooks = std::sync::Arc::new(crate::webhook::WebhookMetrics::new(&registry)?);
        let traces = std::sync::Arc::new(TraceMetrics::new(&registry)?);
        let attribution = std::sync::Arc::new(
            crate::attribution::metrics::AttributionMetrics::new(&registry)?,
        );
        let decisions = IntCounterVec::new(
            Opts::new(
                "gatehouse_policy_decisions_total",
                "Authorization decisions, by route and effect.",
            ),
            &["route", "effect"],
        )?;
        let policy_reloads = IntCounterVec::new(
            Opts::new(
                "gatehouse_policy_reloads_total",
                "Policy reloads, by result.",
            ),
            &["result"],
        )?;
        let policy_rules =
            IntGauge::new("gatehouse_policy_rules", "Rules in the policy in force.")?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(policy_reloads.clone()))?;
        registry.register(Box::new(policy_rules.clone()))?;
        Ok(Metrics {
            audit,
            webhooks,
            traces,
            attribution,
            decisions,
            policy_reloads,
            policy_rules,
            identity,
            registry,
            requests,
            duration,
            upstream_errors,
            upstream_connections,
            rejected,
            active_connections,
            connections,
            tls_handshake_failures,
            config_reloads,
            certificate_reloads,
            connection_limit_reached,
        })
    }

    /// Counts the HTTP/1 connections a route opens to its upstream.
    pub fn upstream_connections(&self, route: &str) -> IntCounter {
        self.upstream_connections.with_label_values(&[route])
    }

    /// Resolves every label combination a route can produce.
    pub fn for_route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            requests: METHODS
                .iter()
                .map(|m| STATUS_CLASSES.map(|c| self.requests.with_label_values(&[route, m, c])))
                .collect(),
            duration: METHODS
                .iter()
                .map(|m| self.duration.with_label_values(&[route, m]))
                .collect(),
            upstream_errors: UpstreamErrorKind::ALL
                .iter()
                .map(|k| self.upstream_errors.with_label_values(&[route, k.as_str()]))
                .collect(),
            decisions: ["allow", "deny"].map(|e| self.decisions.with_label_values(&[route, e])),
        }
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    pub fn tls_handshake_failed(&self, reason: &str) {
        self.tls_handshake_failures
            .with_label_values(&[reason])
            .inc();
    }

    pub fn config_reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.config_reloads.with_label_values(&[result]).inc();
    }

    pub fn policy_reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.policy_reloads.with_label_values(&[result]).inc();
    }

    pub fn certificate_reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.certificate_reloads.with_label_values(&[result]).inc();
    }

    /// The Prometheus text exposition of every metric.
    /// For metrics registered only when their feature is configured (`[redis]`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding metrics failed: {e}\n"))
    }
}

impl RouteMetrics {
    /// Counts one answered request and its latency.
    pub fn observe(&self, method: usize, status: u16, seconds: f64) {
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        if let Some(row) = self.requests.get(method) {
            row[class].inc();
        }
        if let Some(h) = self.duration.get(method) {
            h.observe(seconds);
        }
    }

    pub fn decision(&self, allowed: bool) {
        self.decisions[usize::from(!allowed)].inc();
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        let i = UpstreamErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(0);
        if let Some(c) = self.upstream_errors.get(i) {
            c.inc();
        }
    }
}

/// The gateway's own span exporter. Handles are resolved at start, so counting a dropped
/// span on the request path is one atomic add.
pub struct TraceMetrics {
    pub spans_exported: IntCounter,
    /// Refused because the queue was full (or the exporter had stopped).
    pub spans_dropped: IntCounter,
    /// Lost with a batch the endpoint did not take.
    pub spans_failed: IntCounter,
    pub exports_ok: IntCounter,
    pub exports_error: IntCounter,
}

impl TraceMetrics {
    pub fn new(registry: &Registry) -> Result<TraceMetrics, prometheus::Error> {
        let (m, spans, exports) = TraceMetrics::build()?;
        registry.register(Box::new(spans))?;
        registry.register(Box::new(exports))?;
        Ok(m)
    }

    /// Metrics nobody scrapes (tests, tools).
    pub fn unregistered() -> Result<TraceMetrics, prometheus::Error> {
        Ok(TraceMetrics::build()?.0)
    }

    fn build() -> Result<(TraceMetrics, IntCounterVec, IntCounterVec), prometheus::Error> {
        let spans = IntCounterVec::new(
            Opts::new(
                "gatehouse_trace_spans_total",
                "The gateway's own spans, by result (exported, dropped: queue full, failed: export failed).",
            ),
            &["result"],
        )?;
        let exports = IntCounterVec::new(
            Opts::new(
                "gatehouse_trace_exports_total",
                "Batches of the gateway's own spans sent to the trace endpoint, by result.",
            ),
            &["result"],
        )?;
        let m = TraceMetrics {
            spans_exported: spans.with_label_values(&["exported"]),
            spans_dropped: spans.with_label_values(&["dropped"]),
            spans_failed: spans.with_label_values(&["failed"]),
            exports_ok: exports.with_label_values(&["ok"]),
            exports_error: exports.with_label_values(&["error"]),
        };
        Ok((m, spans, exports))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_metrics_count_by_method_and_status_class() {
        let m = Metrics::new().unwrap();
        let r = m.for_route("gogs");
        r.observe(method_index(&http::Method::GET), 200, 0.01);
        r.observe(
            method_index(&http::Method::from_bytes(b"PROPFIND").unwrap()),
            404,
            0.01,
        );
        r.upstream_error(UpstreamErrorKind::Timeout);
        let text = m.render();
        assert!(text.contains(
            r#"gatehouse_http_requests_total{method="GET",route="gogs",status_class="2xx"} 1"#
        ));
        assert!(text.contains(
            r#"gatehouse_http_requests_total{method="OTHER",route="gogs",status_class="4xx"} 1"#
        ));
        assert!(text.contains(r#"gatehouse_upstream_errors_total{kind="timeout",route="gogs"} 1"#));
        assert!(text.contains("gatehouse_http_request_duration_seconds_bucket"));
    }

    #[test]
    fn trace_metrics_show_every_result_from_the_start() {
        let m = Metrics::new().unwrap();
        m.traces.spans_dropped.inc();
        let text = m.render();
        assert!(text.contains(r#"gatehouse_trace_spans_total{result="dropped"} 1"#));
        assert!(text.contains(r#"gatehouse_trace_spans_total{result="exported"} 0"#));
        assert!(text.contains(r#"gatehouse_trace_spans_total{result="failed"} 0"#));
        assert!(text.contains(r#"gatehouse_trace_exports_total{result="ok"} 0"#));
        assert!(text.contains(r#"gatehouse_trace_exports_total{result="error"} 0"#));
    }
}
