//! Protocol upgrades (WebSocket): once both sides switched, bytes are copied both ways.
//!
//! Only `websocket` is let through; any other `Upgrade` (notably `h2c`, which would let a
//! client talk HTTP/2 straight to the upstream past every check) is dropped from the request.

use std::any::Any;
use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Whether the client's `Upgrade` value is one the gateway passes on.
pub fn is_websocket(value: &http::HeaderValue) -> bool {
    value.as_bytes().eq_ignore_ascii_case(b"websocket")
}

/// Joins the two upgraded streams in a task that lives as long as either side keeps it open.
/// `conn_guard` keeps the client connection counted (limits, graceful shutdown) meanwhile.
pub fn spawn_tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    route: String,
    conn_guard: Arc<dyn Any + Send + Sync>,
) {
    tokio::spawn(async move {
        let _conn_guard = conn_guard;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(%route, error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => {
                tracing::debug!(%route, bytes_up = up, bytes_down = down, "tunnel closed")
            }
            Err(e) => tracing::debug!(%route, error = %e, "tunnel closed with error"),
        }
    });
}
