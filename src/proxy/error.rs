//! Every way the gateway can refuse or fail a request, and the one status each maps to.
//!
//! Clients get a short plain-text body naming the problem and the request id; the cause
//! chain goes to the log. Framing problems also close the connection, since the bytes that
//! follow cannot be trusted to start a new request.

use http::StatusCode;

use super::host::HostError;
use super::path::PathError;
use crate::telemetry::metrics::UpstreamErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("malformed request framing: {0}")]
    Framing(&'static str),
    #[error("bad host: {0}")]
    Host(#[from] HostError),
    #[error("missing Host header")]
    MissingHost,
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("request target and Host header disagree")]
    AuthorityMismatch,
    #[error("TLS server name and Host header disagree")]
    SniMismatch,
    #[error("bad path: {0}")]
    Path(#[from] PathError),
    #[error("the Connection header names {0}, which must reach the upstream")]
    ConnectionNamesEndToEnd(&'static str),
    #[error("method {0} is not accepted by this gateway")]
    MethodNotAllowed(&'static str),
    /// A gateway endpoint answers only `allow` (sent back in `Allow`).
    #[error("this endpoint accepts only {allow}")]
    EndpointMethod { allow: &'static str },
    #[error("no route serves this host")]
    UnknownHost,
    #[error("no route serves this path")]
    NoRoute,
    #[error("no such gateway endpoint")]
    UnknownEndpoint,
    #[error("request body exceeds the route's limit of {0} bytes")]
    BodyTooLarge(u64),
    #[error("request body was not received in time")]
    BodyTimeout,
    #[error("request body is malformed")]
    BodyMalformed,
    #[error("upstream {}", upstream_message(*.0))]
    Upstream(UpstreamErrorKind),
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("request body cannot be read: {0}")]
    Unreadable(String),
    #[error("the audit log cannot be written, and this route forwards nothing unrecorded")]
    AuditUnavailable,
    #[error("bad query: {0}")]
    BadQuery(String),
    #[error("an audit export is already running; try again when it is done")]
    ExportBusy,
    #[error("the audit export failed: {0}")]
    ExportFailed(String),
    #[error("{0} cannot be reached; try again shortly")]
    SharedStoreUnavailable(&'static str),
    #[error("webhook refused: {message}")]
    WebhookRejected { status: u16, message: String },
}

fn upstream_message(kind: UpstreamErrorKind) -> &'static str {
    match kind {
        UpstreamErrorKind::Connect => "refused the connection or could not be reached",
        UpstreamErrorKind::ConnectTimeout => "did not accept the connection in time",
        UpstreamErrorKind::Tls => "TLS handshake failed",
        UpstreamErrorKind::Timeout => "did not answer in time",
        UpstreamErrorKind::Reset => "closed the connection before answering",
        UpstreamErrorKind::ResponseBody => "response broke off",
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        use ProxyError::*;
        match self {
            Framing(_)
            | Host(_)
            | MissingHost
            | DuplicateHost
            | AuthorityMismatch
            | Path(_)
            | ConnectionNamesEndToEnd(_)
            | BodyMalformed => StatusCode::BAD_REQUEST,
            SniMismatch | UnknownHost => StatusCode::MISDIRECTED_REQUEST,
            MethodNotAllowed(_) | EndpointMethod { .. } => StatusCode::METHOD_NOT_ALLOWED,
            NoRoute | UnknownEndpoint => StatusCode::NOT_FOUND,
            BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Upstream(UpstreamErrorKind::ConnectTimeout | UpstreamErrorKind::Timeout) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Upstream(_) => StatusCode::BAD_GATEWAY,
            ShuttingDown | AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Forbidden(_) => StatusCode::FORBIDDEN,
            Unreadable(_) | BadQuery(_) => StatusCode::BAD_REQUEST,
            ExportBusy | SharedStoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ExportFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            WebhookRejected { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST)
            }
        }
    }

    /// Short label for `gatehouse_requests_rejected_total`.
    pub fn reason(&self) -> &'static str {
        use ProxyError::*;
        match self {
            Framing(_) => "framing",
            Host(_) | MissingHost | DuplicateHost => "host",
            AuthorityMismatch => "authority_mismatch",
            SniMismatch => "sni_mismatch",
            Path(_) => "path",
            ConnectionNamesEndToEnd(_) => "connection_header",
            MethodNotAllowed(_) | EndpointMethod { .. } => "method",
            UnknownHost => "unknown_host",
            NoRoute | UnknownEndpoint => "no_route",
            BodyTooLarge(_) => "body_too_large",
            BodyTimeout => "body_timeout",
            BodyMalformed => "body_malformed",
            Upstream(_) => "upstream",
            ShuttingDown => "shutting_down",
            Forbidden(_) => "forbidden",
            Unreadable(_) => "unreadable_body",
            AuditUnavailable => "audit_unavailable",
            BadQuery(_) => "bad_query",
            ExportBusy => "export_busy",
            ExportFailed(_) => "export_failed",
            SharedStoreUnavailable(_) => "store_unavailable",
            WebhookRejected { .. } => "webhook",
        }
    }

    /// Whether the client connection must be closed after the answer.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::Framing(_)
                | ProxyError::DuplicateHost
                | ProxyError::BodyTooLarge(_)
                | ProxyError::BodyTimeout
                | ProxyError::BodyMalformed
                | ProxyError::ConnectionNamesEndToEnd(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_failures_map_to_502_and_504() {
        assert_eq!(
            ProxyError::Upstream(UpstreamErrorKind::Connect).status(),
            502
        );
        assert_eq!(ProxyError::Upstream(UpstreamErrorKind::Reset).status(), 502);
        assert_eq!(ProxyError::Upstream(UpstreamErrorKind::Tls).status(), 502);
        assert_eq!(
            ProxyError::Upstream(UpstreamErrorKind::Timeout).status(),
            504
        );
        assert_eq!(
            ProxyError::Upstream(UpstreamErrorKind::ConnectTimeout).status(),
            504
        );
    }

    #[test]
    fn framing_errors_close_the_connection() {
        assert!(ProxyError::Framing("x").closes_connection());
        assert!(!ProxyError::NoRoute.closes_connection());
    }
}
