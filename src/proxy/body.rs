//! Streaming bodies with limits: nothing is buffered, every frame passes straight through.
//!
//! [`Guarded`] enforces a size limit and a per-frame read timeout (the gap allowed between two
//! pieces of a body, so a slow sender cannot hold a connection and an upstream slot forever).
//! Its errors are typed so the forwarder can tell "client sent too much" (413) from "client
//! stalled" (408) from "client sent garbage" (400) when the upstream exchange fails.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// Why a body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body exceeds {0} bytes")]
    TooLarge(u64),
    #[error("no body data for {0:?}")]
    Timeout(Duration),
    #[error("body stream failed: {0}")]
    Stream(#[source] hyper::Error),
    #[error("{0}")]
    Aborted(String),
}

pin_project! {
    /// A body with a size limit and a read timeout. Trailers are dropped when `trailers` is
    /// false (request trailers are never forwarded: nothing upstream needs them and they are a
    /// place to smuggle headers).
    pub struct Guarded<B> {
        #[pin]
        inner: B,
        #[pin]
        timer: Sleep,
        timeout: Duration,
        armed: bool,
        limit: u64,
        seen: u64,
        trailers: bool,
        failed: bool,
        progress: Option<Arc<Progress>>,
    }
}

/// When a request body last moved, so the upstream's answer is timed from the end of the
/// upload rather than from its start (a 200 MB push must not count against the response
/// timeout while it is still streaming).
#[derive(Debug)]
pub struct Progress {
    epoch: Instant,
    last_ms: AtomicU64,
    /// Body bytes received so far (for the audit record).
    bytes: AtomicU64,
}

impl Progress {
    pub fn new() -> Arc<Self> {
        Arc::new(Progress {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        })
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// A body read whole elsewhere (a webhook delivery): its length, for the outcome record.
    pub fn of_length(n: u64) -> Arc<Self> {
        let p = Progress::new();
        p.bytes.store(n, Ordering::Release);
        p
    }

    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
    }

    /// The last time data arrived (or the start).
    pub fn last(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Acquire))
    }
}

impl<B> Guarded<B> {
    pub fn new(inner: B, limit: u64, timeout: Duration, trailers: bool) -> Self {
        Guarded {
            inner,
            timer: tokio::time::sleep(timeout),
            timeout,
            armed: false,
            limit,
            seen: 0,
            trailers,
            failed: false,
            progress: None,
        }
    }

    /// Records every frame's arrival in `progress`.
    pub fn with_progress(mut self, progress: Arc<Progress>) -> Self {
        self.progress = Some(progress);
        self
    }
}

impl<B> Body for Guarded<B>
where
    B: Body<Data = Bytes, Error = hyper::Error>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        loop {
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    *this.armed = false;
                    if let Some(p) = this.progress {
                        p.touch();
                    }
                    if let Some(data) = frame.data_ref() {
                        *this.seen += data.len() as u64;
                        if let Some(p) = this.progress {
                            p.bytes.fetch_add(data.len() as u64, Ordering::AcqRel);
                        }
                        if *this.seen > *this.limit {
                            *this.failed = true;
                            return Poll::Ready(Some(Err(BodyError::TooLarge(*this.limit))));
                        }
                    } else if !*this.trailers {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    *this.failed = true;
                    return Poll::Ready(Some(Err(BodyError::Stream(e))));
                }
                Poll::Ready(None) => {
                    if let Some(p) = this.progress {
                        p.touch();
                    }
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if !*this.armed {
                        this.timer.as_mut().reset(Instant::now() + *this.timeout);
                        *this.armed = true;
                    }
                    if this.timer.as_mut().poll(cx).is_ready() {
                        *this.failed = true;
                        return Poll::Ready(Some(Err(BodyError::Timeout(*this.timeout))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Finds a [`BodyError`] anywhere in an error's source chain (the upstream client wraps the
/// request body's error two levels deep).
pub fn find_body_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyError> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<BodyError>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}
