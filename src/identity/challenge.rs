//! What an unauthenticated request gets, decided by route and request:
//!
//! - a browser navigation (GET/HEAD asking for HTML, not from git) on a route that accepts
//!   sessions is sent to sign in (302 to the provider, back to the page afterwards);
//! - everything else gets 401 with one `WWW-Authenticate` per accepted scheme: `Basic` first
//!   for git (so git asks its credential helper), `Bearer` for APIs and OTLP;
//! - a credential that was presented and refused is never redirected: 401 with
//!   `error="invalid_token"`, or 503 when the provider's keys cannot be obtained at all;
//! - when sign-in needs the provider and it cannot be reached: 503 with a page saying so.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};

use super::AuthMethod;
use super::bearer::Rejection;
use super::session::SessionCodec;
use crate::config::RouteAuth;
use crate::proxy::response::ResponseBody;

#[derive(Debug)]
pub enum ChallengeKind {
    /// Send the browser to sign in, then back to `return_to`.
    Login { return_to: String },
    /// 401 with these challenges.
    Unauthorized {
        basic: bool,
        bearer: bool,
        error: Option<String>,
    },
    /// 503: the provider is needed and cannot be reached.
    Unavailable { html: bool },
}

/// An answer the gateway gives instead of forwarding.
#[derive(Debug)]
pub struct Challenge {
    pub kind: ChallengeKind,
    /// Why, for logs and audit.
    pub reason: String,
    /// Cookies to clear (an expired or refused session).
    pub clear: Vec<HeaderValue>,
    /// A credential was presented and refused (audited as `token_rejected`).
    pub refused: bool,
}

impl Challenge {
    pub fn clear_session(&mut self, codec: &SessionCodec) {
        self.clear.extend(codec.clear());
    }
}

/// Whether the request comes from git's smart-HTTP client.
pub fn is_git(parts: &Parts) -> bool {
    let ua = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ua.starts_with("git/") || ua.starts_with("JGit/") || ua.starts_with("git-lfs/") {
        return true;
    }
    let path = parts.uri.path();
    path.ends_with("/info/refs")
        || path.ends_with("/git-upload-pack")
        || path.ends_with("/git-receive-pack")
        || path.contains("/info/lfs/")
}

/// A top-level page load by a browser.
pub fn is_navigation(parts: &Parts) -> bool {
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return false;
    }
    if is_git(parts) {
        return false;
    }
    let mode = parts
        .headers
        .get("sec-fetch-mode")
        .and_then(|v| v.to_str().ok());
    if mode.is_some_and(|m| m != "navigate") {
        return false;
    }
    parts
        .headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"))
}

pub fn unauthenticated(parts: &Parts, auth: RouteAuth, reason: &str) -> Challenge {
    let kind = if auth.session && is_navigation(parts) {
        ChallengeKind::Login {
            return_to: parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
        }
    } else {
        ChallengeKind::Unauthorized {
            basic: auth.basic,
            bearer: auth.bearer,
            error: None,
        }
    };
    Challenge {
        kind,
        reason: reason.to_string(),
        clear: Vec::new(),
        refused: false,
    }
}

pub fn invalid_credential(
    parts: &Parts,
    auth: RouteAuth,
    method: AuthMethod,
    rejection: &Rejection,
) -> Challenge {
    let reason = format!("{} credential refused: {rejection}", method.as_str());
    if *rejection == Rejection::KeysUnavailable {
        return Challenge {
            kind: ChallengeKind::Unavailable {
                html: is_navigation(parts),
            },
            reason,
            clear: Vec::new(),
            refused: true,
        };
    }
    Challenge {
        kind: ChallengeKind::Unauthorized {
            basic: auth.basic,
            bearer: auth.bearer,
            error: Some(rejection.to_string()),
        },
        reason,
        clear: Vec::new(),
        refused: true,
    }
}

pub fn provider_unavailable(parts: &Parts, detail: &str) -> Challenge {
    Challenge {
        kind: ChallengeKind::Unavailable {
            html: is_navigation(parts),
        },
        reason: format!("identity provider unavailable: {detail}"),
        clear: Vec::new(),
        refused: false,
    }
}

/// The 401 or 503 response (logins are answered by the OIDC module).
pub fn respond(c: &Challenge, git: bool, request_id: &HeaderValue) -> Response<ResponseBody> {
    let id = request_id.to_str().unwrap_or("-");
    let mut resp = match &c.kind {
        ChallengeKind::Login { .. } | ChallengeKind::Unauthorized { .. } => {
            let mut r = Response::new(ResponseBody::bytes(format!(
                "401 Unauthorized: {}\nrequest id: {id}\n",
                c.reason
            )));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            if let ChallengeKind::Unauthorized {
                basic,
                bearer,
                error,
            } = &c.kind
            {
                let h = r.headers_mut();
                let bearer_value = match error {
                    Some(e) => format!(
                        "Bearer realm=\"gatehouse\", error=\"invalid_token\", error_description=\"{}\"",
                        e.replace('"', "'")
                    ),
                    None => "Bearer realm=\"gatehouse\"".to_string(),
                };
                let basic_value =
                    HeaderValue::from_static("Basic realm=\"gatehouse\", charset=\"UTF-8\"");
                // git reads the first challenge it understands; put Basic first for git.
                if *basic && (git || !*bearer) {
                    h.append(header::WWW_AUTHENTICATE, basic_value.clone());
                }
                if *bearer && let Ok(v) = HeaderValue::from_str(&bearer_value) {
                    h.append(header::WWW_AUTHENTICATE, v);
                }
                if *basic && !git && *bearer {
                    h.append(header::WWW_AUTHENTICATE, basic_value);
                }
            }
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        }
        ChallengeKind::Unavailable { html } => {
            let (body, content_type) = if *html {
                (
                    super::pages::unavailable(&c.reason, id),
                    "text/html; charset=utf-8",
                )
            } else {
                (
                    format!("503 Service Unavailable: {}\nrequest id: {id}\n", c.reason),
                    "text/plain; charset=utf-8",
                )
            };
            let mut r = Response::new(ResponseBody::bytes(body));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
            r
        }
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        crate::proxy::headers::X_REQUEST_ID.clone(),
        request_id.clone(),
    );
    for cookie in &c.clear {
        h.append(header::SET_COOKIE, cookie.clone());
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, path: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn browsers_navigate_git_and_apis_do_not() {
        let html = ("accept", "text/html,application/xhtml+xml");
        assert!(is_navigation(&parts("GET", "/platform/app", &[html])));
        assert!(!is_navigation(&parts("POST", "/platform/app", &[html])));
        assert!(!is_navigation(&parts(
            "GET",
            "/api/v1/user",
            &[("accept", "application/json")]
        )));
        assert!(!is_navigation(&parts(
            "GET",
            "/platform/app.git/info/refs?service=git-upload-pack",
            &[html]
        )));
        assert!(!is_navigation(&parts(
            "GET",
            "/x",
            &[html, ("user-agent", "git/2.47.3")]
        )));
        assert!(!is_navigation(&parts(
            "GET",
            "/x",
            &[html, ("sec-fetch-mode", "cors")]
        )));
        assert!(is_git(&parts("POST", "/a/b.git/git-receive-pack", &[])));
    }
}
