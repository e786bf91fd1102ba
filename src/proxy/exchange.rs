//! An HTTP/1 exchange with an upstream, driven by the task that serves the request.
//!
//! The request's task polls the upstream connection alongside the response it waits for,
//! then alongside the response body it streams back ([`UpstreamBody`]); when the body ends
//! the connection goes back to the client connection's [`Slot`] for the next request.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::client::ForwardBody;
use super::pool::{ConnectError, Lease, Slot, Upstream};

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("upstream exchange: {0}")]
    Http(#[source] hyper::Error),
}

/// Sends `req` (origin-form target, `Host` set) over an idle or new connection.
pub async fn send(
    upstream: &Arc<Upstream>,
    slot: &Arc<Slot>,
    req: Request<ForwardBody>,
) -> Result<Response<UpstreamBody>, ExchangeError> {
    let mut lease = upstream.checkout(slot).await?;
    let mut req = req;
    loop {
        match exchange(&mut lease, req).await {
            Ok(resp) => {
                return Ok(resp.map(|body| UpstreamBody {
                    body,
                    lease: Some((lease, slot.clone())),
                }));
            }
            Err(mut e) => match e.take_message() {
                // The upstream had closed a reused connection before the request was
                // written: nothing reached it, so a new connection may carry it.
                Some(unsent) if lease.reused => {
                    req = unsent;
                    lease = upstream.connect().await?;
                }
                _ => return Err(ExchangeError::Http(e.into_error())),
            },
        }
    }
}

/// Writes the request and waits for the response head, driving the connection meanwhile.
async fn exchange(
    lease: &mut Lease,
    req: Request<ForwardBody>,
) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<ForwardBody>>> {
    let mut pending = std::pin::pin!(lease.sender.try_send_request(req));
    std::future::poll_fn(|cx| {
        // A connection that ends drops what it still holds queued, which resolves `pending`.
        lease.poll_conn(cx);
        pending.as_mut().poll(cx)
    })
    .await
}

/// A response body from an upstream. When its connection came from [`send`], reading the
/// body drives the connection, and a body read to its end returns the connection for reuse.
pub struct UpstreamBody {
    body: Incoming,
    lease: Option<(Lease, Arc<Slot>)>,
}

impl UpstreamBody {
    /// A body from the pooled client, whose connection is driven elsewhere.
    pub fn pooled(body: Incoming) -> Self {
        UpstreamBody { body, lease: None }
    }

    fn release(&mut self) {
        if let Some((lease, slot)) = self.lease.take() {
            lease.release(&slot);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some((lease, _)) = this.lease.as_mut() {
            lease.poll_conn(cx);
        }
        let mut polled = Pin::new(&mut this.body).poll_frame(cx);
        if polled.is_pending()
            && let Some((lease, _)) = this.lease.as_mut()
        {
            // Asking for the body lets the connection read it: give it the turn now rather
            // than after a wake-up.
            lease.poll_conn(cx);
            polled = Pin::new(&mut this.body).poll_frame(cx);
        }
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            // A connection that failed mid-body is closed, never reused.
            Poll::Ready(Some(Err(_))) => this.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    /// A body the server stopped reading because it knew it was complete (or that had none)
    /// still returns its connection; one abandoned midway closes it.
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.release();
        }
    }
}
