//! One client connection: TLS handshake, HTTP/1.1 or HTTP/2 serving, idle timeout, drain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::h1_guard::{FramingFlag, GuardedIo};
use crate::config::Config;
use crate::proxy::Gateway;
use crate::proxy::downstream::Downstream;
use crate::proxy::unparsed::Unparsed;

/// The header count hyper enforces when no limit is set (`proto::h1::role`).
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Per-connection protocol settings, taken from the configuration current at accept time.
#[derive(Debug, Clone)]
pub struct ConnSettings {
    pub handshake: Duration,
    pub header_read: Duration,
    pub idle: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub h2_max_concurrent_streams: u32,
    /// Peers whose connections start with a PROXY protocol header.
    pub proxy_protocol_from: Arc<[ipnet::IpNet]>,
}

impl From<&Config> for ConnSettings {
    fn from(c: &Config) -> Self {
        let t = &c.server.timeouts;
        let l = &c.server.limits;
        ConnSettings {
            handshake: t.handshake,
            header_read: t.header_read,
            idle: t.idle,
            max_header_bytes: l.max_header_bytes,
            max_headers: l.max_headers,
            h2_max_concurrent_streams: l.h2_max_concurrent_streams,
            proxy_protocol_from: c.server.proxy_protocol_from.as_slice().into(),
        }
    }
}

/// Holds the connection-limit permit and the active-connections gauge for as long as the
/// connection, or a tunnel made from it, lives.
struct ConnGuard {
    _permit: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl ConnGuard {
    fn new(permit: OwnedSemaphorePermit, gauge: IntGauge) -> Self {
        gauge.inc();
        ConnGuard {
            _permit: permit,
            gauge,
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Everything a connection task needs.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub tls: Option<TlsAcceptor>,
    pub gateway: Arc<Gateway>,
    pub settings: ConnSettings,
    pub permit: OwnedSemaphorePermit,
    pub shutdown: watch::Receiver<bool>,
}

pub async fn serve(mut a: Accepted) {
    let metrics = a.gateway.metrics.clone();
    metrics.connections.inc();
    let guard: Arc<dyn std::any::Any + Send + Sync> =
        Arc::new(ConnGuard::new(a.permit, metrics.active_connections.clone()));
    let _ = a.stream.set_nodelay(true);
    if a.settings
        .proxy_protocol_from
        .iter()
        .any(|n| n.contains(&a.peer.ip()))
    {
        // The balancer's header names the client; without a valid one the connection ends
        // (a balancer configured to send none would otherwise make every client look alike).
        match tokio::time::timeout(
            a.settings.handshake,
            super::proxy_protocol::read(&mut a.stream),
        )
        .await
        {
            Ok(Ok(Some(client))) => a.peer = client,
            Ok(Ok(None)) => {}
            refused => {
                let reason = match refused {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no PROXY protocol header within the handshake timeout".to_string(),
                };
                tracing::warn!(peer = %a.peer, %reason, "connection from a PROXY protocol balancer refused");
                // On record like any request refused before it was parsed.
                let down = Downstream::new(
                    a.peer,
                    None,
                    a.tls.is_some(),
                    Arc::new(FramingFlag::default()),
                    guard,
                );
                a.gateway.record_unparsed(
                    &down,
                    Unparsed {
                        status: None,
                        label: "proxy_protocol",
                        reason,
                    },
                );
                return;
            }
        }
    }
    let framing = Arc::new(FramingFlag::default());
    let max_head = a.settings.max_header_bytes;
    match a.tls {
        Some(acceptor) => {
            let stream =
                match tokio::time::timeout(a.settings.handshake, acceptor.accept(a.stream)).await {
                    Err(_) => {
                        metrics.tls_handshake_failed("timeout");
                        return;
                    }
                    Ok(Err(e)) => {
                        let reason = handshake_failure_reason(&e);
                        metrics.tls_handshake_failed(reason);
                        tracing::debug!(peer = %a.peer, reason, error = %e, "TLS handshake failed");
                        return;
                    }
                    Ok(Ok(s)) => s,
                };
            let sni = stream.get_ref().1.server_name().map(Box::from);
            let down = Arc::new(Downstream::new(a.peer, sni, true, framing.clone(), guard));
            run(
                GuardedIo::new(stream, max_head, framing),
                down,
                a.gateway,
                a.settings,
                a.shutdown,
            )
            .await;
        }
        None => {
            let down = Arc::new(Downstream::new(a.peer, None, false, framing.clone(), guard));
            run(
                GuardedIo::new(a.stream, max_head, framing),
                down,
                a.gateway,
                a.settings,
                a.shutdown,
            )
            .await;
        }
    }
}

fn handshake_failure_reason(e: &std::io::Error) -> &'static str {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidMessage(_)) => "bad_message",
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
        Some(rustls::Error::NoApplicationProtocol) => "no_alpn",
        Some(rustls::Error::AlertReceived(_)) => "alert_received",
        Some(_) => "protocol",
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => "eof",
        None => "io",
    }
}

async fn run<IO>(
    io: IO,
    down: Arc<Downstream>,
    gateway: Arc<Gateway>,
    settings: ConnSettings,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .keep_alive(true);
    // hyper parses into a stack array of 100 headers unless a limit is set, and then into a
    // heap vector per request: set it only when it differs.
    if settings.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        builder.http1().max_headers(settings.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(settings.idle.max(Duration::from_secs(2)) / 2))
        .keep_alive_timeout(Duration::from_secs(20));

    let activity = down.activity.clone();
    let (gw, dn) = (gateway.clone(), down.clone());
    let service = service_fn(move |req| {
        let gateway = gw.clone();
        let down = dn.clone();
        async move { Ok::<_, Infallible>(gateway.handle(req, &down).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    let mut check_at = Instant::now() + settings.idle;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with error");
                    if let Some(u) = Unparsed::from_error(&*e, down.framing.partial_head()) {
                        gateway.record_unparsed(&down, u);
                    }
                }
                return;
            }
            () = tokio::time::sleep_until(check_at), if !closing => {
                let now = Instant::now();
                match activity.idle_for(now) {
                    Some(idle) if idle >= settings.idle => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    Some(idle) => check_at = now + (settings.idle - idle),
                    None => check_at = now + settings.idle,
                }
            }
            () = super::stopped(&mut shutdown), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}
