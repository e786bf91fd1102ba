//! Header hygiene, in the order it must happen.
//!
//! 1. Hop-by-hop headers and every header the client named in `Connection` go first, before
//!    any other stage reads or adds a header, so `Connection: X-Forwarded-For` or a named
//!    identity header can never remove something the gateway sets later.
//! 2. Headers a client could use to impersonate the gateway or an earlier proxy go next:
//!    forwarding headers unless the peer is a trusted proxy, URL-override headers always,
//!    anything in the gateway's own `x-gatehouse-` namespace, and any header whose name has an
//!    underscore (CGI-style servers read `X_Forwarded_For` as `X-Forwarded-For`).
//! 3. The gateway then sets `X-Forwarded-For/-Proto/-Host` and `X-Request-Id` from facts it
//!    knows (the socket, the listener, the canonical host).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::error::ProxyError;

/// Connection-scoped headers (RFC 9110 §7.6.1 plus the legacy `Proxy-Connection`).
const HOP_BY_HOP_COUNT: usize = 9;
const HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Which of [`HOP_BY_HOP`] `name` is: one string match (by length first) instead of nine
/// `HeaderName` comparisons per header.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "te" => Some(3),
        "trailer" => Some(4),
        "transfer-encoding" => Some(5),
        "upgrade" => Some(6),
        "proxy-authorization" => Some(7),
        "proxy-authenticate" => Some(8),
        _ => None,
    }
}

/// Removes the hop-by-hop headers. A message has a handful of headers and at most one or two
/// of these (an upstream's `Connection: keep-alive`), so one pass over the names finds them,
/// instead of nine hashed removals.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = [false; HOP_BY_HOP_COUNT];
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
}

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers only a trusted proxy may send (they describe the original client or URL).
const FORWARDING: [&str; 10] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
];

/// Headers that rewrite the URL or the method on some servers and frameworks (IIS, Symfony,
/// Laravel, Rails, Express's method-override, nginx setups); nobody may send them through
/// the gateway, since the policy decided on the URL and method it saw.
const URL_OVERRIDES: [&str; 10] = [
    "x-original-url",
    "x-rewrite-url",
    "x-override-url",
    "x-original-uri",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
];

/// Prefix of the headers the gateway itself sets toward upstreams.
pub const GATEWAY_PREFIX: &str = "x-gatehouse-";

/// What the client's `Connection` header asked for, read before it is removed.
#[derive(Debug, Default, Clone)]
pub struct ConnectionIntent {
    /// The `Upgrade` value when `Connection` contains `upgrade`.
    pub upgrade: Option<HeaderValue>,
    /// Client asked for `te: trailers` (needed by gRPC over HTTP/2).
    pub te_trailers: bool,
}

/// Step 1: removes hop-by-hop headers and those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> Result<ConnectionIntent, ProxyError> {
    let mut intent = ConnectionIntent::default();
    let mut wants_upgrade = false;
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(text) = value.to_str() else {
            return Err(ProxyError::Framing(
                "Connection header is not visible ASCII",
            ));
        };
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token.eq_ignore_ascii_case("close") || token.eq_ignore_ascii_case("keep-alive") {
                continue;
            }
            if token.eq_ignore_ascii_case("upgrade") {
                wants_upgrade = true;
                continue;
            }
            for protected in ["host", "content-length", "transfer-encoding"] {
                if token.eq_ignore_ascii_case(protected) {
                    return Err(ProxyError::ConnectionNamesEndToEnd(protected));
                }
            }
            match HeaderName::from_bytes(token.as_bytes()) {
                Ok(name) => named.push(name),
                Err(_) => {
                    return Err(ProxyError::Framing(
                        "Connection header names an invalid header",
                    ));
                }
            }
        }
    }
    if wants_upgrade {
        intent.upgrade = headers.get(header::UPGRADE).cloned();
    }
    intent.te_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    for name in named {
        headers.remove(name);
    }
    remove_hop_by_hop(headers);
    Ok(intent)
}

/// Step 2: removes headers a client could use to speak for the gateway or a proxy.
pub fn strip_spoofable(headers: &mut HeaderMap, trusted_peer: bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let n = name.as_str();
        let spoofable = n.contains('_')
            || n.starts_with(GATEWAY_PREFIX)
            || URL_OVERRIDES.contains(&n)
            || (!trusted_peer && FORWARDING.contains(&n))
            || (!trusted_peer && n == "x-request-id");
        if spoofable {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// Facts about the client connection the forwarding headers are built from.
pub struct ForwardingFacts<'a> {
    pub peer_ip: &'a HeaderValue,
    pub proto: &'static str,
    pub host: HeaderValue,
    pub trusted_peer: bool,
}

/// Step 3: sets the forwarding headers. A trusted proxy's `X-Forwarded-For` is extended with
/// the peer address; its `-Proto` and `-Host` are kept. Anyone else's were removed in step 2.
pub fn set_forwarding(headers: &mut HeaderMap, facts: ForwardingFacts<'_>) {
    let existing_for = if facts.trusted_peer {
        let parts: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if parts.is_empty() {
            None
        } else {
            Some(parts.join(", "))
        }
    } else {
        None
    };
    let xff = match existing_for {
        Some(chain) => {
            let peer = facts.peer_ip.to_str().unwrap_or("");
            HeaderValue::from_str(&format!("{chain}, {peer}"))
                .unwrap_or_else(|_| facts.peer_ip.clone())
        }
        None => facts.peer_ip.clone(),
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    if !(facts.trusted_peer && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(facts.proto),
        );
    }
    if !(facts.trusted_peer && headers.contains_key(&X_FORWARDED_HOST)) {
        headers.insert(X_FORWARDED_HOST.clone(), facts.host);
    }
}

/// Removes hop-by-hop headers from an upstream response (keeping the upgrade pair on 101).
pub fn strip_response(headers: &mut HeaderMap, switching_protocols: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.eq_ignore_ascii_case("upgrade")
                && !t.eq_ignore_ascii_case("close")
                && !t.eq_ignore_ascii_case("keep-alive")
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let upgrade = if switching_protocols {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    remove_hop_by_hop(headers);
    if let Some(u) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, u);
    }
}

/// The declared body length, if any; a value that is not a number is malformed framing.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ProxyError> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or(ProxyError::Framing("malformed Content-Length"))
        })
        .transpose()
}

/// A request id a trusted peer sent is reused only when it is short and plain.
pub fn usable_request_id(value: &HeaderValue) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_index_names_each_entry_of_the_table() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        for other in ["content-length", "host", "x-upgrade", "connections", "tee"] {
            let name = HeaderName::from_bytes(other.as_bytes()).unwrap();
            assert_eq!(hop_by_hop_index(&name), None, "{other}");
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret, x-forwarded-for"),
            ("connection", "X-Other"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-other", "1"),
            ("x-forwarded-for", "6.6.6.6"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic x"),
            ("accept", "*/*"),
        ]);
        let intent = strip_hop_by_hop(&mut h).unwrap();
        assert!(intent.te_trailers);
        assert!(intent.upgrade.is_none());
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn connection_naming_framing_headers_is_refused() {
        for token in ["Host", "content-length", "Transfer-Encoding"] {
            let mut h = map(&[("connection", token)]);
            assert!(matches!(
                strip_hop_by_hop(&mut h),
                Err(ProxyError::ConnectionNamesEndToEnd(_))
            ));
        }
    }

    #[test]
    fn upgrade_is_remembered_only_when_connection_asks_for_it() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert_eq!(
            strip_hop_by_hop(&mut h).unwrap().upgrade.unwrap(),
            "websocket"
        );
        assert!(h.get("upgrade").is_none());
        let mut h = map(&[("upgrade", "websocket")]);
        assert!(strip_hop_by_hop(&mut h).unwrap().upgrade.is_none());
    }

    #[test]
    fn untrusted_peers_cannot_send_forwarding_or_gateway_headers() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-original-url", "/admin"),
            ("x_forwarded_for", "1.2.3.4"),
            ("x-webauth_user", "admin"),
            ("x-gatehouse-user", "admin"),
            ("x-request-id", "abc"),
            ("user-agent", "git/2"),
        ]);
        strip_spoofable(&mut h, false);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["user-agent"]);
    }

    #[test]
    fn trusted_peers_keep_forwarding_headers_but_not_url_overrides() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-original-url", "/admin"),
            ("x-request-id", "abc"),
        ]);
        strip_spoofable(&mut h, true);
        assert!(h.contains_key("x-forwarded-for"));
        assert!(h.contains_key("x-request-id"));
        assert!(!h.contains_key("x-original-url"));
        let peer = HeaderValue::from_static("10.0.0.2");
        set_forwarding(
            &mut h,
            ForwardingFacts {
                peer_ip: &peer,
                proto: "http",
                host: HeaderValue::from_static("git.example.com"),
                trusted_peer: true,
            },
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "git.example.com");
    }

    #[test]
    fn forwarding_headers_come_from_the_socket_for_untrusted_peers() {
        let mut h = HeaderMap::new();
        let peer = HeaderValue::from_static("203.0.113.9");
        set_forwarding(
            &mut h,
            ForwardingFacts {
                peer_ip: &peer,
                proto: "https",
                host: HeaderValue::from_static("git.example.com"),
                trusted_peer: false,
            },
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.9");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn every_hop_by_hop_header_is_removed_and_nothing_else() {
        let all = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "proxy-authenticate",
        ];
        // Each alone, and all together between end-to-end headers.
        for name in all {
            let mut h = map(&[
                ("content-type", "text/plain"),
                (name, "x"),
                ("etag", "\"1\""),
            ]);
            strip_response(&mut h, false);
            let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(left, ["content-type", "etag"], "{name}");
        }
        let mut pairs = vec![("content-type", "text/plain")];
        pairs.extend(all.iter().map(|n| (*n, "x")));
        pairs.push(("etag", "\"1\""));
        let mut h = map(&pairs);
        remove_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type", "etag"]);
    }

    #[test]
    fn response_hop_by_hop_headers_are_removed_except_on_101() {
        let mut h = map(&[
            ("connection", "close, x-internal"),
            ("x-internal", "1"),
            ("keep-alive", "1"),
            ("content-type", "text/plain"),
        ]);
        strip_response(&mut h, false);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type"]);
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "x"),
        ]);
        strip_response(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn request_ids_from_trusted_peers_are_checked() {
        assert!(usable_request_id(&HeaderValue::from_static(
            "01HZX-abc.def:1"
        )));
        assert!(!usable_request_id(&HeaderValue::from_static("")));
        assert!(!usable_request_id(&HeaderValue::from_static("a b")));
        assert!(!usable_request_id(
            &HeaderValue::from_str(&"a".repeat(129)).unwrap()
        ));
    }
}
