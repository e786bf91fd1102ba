//! Idle HTTP/1 connections to an upstream, kept for reuse without a task per connection.
//!
//! hyper-util's pooled client runs every upstream connection on a task of its own and hands
//! each request to it over a channel: two tasks wake per exchange, which costs about 3 µs
//! of CPU per request (bench/README.md, "The floor"). Here the task serving the request
//! drives the upstream connection itself while the request uses it ([`super::exchange`]),
//! and an idle connection waits, undriven, in one of two places:
//! - the [`Slot`] of the client connection that last used it, so the next request on that
//!   client connection finds it without touching anything shared. An HTTP/1 client
//!   connection's requests take turns, so the slot's lock is never contended;
//! - the route's shared list, when the slot is full or its client connection has closed.
//!
//! Nobody reads an idle connection, so an upstream that closed it is noticed when it is
//! next taken (one poll, which reads the close) or by the reaper that sweeps the shared list.
//! A request written to a connection the upstream had closed unseen is retried once on a new
//! connection when hyper returns it unsent.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::Uri;
use hyper::client::conn::http1;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower_service::Service;

use super::client::{Connector, ForwardBody, POOL_IDLE, POOL_MAX_IDLE_PER_HOST};

type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;
pub type Conn = http1::Connection<Stream, ForwardBody>;
pub type Sender = http1::SendRequest<ForwardBody>;

/// How often the shared list is swept for connections the upstream closed or that idled
/// too long, so they do not sit half-closed until the next request.
const REAP_EVERY: Duration = if cfg!(test) {
    Duration::from_millis(100)
} else {
    Duration::from_secs(10)
};

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("HTTP/1 handshake: {0}")]
    Handshake(#[source] hyper::Error),
}

/// One route's upstream: how to reach it and its shared idle connections.
pub struct Upstream {
    connector: Connector,
    /// `scheme://authority`, what the connector dials.
    target: Uri,
    http1: http1::Builder,
    idle: Mutex<VecDeque<Lease>>,
    /// Whether a reaper task sweeps `idle` (set while the list is not empty).
    reaping: AtomicBool,
    /// Idle connections held in client connections' slots.
    in_slots: AtomicUsize,
    opened: IntCounter,
}

/// A connection to an upstream: its request handle and the connection state the request's
/// task drives.
pub struct Lease {
    pub sender: Sender,
    /// `None` once the connection has finished (closed by either side). Boxed: the lease
    /// moves several times per request, the connection's state (buffers, TLS) would be
    /// copied each time.
    pub conn: Option<Box<Conn>>,
    pub home: Arc<Upstream>,
    /// When it was made or last became idle.
    since: Instant,
    /// Whether it carried an exchange before (a fresh one is never retried).
    pub reused: bool,
}

impl Upstream {
    pub fn new(connector: Connector, target: Uri, opened: IntCounter) -> Arc<Upstream> {
        Arc::new(Upstream {
            connector,
            target,
            http1: http1::Builder::new(),
            idle: Mutex::new(VecDeque::new()),
            reaping: AtomicBool::new(false),
            in_slots: AtomicUsize::new(0),
            opened,
        })
    }

    /// An idle connection that is still open (the client connection's own first), or a new
    /// one.
    pub async fn checkout(self: &Arc<Self>, slot: &Slot) -> Result<Lease, ConnectError> {
        if let Some(mut lease) = slot.take(self)
            && lease.usable()
        {
            return Ok(lease);
        }
        loop {
            let Some(mut lease) = self.lock().pop_back() else {
                break;
            };
            if lease.usable() {
                return Ok(lease);
            }
        }
        self.connect().await
    }

    /// A new connection.
    pub async fn connect(self: &Arc<Self>) -> Result<Lease, ConnectError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(ConnectError::Connect)?;
        let io = connector
            .call(self.target.clone())
            .await
            .map_err(ConnectError::Connect)?;
        let (sender, conn) = self
            .http1
            .handshake(io)
            .await
            .map_err(ConnectError::Handshake)?;
        self.opened.inc();
        Ok(Lease {
            sender,
            conn: Some(Box::new(conn)),
            home: self.clone(),
            since: Instant::now(),
            reused: false,
        })
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Lease>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps an idle connection in the shared list (newest at the back).
    fn put_shared(self: &Arc<Self>, lease: Lease) {
        let mut idle = self.lock();
        while idle.front().is_some_and(Lease::expired) || idle.len() >= POOL_MAX_IDLE_PER_HOST {
            idle.pop_front();
        }
        idle.push_back(lease);
        if !self.reaping.swap(true, Ordering::AcqRel)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(reap(Arc::downgrade(self)));
        }
    }

    /// Idle connections: in the shared list, and in client connections' slots.
    #[cfg(test)]
    fn idle_counts(&self) -> (usize, usize) {
        (self.lock().len(), self.in_slots.load(Ordering::Acquire))
    }
}

/// Sweeps an upstream's shared list until it is empty or the route is gone.
async fn reap(upstream: Weak<Upstream>) {
    loop {
        tokio::time::sleep(REAP_EVERY).await;
        let Some(up) = upstream.upgrade() else {
            return;
        };
        let mut idle = up.lock();
        idle.retain_mut(Lease::usable);
        if idle.is_empty() {
            up.reaping.store(false, Ordering::Release);
            return;
        }
    }
}

impl Lease {
    fn expired(&self) -> bool {
        self.since.elapsed() >= POOL_IDLE
    }

    /// Whether an idle connection can carry a request: not idle too long, not closed by the
    /// upstream (one poll reads a close that has arrived), and ready for a new request.
    fn usable(&mut self) -> bool {
        !self.expired() && self.ready()
    }

    fn ready(&mut self) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut **conn).poll(&mut cx) {
            Poll::Ready(_) => false,
            Poll::Pending => self.sender.is_ready(),
        }
    }

    /// Drives the connection; it is dropped (so anything queued on it fails) once it ends.
    pub fn poll_conn(&mut self, cx: &mut Context<'_>) {
        if let Some(conn) = self.conn.as_mut()
            && Pin::new(&mut **conn).poll(cx).is_ready()
        {
            self.conn = None;
        }
    }

    /// Hands a connection whose exchange is complete back for reuse, or closes it if it
    /// cannot take another request.
    pub fn release(mut self, slot: &Slot) {
        if !self.ready() {
            return;
        }
        self.since = Instant::now();
        self.reused = true;
        if let Some(lease) = slot.put(self) {
            let home = lease.home.clone();
            home.put_shared(lease);
        }
    }
}

/// The idle connection a client connection keeps for its next request.
#[derive(Default)]
pub struct Slot(Mutex<Option<Lease>>);

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Option<Lease>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The slot's connection, if it leads to `upstream`.
    fn take(&self, upstream: &Arc<Upstream>) -> Option<Lease> {
        let mut slot = self.lock();
        if slot
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(&l.home, upstream))
        {
            slot.take().inspect(Lease::leave_slot)
        } else {
            None
        }
    }

    /// Keeps `lease`; gives back the connection that no longer fits (this one when the
    /// route's slots already hold their share, or another route's that it displaces).
    fn put(&self, lease: Lease) -> Option<Lease> {
        let mut slot = self.lock();
        if slot
            .as_ref()
            .is_some_and(|held| Arc::ptr_eq(&held.home, &lease.home))
            || !lease.enter_slot()
        {
            return Some(lease);
        }
        // Another route's connection gives way to the most recent one.
        slot.replace(lease).inspect(Lease::leave_slot)
    }
}

impl Lease {
    /// Counts the lease into its route's slots, unless they already hold
    /// `POOL_MAX_IDLE_PER_HOST`: idle connections stay bounded however many client
    /// connections sit idle.
    fn enter_slot(&self) -> bool {
        let held = self.home.in_slots.fetch_add(1, Ordering::AcqRel);
        if held >= POOL_MAX_IDLE_PER_HOST {
            self.home.in_slots.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn leave_slot(&self) {
        self.home.in_slots.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Slot {
    /// The client connection is gone: its idle connection goes to the shared list.
    fn drop(&mut self) {
        let taken = self
            .0
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .inspect(Lease::leave_slot);
        if let Some(mut lease) = taken
            && lease.usable()
        {
            let home = lease.home.clone();
            home.put_shared(lease);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::client::legacy::connect::HttpConnector;

    fn upstream(addr: std::net::SocketAddr) -> Arc<Upstream> {
        let tls = rustls::ClientConfig::builder_with_provider(crate::server::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(HttpConnector::new());
        let target: Uri = format!("http://{addr}/").parse().expect("uri");
        let opened = IntCounter::new("opened", "test").expect("counter");
        Upstream::new(connector, target, opened)
    }

    /// A server that accepts connections and keeps them open, saying nothing.
    async fn silent_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn idle_connections_stay_bounded_however_many_client_connections_hold_one() {
        let (addr, server) = silent_server().await;
        let up = upstream(addr);
        let n = POOL_MAX_IDLE_PER_HOST + 40;
        let slots: Vec<Slot> = (0..n).map(|_| Slot::default()).collect();
        for slot in &slots {
            let lease = up.connect().await.expect("connect");
            lease.release(slot);
        }
        // The slots hold their share; the rest wait in the shared list.
        assert_eq!(up.idle_counts(), (40, POOL_MAX_IDLE_PER_HOST));
        assert_eq!(up.opened.get(), n as u64);

        // A client connection without one takes the newest from the shared list.
        let fresh = Slot::default();
        let lease = up.checkout(&fresh).await.expect("checkout");
        assert!(lease.reused);
        assert_eq!(up.idle_counts(), (39, POOL_MAX_IDLE_PER_HOST));
        // The slots are full: it goes back to the shared list.
        lease.release(&fresh);
        assert_eq!(up.idle_counts(), (40, POOL_MAX_IDLE_PER_HOST));

        // Client connections close: their connections move to the shared list, which keeps
        // the newest POOL_MAX_IDLE_PER_HOST.
        drop(slots);
        drop(fresh);
        assert_eq!(up.idle_counts(), (POOL_MAX_IDLE_PER_HOST, 0));
        assert_eq!(
            up.opened.get(),
            n as u64,
            "nothing was opened to serve the checkout"
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_slot_keeps_its_own_route_connection_and_gives_way_to_another_route() {
        let (addr, server) = silent_server().await;
        let (a, b) = (upstream(addr), upstream(addr));
        let slot = Slot::default();
        a.connect().await.expect("connect").release(&slot);
        // A second connection to the same route goes to the shared list.
        a.connect().await.expect("connect").release(&slot);
        assert_eq!(a.idle_counts(), (1, 1));
        // Another route's connection takes the slot; the displaced one is shared.
        b.connect().await.expect("connect").release(&slot);
        assert_eq!(a.idle_counts(), (2, 0));
        assert_eq!(b.idle_counts(), (0, 1));
        assert!(slot.take(&a).is_none());
        assert!(slot.take(&b).is_some());
        assert_eq!(b.idle_counts(), (0, 0));
        server.abort();
    }

    #[tokio::test]
    async fn the_reaper_drops_shared_connections_the_upstream_closed() {
        let (addr, server) = silent_server().await;
        let up = upstream(addr);
        for _ in 0..3 {
            let slot = Slot::default();
            up.connect().await.expect("connect").release(&slot);
        }
        assert_eq!(up.idle_counts(), (3, 0));
        // The upstream goes away (its sockets close); nobody asks for a connection.
        server.abort();
        let _ = server.await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while up.idle_counts() != (0, 0) {
            assert!(
                Instant::now() < deadline,
                "{:?} still idle",
                up.idle_counts()
            );
            tokio::time::sleep(REAP_EVERY).await;
        }
        tokio::time::sleep(REAP_EVERY * 2).await;
        assert!(
            !up.reaping.load(Ordering::Acquire),
            "the reaper stops once the list is empty"
        );
    }
}
