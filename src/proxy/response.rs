//! Response bodies the gateway sends to clients, and its own short error answers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use super::body::{BodyError, Guarded};
use super::downstream::InFlight;
use super::error::ProxyError;
use super::headers::X_REQUEST_ID;
use super::route::Route;
use crate::telemetry::metrics::UpstreamErrorKind;

pin_project! {
    #[project = KindProj]
    enum Kind {
        Upstream { #[pin] body: Guarded<Incoming> },
        Bytes { data: Option<Bytes> },
    }
}

pin_project! {
    /// Either an upstream body streamed through, or a body the gateway wrote. Holds the
    /// request's in-flight marker so the connection counts as busy until the body is done.
    pub struct ResponseBody {
        #[pin]
        kind: Kind,
        route: Option<Arc<Route>>,
        in_flight: Option<InFlight>,
    }
}

impl ResponseBody {
    pub fn upstream(
        body: Guarded<Incoming>,
        route: Arc<Route>,
        in_flight: Option<InFlight>,
    ) -> Self {
        ResponseBody {
            kind: Kind::Upstream { body },
            route: Some(route),
            in_flight,
        }
    }

    pub fn bytes(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        ResponseBody {
            kind: Kind::Bytes {
                data: if data.is_empty() { None } else { Some(data) },
            },
            route: None,
            in_flight: None,
        }
    }

    pub fn empty() -> Self {
        ResponseBody::bytes(Bytes::new())
    }

    /// Attaches the in-flight marker to a body the gateway wrote.
    pub fn with_in_flight(mut self, in_flight: InFlight) -> Self {
        self.in_flight = Some(in_flight);
        self
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        let polled = match this.kind.project() {
            KindProj::Upstream { body } => body.poll_frame(cx),
            KindProj::Bytes { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        match &polled {
            Poll::Ready(Some(Err(e))) => {
                if let Some(route) = this.route {
                    route
                        .metrics
                        .upstream_error(UpstreamErrorKind::ResponseBody);
                    tracing::warn!(route = %route.config.name, error = %e, "upstream response body broke off");
                }
                this.in_flight.take();
            }
            Poll::Ready(None) => {
                this.in_flight.take();
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body } => body.is_end_stream(),
            Kind::Bytes { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body } => body.size_hint(),
            Kind::Bytes { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// A short plain-text answer from the gateway itself.
pub fn plain(status: StatusCode, text: String, request_id: &HeaderValue) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::bytes(text));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_REQUEST_ID.clone(), request_id.clone());
    resp
}

/// The answer for a refused or failed request: status, one line saying why, the request id.
pub fn error_response(err: &ProxyError, request_id: &HeaderValue) -> Response<ResponseBody> {
    let status = err.status();
    let text = format!(
        "{} {}: {}\nrequest id: {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        err,
        request_id.to_str().unwrap_or("-"),
    );
    let mut resp = plain(status, text, request_id);
    if err.closes_connection() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let ProxyError::MethodNotAllowed(_) = err {
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
    }
    resp
}
