//! What the proxy knows about the client connection a request arrived on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use ipnet::IpNet;
use tokio::time::Instant;

use super::pool::Slot;
use crate::server::h1_guard::FramingFlag;

/// Facts about one client connection, shared by all requests on it.
pub struct Downstream {
    pub peer: SocketAddr,
    /// Server name the client asked for in its TLS handshake.
    pub sni: Option<Box<str>>,
    /// Whether the client reached the gateway over TLS.
    pub tls: bool,
    /// Framing violations spotted below hyper (HTTP/1 only).
    pub framing: Arc<FramingFlag>,
    pub activity: Arc<Activity>,
    /// The peer address, ready to be used as a header value.
    pub peer_ip: HeaderValue,
    /// `ip:port` of the peer, as audit records give it (formatted once per connection).
    pub peer_text: Box<str>,
    /// Keeps the connection counted (connection limit, drain on shutdown) while anything
    /// that outlives the HTTP exchange, such as a WebSocket tunnel, still uses it.
    pub conn_guard: Arc<dyn std::any::Any + Send + Sync>,
    /// The upstream connection this client connection's last request used, kept for its
    /// next one.
    pub upstream_slot: Arc<Slot>,
}

impl Downstream {
    pub fn new(
        peer: SocketAddr,
        sni: Option<Box<str>>,
        tls: bool,
        framing: Arc<FramingFlag>,
        conn_guard: Arc<dyn std::any::Any + Send + Sync>,
    ) -> Self {
        let ip = peer.ip().to_canonical();
        Downstream {
            peer,
            sni,
            tls,
            framing,
            activity: Arc::new(Activity::new()),
            peer_ip: HeaderValue::from_str(&ip.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            peer_text: peer.to_string().into_boxed_str(),
            conn_guard,
            upstream_slot: Arc::new(Slot::default()),
        }
    }

    /// Whether the peer is one of the configured trusted proxies.
    pub fn is_trusted(&self, trusted: &[IpNet]) -> bool {
        let ip = self.peer.ip().to_canonical();
        trusted.iter().any(|net| net.contains(&ip))
    }

    pub fn proto(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    pub fn default_port(&self) -> u16 {
        if self.tls { 443 } else { 80 }
    }
}

/// Requests in flight and when the connection last became idle, for the idle timeout.
pub struct Activity {
    epoch: Instant,
    in_flight: AtomicU32,
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    /// Marks a request as started; the guard marks it finished when dropped (after the whole
    /// response body was sent or abandoned).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// How long the connection has had nothing in flight, or `None` while a request runs.
    pub fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(now.saturating_duration_since(self.epoch + since))
    }
}

/// Held by a request from arrival until its response body is done.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = self.0.epoch.elapsed().as_millis() as u64;
        self.0.idle_since_ms.store(ms, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
