//! Response bodies the gateway sends to clients, and its own short error answers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::mpsc;

use super::audit::OutcomeRecorder;
use super::body::{BodyError, Guarded};
use super::downstream::InFlight;
use super::error::ProxyError;
use super::exchange::UpstreamBody;
use super::headers::X_REQUEST_ID;
use super::route::Route;
use crate::telemetry::metrics::UpstreamErrorKind;

pin_project! {
    #[project = KindProj]
    enum Kind {
        Upstream { #[pin] body: Guarded<UpstreamBody> },
        Bytes { data: Option<Bytes> },
        Channel { first: Option<Streamed>, rx: mpsc::Receiver<Streamed>, done: bool },
    }
}

/// What a body written by another task (an audit export) delivers.
pub enum Streamed {
    Data(Bytes),
    /// The end, with a line for the outcome record.
    End(String),
    /// Cut the response off: the client must not take what it got for complete.
    Fail(String),
}

pin_project! {
    /// Either an upstream body streamed through, or a body the gateway wrote. Holds the
    /// request's in-flight marker so the connection counts as busy until the body is done.
    pub struct ResponseBody {
        #[pin]
        kind: Kind,
        route: Option<Arc<Route>>,
        in_flight: Option<InFlight>,
        outcome: Option<OutcomeRecorder>,
    }
}

impl ResponseBody {
    pub fn upstream(
        body: Guarded<UpstreamBody>,
        route: Arc<Route>,
        in_flight: Option<InFlight>,
    ) -> Self {
        ResponseBody {
            kind: Kind::Upstream { body },
            route: Some(route),
            in_flight,
            outcome: None,
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
            outcome: None,
        }
    }

    /// A body another task writes; `first` is its first message, already received.
    pub fn channel(first: Streamed, rx: mpsc::Receiver<Streamed>) -> Self {
        ResponseBody {
            kind: Kind::Channel {
                first: Some(first),
                rx,
                done: false,
            },
            route: None,
            in_flight: None,
            outcome: None,
        }
    }

    pub fn empty() -> Self {
        ResponseBody::bytes(Bytes::new())
    }

    /// Records the request's outcome when this body ends (or is dropped unfinished).
    pub fn with_outcome(mut self, outcome: OutcomeRecorder) -> Self {
        let mut outcome = outcome;
        if self.is_end_stream() {
            outcome.finish(None);
        } else {
            self.outcome = Some(outcome);
        }
        self
    }

    /// The text of a body the gateway wrote; `None` for streamed bodies.
    pub fn gateway_text(&self) -> Option<String> {
        match &self.kind {
            Kind::Bytes { data } => Some(
                data.as_ref()
                    .map(|d| String::from_utf8_lossy(d).into_owned())
                    .unwrap_or_default(),
            ),
            _ => None,
        }
    }

    /// Whether this body is the upstream's answer (not the gateway's own).
    pub fn is_upstream(&self) -> bool {
        matches!(self.kind, Kind::Upstream { .. })
    }

    /// The same body (route, in-flight marker, outcome) with `other`'s contents.
    pub fn replace_bytes(mut self, other: ResponseBody) -> ResponseBody {
        self.kind = other.kind;
        self
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
        let (polled, ended) = match this.kind.project() {
            KindProj::Upstream { mut body } => {
                let polled = body.as_mut().poll_frame(cx);
                (polled, body.is_end_stream())
            }
            KindProj::Bytes { data } => {
                let polled = Poll::Ready(data.take().map(|d| Ok(Frame::data(d))));
                (polled, true)
            }
            KindProj::Channel { first, rx, done } => {
                if *done {
                    return Poll::Ready(None);
                }
                let message = match first.take() {
                    Some(m) => m,
                    None => match rx.poll_recv(cx) {
                        Poll::Ready(Some(m)) => m,
                        Poll::Ready(None) => Streamed::Fail("the writer stopped".into()),
                        Poll::Pending => return Poll::Pending,
                    },
                };
                match message {
                    Streamed::Data(d) => (Poll::Ready(Some(Ok(Frame::data(d)))), false),
                    Streamed::End(line) => {
                        *done = true;
                        if let Some(mut o) = this.outcome.take() {
                            o.finish(Some(&line));
                        }
                        this.in_flight.take();
                        return Poll::Ready(None);
                    }
                    Streamed::Fail(why) => {
                        *done = true;
                        (Poll::Ready(Some(Err(BodyError::Aborted(why)))), true)
                    }
                }
            }
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(o) = this.outcome.as_mut() {
                    if let Some(d) = frame.data_ref() {
                        o.sent(d.len());
                    }
                    // hyper stops polling once a body says it has ended.
                    if ended {
                        o.finish(None);
                        *this.outcome = None;
                    }
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(route) = this.route {
                    route
                        .metrics
                        .upstream_error(UpstreamErrorKind::ResponseBody);
                    tracing::warn!(route = %route.config.name, error = %e, "upstream response body broke off");
                }
                if let Some(mut o) = this.outcome.take() {
                    o.finish(Some(&format!("the response body broke off: {e}")));
                }
                this.in_flight.take();
            }
            Poll::Ready(None) => {
                if let Some(mut o) = this.outcome.take() {
                    o.finish(None);
                }
                this.in_flight.take();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body } => body.is_end_stream(),
            Kind::Bytes { data } => data.is_none(),
            Kind::Channel { done, .. } => *done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body } => body.size_hint(),
            Kind::Bytes { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Channel { .. } => SizeHint::default(),
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
    if let ProxyError::AuditUnavailable | ProxyError::ExportBusy = err {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    if let ProxyError::EndpointMethod { allow } = err {
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    if let ProxyError::MethodNotAllowed(_) = err {
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
    }
    resp
}
