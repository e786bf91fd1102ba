//! The gateway's own endpoints under `/.gatehouse/`, answered before routing and never
//! forwarded, whatever the route table says.

use http::{HeaderValue, Method, Response, StatusCode};

use super::error::ProxyError;
use super::response::{ResponseBody, plain};

/// Path prefix reserved for the gateway.
pub const PREFIX: &str = "/.gatehouse";

pub fn is_gateway_path(path: &str) -> bool {
    super::path::has_prefix(path, PREFIX)
}

/// Serves `/.gatehouse/health` (the process answers) and `/.gatehouse/ready` (it accepts new
/// work; 503 while draining for shutdown).
pub fn serve(
    method: &Method,
    path: &str,
    draining: bool,
    request_id: &HeaderValue,
) -> Result<Response<ResponseBody>, ProxyError> {
    let sub = &path[PREFIX.len()..];
    if !matches!(sub, "/health" | "/ready") {
        return Err(ProxyError::UnknownEndpoint);
    }
    if method != Method::GET && method != Method::HEAD {
        return Err(ProxyError::MethodNotAllowed(
            "other than GET or HEAD on this endpoint",
        ));
    }
    Ok(match sub {
        "/ready" if draining => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining\n".into(),
            request_id,
        ),
        "/ready" => plain(StatusCode::OK, "ready\n".into(), request_id),
        _ => plain(StatusCode::OK, "ok\n".into(), request_id),
    })
}
