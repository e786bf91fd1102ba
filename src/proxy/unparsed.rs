//! Requests refused before the gateway saw them: hyper's HTTP/1 parser answers a malformed or
//! oversized head itself (400, 414, 431) and cuts off a head that does not arrive within the
//! header read timeout. These never reach [`Gateway::handle`], yet they are decisions an
//! auditor asks about (probes, smuggling attempts, slowloris), so each gets one `request`
//! record denying it, with the peer and why; there is no method, path or request id to name.

use std::error::Error as StdError;

use crate::audit::record::timestamp;
use crate::audit::{AuditDecision, Kind, Record, Source};

use super::Gateway;
use super::downstream::Downstream;

/// What the parser did to a request, when the connection ended because of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unparsed {
    /// What the client was sent; `None` when the connection was just closed.
    pub status: Option<u16>,
    /// The `gatehouse_requests_rejected_total` reason.
    pub label: &'static str,
    pub reason: String,
}

impl Unparsed {
    /// The refusal behind a connection error, if it was one. A header timeout counts only
    /// when a head was half read: an idle keep-alive connection timing out is no request.
    pub fn from_error(e: &(dyn StdError + 'static), partial_head: bool) -> Option<Unparsed> {
        let e = e.downcast_ref::<hyper::Error>()?;
        let text = e.to_string();
        let (status, label, reason) = if e.is_parse_too_large() {
            // hyper tells the two apart only in its message.
            if text.contains("URI") {
                (
                    Some(414),
                    "uri_too_long",
                    "request target too long".to_string(),
                )
            } else {
                (
                    Some(431),
                    "head_too_large",
                    "request head too large".to_string(),
                )
            }
        } else if e.is_parse() {
            (
                Some(400),
                "malformed_head",
                format!("malformed request head: {text}"),
            )
        } else if e.is_timeout() && partial_head {
            (
                None,
                "header_timeout",
                "request head not received within the header read timeout".to_string(),
            )
        } else {
            return None;
        };
        Some(Unparsed {
            status,
            label,
            reason,
        })
    }
}

impl Gateway {
    /// Records a request the parser refused.
    pub fn record_unparsed(&self, down: &Downstream, unparsed: Unparsed) {
        let rt = self.runtime.load();
        self.metrics.rejected(unparsed.label);
        let record = Record {
            time: timestamp(std::time::SystemTime::now()),
            id: super::request_id::generate_string(),
            kind: Kind::Request.as_str().to_string(),
            source: Some(Source {
                addr: down.peer_text.to_string(),
                trusted_proxy: down.is_trusted(&rt.config.server.trusted_proxies),
                forwarded_for: None,
            }),
            decision: Some(AuditDecision {
                effect: "deny".to_string(),
                reasons: vec![unparsed.reason],
                ..Default::default()
            }),
            status: unparsed.status,
            ..Default::default()
        };
        self.audit.submit(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_errors_are_not_refusals() {
        let io = std::io::Error::other("reset");
        assert_eq!(Unparsed::from_error(&io, true), None);
    }
}
