//! OTLP routes: the export body on its way to Lightstep gains commit attributes, and what the
//! gateway itself answers on these routes is a `google.rpc.Status`, as OTLP clients expect.
//!
//! Enrichment runs after the policy allowed the request and before the decision is recorded:
//! the body is read whole (it already had to be, within the route's size limit, for the
//! policy when a rule names services), decompressed with the route's limit as the cap,
//! spliced (`attribution/`), compressed again if it came compressed, and forwarded with its
//! new length. A body that is not a well-formed export is refused with 400 and not forwarded.
//! Bodies in an encoding the gateway does not read (gRPC, `Content-Encoding` other than gzip)
//! pass through untouched, and so does everything when there is no commit store
//! (`[webhooks]`) or `enrich = false`: attribution is a courtesy, never a reason to drop
//! telemetry.

use std::io::Write;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::authorize::{Inbound, body_error};
use super::error::ProxyError;
use super::inspect;
use super::response::ResponseBody;
use crate::attribution::{AttributionConfig, CommitCache, Enriched};
use crate::classify::otlp::{self, Encoding};

/// The body's encoding, when the gateway can read it: `(encoding, gzip)`.
fn readable(parts: &Parts) -> Option<(Encoding, bool)> {
    let encoding = otlp::encoding_from_content_type(
        parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    )
    .ok()?;
    let mut gzip = false;
    for v in parts.headers.get_all(header::CONTENT_ENCODING) {
        match v.as_bytes() {
            b if b.eq_ignore_ascii_case(b"gzip") && !gzip => gzip = true,
            b if b.eq_ignore_ascii_case(b"identity") => {}
            _ => return None,
        }
    }
    Some((encoding, gzip))
}

/// Adds commit attributes to an OTLP/HTTP export. Returns the body to forward and what was
/// attributed (`None` when the request is not an export the gateway reads).
pub async fn enrich(
    parts: &mut Parts,
    inbound: Inbound,
    config: &AttributionConfig,
    commits: &CommitCache,
    max_body: u64,
    enduser: Option<&str>,
) -> Result<(Inbound, Option<Enriched>), ProxyError> {
    let signal = otlp::signal_from_path(parts.uri.path());
    let (Some(signal), true, Some((encoding, gzip))) =
        (signal, parts.method == Method::POST, readable(parts))
    else {
        return Ok((inbound, None));
    };
    // Nothing to attribute with: the body streams through unread.
    if !config.enrich || !commits.has_store() {
        return Ok((inbound, None));
    }
    let Inbound { body, progress } = inbound;
    let raw = inspect::collect(body).await.map_err(body_error)?;
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    let plain: Bytes = if gzip {
        otlp::gunzip_capped(&raw, limit)
            .map_err(|e| ProxyError::Unreadable(e.to_string()))?
            .into()
    } else {
        raw.clone()
    };
    let enriched = config
        .enrich(encoding, signal, &plain, commits, enduser)
        .await
        .map_err(|e| ProxyError::Unreadable(e.to_string()))?;
    let forwarded = match &enriched.body {
        None => raw,
        Some(new) if gzip => {
            let mut enc = GzEncoder::new(Vec::with_capacity(raw.len() + 512), Compression::fast());
            enc.write_all(new)
                .and_then(|()| enc.finish())
                .map(Bytes::from)
                .map_err(|e| ProxyError::Unreadable(format!("cannot compress the body: {e}")))?
        }
        Some(new) => Bytes::copy_from_slice(new),
    };
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(forwarded.len()));
    let body = Full::new(forwarded)
        .map_err(|never| match never {})
        .boxed_unsync();
    Ok((Inbound { body, progress }, Some(enriched)))
}

/// `google.rpc.Code` for an HTTP status the gateway answers with.
fn rpc_code(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 | 411 | 415 => 3, // INVALID_ARGUMENT
        401 => 16,            // UNAUTHENTICATED
        403 => 7,             // PERMISSION_DENIED
        404 | 421 => 5,       // NOT_FOUND
        408 | 504 => 4,       // DEADLINE_EXCEEDED
        413 | 429 => 8,       // RESOURCE_EXHAUSTED
        405 | 501 => 12,      // UNIMPLEMENTED
        502 | 503 => 14,      // UNAVAILABLE
        _ => 2,               // UNKNOWN
    }
}

/// A `google.rpc.Status { code, message }`, protobuf or JSON.
pub fn rpc_status(status: StatusCode, message: &str, json: bool) -> Bytes {
    let code = rpc_code(status);
    if json {
        let v = serde_json::json!({ "code": code, "message": message });
        return Bytes::from(v.to_string());
    }
    let mut out = Vec::with_capacity(message.len() + 8);
    out.push(0x08);
    crate::attribution::protobuf::put_varint(&mut out, u64::from(code));
    if !message.is_empty() {
        out.push(0x12);
        crate::attribution::protobuf::put_varint(&mut out, message.len() as u64);
        out.extend_from_slice(message.as_bytes());
    }
    Bytes::from(out)
}

/// Whether the client reads JSON (by its request's `Content-Type`): errors are answered in
/// the encoding the client used, protobuf by default.
pub fn wants_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            matches!(
                otlp::encoding_from_content_type(Some(ct)),
                Ok(Encoding::Json)
            )
        })
        .unwrap_or(false)
}

/// Rewrites an answer the gateway made on an OTLP route (a refusal, a challenge, a failure)
/// as a `google.rpc.Status`, keeping its status and headers. The message is the first line
/// of the plain answer.
pub fn as_rpc_status(resp: Response<ResponseBody>, json: bool) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    let text = body.gateway_text().unwrap_or_default();
    let message = text.lines().next().unwrap_or("").trim();
    let message = if message.is_empty() {
        parts.status.canonical_reason().unwrap_or("")
    } else {
        message
    };
    let status_body = rpc_status(parts.status, message, json);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if json {
            "application/json"
        } else {
            "application/x-protobuf"
        }),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    let new = ResponseBody::bytes(status_body);
    Response::from_parts(parts, body.replace_bytes(new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_status_encodes_code_and_message() {
        let b = rpc_status(StatusCode::BAD_REQUEST, "bad", false);
        assert_eq!(&b[..], &[0x08, 3, 0x12, 3, b'b', b'a', b'd']);
        let j = rpc_status(StatusCode::UNAUTHORIZED, "who?", true);
        let v: serde_json::Value = serde_json::from_slice(&j).unwrap();
        assert_eq!(v, serde_json::json!({"code": 16, "message": "who?"}));
    }
}
